"""ExecutionWorker: draining the queue of executions, several workers, stop, backoff, errors."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from helpers import ManualClock

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    DefinitionRegistry,
    DurableExecutionPolicy,
    Event,
    ExecutionContext,
    ExecutionWorker,
    OnEnter,
    PgTransactionRunner,
    State,
    StateEnterEvent,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
    create_pool,
    memory_workflow_providers,
    pg_workflow_providers,
)
from duraflows_pg_async.contrib import workflow_service
from duraflows_pg_async.errors import (
    DurableExecutionNotSupportedError,
    InvalidArgumentError,
    WorkflowError,
)
from duraflows_pg_async.types import ExecutionWorkerStats

# An event of two commands, then an onEnter hop of one: three steps per execution.
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
STEPS = 3


class Shipping:
    """A runtime of the shipping workflow, counting command calls per idempotency key and
    signalling when ``expected`` instances reached ``shipped``."""

    def __init__(
        self,
        persistence: WorkflowPersistenceProvider,
        *,
        expected: int = 0,
        clock: ManualClock | None = None,
        policy: DurableExecutionPolicy | None = None,
    ) -> None:
        self.calls: Counter[str] = Counter()
        self.shipped: set[UUID] = set()
        self.all_shipped = asyncio.Event()
        self.expected = expected
        self.failing: str | None = None
        self.in_command = asyncio.Event()
        self.hold: asyncio.Event | None = None
        definitions = DefinitionRegistry()
        definitions.register(SHIPPING)
        commands = CommandRegistry()
        for name in ("reserve", "charge", "label"):
            commands.register(name, self._command(name))
        self.runtime = WorkflowRuntime(
            definitions=definitions,
            commands=commands,
            persistence=persistence,
            clock=clock,
            observers=[self._observe],
            durable_execution=policy,
        )

    def _command(self, name: str) -> Any:
        async def command(subject: Any, ctx: ExecutionContext) -> None:
            assert ctx.durable is not None
            self.calls[ctx.durable.idempotency_key] += 1
            ctx.context[name] = True
            self.in_command.set()
            if self.hold is not None:
                await self.hold.wait()
            if name == self.failing:
                raise RuntimeError(f"{name} is down")

        return command

    def _observe(self, event: StateEnterEvent) -> None:
        if event.state == "shipped":
            self.shipped.add(event.instance_uuid)
            if len(self.shipped) >= self.expected:
                self.all_shipped.set()

    async def enqueue(self, count: int) -> list[UUID]:
        executions = []
        for n in range(count):
            instance = await self.runtime.create_instance("shipping")
            execution = await self.runtime.enqueue_event(
                instance.uuid, "ship", idempotency_key=f"ship-{n}"
            )
            executions.append(execution.uuid)
        return executions


def record_sleeps(worker: ExecutionWorker, enough: int) -> tuple[list[float], asyncio.Event]:
    """Record the worker's sleeps between polls; the event is set at the ``enough``-th."""
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


async def test_the_worker_drains_the_queue_and_stops(pool: asyncpg.Pool) -> None:
    shipping = Shipping(pg_workflow_providers(pool, durable_execution=True), expected=7)
    executions = await shipping.enqueue(7)
    # A poll interval no test waits for: every step after the first comes at once, because a
    # full batch or a finished command with another one due means more work now.
    worker = ExecutionWorker(shipping.runtime, batch_size=3, poll_interval=60)
    sleeps, _ = record_sleeps(worker, 1)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(shipping.all_shipped.wait(), 30)
    worker.stop()
    await asyncio.wait_for(task, 10)
    assert not worker.running
    assert len(shipping.calls) == 7 * STEPS
    assert set(shipping.calls.values()) == {1}
    for uuid in executions:
        execution = await shipping.runtime.get_execution(uuid)
        assert execution is not None
        assert execution.status == "completed"
        assert [c.name for c in execution.journal] == ["reserve", "charge", "label"]
        assert execution.result is not None
        assert execution.result.to_state == "shipped"
    stats = worker.stats
    assert (stats.processed, stats.completed, stats.progressed) == (7 * STEPS, 7, 7 * (STEPS - 1))
    assert (stats.retrying, stats.parked, stats.failed, stats.errors) == (0, 0, 0, 0)
    assert sleeps in ([], [60.0])  # at most the last, idle poll slept (woken by stop())


