"""``duraflows-pg execution show|list|retry|cancel`` and ``worker`` running both kinds of worker."""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers import wait_until
from test_cli import assert_clean_error, cli, due_reminder
from test_cli_worker import APP, Worker, clean_env

import duraflows_pg_async
from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    DefinitionRegistry,
    DurableExecutionPolicy,
    Event,
    ExecutionContext,
    OnEnter,
    State,
    WorkflowDefinition,
    WorkflowInstance,
    WorkflowRuntime,
    pg_workflow_providers,
)
from duraflows_pg_async._pg.queries import list_active_executions
from duraflows_pg_async.types import WorkflowExecution

SHIPPING = WorkflowDefinition(
    name="shipping",
    initial_state="new",
    states={
        "new": State(
            events={
                "ship": Event(
                    target_state="packed", commands=(CommandRef("reserve"), CommandRef("charge"))
                )
            }
        ),
        "packed": State(
            on_enter=OnEnter(target_state="shipped", commands=(CommandRef("label"),)),
            events={"unpack": Event(target_state="new")},
        ),
        "shipped": State(),
    },
)


class Shop:
    """A runtime of the shipping workflow on the test's database; ``charge`` fails while
    ``charge_down`` is set, and a command waits for ``hold`` when it is set."""

    def __init__(self, pool: asyncpg.Pool, *, max_attempts: int = 10) -> None:
        self.charge_down = False
        self.hold: asyncio.Event | None = None
        self.in_command = asyncio.Event()
        definitions = DefinitionRegistry()
        definitions.register(SHIPPING)
        commands = CommandRegistry()
        for name in ("reserve", "charge", "label"):
            commands.register(name, self._command(name))
        self.runtime = WorkflowRuntime(
            definitions=definitions,
            commands=commands,
            persistence=pg_workflow_providers(pool, durable_execution=True),
            durable_execution=DurableExecutionPolicy(max_attempts=max_attempts),
        )

    def _command(self, name: str) -> Any:
        async def command(subject: Any, ctx: ExecutionContext) -> None:
            self.in_command.set()
            if self.hold is not None:
                await self.hold.wait()
            if name == "charge" and self.charge_down:
                raise RuntimeError("card processor down\x1b[31m")
            ctx.context[name] = True

        return command

    async def enqueue(self, key: str = "ship-1") -> WorkflowExecution:
        instance = await self.runtime.create_instance("shipping", context={"order": 7})
        return await self.runtime.enqueue_event(
            instance.uuid, "ship", idempotency_key=key, subject={"carrier": "dhl"}
        )

    async def stored(self, execution_uuid: uuid.UUID) -> WorkflowExecution:
        execution = await self.runtime.get_execution(execution_uuid)
        assert execution is not None
        return execution


async def parked_execution(shop: Shop) -> WorkflowExecution:
    """An execution whose first command finished and whose second one failed for good."""
    execution = await shop.enqueue()
    shop.charge_down = True
    assert (await shop.runtime.process_pending_executions()).progressed == [execution.uuid]
    assert (await shop.runtime.process_pending_executions()).parked == [execution.uuid]
    return await shop.stored(execution.uuid)


def field_value(out: str, name: str) -> str:
    found = re.search(rf"^{re.escape(name)} +(.*)$", out, re.M)
    assert found, out
    return found.group(1)


async def test_show_prints_the_record_and_its_journal(database: str, pool: asyncpg.Pool) -> None:
    shop = Shop(pool)
    execution = await shop.enqueue()
    await shop.runtime.process_pending_executions()
    stored = await shop.stored(execution.uuid)

    text = await cli("execution", "show", str(execution.uuid), url=database)
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert field_value(out, "uuid") == str(execution.uuid)
    assert field_value(out, "instance") == str(execution.workflow_instance_uuid)
    assert field_value(out, "workflow") == "shipping"
    assert field_value(out, "event") == "ship"
    assert field_value(out, "idempotency key") == "ship-1"
    assert field_value(out, "status") == "pending"
    assert field_value(out, "attempts") == "0 (parks at 10)"
    assert field_value(out, "lease") == "none"
    assert field_value(out, "next command") == "charge (#1)"
    assert field_value(out, "result") == "-"
    assert field_value(out, "subject") == '{"carrier": "dhl"}'
    assert "journal (1 finished, in order):" in out
    (row,) = [line for line in out.splitlines() if line.startswith("0 ")]
    assert row.split()[:4] == ["0", "reserve", "ok", "1"]
    assert '{"order": 7, "reserve": true}' in row

    as_json = await cli("execution", "show", str(execution.uuid), "--json", url=database)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == stored.to_json()


