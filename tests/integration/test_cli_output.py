"""What ``duraflows-pg`` writes: escaped stored text, JSON for every verb, a failing stdout."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from importlib.metadata import version

import pytest
from test_cli import UNREACHABLE, cli

from duraflows_pg_async import (
    CommandResult,
    HistoryRecord,
    TimeoutRetry,
    WorkflowPersistenceProvider,
    migrations,
)
from duraflows_pg_async.testing import make_instance

# What a terminal could act on: C0 (but the line feed), DEL, C1, bidi controls and separators.
RAW_CONTROL = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)

WORKFLOW = "order\x1b[2J"
STATE = "wait\u202eing"
LAST_ERROR = "mail\x1b[5m down\x07\x7f"
EVENT = "pay\x08\x08"
HISTORY_ERROR = "\x1b[31mred\x1b[0m\x9b1m\u2066"
CONTEXT = {"note": "\x1b]0;pwned\x07", "rtl": "\u202e"}


async def hostile_instance(providers: WorkflowPersistenceProvider) -> uuid.UUID:
    now = datetime.now(UTC)
    instance = make_instance(
        workflow_name=WORKFLOW,
        current_state=STATE,
        context=CONTEXT,
        expires_at=now - timedelta(hours=1),
        timeout_retry=TimeoutRetry(attempts=5, last_error=LAST_ERROR, parked_at=now),
    )
    async with providers.transaction_runner.transaction():
        await providers.instance_store.create(instance)
        await providers.history_store.append(
            HistoryRecord(
                workflow_instance_uuid=instance.uuid,
                from_state=STATE,
                event_name=EVENT,
                to_state="failed\r",
                outcome="failure",
                command_results=[CommandResult(ok=False, code="E\x1bX")],
                error_message=HISTORY_ERROR,
            )
        )
    return instance.uuid


async def test_stored_text_reaches_the_terminal_escaped(
    database: str, providers: WorkflowPersistenceProvider
) -> None:
    key = await hostile_instance(providers)
    parked = await cli("parked", url=database)
    inspect = await cli("inspect", str(key), url=database)
    for result in (parked, inspect):
        assert result.returncode == 0, result.stderr
        assert not RAW_CONTROL.search(result.stdout), ascii(result.stdout)
    assert "order\\x1b[2J" in parked.stdout
    assert "wait\\u202eing" in parked.stdout
    assert "mail\\x1b[5m down\\x07\\x7f" in parked.stdout
    for text in (
        "order\\x1b[2J",
        "wait\\u202eing -> failed\\r",
        "pay\\x08\\x08",
        "E\\x1bX",
        "\\x1b[31mred\\x1b[0m\\x9b1m\\u2066",
        "mail\\x1b[5m down\\x07\\x7f",
        "\\u001b]0;pwned\\u0007",  # the context is shown as JSON, then escaped for the terminal
        "\\u202e",
    ):
        assert text in inspect.stdout, (text, inspect.stdout)


async def test_json_output_keeps_the_values_and_no_raw_controls(
    database: str, providers: WorkflowPersistenceProvider
) -> None:
    key = await hostile_instance(providers)
    parked = await cli("--json", "parked", url=database)
    inspect = await cli("inspect", str(key), "--json", url=database)
    for result in (parked, inspect):
        assert result.returncode == 0, result.stderr
        assert not RAW_CONTROL.search(result.stdout), ascii(result.stdout)
    [row] = json.loads(parked.stdout)
    assert (row["workflowName"], row["currentState"]) == (WORKFLOW, STATE)
    assert row["timeoutRetry"]["lastError"] == LAST_ERROR
    data = json.loads(inspect.stdout)
    assert data["instance"]["context"] == CONTEXT
    [history] = data["history"]
    assert (history["eventName"], history["errorMessage"]) == (EVENT, HISTORY_ERROR)
    assert history["commandResultsJson"] == [{"ok": False, "code": "E\x1bX"}]


# --- --json on every verb, and for errors -------------------------------------------------------


def assert_json_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    error = json.loads(line)
    assert error["exit_code"] == code
    assert text in error["error"]


async def test_json_before_or_after_the_verb(empty_database: str) -> None:
    packaged = migrations.list_migrations()
    up = await cli("--json", "migrate", "up", url=empty_database)
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout) == {
        "schema": None,
        "applied": [{"version": m.version, "name": m.name} for m in packaged],
    }
    again = await cli("migrate", "up", "--json", url=empty_database)
    assert json.loads(again.stdout) == {"schema": None, "applied": []}
    status = await cli("--json", "migrate", "status", url=empty_database)
    assert all(entry["applied"] for entry in json.loads(status.stdout))
    down = await cli("--json", "migrate", "down", "--yes", url=empty_database)
    assert json.loads(down.stdout)["rolled_back"] == [
        {"version": packaged[-1].version, "name": packaged[-1].name}
    ]
    sql = await cli("--json", "sql", "--schema", "wf")
    assert json.loads(sql.stdout) == {
        "uuid_strategy": "gen_random_uuid",
        "schema": "wf",
        "direction": "up",
        "sql": migrations.generate_migration_sql(schema="wf").up,
    }
    unknown = uuid.uuid4()
    rearm = await cli("--json", "rearm", str(unknown), url=empty_database)
    assert_json_error(rearm, 1, f"no workflow instance {unknown}")


@pytest.mark.parametrize(
    ("args", "url", "code", "text"),
    [
        (["--json", "parked"], None, 2, "give --database-url or set DATABASE_URL"),
        (["parked", "--json"], UNREACHABLE, 1, "connection refused"),
        (["--json", "inspect", "nope"], None, 2, "must be a UUID"),
        (["--json", "parked", "--limit", "x"], None, 2, "invalid int value"),
        (["--json", "frobnicate"], None, 2, "invalid choice"),
        (["--json"], None, 2, "the following arguments are required: COMMAND"),
        (["--json", "worker", "nocolon", "--lease", "0"], UNREACHABLE, 2, "--lease"),
    ],
)
async def test_errors_are_json_with_json(
    args: list[str], url: str | None, code: int, text: str
) -> None:
    assert_json_error(await cli(*args, url=url), code, text)


async def test_json_names_an_unknown_instance(database: str) -> None:
    unknown = uuid.uuid4()
    assert_json_error(await cli("--json", "inspect", str(unknown), url=database), 1, str(unknown))


async def test_version() -> None:
    expected = version("duraflows-pg-async")
    text = await cli("--version")
    assert (text.returncode, text.stdout) == (0, f"duraflows-pg {expected}\n")
    as_json = await cli("--json", "--version")
    assert json.loads(as_json.stdout) == {"version": expected}


# --- a stdout that fails --------------------------------------------------------------------


def run_into(stdout: int, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if url is not None:
        env["DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "duraflows_pg_async", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("args", [["sql"], ["migrate", "status"], ["--help"]])
async def test_a_closed_pipe_ends_quietly(database: str, args: list[str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `duraflows-pg sql | true`: the reader is gone
    try:
        result = await asyncio.to_thread(run_into, write_end, *args, url=database)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


@pytest.mark.parametrize("args", [["sql"], ["migrate", "status"], ["--json", "parked"]])
async def test_a_full_disk_is_reported_as_such(database: str, args: list[str]) -> None:
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        result = await asyncio.to_thread(run_into, full, *args, url=database)
    finally:
        os.close(full)
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    if "--json" in args:
        assert json.loads(line) == {
            "error": "cannot write to standard output: [Errno 28] No space left on device",
            "exit_code": 1,
        }
    else:
        assert (
            line
            == "duraflows-pg: cannot write to standard output: [Errno 28] No space left on device"
        )
