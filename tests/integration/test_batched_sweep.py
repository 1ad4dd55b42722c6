"""Batched sweeps (``batched=True``): one transaction per batch, each instance under a savepoint.

The rules kept from the per-instance sweep: one committed transition per due instance, a failing
instance rolled back alone and recorded with backoff (then parked), observers after COMMIT, a
graceful stop. What differs: no claims (the batch's rows are locked until its COMMIT), and a batch
that never commits (cancelled, connection lost, worker killed) leaves all its instances due.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from helpers import ManualClock, reminder, wait_until

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    GuardRef,
    GuardRegistry,
    OnEnter,
    PgTransactionRunner,
    State,
    StateEnterEvent,
    Timeout,
    TimeoutRetryPolicy,
    TimeoutWorker,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
    create_pool,
    memory_workflow_providers,
    pg_workflow_providers,
)
from duraflows_pg_async.errors import InvalidArgumentError


class Commands:
    """The timeout's command: records each run; raises for the instances marked ``fail``."""

    def __init__(self) -> None:
        self.ran: Counter[str] = Counter()
        self.hold: asyncio.Event | None = None
        self.hold_at = 0

    async def send(self, subject: Any, ctx: ExecutionContext) -> None:
        self.ran[ctx.context["name"]] += 1
        ctx.context["sent"] = True
        if self.hold is not None and sum(self.ran.values()) == self.hold_at:
            await self.hold.wait()
        if ctx.context.get("fail"):
            raise RuntimeError(f"cannot send {ctx.context['name']}")


def make_runtime(
    persistence: WorkflowPersistenceProvider,
    clock: ManualClock,
    commands: Commands,
    entered: list[StateEnterEvent] | None = None,
    **options: Any,
) -> WorkflowRuntime:
    definitions = DefinitionRegistry()
    definitions.register(reminder())
    registry = CommandRegistry()

    async def send(subject: Any, ctx: ExecutionContext) -> None:
        await commands.send(subject, ctx)  # looked up at each call: a test may swap it

    registry.register("send", send)
    return WorkflowRuntime(
        definitions=definitions,
        commands=registry,
        persistence=persistence,
        clock=clock,
        observers=[entered.append] if entered is not None else [],
        **options,
    )


async def create(runtime: WorkflowRuntime, n: int, **context: Any) -> list[UUID]:
    return [
        (await runtime.create_instance("reminder", context={"name": f"i{i}", **context})).uuid
        for i in range(n)
    ]


async def states(runtime: WorkflowRuntime, keys: list[UUID]) -> list[str]:
    found = [await runtime.get_instance(key) for key in keys]
    return [i.current_state if i is not None else "gone" for i in found]


async def test_a_batched_sweep_fires_each_due_instance_once(
    any_persistence: WorkflowPersistenceProvider, clock: ManualClock
) -> None:
    commands = Commands()
    entered: list[StateEnterEvent] = []
    runtime = make_runtime(any_persistence, clock, commands, entered)
    keys = await create(runtime, 7)
    entered.clear()
    clock.advance(minutes=6)

    first = await runtime.process_expired_workflows(limit=5, batched=True)
    assert (first.processed, first.rejected, first.failed, first.parked) == (5, 0, [], [])
    assert len(entered) == 5  # observers of the batch, after its COMMIT
    second = await runtime.process_expired_workflows(limit=5, batched=True)
    assert second.processed == 2
    assert (await runtime.process_expired_workflows(batched=True)).processed == 0
    assert await states(runtime, keys) == ["reminded"] * 7
    assert set(commands.ran.values()) == {1}
    for key in keys:
        history = await runtime.get_history(key)
        assert [(h.event_name, h.outcome, h.trigger_metadata) for h in history] == [
            ("remind", "success", {"source": "timeout"})
        ]
        instance = await runtime.get_instance(key)
        assert instance is not None
        assert (instance.context["sent"], instance.claimed_until) == (True, None)


