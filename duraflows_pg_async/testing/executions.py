"""The conformance suite of the durable execution store."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest

from duraflows_pg_async._core.contract import (
    WorkflowExecutionStore,
    WorkflowPersistenceProvider,
)
from duraflows_pg_async._core.executions import (
    CommandCheckpoint,
    DurableExecutionPolicy,
    WorkflowExecution,
)
from duraflows_pg_async._core.model import CommandResult, ExecutionResult, WorkflowInstance
from duraflows_pg_async.errors import (
    DatabaseError,
    InvalidArgumentError,
    NoActiveTransactionError,
    WorkflowError,
    WorkflowInstanceNotFoundError,
)

from ._helpers import MALFORMED_UUIDS, NOW, Rollback, assert_aware, create_committed
from .data import make_instance
from .execution_listing import ExecutionListingChecks
from .idempotency import BAD_TEXTS

__all__ = ["ExecutionStoreConformance"]

_TIMES = ("available_at", "lease_until", "created_at", "updated_at")
# Two hours ahead of UTC: a store must read every time back as the same instant, in UTC.
_PLUS_TWO = timezone(timedelta(hours=2))


def make_execution(instance: WorkflowInstance, **overrides: Any) -> WorkflowExecution:
    """A pending execution of ``instance`` with every optional part set (fingerprint, subject,
    a journal of one checkpoint, a non-default policy); keyword arguments override any field.

    Its times all differ and carry microseconds, so that a store that mixes them up or rounds
    them fails the round trips.
    """
    fields: dict[str, Any] = {
        "uuid": uuid4(),
        "workflow_instance_uuid": instance.uuid,
        "workflow_name": instance.workflow_name,
        "event_name": "pay",
        "idempotency_key": "pay-1",
        "idempotency_fingerprint": "f:2500",
        "status": "pending",
        "revision": 0,
        "definition": {
            "name": instance.workflow_name,
            "version": 2,
            "initialState": "start",
            "states": {
                "start": {
                    "events": {"pay": {"targetState": "paid", "commands": [{"name": "charge"}]}}
                },
                "paid": {"onEnter": {"commands": [{"name": "notify"}]}},
            },
        },
        "best_effort_commands": ["notify"],
        "instance_version": 3,
        "from_state": "start",
        "initial_context": {"order": {"id": 7, "lines": [1, 2.5, "x", None, True]}, "note": "é"},
        "metadata": {"tenant": "acme"},
        "subject": {"user": "u-1", "roles": ["payer"]},
        "trigger_metadata": {"source": "api", "requestId": "r-9"},
        "journal": [
            CommandCheckpoint(
                id="0",
                name="charge",
                result=CommandResult(ok=True, code="charged", metadata={"amount": 2500}),
                context={"order": {"id": 7}, "charged": 2500},
                attempts=2,
                completed_at=NOW - timedelta(minutes=50, microseconds=7),
            )
        ],
        "result": None,
        "attempts": 1,
        "last_error": "gateway timeout",
        "available_at": NOW - timedelta(minutes=30, microseconds=11),
        "lease_token": None,
        "lease_until": None,
        "created_at": NOW - timedelta(hours=2, microseconds=13),
        "updated_at": NOW - timedelta(hours=1, microseconds=17),
        "policy": DurableExecutionPolicy(
            lease_duration=timedelta(seconds=45),
            initial_delay=timedelta(milliseconds=250),
            max_delay=timedelta(minutes=5),
            max_attempts=7,
        ),
        "max_on_enter_depth": 12,
    }
    unknown = set(overrides) - {f.name for f in dataclasses.fields(WorkflowExecution)}
    if unknown:
        raise TypeError(f"make_execution() got unknown fields: {', '.join(sorted(unknown))}")
    fields.update(overrides)
    return WorkflowExecution(**fields)


def _store(provider: WorkflowPersistenceProvider) -> WorkflowExecutionStore:
    store = provider.execution_store
    assert store is not None, (
        "conformance_provider has no execution_store: build it with durable_execution=True"
    )
    return store


def _next(execution: WorkflowExecution, **changes: Any) -> WorkflowExecution:
    """A copy of the execution at its next revision (unless ``changes`` name one), with
    ``changes``."""
    changes.setdefault("revision", execution.revision + 1)
    return dataclasses.replace(copy.deepcopy(execution), **changes)


async def _instances(provider: WorkflowPersistenceProvider, count: int) -> list[WorkflowInstance]:
    instances = [make_instance() for _ in range(count)]
    await create_committed(provider, *instances)
    return instances


async def _create(provider: WorkflowPersistenceProvider, *executions: WorkflowExecution) -> None:
    """Create the executions in one committed transaction."""
    async with provider.transaction_runner.transaction():
        for execution in executions:
            await _store(provider).create(execution)


async def _update(provider: WorkflowPersistenceProvider, execution: WorkflowExecution) -> None:
    async with provider.transaction_runner.transaction():
        await _store(provider).update(execution)


async def _stored(provider: WorkflowPersistenceProvider, uuid: UUID) -> WorkflowExecution:
    found = await _store(provider).find_by_uuid(uuid)
    assert found is not None, f"execution {uuid} was not found"
    return found


def assert_same_execution(found: WorkflowExecution | None, expected: WorkflowExecution) -> None:
    """Every field equal (the first that differs named), every time aware and in UTC."""
    assert found is not None, f"execution {expected.uuid} was not found"
    for field in dataclasses.fields(WorkflowExecution):
        got, wanted = getattr(found, field.name), getattr(expected, field.name)
        assert got == wanted, f"{field.name}: wrote {wanted!r}, read back {got!r}"
    times = [(name, getattr(found, name)) for name in _TIMES]
    times += [(f"journal[{n}].completed_at", c.completed_at) for n, c in enumerate(found.journal)]
    for name, value in times:
        if value is not None:
            assert_aware(value, name)
            assert value.utcoffset() == timedelta(0), f"{name} should be in UTC, got {value!r}"


def _uuids(executions: list[WorkflowExecution]) -> list[UUID]:
    return [execution.uuid for execution in executions]


class ExecutionStoreConformance(ExecutionListingChecks):
    """The ``WorkflowExecutionStore`` contract: executions stored whole and read back as
    independent copies; writes in a transaction, with an optimistic revision; one execution per
    (instance, key) and one active execution per instance; due executions in due order, leased
    ones left out before the limit; rolled back (savepoints included) with their transaction;
    listed by status and workflow in uuid pages.

    Subclass as ``class TestX(ExecutionStoreConformance)`` and provide a
    ``conformance_provider`` fixture returning a fresh provider with an ``execution_store``.
    """

    async def test_create_then_every_finder_reads_the_whole_record(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        (instance,) = await _instances(conformance_provider, 1)
        store = _store(conformance_provider)
        execution = make_execution(
            instance,
            status="running",
            lease_token="lease-7",
            lease_until=(NOW + timedelta(seconds=45, microseconds=3)).astimezone(_PLUS_TWO),
            created_at=(NOW - timedelta(hours=2)).astimezone(_PLUS_TWO),
        )
        async with conformance_provider.transaction_runner.transaction():
            await store.create(copy.deepcopy(execution))
            # Inside the transaction, the reads see the uncommitted record.
            assert_same_execution(await store.find_by_uuid(execution.uuid), execution)
        for found in (
            await store.find_by_uuid(execution.uuid),
            await store.find_by_uuid(str(execution.uuid).upper()),
            await store.find_by_key(instance.uuid, "pay-1"),
            await store.find_by_key(str(instance.uuid), "pay-1"),
            await store.find_active(instance.uuid),
            await store.find_active(str(instance.uuid)),
        ):
            assert_same_execution(found, execution)
        assert await store.find_by_uuid(uuid4()) is None
        assert await store.find_by_key(instance.uuid, "PAY-1") is None  # compared exactly
        assert await store.find_by_key(uuid4(), "pay-1") is None

    async def test_a_completed_record_reads_back_with_its_result(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        (instance,) = await _instances(conformance_provider, 1)
        store = _store(conformance_provider)
        result = ExecutionResult(
            outcome="guard-rejected",
            from_state="start",
            to_state="start",
            command_results=[CommandResult(ok=False, code="denied", message="no", error={"e": 1})],
            history_uuid=uuid4(),
            rejected_by="can_pay",
        )
        execution = make_execution(
            instance,
            status="completed",
            idempotency_fingerprint=None,
            journal=[],
            result=result,
            rejected_by="can_pay",
            last_error=None,
            attempts=0,
        )
        await _create(conformance_provider, execution)
        assert_same_execution(await store.find_by_uuid(execution.uuid), execution)
        assert_same_execution(await store.find_by_key(instance.uuid, "pay-1"), execution)
        assert await store.find_active(instance.uuid) is None

    @pytest.mark.parametrize("has_subject", [True, False], ids=["null-subject", "no-subject"])
    async def test_a_subject_present_or_absent_reads_back_so(
        self, conformance_provider: WorkflowPersistenceProvider, has_subject: bool
    ) -> None:
        (instance,) = await _instances(conformance_provider, 1)
        execution = make_execution(instance, subject=None, has_subject=has_subject)
        await _create(conformance_provider, execution)
        found = await _stored(conformance_provider, execution.uuid)
        assert (found.subject, found.has_subject) == (None, has_subject)
        assert_same_execution(found, execution)

    async def test_reads_return_independent_copies(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        (instance,) = await _instances(conformance_provider, 1)
        store = _store(conformance_provider)
        execution = make_execution(instance)
        written = copy.deepcopy(execution)
        await _create(conformance_provider, written)
        # The caller's object is not the stored one.
        written.initial_context["note"] = "changed"
        written.journal.clear()
        for found in (
            await store.find_by_uuid(execution.uuid),
            await store.find_by_key(instance.uuid, "pay-1"),
            await store.find_active(instance.uuid),
            (await store.find_due(10, NOW))[0],
        ):
            assert found is not None
            found.initial_context["order"]["lines"].append("mutated")
            found.definition["states"].clear()
            found.subject["user"] = "mallory"
            found.journal[0].context["charged"] = 0
            found.trigger_metadata["source"] = "mutated"
            found.metadata["tenant"] = "mutated"
            found.best_effort_commands.append("mutated")
            found.journal.append(found.journal[0])
            found.status = "cancelled"
            assert_same_execution(await store.find_by_uuid(execution.uuid), execution)

    async def test_writes_need_a_transaction_reads_do_not(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        (instance,) = await _instances(conformance_provider, 1)
        store = _store(conformance_provider)
        execution = make_execution(instance)
        with pytest.raises(NoActiveTransactionError):
            await store.create(execution)
        assert await store.find_by_uuid(execution.uuid) is None
        await _create(conformance_provider, execution)
        with pytest.raises(NoActiveTransactionError):
            await store.update(_next(execution, status="running"))
        assert_same_execution(await store.find_by_uuid(execution.uuid), execution)
        assert_same_execution(await store.find_by_key(instance.uuid, "pay-1"), execution)
        assert_same_execution(await store.find_active(instance.uuid), execution)
        assert _uuids(await store.find_due(10, NOW)) == [execution.uuid]

    async def test_update_writes_the_next_revision_whole(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        (instance,) = await _instances(conformance_provider, 1)
        store = _store(conformance_provider)
        execution = make_execution(instance)
        await _create(conformance_provider, execution)
        checkpoint = CommandCheckpoint(
            id="1",
            name="notify",
            result=CommandResult(ok=True),
            context={"notified": True},
            attempts=1,
            completed_at=NOW - timedelta(seconds=5),
        )
        running = _next(
            execution,
            status="running",
            lease_token="lease-1",
            lease_until=NOW + timedelta(seconds=45),
            attempts=2,
            last_error=None,
            journal=[*execution.journal, checkpoint],
            updated_at=NOW,
            has_subject=False,
            subject=None,
        )
        await _update(conformance_provider, running)
        assert_same_execution(await store.find_by_uuid(execution.uuid), running)
        assert await store.find_due(10, NOW) == []  # the columns follow the record
        done = _next(running, status="completed", lease_token=None, lease_until=None)
        await _update(conformance_provider, done)
        assert_same_execution(await store.find_by_key(instance.uuid, "pay-1"), done)
        assert await store.find_active(instance.uuid) is None

    async def test_a_stale_revision_raises_and_writes_nothing(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        (instance,) = await _instances(conformance_provider, 1)
        store = _store(conformance_provider)
        execution = make_execution(instance)
        await _create(conformance_provider, execution)
        first = _next(execution, status="running", lease_token="a")
        await _update(conformance_provider, first)
        async with conformance_provider.transaction_runner.transaction():
            # Another worker's write from revision 0, a revision skipped, an unknown execution.
            for stale in (
                _next(execution, status="completed", lease_token="b"),
                _next(first, revision=3, status="completed"),
                make_execution(instance, uuid=uuid4(), revision=1),
            ):
                with pytest.raises(WorkflowError, match="revision conflict"):
                    await store.update(stale)
            # Nothing was written, and the transaction goes on.
            assert_same_execution(await store.find_by_uuid(execution.uuid), first)
            await store.update(_next(first, status="parked"))
        assert (await _stored(conformance_provider, execution.uuid)).status == "parked"

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

    async def test_a_rolled_back_transaction_leaves_no_execution(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        (instance,) = await _instances(conformance_provider, 1)
        store = _store(conformance_provider)
        execution = make_execution(instance)

        async def rolled_back(write: WorkflowExecution, *, update: bool = False) -> None:
            async with conformance_provider.transaction_runner.transaction():
                await (store.update(write) if update else store.create(write))
                raise Rollback

        with pytest.raises(Rollback):
            await rolled_back(execution)
        assert await store.find_by_uuid(execution.uuid) is None
        assert await store.find_by_key(instance.uuid, "pay-1") is None
        assert await store.find_active(instance.uuid) is None
        assert await store.find_due(10, NOW) == []
        # The key and the active slot are free again.
        await _create(conformance_provider, execution)
        with pytest.raises(Rollback):
            await rolled_back(_next(execution, status="completed"), update=True)
        assert_same_execution(await store.find_active(instance.uuid), execution)

    async def test_a_rolled_back_savepoint_removes_only_its_executions(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        first, second = await _instances(conformance_provider, 2)
        store = _store(conformance_provider)
        runner = conformance_provider.transaction_runner
        outer = make_execution(first)
        inner = make_execution(second)
        retried = make_execution(second, idempotency_key="pay-1", event_name="ship")

        async def failing_nested() -> None:
            async with runner.transaction():
                await store.create(inner)
                await store.update(_next(outer, status="running"))
                raise Rollback

        async with runner.transaction():
            await store.create(outer)
            with pytest.raises(Rollback):
                await failing_nested()
            assert await store.find_by_uuid(inner.uuid) is None
            assert_same_execution(await store.find_by_uuid(outer.uuid), outer)
            # The inner execution's key and active slot are free again in the same transaction.
            await store.create(retried)
        assert_same_execution(await store.find_by_uuid(outer.uuid), outer)
        assert_same_execution(await store.find_active(second.uuid), retried)
        assert await store.find_by_uuid(inner.uuid) is None

    async def test_creating_on_an_unknown_instance_fails(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        execution = make_execution(make_instance())  # never created
        with pytest.raises(WorkflowInstanceNotFoundError):
            async with conformance_provider.transaction_runner.transaction():
                await _store(conformance_provider).create(execution)
        assert await _store(conformance_provider).find_by_uuid(execution.uuid) is None

    async def test_bad_arguments_are_refused_before_any_sql(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        (instance,) = await _instances(conformance_provider, 1)
        store = _store(conformance_provider)
        not_executions: tuple[Any, ...] = (None, "execution", make_execution(instance).to_json())
        for bad in not_executions:  # before the missing transaction, too
            with pytest.raises(InvalidArgumentError, match="WorkflowExecution"):
                await store.create(bad)
        naive = NOW.replace(tzinfo=None)
        async with conformance_provider.transaction_runner.transaction():
            for bad in not_executions:
                with pytest.raises(InvalidArgumentError, match="WorkflowExecution"):
                    await store.create(bad)
                with pytest.raises(InvalidArgumentError, match="WorkflowExecution"):
                    await store.update(bad)
            with pytest.raises(InvalidArgumentError, match="revision"):
                await store.update(make_execution(instance, revision=0))
            for bad_uuid in (*MALFORMED_UUIDS, None, 7):
                with pytest.raises(InvalidArgumentError, match="execution_uuid"):
                    await store.find_by_uuid(bad_uuid)  # type: ignore[arg-type]
                with pytest.raises(InvalidArgumentError, match="instance_uuid"):
                    await store.find_by_key(bad_uuid, "k")  # type: ignore[arg-type]
                with pytest.raises(InvalidArgumentError, match="instance_uuid"):
                    await store.find_active(bad_uuid)  # type: ignore[arg-type]
            for bad_key in BAD_TEXTS:
                with pytest.raises(InvalidArgumentError, match="key"):
                    await store.find_by_key(instance.uuid, bad_key)  # type: ignore[arg-type]
            for bad_limit in (0, -1, True, 1.5, "10", None):
                with pytest.raises(InvalidArgumentError, match="limit"):
                    await store.find_due(bad_limit, NOW)  # type: ignore[arg-type]
            for bad_now in (naive, "2026-01-01T00:00:00Z", None, NOW.date()):
                with pytest.raises(InvalidArgumentError, match="now"):
                    await store.find_due(10, bad_now)  # type: ignore[arg-type]
            # The transaction is still usable: nothing reached the database.
            execution = make_execution(instance)
            await store.create(execution)
            assert_same_execution(await store.find_by_uuid(execution.uuid), execution)
        assert _uuids(await store.find_due(10, datetime.now(UTC))) == [execution.uuid]
