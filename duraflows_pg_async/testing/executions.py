"""The conformance suite of the durable execution store."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.executions import CommandCheckpoint, WorkflowExecution
from duraflows_pg_async._core.model import CommandResult, ExecutionResult
from duraflows_pg_async.errors import (
    InvalidArgumentError,
    NoActiveTransactionError,
    WorkflowError,
    WorkflowInstanceNotFoundError,
)

from ._helpers import MALFORMED_UUIDS, NOW, Rollback
from .data import make_instance
from .execution_data import _PLUS_TWO, _create, _instances, _next, _store, _stored, _update, _uuids
from .execution_data import assert_same_execution as assert_same_execution
from .execution_data import make_execution as make_execution
from .execution_listing import ExecutionListingChecks
from .execution_queue import ExecutionQueueChecks
from .idempotency import BAD_TEXTS

__all__ = ["ExecutionStoreConformance"]


class ExecutionStoreConformance(ExecutionQueueChecks, ExecutionListingChecks):
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