async def test_a_failing_instance_is_rolled_back_alone_then_retried_and_parked(
    any_persistence: WorkflowPersistenceProvider, clock: ManualClock
) -> None:
    commands = Commands()
    policy = TimeoutRetryPolicy(initial_delay=60, max_delay=600, max_attempts=2)
    runtime = make_runtime(any_persistence, clock, commands, timeout_retry=policy)
    good = await create(runtime, 4)
    (bad,) = [
        (await runtime.create_instance("reminder", context={"name": "bad", "fail": True})).uuid
    ]
    clock.advance(minutes=6)

    result = await runtime.process_expired_workflows(batched=True)
    assert result.processed == 4
    (failure,) = result.failed
    assert (failure.uuid, failure.error, failure.attempts) == (bad, "cannot send bad", 1)
    assert failure.retry_at == clock.now() + timedelta(minutes=1)
    assert await states(runtime, good) == ["reminded"] * 4
    instance = await runtime.get_instance(bad)
    assert instance is not None
    assert instance.current_state == "waiting"
    assert "sent" not in instance.context  # the attempt's writes were rolled back
    assert instance.timeout_retry is not None
    assert instance.timeout_retry.attempts == 1
    assert await runtime.get_history(bad) == []

    assert (await runtime.process_expired_workflows(batched=True)).failed == []  # not yet
    clock.advance(minutes=2)
    again = await runtime.process_expired_workflows(batched=True)
    assert [(p.uuid, p.error) for p in again.parked] == [(bad, "cannot send bad")]
    parked = await runtime.get_instance(bad)
    assert parked is not None
    assert parked.timeout_retry is not None
    assert (parked.timeout_retry.attempts, parked.timeout_retry.retry_at) == (2, None)
    clock.advance(hours=1)
    assert (await runtime.process_expired_workflows(batched=True)).failed == []


async def test_should_stop_commits_what_the_batch_fired(
    any_persistence: WorkflowPersistenceProvider, clock: ManualClock
) -> None:
    commands = Commands()
    runtime = make_runtime(any_persistence, clock, commands)
    keys = await create(runtime, 5)
    clock.advance(minutes=6)

    result = await runtime.sweep(
        10, should_stop=lambda: sum(commands.ran.values()) >= 2, batched=True
    )
    assert result.processed == 2
    assert sorted(await states(runtime, keys)) == ["reminded"] * 2 + ["waiting"] * 3
    # The rest was let go at COMMIT, neither claimed nor failed: due at once.
    for key in keys:
        instance = await runtime.get_instance(key)
        assert instance is not None
        assert (instance.claimed_until, instance.timeout_retry) == (None, None)
    assert (await runtime.process_expired_workflows(batched=True)).processed == 3


async def test_a_cancelled_batch_leaves_all_its_instances_due(
    any_persistence: WorkflowPersistenceProvider, clock: ManualClock
) -> None:
    commands = Commands()
    commands.hold, commands.hold_at = asyncio.Event(), 3
    entered: list[StateEnterEvent] = []
    runtime = make_runtime(any_persistence, clock, commands, entered)
    keys = await create(runtime, 4)
    entered.clear()
    clock.advance(minutes=6)

    sweep = asyncio.create_task(runtime.process_expired_workflows(batched=True))

    async def third_command_running() -> bool:
        return sum(commands.ran.values()) >= 3

    await wait_until(third_command_running, what="the third command")
    sweep.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sweep
    # The two fired before the cancellation were in the same, rolled back, transaction.
    assert await states(runtime, keys) == ["waiting"] * 4
    assert entered == []
    commands.hold = None
    assert (await runtime.process_expired_workflows(batched=True)).processed == 4
    assert await states(runtime, keys) == ["reminded"] * 4


