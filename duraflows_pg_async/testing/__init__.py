"""Conformance suites for persistence providers, to run with pytest.

Every [`WorkflowPersistenceProvider`][duraflows_pg_async.WorkflowPersistenceProvider] (the
PostgreSQL one of this package, an in-memory one, a third-party adapter) must behave the same way
for the runtime to be correct on it. The four base classes below hold that behaviour as pytest
tests. To check a provider, subclass them in one of your test modules and provide a
``conformance_provider`` fixture that returns a fresh provider over empty storage for every test:

```python
import pytest

from duraflows_pg_async import pg_workflow_providers
from duraflows_pg_async.testing import (
    DefinitionStoreConformance,
    HistoryStoreConformance,
    InstanceStoreConformance,
    TransactionRunnerConformance,
)


@pytest.fixture
def conformance_provider(my_fresh_pool):
    return pg_workflow_providers(my_fresh_pool)


class TestInstanceStore(InstanceStoreConformance):
    pass


class TestHistoryStore(HistoryStoreConformance):
    pass


class TestDefinitionStore(DefinitionStoreConformance):
    pass


class TestTransactionRunner(TransactionRunnerConformance):
    async def cause_database_error(self, provider):
        # Make the database reject a statement inside the current transaction.
        await provider.transaction_runner.connection().execute("SELECT 1/0")
```

The tests are ``async def`` methods: run them with pytest-asyncio in ``auto`` mode, or add
``pytestmark = pytest.mark.asyncio`` to each subclass under pytest-asyncio's ``strict`` mode.

Hooks a subclass may override:

- ``TransactionRunnerConformance.cause_database_error()``:
  make the database reject a statement inside the current transaction (and let the error propagate).
  Providers without a database keep the default, which returns ``NotImplemented``; the test that
  needs it is then skipped with a reason.
- ``TransactionRunnerConformance.callback_failure_logger``:
  the logger name that must record a warning when an after-commit callback raises (``None`` skips
  that check).

[`make_instance()`][duraflows_pg_async.testing.make_instance] builds a valid new
[`WorkflowInstance`][duraflows_pg_async.WorkflowInstance] with any field overridden; it is handy in
your own tests too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID, uuid4

import pytest

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.model import (
    CommandResult,
    HistoryOutcome,
    HistoryRecord,
    StoredWorkflowDefinition,
    TimeoutRetry,
    WorkflowInstance,
)
from duraflows_pg_async.errors import (
    InstanceAlreadyExistsError,
    InvalidArgumentError,
    NoActiveTransactionError,
    OptimisticLockError,
    WorkflowInstanceNotFoundError,
)

__all__ = [
    "make_instance",
    "InstanceStoreConformance",
    "HistoryStoreConformance",
    "DefinitionStoreConformance",
    "TransactionRunnerConformance",
]

# A fixed application clock for the due-timeout tests: "now" is passed to find_expired, so the
# database's own clock never matters.
_NOW = datetime(2025, 12, 1, 12, 0, tzinfo=UTC)
_MALFORMED_UUIDS = ("not-a-uuid", "1234", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz", "")


def make_instance(**overrides: Any) -> WorkflowInstance:
    """A new, valid [`WorkflowInstance`][duraflows_pg_async.WorkflowInstance]; keyword arguments
    override any field.

    Defaults: a random ``uuid4()``, workflow ``"conformance"`` in state ``"start"``, version 0,
    empty ``context`` and ``metadata``, no deadline, no definition version, no timeout retry, and
    the current UTC time (timezone-aware) for ``last_transition_at``, ``created_at`` and
    ``updated_at``.
    """
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "uuid": uuid4(),
        "workflow_name": "conformance",
        "current_state": "start",
        "version": 0,
        "context": {},
        "metadata": {},
        "expires_at": None,
        "last_transition_at": now,
        "created_at": now,
        "updated_at": now,
        "definition_version": None,
        "timeout_retry": None,
    }
    unknown = set(overrides) - set(fields)
    if unknown:
        raise TypeError(f"make_instance() got unknown fields: {', '.join(sorted(unknown))}")
    fields.update(overrides)
    return WorkflowInstance(**fields)


def _copy(instance: WorkflowInstance) -> WorkflowInstance:
    """An independent copy (the stores must not share mutable state with the caller)."""
    return dataclasses.replace(
        instance, context=dict(instance.context), metadata=dict(instance.metadata)
    )


async def _create(provider: WorkflowPersistenceProvider, *instances: WorkflowInstance) -> None:
    """Create the instances in one committed transaction."""
    async with provider.transaction_runner.transaction():
        for instance in instances:
            await provider.instance_store.create(instance)


async def _update_locked(provider: WorkflowPersistenceProvider, instance: WorkflowInstance) -> None:
    """Lock the row, then update it, in one committed transaction (the runtime's pattern)."""
    async with provider.transaction_runner.transaction():
        locked = await provider.instance_store.lock_by_uuid(instance.uuid)
        assert locked is not None, f"lock_by_uuid({instance.uuid}) found no row"
        await provider.instance_store.update(instance)


async def _find(provider: WorkflowPersistenceProvider, instance_uuid: UUID) -> WorkflowInstance:
    found = await provider.instance_store.find_by_uuid(instance_uuid)
    assert found is not None, f"instance {instance_uuid} was not found"
    return found


def _assert_aware(value: object, what: str) -> None:
    assert isinstance(value, datetime), f"{what} should be a datetime, got {value!r}"
    assert value.tzinfo is not None, f"{what} should be timezone-aware, got {value!r}"
    assert value.utcoffset() is not None, f"{what} should be timezone-aware, got {value!r}"


def _uuids(instances: list[WorkflowInstance]) -> list[UUID]:
    return [instance.uuid for instance in instances]


# --------------------------------------------------------------------------------------------
# Instance store
# --------------------------------------------------------------------------------------------


class InstanceStoreConformance:
    """The ``WorkflowInstanceStore`` contract (create, find, lock, update, due timeouts, parked
    timeouts, counting).

    Subclass in a test module as ``class TestX(InstanceStoreConformance)`` and provide a
    ``conformance_provider`` fixture returning a fresh, empty ``WorkflowPersistenceProvider``.
    """

    async def test_create_then_find_by_uuid(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        instance = make_instance(
            workflow_name="orders",
            current_state="pending",
            context={"order": {"id": 7, "lines": [1, 2.5, "x", None, True]}},
            metadata={"tenant": "acme", "tags": ["a", "b"]},
            expires_at=datetime.now(UTC) + timedelta(hours=1),
            definition_version=2,
        )
        await _create(conformance_provider, _copy(instance))

        found = await store.find_by_uuid(instance.uuid)
        assert found == instance
        assert found is not None
        assert isinstance(found.uuid, UUID)
        _assert_aware(found.created_at, "created_at")
        _assert_aware(found.updated_at, "updated_at")
        _assert_aware(found.last_transition_at, "last_transition_at")
        _assert_aware(found.expires_at, "expires_at")

        # A UUID string is accepted as well as a UUID.
        assert await store.find_by_uuid(str(instance.uuid)) == instance
        assert await store.find_by_uuid(str(instance.uuid).upper()) == instance

    async def test_find_by_uuid_unknown_returns_none(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        await _create(conformance_provider, make_instance())
        assert await store.find_by_uuid(uuid4()) is None
        assert await store.find_by_uuid(str(uuid4())) is None

    async def test_create_with_a_uuid_in_use_raises(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        original = make_instance(current_state="original")
        await _create(conformance_provider, _copy(original))

        duplicate = make_instance(uuid=original.uuid, current_state="duplicate")
        with pytest.raises(InstanceAlreadyExistsError) as raised:
            await _create(conformance_provider, duplicate)
        assert str(original.uuid) in str(raised.value)
        assert await store.find_by_uuid(original.uuid) == original

    async def test_lock_by_uuid_skip_locked_passes_over_a_held_row(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        store = conformance_provider.instance_store
        instance = make_instance()
        await store.create(instance)
        held = asyncio.Event()
        release = asyncio.Event()

        async def holder() -> None:
            async with runner.transaction():
                assert await store.lock_by_uuid(instance.uuid) is not None
                held.set()
                await release.wait()

        task = asyncio.create_task(holder())
        try:
            await asyncio.wait_for(held.wait(), 5)
            async with runner.transaction():
                # Held by the other transaction: no row, and no waiting for it.
                async with asyncio.timeout(2):
                    got = await store.lock_by_uuid(instance.uuid, skip_locked=True)
                assert got is None
        finally:
            release.set()
            await task
        async with runner.transaction():
            got = await store.lock_by_uuid(instance.uuid, skip_locked=True)
            assert got is not None
            assert got.uuid == instance.uuid

    async def test_lock_by_uuid_inside_a_transaction(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        instance = make_instance(context={"n": 1})
        await _create(conformance_provider, _copy(instance))
        async with conformance_provider.transaction_runner.transaction():
            assert await store.lock_by_uuid(instance.uuid) == instance
            assert await store.lock_by_uuid(str(instance.uuid)) == instance
            assert await store.lock_by_uuid(uuid4()) is None

    async def test_update_persists_changes_after_lock(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        instance = make_instance(current_state="pending", context={"step": 1})
        await _create(conformance_provider, _copy(instance))

        later = datetime.now(UTC) + timedelta(minutes=5)
        deadline = later + timedelta(days=2)
        async with conformance_provider.transaction_runner.transaction():
            locked = await store.lock_by_uuid(instance.uuid)
            assert locked is not None
            locked.current_state = "approved"
            locked.version += 1
            locked.context = {"step": 2, "approved_by": "ann"}
            locked.expires_at = deadline
            locked.last_transition_at = later
            locked.updated_at = later
            await store.update(locked)
            expected = _copy(locked)

        found = await _find(conformance_provider, instance.uuid)
        assert found == expected
        assert found.current_state == "approved"
        assert found.version == 1
        assert found.context == {"step": 2, "approved_by": "ann"}
        assert found.expires_at == deadline
        assert found.updated_at == later

        # And back to no deadline.
        found.version += 1
        found.expires_at = None
        await _update_locked(conformance_provider, found)
        again = await _find(conformance_provider, instance.uuid)
        assert again.version == 2
        assert again.expires_at is None

    async def test_update_with_a_stale_version_raises(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        instance = make_instance(current_state="pending")
        await _create(conformance_provider, _copy(instance))

        # Two readers of version 0; the caller increments the version before update().
        first = await _find(conformance_provider, instance.uuid)
        second = await _find(conformance_provider, instance.uuid)
        first.version += 1
        first.current_state = "by-first"
        await _update_locked(conformance_provider, first)

        second.version += 1
        second.current_state = "by-second"
        with pytest.raises(OptimisticLockError) as raised:
            await _update_locked(conformance_provider, second)
        assert str(instance.uuid) in str(raised.value)

        stored = await _find(conformance_provider, instance.uuid)
        assert stored.current_state == "by-first"
        assert stored.version == 1

        # A version that skips ahead is just as stale.
        stored.version += 2
        stored.current_state = "skipped"
        with pytest.raises(OptimisticLockError):
            await _update_locked(conformance_provider, stored)
        assert (await _find(conformance_provider, instance.uuid)).current_state == "by-first"

    async def test_update_of_an_unknown_instance_raises_optimistic_lock_error(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        ghost = make_instance(version=1)
        with pytest.raises(OptimisticLockError):
            async with conformance_provider.transaction_runner.transaction():
                await conformance_provider.instance_store.update(ghost)
        assert await conformance_provider.instance_store.find_by_uuid(ghost.uuid) is None

    async def test_update_ignores_metadata(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        instance = make_instance(metadata={"tenant": "acme"})
        await _create(conformance_provider, _copy(instance))

        changed = await _find(conformance_provider, instance.uuid)
        changed.version += 1
        changed.current_state = "next"
        changed.metadata = {"tenant": "evil", "extra": True}
        await _update_locked(conformance_provider, changed)

        stored = await _find(conformance_provider, instance.uuid)
        assert stored.current_state == "next"
        assert stored.version == 1
        assert stored.metadata == {"tenant": "acme"}

    async def test_update_never_writes_workflow_name_or_created_at(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        instance = make_instance(workflow_name="orders")
        await _create(conformance_provider, _copy(instance))

        changed = await _find(conformance_provider, instance.uuid)
        changed.version += 1
        changed.workflow_name = "renamed"
        changed.created_at = instance.created_at + timedelta(days=3)
        await _update_locked(conformance_provider, changed)

        stored = await _find(conformance_provider, instance.uuid)
        assert stored.version == 1
        assert stored.workflow_name == "orders"
        assert stored.created_at == instance.created_at

    async def test_find_expired_includes_past_deadlines_only(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        past = make_instance(expires_at=_NOW - timedelta(hours=1))
        long_past = make_instance(expires_at=_NOW - timedelta(days=30))
        future = make_instance(expires_at=_NOW + timedelta(hours=1))
        exactly_now = make_instance(expires_at=_NOW)
        no_deadline = make_instance(expires_at=None)
        await _create(conformance_provider, past, long_past, future, exactly_now, no_deadline)

        async with conformance_provider.transaction_runner.transaction():
            due = await store.find_expired(100, _NOW)
        assert _uuids(due) == [long_past.uuid, past.uuid]
        assert due[0] == long_past

    async def test_find_expired_claims_its_batch_for_concurrent_sweeps(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        store = conformance_provider.instance_store
        now = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
        claim_until = now + timedelta(minutes=2)
        created = [make_instance(expires_at=now - timedelta(minutes=n + 1)) for n in range(6)]
        for instance in created:
            await store.create(instance)
        oldest_first = [i.uuid for i in reversed(created)]

        async with runner.transaction():
            first = await store.find_expired(3, now, claim_until=claim_until)
        async with runner.transaction():
            second = await store.find_expired(10, now, claim_until=claim_until)
        # Each sweep took a disjoint part of the due work, oldest due first.
        assert [i.uuid for i in first] == oldest_first[:3]
        assert [i.uuid for i in second] == oldest_first[3:]
        # The claim shows as claimed_until; these instances still have no retry state.
        assert all(i.timeout_retry is None for i in first + second)
        assert all(i.claimed_until == claim_until for i in first + second)
        assert (await _find(conformance_provider, first[0].uuid)).claimed_until == claim_until
        async with runner.transaction():
            assert await store.find_expired(10, now) == []
            # Claims run out: a crashed sweeper's batch falls due again.
            later = await store.find_expired(10, claim_until + timedelta(seconds=1))
            assert sorted(i.uuid for i in later) == sorted(oldest_first)

        # Unused claims can be handed back (a sweep that stops early); others stay claimed.
        assert await store.release_claims([second[0].uuid, second[1].uuid], claim_until) == []
        await store.release_claims([first[1].uuid], claim_until + timedelta(seconds=1))
        async with runner.transaction():
            released = await store.find_expired(10, now)
        assert [i.uuid for i in released] == [second[0].uuid, second[1].uuid]

        # Writing an instance ends its claim.
        async with runner.transaction():
            locked = await store.lock_by_uuid(first[0].uuid)
            assert locked is not None
            assert locked.timeout_retry is None
            locked.version += 1
            await store.update(locked)
        async with runner.transaction():
            assert [i.uuid for i in await store.find_expired(10, now)] == [
                first[0].uuid,
                second[0].uuid,
                second[1].uuid,
            ]
            with pytest.raises(InvalidArgumentError, match="claim_until"):
                await store.find_expired(10, now, claim_until=now)

    async def test_find_expired_takes_only_the_named_workflows(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        runner = conformance_provider.transaction_runner
        alpha = [
            make_instance(workflow_name="alpha", expires_at=_NOW - timedelta(minutes=m))
            for m in (5, 1)
        ]
        beta = make_instance(workflow_name="beta", expires_at=_NOW - timedelta(minutes=3))
        gamma = make_instance(workflow_name="gamma", expires_at=_NOW - timedelta(minutes=9))
        await _create(conformance_provider, *alpha, beta, gamma)
        claim_until = _NOW + timedelta(seconds=20)
        async with runner.transaction():
            assert await store.find_expired(10, _NOW, workflow_names=[]) == []
            found = await store.find_expired(10, _NOW, workflow_names=["alpha", "beta"])
        # Oldest due first across the named workflows; gamma is never looked at.
        assert _uuids(found) == [alpha[0].uuid, beta.uuid, alpha[1].uuid]
        async with runner.transaction():
            claimed = await store.find_expired(
                2, _NOW, claim_until=claim_until, workflow_names=("beta", "alpha")
            )
        assert _uuids(claimed) == [alpha[0].uuid, beta.uuid]
        assert (await _find(conformance_provider, gamma.uuid)).claimed_until is None
        with pytest.raises(InvalidArgumentError, match="workflow_names"):
            async with runner.transaction():
                await store.find_expired(10, _NOW, workflow_names="alpha")

    async def test_postpone_timeout_defers_without_recording(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        runner = conformance_provider.transaction_runner
        fresh = make_instance(expires_at=_NOW - timedelta(minutes=1))
        retrying = make_instance(
            expires_at=_NOW - timedelta(minutes=1),
            timeout_retry=TimeoutRetry(attempts=2, last_error="boom", retry_at=_NOW),
        )
        await _create(conformance_provider, fresh, retrying)
        until = _NOW + timedelta(minutes=10)
        assert await store.postpone_timeout(fresh.uuid, until) is True
        assert await store.postpone_timeout(retrying.uuid, until) is True
        # Already due later: nothing to do.
        assert await store.postpone_timeout(fresh.uuid, _NOW) is False
        assert await store.postpone_timeout(uuid4(), until) is False
        stored_fresh = await _find(conformance_provider, fresh.uuid)
        stored_retrying = await _find(conformance_provider, retrying.uuid)
        assert (stored_fresh.version, stored_fresh.timeout_retry) == (0, None)
        assert stored_fresh.claimed_until == until
        assert stored_retrying.timeout_retry == TimeoutRetry(
            attempts=2, last_error="boom", retry_at=until
        )
        async with runner.transaction():
            assert await store.find_expired(10, _NOW + timedelta(minutes=5)) == []
            due = await store.find_expired(10, until + timedelta(seconds=1))
        assert sorted(_uuids(due)) == sorted([fresh.uuid, retrying.uuid])

    async def test_find_expired_respects_limit(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        deadlines = [_NOW - timedelta(minutes=m) for m in (10, 30, 20)]
        instances = [make_instance(expires_at=d) for d in deadlines]
        await _create(conformance_provider, *instances)

        async with conformance_provider.transaction_runner.transaction():
            two = await store.find_expired(2, _NOW)
            one = await store.find_expired(1, _NOW)
        # Oldest deadlines first: 30, then 20 minutes ago.
        assert _uuids(two) == [instances[1].uuid, instances[2].uuid]
        assert _uuids(one) == [instances[1].uuid]

    async def test_timeout_retry_round_trips(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        retrying = TimeoutRetry(
            attempts=2, last_error="timeout handler failed: boom", retry_at=_NOW
        )
        instance = make_instance(expires_at=_NOW - timedelta(hours=1), timeout_retry=retrying)
        await _create(conformance_provider, _copy(instance))

        stored = await _find(conformance_provider, instance.uuid)
        assert stored.timeout_retry == retrying
        assert stored == instance

        stored.version += 1
        stored.timeout_retry = None
        await _update_locked(conformance_provider, stored)
        cleared = await _find(conformance_provider, instance.uuid)
        assert cleared.timeout_retry is None

        parked = TimeoutRetry(
            attempts=10, last_error="gave up", retry_at=None, parked_at=_NOW + timedelta(hours=1)
        )
        cleared.version += 1
        cleared.timeout_retry = parked
        await _update_locked(conformance_provider, cleared)
        again = await _find(conformance_provider, instance.uuid)
        assert again.timeout_retry == parked
        assert again.version == 2

    async def test_find_expired_skips_parked_and_future_retries_and_orders_by_due_time(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        march = datetime(2025, 3, 1, tzinfo=UTC)
        june = datetime(2025, 6, 1, tzinfo=UTC)
        # Due by its deadline in March.
        deadline_march = make_instance(expires_at=march)
        # Deadline in January, but its retry is only due in June: it sorts after March.
        retry_june = make_instance(
            expires_at=datetime(2025, 1, 1, tzinfo=UTC),
            timeout_retry=TimeoutRetry(attempts=1, last_error="boom", retry_at=june),
        )
        parked = make_instance(
            expires_at=datetime(2025, 2, 1, tzinfo=UTC),
            timeout_retry=TimeoutRetry(
                attempts=10, last_error="gave up", parked_at=datetime(2025, 4, 1, tzinfo=UTC)
            ),
        )
        future_retry = make_instance(
            expires_at=datetime(2025, 2, 1, tzinfo=UTC),
            timeout_retry=TimeoutRetry(
                attempts=3, last_error="boom", retry_at=_NOW + timedelta(days=1)
            ),
        )
        await _create(conformance_provider, retry_june, parked, future_retry, deadline_march)

        async with conformance_provider.transaction_runner.transaction():
            due = await store.find_expired(100, _NOW)
        assert _uuids(due) == [deadline_march.uuid, retry_june.uuid]
        assert due[1].timeout_retry == retry_june.timeout_retry

    async def test_find_parked_timeouts(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store

        def parked(name: str, day: int) -> WorkflowInstance:
            return make_instance(
                workflow_name=name,
                expires_at=datetime(2025, 1, 1, tzinfo=UTC),
                timeout_retry=TimeoutRetry(
                    attempts=10,
                    last_error=f"gave up on {name}",
                    parked_at=datetime(2025, 1, day, tzinfo=UTC),
                ),
            )

        orders_newest = parked("orders", 3)
        invoices_oldest = parked("invoices", 1)
        orders_middle = parked("orders", 2)
        retrying = make_instance(
            workflow_name="orders",
            expires_at=datetime(2025, 1, 1, tzinfo=UTC),
            timeout_retry=TimeoutRetry(attempts=1, last_error="boom", retry_at=_NOW),
        )
        plain = make_instance(workflow_name="orders", expires_at=_NOW)
        await _create(
            conformance_provider, orders_newest, invoices_oldest, retrying, orders_middle, plain
        )

        every = await store.find_parked_timeouts()
        assert _uuids(every) == [invoices_oldest.uuid, orders_middle.uuid, orders_newest.uuid]
        assert every[0] == invoices_oldest
        orders = await store.find_parked_timeouts(workflow_name="orders")
        assert _uuids(orders) == [orders_middle.uuid, orders_newest.uuid]
        first_two = await store.find_parked_timeouts(limit=2)
        assert _uuids(first_two) == [invoices_oldest.uuid, orders_middle.uuid]
        assert _uuids(await store.find_parked_timeouts(limit=1, workflow_name="orders")) == [
            orders_middle.uuid
        ]
        assert await store.find_parked_timeouts(workflow_name="unknown") == []

    async def test_definition_version_round_trips(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        stamped = make_instance(definition_version=4)
        legacy = make_instance(definition_version=None)
        await _create(conformance_provider, _copy(stamped), _copy(legacy))
        assert (await _find(conformance_provider, stamped.uuid)).definition_version == 4
        assert (await _find(conformance_provider, legacy.uuid)).definition_version is None

        stamped.version += 1
        stamped.definition_version = 5
        await _update_locked(conformance_provider, stamped)
        legacy.version += 1
        legacy.current_state = "moved"
        await _update_locked(conformance_provider, legacy)

        assert (await _find(conformance_provider, stamped.uuid)).definition_version == 5
        still_legacy = await _find(conformance_provider, legacy.uuid)
        assert still_legacy.current_state == "moved"
        assert still_legacy.definition_version is None

    async def test_count_instances(self, conformance_provider: WorkflowPersistenceProvider) -> None:
        store = conformance_provider.instance_store
        await _create(
            conformance_provider,
            make_instance(workflow_name="orders", definition_version=1, current_state="open"),
            make_instance(workflow_name="orders", definition_version=1, current_state="open"),
            make_instance(workflow_name="orders", definition_version=1, current_state="closed"),
            # Noise: another version, another workflow, and an unstamped (legacy) row.
            make_instance(workflow_name="orders", definition_version=3, current_state="open"),
            make_instance(workflow_name="invoices", definition_version=1, current_state="open"),
            make_instance(workflow_name="orders", definition_version=None, current_state="open"),
        )

        async def count(version: int, exclude: tuple[str, ...] = ()) -> int:
            return await store.count_instances(
                workflow_name="orders", definition_version=version, exclude_states=exclude
            )

        assert await count(1, ("closed",)) == 2
        assert await count(1) == 3
        assert await count(2) == 0
        assert await count(1, ("open",)) == 1
        assert await count(1, ("open", "closed")) == 0
        assert await count(3) == 1
        assert await store.count_instances(workflow_name="unknown", definition_version=1) == 0

    async def test_lock_and_find_expired_need_a_transaction(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        instance = make_instance(expires_at=_NOW - timedelta(hours=1))
        await _create(conformance_provider, instance)
        assert not conformance_provider.transaction_runner.is_transaction_active()
        with pytest.raises(NoActiveTransactionError):
            await store.lock_by_uuid(instance.uuid)
        with pytest.raises(NoActiveTransactionError):
            await store.find_expired(10, _NOW)

    async def test_malformed_uuid_strings_are_rejected_before_any_sql(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        instance = make_instance()
        await _create(conformance_provider, _copy(instance))

        for bad in _MALFORMED_UUIDS:
            with pytest.raises(InvalidArgumentError):
                await store.find_by_uuid(bad)

        # Inside a transaction: had a statement failed in the database, the transaction would be
        # aborted and the statements after the caught errors would fail.
        async with conformance_provider.transaction_runner.transaction():
            for bad in _MALFORMED_UUIDS:
                with pytest.raises(InvalidArgumentError):
                    await store.lock_by_uuid(bad)
                with pytest.raises(InvalidArgumentError):
                    await store.find_by_uuid(bad)
            locked = await store.lock_by_uuid(str(instance.uuid))
            assert locked == instance
            locked.version += 1
            locked.current_state = "after-bad-input"
            await store.update(locked)
        assert (await _find(conformance_provider, instance.uuid)).current_state == (
            "after-bad-input"
        )

    async def test_naive_datetimes_are_rejected_and_nothing_is_written(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        naive = datetime(2025, 1, 1, 12, 0)
        existing = make_instance(current_state="kept")
        await _create(conformance_provider, _copy(existing))

        rejected = [
            make_instance(created_at=naive),
            make_instance(updated_at=naive),
            make_instance(last_transition_at=naive),
            make_instance(expires_at=naive),
            make_instance(timeout_retry=TimeoutRetry(attempts=1, last_error="x", retry_at=naive)),
            make_instance(timeout_retry=TimeoutRetry(attempts=9, last_error="x", parked_at=naive)),
        ]
        async with conformance_provider.transaction_runner.transaction():
            for candidate in rejected:
                with pytest.raises(InvalidArgumentError):
                    await store.create(candidate)

            changed = await store.lock_by_uuid(existing.uuid)
            assert changed is not None
            changed.version += 1
            changed.current_state = "changed"
            changed.expires_at = naive
            with pytest.raises(InvalidArgumentError):
                await store.update(changed)
            with pytest.raises(InvalidArgumentError):
                await store.find_expired(10, naive)
        # The transaction committed, yet none of the refused writes happened.
        for candidate in rejected:
            assert await store.find_by_uuid(candidate.uuid) is None
        assert await store.find_by_uuid(existing.uuid) == existing


# --------------------------------------------------------------------------------------------
# History store
# --------------------------------------------------------------------------------------------


def _record(instance_uuid: UUID, event_name: str = "submit", **overrides: Any) -> HistoryRecord:
    fields: dict[str, Any] = {
        "workflow_instance_uuid": instance_uuid,
        "from_state": "draft",
        "event_name": event_name,
        "to_state": "submitted",
        "outcome": "success",
    }
    fields.update(overrides)
    return HistoryRecord(**fields)


class HistoryStoreConformance:
    """The ``WorkflowHistoryStore`` contract (append, newest-first reads, validation).

    Subclass in a test module as ``class TestX(HistoryStoreConformance)`` and provide a
    ``conformance_provider`` fixture returning a fresh, empty ``WorkflowPersistenceProvider``.
    """

    async def _instance(self, provider: WorkflowPersistenceProvider) -> UUID:
        instance = make_instance()
        await _create(provider, instance)
        return instance.uuid

    async def test_append_returns_the_row_uuid(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        history = conformance_provider.history_store
        owner = await self._instance(conformance_provider)
        first = await history.append(_record(owner, "submit"))
        second = await history.append(_record(owner, "approve"))
        assert isinstance(first, UUID)
        assert isinstance(second, UUID)
        assert first != second

        records = await history.find_by_instance_uuid(owner)
        assert [(r.uuid, r.event_name) for r in records] == [
            (second, "approve"),
            (first, "submit"),
        ]

    async def test_find_returns_newest_first(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        history = conformance_provider.history_store
        owner = await self._instance(conformance_provider)
        other = await self._instance(conformance_provider)
        for name in ("one", "two", "three"):
            async with conformance_provider.transaction_runner.transaction():
                await history.append(_record(owner, name))
        await history.append(_record(other, "elsewhere"))

        records = await history.find_by_instance_uuid(owner)
        assert [r.event_name for r in records] == ["three", "two", "one"]
        assert all(r.workflow_instance_uuid == owner for r in records)
        assert [r.event_name for r in await history.find_by_instance_uuid(str(owner))] == [
            "three",
            "two",
            "one",
        ]
        assert await history.find_by_instance_uuid(uuid4()) == []

    async def test_find_honours_limit_and_offset(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        history = conformance_provider.history_store
        owner = await self._instance(conformance_provider)
        for index in range(5):
            await history.append(_record(owner, f"e{index}"))

        async def names(limit: int, offset: int) -> list[str]:
            found = await history.find_by_instance_uuid(owner, limit=limit, offset=offset)
            return [r.event_name for r in found]

        assert await names(2, 0) == ["e4", "e3"]
        assert await names(2, 1) == ["e3", "e2"]
        assert await names(2, 4) == ["e0"]
        assert await names(10, 5) == []
        assert await names(50, 0) == ["e4", "e3", "e2", "e1", "e0"]

    async def test_guard_rejected_round_trip(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        history = conformance_provider.history_store
        owner = await self._instance(conformance_provider)
        record = _record(
            owner,
            "approve",
            from_state="submitted",
            to_state="submitted",
            outcome="guard-rejected",
            rejected_by="is_manager",
        )
        row_uuid = await history.append(record)

        (stored,) = await history.find_by_instance_uuid(owner)
        assert stored.outcome == "guard-rejected"
        assert stored.rejected_by == "is_manager"
        assert stored.from_state == "submitted"
        assert stored.to_state == "submitted"
        assert stored.event_name == "approve"
        assert stored.uuid == row_uuid

    async def test_error_message_round_trips_and_none_stays_none(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        history = conformance_provider.history_store
        owner = await self._instance(conformance_provider)
        await history.append(_record(owner, "plain"))
        await history.append(
            _record(owner, "broken", outcome="failure", error_message="payment declined")
        )

        broken, plain = await history.find_by_instance_uuid(owner)
        assert broken.error_message == "payment declined"
        assert broken.outcome == "failure"
        assert plain.error_message is None
        assert plain.rejected_by is None

    async def test_command_results_round_trip(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        history = conformance_provider.history_store
        owner = await self._instance(conformance_provider)
        results = [
            CommandResult(ok=True),
            CommandResult(
                ok=False,
                code="CARD_DECLINED",
                message="card declined",
                metadata={"attempt": 2, "gateway": {"name": "acme", "latency": 0.25}},
                error={"name": "PaymentError", "message": "declined"},
            ),
            CommandResult(ok=True, code="NOTIFIED", metadata={}),
        ]
        await history.append(_record(owner, command_results=results))
        await history.append(_record(owner, "no-commands"))

        none, stored = await history.find_by_instance_uuid(owner)
        assert all(isinstance(r, CommandResult) for r in stored.command_results)
        assert stored.command_results == results
        assert none.command_results == []

    async def test_trigger_metadata_defaults_to_empty_and_round_trips(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        history = conformance_provider.history_store
        owner = await self._instance(conformance_provider)
        await history.append(_record(owner, "bare"))
        metadata = {"actorUuid": str(uuid4()), "source": {"ip": "10.0.0.1", "tags": ["api"]}}
        await history.append(_record(owner, "described", trigger_metadata=metadata))

        described, bare = await history.find_by_instance_uuid(owner)
        assert bare.trigger_metadata == {}
        assert described.trigger_metadata == metadata

    async def test_definition_version_round_trips(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        history = conformance_provider.history_store
        owner = await self._instance(conformance_provider)
        await history.append(_record(owner, "legacy"))
        await history.append(_record(owner, "stamped", definition_version=3))

        stamped, legacy = await history.find_by_instance_uuid(owner)
        assert stamped.definition_version == 3
        assert legacy.definition_version is None

    async def test_created_at_is_timezone_aware(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        history = conformance_provider.history_store
        owner = await self._instance(conformance_provider)
        await history.append(_record(owner))
        (stored,) = await history.find_by_instance_uuid(owner)
        _assert_aware(stored.created_at, "created_at")
        assert isinstance(stored.uuid, UUID)
        assert isinstance(stored.workflow_instance_uuid, UUID)

    async def test_rows_of_one_transaction_read_back_in_reverse_write_order(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        history = conformance_provider.history_store
        owner = await self._instance(conformance_provider)
        names = [f"hop-{index}" for index in range(6)]
        written: list[UUID] = []
        async with conformance_provider.transaction_runner.transaction():
            for name in names:
                written.append(await history.append(_record(owner, name)))

        records = await history.find_by_instance_uuid(owner)
        assert [r.event_name for r in records] == list(reversed(names))
        assert [r.uuid for r in records] == list(reversed(written))
        assert [r.event_name for r in await history.find_by_instance_uuid(owner, 3, 2)] == [
            "hop-3",
            "hop-2",
            "hop-1",
        ]

    async def test_append_for_an_unknown_instance_raises(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        history = conformance_provider.history_store
        ghost = uuid4()
        with pytest.raises(WorkflowInstanceNotFoundError) as raised:
            await history.append(_record(ghost))
        assert str(ghost) in str(raised.value)
        assert await history.find_by_instance_uuid(ghost) == []

    async def test_bad_inputs_are_rejected_with_the_key_path_and_nothing_is_written(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        history = conformance_provider.history_store
        owner = await self._instance(conformance_provider)
        cases: list[tuple[HistoryRecord, tuple[str, ...]]] = [
            (_record(owner, outcome=cast(HistoryOutcome, "bogus")), ("outcome", "bogus")),
            (
                _record(owner, trigger_metadata={"payload": {"ratio": math.nan}}),
                ("trigger_metadata", "payload", "ratio"),
            ),
            (
                _record(
                    owner,
                    command_results=[
                        CommandResult(ok=True),
                        CommandResult(ok=False, metadata={"labels": {"a", "b"}}),
                    ],
                ),
                ("metadata", "labels"),
            ),
        ]
        # Refused inside a transaction that then commits: nothing of the refused rows may exist.
        async with conformance_provider.transaction_runner.transaction():
            for record, words in cases:
                with pytest.raises(InvalidArgumentError) as raised:
                    await history.append(record)
                message = str(raised.value)
                for word in words:
                    assert word in message, f"{word!r} missing from the error: {message}"
            accepted = await history.append(_record(owner, "valid"))
        records = await history.find_by_instance_uuid(owner)
        assert [(r.uuid, r.event_name) for r in records] == [(accepted, "valid")]

    async def test_malformed_uuid_strings_are_rejected(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        history = conformance_provider.history_store
        owner = await self._instance(conformance_provider)
        async with conformance_provider.transaction_runner.transaction():
            for bad in _MALFORMED_UUIDS:
                with pytest.raises(InvalidArgumentError):
                    await history.find_by_instance_uuid(bad)
                with pytest.raises(InvalidArgumentError):
                    await history.append(_record(cast(UUID, bad)))
            await history.append(_record(owner, "still-usable"))
        assert [r.event_name for r in await history.find_by_instance_uuid(owner)] == [
            "still-usable"
        ]


# --------------------------------------------------------------------------------------------
# Definition store
# --------------------------------------------------------------------------------------------


def _hash(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _definition_json(name: str, version: int, marker: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "initialState": "draft",
        "states": {
            "draft": {"events": {"submit": {"targetState": "done", "metadata": {"m": marker}}}},
            "done": {},
        },
    }


class DefinitionStoreConformance:
    """The ``WorkflowDefinitionStore`` contract (first content wins, lookups, version lists).

    Subclass in a test module as ``class TestX(DefinitionStoreConformance)`` and provide a
    ``conformance_provider`` fixture returning a fresh, empty ``WorkflowPersistenceProvider``.
    """

    async def _ensure(
        self, provider: WorkflowPersistenceProvider, name: str, version: int, marker: str = ""
    ) -> StoredWorkflowDefinition:
        return await provider.definition_store.ensure(
            workflow_name=name,
            version=version,
            content_hash=_hash(f"{name}/{version}/{marker}"),
            definition_json=_definition_json(name, version, marker),
        )

    async def test_ensure_inserts_and_returns_the_row(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        before = datetime.now(UTC) - timedelta(hours=1)
        stored = await self._ensure(conformance_provider, "orders", 1)
        assert stored.workflow_name == "orders"
        assert stored.version == 1
        assert stored.content_hash == _hash("orders/1/")
        assert stored.definition_json == _definition_json("orders", 1)
        _assert_aware(stored.registered_at, "registered_at")
        assert stored.registered_at > before
        found = await conformance_provider.definition_store.find_by_name_and_version("orders", 1)
        assert found == stored

    async def test_ensure_keeps_the_existing_row(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        first = await self._ensure(conformance_provider, "orders", 1, "first")
        second = await self._ensure(conformance_provider, "orders", 1, "second")
        assert second == first
        assert second.content_hash == _hash("orders/1/first")
        assert second.definition_json == _definition_json("orders", 1, "first")
        found = await conformance_provider.definition_store.find_by_name_and_version("orders", 1)
        assert found == first
        assert len(await conformance_provider.definition_store.list_versions("orders")) == 1

    async def test_ensure_joins_the_current_transaction(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.definition_store

        async def rolled_back() -> None:
            async with conformance_provider.transaction_runner.transaction():
                await self._ensure(conformance_provider, "orders", 1, "rolled-back")
                raise _Rollback

        with pytest.raises(_Rollback):
            await rolled_back()
        assert await store.find_by_name_and_version("orders", 1) is None
        kept = await self._ensure(conformance_provider, "orders", 1, "kept")
        assert kept.content_hash == _hash("orders/1/kept")

    async def test_find_by_name_and_version_returns_equal_content(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        stored = await self._ensure(conformance_provider, "orders", 2, "content")
        found = await conformance_provider.definition_store.find_by_name_and_version("orders", 2)
        assert found is not None
        assert found == stored
        assert found.definition_json == _definition_json("orders", 2, "content")
        assert found.registered_at == stored.registered_at

    async def test_find_unknown_returns_none(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.definition_store
        await self._ensure(conformance_provider, "orders", 1)
        assert await store.find_by_name_and_version("orders", 2) is None
        assert await store.find_by_name_and_version("invoices", 1) is None

    async def test_versions_are_independent_rows(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.definition_store
        one = await self._ensure(conformance_provider, "orders", 1, "v1")
        two = await self._ensure(conformance_provider, "orders", 2, "v2")
        assert one.content_hash != two.content_hash
        assert await store.find_by_name_and_version("orders", 1) == one
        assert await store.find_by_name_and_version("orders", 2) == two
        assert (await store.find_by_name_and_version("orders", 2)) != one

    async def test_list_versions(self, conformance_provider: WorkflowPersistenceProvider) -> None:
        store = conformance_provider.definition_store
        for version in (3, 1, 2):
            await self._ensure(conformance_provider, "orders", version)
        await self._ensure(conformance_provider, "invoices", 1)
        await self._ensure(conformance_provider, "invoices", 7)

        orders = await store.list_versions("orders")
        assert [d.version for d in orders] == [1, 2, 3]
        assert all(d.workflow_name == "orders" for d in orders)
        assert orders[0] == await store.find_by_name_and_version("orders", 1)
        assert [d.version for d in await store.list_versions("invoices")] == [1, 7]
        assert await store.list_versions("unknown") == []


# --------------------------------------------------------------------------------------------
# Transaction runner
# --------------------------------------------------------------------------------------------


class _Rollback(Exception):
    """Raised by a test body to roll its transaction back."""


class TransactionRunnerConformance:
    """The ``WorkflowTransactionRunner`` contract (savepoint nesting, after-commit callbacks).

    Subclass in a test module as ``class TestX(TransactionRunnerConformance)`` and provide a
    ``conformance_provider`` fixture returning a fresh, empty ``WorkflowPersistenceProvider``.
    Override `cause_database_error()` when the provider has a database.
    """

    #: Logger that must record a warning when an after-commit callback raises (None: no check).
    callback_failure_logger: str | None = "duraflows_pg_async"

    async def cause_database_error(self, provider: WorkflowPersistenceProvider) -> object:
        """Make the database reject a statement in the current transaction; let the error out.

        Called inside a nested ``transaction()``. The default returns ``NotImplemented`` (the
        provider has no database), which skips the test that needs it.
        """
        return NotImplemented

    async def test_after_commit_callbacks_run_after_the_outermost_commit_in_order(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        store = conformance_provider.instance_store
        instance = make_instance()
        events: list[tuple[str, bool, bool]] = []

        def recorder(label: str) -> Callable[[], Awaitable[None]]:
            async def callback() -> None:
                # Runs outside the finished transaction, and its write is visible to all.
                visible = await store.find_by_uuid(instance.uuid) is not None
                events.append((label, runner.is_transaction_active(), visible))

            return callback

        async with runner.transaction():
            await store.create(instance)
            runner.after_commit(recorder("first"))
            async with runner.transaction():
                runner.after_commit(recorder("nested"))
            assert events == [], "a callback ran before the outermost commit"
            runner.after_commit(recorder("last"))
            assert events == [], "a callback ran before the outermost commit"

        assert events == [
            ("first", False, True),
            ("nested", False, True),
            ("last", False, True),
        ]

    async def test_after_commit_callbacks_are_discarded_on_rollback(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        store = conformance_provider.instance_store
        instance = make_instance()
        events: list[str] = []

        async def rolled_back() -> None:
            async with runner.transaction():
                await store.create(instance)
                runner.after_commit(lambda: events.append("outer"))
                async with runner.transaction():
                    runner.after_commit(lambda: events.append("nested"))
                raise _Rollback

        with pytest.raises(_Rollback):
            await rolled_back()
        assert events == []
        assert await store.find_by_uuid(instance.uuid) is None
        assert not runner.is_transaction_active()

        # The next transaction starts clean: no leftover callbacks run with it.
        async with runner.transaction():
            runner.after_commit(lambda: events.append("next"))
        assert events == ["next"]

    async def test_failed_nested_transaction_rolls_back_only_its_own_work(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        store = conformance_provider.instance_store
        before = make_instance(current_state="before")
        inside = make_instance(current_state="inside")
        after = make_instance(current_state="after")
        events: list[str] = []

        async def failing_nested() -> None:
            async with runner.transaction():
                await store.create(inside)
                runner.after_commit(lambda: events.append("failed-nested"))
                raise _Rollback

        async with runner.transaction():
            await store.create(before)
            runner.after_commit(lambda: events.append("outer"))
            with pytest.raises(_Rollback):
                await failing_nested()
            assert runner.is_transaction_active()
            assert await store.find_by_uuid(inside.uuid) is None
            assert await store.find_by_uuid(before.uuid) is not None
            await store.create(after)
            runner.after_commit(lambda: events.append("outer-after"))

        assert events == ["outer", "outer-after"]
        assert await store.find_by_uuid(before.uuid) is not None
        assert await store.find_by_uuid(after.uuid) is not None
        assert await store.find_by_uuid(inside.uuid) is None

    async def test_outer_transaction_usable_after_a_caught_nested_database_error(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        store = conformance_provider.instance_store
        before = make_instance(current_state="before")
        inside = make_instance(current_state="inside")
        after = make_instance(current_state="after")
        events: list[str] = []
        caught: Exception | None = None

        async with runner.transaction():
            await store.create(before)
            try:
                async with runner.transaction():
                    await store.create(inside)
                    runner.after_commit(lambda: events.append("failed-nested"))
                    if await self.cause_database_error(conformance_provider) is NotImplemented:
                        pytest.skip(
                            "cause_database_error() is not implemented for this provider (it has "
                            "no database that can reject a statement)"
                        )
                    pytest.fail("cause_database_error() returned instead of raising an error")
            except Exception as exc:
                caught = exc
            # The failed statement was rolled back with its savepoint; the outer transaction
            # still takes statements and commits.
            assert await store.find_by_uuid(before.uuid) is not None
            assert await store.find_by_uuid(inside.uuid) is None
            await store.create(after)
            runner.after_commit(lambda: events.append("outer"))

        assert caught is not None
        assert not isinstance(caught, AssertionError), caught
        assert events == ["outer"]
        assert await store.find_by_uuid(before.uuid) is not None
        assert await store.find_by_uuid(after.uuid) is not None
        assert await store.find_by_uuid(inside.uuid) is None

    async def test_a_failing_callback_does_not_stop_the_others(
        self, conformance_provider: WorkflowPersistenceProvider, caplog: pytest.LogCaptureFixture
    ) -> None:
        runner = conformance_provider.transaction_runner
        store = conformance_provider.instance_store
        logger_name = self.callback_failure_logger
        if logger_name is not None:
            caplog.set_level(logging.WARNING, logger=logger_name)
        instance = make_instance()
        events: list[str] = []

        def explode() -> None:
            events.append("explode")
            raise RuntimeError("first-7f3a callback failed")

        async def explode_async() -> None:
            events.append("explode-async")
            raise ValueError("second-7f3a callback failed")

        async def after_async() -> None:
            events.append("after-async")

        async def body() -> str:
            await store.create(instance)
            runner.after_commit(lambda: events.append("before"))
            runner.after_commit(explode)
            runner.after_commit(explode_async)
            runner.after_commit(after_async)
            return "committed"

        assert await runner.run_in_transaction(body) == "committed"
        assert events == ["before", "explode", "explode-async", "after-async"]
        assert await store.find_by_uuid(instance.uuid) is not None

        if logger_name is not None:
            warnings = [
                record
                for record in caplog.records
                if (record.name == logger_name or record.name.startswith(logger_name + "."))
                and record.levelno >= logging.WARNING
            ]
            logged = " | ".join(
                f"{record.getMessage()} {record.exc_info[1] if record.exc_info else ''}"
                for record in warnings
            )
            assert "first-7f3a callback failed" in logged, (
                f"no warning logged for the sync callback: {logged}"
            )
            assert "second-7f3a callback failed" in logged, (
                f"no warning logged for the async callback: {logged}"
            )

    async def test_after_commit_outside_a_transaction_raises(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        events: list[str] = []
        with pytest.raises(NoActiveTransactionError):
            runner.after_commit(lambda: events.append("never"))
        # Nor is it queued for a later transaction.
        async with runner.transaction():
            pass
        assert events == []

    async def test_a_transaction_started_from_a_callback_is_a_fresh_outermost_one(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        store = conformance_provider.instance_store
        first = make_instance(current_state="first")
        from_callback = make_instance(current_state="from-callback")
        events: list[str] = []

        async def callback() -> None:
            events.append(f"outer-start active={runner.is_transaction_active()}")
            async with runner.transaction():
                events.append(f"inner active={runner.is_transaction_active()}")
                await store.create(from_callback)
                runner.after_commit(lambda: events.append("inner-callback"))
            # The inner transaction was outermost: it committed and ran its callback already.
            events.append("outer-end")

        async with runner.transaction():
            await store.create(first)
            runner.after_commit(callback)

        assert events == [
            "outer-start active=False",
            "inner active=True",
            "inner-callback",
            "outer-end",
        ]
        assert await store.find_by_uuid(from_callback.uuid) is not None
        assert not runner.is_transaction_active()

    async def test_sync_async_and_coroutine_returning_callbacks(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        events: list[str] = []

        def sync_callback() -> None:
            events.append("sync")

        async def async_callback() -> None:
            events.append("async")

        async def record(label: str) -> None:
            events.append(label)

        async with runner.transaction():
            runner.after_commit(sync_callback)
            runner.after_commit(async_callback)
            runner.after_commit(lambda: record("lambda-coroutine"))
            runner.after_commit(lambda: events.append("lambda-sync"))
        assert events == ["sync", "async", "lambda-coroutine", "lambda-sync"]

    async def test_is_transaction_active(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        assert runner.is_transaction_active() is False
        async with runner.transaction():
            assert runner.is_transaction_active() is True
            async with runner.transaction():
                assert runner.is_transaction_active() is True
            assert runner.is_transaction_active() is True
        assert runner.is_transaction_active() is False

        async def inside() -> bool:
            return runner.is_transaction_active()

        assert await runner.run_in_transaction(inside) is True
        assert runner.is_transaction_active() is False
        with pytest.raises(_Rollback):
            async with runner.transaction():
                raise _Rollback
        assert runner.is_transaction_active() is False

    async def test_run_in_transaction_returns_the_value_and_commits(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        store = conformance_provider.instance_store
        instance = make_instance()
        result = object()

        async def body() -> object:
            await store.create(instance)
            return result

        assert await runner.run_in_transaction(body) is result
        assert await store.find_by_uuid(instance.uuid) is not None

        async def nested() -> object:
            return await runner.run_in_transaction(body_value)

        async def body_value() -> object:
            return result

        assert await runner.run_in_transaction(nested) is result

    async def test_a_raising_body_propagates_the_same_exception(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        store = conformance_provider.instance_store
        instance = make_instance()
        error = _Rollback("the caller's own error")

        async def body() -> None:
            await store.create(instance)
            raise error

        with pytest.raises(_Rollback) as raised:
            await runner.run_in_transaction(body)
        assert raised.value is error
        assert await store.find_by_uuid(instance.uuid) is None

        async def raising_in_nested() -> None:
            async with runner.transaction():
                await store.create(instance)
                async with runner.transaction():
                    raise error

        with pytest.raises(_Rollback) as raised:
            await raising_in_nested()
        assert raised.value is error
        assert await store.find_by_uuid(instance.uuid) is None

        lookup_error = KeyError("caller")
        with pytest.raises(KeyError) as raised_key:
            async with runner.transaction():
                raise lookup_error
        assert raised_key.value is lookup_error