async def test_a_parked_execution_is_shown_listed_and_retried(
    database: str, pool: asyncpg.Pool
) -> None:
    shop = Shop(pool, max_attempts=1)
    parked = await parked_execution(shop)
    other = await shop.enqueue("ship-2")  # pending, nothing run yet

    show = await cli("execution", "show", str(parked.uuid), url=database)
    assert field_value(show.stdout, "status") == "parked"
    assert field_value(show.stdout, "attempts") == "1 (parks at 1)"
    # Stored text is escaped on a terminal.
    assert field_value(show.stdout, "last error") == "card processor down\\x1b[31m"

    listed = await cli("execution", "list", url=database)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert len(lines) == 4  # header, rule, two rows
    (parked_row,) = [line for line in lines if line.startswith(str(parked.uuid))]
    assert " parked " in parked_row
    assert "card processor down\\x1b[31m" in parked_row
    assert any(line.startswith(str(other.uuid)) and " pending " in line for line in lines)

    only_parked = await cli("execution", "list", "--status", "parked", "--json", url=database)
    assert [e["uuid"] for e in json.loads(only_parked.stdout)] == [str(parked.uuid)]
    assert json.loads(only_parked.stdout)[0] == parked.to_json()
    elsewhere = await cli("execution", "list", "--workflow", "invoice", url=database)
    assert elsewhere.stdout.strip() == "no pending or running or parked executions"

    retried = await cli("execution", "retry", str(parked.uuid), url=database)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.startswith(
        f"retried {parked.uuid} (was: parked after 1 attempts: card processor down\\x1b[31m); "
        "pending again, 1 finished commands kept"
    )
    stored = await shop.stored(parked.uuid)
    assert (stored.status, stored.attempts, len(stored.journal)) == ("pending", 0, 1)

    # Not parked any more: the runtime's refusal, as a usage error.
    again = await cli("execution", "retry", str(parked.uuid), "--json", url=database)
    assert again.returncode == 2
    assert json.loads(again.stderr) == {
        "error": f'Only parked executions can be retried; execution "{parked.uuid}" is pending',
        "exit_code": 2,
    }

    shop.charge_down = False
    await shop.runtime.process_pending_executions()
    await shop.runtime.process_pending_executions()
    done = await cli("execution", "show", str(parked.uuid), url=database)
    assert field_value(done.stdout, "status") == "completed"
    assert field_value(done.stdout, "next command") == "-"
    assert re.fullmatch(
        r"success: new -> shipped \(history row [0-9a-f-]{36}\)",
        field_value(done.stdout, "result"),
    )


async def test_inspect_names_the_instance_s_queued_execution(
    database: str, pool: asyncpg.Pool
) -> None:
    shop = Shop(pool)
    queued = await shop.enqueue()
    instance = queued.workflow_instance_uuid
    text = await cli("inspect", str(instance), url=database)
    assert text.returncode == 0, text.stderr
    assert field_value(text.stdout, "queued execution") == (
        f"{queued.uuid} (pending, event ship; duraflows-pg execution show {queued.uuid})"
    )
    as_json = json.loads((await cli("inspect", str(instance), "--json", url=database)).stdout)
    assert as_json["activeExecution"]["uuid"] == str(queued.uuid)
    assert as_json["activeExecution"]["status"] == "pending"

    # Once it has finished, the instance has none.
    while (await shop.runtime.process_pending_executions()).progressed:
        pass
    assert (await shop.stored(queued.uuid)).status == "completed"
    text = await cli("inspect", str(instance), url=database)
    assert field_value(text.stdout, "queued execution") == "none"
    as_json = json.loads((await cli("inspect", str(instance), "--json", url=database)).stdout)
    assert as_json["activeExecution"] is None


async def test_inspect_without_the_executions_table_has_no_queued_execution_line(
    database: str, pool: asyncpg.Pool, raw_connection: asyncpg.Connection
) -> None:
    await raw_connection.execute("DROP TABLE workflow_executions")  # no migration 008
    instance = due_reminder()
    await pg_workflow_providers(pool).instance_store.create(instance)
    text = await cli("inspect", str(instance.uuid), url=database)
    assert text.returncode == 0, text.stderr
    assert "queued execution" not in text.stdout
    as_json = await cli("inspect", str(instance.uuid), "--json", url=database)
    assert json.loads(as_json.stdout)["activeExecution"] is None


