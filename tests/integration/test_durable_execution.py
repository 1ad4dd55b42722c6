"""Queued executions (enqueue_event and the worker's steps), on both providers."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from datetime import timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from helpers import ManualClock

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    CommandResult,
    DefinitionRegistry,
    DurableExecutionPolicy,
    Event,
    ExecutionContext,
    GuardRef,
    GuardRegistry,
    OnEnter,
    State,
    StateEnterEvent,
    Timeout,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
    memory_workflow_providers,
    pg_workflow_providers,
)
from duraflows_pg_async.errors import (
    DurableExecutionNotSupportedError,
    IdempotencyConflictError,
    InvalidArgumentError,
    InvalidEventError,
    WorkflowError,
    WorkflowInstanceBusyError,
)
from duraflows_pg_async.types import WorkflowExecution

POLICY = DurableExecutionPolicy(
    lease_duration=timedelta(seconds=30),
    initial_delay=timedelta(seconds=1),
    max_delay=timedelta(seconds=8),
    max_attempts=3,
)


def order_definition() -> WorkflowDefinition:
    return WorkflowDefinition(
        name="order",
        initial_state="new",
        states={
            "new": State(
                events={
                    "submit": Event(
                        target_state="charged",
                        error_state="failed",
                        guard=GuardRef("allowed"),
                        commands=(CommandRef("reserve"), CommandRef("charge"), CommandRef("note")),
                    ),
                    "expire": Event(target_state="expired", timeout=Timeout(minutes=30)),
                    "strict": Event(target_state="charged", commands=(CommandRef("charge"),)),
                }
            ),
            "charged": State(
                context={"stage": "charged"},
                on_enter=OnEnter(target_state="done", commands=(CommandRef("ship"),)),
            ),
            "done": State(context={"stage": "done"}),
            "failed": State(),
            "expired": State(),
        },
    )


class Commands:
    """The registered commands: each call is recorded with its ``ctx.durable``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, UUID]] = []  # name, key, attempt, transition
        self.raise_in: Counter[str] = Counter()  # raise this many more times
        self.fail: set[str] = set()  # return ok=False
        self.allow = True
        self.guard_calls = 0
        self.hold: dict[str, asyncio.Event] = {}
        self.entered: dict[str, asyncio.Event] = {}
        self.before: dict[str, Any] = {}  # name -> async fn(ctx), run first

    async def run(self, name: str, subject: Any, ctx: ExecutionContext) -> CommandResult:
        assert ctx.durable is not None
        if name in self.before:
            await self.before[name](ctx)
        self.calls.append(
            (name, ctx.durable.idempotency_key, ctx.durable.attempt, ctx.transition_uuid)
        )
        ctx.context[name] = ctx.context.get(name, 0) + 1
        if name in self.entered:
            self.entered[name].set()
        if name in self.hold:
            await self.hold[name].wait()
        if self.raise_in[name] > 0:
            self.raise_in[name] -= 1
            raise RuntimeError(f"{name} is down")
        if name in self.fail:
            return CommandResult(ok=False, code=f"{name}-failed", message=f"{name} said no")
        return CommandResult(ok=True, code=name, metadata={"subject": subject})

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]


class Setup:
    def __init__(self, persistence: WorkflowPersistenceProvider, clock: ManualClock) -> None:
        self.persistence = persistence
        self.clock = clock
        self.commands = Commands()
        self.seen: list[StateEnterEvent] = []
        definitions = DefinitionRegistry()
        definitions.register(order_definition())
        registry = CommandRegistry()
        for name in ("reserve", "charge", "ship", "note"):
            registry.register(name, self._command(name), best_effort=name == "note")
        guards = GuardRegistry()

        def allowed(subject: Any, ctx: ExecutionContext) -> bool:
            self.commands.guard_calls += 1
            return self.commands.allow

        guards.register("allowed", allowed)
        self.runtime = WorkflowRuntime(
            definitions=definitions,
            commands=registry,
            guards=guards,
            persistence=persistence,
            clock=clock,
            observers=[self.seen.append],
            durable_execution=POLICY,
        )

    def _command(self, name: str) -> Any:
        async def command(subject: Any, ctx: ExecutionContext) -> CommandResult:
            return await self.commands.run(name, subject, ctx)

        return command

    async def drain(self, polls: int = 20) -> None:
        """Poll until nothing is due (a bound of ``polls`` polls)."""
        for _ in range(polls):
            result = await self.runtime.process_pending_executions()
            if result.processed == 0:
                return
        raise AssertionError(f"still work after {polls} polls")

    async def execution(self, execution_uuid: UUID) -> WorkflowExecution:
        found = await self.runtime.get_execution(execution_uuid)
        assert found is not None
        return found


