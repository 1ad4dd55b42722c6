"""README's quick start runs as written, against the test server."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import asyncpg

README = Path(__file__).parents[2] / "README.md"


def quick_start_code() -> str:
    text = README.read_text()
    section = text[text.index("## Quick start") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "README has no python block under Quick start"
    return match.group(1)


async def run_quick_start(dsn: str) -> subprocess.CompletedProcess[str]:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", quick_start_code()],
        env={**os.environ, "DATABASE_URL": dsn},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


async def test_quick_start_runs_as_written(database: str) -> None:
    # The template is migrated already; the quick start's own apply() must then be a no-op.
    result = await run_quick_start(database)
    assert result.stdout.splitlines() == ["committed", "[('pay', 'awaiting_payment', 'paid')]"]
    conn = await asyncpg.connect(database)
    try:
        row = await conn.fetchrow("SELECT current_state, version FROM workflow_instances")
        assert tuple(row) == ("paid", 1)
    finally:
        await conn.close()


async def test_quick_start_migrates_an_empty_database(empty_database: str) -> None:
    result = await run_quick_start(empty_database)
    assert "committed" in result.stdout
