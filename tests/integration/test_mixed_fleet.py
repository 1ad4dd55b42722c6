"""One database shared with TypeScript services: history order and JavaScript-safe numbers.

The TypeScript runtime is stood in for by the statements it sends (contract: it stamps a history
row with its transaction's start, the column default now()).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from helpers import wait_until

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    CommandResult,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    State,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
    memory_workflow_providers,
    pg_workflow_providers,
)
from duraflows_pg_async.errors import InvalidArgumentError

SAFE = 2**53 - 1


def counter_definition() -> WorkflowDefinition:
    return WorkflowDefinition(
        name="counter",
        initial_state="open",
        states={"open": State(events={"bump": Event(commands=(CommandRef("bump"),))})},
    )


def make_runtime(persistence: WorkflowPersistenceProvider, bump: Any) -> WorkflowRuntime:
    definitions = DefinitionRegistry()
    definitions.register(counter_definition())
    commands = CommandRegistry()
    commands.register("bump", bump)
    return WorkflowRuntime(definitions=definitions, commands=commands, persistence=persistence)


async def typescript_transition(conn: asyncpg.Connection, instance_uuid: Any) -> None:
    """What the TypeScript runtime sends for a transition: lock, update, history (default now())."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT version FROM workflow_instances WHERE uuid = $1 FOR UPDATE", instance_uuid
        )
        await conn.execute(
            "UPDATE workflow_instances SET version = $2, updated_at = now() WHERE uuid = $1",
            instance_uuid,
            row["version"] + 1 if row is not None else 1,
        )
        await conn.execute(
            "INSERT INTO workflow_history (workflow_instance_uuid, from_state, event_name, "
            "to_state, outcome, command_results_json, trigger_metadata_json) "
            "VALUES ($1, 'open', 'ts-bump', 'open', 'success', '[]', '{}')",
            instance_uuid,
        )


async def waiting_on_a_lock(conn: asyncpg.Connection, pid: int) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        )
    )


async def test_a_typescript_transition_waiting_on_ours_reads_back_after_it(
    pool: asyncpg.Pool, database: str, raw_connection: asyncpg.Connection
) -> None:
    holding, release = asyncio.Event(), asyncio.Event()

    async def slow_bump(subject: Any, ctx: ExecutionContext) -> CommandResult:
        holding.set()
        await release.wait()
        return CommandResult(ok=True)

    runtime = make_runtime(pg_workflow_providers(pool), slow_bump)
    instance = await runtime.create_instance("counter")
    ours = asyncio.create_task(runtime.trigger_event(instance.uuid, "bump"))
    await holding.wait()
    # The TypeScript transaction starts while ours holds the row, and queues on its lock.
    ts = await asyncpg.connect(database)
    try:
        theirs = asyncio.create_task(typescript_transition(ts, instance.uuid))
        await wait_until(
            lambda: waiting_on_a_lock(raw_connection, ts.get_server_pid()),
            within=60,
            what="the TypeScript-like transaction waiting on the row lock",
        )
        release.set()
        await ours
        await theirs
    finally:
        await ts.close()
    history = await runtime.get_history(instance.uuid)
    # Newest first, in both runtimes' reading order (created_at DESC, uuid DESC).
    assert [row.event_name for row in history] == ["ts-bump", "bump"]
    assert history[0].created_at is not None
    assert history[1].created_at is not None
    assert history[0].created_at > history[1].created_at


async def test_rows_of_one_transaction_keep_their_order_after_a_typescript_row(
    pool: asyncpg.Pool, raw_connection: asyncpg.Connection
) -> None:
    runtime = make_runtime(pg_workflow_providers(pool), lambda s, c: CommandResult(ok=True))
    instance = await runtime.create_instance("counter")
    await typescript_transition(raw_connection, instance.uuid)
    async with runtime.persistence.transaction_runner.transaction():
        for _ in range(3):
            await runtime.trigger_event(instance.uuid, "bump")
    history = await runtime.get_history(instance.uuid)
    assert [row.event_name for row in history] == ["bump", "bump", "bump", "ts-bump"]
    stamps = [row.created_at for row in reversed(history) if row.created_at is not None]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == 4


@pytest.fixture(params=["memory", "postgres"])
def safe_persistence(request: pytest.FixtureRequest) -> WorkflowPersistenceProvider:
    if request.param == "memory":
        return memory_workflow_providers(js_safe_integers=True)
    request.node.user_properties.append(("postgres", True))
    return pg_workflow_providers(request.getfixturevalue("pool"), js_safe_integers=True)


async def test_js_safe_integers_refuses_what_javascript_would_round(
    safe_persistence: WorkflowPersistenceProvider,
) -> None:
    wanted: dict[str, Any] = {"n": SAFE + 1}

    def bump(subject: Any, ctx: ExecutionContext) -> CommandResult:
        ctx.context.update(wanted)
        return CommandResult(ok=True)

    runtime = make_runtime(safe_persistence, bump)
    with pytest.raises(InvalidArgumentError, match=r"context\['big'\].*safe integers"):
        await runtime.create_instance("counter", context={"big": SAFE + 1})
    with pytest.raises(InvalidArgumentError, match=r"metadata\['ids'\]\[1\].*safe integers"):
        await runtime.create_instance("counter", metadata={"ids": [1, -SAFE - 1]})
    instance = await runtime.create_instance("counter", context={"edge": SAFE, "low": -SAFE})
    with pytest.raises(InvalidArgumentError, match=r"context\['n'\]"):
        await runtime.trigger_event(instance.uuid, "bump")
    stored = await runtime.get_instance(instance.uuid)
    assert stored is not None
    assert (stored.version, stored.context) == (0, {"edge": SAFE, "low": -SAFE})
    assert await runtime.get_history(instance.uuid) == []
    wanted["n"] = SAFE
    assert (await runtime.trigger_event(instance.uuid, "bump")).outcome == "success"


async def test_without_the_option_large_integers_round_trip(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    runtime = make_runtime(any_persistence, lambda s, c: CommandResult(ok=True))
    instance = await runtime.create_instance("counter", context={"big": 2**63 + 1})
    stored = await runtime.get_instance(instance.uuid)
    assert stored is not None
    assert stored.context == {"big": 2**63 + 1}


def test_the_option_must_be_a_bool() -> None:
    with pytest.raises(InvalidArgumentError, match="js_safe_integers must be True or False"):
        memory_workflow_providers(js_safe_integers=1)  # type: ignore[arg-type]
