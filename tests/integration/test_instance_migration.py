"""migrate_instances and list_definition_versions, on the in-memory provider and on PostgreSQL
(``any_persistence``); the paging, cursor and interruption cases are in
test_instance_migration_paging.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    GuardRef,
    GuardRegistry,
    OnEnter,
    State,
    StateEnterEvent,
    Timeout,
    TimeoutRetry,
    WorkflowDefinition,
    WorkflowInstance,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
)
from duraflows_pg_async.errors import (
    InvalidArgumentError,
    WorkflowDefinitionError,
)
from duraflows_pg_async.testing import make_instance
from duraflows_pg_async.types import (
    DefinitionVersionInfo,
    MigratedInstance,
    MigrationFailure,
    MigrationResult,
    SkippedInstance,
)

START = datetime(2026, 6, 1, tzinfo=UTC)
TO_V2: dict[str, Any] = {"from_version": 1, "to_version": 2}
MIGRATION_TRIGGER = {"source": "migration", "fromVersion": 1, "toVersion": 2}


def order_v1() -> WorkflowDefinition:
    """Version 1 (``version`` left unset): review's Approve runs legacy_notify."""
    return WorkflowDefinition(
        name="order",
        initial_state="new",
        states={
            "new": State(events={"Submit": Event(target_state="review")}),
            "review": State(
                events={
                    "Approve": Event(
                        target_state="approved", commands=(CommandRef("legacy_notify"),)
                    ),
                    "Expire": Event(target_state="expired", timeout=Timeout(minutes=60)),
                }
            ),
            "approved": State(),
            "expired": State(),
        },
    )


def order_v2() -> WorkflowDefinition:
    """Version 2: review is renamed checking, its timeout halved; approved passes on at once."""
    return WorkflowDefinition(
        name="order",
        version=2,
        initial_state="new",
        states={
            "new": State(events={"Submit": Event(target_state="checking")}),
            "checking": State(
                events={
                    "Approve": Event(target_state="accepted", commands=(CommandRef("notify"),)),
                    "Expire": Event(target_state="expired", timeout=Timeout(minutes=30)),
                }
            ),
            "approved": State(on_enter=OnEnter(target_state="accepted")),
            "accepted": State(),
            "expired": State(),
        },
    )


class FakeClock:
    def __init__(self) -> None:
        self.current = START

    def now(self) -> datetime:
        return self.current

    def advance(self, **kwargs: float) -> None:
        self.current += timedelta(**kwargs)


class World:
    """Two deploys sharing one database: ``v1`` registers version 1, ``v2`` version 2."""

    def __init__(self, persistence: WorkflowPersistenceProvider) -> None:
        self.persistence = persistence
        self.clock = FakeClock()
        self.executed: list[str] = []
        self.entered: list[StateEnterEvent] = []
        self.v1 = self.runtime(order_v1())
        self.v2 = self.runtime(order_v2())

    def runtime(
        self,
        *definitions: WorkflowDefinition,
        commands: tuple[str, ...] = ("notify", "legacy_notify"),
        guards: GuardRegistry | None = None,
    ) -> WorkflowRuntime:
        registry = DefinitionRegistry()
        for definition in definitions:
            registry.register(definition)
        command_registry = CommandRegistry()
        for name in commands:
            command_registry.register(name, self.recorder(name))
        return WorkflowRuntime(
            definitions=registry,
            commands=command_registry,
            guards=guards,
            persistence=self.persistence,
            clock=self.clock,
            observers=[self.entered.append],
        )

    def recorder(self, name: str) -> Callable[[Any, ExecutionContext], None]:
        """A command that records that it ran."""

        def command(subject: Any, ctx: ExecutionContext) -> None:
            self.executed.append(name)

        return command

    async def in_review(self, **context: Any) -> WorkflowInstance:
        """A version 1 instance, submitted into "review" at START."""
        instance = await self.v1.create_instance("order", context=context)
        await self.v1.trigger_event(instance.uuid, "Submit")
        return await self.stored(instance.uuid)

    async def stored(self, instance_uuid: UUID) -> WorkflowInstance:
        found = await self.persistence.instance_store.find_by_uuid(instance_uuid)
        assert found is not None
        return found

    async def overwrite(self, instance: WorkflowInstance) -> None:
        """Write ``instance`` as it is (version bumped), as another process might have."""
        instance.version += 1
        async with self.persistence.transaction_runner.transaction():
            assert await self.persistence.instance_store.lock_by_uuid(instance.uuid) is not None
            await self.persistence.instance_store.update(instance)


