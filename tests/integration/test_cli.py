"""``duraflows-pg``: every command run as a subprocess against a real database."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from helpers import wait_for_line, wait_until

from duraflows_pg_async import (
    CommandRegistry,
    CommandResult,
    DefinitionRegistry,
    HistoryRecord,
    State,
    WorkflowDefinition,
    WorkflowInstance,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
    migrations,
)

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


async def cli(
    *args: str, url: str | None = None, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if url is not None:
        env["DATABASE_URL"] = url
    env.update(extra_env or {})
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "duraflows_pg_async", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def wait_for_stopping_notice(proc: subprocess.Popen[str]) -> str:
    """Wait for what a ``worker`` process prints on stderr when the first stop signal has
    arrived; returns the stderr read up to and with that line (its ``communicate()`` has the
    rest)."""
    assert proc.stderr is not None
    return await wait_for_line(
        proc.stderr,
        "stopping after the instances in hand",
        what="the worker's notice of the first stop signal",
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stderr.startswith("duraflows-pg: "), result.stderr
    assert text in result.stderr
    assert "Traceback" not in result.stderr


async def make_instance(
    providers: WorkflowPersistenceProvider, *, state: str = "waiting", history: bool = True
) -> WorkflowInstance:
    now = datetime.now(UTC)
    instance = WorkflowInstance(
        uuid=uuid.uuid4(),
        workflow_name="order",
        current_state=state,
        version=1,
        context={"order_no": 7},
        metadata={"source": "test"},
        expires_at=None,
        last_transition_at=now,
        created_at=now,
        updated_at=now,
    )
    await providers.instance_store.create(instance)
    if history:
        await providers.history_store.append(
            HistoryRecord(
                workflow_instance_uuid=instance.uuid,
                from_state="cart",
                event_name="checkout",
                to_state="awaiting_payment",
                outcome="success",
            )
        )
        await providers.history_store.append(
            HistoryRecord(
                workflow_instance_uuid=instance.uuid,
                from_state="awaiting_payment",
                event_name="pay",
                to_state="payment_failed",
                outcome="failure",
                command_results=[CommandResult(ok=False, code="CARD_DECLINED")],
                error_message="card declined by issuer",
            )
        )
    return instance


async def park(database: str, instance_uuid: uuid.UUID, error: str = "boom") -> None:
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(
            "UPDATE workflow_instances SET expires_at = now() - interval '1 hour', "
            "timeout_attempts = 5, timeout_last_error = $2, timeout_parked_at = now() "
            "WHERE uuid = $1",
            instance_uuid,
            error,
        )
    finally:
        await conn.close()


# --- migrate and sql ----------------------------------------------------------------------------


async def test_migrate_status_text_and_json(empty_database: str) -> None:
    packaged = migrations.list_migrations()
    before = await cli("migrate", "status", "--json", url=empty_database)
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout) == [
        {"version": m.version, "name": m.name, "applied": False} for m in packaged
    ]
    up = await cli("migrate", "up", "--database-url", empty_database)
    assert up.returncode == 0, up.stderr
    assert f"applied {packaged[0].version}_{packaged[0].name}" in up.stdout
    text = await cli("--database-url", empty_database, "migrate", "status")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == [f"[X] {m.version}_{m.name}" for m in packaged]
    after = await cli("migrate", "status", "--json", url=empty_database)
    assert all(entry["applied"] for entry in json.loads(after.stdout))
    down = await cli("migrate", "down", "--yes", url=empty_database)
    assert down.returncode == 0, down.stderr
    assert f"rolled back {packaged[-1].version}_{packaged[-1].name}" in down.stdout


async def test_sql_prints_the_generator_output() -> None:
    generated = migrations.generate_migration_sql(uuid_strategy="uuidv7", schema="wf")
    up = await cli("sql", "--uuid-strategy", "uuidv7", "--schema", "wf")
    assert up.returncode == 0, up.stderr
    assert up.stdout == generated.up + "\n"
    down = await cli("sql", "--schema", "wf", "--down")
    assert down.stdout == migrations.generate_migration_sql(schema="wf").down + "\n"
    bad = await cli("sql", "--uuid-strategy", "nope")
    assert_clean_error(bad, 2, "uuid_strategy")


# --- inspect, parked, rearm ---------------------------------------------------------------------


async def test_inspect_shows_the_instance_and_its_history(
    database: str, providers: WorkflowPersistenceProvider
) -> None:
    instance = await make_instance(providers)
    result = await cli("inspect", str(instance.uuid), url=database)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert str(instance.uuid) in out
    assert "workflow            order" in out
    assert "history (2 rows, oldest first):" in out
    lines = out.splitlines()
    checkout_line = next(i for i, line in enumerate(lines) if " checkout " in line)
    pay_line = next(i for i, line in enumerate(lines) if " pay " in line)
    assert checkout_line < pay_line
    assert "awaiting_payment -> payment_failed" in lines[pay_line]
    assert "CARD_DECLINED" in lines[pay_line]
    assert "card declined by issuer" in lines[pay_line]

    as_json = await cli("inspect", str(instance.uuid), "--json", url=database)
    data = json.loads(as_json.stdout)
    assert data["instance"]["uuid"] == str(instance.uuid)
    assert data["instance"]["context"] == {"order_no": 7}
    assert data["instance"]["workflowName"] == "order"
    assert [h["eventName"] for h in data["history"]] == ["checkout", "pay"]
    assert data["history"][1]["commandResultsJson"] == [{"ok": False, "code": "CARD_DECLINED"}]
    assert data["history"][1]["createdAt"].endswith("Z")


async def test_a_new_instance_has_no_history_and_the_docs_say_so(
    database: str, providers: WorkflowPersistenceProvider
) -> None:
    definitions = DefinitionRegistry()
    definitions.register(
        WorkflowDefinition(name="note", initial_state="open", states={"open": State()})
    )
    runtime = WorkflowRuntime(
        definitions=definitions, commands=CommandRegistry(), persistence=providers
    )
    instance = await runtime.create_instance("note")
    result = await cli("inspect", str(instance.uuid), url=database)
    assert result.returncode == 0, result.stderr
    assert "history (0 rows, oldest first):" in result.stdout
    # So the documented inspect output shows no creation row either.
    assert "__create__" not in (Path(__file__).parents[2] / "docs" / "cli.md").read_text()


async def test_inspect_unknown_and_malformed_uuid(database: str) -> None:
    unknown = uuid.uuid4()
    assert_clean_error(await cli("inspect", str(unknown), url=database), 1, str(unknown))
    assert_clean_error(await cli("inspect", "not-a-uuid", url=database), 2, "must be a UUID")
    assert_clean_error(await cli("rearm", "1234", url=database), 2, "must be a UUID")


async def test_parked_lists_parked_timeouts(
    database: str, providers: WorkflowPersistenceProvider
) -> None:
    empty = await cli("parked", url=database)
    assert empty.returncode == 0, empty.stderr
    assert "no parked timeouts" in empty.stdout
    parked = await make_instance(providers, history=False)
    await make_instance(providers, history=False)  # not parked
    await park(database, parked.uuid, "mail server down")

    text = await cli("parked", url=database)
    assert text.returncode == 0, text.stderr
    assert str(parked.uuid) in text.stdout
    assert "mail server down" in text.stdout
    assert len(text.stdout.strip().splitlines()) == 3  # header, rule, one row

    as_json = await cli("parked", "--json", "--workflow", "order", "--limit", "5", url=database)
    rows = json.loads(as_json.stdout)
    assert [r["uuid"] for r in rows] == [str(parked.uuid)]
    assert rows[0]["timeoutRetry"]["attempts"] == 5
    other = await cli("parked", "--json", "--workflow", "invoice", url=database)
    assert json.loads(other.stdout) == []


async def test_rearm_clears_the_parked_state(
    database: str, providers: WorkflowPersistenceProvider
) -> None:
    instance = await make_instance(providers, history=False)
    await park(database, instance.uuid)
    result = await cli("rearm", str(instance.uuid), url=database)
    assert result.returncode == 0, result.stderr
    assert f"rearmed {instance.uuid}" in result.stdout
    stored = await providers.instance_store.find_by_uuid(instance.uuid)
    assert stored is not None
    assert stored.timeout_retry is None
    assert stored.version == 2
    assert stored.updated_at > instance.updated_at
    assert await providers.instance_store.find_parked_timeouts() == []

    again = await cli("rearm", str(instance.uuid), "--json", url=database)
    assert again.returncode == 0, again.stderr
    data = json.loads(again.stdout)
    assert data["rearmed"] is False
    assert data["instance"]["version"] == 2

    unknown = uuid.uuid4()
    assert_clean_error(await cli("rearm", str(unknown), url=database), 1, str(unknown))


async def claim(database: str, instance_uuid: uuid.UUID, until: timedelta) -> None:
    """Give the instance a sweep's claim ending at ``now() + until`` (no retry state)."""
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(
            "UPDATE workflow_instances SET expires_at = now() - interval '1 hour', "
            "timeout_retry_at = now() + $2 WHERE uuid = $1",
            instance_uuid,
            until,
        )
    finally:
        await conn.close()


