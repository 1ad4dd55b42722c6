"""WorkflowRuntime behaviour, on the in-memory provider and on PostgreSQL (``any_persistence``)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from helpers import ManualClock, reminder

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    CommandResult,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    GuardRef,
    GuardRegistry,
    OnEnter,
    State,
    StateEnterEvent,
    Timeout,
    TimeoutRetryPolicy,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
)
from duraflows_pg_async.errors import (
    CommandFailureError,
    InvalidArgumentError,
    InvalidEventError,
    OnEnterDepthExceededError,
    WorkflowDefinitionError,
    WorkflowInstanceNotFoundError,
)

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def order_definition(version: int = 1, *, pay_target: str = "paid") -> WorkflowDefinition:
    """A realistic order flow: a guard, commands, an onEnter chain, error routing, a timeout."""
    return WorkflowDefinition(
        name="order",
        version=version,
        initial_state="awaiting_payment",
        states={
            "awaiting_payment": State(
                context={"status": "new", "source": "declared"},
                events={
                    "pay": Event(
                        target_state=pay_target,
                        error_state="payment_failed",
                        guard=GuardRef("has_items"),
                        commands=(CommandRef("charge_card", metadata={"psp": "acme"}),),
                    ),
                    "add_item": Event(commands=(CommandRef("add_item"),)),
                    "expire": Event(target_state="cancelled", timeout=Timeout(minutes=30)),
                },
            ),
            "paid": State(
                context={"status": "paid"},
                on_enter=OnEnter(target_state="packing", commands=(CommandRef("reserve_stock"),)),
                events={"cancel": Event(target_state="cancelled")},
            ),
            "packing": State(
                on_enter=OnEnter(commands=(CommandRef("print_label"),)),
                context={"status": "packing", "label": "declared"},
                events={"ship": Event(target_state="shipped")},
            ),
            "paid_v2": State(events={"ship": Event(target_state="shipped")}),
            "payment_failed": State(events={"retry": Event(target_state="awaiting_payment")}),
            "cancelled": State(),
            "shipped": State(),
        },
    )


class World:
    """A runtime with recording commands, guards and an observer."""

    def __init__(self, persistence: WorkflowPersistenceProvider, **runtime_options: Any) -> None:
        self.persistence = persistence
        self.clock = ManualClock(START)
        self.calls: list[tuple[str, str | None, str, UUID]] = []
        self.entered: list[StateEnterEvent] = []
        self.charge_ok = True
        self.charge_raises: Exception | None = None
        self.definitions = DefinitionRegistry()
        self.definitions.register(order_definition())
        self.commands = CommandRegistry()
        self.guards = GuardRegistry()
        self.commands.register("charge_card", self.charge_card)
        self.commands.register("add_item", self.add_item)
        self.commands.register("reserve_stock", self.reserve_stock)
        self.commands.register("print_label", self.print_label)
        self.guards.register("has_items", self.has_items)
        self.runtime = WorkflowRuntime(
            definitions=self.definitions,
            commands=self.commands,
            guards=self.guards,
            persistence=persistence,
            clock=self.clock,
            observers=[self.entered.append],
            **runtime_options,
        )

    def record(self, name: str, ctx: ExecutionContext) -> None:
        self.calls.append((name, ctx.from_state, ctx.to_state, ctx.transition_uuid))

    async def charge_card(self, subject: Any, ctx: ExecutionContext) -> CommandResult:
        self.record("charge_card", ctx)
        assert ctx.command_metadata == {"psp": "acme"}
        if self.charge_raises is not None:
            raise self.charge_raises
        ctx.context["charged"] = subject
        return CommandResult(ok=self.charge_ok, code=None if self.charge_ok else "DECLINED")

    def add_item(self, subject: Any, ctx: ExecutionContext) -> None:
        self.record("add_item", ctx)
        ctx.context["items"] = ctx.context.get("items", 0) + 1

    async def reserve_stock(self, subject: Any, ctx: ExecutionContext) -> None:
        self.record("reserve_stock", ctx)
        # Sees the declared context of the state it runs in (applied before its commands).
        ctx.context["reserved_with_status"] = ctx.context["status"]

    def print_label(self, subject: Any, ctx: ExecutionContext) -> None:
        self.record("print_label", ctx)
        ctx.context["label"] = "printed"

    def has_items(self, subject: Any, ctx: ExecutionContext) -> bool:
        ctx.context["guard_wrote_this"] = True  # must not leak into the instance
        return bool(ctx.context.get("items", 0))


@pytest.fixture
def world(any_persistence: WorkflowPersistenceProvider) -> World:
    return World(any_persistence)


async def test_create_instance(world: World) -> None:
    instance = await world.runtime.create_instance(
        "order", context={"source": "caller", "customer": "c-1"}, metadata={"tenant": "t"}
    )
    assert instance.current_state == "awaiting_payment"
    assert instance.version == 0
    assert instance.definition_version == 1
    # The caller's context wins over the initial state's declared one.
    assert instance.context == {"status": "new", "source": "caller", "customer": "c-1"}
    assert instance.expires_at == START + timedelta(minutes=30)
    stored = await world.runtime.get_instance(instance.uuid)
    assert stored is not None
    assert (stored.context, stored.metadata) == (instance.context, {"tenant": "t"})
    assert await world.runtime.get_history(instance.uuid) == []  # no row for the creation
    assert [(e.from_state, e.to_state, e.trigger_event) for e in world.entered] == [
        (None, "awaiting_payment", None)
    ]
    snapshot = await world.persistence.definition_store.find_by_name_and_version("order", 1)
    assert snapshot is not None
    assert snapshot.content_hash == order_definition().content_hash()


async def test_event_with_an_on_enter_chain(world: World) -> None:
    instance = await world.runtime.create_instance("order")
    await world.runtime.trigger_event(instance.uuid, "add_item")
    result = await world.runtime.trigger_event(
        instance.uuid, "pay", subject="card-42", trigger_metadata={"actorUuid": "u-1"}
    )
    assert result.outcome == "success"
    assert (result.from_state, result.to_state) == ("awaiting_payment", "packing")
    assert len(result.command_results) == 3  # charge, reserve_stock, print_label

    stored = await world.runtime.get_instance(instance.uuid)
    assert stored is not None
    assert stored.current_state == "packing"
    assert stored.version == 4  # add_item, pay, hop to packing, stay-in-place hop in packing
    # Declared context wins over command writes on entry; the reserve command saw "paid";
    # the stay-in-place hop keeps print_label's write over packing's declared "label".
    assert stored.context["status"] == "packing"
    assert stored.context["reserved_with_status"] == "paid"
    assert stored.context["label"] == "printed"
    assert stored.context["charged"] == "card-42"
    assert "guard_wrote_this" not in stored.context

    history = await world.runtime.get_history(instance.uuid)
    assert [(h.event_name, h.from_state, h.to_state, h.outcome) for h in reversed(history)] == [
        ("add_item", "awaiting_payment", "awaiting_payment", "success"),
        ("pay", "awaiting_payment", "paid", "success"),
        ("onEnter", "paid", "packing", "success"),
        ("onEnter", "packing", "packing", "success"),
    ]
    assert history[0].uuid == result.history_uuid
    assert history[2].trigger_metadata == {"actorUuid": "u-1"}
    assert history[0].trigger_metadata == {"source": "onEnter"}

    # Transition uuids: the event's commands and the first hop's share the event's uuid; a move
    # to a new state mints a new one, which the next state's commands see.
    pay_calls = {name: (frm, to, tid) for name, frm, to, tid in world.calls if name != "add_item"}
    assert pay_calls["charge_card"][2] == pay_calls["reserve_stock"][2]
    assert pay_calls["print_label"][2] != pay_calls["reserve_stock"][2]
    assert pay_calls["reserve_stock"][:2] == ("awaiting_payment", "paid")
    assert pay_calls["print_label"][:2] == ("paid", "packing")
    entered = [(e.trigger_event, e.from_state, e.to_state) for e in world.entered]
    assert entered[-3:] == [
        ("pay", "awaiting_payment", "paid"),
        ("onEnter", "paid", "packing"),
        ("onEnter", "packing", "packing"),
    ]
    assert world.entered[-1].transition_uuid == world.entered[-2].transition_uuid


async def test_guard_rejection_is_an_outcome_with_history(world: World) -> None:
    instance = await world.runtime.create_instance("order")
    world.entered.clear()
    result = await world.runtime.trigger_event(instance.uuid, "pay")
    assert result.outcome == "guard-rejected"
    assert result.rejected_by == "has_items"
    assert (result.from_state, result.to_state, result.command_results) == (
        "awaiting_payment",
        "awaiting_payment",
        [],
    )
    stored = await world.runtime.get_instance(instance.uuid)
    assert stored is not None
    assert stored.version == 0
    (row,) = await world.runtime.get_history(instance.uuid)
    assert (row.outcome, row.rejected_by, row.uuid) == (
        "guard-rejected",
        "has_items",
        result.history_uuid,
    )
    assert world.entered == []
    assert world.calls == []


async def test_failed_command_routes_to_the_error_state(world: World) -> None:
    instance = await world.runtime.create_instance("order")
    await world.runtime.trigger_event(instance.uuid, "add_item")
    world.charge_ok = False
    result = await world.runtime.trigger_event(instance.uuid, "pay")
    assert result.outcome == "failure"
    assert result.to_state == "payment_failed"
    latest = (await world.runtime.get_history(instance.uuid))[0]
    assert (latest.outcome, latest.to_state, latest.error_message) == (
        "failure",
        "payment_failed",
        "DECLINED",
    )
    assert latest.command_results == [CommandResult(ok=False, code="DECLINED")]


async def test_mandatory_failure_without_error_state_writes_nothing(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    world = World(any_persistence)
    definition = WorkflowDefinition(
        name="strict",
        initial_state="a",
        states={
            "a": State(events={"go": Event(target_state="b", commands=(CommandRef("no"),))}),
            "b": State(),
        },
    )
    world.definitions.register(definition)
    world.commands.register("no", lambda s, c: CommandResult(ok=False, message="refused"))
    instance = await world.runtime.create_instance("strict")
    with pytest.raises(CommandFailureError, match="refused") as caught:
        await world.runtime.trigger_event(instance.uuid, "go")
    assert caught.value.command_name == "no"
    stored = await world.runtime.get_instance(instance.uuid)
    assert stored is not None
    assert (stored.current_state, stored.version) == ("a", 0)
    assert await world.runtime.get_history(instance.uuid) == []


async def test_raising_command_rolls_everything_back(world: World) -> None:
    instance = await world.runtime.create_instance("order")
    await world.runtime.trigger_event(instance.uuid, "add_item")
    world.entered.clear()
    world.charge_raises = RuntimeError("psp down")
    with pytest.raises(RuntimeError, match="psp down"):
        await world.runtime.trigger_event(instance.uuid, "pay")
    stored = await world.runtime.get_instance(instance.uuid)
    assert stored is not None
    assert (stored.current_state, stored.version) == ("awaiting_payment", 1)
    assert len(await world.runtime.get_history(instance.uuid)) == 1
    assert world.entered == []


async def test_best_effort_command_never_fails_the_transition(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    world = World(any_persistence)
    world.definitions.register(
        WorkflowDefinition(
            name="notify",
            initial_state="a",
            states={
                "a": State(
                    events={
                        "go": Event(
                            target_state="b", commands=(CommandRef("email"), CommandRef("sms"))
                        )
                    }
                ),
                "b": State(),
            },
        )
    )

    def email(subject: Any, ctx: ExecutionContext) -> None:
        raise ConnectionError("smtp unreachable")

    world.commands.register("email", email, best_effort=True)
    world.commands.register(
        "sms", lambda s, c: CommandResult(ok=False, code="NO_CREDIT"), best_effort=True
    )
    instance = await world.runtime.create_instance("notify")
    result = await world.runtime.trigger_event(instance.uuid, "go")
    assert result.outcome == "success"
    assert result.to_state == "b"
    thrown, declined = result.command_results
    assert (thrown.ok, thrown.code, thrown.message) == (
        False,
        "BEST_EFFORT_THROWN",
        "smtp unreachable",
    )
    assert thrown.error == {"name": "ConnectionError", "message": "smtp unreachable"}
    assert declined.code == "NO_CREDIT"


async def test_on_enter_depth_limit(any_persistence: WorkflowPersistenceProvider) -> None:
    world = World(any_persistence, max_on_enter_depth=3)
    states = {f"s{n}": State(on_enter=OnEnter(target_state=f"s{n + 1}")) for n in range(5)}
    states["s0"] = State(events={"go": Event(target_state="s1")})
    states["s5"] = State()
    world.definitions.register(WorkflowDefinition(name="deep", initial_state="s0", states=states))
    instance = await world.runtime.create_instance("deep")
    with pytest.raises(OnEnterDepthExceededError) as caught:
        await world.runtime.trigger_event(instance.uuid, "go")
    assert caught.value.max_depth == 3
    stored = await world.runtime.get_instance(instance.uuid)
    assert stored is not None
    assert stored.current_state == "s0"


async def test_errors_name_instance_state_and_event(world: World) -> None:
    instance = await world.runtime.create_instance("order")
    with pytest.raises(InvalidEventError, match='"ship"') as caught:
        await world.runtime.trigger_event(instance.uuid, "ship")
    assert (caught.value.state, caught.value.instance_uuid) == ("awaiting_payment", instance.uuid)
    missing = uuid4()
    with pytest.raises(WorkflowInstanceNotFoundError, match=str(missing)):
        await world.runtime.trigger_event(missing, "pay")
    with pytest.raises(InvalidArgumentError, match="instance_uuid"):
        await world.runtime.trigger_event("not-a-uuid", "pay")
    with pytest.raises(InvalidArgumentError, match="trigger_metadata"):
        await world.runtime.trigger_event(instance.uuid, "pay", trigger_metadata={"x": {1, 2}})
    with pytest.raises(WorkflowDefinitionError, match="not found"):
        await world.runtime.create_instance("unknown")
    with pytest.raises(InvalidArgumentError, match=r"context\['when'\]"):
        await world.runtime.create_instance("order", context={"when": datetime.now(UTC)})


async def test_observers_fire_after_commit_and_errors_are_contained(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    seen_active: list[bool] = []

    async def failing(event: StateEnterEvent) -> None:
        raise RuntimeError("observer broke")

    world.runtime.add_observer(failing)
    world.runtime.add_observer(
        lambda e: seen_active.append(world.persistence.transaction_runner.is_transaction_active())
    )
    with caplog.at_level(logging.WARNING, logger="duraflows_pg_async"):
        instance = await world.runtime.create_instance("order")
    assert seen_active == [False]
    assert any("observer" in r.getMessage() for r in caplog.records)
    assert instance.current_state == "awaiting_payment"


async def test_no_observer_when_an_outer_transaction_rolls_back(world: World) -> None:
    instance = await world.runtime.create_instance("order")
    world.entered.clear()
    runner = world.persistence.transaction_runner
    with pytest.raises(LookupError):
        async with runner.transaction():
            await world.runtime.trigger_event(instance.uuid, "add_item")
            assert world.entered == []  # not before the outer COMMIT
            raise LookupError("caller changed its mind")
    assert world.entered == []
    stored = await world.runtime.get_instance(instance.uuid)
    assert stored is not None
    assert stored.version == 0

    async with runner.transaction():
        await world.runtime.trigger_event(instance.uuid, "add_item")
        assert world.entered == []
    assert [e.trigger_event for e in world.entered] == ["add_item"]


async def test_available_events_and_handle(world: World) -> None:
    instance = await world.runtime.create_instance("order")
    handle = world.runtime.handle(str(instance.uuid))
    events = await handle.get_available_events()
    assert [(e.event_name, e.target_state, e.has_commands, e.has_timeout) for e in events] == [
        ("pay", "paid", True, False),
        ("add_item", None, True, False),
        ("expire", "cancelled", False, True),
    ]
    await handle.trigger_event("add_item")
    assert len(await handle.get_history()) == 1
    got = await handle.get_instance()
    assert got is not None
    assert got.version == 1
    with pytest.raises(WorkflowInstanceNotFoundError):
        await world.runtime.get_available_events(uuid4())
    with pytest.raises(InvalidArgumentError, match="limit"):
        await world.runtime.get_history(instance.uuid, limit=0)


# --- timeouts -------------------------------------------------------------------------------


async def test_due_timeout_fires_its_event(world: World) -> None:
    instance = await world.runtime.create_instance("order")
    assert (await world.runtime.process_expired_workflows()).processed == 0
    world.clock.advance(minutes=31)
    result = await world.runtime.process_expired_workflows()
    assert (result.processed, result.rejected, result.failed) == (1, 0, [])
    stored = await world.runtime.get_instance(instance.uuid)
    assert stored is not None
    assert (stored.current_state, stored.expires_at) == ("cancelled", None)
    (row,) = await world.runtime.get_history(instance.uuid)
    assert (row.event_name, row.trigger_metadata) == ("expire", {"source": "timeout"})
    assert (await world.runtime.process_expired_workflows()).processed == 0


async def test_a_command_only_event_postpones_the_deadline(world: World) -> None:
    instance = await world.runtime.create_instance("order")
    world.clock.advance(minutes=20)
    await world.runtime.trigger_event(instance.uuid, "add_item")
    world.clock.advance(minutes=20)
    assert (await world.runtime.process_expired_workflows()).processed == 0
    world.clock.advance(minutes=11)
    assert (await world.runtime.process_expired_workflows()).processed == 1


def failing_timeout_world(persistence: WorkflowPersistenceProvider, **options: Any) -> World:
    world = World(persistence, **options)
    world.definitions.register(reminder(command="send_reminder", minutes=1))

    def send_reminder(subject: Any, ctx: ExecutionContext) -> None:
        if ctx.context.get("poisoned"):
            raise RuntimeError("smtp boom\x00")

    world.commands.register("send_reminder", send_reminder)
    return world


async def test_timeout_retry_schedule_survives_a_restart_and_parks(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    policy = TimeoutRetryPolicy(
        initial_delay=timedelta(seconds=60), max_delay=timedelta(seconds=240), max_attempts=4
    )
    world = failing_timeout_world(any_persistence, timeout_retry=policy)
    instance = await world.runtime.create_instance("reminder", context={"poisoned": True})
    world.clock.advance(minutes=2)
    expected_waits = [60, 120, 240]
    for attempt, wait in enumerate(expected_waits, start=1):
        result = await world.runtime.process_expired_workflows()
        (failure,) = result.failed
        assert (failure.attempts, failure.retry_at) == (
            attempt,
            world.clock.now() + timedelta(seconds=wait),
        )
        assert failure.error == "smtp boom\ufffd"  # NUL replaced
        assert result.parked == []
        # Not due again before retry_at, even for a freshly started runtime.
        world = restart(world, policy)
        world.clock.advance(seconds=wait)
        # Due strictly after retry_at (the scan's predicate is "<", as upstream's).
        assert (await world.runtime.process_expired_workflows()).failed == []
        world.clock.advance(seconds=1)
    result = await world.runtime.process_expired_workflows()
    (failure,) = result.failed
    assert (failure.attempts, failure.retry_at) == (4, None)
    assert [p.uuid for p in result.parked] == [instance.uuid]
    stored = await world.runtime.get_instance(instance.uuid)
    assert stored is not None
    assert stored.timeout_retry is not None
    assert stored.timeout_retry.parked_at == world.clock.now()
    assert stored.current_state == "waiting"
    assert await world.runtime.get_history(instance.uuid) == []  # failed attempts write none
    world.clock.advance(days=30)
    assert (await world.runtime.process_expired_workflows()).failed == []  # parked: never retried
    assert [p.uuid for p in await world.runtime.find_parked_timeouts()] == [instance.uuid]

    rearmed = await world.runtime.rearm_timeout(instance.uuid)
    assert rearmed.timeout_retry is None
    assert [f.attempts for f in (await world.runtime.process_expired_workflows()).failed] == [1]


def restart(world: World, policy: TimeoutRetryPolicy) -> World:
    """A new runtime (a new process, say) over the same storage, with the same clock."""
    fresh = failing_timeout_world(world.persistence, timeout_retry=policy)
    fresh.clock = world.clock
    fresh.runtime.clock = world.clock
    return fresh


async def test_healthy_instances_pass_failing_ones(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    world = failing_timeout_world(any_persistence)
    bad = [
        await world.runtime.create_instance("reminder", context={"poisoned": True})
        for _ in range(2)
    ]
    world.clock.advance(seconds=1)
    good = await world.runtime.create_instance("reminder")
    world.clock.advance(minutes=2)
    outcomes = [await world.runtime.process_expired_workflows(limit=2) for _ in range(3)]
    assert sorted(f.uuid for f in outcomes[0].failed) == sorted(b.uuid for b in bad)
    assert outcomes[1].processed == 1
    assert outcomes[2].processed == 0
    stored = await world.runtime.get_instance(good.uuid)
    assert stored is not None
    assert stored.current_state == "reminded"


async def test_rejected_timeout_clears_the_deadline(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    world = World(any_persistence)
    world.definitions.register(
        WorkflowDefinition(
            name="guarded",
            initial_state="a",
            states={
                "a": State(
                    events={
                        "late": Event(
                            target_state="b",
                            guard=GuardRef("has_items"),
                            timeout=Timeout(minutes=5),
                        )
                    }
                ),
                "b": State(),
            },
        )
    )
    instance = await world.runtime.create_instance("guarded")
    world.clock.advance(minutes=6)
    result = await world.runtime.process_expired_workflows()
    assert (result.processed, result.rejected) == (0, 1)
    stored = await world.runtime.get_instance(instance.uuid)
    assert stored is not None
    assert (stored.current_state, stored.expires_at, stored.version) == ("a", None, 1)
    (row,) = await world.runtime.get_history(instance.uuid)
    assert (row.outcome, row.trigger_metadata) == ("guard-rejected", {"source": "timeout"})


async def test_bad_limit_is_refused(world: World) -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidArgumentError, match="limit"):
            await world.runtime.process_expired_workflows(limit=bad)  # type: ignore[arg-type]


# --- versions -------------------------------------------------------------------------------


async def test_instances_keep_the_version_they_started_with(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    world = World(any_persistence)
    v1_instance = await world.runtime.create_instance("order")
    await world.runtime.trigger_event(v1_instance.uuid, "add_item")

    # Deploy v2 in a new process: only v2 is registered; v1 comes from its stored snapshot.
    v2 = World(any_persistence)
    v2.definitions = DefinitionRegistry()
    v2.definitions.register(order_definition(version=2, pay_target="paid_v2"))
    v2.runtime = WorkflowRuntime(
        definitions=v2.definitions, commands=v2.commands, guards=v2.guards,
        persistence=any_persistence, clock=v2.clock,
    )  # fmt: skip
    v2_instance = await v2.runtime.create_instance("order")
    await v2.runtime.trigger_event(v2_instance.uuid, "add_item")
    old = await v2.runtime.trigger_event(v1_instance.uuid, "pay")
    new = await v2.runtime.trigger_event(v2_instance.uuid, "pay")
    assert old.to_state == "packing"  # v1 rules: pay -> paid -> packing
    assert new.to_state == "paid_v2"
    assert [v.version for v in await any_persistence.definition_store.list_versions("order")] == [
        1,
        2,
    ]


async def test_changed_content_without_a_version_bump_is_refused(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    world = World(any_persistence)
    await world.runtime.initialize()
    changed = World(any_persistence)
    changed.definitions = DefinitionRegistry()
    changed.definitions.register(order_definition(pay_target="paid_v2"))
    runtime = WorkflowRuntime(
        definitions=changed.definitions, commands=changed.commands, guards=changed.guards,
        persistence=any_persistence,
    )  # fmt: skip
    with pytest.raises(WorkflowDefinitionError, match="was not bumped"):
        await runtime.initialize()
    with pytest.raises(WorkflowDefinitionError, match="was not bumped"):
        await runtime.create_instance("order")  # a failed initialize is retried, not cached


async def test_startup_check_finds_instances_that_cannot_run(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    world = World(any_persistence)
    await world.runtime.create_instance("order")
    incomplete = CommandRegistry()
    incomplete.register("add_item", lambda s, c: None)
    runtime = WorkflowRuntime(
        definitions=world.definitions, commands=incomplete, guards=world.guards,
        persistence=any_persistence,
    )  # fmt: skip
    with pytest.raises(WorkflowDefinitionError, match="charge_card"):
        await runtime.initialize()


# --- concurrency (PostgreSQL) -----------------------------------------------------------------


@pytest.mark.slow
async def test_concurrent_events_on_one_instance_are_sequential(database: str) -> None:
    from duraflows_pg_async import create_pool, pg_workflow_providers

    pool = await create_pool(database, min_size=10, max_size=10)
    try:
        world = World(pg_workflow_providers(pool, lock_timeout=30))
        instance = await world.runtime.create_instance("order")
        results = await asyncio.gather(
            *(world.runtime.trigger_event(instance.uuid, "add_item") for _ in range(50))
        )
        assert all(r.outcome == "success" for r in results)
        stored = await world.runtime.get_instance(instance.uuid)
        assert stored is not None
        assert (stored.version, stored.context["items"]) == (50, 50)  # no lost update
        history = await world.runtime.get_history(instance.uuid, limit=100)
        assert len(history) == 50
        assert len({r.history_uuid for r in results}) == 50
        rows = await pool.fetch(
            "SELECT created_at FROM workflow_history WHERE workflow_instance_uuid = $1 "
            "ORDER BY created_at",
            instance.uuid,
        )
        assert len(rows) == 50
    finally:
        await pool.close()
