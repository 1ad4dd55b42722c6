"""TimeoutWorker: exactly-once sweeping with several workers, graceful stop, cancellation."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest
from helpers import REMINDER, ManualClock

from duraflows_pg_async import (
    CommandRegistry,
    DefinitionRegistry,
    ExecutionContext,
    TimeoutWorker,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
    create_pool,
    memory_workflow_providers,
    pg_workflow_providers,
)
from duraflows_pg_async.errors import InvalidArgumentError


def make_runtime(
    persistence: WorkflowPersistenceProvider,
    clock: ManualClock,
    sent: list[UUID],
    delay: float = 0.0,
    *,
    on_send: Callable[[int], None] | None = None,
) -> WorkflowRuntime:
    definitions = DefinitionRegistry()
    definitions.register(REMINDER)
    commands = CommandRegistry()

    async def send(subject: Any, ctx: ExecutionContext) -> None:
        if delay:
            await asyncio.sleep(delay)  # a slow command (the instance in hand), not a wait
        sent.append(ctx.transition_uuid)
        ctx.context["sent"] = True
        if on_send is not None:
            on_send(len(sent))

    commands.register("send", send)
    return WorkflowRuntime(
        definitions=definitions, commands=commands, persistence=persistence, clock=clock
    )


@pytest.mark.slow
async def test_three_workers_process_a_thousand_instances_exactly_once(
    database: str, clock: ManualClock
) -> None:
    pools = [await create_pool(database, min_size=2, max_size=4) for _ in range(3)]
    try:
        sent: list[UUID] = []
        all_sent = asyncio.Event()

        def on_send(count: int) -> None:
            if count >= 1000:
                all_sent.set()

        runtimes = [
            make_runtime(pg_workflow_providers(p), clock, sent, on_send=on_send) for p in pools
        ]
        async with pools[0].acquire() as conn:
            # Bulk-create 1,000 due instances in one statement (the subject here is sweeping).
            await runtimes[0].initialize()
            await conn.execute(
                "INSERT INTO workflow_instances (uuid, workflow_name, current_state, "
                "definition_version, expires_at) SELECT gen_random_uuid(), 'reminder', 'waiting', "
                "1, $1::timestamptz - (g || ' seconds')::interval FROM generate_series(1, 1000) g",
                clock.now(),
            )
        workers = [TimeoutWorker(r, batch_size=50, poll_interval=0.05) for r in runtimes]
        async with asyncio.TaskGroup() as group:
            for worker in workers:
                group.create_task(worker.run())

            await asyncio.wait_for(all_sent.wait(), 120)
            for worker in workers:
                worker.stop()
        assert len(sent) == 1000
        assert sum(w.stats.processed for w in workers) == 1000
        assert all(w.stats.processed > 0 for w in workers), [w.stats for w in workers]
        async with pools[0].acquire() as conn:
            per_instance = await conn.fetch(
                "SELECT workflow_instance_uuid, count(*) FROM workflow_history GROUP BY 1"
            )
            assert len(per_instance) == 1000
            assert Counter(row[1] for row in per_instance) == {1: 1000}
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM workflow_instances WHERE current_state = 'reminded' "
                    "AND version = 1 AND expires_at IS NULL"
                )
                == 1000
            )
    finally:
        for p in pools:
            await p.close()


async def test_stop_before_run_returns_at_once() -> None:
    runtime = make_runtime(memory_workflow_providers(), ManualClock(), [])
    worker = TimeoutWorker(runtime, poll_interval=10)
    worker.stop()
    await asyncio.wait_for(worker.run(), 1)
    assert worker.stats.sweeps == 0


async def test_stop_finishes_the_instance_in_hand(clock: ManualClock) -> None:
    sent: list[UUID] = []
    first_sent = asyncio.Event()
    runtime = make_runtime(
        memory_workflow_providers(), clock, sent, delay=0.05, on_send=lambda n: first_sent.set()
    )
    for _ in range(10):
        await runtime.create_instance("reminder")
    clock.advance(minutes=6)
    worker = TimeoutWorker(runtime, batch_size=10, poll_interval=10)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(first_sent.wait(), 5)
    worker.stop()
    await asyncio.wait_for(task, 2)
    # The instance in hand completed; the rest of the batch was left for later.
    done_before_stop = len(sent)
    assert 1 <= done_before_stop < 10
    assert (await runtime.process_expired_workflows()).processed == 10 - done_before_stop


def record_sleeps(worker: TimeoutWorker, enough: int) -> tuple[list[float], asyncio.Event]:
    """Record the worker's sleeps between sweeps; the event is set at the ``enough``-th."""
    sleeps: list[float] = []
    reached = asyncio.Event()
    sleep = worker._sleep

    async def recording(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) >= enough:
            reached.set()
        await sleep(seconds)

    worker._sleep = recording  # type: ignore[method-assign]
    return sleeps, reached