async def test_inspect_shows_and_rearm_ends_a_sweep_claim(
    database: str, providers: WorkflowPersistenceProvider
) -> None:
    instance = await make_instance(providers, history=False)
    await claim(database, instance.uuid, timedelta(minutes=5))
    text = await cli("inspect", str(instance.uuid), url=database)
    assert text.returncode == 0, text.stderr
    assert re.search(r"^sweep claim +claimed by a sweep until \S+ \S+$", text.stdout, re.M)
    assert re.search(r"^timeout retry +none$", text.stdout, re.M)
    as_json = json.loads((await cli("inspect", str(instance.uuid), "--json", url=database)).stdout)
    stored = await providers.instance_store.find_by_uuid(instance.uuid)
    assert stored is not None
    assert stored.claimed_until is not None
    assert as_json["instance"]["claimedUntil"] == stored.claimed_until.astimezone(UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )

    await claim(database, instance.uuid, timedelta(minutes=-1))
    lapsed = await cli("inspect", str(instance.uuid), url=database)
    assert "(lapsed: due again)" in lapsed.stdout

    rearm = await cli("rearm", str(instance.uuid), url=database)
    assert rearm.returncode == 0, rearm.stderr
    assert f"rearmed {instance.uuid} (was: claimed by a sweep until" in rearm.stdout
    stored = await providers.instance_store.find_by_uuid(instance.uuid)
    assert stored is not None
    assert (stored.claimed_until, stored.timeout_retry, stored.version) == (None, None, 2)
    again = await cli("rearm", str(instance.uuid), url=database)
    assert "nothing to rearm" in again.stdout