async def test_cancel_frees_the_instance_but_not_a_leased_execution(
    database: str, pool: asyncpg.Pool
) -> None:
    shop = Shop(pool)
    execution = await shop.enqueue()
    shop.hold = asyncio.Event()
    poll = asyncio.create_task(shop.runtime.process_pending_executions())
    try:
        await asyncio.wait_for(shop.in_command.wait(), 10)
        held = await cli("execution", "cancel", str(execution.uuid), url=database)
        assert_clean_error(
            held,
            2,
            f'Execution "{execution.uuid}" cannot be cancelled: it is held by a worker',
        )
        show = await cli("execution", "show", str(execution.uuid), url=database)
        assert field_value(show.stdout, "status") == "running"
        assert field_value(show.stdout, "lease").startswith("held by a worker until ")
    finally:
        shop.hold.set()
        await poll

    cancelled = await cli("execution", "cancel", str(execution.uuid), "--json", url=database)
    assert cancelled.returncode == 0, cancelled.stderr
    data = json.loads(cancelled.stdout)
    assert data["was"] == "pending"
    assert data["execution"]["status"] == "cancelled"
    assert (
        await shop.runtime.persistence.execution_store.find_active(  # type: ignore[union-attr]
            execution.workflow_instance_uuid
        )
        is None
    )
    instance = await shop.runtime.get_instance(execution.workflow_instance_uuid)
    assert instance is not None
    assert instance.current_state == "new"  # nothing undone, nothing moved

    twice = await cli("execution", "cancel", str(execution.uuid), url=database)
    assert_clean_error(
        twice, 2, f'Execution "{execution.uuid}" cannot be cancelled: it is cancelled'
    )

    text = await shop.enqueue("ship-2")
    plain = await cli("execution", "cancel", str(text.uuid), url=database)
    assert plain.stdout.strip() == (
        f"cancelled {text.uuid} (was: pending); instance {text.workflow_instance_uuid} is free "
        "again, in the state it was in; its 0 finished command(s) are not undone"
    )


async def test_unknown_malformed_and_missing(database: str, empty_database: str) -> None:
    unknown = uuid.uuid4()
    for action in ("show", "retry", "cancel"):
        result = await cli("execution", action, str(unknown), url=database)
        assert_clean_error(result, 1, f"no queued execution {unknown}")
        malformed = await cli("execution", action, "not-a-uuid", url=database)
        assert_clean_error(malformed, 2, "must be a UUID")
    as_json = await cli("--json", "execution", "show", str(unknown), url=database)
    assert json.loads(as_json.stderr) == {
        "error": f"no queued execution {unknown}",
        "exit_code": 1,
    }
    assert_clean_error(await cli("execution", "list", "--limit", "0", url=database), 2, "--limit")
    completed = await cli("execution", "list", "--status", "completed", url=database)
    assert completed.returncode == 2
    assert "argument --status: invalid choice: 'completed'" in completed.stderr
    assert_clean_error(await cli("execution", "show", str(unknown)), 2, "give --database-url")
    missing = "the duraflows tables are missing: run `duraflows-pg migrate up`"
    for args in (["show", str(unknown)], ["list"], ["cancel", str(unknown)]):
        assert_clean_error(await cli("execution", *args, url=empty_database), 1, missing)