@pytest.fixture(params=["memory", "postgres"])
def setup(request: pytest.FixtureRequest, clock: ManualClock) -> Setup:
    if request.param == "memory":
        return Setup(memory_workflow_providers(durable_execution=True), clock)
    request.node.user_properties.append(("postgres", True))
    pool: asyncpg.Pool = request.getfixturevalue("pool")
    return Setup(pg_workflow_providers(pool, durable_execution=True), clock)


# --- acceptance ------------------------------------------------------------------------------


async def test_acceptance_runs_the_guard_and_no_command(setup: Setup) -> None:
    runtime = setup.runtime
    instance = await runtime.create_instance("order", context={"n": 1})
    execution = await runtime.enqueue_event(
        instance.uuid,
        "submit",
        idempotency_key="order-1:submit",
        idempotency_fingerprint="rev-3",
        subject={"sku": "A1", "qty": 2},
        trigger_metadata={"source": "api"},
    )
    assert (execution.status, execution.revision, execution.journal) == ("pending", 0, [])
    assert (execution.from_state, execution.event_name) == ("new", "submit")
    assert execution.subject == {"sku": "A1", "qty": 2}
    assert execution.created_at == setup.clock.now()
    assert execution.policy == POLICY
    assert (setup.commands.calls, setup.commands.guard_calls) == ([], 1)
    assert await runtime.get_instance(instance.uuid) == instance
    assert await runtime.get_history(instance.uuid) == []
    assert await setup.execution(execution.uuid) == execution


async def test_the_same_key_returns_the_same_execution_and_another_request_conflicts(
    setup: Setup,
) -> None:
    runtime = setup.runtime
    instance = await runtime.create_instance("order")
    first = await runtime.enqueue_event(instance.uuid, "submit", idempotency_key="k")
    again = await runtime.enqueue_event(instance.uuid, "submit", idempotency_key="k")
    assert again == first
    with pytest.raises(IdempotencyConflictError):
        await runtime.enqueue_event(instance.uuid, "strict", idempotency_key="k")
    with pytest.raises(IdempotencyConflictError):
        await runtime.enqueue_event(
            instance.uuid, "submit", idempotency_key="k", idempotency_fingerprint="f"
        )
    assert setup.commands.guard_calls == 1


async def test_an_active_execution_makes_the_instance_busy(setup: Setup) -> None:
    runtime = setup.runtime
    instance = await runtime.create_instance("order")
    execution = await runtime.enqueue_event(instance.uuid, "submit", idempotency_key="k")
    with pytest.raises(WorkflowInstanceBusyError) as caught:
        await runtime.trigger_event(instance.uuid, "strict")
    assert caught.value.execution_uuid == execution.uuid
    with pytest.raises(WorkflowInstanceBusyError):
        await runtime.enqueue_event(instance.uuid, "submit", idempotency_key="other")
    with pytest.raises(WorkflowInstanceBusyError):
        await runtime.rearm_timeout(instance.uuid)
    await setup.drain()
    # Completed: the instance is free again.
    rearmed = await runtime.rearm_timeout(instance.uuid)
    assert rearmed.current_state == "done"