@pytest.fixture
def world(any_persistence: WorkflowPersistenceProvider) -> World:
    return World(any_persistence)


# --- relabelling ---------------------------------------------------------------------------------


async def test_a_mapped_instance_moves_without_running_anything(world: World) -> None:
    before = await world.in_review(tier="silver")
    world.clock.advance(minutes=10)
    world.entered.clear()
    world.executed.clear()

    result = await world.v2.migrate_instances(
        "order", **TO_V2, state_mapping={"review": "checking"}
    )

    assert result == MigrationResult(
        dry_run=False, migrated=[MigratedInstance(before.uuid, "review", "checking")]
    )
    after = await world.stored(before.uuid)
    assert (after.current_state, after.definition_version) == ("checking", 2)
    assert after.version == before.version + 1
    assert after.context == {"tier": "silver"}
    assert after.last_transition_at == before.last_transition_at == START
    assert after.updated_at == world.clock.now()
    assert world.executed == []

    row = (await world.v2.get_history(before.uuid))[0]
    assert (row.event_name, row.from_state, row.to_state, row.outcome) == (
        "$migrated",
        "review",
        "checking",
        "success",
    )
    assert (row.command_results, row.error_message, row.definition_version) == ([], None, 2)
    assert row.trigger_metadata == MIGRATION_TRIGGER

    (event,) = world.entered
    assert (event.instance_uuid, event.from_state, event.to_state, event.state) == (
        before.uuid,
        "review",
        "checking",
        "checking",
    )
    assert (event.trigger_event, dict(event.trigger_metadata)) == ("$migrated", MIGRATION_TRIGGER)
    assert event.occurred_at == world.clock.now()

    # The instance now follows version 2.
    await world.v2.trigger_event(before.uuid, "Approve")
    assert (await world.stored(before.uuid)).current_state == "accepted"
    assert world.executed == ["notify"]
    # The version 2 snapshot was stored with the first instance moved to it.
    assert [v.version for v in await world.persistence.definition_store.list_versions("order")] == [
        1,
        2,
    ]


async def test_a_state_of_the_same_name_is_kept(world: World) -> None:
    instance = await world.v1.create_instance("order")
    result = await world.v2.migrate_instances("order", **TO_V2)
    assert result.migrated == [MigratedInstance(instance.uuid, "new", "new")]
    await world.v2.trigger_event(instance.uuid, "Submit")
    assert (await world.stored(instance.uuid)).current_state == "checking"


async def test_the_deadline_is_recomputed_from_the_last_transition(world: World) -> None:
    before = await world.in_review()
    assert before.expires_at == START + timedelta(minutes=60)
    world.clock.advance(minutes=10)
    await world.v2.migrate_instances("order", **TO_V2, state_mapping={"review": "checking"})
    # The 10 minutes spent in review count against version 2's 30.
    assert (await world.stored(before.uuid)).expires_at == START + timedelta(minutes=30)


async def test_a_deadline_already_past_fires_at_the_next_sweep(world: World) -> None:
    before = await world.in_review()
    world.clock.advance(minutes=45)
    await world.v2.migrate_instances("order", **TO_V2, state_mapping={"review": "checking"})
    sweep = await world.v2.process_expired_workflows()
    assert sweep.processed == 1
    assert (await world.stored(before.uuid)).current_state == "expired"


async def test_a_target_state_without_a_timeout_clears_the_deadline(world: World) -> None:
    before = await world.in_review()
    result = await world.v2.migrate_instances(
        "order", **TO_V2, state_mapping={"review": "accepted"}
    )
    assert result.migrated == [MigratedInstance(before.uuid, "review", "accepted")]
    assert (await world.stored(before.uuid)).expires_at is None