async def test_a_failing_instance_s_own_sql_is_rolled_back_with_it(
    pool: asyncpg.Pool, raw_connection: asyncpg.Connection, clock: ManualClock
) -> None:
    await raw_connection.execute("CREATE TABLE sent_log (name text PRIMARY KEY)")
    persistence = pg_workflow_providers(pool)
    runner = persistence.transaction_runner
    assert isinstance(runner, PgTransactionRunner)
    commands = Commands()
    send = commands.send

    async def logged(subject: Any, ctx: ExecutionContext) -> None:
        await runner.connection().execute(
            "INSERT INTO sent_log (name) VALUES ($1)", ctx.context["name"]
        )
        await send(subject, ctx)

    commands.send = logged  # type: ignore[method-assign]
    runtime = make_runtime(persistence, clock, commands)
    await create(runtime, 3)
    await runtime.create_instance("reminder", context={"name": "bad", "fail": True})
    clock.advance(minutes=6)

    result = await runtime.process_expired_workflows(batched=True)
    assert (result.processed, len(result.failed)) == (3, 1)
    names = {r["name"] for r in await raw_connection.fetch("SELECT name FROM sent_log")}
    assert names == {"i0", "i1", "i2"}


@pytest.mark.slow
async def test_batched_workers_in_parallel_fire_each_instance_once(
    database: str, clock: ManualClock
) -> None:
    pools = [await create_pool(database, min_size=1, max_size=2) for _ in range(3)]
    try:
        commands = Commands()

        async def send(subject: Any, ctx: ExecutionContext) -> None:
            await asyncio.sleep(0)  # let the other workers run in between
            await Commands.send(commands, subject, ctx)

        commands.send = send  # type: ignore[method-assign]
        runtimes = [make_runtime(pg_workflow_providers(p), clock, commands) for p in pools]
        keys = await create(runtimes[0], 300)
        clock.advance(minutes=6)
        workers = [
            TimeoutWorker(r, batch_size=20, poll_interval=0.05, batched=True) for r in runtimes
        ]
        tasks = [asyncio.create_task(w.run()) for w in workers]
        try:

            async def all_fired() -> bool:
                return sum(w.stats.processed for w in workers) >= len(keys)

            await wait_until(all_fired, within=120, what="every instance fired")
        finally:
            for w in workers:
                w.stop()
            await asyncio.gather(*tasks)
        assert sum(w.stats.processed for w in workers) == len(keys)
        assert len(commands.ran) == len(keys)
        assert set(commands.ran.values()) == {1}
        assert await states(runtimes[0], keys) == ["reminded"] * len(keys)
    finally:
        for p in pools:
            await p.close()


async def test_a_batched_worker_keeps_two_batches_in_flight(
    database: str, clock: ManualClock
) -> None:
    # Each command waits until commands of two different sweeps (tasks, transactions) are
    # running at once: with one sweep at a time this never happens and the test fails.
    pool = await create_pool(database, min_size=2, max_size=2)
    try:
        commands = Commands()
        sweeps: set[asyncio.Task[Any] | None] = set()
        both = asyncio.Event()
        send_one = commands.send

        async def send(subject: Any, ctx: ExecutionContext) -> None:
            sweeps.add(asyncio.current_task())
            if len(sweeps) >= 2:
                both.set()
            await asyncio.wait_for(both.wait(), 60)  # a last-resort bound, not a pace
            await send_one(subject, ctx)

        commands.send = send  # type: ignore[method-assign]
        runtime = make_runtime(pg_workflow_providers(pool), clock, commands)
        keys = await create(runtime, 8)
        clock.advance(minutes=6)
        worker = TimeoutWorker(runtime, batch_size=2, poll_interval=0.05, batched=True)
        assert worker.concurrency == 2
        task = asyncio.create_task(worker.run())
        try:

            async def all_fired() -> bool:
                return worker.stats.processed >= len(keys)

            await wait_until(all_fired, within=120, what="every instance fired")
        finally:
            worker.stop()
            await task
        assert both.is_set()  # two sweeps ran commands at the same time
        assert (worker.stats.processed, worker.stats.errors) == (len(keys), 0)
        assert set(commands.ran.values()) == {1}
        assert len(commands.ran) == len(keys)
        assert await states(runtime, keys) == ["reminded"] * len(keys)
    finally:
        await pool.close()