async def test_a_guard_rejection_completes_the_execution_at_acceptance(setup: Setup) -> None:
    runtime = setup.runtime
    setup.commands.allow = False
    instance = await runtime.create_instance("order")
    execution = await runtime.enqueue_event(instance.uuid, "submit", idempotency_key="k")
    assert execution.status == "completed"
    assert execution.rejected_by == "allowed"
    assert execution.result is not None
    assert (execution.result.outcome, execution.result.rejected_by) == ("guard-rejected", "allowed")
    history = await runtime.get_history(instance.uuid)
    assert [(h.outcome, h.uuid) for h in history] == [
        ("guard-rejected", execution.result.history_uuid)
    ]
    # Not busy, nothing to do for a worker, and a repeat returns the rejection.
    assert (await runtime.process_pending_executions()).processed == 0
    assert await runtime.enqueue_event(instance.uuid, "submit", idempotency_key="k") == execution
    assert setup.commands.guard_calls == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"idempotency_key": ""}, InvalidArgumentError, "idempotency_key must not be blank"),
        ({"idempotency_key": "x" * 257}, InvalidArgumentError, "at most 256 bytes"),
        ({"idempotency_key": "k", "subject": {1, 2}}, InvalidArgumentError, "subject"),
        ({"idempotency_key": "k", "subject": {"f": float("nan")}}, InvalidArgumentError, "subject"),
        (
            {"idempotency_key": "k", "trigger_metadata": {"at": object()}},
            InvalidArgumentError,
            "trigger_metadata",
        ),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_written(
    setup: Setup, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    instance = await setup.runtime.create_instance("order")
    with pytest.raises(error, match=match):
        await setup.runtime.enqueue_event(instance.uuid, "submit", **kwargs)
    assert setup.commands.guard_calls == 0
    assert (await setup.runtime.process_pending_executions()).processed == 0


async def test_an_unknown_event_is_refused(setup: Setup) -> None:
    instance = await setup.runtime.create_instance("order")
    with pytest.raises(InvalidEventError):
        await setup.runtime.enqueue_event(instance.uuid, "ship", idempotency_key="k")


async def test_without_the_execution_store_it_is_refused(clock: ManualClock) -> None:
    setup = Setup(memory_workflow_providers(), clock)
    instance = await setup.runtime.create_instance("order")
    with pytest.raises(DurableExecutionNotSupportedError, match="durable_execution=True"):
        await setup.runtime.enqueue_event(instance.uuid, "submit", idempotency_key="k")
    with pytest.raises(DurableExecutionNotSupportedError):
        await setup.runtime.process_pending_executions()


# --- the worker ------------------------------------------------------------------------------


async def test_one_command_per_poll_then_everything_is_written_at_once(setup: Setup) -> None:
    runtime = setup.runtime
    instance = await runtime.create_instance("order", context={"n": 1})
    execution = await runtime.enqueue_event(
        instance.uuid, "submit", idempotency_key="k", subject={"sku": "A1"}
    )
    setup.seen.clear()
    for expected in (["reserve"], ["reserve", "charge"], ["reserve", "charge", "note"]):
        result = await runtime.process_pending_executions()
        assert result.progressed == [execution.uuid]
        assert setup.commands.names() == expected
        # The instance does not move until the whole event and its chain have run.
        assert await runtime.get_instance(instance.uuid) == instance
        assert setup.seen == []
    last = await runtime.process_pending_executions()
    assert last.completed == [execution.uuid]
    assert setup.commands.names() == ["reserve", "charge", "note", "ship"]
    done = await setup.execution(execution.uuid)
    assert done.status == "completed"
    assert [c.id for c in done.journal] == ["0", "1", "2", "3"]
    assert done.result is not None
    assert (done.result.outcome, done.result.from_state, done.result.to_state) == (
        "success",
        "new",
        "done",
    )
    stored = await runtime.get_instance(instance.uuid)
    assert stored is not None
    assert stored.current_state == "done"
    assert stored.context == {
        "n": 1,
        "reserve": 1,
        "charge": 1,
        "note": 1,
        "ship": 1,
        "stage": "done",
    }
    assert stored.version == instance.version + 2
    history = await runtime.get_history(instance.uuid)
    assert [(h.event_name, h.from_state, h.to_state) for h in reversed(history)] == [
        ("submit", "new", "charged"),
        ("onEnter", "charged", "done"),
    ]
    assert done.result.history_uuid == history[0].uuid
    assert [e.to_state for e in setup.seen] == ["charged", "done"]
    # Commands got the subject, a stable key per command, the acceptance time as ctx.now.
    keys = [call[1] for call in setup.commands.calls]
    assert keys == [f"{execution.uuid}:{n}" for n in range(4)]


async def test_a_raising_command_is_retried_with_backoff_and_the_same_key(setup: Setup) -> None:
    runtime, clock = setup.runtime, setup.clock
    instance = await runtime.create_instance("order")
    execution = await runtime.enqueue_event(instance.uuid, "submit", idempotency_key="k")
    setup.commands.raise_in["charge"] = 2
    await runtime.process_pending_executions()  # reserve
    failed = await runtime.process_pending_executions()  # charge, attempt 1
    assert failed.retrying == [execution.uuid]
    record = await setup.execution(execution.uuid)
    assert (record.status, record.attempts, record.last_error) == ("pending", 1, "charge is down")
    assert record.available_at == clock.now() + timedelta(seconds=1)
    # Not due before its time.
    assert (await runtime.process_pending_executions()).processed == 0
    clock.advance(seconds=1)
    assert (await runtime.process_pending_executions()).retrying == [execution.uuid]
    assert (await setup.execution(execution.uuid)).available_at == clock.now() + timedelta(
        seconds=2
    )
    clock.advance(seconds=2)
    await setup.drain()
    charges = [call for call in setup.commands.calls if call[0] == "charge"]
    assert [(c[1], c[2]) for c in charges] == [
        (f"{execution.uuid}:1", 1),
        (f"{execution.uuid}:1", 2),
        (f"{execution.uuid}:1", 3),
    ]
    # The same transition uuid on every attempt; reserve ran once.
    assert len({c[3] for c in charges}) == 1
    assert setup.commands.names().count("reserve") == 1
    done = await setup.execution(execution.uuid)
    assert done.status == "completed"
    assert done.journal[1].attempts == 3


async def test_at_the_attempt_limit_it_parks_then_retry_resumes(setup: Setup) -> None:
    runtime, clock = setup.runtime, setup.clock
    instance = await runtime.create_instance("order")
    execution = await runtime.enqueue_event(instance.uuid, "submit", idempotency_key="k")
    setup.commands.raise_in["reserve"] = 3
    for _ in range(3):
        await runtime.process_pending_executions()
        clock.advance(seconds=10)
    parked = await setup.execution(execution.uuid)
    assert (parked.status, parked.attempts) == ("parked", 3)
    assert (await runtime.process_pending_executions()).processed == 0
    with pytest.raises(WorkflowInstanceBusyError):
        await runtime.trigger_event(instance.uuid, "strict")
    retried = await runtime.retry_execution(execution.uuid)
    assert (retried.status, retried.attempts) == ("pending", 0)
    with pytest.raises(InvalidArgumentError, match="Only parked executions can be retried"):
        await runtime.retry_execution(execution.uuid)
    await setup.drain()
    assert (await setup.execution(execution.uuid)).status == "completed"


async def test_cancel_frees_the_instance_and_undoes_nothing(setup: Setup) -> None:
    runtime = setup.runtime
    instance = await runtime.create_instance("order")
    execution = await runtime.enqueue_event(instance.uuid, "submit", idempotency_key="k")
    await runtime.process_pending_executions()
    cancelled = await runtime.cancel_execution(execution.uuid)
    assert cancelled.status == "cancelled"
    assert [c.name for c in cancelled.journal] == ["reserve"]
    assert (await runtime.process_pending_executions()).processed == 0
    assert (await runtime.trigger_event(instance.uuid, "expire")).to_state == "expired"
    assert await runtime.enqueue_event(instance.uuid, "submit", idempotency_key="k") == cancelled
    with pytest.raises(InvalidArgumentError, match="cannot be cancelled"):
        await runtime.cancel_execution(execution.uuid)
    with pytest.raises(InvalidArgumentError, match="not found"):
        await runtime.cancel_execution(UUID(int=7))


async def test_a_routed_business_failure_completes_in_the_error_state(setup: Setup) -> None:
    runtime = setup.runtime
    setup.commands.fail.add("charge")
    instance = await runtime.create_instance("order")
    execution = await runtime.enqueue_event(instance.uuid, "submit", idempotency_key="k")
    await setup.drain()
    done = await setup.execution(execution.uuid)
    assert done.result is not None
    assert (done.status, done.result.outcome, done.result.to_state) == (
        "completed",
        "failure",
        "failed",
    )
    assert setup.commands.names() == ["reserve", "charge"]
    history = await runtime.get_history(instance.uuid)
    assert [(h.outcome, h.error_message) for h in history] == [("failure", "charge said no")]


async def test_an_unrouted_business_failure_parks_with_its_result(setup: Setup) -> None:
    runtime = setup.runtime
    setup.commands.fail.add("charge")
    instance = await runtime.create_instance("order")
    execution = await runtime.enqueue_event(instance.uuid, "strict", idempotency_key="k")
    result = await runtime.process_pending_executions()
    assert result.parked == [execution.uuid]
    parked = await setup.execution(execution.uuid)
    assert parked.status == "parked"
    assert parked.journal[0].result.ok is False
    assert parked.last_error is not None
    assert "charge" in parked.last_error
    stored = await runtime.get_instance(instance.uuid)
    assert stored is not None
    assert stored.current_state == "new"


async def test_a_best_effort_raise_is_recorded_and_the_event_goes_on(setup: Setup) -> None:
    runtime = setup.runtime
    setup.commands.raise_in["note"] = 1
    instance = await runtime.create_instance("order")
    execution = await runtime.enqueue_event(instance.uuid, "submit", idempotency_key="k")
    await setup.drain()
    done = await setup.execution(execution.uuid)
    assert done.status == "completed"
    note = done.journal[2]
    assert (note.name, note.result.ok, note.result.code) == ("note", False, "BEST_EFFORT_THROWN")
    assert setup.commands.names().count("note") == 1


async def test_a_stale_worker_cannot_checkpoint_after_losing_its_lease(setup: Setup) -> None:
    runtime, clock = setup.runtime, setup.clock
    instance = await runtime.create_instance("order")
    execution = await runtime.enqueue_event(instance.uuid, "submit", idempotency_key="k")
    release = asyncio.Event()
    setup.commands.hold["reserve"] = release
    setup.commands.entered["reserve"] = asyncio.Event()
    stale = asyncio.create_task(runtime.process_pending_executions())
    await setup.commands.entered["reserve"].wait()
    # The lease runs out while the command hangs; another worker takes the execution over.
    clock.advance(POLICY.lease_duration + timedelta(seconds=1))
    del setup.commands.hold["reserve"]
    taken = await runtime.process_pending_executions()
    assert taken.progressed == [execution.uuid]
    release.set()
    late = await stale
    assert late.skipped == [execution.uuid]
    record = await setup.execution(execution.uuid)
    assert [c.name for c in record.journal] == ["reserve"]  # one checkpoint, the new owner's
    reserves = [call for call in setup.commands.calls if call[0] == "reserve"]
    assert [(c[1], c[2]) for c in reserves] == [
        (f"{execution.uuid}:0", 1),
        (f"{execution.uuid}:0", 2),
    ]


async def test_a_heartbeat_keeps_the_lease(setup: Setup) -> None:
    runtime, clock = setup.runtime, setup.clock
    instance = await runtime.create_instance("order")
    execution = await runtime.enqueue_event(instance.uuid, "submit", idempotency_key="k")

    async def long_reserve(ctx: ExecutionContext) -> None:
        assert ctx.durable is not None
        # Three times nearly a lease: without the heartbeats the lease would have run out.
        for _ in range(3):
            clock.advance(POLICY.lease_duration - timedelta(seconds=5))
            await ctx.durable.heartbeat()

    setup.commands.before["reserve"] = long_reserve
    result = await runtime.process_pending_executions()
    assert result.progressed == [execution.uuid]
    assert [c.name for c in (await setup.execution(execution.uuid)).journal] == ["reserve"]


async def test_the_worker_refuses_to_run_inside_a_transaction(setup: Setup) -> None:
    async with setup.persistence.transaction_runner.transaction():
        with pytest.raises(WorkflowError, match="outside a transaction"):
            await setup.runtime.process_pending_executions()


async def test_sweeps_leave_busy_instances_alone(setup: Setup) -> None:
    runtime, clock = setup.runtime, setup.clock
    instance = await runtime.create_instance("order")
    execution = await runtime.enqueue_event(instance.uuid, "submit", idempotency_key="k")
    clock.advance(minutes=31)
    swept = await runtime.process_expired_workflows()
    assert swept.processed == 0
    stored = await runtime.get_instance(instance.uuid)
    assert stored is not None
    assert stored.current_state == "new"
    await runtime.cancel_execution(execution.uuid)
    assert (await runtime.process_expired_workflows()).processed == 1


# --- transactional commands (PostgreSQL: they write through the checkpoint's connection) ----


def ledger_definition() -> WorkflowDefinition:
    return WorkflowDefinition(
        name="ledger",
        initial_state="open",
        states={
            "open": State(
                events={
                    "book": Event(
                        target_state="booked",
                        commands=(
                            CommandRef("write", transactional=True),
                            CommandRef("after"),
                        ),
                    )
                }
            ),
            "booked": State(),
        },
    )


async def test_a_transactional_command_commits_with_its_checkpoint_or_not_at_all(
    pool: asyncpg.Pool, clock: ManualClock
) -> None:
    await pool.execute("CREATE TABLE ledger (execution uuid, attempt int)")
    persistence = pg_workflow_providers(pool, durable_execution=True)
    runner = persistence.transaction_runner
    explode = {"write": 1}

    async def write(subject: Any, ctx: ExecutionContext) -> CommandResult:
        assert ctx.durable is not None
        await runner.connection().execute(
            "INSERT INTO ledger VALUES ($1, $2)", ctx.durable.execution_uuid, ctx.durable.attempt
        )
        if explode["write"]:
            explode["write"] -= 1
            raise RuntimeError("after the insert")
        return CommandResult(ok=True)

    definitions = DefinitionRegistry()
    definitions.register(ledger_definition())
    commands = CommandRegistry()
    commands.register("write", write)
    commands.register("after", lambda s, c: CommandResult(ok=True))
    runtime = WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        persistence=persistence,
        clock=clock,
        durable_execution=POLICY,
    )
    instance = await runtime.create_instance("ledger")
    execution = await runtime.enqueue_event(instance.uuid, "book", idempotency_key="k")
    assert (await runtime.process_pending_executions()).retrying == [execution.uuid]
    # The first attempt's insert rolled back with its failed checkpoint.
    assert await pool.fetch("SELECT attempt FROM ledger") == []
    clock.advance(seconds=1)
    assert (await runtime.process_pending_executions()).progressed == [execution.uuid]
    assert [r["attempt"] for r in await pool.fetch("SELECT attempt FROM ledger")] == [2]
    assert (await runtime.process_pending_executions()).completed == [execution.uuid]
    stored = await runtime.get_instance(instance.uuid)
    assert stored is not None
    assert stored.current_state == "booked"


