"""The due-timeout and parked-timeout part of the instance store's conformance suite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.model import TimeoutRetry, WorkflowInstance
from duraflows_pg_async.errors import (
    InvalidArgumentError,
)

from ._helpers import (
    NOW,
    assert_same_fields,
    copy_instance,
    create_committed,
    find_stored,
    update_locked,
    uuids_of,
)
from .data import make_instance

__all__ = ["InstanceTimeoutChecks"]


class InstanceTimeoutChecks:
    """``find_expired`` (due, claimed, filtered, limited), ``postpone_timeout``, the timeout retry
    columns and ``find_parked_timeouts``; part of ``InstanceStoreConformance``."""

    async def test_find_expired_includes_past_deadlines_only(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        past = make_instance(expires_at=NOW - timedelta(hours=1))
        long_past = make_instance(expires_at=NOW - timedelta(days=30))
        future = make_instance(expires_at=NOW + timedelta(hours=1))
        exactly_now = make_instance(expires_at=NOW)
        no_deadline = make_instance(expires_at=None)
        await create_committed(
            conformance_provider, past, long_past, future, exactly_now, no_deadline
        )

        async with conformance_provider.transaction_runner.transaction():
            due = await store.find_expired(100, NOW)
        assert uuids_of(due) == [long_past.uuid, past.uuid]
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
        assert (await find_stored(conformance_provider, first[0].uuid)).claimed_until == claim_until
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
            make_instance(workflow_name="alpha", expires_at=NOW - timedelta(minutes=m))
            for m in (5, 1)
        ]
        beta = make_instance(workflow_name="beta", expires_at=NOW - timedelta(minutes=3))
        gamma = make_instance(workflow_name="gamma", expires_at=NOW - timedelta(minutes=9))
        await create_committed(conformance_provider, *alpha, beta, gamma)
        claim_until = NOW + timedelta(seconds=20)
        async with runner.transaction():
            assert await store.find_expired(10, NOW, workflow_names=[]) == []
            found = await store.find_expired(10, NOW, workflow_names=["alpha", "beta"])
        # Oldest due first across the named workflows; gamma is never looked at.
        assert uuids_of(found) == [alpha[0].uuid, beta.uuid, alpha[1].uuid]
        async with runner.transaction():
            claimed = await store.find_expired(
                2, NOW, claim_until=claim_until, workflow_names=("beta", "alpha")
            )
        assert uuids_of(claimed) == [alpha[0].uuid, beta.uuid]
        assert (await find_stored(conformance_provider, gamma.uuid)).claimed_until is None
        with pytest.raises(InvalidArgumentError, match="workflow_names"):
            async with runner.transaction():
                await store.find_expired(10, NOW, workflow_names="alpha")

    async def test_postpone_timeout_defers_without_recording(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        runner = conformance_provider.transaction_runner
        fresh = make_instance(expires_at=NOW - timedelta(minutes=1))
        retrying = make_instance(
            expires_at=NOW - timedelta(minutes=1),
            timeout_retry=TimeoutRetry(attempts=2, last_error="boom", retry_at=NOW),
        )
        await create_committed(conformance_provider, fresh, retrying)
        until = NOW + timedelta(minutes=10)
        assert await store.postpone_timeout(fresh.uuid, until) is True
        assert await store.postpone_timeout(retrying.uuid, until) is True
        # Already due later: nothing to do.
        assert await store.postpone_timeout(fresh.uuid, NOW) is False
        assert await store.postpone_timeout(uuid4(), until) is False
        stored_fresh = await find_stored(conformance_provider, fresh.uuid)
        stored_retrying = await find_stored(conformance_provider, retrying.uuid)
        assert (stored_fresh.version, stored_fresh.timeout_retry) == (0, None)
        assert stored_fresh.claimed_until == until
        assert stored_retrying.timeout_retry == TimeoutRetry(
            attempts=2, last_error="boom", retry_at=until
        )
        async with runner.transaction():
            assert await store.find_expired(10, NOW + timedelta(minutes=5)) == []
            due = await store.find_expired(10, until + timedelta(seconds=1))
        assert sorted(uuids_of(due)) == sorted([fresh.uuid, retrying.uuid])

    async def test_find_expired_respects_limit(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        deadlines = [NOW - timedelta(minutes=m) for m in (10, 30, 20)]
        instances = [make_instance(expires_at=d) for d in deadlines]
        await create_committed(conformance_provider, *instances)

        async with conformance_provider.transaction_runner.transaction():
            two = await store.find_expired(2, NOW)
            one = await store.find_expired(1, NOW)
        # Oldest deadlines first: 30, then 20 minutes ago.
        assert uuids_of(two) == [instances[1].uuid, instances[2].uuid]
        assert uuids_of(one) == [instances[1].uuid]

    async def test_timeout_retry_round_trips(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        retrying = TimeoutRetry(attempts=2, last_error="timeout handler failed: boom", retry_at=NOW)
        instance = make_instance(expires_at=NOW - timedelta(hours=1), timeout_retry=retrying)
        await create_committed(conformance_provider, copy_instance(instance))

        stored = await find_stored(conformance_provider, instance.uuid)
        assert stored.timeout_retry == retrying
        assert_same_fields(stored, instance)

        stored.version += 1
        stored.timeout_retry = None
        await update_locked(conformance_provider, stored)
        cleared = await find_stored(conformance_provider, instance.uuid)
        assert cleared.timeout_retry is None

        parked = TimeoutRetry(
            attempts=10, last_error="gave up", retry_at=None, parked_at=NOW + timedelta(hours=1)
        )
        cleared.version += 1
        cleared.timeout_retry = parked
        await update_locked(conformance_provider, cleared)
        again = await find_stored(conformance_provider, instance.uuid)
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
                attempts=3, last_error="boom", retry_at=NOW + timedelta(days=1)
            ),
        )
        await create_committed(
            conformance_provider, retry_june, parked, future_retry, deadline_march
        )

        async with conformance_provider.transaction_runner.transaction():
            due = await store.find_expired(100, NOW)
        assert uuids_of(due) == [deadline_march.uuid, retry_june.uuid]
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
            timeout_retry=TimeoutRetry(attempts=1, last_error="boom", retry_at=NOW),
        )
        plain = make_instance(workflow_name="orders", expires_at=NOW)
        await create_committed(
            conformance_provider, orders_newest, invoices_oldest, retrying, orders_middle, plain
        )

        every = await store.find_parked_timeouts()
        assert uuids_of(every) == [invoices_oldest.uuid, orders_middle.uuid, orders_newest.uuid]
        assert every[0] == invoices_oldest
        orders = await store.find_parked_timeouts(workflow_name="orders")
        assert uuids_of(orders) == [orders_middle.uuid, orders_newest.uuid]
        first_two = await store.find_parked_timeouts(limit=2)
        assert uuids_of(first_two) == [invoices_oldest.uuid, orders_middle.uuid]
        assert uuids_of(await store.find_parked_timeouts(limit=1, workflow_name="orders")) == [
            orders_middle.uuid
        ]
        assert await store.find_parked_timeouts(workflow_name="unknown") == []