async def test_concurrency_is_how_many_sweeps_a_worker_runs_at_once(
    any_persistence: WorkflowPersistenceProvider, clock: ManualClock
) -> None:
    runtime = make_runtime(any_persistence, clock, Commands())
    assert TimeoutWorker(runtime).concurrency == 1
    assert TimeoutWorker(runtime, batched=True).concurrency == 2
    assert TimeoutWorker(runtime, batched=True, concurrency=1).concurrency == 1
    assert TimeoutWorker(runtime, concurrency=3).concurrency == 3
    for bad in (0, -1, 65, True, 1.5, "2"):
        with pytest.raises(InvalidArgumentError, match="concurrency"):
            TimeoutWorker(runtime, concurrency=bad)  # type: ignore[arg-type]


async def test_batched_must_be_a_bool(
    any_persistence: WorkflowPersistenceProvider, clock: ManualClock
) -> None:
    runtime = make_runtime(any_persistence, clock, Commands())
    with pytest.raises(InvalidArgumentError, match="batched"):
        await runtime.process_expired_workflows(batched=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="batched"):
        TimeoutWorker(runtime, batched="yes")  # type: ignore[arg-type]


CHAIN = WorkflowDefinition(
    name="chain",
    initial_state="waiting",
    states={
        "waiting": State(
            events={
                "expire": Event(
                    target_state="expired",
                    commands=(CommandRef("send"),),
                    guard=GuardRef("allowed"),
                    timeout=Timeout(minutes=5),
                )
            }
        ),
        # One hop on entering "expired": two history rows per instance, version + 2.
        "expired": State(on_enter=OnEnter(target_state="archived", commands=(CommandRef("send"),))),
        "archived": State(),
    },
)


def chain_runtime(
    persistence: WorkflowPersistenceProvider, clock: ManualClock, commands: Commands
) -> WorkflowRuntime:
    definitions = DefinitionRegistry()
    definitions.register(CHAIN)
    registry = CommandRegistry()

    async def send(subject: Any, ctx: ExecutionContext) -> None:
        await commands.send(subject, ctx)  # looked up at each call: a test may swap it

    registry.register("send", send)
    guards = GuardRegistry()
    guards.register("allowed", lambda subject, ctx: not ctx.context.get("refuse", False))
    return WorkflowRuntime(
        definitions=definitions,
        commands=registry,
        guards=guards,
        persistence=persistence,
        clock=clock,
    )


async def test_hops_rejections_and_bad_writes_in_one_batch(
    any_persistence: WorkflowPersistenceProvider, clock: ManualClock
) -> None:
    commands = Commands()
    runtime = chain_runtime(any_persistence, clock, commands)

    async def make(name: str, **context: Any) -> UUID:
        created = await runtime.create_instance("chain", context={"name": name, **context})
        return created.uuid

    hopping = [await make(f"h{i}") for i in range(3)]
    refused = await make("refused", refuse=True)
    send = commands.send

    async def unstorable(subject: Any, ctx: ExecutionContext) -> None:
        await send(subject, ctx)
        if ctx.context["name"] == "unstorable":
            ctx.context["bad"] = {1, 2}  # not JSON: refused when its row is checked
            ctx.context["sent"] = True

    commands.send = unstorable  # type: ignore[method-assign]
    bad = await make("unstorable")
    clock.advance(minutes=6)

    result = await runtime.process_expired_workflows(batched=True)
    assert (result.processed, result.rejected) == (3, 1)
    (failure,) = result.failed
    assert (failure.uuid, failure.attempts) == (bad, 1)
    assert "context['bad']" in failure.error  # the command's write is checked, naming its path
    for key in hopping:
        instance = await runtime.get_instance(key)
        assert instance is not None
        assert (instance.current_state, instance.version) == ("archived", 2)
        history = await runtime.get_history(key)  # newest first, in the order written
        assert [(h.from_state, h.event_name, h.to_state) for h in history] == [
            ("expired", "onEnter", "archived"),
            ("waiting", "expire", "expired"),
        ]
        newest, oldest = history[0].created_at, history[1].created_at
        assert newest is not None
        assert oldest is not None
        assert newest > oldest
    rejected = await runtime.get_instance(refused)
    assert rejected is not None
    assert (rejected.current_state, rejected.expires_at, rejected.version) == (
        "waiting",
        None,
        1,
    )
    (row,) = await runtime.get_history(refused)
    assert (row.outcome, row.rejected_by) == ("guard-rejected", "allowed")
    unsaved = await runtime.get_instance(bad)
    assert unsaved is not None
    assert (unsaved.current_state, unsaved.version, "bad" in unsaved.context) == (
        "waiting",
        1,
        False,
    )
    assert await runtime.get_history(bad) == []