async def test_migration_leaves_a_busy_instance_untouched(setup: Setup) -> None:
    runtime = setup.runtime
    instance = await runtime.create_instance("order")
    idle = await runtime.create_instance("order")
    execution = await runtime.enqueue_event(instance.uuid, "submit", idempotency_key="k")
    runtime.definitions.register(dataclasses.replace(order_definition(), version=2))
    result = await runtime.migrate_instances("order", from_version=1, to_version=2)
    assert [m.uuid for m in result.migrated] == [idle.uuid]
    assert [f.uuid for f in result.failed] == [instance.uuid]
    assert "busy" in result.failed[0].error
    assert await runtime.get_instance(instance.uuid) == instance
    # The execution goes on under the version it captured.
    await setup.drain()
    assert (await setup.execution(execution.uuid)).status == "completed"


async def test_should_stop_ends_a_poll_after_the_execution_in_hand(setup: Setup) -> None:
    runtime = setup.runtime
    for n in range(3):
        instance = await runtime.create_instance("order")
        await runtime.enqueue_event(instance.uuid, "submit", idempotency_key=f"k{n}")
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 1  # let one execution through, then stop

    result = await runtime.process_pending_executions(10, should_stop=should_stop)
    assert result.processed == 1
    assert setup.commands.names() == ["reserve"]
    assert (await runtime.process_pending_executions(10)).processed == 3
