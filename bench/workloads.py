"""The three in-process variants of one transition, and the loop that times them.

Every variant runs one transition per transaction on an instance owned by the task running it:
task ``i`` always touches instance ``i``, so tasks never wait for each other's row locks. What is
measured is the cost of a transition, not lock contention.

- ``asyncpg`` (baseline A): hand-written asyncpg, ``async with pool.acquire() as conn,
  conn.transaction()`` around the SELECT … FOR UPDATE, UPDATE and INSERT of :mod:`bench.sql`.
- ``adapter``: ``runner.transaction()`` + ``lock_by_uuid`` + ``update`` + ``append``.
- ``runtime``: ``runtime.trigger_event`` of a self-transition with a guard and one command.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from time import perf_counter_ns
from typing import Any, Literal
from uuid import UUID, uuid4

import asyncpg

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
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
    create_pool,
    pg_workflow_providers,
)

from . import sql

__all__ = [
    "BENCH_WORKFLOW",
    "Codec",
    "RoundResult",
    "Transition",
    "adapter_transitions",
    "asyncpg_pool",
    "asyncpg_transitions",
    "build_runtime",
    "create_rows",
    "duraflows_pool",
    "run_round",
    "runtime_transitions",
]

Transition = Callable[[], Awaitable[None]]
Codec = Literal["default", "stdlib", "orjson"]

BENCH_WORKFLOW = WorkflowDefinition(
    name="bench",
    version=1,
    initial_state="open",
    states={
        # A self-transition: it can repeat forever. No declared context on the state, which
        # would be re-applied on every entry and reset the counter.
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

_COMMAND_RESULTS = [{"ok": True, "code": "TOUCHED"}]
_TRIGGER = {"source": "bench"}


# --- pools -------------------------------------------------------------------------------------


def _json_functions(codec: Codec, *, baseline: bool) -> tuple[Any, Any] | None:
    """(dumps, loads) for a pool, or None for the adapter's own default."""
    if codec == "orjson":
        import orjson

        return orjson.dumps, orjson.loads
    if codec == "stdlib" or baseline:
        # What asyncpg's documentation shows for json columns, and what plain code does.
        return json.dumps, json.loads
    return None


async def asyncpg_pool(dsn: str, size: int, codec: Codec) -> asyncpg.Pool:
    """A plain asyncpg pool of exactly ``size`` connections with json/jsonb codecs."""
    functions = _json_functions(codec, baseline=True)
    assert functions is not None
    dumps, loads = functions

    def encode(value: Any) -> str:
        out = dumps(value)
        return out.decode() if isinstance(out, bytes) else str(out)

    async def init(conn: asyncpg.Connection) -> None:
        for type_name in ("jsonb", "json"):
            await conn.set_type_codec(
                type_name, encoder=encode, decoder=loads, schema="pg_catalog", format="text"
            )

    pool: asyncpg.Pool = await asyncpg.create_pool(dsn, min_size=size, max_size=size, init=init)
    return pool


async def duraflows_pool(dsn: str, size: int, codec: Codec) -> asyncpg.Pool:
    """``create_pool`` of the package with exactly ``size`` connections."""
    functions = _json_functions(codec, baseline=False)
    if functions is None:
        return await create_pool(dsn, min_size=size, max_size=size)
    dumps, loads = functions
    return await create_pool(dsn, min_size=size, max_size=size, json_dumps=dumps, json_loads=loads)


# --- instances ---------------------------------------------------------------------------------


async def create_rows(pool: asyncpg.Pool, uuids: Sequence[UUID]) -> None:
    """Insert instances of the bench workflow in state ``open`` with ``{"n": 0}`` as context."""
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO workflow_instances (uuid, workflow_name, current_state, version, "
            "context_json, metadata_json, last_transition_at, created_at, updated_at, "
            "definition_version) VALUES ($1, 'bench', 'open', 0, '{\"n\": 0}'::jsonb, "
            "'{}'::jsonb, $2, $2, $2, 1)",
            [(uuid, now) for uuid in uuids],
        )


# --- baseline A --------------------------------------------------------------------------------


async def _asyncpg_transition(pool: asyncpg.Pool, instance_uuid: UUID) -> None:
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(sql.LOCK_INSTANCE, instance_uuid)
        if row is None:
            raise LookupError(f"no instance {instance_uuid}")
        context = row["context_json"]
        context["n"] = context.get("n", 0) + 1
        version = row["version"]
        now = datetime.now(UTC)
        status = await conn.execute(
            sql.UPDATE_INSTANCE,
            instance_uuid,
            row["current_state"],
            version + 1,
            row["expires_at"],
            now,
            context,
            now,
            row["definition_version"],
            row["timeout_attempts"],
            row["timeout_retry_at"],
            row["timeout_last_error"],
            row["timeout_parked_at"],
            version,
        )
        if status != "UPDATE 1":
            raise RuntimeError(f"instance {instance_uuid} changed under its row lock")
        await conn.fetchval(
            sql.INSERT_HISTORY,
            instance_uuid,
            row["current_state"],
            "touch",
            row["current_state"],
            "success",
            None,
            None,
            _COMMAND_RESULTS,
            _TRIGGER,
            row["definition_version"],
        )