async def test_the_timeout_retry_state_is_cleared(world: World) -> None:
    parked = await world.in_review()
    parked.timeout_retry = TimeoutRetry(attempts=10, last_error="boom", parked_at=START)
    await world.overwrite(parked)
    retrying = await world.in_review()
    retry_at = START + timedelta(minutes=5)
    retrying.timeout_retry = TimeoutRetry(attempts=2, last_error="x", retry_at=retry_at)
    await world.overwrite(retrying)

    result = await world.v2.migrate_instances(
        "order", **TO_V2, state_mapping={"review": "checking"}
    )

    assert len(result.migrated) == 2
    for instance in (parked, retrying):
        after = await world.stored(instance.uuid)
        assert after.timeout_retry is None
        assert after.expires_at == START + timedelta(minutes=30)
    assert await world.v2.find_parked_timeouts() == []


async def test_transform_context_gives_the_new_context(world: World) -> None:
    instance = await world.v1.create_instance("order", context={"tier": "silver", "n": 1})
    seen: list[WorkflowInstance] = []

    async def transform(context: dict[str, Any], current: WorkflowInstance) -> dict[str, Any]:
        seen.append(current)
        current.current_state = "tampered"  # a copy: changes nothing
        context["n"] += 1
        return {**context, "tier": "gold", "migrated": [1, 2]}

    result = await world.v2.migrate_instances("order", **TO_V2, transform_context=transform)

    assert result.migrated == [MigratedInstance(instance.uuid, "new", "new")]
    after = await world.stored(instance.uuid)
    assert after.context == {"tier": "gold", "n": 2, "migrated": [1, 2]}
    assert after.current_state == "new"
    assert [s.uuid for s in seen] == [instance.uuid]
    assert seen[0].definition_version == 1


async def test_a_failing_transform_fails_its_instance_only(world: World) -> None:
    bad = await world.v1.create_instance("order", context={"bad": True})
    wrong_type = await world.v1.create_instance("order", context={"list": True})
    not_json = await world.v1.create_instance("order", context={"set": True})
    good = await world.v1.create_instance("order")
    world.entered.clear()

    def transform(context: dict[str, Any], current: WorkflowInstance) -> Any:
        if context.get("bad"):
            raise ValueError("cannot transform")
        if context.get("list"):
            return []
        if context.get("set"):
            return {"tags": {"a", "b"}}
        return context

    result = await world.v2.migrate_instances(
        "order",
        **TO_V2,
        instance_uuids=[bad.uuid, wrong_type.uuid, not_json.uuid, good.uuid],
        transform_context=transform,
    )

    assert result.migrated == [MigratedInstance(good.uuid, "new", "new")]
    assert result.failed[:2] == [
        MigrationFailure(bad.uuid, "cannot transform"),
        MigrationFailure(
            wrong_type.uuid, "transform_context must return a dict (a JSON object), got list"
        ),
    ]
    assert result.failed[2].uuid == not_json.uuid
    assert "transform_context's result" in result.failed[2].error
    for failed in (bad, wrong_type, not_json):
        after = await world.stored(failed.uuid)
        assert (after.definition_version, after.version) == (1, failed.version)
        assert await world.v2.get_history(failed.uuid) == []  # nothing of it written
    assert [e.instance_uuid for e in world.entered] == [good.uuid]


async def test_running_twice_is_harmless(world: World) -> None:
    await world.in_review()
    await world.v2.migrate_instances("order", **TO_V2, state_mapping={"review": "checking"})
    second = await world.v2.migrate_instances(
        "order", **TO_V2, state_mapping={"review": "checking"}
    )
    assert second == MigrationResult(dry_run=False)


async def test_migrating_down_to_a_version_only_stored(world: World) -> None:
    await world.v1.initialize()  # stores version 1; the v2 deploy does not register it
    instance = await world.v2.create_instance("order")
    result = await world.v2.migrate_instances("order", from_version=2, to_version=1)
    assert result.migrated == [MigratedInstance(instance.uuid, "new", "new")]
    await world.v2.trigger_event(instance.uuid, "Submit")
    # Version 1's rules, read from its snapshot.
    assert (await world.stored(instance.uuid)).current_state == "review"


async def test_observers_wait_for_the_enclosing_transaction(world: World) -> None:
    instance = await world.v1.create_instance("order")
    world.entered.clear()
    async with world.persistence.transaction_runner.transaction():
        result = await world.v2.migrate_instances("order", **TO_V2)
        assert world.entered == []
    assert result.migrated == [MigratedInstance(instance.uuid, "new", "new")]
    assert [e.trigger_event for e in world.entered] == ["$migrated"]


