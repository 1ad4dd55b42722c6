"""README's main command: ``duraflows-pg demo`` runs the order workflow end to end."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers import wait_until

from duraflows_pg_async import HistoryRecord, WorkflowPersistenceProvider
from duraflows_pg_async.testing import make_instance

DEMO = [sys.executable, "-m", "duraflows_pg_async", "demo"]


def run_demo(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DEMO, *args],
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_demo_output(out: str) -> None:
    assert "migrations applied now: 001, 002, 003, 004, 005, 006, 007, 008, 100, 101\n" in out
    # The workflow comes first, then the orders' stories.
    assert out.index("The workflow 'order', version 1:") < out.index("Order #1001")
    assert "    cart              --checkout [guard cart_not_empty]--> awaiting_payment\n" in out
    assert "--payment_timeout, after 30m-->" in out
    assert "4 orders cancelled by the timeout sweep" in out
    states = {
        number: state
        for numbers, state in re.findall(r"Orders? ([#\d, ]+): .*\n    now: state=(\S+)", out)
        for number in re.findall(r"\d+", numbers)
    }
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
    # The four unpaid orders have one story: told once, with who swept each.
    assert out.count("payment_timeout  awaiting_payment -> cancelled") == 1
    assert re.search(r"each order exactly once: #1003 by worker-\d, #1004 by worker-\d", out)


GETTING_STARTED = Path(__file__).parents[2] / "docs" / "getting-started.md"


def normalized(line: str) -> str:
    """A demo output line without what changes from run to run."""
    line = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "UUID", line)
    line = re.sub(r"\d\d:\d\d:\d\d\.\d{3}", "TIME", line)
    return re.sub(r"worker-\d", "worker-N", line)


def documented_output() -> list[str]:
    """The demo's output as getting-started shows it, less the lines about the server."""
    text = GETTING_STARTED.read_text()
    section = text[text.index("## The demo") :]
    sample = re.search(r"```console\n\$ python3 scripts/dev.py demo\n(.*?)```", section, re.S)
    assert sample is not None, "getting-started.md has no demo output"
    return [
        normalized(line)
        for line in sample.group(1).splitlines()
        if line.strip() and line != "..." and not line.startswith(("No DATABASE_URL", "PostgreSQL"))
    ]


async def test_demo_runs_on_a_given_database(empty_database: str) -> None:
    result = await asyncio.to_thread(run_demo, empty_database)
    assert result.returncode == 0, result.stderr
    assert_demo_output(result.stdout)
    # The walkthrough in getting-started shows what the demo prints.
    printed = {normalized(line) for line in result.stdout.splitlines()}
    missing = [line for line in documented_output() if line not in printed]
    assert not missing, missing


async def snapshot(url: str) -> dict[str, Any]:
    """Every row of the public tables and the names of every schema."""
    conn = await asyncpg.connect(url)
    try:
        tables = {
            table: [
                tuple(r)
                for r in await conn.fetch(f"SELECT * FROM public.{table} AS t ORDER BY t::text")
            ]
            for table in (
                "workflow_instances",
                "workflow_history",
                "workflow_definitions",
                "schema_migrations",
            )
        }
        schemas = [r[0] for r in await conn.fetch("SELECT nspname FROM pg_namespace ORDER BY 1")]
    finally:
        await conn.close()
    return {"tables": tables, "schemas": schemas}


async def test_demo_leaves_a_shared_database_alone(
    database: str, providers: WorkflowPersistenceProvider
) -> None:
    signup = make_instance(workflow_name="signup", current_state="waiting")
    async with providers.transaction_runner.transaction():
        await providers.instance_store.create(signup)
        await providers.history_store.append(
            HistoryRecord(
                workflow_instance_uuid=signup.uuid,
                from_state=None,
                event_name="__create__",
                to_state="waiting",
                outcome="success",
            )
        )
    before = await snapshot(database)
    assert before["tables"]["workflow_instances"]
    assert not before["tables"]["workflow_definitions"]

    result = await asyncio.to_thread(run_demo, database)
    assert result.returncode == 0, result.stderr
    assert_demo_output(result.stdout)
    schema = re.search(r"schema of its own, (duraflows_demo_[0-9a-f]+)", result.stdout)
    assert schema is not None, result.stdout
    # Same rows (no orders, no definition, no future timestamps) and no schema left behind.
    assert await snapshot(database) == before

    as_json = await asyncio.to_thread(run_demo, database, "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert {o["order_no"]: o["state"] for o in report["orders"]}[1001] == "shipped"
    assert report["schema"].startswith("duraflows_demo_")
    assert await snapshot(database) == before


# A process started in the background (`cmd &` in a script, some CI runners) inherits SIGINT
# ignored: the demo must clean up on the signal whatever disposition it inherited.
IGNORING_SIGINT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])",
    *DEMO[1:],
]


@pytest.mark.parametrize(
    ("command", "signum", "exit_code"),
    [
        (DEMO, signal.SIGINT, 130),
        (IGNORING_SIGINT, signal.SIGINT, 130),
        (DEMO, signal.SIGTERM, 143),
    ],
    ids=["sigint", "sigint-inherited-ignored", "sigterm"],
)
async def test_demo_drops_its_schema_when_interrupted(
    database: str, command: list[str], signum: int, exit_code: int
) -> None:
    # Every migrator takes the same advisory lock: holding it stops the demo inside its
    # migrations, after it has created its schema.
    lock_key = int.from_bytes(b"duraflow", "big")
    holder = await asyncpg.connect(database)
    watcher = await asyncpg.connect(database)  # outside the holder's transaction: fresh stats
    proc: subprocess.Popen[str] | None = None
    try:
        await holder.execute("BEGIN")
        await holder.execute("SELECT pg_advisory_xact_lock($1)", lock_key)
        proc = await asyncio.to_thread(
            subprocess.Popen,
            command,
            env={**os.environ, "DATABASE_URL": database},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        running = proc

        async def waiting_for_the_lock() -> bool:
            if await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event = 'advisory'"
            ):
                return True
            assert running.poll() is None, running.communicate()
            return False

        await wait_until(waiting_for_the_lock, within=60, what="the demo waiting in its migrations")
        demo_schemas = "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'duraflows_demo_%'"
        assert await holder.fetchval(demo_schemas) == 1
        proc.send_signal(signum)
        out, err = await asyncio.to_thread(proc.communicate, timeout=30)
        assert proc.returncode == exit_code, (out, err)
        assert "interrupted" in err
        assert "Traceback" not in err
        await holder.execute("ROLLBACK")
        assert await holder.fetchval(demo_schemas) == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
        await holder.close()
        await watcher.close()


async def test_demo_reports_an_unreachable_server() -> None:
    result = await asyncio.to_thread(run_demo, "postgresql://nobody@127.0.0.1:1/none")
    assert result.returncode == 1
    assert result.stderr.startswith("duraflows-pg: cannot connect to the database at 127.0.0.1:1")
    assert "connection refused" in result.stderr
    assert "Traceback" not in result.stderr