# --- worker -------------------------------------------------------------------------------------

FACTORY = """
from duraflows_pg_async import (
    CommandRef, CommandRegistry, DefinitionRegistry, Event, State, Timeout, WorkflowDefinition,
    WorkflowRuntime,
)

REMINDER = WorkflowDefinition(
    name="reminder",
    initial_state="waiting",
    states={
        "waiting": State(
            events={
                "remind": Event(
                    target_state="reminded",
                    commands=(CommandRef("send"),),
                    timeout=Timeout(minutes=5),
                )
            }
        ),
        "reminded": State(),
    },
)


def send(subject, ctx):
    ctx.context["sent"] = True


async def make_runtime(persistence):
    definitions = DefinitionRegistry()
    definitions.register(REMINDER)
    commands = CommandRegistry()
    commands.register("send", send)
    return WorkflowRuntime(definitions=definitions, commands=commands, persistence=persistence)
"""


def due_reminder() -> WorkflowInstance:
    """A reminder instance whose timeout fell due a second ago."""
    now = datetime.now(UTC)
    return WorkflowInstance(
        uuid=uuid.uuid4(),
        workflow_name="reminder",
        current_state="waiting",
        version=1,
        context={},
        metadata={},
        expires_at=now - timedelta(seconds=1),
        last_transition_at=now,
        created_at=now,
        updated_at=now,
    )