async def test_an_enclosing_rollback_undoes_the_migration(world: World) -> None:
    instance = await world.v1.create_instance("order")
    world.entered.clear()

    class Undo(Exception):
        pass

    with pytest.raises(Undo):
        async with world.persistence.transaction_runner.transaction():
            await world.v2.migrate_instances("order", **TO_V2)
            raise Undo
    assert (await world.stored(instance.uuid)).definition_version == 1
    assert world.entered == []


# --- skips and failures ------------------------------------------------------------------------


async def test_every_skip_reason(world: World) -> None:
    unmapped = await world.in_review()
    approved = await world.in_review()
    await world.v1.trigger_event(approved.uuid, "Approve")
    on_v2 = await world.v2.create_instance("order")
    unstamped = await world.stored((await world.v1.create_instance("order")).uuid)
    unstamped.definition_version = None
    await world.overwrite(unstamped)
    other = WorkflowDefinition(name="other", initial_state="new", states={"new": State()})
    other_instance = await world.runtime(other).create_instance("other")
    missing = uuid4()

    result = await world.v2.migrate_instances(
        "order",
        **TO_V2,
        # Strings are accepted; a uuid given twice is examined once.
        instance_uuids=[
            unmapped.uuid,
            approved.uuid,
            on_v2.uuid,
            unstamped.uuid,
            str(other_instance.uuid),
            missing,
            unmapped.uuid,
        ],
    )

    assert result == MigrationResult(
        dry_run=False,
        skipped=[
            SkippedInstance(
                unmapped.uuid, 'state "review" has no mapping and does not exist in version 2'
            ),
            SkippedInstance(approved.uuid, 'state "approved" has an onEnter in version 2'),
            SkippedInstance(on_v2.uuid, "on version 2, not 1"),
            SkippedInstance(unstamped.uuid, "unstamped (no definition version recorded)"),
            SkippedInstance(other_instance.uuid, 'belongs to workflow "other"'),
            SkippedInstance(missing, "not found"),
        ],
    )
    assert (await world.stored(unmapped.uuid)).definition_version == 1


async def test_an_instance_changed_after_listing_is_checked_again(world: World) -> None:
    first, second, third = sorted(
        [(await world.v1.create_instance("order")).uuid for _ in range(3)]
    )
    done: list[str] = []

    async def meddle(event: StateEnterEvent) -> None:
        # After the first instance committed, and before the others are locked, another
        # process moves the second to another state and the third to version 2.
        if event.trigger_event == "$migrated" and not done:
            done.append("yes")
            await world.v1.trigger_event(second, "Submit")
            await world.v2.migrate_instances("order", **TO_V2, instance_uuids=[third])

    world.v2.add_observer(meddle)
    result = await world.v2.migrate_instances("order", **TO_V2, exclude_states=["review"])

    assert result.migrated == [MigratedInstance(first, "new", "new")]
    assert result.skipped == [
        SkippedInstance(second, 'state "review" is excluded by the state filter'),
        SkippedInstance(third, "on version 2, not 1"),
    ]
    assert (await world.stored(second)).definition_version == 1


# --- dry run -----------------------------------------------------------------------------------


async def test_a_dry_run_reports_and_writes_nothing(world: World) -> None:
    mapped = await world.in_review()
    failing = await world.v1.create_instance("order", context={"bad": True})
    history_before = await world.v1.get_history(mapped.uuid)
    world.entered.clear()

    def transform(context: dict[str, Any], current: WorkflowInstance) -> dict[str, Any]:
        if context.get("bad"):
            raise ValueError("cannot transform")
        return context

    result = await world.v2.migrate_instances(
        "order",
        **TO_V2,
        state_mapping={"review": "checking"},
        transform_context=transform,
        dry_run=True,
    )

    assert result == MigrationResult(
        dry_run=True,
        migrated=[MigratedInstance(mapped.uuid, "review", "checking")],
        failed=[MigrationFailure(failing.uuid, "cannot transform")],
    )
    assert await world.stored(mapped.uuid) == mapped
    assert await world.v1.get_history(mapped.uuid) == history_before
    assert world.entered == []
    # Not even the snapshot of version 2.
    assert [v.version for v in await world.persistence.definition_store.list_versions("order")] == [
        1
    ]


