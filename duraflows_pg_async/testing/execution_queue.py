"""The queue part of the execution store's conformance suite: one execution per (instance,
key) and one active per instance (``find_active``), due work in due order with the leased left
out before the limit (``find_due``), the active executions counted per status (``stats``)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.executions import WorkflowExecution
from duraflows_pg_async.errors import DatabaseError, InvalidArgumentError

from ._helpers import NOW
from .execution_data import (
    _PLUS_TWO,
    _create,
    _instances,
    _next,
    _store,
    _stored,
    _update,
    _uuids,
    assert_same_execution,
    make_execution,
)

__all__ = ["ExecutionQueueChecks"]


class ExecutionQueueChecks:
    """The uniqueness of keys and active executions, ``find_active``, ``find_due``, ``stats``."""

    async def test_a_key_names_one_execution_of_an_instance(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        first, second = await _instances(conformance_provider, 2)
        store = _store(conformance_provider)
        done = make_execution(first, status="completed")
        await _create(conformance_provider, done)
        for status in ("pending", "completed"):
            with pytest.raises(DatabaseError):
                await _create(conformance_provider, make_execution(first, status=status))
        # Another instance, or another key (compared exactly), is free.
        await _create(
            conformance_provider,
            make_execution(second),
            make_execution(first, idempotency_key="Pay-1"),
        )
        assert_same_execution(await store.find_by_key(first.uuid, "pay-1"), done)
        with pytest.raises(DatabaseError):  # the same uuid twice
            await _create(
                conformance_provider,
                make_execution(second, uuid=done.uuid, idempotency_key="x", status="completed"),
            )

    async def test_one_active_execution_per_instance(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        (instance,) = await _instances(conformance_provider, 1)
        store = _store(conformance_provider)
        first = make_execution(instance, idempotency_key="k0")
        await _create(conformance_provider, first)
        for n, status in enumerate(("pending", "running", "parked")):
            with pytest.raises(DatabaseError):
                await _create(
                    conformance_provider,
                    make_execution(instance, idempotency_key=f"a{n}", status=status),
                )
        # Finished executions do not occupy the instance.
        await _create(
            conformance_provider,
            make_execution(instance, idempotency_key="c", status="completed"),
            make_execution(instance, idempotency_key="x", status="cancelled"),
        )
        assert_same_execution(await store.find_active(instance.uuid), first)

        # Once the active one is completed (then cancelled), a new one is accepted.
        await _update(conformance_provider, _next(first, status="completed"))
        second = make_execution(instance, idempotency_key="k1", status="parked")
        await _create(conformance_provider, second)
        assert_same_execution(await store.find_active(instance.uuid), second)
        await _update(conformance_provider, _next(second, status="cancelled"))
        third = make_execution(instance, idempotency_key="k2")
        await _create(conformance_provider, third)
        assert_same_execution(await store.find_active(instance.uuid), third)

        # Nor can an update make a second one active.
        with pytest.raises(DatabaseError):
            await _update(
                conformance_provider, _next(_next(second, status="cancelled"), status="pending")
            )
        assert (await _stored(conformance_provider, second.uuid)).status == "cancelled"

    @pytest.mark.parametrize("status", ["pending", "running", "parked", "completed", "cancelled"])
    async def test_find_active_per_status(
        self, conformance_provider: WorkflowPersistenceProvider, status: str
    ) -> None:
        (instance,) = await _instances(conformance_provider, 1)
        store = _store(conformance_provider)
        execution = make_execution(instance, status=status)
        await _create(conformance_provider, execution)
        found = await store.find_active(instance.uuid)
        if status in ("pending", "running", "parked"):
            assert_same_execution(found, execution)
        else:
            assert found is None
        assert_same_execution(await store.find_by_key(instance.uuid, "pay-1"), execution)

    async def test_find_due_returns_available_unleased_work_in_due_order(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        instances = await _instances(conformance_provider, 13)
        at, minute = NOW, timedelta(minutes=1)

        def execution(
            n: int, status: str, available: datetime, lease: datetime | None = None
        ) -> WorkflowExecution:
            token = None if lease is None else f"lease-{n}"
            return make_execution(
                instances[n],
                status=status,
                available_at=available,
                lease_until=lease,
                lease_token=token,
            )

        due = [
            execution(0, "pending", at - 3 * minute),
            execution(1, "running", at - 5 * minute, at - timedelta(microseconds=1)),  # expired
            execution(2, "pending", at),  # available exactly now
            execution(3, "running", at - 4 * minute, at),  # lease ends exactly now
            execution(4, "pending", at - 7 * minute),  # these two: same time, uuid order
            execution(5, "running", at - 7 * minute),
        ]
        not_due = [
            execution(6, "running", at - 30 * minute, at + timedelta(microseconds=1)),  # leased
            execution(7, "pending", at - 29 * minute, at + minute),  # leased, though pending
            execution(8, "pending", at + timedelta(microseconds=1)),  # not yet available
            execution(9, "parked", at - 40 * minute),
            execution(10, "completed", at - 40 * minute),
            execution(11, "cancelled", at - 40 * minute),
        ]
        await _create(conformance_provider, *due, *not_due)
        store = _store(conformance_provider)
        expected = sorted(due, key=lambda e: (e.available_at, e.uuid))

        found = await store.find_due(100, NOW)
        assert _uuids(found) == _uuids(expected)
        for got, wanted in zip(found, expected, strict=True):
            assert_same_execution(got, wanted)
        # The limit counts due executions only: the leased ones before them take none of it.
        assert _uuids(await store.find_due(1, NOW)) == _uuids(expected[:1])
        assert _uuids(await store.find_due(4, NOW)) == _uuids(expected[:4])
        # ``now`` is the caller's clock, in any time zone.
        later = await store.find_due(100, (NOW + 2 * minute).astimezone(_PLUS_TWO))
        assert set(_uuids(later)) == {e.uuid for e in (*due, *not_due[:3])}
        assert await store.find_due(100, NOW - timedelta(hours=1)) == []

    async def test_a_lease_taken_by_update_leaves_find_due_before_the_limit(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        instances = await _instances(conformance_provider, 4)
        executions = [
            make_execution(instance, available_at=NOW - timedelta(minutes=10 - n))
            for n, instance in enumerate(instances)
        ]
        await _create(conformance_provider, *executions)
        store = _store(conformance_provider)
        assert _uuids(await store.find_due(1, NOW)) == [executions[0].uuid]
        for leased in executions[:3]:
            await _update(
                conformance_provider,
                _next(
                    leased,
                    status="running",
                    lease_token="t",
                    lease_until=NOW + timedelta(seconds=30),
                ),
            )
        assert _uuids(await store.find_due(1, NOW)) == [executions[3].uuid]
        # Once the leases have run out, they are due again, in due order.
        assert _uuids(await store.find_due(2, NOW + timedelta(seconds=30))) == _uuids(
            executions[:2]
        )

    async def test_stats_count_active_executions_per_status(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = _store(conformance_provider)
        empty = await store.stats(now=NOW)
        assert [(s.status, s.executions, s.due, s.oldest_due_at) for s in empty] == [
            ("pending", 0, 0, None),
            ("running", 0, 0, None),
            ("parked", 0, 0, None),
        ]
        instances = await _instances(conformance_provider, 8)
        minute = timedelta(minutes=1)

        def execution(
            n: int, status: str, available: datetime, lease: datetime | None = None
        ) -> WorkflowExecution:
            token = None if lease is None else f"lease-{n}"
            return make_execution(
                instances[n],
                status=status,
                available_at=available,
                lease_until=lease,
                lease_token=token,
            )

        await _create(
            conformance_provider,
            execution(0, "pending", NOW - 3 * minute),  # due since 3 minutes
            execution(1, "pending", NOW + minute),  # not yet available
            execution(2, "running", NOW - 9 * minute, NOW - 2 * minute),  # lease over: due
            execution(3, "running", NOW - 9 * minute, NOW + minute),  # leased
            execution(4, "parked", NOW - 9 * minute),
            execution(5, "completed", NOW - 9 * minute),
            execution(6, "cancelled", NOW - 9 * minute),
        )
        found = await store.stats(now=NOW.astimezone(_PLUS_TWO))
        assert [(s.status, s.executions, s.due, s.oldest_due_at) for s in found] == [
            ("pending", 2, 1, NOW - 3 * minute),
            ("running", 2, 1, NOW - 2 * minute),  # due since its lease ended
            ("parked", 1, 0, None),
        ]
        for stats in found:
            if stats.oldest_due_at is not None:
                assert stats.oldest_due_at.utcoffset() == timedelta(0)
        later = await store.stats(now=NOW + 2 * minute)
        assert [(s.executions, s.due) for s in later] == [(2, 2), (2, 2), (1, 0)]
        for bad_now in (NOW.replace(tzinfo=None), "2026-01-01T00:00:00Z", None):
            with pytest.raises(InvalidArgumentError, match="now"):
                await store.stats(now=bad_now)  # type: ignore[arg-type]
