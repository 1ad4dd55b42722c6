"""The conformance suite of the instance store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.model import TimeoutRetry
from duraflows_pg_async.errors import (
    InstanceAlreadyExistsError,
    InvalidArgumentError,
    NoActiveTransactionError,
    OptimisticLockError,
)

from ._helpers import (
    MALFORMED_UUIDS,
    NOW,
    assert_aware,
    assert_same_fields,
    copy_instance,
    create_committed,
    find_stored,
    update_locked,
)
from .data import make_instance
from .instance_listing import InstanceListingChecks
from .instance_queries import InstanceQueryChecks
from .instance_timeouts import InstanceTimeoutChecks
from .instance_transitions import InstanceTransitionChecks

__all__ = ["InstanceStoreConformance"]


class InstanceStoreConformance(
    InstanceTimeoutChecks, InstanceListingChecks, InstanceQueryChecks, InstanceTransitionChecks
):
    """The ``WorkflowInstanceStore`` contract (create, find, lock, update, persist_transition,
    due timeouts, parked timeouts, counting, listing by version, listing and counting by filter
    and status).

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
        await create_committed(conformance_provider, copy_instance(instance))

        found = await store.find_by_uuid(instance.uuid)
        assert found is not None
        # The defaults' times all differ: a column read into another's field shows here.
        assert_same_fields(found, instance)
        assert isinstance(found.uuid, UUID)
        assert_aware(found.created_at, "created_at")
        assert_aware(found.updated_at, "updated_at")
        assert_aware(found.last_transition_at, "last_transition_at")
        assert_aware(found.expires_at, "expires_at")

        # A UUID string is accepted as well as a UUID.
        assert await store.find_by_uuid(str(instance.uuid)) == instance
        assert await store.find_by_uuid(str(instance.uuid).upper()) == instance

    async def test_find_by_uuid_unknown_returns_none(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        await create_committed(conformance_provider, make_instance())
        assert await store.find_by_uuid(uuid4()) is None
        assert await store.find_by_uuid(str(uuid4())) is None

    async def test_create_with_a_uuid_in_use_raises(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        original = make_instance(current_state="original")
        await create_committed(conformance_provider, copy_instance(original))

        duplicate = make_instance(uuid=original.uuid, current_state="duplicate")
        with pytest.raises(InstanceAlreadyExistsError) as raised:
            await create_committed(conformance_provider, duplicate)
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
        await create_committed(conformance_provider, copy_instance(instance))
        async with conformance_provider.transaction_runner.transaction():
            assert await store.lock_by_uuid(instance.uuid) == instance
            assert await store.lock_by_uuid(str(instance.uuid)) == instance
            assert await store.lock_by_uuid(uuid4()) is None

    async def test_update_persists_changes_after_lock(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        instance = make_instance(current_state="pending", context={"step": 1})
        await create_committed(conformance_provider, copy_instance(instance))

        # Times that all differ, so that a column written from another's value shows.
        moved_at = datetime.now(UTC) + timedelta(minutes=5)
        later = moved_at + timedelta(minutes=1)
        deadline = later + timedelta(days=2)
        async with conformance_provider.transaction_runner.transaction():
            locked = await store.lock_by_uuid(instance.uuid)
            assert locked is not None
            locked.current_state = "approved"
            locked.version += 1
            locked.context = {"step": 2, "approved_by": "ann"}
            locked.expires_at = deadline
            locked.last_transition_at = moved_at
            locked.updated_at = later
            await store.update(locked)
            expected = copy_instance(locked)

        found = await find_stored(conformance_provider, instance.uuid)
        assert_same_fields(found, expected)
        assert found.current_state == "approved"
        assert found.version == 1
        assert found.context == {"step": 2, "approved_by": "ann"}
        assert found.expires_at == deadline
        assert found.updated_at == later

        # And back to no deadline.
        found.version += 1
        found.expires_at = None
        await update_locked(conformance_provider, found)
        again = await find_stored(conformance_provider, instance.uuid)
        assert again.version == 2
        assert again.expires_at is None

    async def test_update_with_a_stale_version_raises(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        instance = make_instance(current_state="pending")
        await create_committed(conformance_provider, copy_instance(instance))

        # Two readers of version 0; the caller increments the version before update().
        first = await find_stored(conformance_provider, instance.uuid)
        second = await find_stored(conformance_provider, instance.uuid)
        first.version += 1
        first.current_state = "by-first"
        await update_locked(conformance_provider, first)

        second.version += 1
        second.current_state = "by-second"
        with pytest.raises(OptimisticLockError) as raised:
            await update_locked(conformance_provider, second)
        assert str(instance.uuid) in str(raised.value)

        stored = await find_stored(conformance_provider, instance.uuid)
        assert stored.current_state == "by-first"
        assert stored.version == 1

        # A version that skips ahead is just as stale.
        stored.version += 2
        stored.current_state = "skipped"
        with pytest.raises(OptimisticLockError):
            await update_locked(conformance_provider, stored)
        assert (await find_stored(conformance_provider, instance.uuid)).current_state == "by-first"

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
        await create_committed(conformance_provider, copy_instance(instance))

        changed = await find_stored(conformance_provider, instance.uuid)
        changed.version += 1
        changed.current_state = "next"
        changed.metadata = {"tenant": "evil", "extra": True}
        await update_locked(conformance_provider, changed)

        stored = await find_stored(conformance_provider, instance.uuid)
        assert stored.current_state == "next"
        assert stored.version == 1
        assert stored.metadata == {"tenant": "acme"}

    async def test_update_never_writes_workflow_name_or_created_at(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        instance = make_instance(workflow_name="orders")
        await create_committed(conformance_provider, copy_instance(instance))

        changed = await find_stored(conformance_provider, instance.uuid)
        changed.version += 1
        changed.workflow_name = "renamed"
        changed.created_at = instance.created_at + timedelta(days=3)
        await update_locked(conformance_provider, changed)

        stored = await find_stored(conformance_provider, instance.uuid)
        assert stored.version == 1
        assert stored.workflow_name == "orders"
        assert stored.created_at == instance.created_at

    async def test_definition_version_round_trips(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        stamped = make_instance(definition_version=4)
        legacy = make_instance(definition_version=None)
        await create_committed(conformance_provider, copy_instance(stamped), copy_instance(legacy))
        assert (await find_stored(conformance_provider, stamped.uuid)).definition_version == 4
        assert (await find_stored(conformance_provider, legacy.uuid)).definition_version is None

        stamped.version += 1
        stamped.definition_version = 5
        await update_locked(conformance_provider, stamped)
        legacy.version += 1
        legacy.current_state = "moved"
        await update_locked(conformance_provider, legacy)

        assert (await find_stored(conformance_provider, stamped.uuid)).definition_version == 5
        still_legacy = await find_stored(conformance_provider, legacy.uuid)
        assert still_legacy.current_state == "moved"
        assert still_legacy.definition_version is None

    async def test_count_instances(self, conformance_provider: WorkflowPersistenceProvider) -> None:
        store = conformance_provider.instance_store
        await create_committed(
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
        instance = make_instance(expires_at=NOW - timedelta(hours=1))
        await create_committed(conformance_provider, instance)
        assert not conformance_provider.transaction_runner.is_transaction_active()
        with pytest.raises(NoActiveTransactionError):
            await store.lock_by_uuid(instance.uuid)
        with pytest.raises(NoActiveTransactionError):
            await store.find_expired(10, NOW)

    async def test_malformed_uuid_strings_are_rejected_before_any_sql(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        instance = make_instance()
        await create_committed(conformance_provider, copy_instance(instance))

        for bad in MALFORMED_UUIDS:
            with pytest.raises(InvalidArgumentError):
                await store.find_by_uuid(bad)

        # Inside a transaction: had a statement failed in the database, the transaction would be
        # aborted and the statements after the caught errors would fail.
        async with conformance_provider.transaction_runner.transaction():
            for bad in MALFORMED_UUIDS:
                with pytest.raises(InvalidArgumentError):
                    await store.lock_by_uuid(bad)
                with pytest.raises(InvalidArgumentError):
                    await store.find_by_uuid(bad)
            locked = await store.lock_by_uuid(str(instance.uuid))
            assert locked == instance
            locked.version += 1
            locked.current_state = "after-bad-input"
            await store.update(locked)
        assert (await find_stored(conformance_provider, instance.uuid)).current_state == (
            "after-bad-input"
        )

    async def test_naive_datetimes_are_rejected_and_nothing_is_written(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        naive = datetime(2025, 1, 1, 12, 0)
        existing = make_instance(current_state="kept")
        await create_committed(conformance_provider, copy_instance(existing))

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