def asyncpg_transitions(pool: asyncpg.Pool, uuids: Sequence[UUID]) -> list[Transition]:
    return [_bind(_asyncpg_transition, pool, uuid) for uuid in uuids]


# --- the adapter -------------------------------------------------------------------------------


async def _adapter_transition(
    persistence: WorkflowPersistenceProvider, instance_uuid: UUID
) -> None:
    async with persistence.transaction_runner.transaction():
        instance = await persistence.instance_store.lock_by_uuid(instance_uuid)
        if instance is None:
            raise LookupError(f"no instance {instance_uuid}")
        instance.context["n"] = instance.context.get("n", 0) + 1
        instance.version += 1
        instance.last_transition_at = instance.updated_at = datetime.now(UTC)
        await persistence.instance_store.persist_transition(
            instance,
            HistoryRecord(
                workflow_instance_uuid=instance_uuid,
                from_state=instance.current_state,
                event_name="touch",
                to_state=instance.current_state,
                outcome="success",
                command_results=[CommandResult(ok=True, code="TOUCHED")],
                trigger_metadata={"source": "bench"},
                definition_version=instance.definition_version,
            ),
        )


def adapter_transitions(pool: asyncpg.Pool, uuids: Sequence[UUID]) -> list[Transition]:
    persistence = pg_workflow_providers(pool)
    return [_bind(_adapter_transition, persistence, uuid) for uuid in uuids]


# --- the runtime -------------------------------------------------------------------------------


def _allowed(subject: Any, ctx: ExecutionContext) -> bool:
    return True


def _increment(subject: Any, ctx: ExecutionContext) -> CommandResult:
    ctx.context["n"] = ctx.context.get("n", 0) + 1
    return CommandResult(ok=True, code="TOUCHED")


def build_runtime(pool: asyncpg.Pool) -> WorkflowRuntime:
    """A runtime for the bench workflow on ``pool`` (no observers, no timeouts set)."""
    definitions = DefinitionRegistry()
    definitions.register(BENCH_WORKFLOW)
    commands = CommandRegistry()
    commands.register("increment", _increment)
    guards = GuardRegistry()
    guards.register("allowed", _allowed)
    return WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        guards=guards,
        persistence=pg_workflow_providers(pool),
    )


async def _runtime_transition(runtime: WorkflowRuntime, instance_uuid: UUID) -> None:
    result = await runtime.trigger_event(
        instance_uuid, "touch", subject={"actor": "bench"}, trigger_metadata={"source": "bench"}
    )
    if result.outcome != "success":
        raise RuntimeError(f"touch on {instance_uuid} ended with {result.outcome}")


def runtime_transitions(runtime: WorkflowRuntime, uuids: Sequence[UUID]) -> list[Transition]:
    return [_bind(_runtime_transition, runtime, uuid) for uuid in uuids]


def _bind(fn: Callable[[Any, UUID], Awaitable[None]], target: Any, uuid: UUID) -> Transition:
    def transition() -> Awaitable[None]:
        return fn(target, uuid)

    return transition


# --- timing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoundResult:
    """One timed round: how many transitions all tasks completed, in how long."""

    transitions: int
    seconds: float
    latencies_ns: list[int]

    @property
    def per_second(self) -> float:
        return self.transitions / self.seconds if self.seconds > 0 else 0.0


async def run_round(transitions: Sequence[Transition], seconds: float) -> RoundResult:
    """Run each transition in a loop in its own task until ``seconds`` have passed.

    A transition started before the deadline is finished and counted; the round ends when the
    last task has finished its last one.
    """
    latencies: list[int] = []
    record = latencies.append
    start = perf_counter_ns()
    deadline = start + int(seconds * 1e9)

    async def loop(transition: Transition) -> None:
        now = perf_counter_ns()
        while now < deadline:
            await transition()
            end = perf_counter_ns()
            record(end - now)
            now = end

    async with asyncio.TaskGroup() as group:
        for transition in transitions:
            group.create_task(loop(transition))
    elapsed = (perf_counter_ns() - start) / 1e9
    return RoundResult(transitions=len(latencies), seconds=elapsed, latencies_ns=latencies)


async def run_count(transitions: Sequence[Transition], count: int) -> None:
    """Run exactly ``count`` transitions, spread over the tasks (the memory measurement)."""
    remaining = count

    async def loop(transition: Transition) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await transition()

    async with asyncio.TaskGroup() as group:
        for transition in transitions:
            group.create_task(loop(transition))


def new_uuids(count: int) -> list[UUID]:
    return [uuid4() for _ in range(count)]
