"""The timeout sweep: N due instances drained by k concurrent ``TimeoutWorker``s.

Each worker has its own runtime and its own pool, all in this process. Throughput is counted from
the workers' start to the moment the observers (which run after each COMMIT) have seen every
instance enter its final state. Exclusivity is checked twice: history rows per instance (one
each, or the instance was processed twice) and the uuids the timeout command recorded.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    CommandResult,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    State,
    StateEnterEvent,
    Timeout,
    TimeoutWorker,
    WorkflowDefinition,
    WorkflowRuntime,
    pg_workflow_providers,
)

from .workloads import Codec, duraflows_pool

__all__ = ["SWEEP_WORKFLOW", "SweepResult", "count_repeats", "run_sweep"]

SWEEP_WORKFLOW = WorkflowDefinition(
    name="bench_timeout",
    version=1,
    initial_state="waiting",
    states={
        "waiting": State(
            events={
                "expire": Event(
                    target_state="expired",
                    commands=(CommandRef("record"),),
                    timeout=Timeout(minutes=5),
                )
            }
        ),
        "expired": State(),
    },
)

# How long the sweep may go without progress before the run is abandoned (a bug, not a result).
STALL_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class SweepResult:
    workers: int
    instances: int
    seconds: float
    per_second: float
    processed_twice: int  # instances with more than one history row
    commands_repeated: int  # instances whose timeout command ran more than once
    failed: int  # failed attempts the workers counted
    left_due: int  # instances still waiting at the end (0 unless the run stalled)
    sweeps: int


async def reset_due_instances(pool: asyncpg.Pool, count: int) -> None:
    """Empty the instance and history tables and insert ``count`` instances due an hour ago,
    oldest first; then ANALYZE, as autovacuum would soon do on a real table."""
    async with pool.acquire() as conn:
        await conn.execute("TRUNCATE workflow_history, workflow_instances CASCADE")
        await conn.execute(
            "INSERT INTO workflow_instances (uuid, workflow_name, current_state, version, "
            "expires_at, last_transition_at, context_json, metadata_json, created_at, "
            "updated_at, definition_version) "
            "SELECT id, 'bench_timeout', 'waiting', 0, "
            "now() - interval '1 hour' + i * interval '1 millisecond', now(), "
            "jsonb_build_object('id', id::text), '{}'::jsonb, now(), now(), 1 "
            "FROM (SELECT gen_random_uuid() AS id, i FROM generate_series(1, $1::int) AS i) AS s",
            count,
        )
        await conn.execute("ANALYZE workflow_instances, workflow_history")


async def count_repeats(admin: asyncpg.Pool) -> tuple[int, int]:
    """(instances with more than one history row, instances still waiting)."""
    async with admin.acquire() as conn:
        twice = await conn.fetchval(
            "SELECT count(*) FROM (SELECT workflow_instance_uuid FROM workflow_history "
            "GROUP BY workflow_instance_uuid HAVING count(*) > 1) AS repeated"
        )
        left = await conn.fetchval(
            "SELECT count(*) FROM workflow_instances WHERE current_state = 'waiting'"
        )
    return int(twice), int(left)


def _sweep_runtime(
    pool: asyncpg.Pool, recorded: collections.Counter[str], observe: Any
) -> WorkflowRuntime:
    """A runtime whose timeout command counts the instances it ran for (their ``id``)."""

    def record(subject: Any, ctx: ExecutionContext) -> CommandResult:
        recorded[ctx.context["id"]] += 1
        return CommandResult(ok=True, code="EXPIRED")

    definitions = DefinitionRegistry()
    definitions.register(SWEEP_WORKFLOW)
    commands = CommandRegistry()
    commands.register("record", record)
    return WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        persistence=pg_workflow_providers(pool),
        observers=[observe],
    )


async def run_sweep(
    *,
    dsn: str,
    admin: asyncpg.Pool,
    instances: int,
    workers: int,
    batch_size: int,
    poll_interval: float,
    codec: Codec,
    batched: bool = False,
) -> SweepResult:
    """Insert ``instances`` due instances and time ``workers`` TimeoutWorkers draining them
    (``batched``: with batched sweeps)."""
    recorded: collections.Counter[str] = collections.Counter()
    done = asyncio.Event()
    entered = 0

    def observe(event: StateEnterEvent) -> None:
        nonlocal entered
        entered += 1
        if entered >= instances:
            done.set()

    pools = [await duraflows_pool(dsn, 2, codec) for _ in range(workers)]
    try:
        runtimes = [_sweep_runtime(pool, recorded, observe) for pool in pools]
        for runtime in runtimes:
            await runtime.initialize()
        await reset_due_instances(admin, instances)
        timeout_workers = [
            TimeoutWorker(
                runtime, batch_size=batch_size, poll_interval=poll_interval, batched=batched
            )
            for runtime in runtimes
        ]
        start = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for worker in timeout_workers:
                group.create_task(worker.run())
            last, last_progress = 0, time.perf_counter()
            while not done.is_set():
                try:
                    await asyncio.wait_for(done.wait(), 1.0)
                except TimeoutError:
                    if entered != last:
                        last, last_progress = entered, time.perf_counter()
                    elif time.perf_counter() - last_progress > STALL_SECONDS:
                        break
            seconds = time.perf_counter() - start
            for worker in timeout_workers:
                worker.stop()
        twice, left = await count_repeats(admin)
    finally:
        for pool in pools:
            await pool.close()
    return SweepResult(
        workers=workers,
        instances=instances,
        seconds=seconds,
        per_second=entered / seconds if seconds > 0 else 0.0,
        processed_twice=twice,
        commands_repeated=sum(1 for count in recorded.values() if count > 1),
        failed=sum(worker.stats.failed for worker in timeout_workers),
        left_due=left,
        sweeps=sum(worker.stats.sweeps for worker in timeout_workers),
    )
