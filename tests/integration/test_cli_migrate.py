"""``migrate --schema`` and the confirmation ``migrate down`` asks for."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys

import asyncpg
from test_cli import assert_clean_error, cli

from duraflows_pg_async import migrations


async def tables_by_schema(url: str) -> dict[str, set[str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
    finally:
        await conn.close()
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row["table_schema"], set()).add(row["table_name"])
    return found


async def applied(url: str, *args: str) -> list[str]:
    result = await cli("migrate", "status", "--json", *args, url=url)
    assert result.returncode == 0, result.stderr
    return [e["version"] for e in json.loads(result.stdout) if e["applied"]]


async def test_migrate_into_a_schema(empty_database: str) -> None:
    packaged_files = migrations.list_migrations()
    packaged = [m.version for m in packaged_files]
    up = await cli("migrate", "up", "--schema", "tenant_a", url=empty_database)
    assert up.returncode == 0, up.stderr
    assert up.stdout.splitlines() == [f"applied {m.version}_{m.name}" for m in packaged_files]
    assert await tables_by_schema(empty_database) == {
        "tenant_a": {
            "schema_migrations",
            "workflow_instances",
            "workflow_history",
            "workflow_definitions",
            "workflow_event_idempotency",
            "workflow_executions",
        }
    }
    assert await applied(empty_database, "--schema", "tenant_a") == packaged
    listed = await cli("migrate", "status", "--schema", "tenant_a", url=empty_database)
    assert listed.stdout.splitlines() == [f"[X] {m.version}_{m.name}" for m in packaged_files]
    assert "[X] 007_event_idempotency" in listed.stdout
    assert "[X] 008_durable_execution" in listed.stdout
    assert await applied(empty_database) == []
    # A schema that does not exist has nothing applied, and asking does not create it.
    assert await applied(empty_database, "--schema", "tenant_b") == []
    assert set(await tables_by_schema(empty_database)) == {"tenant_a"}

    parked = await cli("parked", "--schema", "tenant_a", url=empty_database)
    assert (parked.returncode, parked.stdout) == (0, "no parked timeouts\n")
    assert_clean_error(
        await cli("parked", "--schema", "tenant_b", url=empty_database),
        1,
        'the duraflows tables are missing in schema "tenant_b": '
        "run `duraflows-pg migrate up --schema tenant_b`",
    )
    assert_clean_error(
        await cli("parked", url=empty_database), 1, "run `duraflows-pg migrate up`\n"
    )

    nothing = await cli("migrate", "down", "--schema", "tenant_b", url=empty_database)
    assert (nothing.returncode, nothing.stdout) == (0, "nothing applied\n")
    down = await cli("migrate", "down", "--schema", "tenant_a", "--yes", url=empty_database)
    assert down.returncode == 0, down.stderr
    assert await applied(empty_database, "--schema", "tenant_a") == packaged[:-1]

    assert_clean_error(
        await cli("migrate", "up", "--schema", "no-such", url=empty_database), 2, "--schema"
    )


def run_on_a_terminal(url: str, answer: bytes, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with a terminal as stdin, on which ``answer`` has already been typed."""
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer)
        env = {**os.environ, "DATABASE_URL": url}
        return subprocess.run(
            [sys.executable, "-m", "duraflows_pg_async", *args],
            stdin=terminal,
            capture_output=True,
            env=env,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(terminal)
        os.close(controller)


async def test_migrate_down_asks_first(database: str) -> None:
    packaged = migrations.list_migrations()
    newest = f"{packaged[-1].version}_{packaged[-1].name}"
    everything = [m.version for m in packaged]

    refused = await cli("migrate", "down", url=database)
    assert_clean_error(refused, 2, "pass --yes to confirm")
    assert newest in refused.stderr
    assert await applied(database) == everything

    declined = await asyncio.to_thread(run_on_a_terminal, database, b"n\n", "migrate", "down")
    assert declined.returncode == 1, declined.stderr
    assert f"roll back {newest}" in declined.stderr
    assert "not confirmed: nothing rolled back" in declined.stderr
    assert await applied(database) == everything

    confirmed = await asyncio.to_thread(run_on_a_terminal, database, b"y\n", "migrate", "down")
    assert confirmed.returncode == 0, confirmed.stderr
    assert confirmed.stdout == f"rolled back {newest}\n"
    assert await applied(database) == everything[:-1]