async def test_worker_processes_due_timeouts_and_stops_on_sigterm(
    database: str, providers: WorkflowPersistenceProvider, tmp_path: Path
) -> None:
    (tmp_path / "cli_reminders.py").write_text(textwrap.dedent(FACTORY))
    env = {
        **os.environ,
        "DATABASE_URL": database,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [
            sys.executable,
            "-m",
            "duraflows_pg_async",
            "worker",
            "cli_reminders:make_runtime",
            "--workers",
            "2",
            "--poll-interval",
            "0.1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        instance = due_reminder()
        await providers.instance_store.create(instance)

        async def reminded() -> WorkflowInstance | None:
            stored = await providers.instance_store.find_by_uuid(instance.uuid)
            assert stored is not None
            if stored.current_state == "reminded":
                return stored
            assert proc.poll() is None, proc.communicate()
            return None

        stored = await wait_until(reminded, within=30, what="the worker processing the timeout")
        assert stored is not None
        assert stored.context == {"sent": True}
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(proc.communicate, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "2 worker(s) running" in out
    assert "stopped; 1 timeouts processed" in out
    assert "Traceback" not in err


SLOW_FACTORY = """
import asyncio
import os
from pathlib import Path

from cli_reminders import REMINDER
from duraflows_pg_async import CommandRegistry, DefinitionRegistry, WorkflowRuntime


async def send(subject, ctx):
    ctx.context["sent"] = True
    Path(os.environ["IN_COMMAND_MARKER"]).touch()
    await asyncio.sleep(120)  # a command stuck on a slow partner


def make_runtime(persistence):
    definitions = DefinitionRegistry()
    definitions.register(REMINDER)
    commands = CommandRegistry()
    commands.register("send", send)
    return WorkflowRuntime(definitions=definitions, commands=commands, persistence=persistence)
"""


async def test_worker_second_signal_aborts_the_instance_in_hand(
    database: str, providers: WorkflowPersistenceProvider, tmp_path: Path
) -> None:
    (tmp_path / "cli_reminders.py").write_text(textwrap.dedent(FACTORY))
    (tmp_path / "cli_slow.py").write_text(textwrap.dedent(SLOW_FACTORY))
    marker = tmp_path / "in-command"
    env = {
        **os.environ,
        "DATABASE_URL": database,
        "IN_COMMAND_MARKER": str(marker),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    instance = due_reminder()
    await providers.instance_store.create(instance)
    argv = [sys.executable, "-m", "duraflows_pg_async", "worker", "cli_slow:make_runtime"]
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [*argv, "--poll-interval", "0.1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        async def in_command() -> bool:
            if marker.exists():
                return True
            assert proc.poll() is None, proc.communicate()
            return False

        await wait_until(in_command, within=30, what="the worker reaching the command")
        proc.send_signal(signal.SIGTERM)
        # The first signal waits for the instance in hand, which is stuck: still running.
        notice = await wait_for_stopping_notice(proc)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(proc.communicate, timeout=15)
        err = notice + err  # all of stderr: the notice was read above
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    assert "send again to abort" in err
    assert "aborted; 0 timeouts processed" in out
    assert "Traceback" not in err
    # The aborted transition rolled back: the timeout is still pending, nothing was recorded.
    stored = await providers.instance_store.find_by_uuid(instance.uuid)
    assert stored is not None
    assert (stored.current_state, stored.version, stored.context) == ("waiting", 1, {})
    assert await providers.history_store.find_by_instance_uuid(instance.uuid) == []


async def test_worker_rejects_a_bad_app(database: str) -> None:
    assert_clean_error(await cli("worker", "no_colon", url=database), 2, "module:attr")
    assert_clean_error(
        await cli("worker", "no_such_module_xyz:app", url=database), 2, "cannot import"
    )
    assert_clean_error(await cli("worker", "json:nope", url=database), 2, "no attribute")


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["migrate", "status"],
        ["inspect", "00000000-0000-0000-0000-000000000001"],
        ["parked"],
        ["rearm", "00000000-0000-0000-0000-000000000001"],
        ["worker", "json:loads"],
    ],
)
async def test_no_database_url(args: list[str]) -> None:
    result = await cli(*args)
    assert_clean_error(result, 2, "give --database-url or set DATABASE_URL")


@pytest.mark.parametrize("args", [["migrate", "status"], ["parked"]])
async def test_refused_connection_and_bad_url(args: list[str]) -> None:
    refused = await cli(*args, url=UNREACHABLE)
    assert_clean_error(
        refused, 1, "cannot connect to the database at 127.0.0.1:1: connection refused"
    )
    assert_clean_error(await cli(*args, url="notaurl"), 2, "invalid database URL: ")


async def test_missing_schema(empty_database: str, tmp_path: Path) -> None:
    missing = "the duraflows tables are missing: run `duraflows-pg migrate up`"
    for args in (
        ["parked"],
        ["inspect", str(uuid.uuid4())],
        ["rearm", str(uuid.uuid4())],
    ):
        assert_clean_error(await cli(*args, url=empty_database), 1, missing)
    (tmp_path / "cli_reminders_missing.py").write_text(textwrap.dedent(FACTORY))
    worker = await cli(
        "worker",
        "cli_reminders_missing:make_runtime",
        url=empty_database,
        extra_env={"PYTHONPATH": str(tmp_path)},
    )
    assert_clean_error(worker, 1, missing)