# --- rescue ------------------------------------------------------------------------------------


async def test_an_instance_whose_version_is_neither_registered_nor_stored(world: World) -> None:
    stuck = make_instance(
        workflow_name="order", current_state="review", definition_version=1, context={"k": 1}
    )
    await world.persistence.instance_store.create(stuck)

    result = await world.v2.migrate_instances(
        "order", **TO_V2, state_mapping={"review": "checking"}
    )

    assert result.migrated == [MigratedInstance(stuck.uuid, "review", "checking")]
    await world.v2.trigger_event(stuck.uuid, "Approve")
    assert (await world.stored(stuck.uuid)).current_state == "accepted"


async def test_migration_works_while_the_startup_check_fails(world: World) -> None:
    stuck = await world.in_review()
    v2 = world.runtime(order_v2(), commands=("notify",))  # legacy_notify is gone
    with pytest.raises(WorkflowDefinitionError, match="legacy_notify"):
        await v2.initialize()

    result = await v2.migrate_instances("order", **TO_V2, state_mapping={"review": "checking"})

    assert result.migrated == [MigratedInstance(stuck.uuid, "review", "checking")]
    await v2.initialize()  # nothing pinned to version 1 is left


# --- checks before anything is written ---------------------------------------------------------

BAD_ARGUMENTS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"from_version": 0}, InvalidArgumentError, "from_version must be a positive integer"),
    ({"from_version": True}, InvalidArgumentError, "from_version"),
    ({"to_version": 1.5}, InvalidArgumentError, "to_version must be a positive integer"),
    ({"to_version": "2"}, InvalidArgumentError, "to_version"),
    ({"to_version": 1}, InvalidArgumentError, "from_version and to_version must differ"),
    ({"limit": 0}, InvalidArgumentError, "limit must be a positive integer"),
    ({"states": []}, InvalidArgumentError, "states must not be empty"),
    ({"states": ["new", 7]}, InvalidArgumentError, r"states\[\] must be a non-empty string"),
    ({"states": "new"}, InvalidArgumentError, "states must be a collection"),
    ({"exclude_states": [None]}, InvalidArgumentError, r"exclude_states\[\]"),
    ({"cursor": ""}, InvalidArgumentError, "cursor must be a UUID"),
    ({"cursor": "not-a-uuid"}, InvalidArgumentError, "cursor must be a UUID"),
    ({"cursor": uuid4(), "instance_uuids": []}, InvalidArgumentError, "cannot be combined"),
    ({"instance_uuids": "abc"}, InvalidArgumentError, "instance_uuids must be a collection"),
    ({"instance_uuids": ["nope"]}, InvalidArgumentError, r"instance_uuids\[\] must be a UUID"),
    ({"state_mapping": ["review"]}, InvalidArgumentError, "state_mapping must be a dict"),
    ({"state_mapping": {"review": 2}}, InvalidArgumentError, "state_mapping"),
    ({"transform_context": "x"}, InvalidArgumentError, "transform_context must be callable"),
    ({"dry_run": 1}, InvalidArgumentError, "dry_run must be True or False"),
    ({"workflow_name": ""}, InvalidArgumentError, "workflow_name"),
    ({"workflow_name": "nope"}, WorkflowDefinitionError, "not found in registry"),
    ({"to_version": 3}, WorkflowDefinitionError, "version 3 is neither registered nor in"),
    (
        {"state_mapping": {"review": "nowhere"}},
        InvalidArgumentError,
        'maps "review" to "nowhere", which is not a state of version 2',
    ),
    (
        {"state_mapping": {"review": "approved"}},
        InvalidArgumentError,
        'maps "review" to "approved", which has an onEnter in version 2',
    ),
    (
        {"state_mapping": {"reveiw": "checking"}},
        InvalidArgumentError,
        'maps "reveiw", which is not a state of version 1',
    ),
]


