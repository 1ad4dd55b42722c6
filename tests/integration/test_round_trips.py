"""Round trips and statements per transition, counted on the wire: a regression fails here.

Round trips are the writes asyncpg makes on the connection's socket (each request of one
transition waits for its answer before the next is written); statements are what asyncpg's query
logger sees, a multi-statement simple query (the session reset) counted statement by statement.
The counts are taken once the connection's statement cache is warm, as in a running service: a
statement's first use costs one more round trip to prepare it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    CommandResult,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    GuardRef,
    GuardRegistry,
    HistoryRecord,
    State,
    Timeout,
    WorkflowDefinition,
    WorkflowRuntime,
    create_pool,
    pg_workflow_providers,
)

RESET_STATEMENTS = ("SELECT pg_advisory_unlock_all()", "CLOSE ALL", "UNLISTEN *", "RESET ALL")

WORKFLOW = WorkflowDefinition(
    name="counted",
    initial_state="open",
    states={
        "open": State(
            events={
                "touch": Event(
                    target_state="open",
                    guard=GuardRef("allowed"),
                    commands=(CommandRef("increment"),),
                )
            }
        )
    },
)


class Wire:
    """What the pool's one connection sends: socket writes and statements."""

    def __init__(self) -> None:
        self.writes = 0
        self.statements: list[str] = []

    def clear(self) -> None:
        self.writes = 0
        self.statements.clear()

    def log(self, record: Any) -> None:
        # A simple query may hold several statements (the session reset ahead of COMMIT).
        self.statements += [s.strip() for s in record.query.split(";") if s.strip()]

    async def watch(self, conn: asyncpg.Connection) -> None:
        conn.add_query_logger(self.log)
        transport = conn._transport  # type: ignore[attr-defined]
        write, writelines = transport.write, transport.writelines

        def counted_write(data: Any) -> None:
            self.writes += 1
            write(data)

        def counted_writelines(data: Any) -> None:
            self.writes += 1
            writelines(data)

        transport.write, transport.writelines = counted_write, counted_writelines

    def kinds(self) -> list[str]:
        """Each statement by its first words, the way a reader names it."""
        out = []
        for statement in self.statements:
            words = statement.split()
            if words[0] == "SELECT" and "FOR UPDATE" in statement:
                out.append("SELECT ... FOR UPDATE")
            elif words[0] == "WITH":
                out.append("WITH moved AS (UPDATE ...) INSERT ...")
            else:
                out.append(statement)
        return out


@pytest.fixture
async def wired(database: str) -> AsyncIterator[tuple[asyncpg.Pool, Wire]]:
    wire = Wire()
    pool = await create_pool(database, min_size=1, max_size=1, init=wire.watch)
    try:
        yield pool, wire
    finally:
        await pool.close()


def _runtime(pool: asyncpg.Pool) -> WorkflowRuntime:
    definitions = DefinitionRegistry()
    definitions.register(WORKFLOW)
    commands = CommandRegistry()

    def increment(subject: Any, ctx: ExecutionContext) -> CommandResult:
        ctx.context["n"] = ctx.context.get("n", 0) + 1
        return CommandResult(ok=True, code="TOUCHED")

    commands.register("increment", increment)
    guards = GuardRegistry()
    guards.register("allowed", lambda subject, ctx: True)
    return WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        guards=guards,
        persistence=pg_workflow_providers(pool),
    )


TRANSITION = ["BEGIN", "SELECT ... FOR UPDATE", "WITH moved AS (UPDATE ...) INSERT ...", "COMMIT"]


async def test_a_runtime_transition_is_four_round_trips_and_four_statements(wired: Any) -> None:
    pool, wire = wired
    runtime = _runtime(pool)
    instance = await runtime.create_instance("counted", context={"n": 0})
    await runtime.trigger_event(instance.uuid, "touch", trigger_metadata={"source": "test"})
    wire.clear()
    for _ in range(5):
        result = await runtime.trigger_event(
            instance.uuid, "touch", subject={"actor": "test"}, trigger_metadata={"source": "test"}
        )
        assert result.outcome == "success"
    assert wire.kinds() == TRANSITION * 5
    assert wire.writes == 4 * 5
    assert not any(s.startswith(RESET_STATEMENTS) for s in wire.statements)
    # The reset left out is not sent at release either, and the guarantees hold.
    stored = await runtime.get_instance(instance.uuid)
    assert stored is not None
    assert (stored.version, stored.context) == (6, {"n": 6})
    assert len(await runtime.get_history(instance.uuid, limit=100)) == 6


# "counted" with a deadline: each transition re-enters "open" and sets one, 30 s away, near
# enough to wake the workers (the provider's notify_within, 60 s by default).
DEADLINED = WorkflowDefinition(
    name="deadlined",
    initial_state="open",
    states={
        "open": State(
            events={
                "touch": Event(target_state="open", commands=(CommandRef("increment"),)),
                "expire": Event(target_state="open", timeout=Timeout(seconds=30)),
            }
        )
    },
)


async def test_a_transition_that_sets_a_near_deadline_notifies_in_its_own_statement(
    wired: Any,
) -> None:
    pool, wire = wired
    runtime = _runtime(pool)
    runtime.definitions.register(DEADLINED)
    instance = await runtime.create_instance("deadlined", context={"n": 0})
    await runtime.trigger_event(instance.uuid, "touch")
    wire.clear()
    for _ in range(5):
        assert (await runtime.trigger_event(instance.uuid, "touch")).outcome == "success"
    # The NOTIFY rides on the transition's statement: no round trip, no statement more.
    assert wire.kinds() == TRANSITION * 5
    assert wire.writes == 4 * 5
    assert all("pg_notify(" in s for s in wire.statements if s.startswith("WITH"))


async def test_an_adapter_transition_is_four_round_trips_and_four_statements(wired: Any) -> None:
    pool, wire = wired
    providers = pg_workflow_providers(pool)
    runtime = _runtime(pool)
    instance_uuid: UUID = (await runtime.create_instance("counted", context={"n": 0})).uuid

    async def transition() -> None:
        async with providers.transaction_runner.transaction():
            instance = await providers.instance_store.lock_by_uuid(instance_uuid)
            assert instance is not None
            instance.context["n"] += 1
            instance.version += 1
            instance.last_transition_at = instance.updated_at = datetime.now(UTC)
            await providers.instance_store.persist_transition(
                instance,
                HistoryRecord(
                    workflow_instance_uuid=instance_uuid,
                    from_state="open",
                    event_name="touch",
                    to_state="open",
                    outcome="success",
                ),
            )

    await transition()
    wire.clear()
    for _ in range(5):
        await transition()
    assert wire.kinds() == TRANSITION * 5
    assert wire.writes == 4 * 5


async def test_the_session_reset_goes_with_the_commit_once_the_connection_was_handed_out(
    wired: Any,
) -> None:
    pool, wire = wired
    providers = pg_workflow_providers(pool)
    runner = providers.transaction_runner
    async with runner.transaction():
        await runner.connection().execute("SET application_name = 'mine'")
    wire.clear()
    async with runner.transaction():
        await runner.connection().execute("SET application_name = 'mine'")
    # BEGIN, SET, then the reset and COMMIT in one round trip; nothing at release.
    assert wire.statements == [
        "BEGIN",
        "SET application_name = 'mine'",
        *RESET_STATEMENTS,
        "COMMIT",
    ]
    assert wire.writes == 3
    async with pool.acquire() as conn:
        assert await conn.fetchval("SHOW application_name") == ""