async def test_idle_worker_sleeps_and_wakes_on_stop() -> None:
    runtime = make_runtime(memory_workflow_providers(), ManualClock(), [])
    worker = TimeoutWorker(runtime, poll_interval=30)
    sleeps, asleep = record_sleeps(worker, 1)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(asleep.wait(), 10)
    # Nothing due: one sweep, then asleep for the poll interval (not spinning).
    assert (worker.stats.sweeps, sleeps) == (1, [30.0])
    worker.stop()
    await asyncio.wait_for(task, 10)  # woken at once, not after 30 s


async def test_cancelling_the_worker_rolls_back_the_instance_in_hand(clock: ManualClock) -> None:
    runtime = make_runtime(memory_workflow_providers(), clock, [])
    started = asyncio.Event()

    async def stuck(subject: Any, ctx: ExecutionContext) -> None:
        ctx.context["sent"] = True
        started.set()
        await asyncio.Event().wait()

    runtime.commands = CommandRegistry()
    runtime.commands.register("send", stuck)
    instance = await runtime.create_instance("reminder")
    clock.advance(minutes=6)
    task = asyncio.create_task(TimeoutWorker(runtime).run())
    await asyncio.wait_for(started.wait(), 10)  # the command is in hand
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stored = await runtime.get_instance(instance.uuid)
    assert stored is not None
    assert (stored.current_state, stored.version) == ("waiting", 0)


async def test_a_poisoned_instance_does_not_make_the_worker_spin(clock: ManualClock) -> None:
    runtime = make_runtime(memory_workflow_providers(), clock, [])
    calls: list[UUID] = []

    def broken(subject: Any, ctx: ExecutionContext) -> None:
        calls.append(ctx.transition_uuid)
        raise RuntimeError("always fails")

    runtime.commands = CommandRegistry()
    runtime.commands.register("send", broken)
    await runtime.create_instance("reminder")
    clock.advance(minutes=6)
    worker = TimeoutWorker(runtime, poll_interval=0.05)
    sleeps, slept = record_sleeps(worker, 5)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(slept.wait(), 30)
    worker.stop()
    await task
    # One failed attempt, then the instance waits for its retry time (a minute away): every
    # sweep, the failing one included, is followed by the poll interval's sleep.
    assert worker.stats.failed == 1
    assert len(calls) == 1
    assert set(sleeps) == {0.05}
    assert worker.stats.sweeps == len(sleeps)


def test_worker_arguments_are_validated() -> None:
    runtime = make_runtime(memory_workflow_providers(), ManualClock(), [])
    for bad in (0, -1, 1.5):
        with pytest.raises(InvalidArgumentError, match="batch_size"):
            TimeoutWorker(runtime, batch_size=bad)  # type: ignore[arg-type]
    for bad_interval in (0, -1, float("nan"), "1"):
        with pytest.raises(InvalidArgumentError, match="poll_interval"):
            TimeoutWorker(runtime, poll_interval=bad_interval)  # type: ignore[arg-type]