async def test_bad_arguments_are_refused_before_anything_is_written(world: World) -> None:
    instance = await world.in_review()
    history = await world.v1.get_history(instance.uuid)
    for patch, error, message in BAD_ARGUMENTS:
        arguments: dict[str, Any] = {"workflow_name": "order", **TO_V2, **patch}
        with pytest.raises(error, match=message):
            await world.v2.migrate_instances(**arguments)
        assert await world.stored(instance.uuid) == instance, patch
        assert await world.v1.get_history(instance.uuid) == history, patch
        # Not even the snapshot of the v2 deploy's own version.
        stored = await world.persistence.definition_store.list_versions("order")
        assert [v.version for v in stored] == [1], patch
    assert world.executed == []


async def test_a_target_changed_without_a_version_bump_is_refused(world: World) -> None:
    instance = await world.v1.create_instance("order")
    await world.v2.initialize()  # stores version 2
    # Other content under the same version number.
    drifted = world.runtime(dataclasses.replace(order_v2(), initial_state="checking"))
    for dry_run in (True, False):
        with pytest.raises(WorkflowDefinitionError, match="version 2 was not bumped"):
            await drifted.migrate_instances("order", **TO_V2, dry_run=dry_run)
    assert (await world.stored(instance.uuid)).definition_version == 1


async def test_warnings_name_what_the_target_needs_and_is_not_registered(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    world = World(any_persistence)
    w1 = WorkflowDefinition(
        name="billing",
        initial_state="open",
        states={"open": State(events={"Pay": Event(target_state="paid")}), "paid": State()},
    )
    w2 = WorkflowDefinition(
        name="billing",
        version=2,
        initial_state="open",
        states={
            "open": State(
                events={
                    "Pay": Event(
                        target_state="paid",
                        guard=GuardRef("is_vip"),
                        commands=(CommandRef("charge_v2"), CommandRef("notify")),
                    )
                }
            ),
            "paid": State(on_enter=OnEnter(commands=(CommandRef("receipt"),))),
        },
    )
    instance = await world.runtime(w1).create_instance("billing")
    move: dict[str, Any] = {"from_version": 1, "to_version": 2, "dry_run": True}

    bare = await world.runtime(w2, commands=()).migrate_instances("billing", **move)
    assert bare.warnings == [
        "version 2 references unregistered commands [charge_v2, notify, receipt], guards [is_vip]"
    ]
    assert bare.migrated == [MigratedInstance(instance.uuid, "open", "open")]

    some = world.runtime(w2, commands=("charge_v2", "notify", "receipt"))
    assert (await some.migrate_instances("billing", **move)).warnings == [
        "version 2 references unregistered guards [is_vip]"
    ]

    guards = GuardRegistry()
    guards.register("is_vip", lambda subject, ctx: True)
    everything = world.runtime(w2, commands=("charge_v2", "notify", "receipt"), guards=guards)
    real = await everything.migrate_instances("billing", from_version=1, to_version=2)
    assert real.warnings == []
    assert real.migrated == [MigratedInstance(instance.uuid, "open", "open")]


# --- list_definition_versions ------------------------------------------------------------------


async def test_list_definition_versions(world: World) -> None:
    reviewing = await world.in_review()
    approved = await world.in_review()
    await world.v1.trigger_event(approved.uuid, "Approve")  # terminal in version 1
    await world.v2.create_instance("order")

    before = await world.v2.list_definition_versions("order")
    assert [(v.version, v.content_hash, v.active_instances) for v in before] == [
        (1, order_v1().content_hash(), 1),
        (2, order_v2().content_hash(), 1),
    ]
    assert all(isinstance(v, DefinitionVersionInfo) for v in before)
    assert all(v.registered_at.tzinfo is not None for v in before)

    await world.v2.migrate_instances("order", **TO_V2, state_mapping={"review": "checking"})
    after = await world.v2.list_definition_versions("order")
    assert [(v.version, v.active_instances) for v in after] == [(1, 0), (2, 2)]
    assert (await world.stored(reviewing.uuid)).definition_version == 2

    assert await world.v2.list_definition_versions("unknown") == []
    with pytest.raises(InvalidArgumentError):
        await world.v2.list_definition_versions("")


async def test_list_definition_versions_does_not_initialize(world: World) -> None:
    await world.in_review()
    unused = world.runtime(order_v1(), order_v2())
    versions = await unused.list_definition_versions("order")
    # The version 2 of this runtime was never used, so never stored.
    assert [(v.version, v.active_instances) for v in versions] == [(1, 1)]