async def test_an_event_a_command_triggers_on_another_instance_of_the_batch_is_seen(
    any_persistence: WorkflowPersistenceProvider, clock: ManualClock
) -> None:
    commands = Commands()
    runtime = make_runtime(any_persistence, clock, commands)
    (first,) = await create(runtime, 1)
    second = (await runtime.create_instance("reminder", context={"name": "second"})).uuid
    send = commands.send

    async def send_both(subject: Any, ctx: ExecutionContext) -> None:
        await send(subject, ctx)
        if ctx.context["name"] == "i0":
            # Joins the batch's transaction: the second instance is locked by it already.
            await runtime.trigger_event(second, "remind", trigger_metadata={"by": "i0"})

    commands.send = send_both  # type: ignore[method-assign]
    clock.advance(minutes=6)

    result = await runtime.process_expired_workflows(batched=True)
    # The second instance's timeout is no longer due once the first one's command moved it on.
    assert (result.processed, result.failed) == (1, [])
    assert await states(runtime, [first, second]) == ["reminded", "reminded"]
    (row,) = await runtime.get_history(second)
    assert row.trigger_metadata == {"by": "i0"}
    assert commands.ran == {"i0": 1, "second": 1}


@pytest.mark.parametrize("kind", ["memory", "postgres"])
async def test_an_instance_a_queued_execution_holds_is_left_alone(
    kind: str, pool: asyncpg.Pool, clock: ManualClock
) -> None:
    persistence = (
        memory_workflow_providers(durable_execution=True)
        if kind == "memory"
        else pg_workflow_providers(pool, durable_execution=True)
    )
    commands = Commands()
    runtime = make_runtime(persistence, clock, commands)
    held, free = await create(runtime, 2)
    await runtime.enqueue_event(held, "remind", idempotency_key="k1")
    clock.advance(minutes=6)

    result = await runtime.process_expired_workflows(batched=True)
    assert (result.processed, result.failed) == (1, [])
    assert await states(runtime, [held, free]) == ["waiting", "reminded"]
    assert commands.ran == {"i1": 1}


async def test_a_command_sees_the_instances_the_batch_fired_before_it(
    any_persistence: WorkflowPersistenceProvider, clock: ManualClock
) -> None:
    commands = Commands()
    runtime = make_runtime(any_persistence, clock, commands)
    (first,) = await create(runtime, 1)
    second = (await runtime.create_instance("reminder", context={"name": "second"})).uuid
    send = commands.send

    async def send_again(subject: Any, ctx: ExecutionContext) -> None:
        await send(subject, ctx)
        if ctx.context["name"] == "second":
            # The first instance fired earlier in this batch: it is no longer waiting.
            await runtime.trigger_event(first, "remind")

    commands.send = send_again  # type: ignore[method-assign]
    clock.advance(minutes=6)

    result = await runtime.process_expired_workflows(batched=True)
    assert result.processed == 1
    (failure,) = result.failed
    assert failure.uuid == second
    assert 'Event "remind"' in failure.error or "remind" in failure.error
    assert await states(runtime, [first, second]) == ["reminded", "waiting"]
    assert len(await runtime.get_history(first)) == 1
