"""README's quick start runs as written, against the test server."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import asyncpg
from helpers import run_python

README = Path(__file__).parents[2] / "README.md"


def python_block(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"README has no python block under {heading}"
    return match.group(1)


def test_every_python_block_is_tested() -> None:
    assert README.read_text().count("```python") == 2


async def run_block(heading: str, dsn: str) -> subprocess.CompletedProcess[str]:
    result = await run_python(python_block(heading), dsn)
    assert result.returncode == 0, result.stderr
    return result


async def test_quick_start_runs_as_written(empty_database: str) -> None:
    result = await run_block("## Quick start", empty_database)
    assert result.stdout.splitlines() == [
        "entered submitted",
        "entered approved",
        "entered paid",
        "success paid",
        "approve submitted -> approved",
        "onEnter approved -> paid",
    ]


async def test_store_example_runs_as_written(database: str) -> None:
    # The template is migrated already; the example's own apply() must then be a no-op.
    result = await run_block("## Using the stores directly", database)
    assert result.stdout.splitlines() == ["committed", "[('pay', 'awaiting_payment', 'paid')]"]
    conn = await asyncpg.connect(database)
    try:
        row = await conn.fetchrow("SELECT current_state, version FROM workflow_instances")
        assert row is not None
        assert tuple(row) == ("paid", 1)
    finally:
        await conn.close()