def plan_nodes(plan: Any) -> list[dict[str, Any]]:
    nodes, stack = [], [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    return nodes


async def test_the_listing_reads_the_index_of_active_executions(pool: asyncpg.Pool) -> None:
    # 5,000 completed executions and a few active ones: the listing must not read them all.
    await pool.execute(
        "INSERT INTO workflow_instances (uuid, workflow_name, current_state) "
        "SELECT gen_random_uuid(), 'shipping', 'shipped' FROM generate_series(1, 5000)"
    )
    await pool.execute(
        "INSERT INTO workflow_executions (uuid, workflow_instance_uuid, idempotency_key, status, "
        "available_at, revision, execution_json) SELECT gen_random_uuid(), uuid, 'k', "
        "CASE WHEN random() < 0.002 THEN 'parked' ELSE 'completed' END, now(), 1, "
        """'{"workflowName": "shipping"}'::jsonb FROM workflow_instances"""
    )
    await pool.execute("ANALYZE workflow_executions")
    sql = "EXPLAIN (FORMAT JSON) " + list_active_executions(None)
    plan = plan_nodes(await pool.fetchval(sql, ["parked"], None, 100))
    assert "workflow_executions_active_idx" in [n.get("Index Name") for n in plan], plan
    assert not [n for n in plan if n["Node Type"] == "Seq Scan"], plan


def test_the_listing_is_qualified_by_the_schema() -> None:
    assert 'FROM "tenant_a".workflow_executions ' in list_active_executions("tenant_a")
    assert "FROM workflow_executions " in list_active_executions(None)


# --- worker ---------------------------------------------------------------------------------

# The package under test, for the worker's process: found first, before any installed copy.
PACKAGE_ROOT = str(Path(duraflows_pg_async.__file__).parents[1])


def worker_env(database: str) -> dict[str, str]:
    """The worker's environment: APP is found by the command (the current directory)."""
    return clean_env(DATABASE_URL=database, PYTHONPATH=PACKAGE_ROOT)


SHIP_THREE = WorkflowDefinition(
    name="shipping",
    initial_state="new",
    states={
        "new": State(
            events={
                "ship": Event(
                    target_state="shipped",
                    commands=(CommandRef("reserve"), CommandRef("charge"), CommandRef("label")),
                )
            }
        ),
        "shipped": State(),
    },
)

BOTH_APP = (
    APP
    + """

SHIPPING = WorkflowDefinition(
    name="shipping",
    initial_state="new",
    states={
        "new": State(events={"ship": Event(target_state="shipped", commands=(
            CommandRef("reserve"), CommandRef("charge"), CommandRef("label")))}),
        "shipped": State(),
    },
)


def both(persistence):
    runtime = build(persistence)
    runtime.definitions.register(SHIPPING)
    for name in ("reserve", "charge", "label"):
        def command(subject, ctx, name=name):
            ctx.context[name] = ctx.durable.attempt
        runtime.commands.register(name, command)
    return runtime
"""
)


async def test_worker_runs_timeouts_and_queued_executions(
    database: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    (tmp_path / "cli_both.py").write_text(BOTH_APP)
    providers = pg_workflow_providers(pool, durable_execution=True)
    definitions = DefinitionRegistry()
    definitions.register(SHIP_THREE)  # the same definition as the APP's: one snapshot
    commands = CommandRegistry()
    for name in ("reserve", "charge", "label"):
        commands.register(name, lambda subject, ctx: None)
    runtime = WorkflowRuntime(definitions=definitions, commands=commands, persistence=providers)
    instance = await runtime.create_instance("shipping")
    execution = await runtime.enqueue_event(instance.uuid, "ship", idempotency_key="k")
    reminder = due_reminder()
    await providers.instance_store.create(reminder)

    env = worker_env(database)
    worker = await Worker.start(tmp_path, env, "cli_both:both", "--json", "--poll-interval", "0.1")
    try:
        started = json.loads(await worker.first_line())
        assert (started["timeouts"], started["executions"]) == (True, True)

        async def both_done() -> bool:
            shipped = await providers.instance_store.find_by_uuid(instance.uuid)
            reminded = await providers.instance_store.find_by_uuid(reminder.uuid)
            assert shipped is not None
            assert reminded is not None
            if (shipped.current_state, reminded.current_state) == ("shipped", "reminded"):
                return True
            worker.check_running()
            return False

        await wait_until(both_done, within=30, what="the worker processing both kinds of work")
        code, out, err = await worker.stop()
    finally:
        worker.kill()
    assert code == 0, err
    assert json.loads(out.splitlines()[-1]) == {
        "event": "stopped",
        "processed": 1,
        "failed": 0,
        "parked": 0,
        "executions": {"processed": 3, "completed": 1, "retrying": 0, "parked": 0, "failed": 0},
        "exit_code": 0,
    }
    shipped = await providers.instance_store.find_by_uuid(instance.uuid)
    assert shipped is not None
    assert shipped.context == {"reserve": 1, "charge": 1, "label": 1}
    stored = await runtime.get_execution(execution.uuid)
    assert stored is not None
    assert stored.status == "completed"


async def test_worker_text_lines_name_both_kinds(database: str, tmp_path: Path) -> None:
    (tmp_path / "cli_both.py").write_text(BOTH_APP)
    env = worker_env(database)
    worker = await Worker.start(tmp_path, env, "cli_both:both", "--workers", "2")
    try:
        assert (
            "2 worker(s) running for timeouts and 2 for queued executions"
            in await worker.first_line()
        )
        code, out, err = await worker.stop()
    finally:
        worker.kill()
    assert code == 0, err
    assert out.splitlines()[-1] == (
        "duraflows-pg worker: stopped; 0 timeouts processed, 0 failed, 0 parked; 0 execution "
        "steps, 0 executions completed, 0 retrying, 0 parked, 0 failed"
    )


@pytest.mark.parametrize(
    ("args", "first_line", "warning"),
    [
        (["--no-executions"], "1 worker(s) running for timeouts (", None),
        (["--no-timeouts"], "1 worker(s) running for queued executions (", None),
        # --workflow cannot narrow the queue: no execution workers unless asked for.
        (["--workflow", "reminder"], "1 worker(s) running for timeouts (", None),
        (
            ["--workflow", "reminder", "--executions"],
            "1 worker(s) running for timeouts and 1 for queued executions (",
            "--workflow narrows the timeout sweeps only",
        ),
        (
            ["--no-timeouts", "--lease", "5"],
            "1 worker(s) running for queued executions (",
            "--lease has no effect with --no-timeouts",
        ),
    ],
)
async def test_worker_kinds_are_chosen_by_options(
    database: str, tmp_path: Path, args: list[str], first_line: str, warning: str | None
) -> None:
    (tmp_path / "cli_both.py").write_text(BOTH_APP)
    worker = await Worker.start(tmp_path, worker_env(database), "cli_both:both", *args)
    try:
        assert first_line in await worker.first_line()
        code, _, err = await worker.stop()
    finally:
        worker.kill()
    assert code == 0, err
    if warning is not None:
        assert warning in err
    else:
        assert "has no effect" not in err
        assert "narrows" not in err


async def test_worker_kind_errors(
    database: str, raw_connection: asyncpg.Connection, tmp_path: Path
) -> None:
    (tmp_path / "cli_both.py").write_text(BOTH_APP)
    path = {"PYTHONPATH": os.pathsep.join([str(tmp_path), PACKAGE_ROOT])}

    async def worker(*args: str, url: str = database) -> Any:
        return await cli("worker", "cli_both:both", *args, url=url, extra_env=path)

    assert_clean_error(
        await worker("--no-timeouts", "--no-executions"),
        2,
        "--no-timeouts and --no-executions: nothing to run",
    )
    assert_clean_error(
        await worker("--no-timeouts", "--workflow", "reminder"),
        2,
        "--no-timeouts: nothing to run (--workflow narrows the worker; --executions runs",
    )
    ready = await cli("worker", "cli_both:READY", "--executions", url=database, extra_env=path)
    assert_clean_error(
        ready,
        2,
        "--executions: cli_both:READY is a WorkflowRuntime whose provider has no execution store",
    )
    # A database without migration 008: timeouts only, unless executions are asked for.
    await raw_connection.execute("DROP TABLE workflow_executions")
    assert_clean_error(
        await worker("--executions"),
        1,
        "--executions: table workflow_executions is missing: run `duraflows-pg migrate up`",
    )
    assert_clean_error(await worker("--no-timeouts"), 2, "(no execution store;")


async def test_worker_without_the_executions_table_sweeps_timeouts(
    database: str, raw_connection: asyncpg.Connection, tmp_path: Path
) -> None:
    await raw_connection.execute("DROP TABLE workflow_executions")
    (tmp_path / "cli_both.py").write_text(BOTH_APP)
    reminder: WorkflowInstance = due_reminder()
    await raw_connection.execute(
        "INSERT INTO workflow_instances (uuid, workflow_name, current_state, expires_at) "
        "VALUES ($1, 'reminder', 'waiting', $2)",
        reminder.uuid,
        reminder.expires_at,
    )
    worker = await Worker.start(
        tmp_path, worker_env(database), "cli_both:both", "--poll-interval", "0.1"
    )
    try:
        assert "1 worker(s) running for timeouts (" in await worker.first_line()

        async def reminded() -> bool:
            state = await raw_connection.fetchval(
                "SELECT current_state FROM workflow_instances WHERE uuid = $1", reminder.uuid
            )
            worker.check_running()
            return bool(state == "reminded")

        await wait_until(reminded, within=30, what="the timeout swept")
        code, out, err = await worker.stop()
    finally:
        worker.kill()
    assert code == 0, err
    assert "Traceback" not in err
    assert out.splitlines()[-1].endswith("stopped; 1 timeouts processed, 0 failed, 0 parked")


async def test_executions_is_the_same_command_as_execution(
    database: str, pool: asyncpg.Pool
) -> None:
    shop = Shop(pool, max_attempts=1)
    parked = await parked_execution(shop)
    plural = await cli("executions", "list", "--json", url=database)
    singular = await cli("execution", "list", "--json", url=database)
    assert plural.returncode == 0, plural.stderr
    assert json.loads(plural.stdout) == json.loads(singular.stdout)
    assert [e["uuid"] for e in json.loads(plural.stdout)] == [str(parked.uuid)]