async def test_stop_lets_the_poll_in_hand_finish(clock: ManualClock) -> None:
    shipping = Shipping(memory_workflow_providers(durable_execution=True), clock=clock)
    shipping.hold = asyncio.Event()
    (uuid,) = await shipping.enqueue(1)
    worker = ExecutionWorker(shipping.runtime, poll_interval=60)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(shipping.in_command.wait(), 10)
    worker.stop()
    assert not task.done()
    shipping.hold.set()
    await asyncio.wait_for(task, 10)
    # The command in hand was checkpointed; the next one waits for another worker.
    execution = await shipping.runtime.get_execution(uuid)
    assert execution is not None
    assert (execution.status, [c.name for c in execution.journal]) == ("pending", ["reserve"])
    assert worker.stats.polls == 1


async def test_cancelling_the_worker_abandons_the_command_in_hand(clock: ManualClock) -> None:
    shipping = Shipping(memory_workflow_providers(durable_execution=True), clock=clock)
    shipping.hold = asyncio.Event()
    (uuid,) = await shipping.enqueue(1)
    task = asyncio.create_task(ExecutionWorker(shipping.runtime).run())
    await asyncio.wait_for(shipping.in_command.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    execution = await shipping.runtime.get_execution(uuid)
    assert execution is not None
    assert (execution.status, execution.journal, execution.attempts) == ("running", [], 1)
    # Nothing was saved; once the lease ends, the next poll runs the command again.
    shipping.hold = None
    clock.advance(execution.policy.lease_duration)
    result = await shipping.runtime.process_pending_executions()
    assert result.progressed == [uuid]
    assert shipping.calls[f"{uuid}:0"] == 2


async def test_stop_before_run_returns_at_once() -> None:
    shipping = Shipping(memory_workflow_providers(durable_execution=True))
    worker = ExecutionWorker(shipping.runtime, poll_interval=10)
    worker.stop()
    await asyncio.wait_for(worker.run(), 1)
    assert worker.stats == ExecutionWorkerStats()


async def test_idle_worker_sleeps_and_wakes_on_stop() -> None:
    shipping = Shipping(memory_workflow_providers(durable_execution=True))
    worker = ExecutionWorker(shipping.runtime, poll_interval=30)
    sleeps, asleep = record_sleeps(worker, 1)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(asleep.wait(), 10)
    assert (worker.stats.polls, sleeps) == (1, [30.0])
    worker.stop()
    await asyncio.wait_for(task, 10)  # woken at once, not after 30 s


async def test_a_failing_command_does_not_make_the_worker_spin(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    shipping = Shipping(memory_workflow_providers(durable_execution=True), clock=clock)
    shipping.failing = "reserve"
    (uuid,) = await shipping.enqueue(1)
    worker = ExecutionWorker(shipping.runtime, poll_interval=0.05)
    sleeps, slept = record_sleeps(worker, 5)
    with caplog.at_level(logging.WARNING, logger="duraflows_pg_async"):
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(slept.wait(), 30)
        worker.stop()
        await task
    # One failed attempt; the retry is a second away on a clock that does not move: every poll,
    # the failing one included, is followed by the poll interval's sleep.
    assert shipping.calls[f"{uuid}:0"] == 1
    assert (worker.stats.retrying, worker.stats.errors) == (1, 0)
    assert set(sleeps) == {0.05}
    assert worker.stats.polls == len(sleeps)
    (record,) = [r for r in caplog.records if str(uuid) in r.getMessage()]
    assert "failed attempt 1; next attempt at 2026-05-01T00:00:01+00:00: " in record.getMessage()
    assert "reserve is down" in record.getMessage()


async def test_a_parked_execution_is_logged(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    shipping = Shipping(
        memory_workflow_providers(durable_execution=True),
        clock=clock,
        policy=DurableExecutionPolicy(max_attempts=1),
    )
    shipping.failing = "charge"
    (uuid,) = await shipping.enqueue(1)
    worker = ExecutionWorker(shipping.runtime, poll_interval=0.05)
    _, slept = record_sleeps(worker, 1)
    with caplog.at_level(logging.WARNING, logger="duraflows_pg_async"):
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(slept.wait(), 30)
        worker.stop()
        await task
    assert (worker.stats.progressed, worker.stats.parked) == (1, 1)
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith(f"duraflows: execution {uuid} parked (ship of workflow shipping")
        and "after 1 attempt(s): charge is down" in m
        and m.endswith("retry_execution() or cancel_execution() it")
        for m in messages
    ), messages


async def test_a_database_error_backs_off_and_the_worker_recovers(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await create_pool(database, min_size=1, max_size=4)
    conn = await asyncpg.connect(database)
    try:
        shipping = Shipping(pg_workflow_providers(pool, durable_execution=True), expected=1)
        await shipping.enqueue(1)
        # The queue's table goes away: every poll fails with a database error.
        await conn.execute("ALTER TABLE workflow_executions RENAME TO workflow_executions_away")
        worker = ExecutionWorker(shipping.runtime, poll_interval=0.05)
        sleeps, backed_off = record_sleeps(worker, 4)
        with caplog.at_level(logging.WARNING, logger="duraflows_pg_async"):
            task = asyncio.create_task(worker.run())
            await asyncio.wait_for(backed_off.wait(), 30)
            await conn.execute("ALTER TABLE workflow_executions_away RENAME TO workflow_executions")
            await asyncio.wait_for(shipping.all_shipped.wait(), 30)
            worker.stop()
            await asyncio.wait_for(task, 10)
    finally:
        await conn.close()
        await pool.close()
    # Doubling waits, not a hot loop; after the recovery, polls go back to the poll interval.
    assert sleeps[:4] == [0.05, 0.1, 0.2, 0.4]
    assert worker.stats.errors >= 4
    assert worker.stats.completed == 1
    failures = [r for r in caplog.records if "execution poll failed; retrying in" in r.getMessage()]
    assert len(failures) == worker.stats.errors
    assert failures[0].exc_info is not None


@pytest.mark.slow
async def test_two_workers_share_the_queue_and_each_command_runs_once(database: str) -> None:
    pools = [await create_pool(database, min_size=1, max_size=4) for _ in range(2)]
    try:
        count = 40
        done = asyncio.Event()
        everyone: list[Shipping] = []

        def check() -> None:
            if len(set().union(*(s.shipped for s in everyone))) >= count:
                done.set()

        for p in pools:
            shipping = Shipping(pg_workflow_providers(p, durable_execution=True))
            shipping.runtime.add_observer(lambda event: check())
            everyone.append(shipping)
        executions = await everyone[0].enqueue(count)
        workers = [ExecutionWorker(s.runtime, batch_size=5, poll_interval=0.05) for s in everyone]
        async with asyncio.TaskGroup() as group:
            for worker in workers:
                group.create_task(worker.run())
            await asyncio.wait_for(done.wait(), 60)
            for worker in workers:
                worker.stop()
        calls = everyone[0].calls + everyone[1].calls
        assert len(calls) == count * STEPS
        assert set(calls.values()) == {1}, calls.most_common(3)
        assert sum(w.stats.processed for w in workers) == count * STEPS
        assert sum(w.stats.completed for w in workers) == count
        assert all(w.stats.processed > 0 for w in workers), [w.stats for w in workers]
        for uuid in executions:
            execution = await everyone[1].runtime.get_execution(uuid)
            assert execution is not None
            assert execution.status == "completed"
    finally:
        for p in pools:
            await p.close()


async def test_a_provider_without_an_execution_store_is_refused() -> None:
    shipping = Shipping(memory_workflow_providers())
    with pytest.raises(DurableExecutionNotSupportedError):
        ExecutionWorker(shipping.runtime)


async def test_the_worker_refuses_to_run_inside_a_transaction() -> None:
    shipping = Shipping(memory_workflow_providers(durable_execution=True))
    worker = ExecutionWorker(shipping.runtime)
    async with shipping.runtime.persistence.transaction_runner.transaction():
        with pytest.raises(WorkflowError, match="must run outside a transaction"):
            await worker.run()
    assert not worker.running


async def test_run_twice_is_refused() -> None:
    shipping = Shipping(memory_workflow_providers(durable_execution=True))
    worker = ExecutionWorker(shipping.runtime, poll_interval=30)
    _, asleep = record_sleeps(worker, 1)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(asleep.wait(), 10)
    with pytest.raises(InvalidArgumentError, match="this ExecutionWorker is already running"):
        await worker.run()
    worker.stop()
    await task


def test_worker_arguments_are_validated() -> None:
    shipping = Shipping(memory_workflow_providers(durable_execution=True))
    with pytest.raises(InvalidArgumentError, match="runtime must be a WorkflowRuntime"):
        ExecutionWorker(object())  # type: ignore[arg-type]
    for bad in (0, -1, 1.5):
        with pytest.raises(InvalidArgumentError, match="batch_size"):
            ExecutionWorker(shipping.runtime, batch_size=bad)  # type: ignore[arg-type]
    for bad_interval in (0, -1, float("nan"), "1"):
        with pytest.raises(InvalidArgumentError, match="poll_interval"):
            ExecutionWorker(shipping.runtime, poll_interval=bad_interval)  # type: ignore[arg-type]


# --- workflow_service (contrib): the execution worker next to the timeout worker ------------------


async def test_the_service_runs_an_execution_worker_with_an_execution_store(database: str) -> None:
    shippings: list[Shipping] = []

    def build(persistence: WorkflowPersistenceProvider) -> WorkflowRuntime:
        shippings.append(Shipping(persistence, expected=2))
        return shippings[-1].runtime

    async with workflow_service(
        dsn=database,
        build_runtime=build,
        persistence_options={"durable_execution": True},
        execution_worker_options={"poll_interval": 0.05, "batch_size": 10},
    ) as service:
        assert service.worker is not None
        assert service.execution_worker is not None
        assert service.execution_worker.batch_size == 10
        (shipping,) = shippings
        await shipping.enqueue(2)
        await asyncio.wait_for(shipping.all_shipped.wait(), 30)
        assert service.execution_worker.running
    assert service.execution_worker_task is not None
    assert service.execution_worker_task.done()
    assert not service.execution_worker.running
    assert service.execution_worker.stats.completed == 2
    assert service.worker_task is not None
    assert service.worker_task.done()


@pytest.mark.parametrize(
    ("options", "timeouts", "executions"),
    [
        ({}, True, False),  # no execution store: no execution worker
        ({"durable_execution": True, "execution_worker": False}, True, False),
        ({"durable_execution": True, "worker": False}, False, False),
        ({"durable_execution": True, "worker": False, "execution_worker": True}, False, True),
    ],
)
async def test_the_service_starts_the_workers_asked_for(
    database: str, options: dict[str, Any], timeouts: bool, executions: bool
) -> None:
    durable = options.pop("durable_execution", False)
    async with workflow_service(
        dsn=database,
        build_runtime=lambda persistence: Shipping(persistence).runtime,
        persistence_options={"durable_execution": durable},
        **options,
    ) as service:
        assert (service.worker is not None, service.worker_task is not None) == (timeouts,) * 2
        assert (
            service.execution_worker is not None,
            service.execution_worker_task is not None,
        ) == (executions,) * 2


async def test_the_service_refuses_an_execution_worker_without_a_store(database: str) -> None:
    pools: list[asyncpg.Pool] = []

    def build(persistence: WorkflowPersistenceProvider) -> WorkflowRuntime:
        runner = persistence.transaction_runner
        assert isinstance(runner, PgTransactionRunner)
        pools.append(runner.pool)
        return Shipping(persistence).runtime

    with pytest.raises(DurableExecutionNotSupportedError):
        async with workflow_service(dsn=database, build_runtime=build, execution_worker=True):
            pass  # pragma: no cover - start-up fails
    assert pools[0].is_closing()
    with pytest.raises(InvalidArgumentError, match="execution_worker must be"):
        async with workflow_service(
            dsn=database,
            build_runtime=build,
            execution_worker="yes",  # type: ignore[arg-type]
        ):
            pass  # pragma: no cover - refused
