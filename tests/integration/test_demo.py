"""README's main command: ``duraflows-pg demo`` runs the order workflow end to end."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys


async def test_demo_runs_on_a_given_database(empty_database: str) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "duraflows_pg_async", "demo"],
        env={**os.environ, "DATABASE_URL": empty_database},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "migrations applied now: 001, 002, 003, 004, 005, 006" in out
    assert "4 orders cancelled, each exactly once" in out
    states = dict(re.findall(r"Order #(\d+) .* state=(\S+)", out))
    assert states == {
        "1001": "shipped",
        "1002": "payment_failed",
        "1003": "cancelled",
        "1004": "cancelled",
        "1005": "cancelled",
        "1006": "cancelled",
    }
    assert "rejected by guard cart_not_empty" in out
    assert "onEnter   packing -> shipped" in out
    assert "CARD_DECLINED: card declined by issuer" in out


async def test_demo_reports_an_unreachable_server() -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "duraflows_pg_async", "demo"],
        env={**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("duraflows-pg: ")
    assert "Traceback" not in result.stderr
