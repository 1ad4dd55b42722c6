"""The ``persist_transition`` part of the instance store's conformance suite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.model import CommandResult, HistoryRecord, WorkflowInstance
from duraflows_pg_async.errors import InvalidArgumentError, OptimisticLockError

from ._helpers import Rollback, assert_same_fields, copy_instance, create_committed, find_stored
from .data import make_instance

__all__ = ["InstanceTransitionChecks"]


def _record(instance_uuid: UUID, event_name: str = "approve", **overrides: Any) -> HistoryRecord:
    fields: dict[str, Any] = {
        "workflow_instance_uuid": instance_uuid,
        "from_state": "pending",
        "event_name": event_name,
        "to_state": "approved",
        "outcome": "success",
    }
    fields.update(overrides)
    return HistoryRecord(**fields)


def _moved(instance: WorkflowInstance, state: str = "approved") -> WorkflowInstance:
    """The next version of ``instance`` in ``state``, its times all new and distinct."""
    moved = copy_instance(instance)
    moved.current_state = state
    moved.version += 1
    moved.context = {**instance.context, "moved": moved.version}
    moved.last_transition_at = datetime.now(UTC) + timedelta(minutes=5)
    moved.updated_at = moved.last_transition_at + timedelta(minutes=1)
    moved.expires_at = moved.updated_at + timedelta(days=1)
    return moved


class InstanceTransitionChecks:
    """``persist_transition``: the instance written and its history row appended as one write,
    neither of them on an optimistic conflict."""

    async def test_persist_transition_writes_the_instance_and_its_history_row(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        history = conformance_provider.history_store
        instance = make_instance(current_state="pending", context={"step": 1})
        await create_committed(conformance_provider, copy_instance(instance))
        results = [CommandResult(ok=True, code="OK", metadata={"n": 1})]
        async with conformance_provider.transaction_runner.transaction():
            locked = await store.lock_by_uuid(instance.uuid)
            assert locked is not None
            moved = _moved(locked)
            row_uuid = await store.persist_transition(
                moved,
                _record(
                    instance.uuid,
                    command_results=results,
                    trigger_metadata={"by": "ann"},
                    definition_version=3,
                ),
            )
            expected = copy_instance(moved)
        assert isinstance(row_uuid, UUID)
        assert_same_fields(await find_stored(conformance_provider, instance.uuid), expected)
        (row,) = await history.find_by_instance_uuid(instance.uuid)
        assert row.uuid == row_uuid
        assert (row.from_state, row.event_name, row.to_state, row.outcome) == (
            "pending",
            "approve",
            "approved",
            "success",
        )
        assert row.command_results == results
        assert row.trigger_metadata == {"by": "ann"}
        assert row.definition_version == 3

    async def test_persist_transition_with_a_stale_version_writes_nothing(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        history = conformance_provider.history_store
        instance = make_instance(current_state="pending")
        await create_committed(conformance_provider, copy_instance(instance))
        first = _moved(await find_stored(conformance_provider, instance.uuid), "by-first")
        second = _moved(await find_stored(conformance_provider, instance.uuid), "by-second")
        async with conformance_provider.transaction_runner.transaction():
            await store.persist_transition(first, _record(instance.uuid, "first"))
        with pytest.raises(OptimisticLockError) as raised:
            async with conformance_provider.transaction_runner.transaction():
                await store.persist_transition(second, _record(instance.uuid, "second"))
        assert str(instance.uuid) in str(raised.value)
        stored = await find_stored(conformance_provider, instance.uuid)
        assert (stored.current_state, stored.version) == ("by-first", 1)
        rows = await history.find_by_instance_uuid(instance.uuid)
        assert [r.event_name for r in rows] == ["first"]

        # Outside a transaction too, and for an instance that does not exist.
        with pytest.raises(OptimisticLockError):
            await store.persist_transition(second, _record(instance.uuid, "second"))
        ghost = make_instance(version=1)
        with pytest.raises(OptimisticLockError):
            await store.persist_transition(ghost, _record(ghost.uuid))
        assert await history.find_by_instance_uuid(ghost.uuid) == []
        assert len(await history.find_by_instance_uuid(instance.uuid)) == 1

    async def test_the_transaction_goes_on_after_an_optimistic_conflict(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        # An empty result is not an error of the database: the caller may carry on.
        store = conformance_provider.instance_store
        instance = make_instance(current_state="pending")
        await create_committed(conformance_provider, copy_instance(instance))
        stale = _moved(instance)
        stale.version += 1
        async with conformance_provider.transaction_runner.transaction():
            with pytest.raises(OptimisticLockError):
                await store.persist_transition(stale, _record(instance.uuid, "stale"))
            await store.persist_transition(_moved(instance), _record(instance.uuid, "fresh"))
        rows = await conformance_provider.history_store.find_by_instance_uuid(instance.uuid)
        assert [r.event_name for r in rows] == ["fresh"]

    async def test_rows_read_back_in_write_order_with_appends(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        history = conformance_provider.history_store
        instance = make_instance(current_state="s0")
        await create_committed(conformance_provider, copy_instance(instance))
        written: list[UUID] = []
        async with conformance_provider.transaction_runner.transaction():
            current = await store.lock_by_uuid(instance.uuid)
            assert current is not None
            for hop in range(1, 4):
                written.append(await history.append(_record(instance.uuid, f"rejected-{hop}")))
                current = _moved(current, f"s{hop}")
                written.append(
                    await store.persist_transition(current, _record(instance.uuid, f"hop-{hop}"))
                )
        rows = await history.find_by_instance_uuid(instance.uuid)
        assert [r.uuid for r in rows] == list(reversed(written))

    async def test_persist_transition_rolls_back_with_its_transaction(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        instance = make_instance(current_state="pending")
        await create_committed(conformance_provider, copy_instance(instance))

        async def written_then_rolled_back() -> None:
            async with conformance_provider.transaction_runner.transaction():
                await store.persist_transition(_moved(instance), _record(instance.uuid))
                raise Rollback

        with pytest.raises(Rollback):
            await written_then_rolled_back()
        assert (await find_stored(conformance_provider, instance.uuid)).version == 0
        assert await conformance_provider.history_store.find_by_instance_uuid(instance.uuid) == []

    async def test_bad_arguments_are_refused_before_any_write(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        instance = make_instance(current_state="pending")
        other = make_instance()
        await create_committed(conformance_provider, copy_instance(instance), other)
        moved = _moved(instance)
        bad: list[tuple[Any, Any, str]] = [
            (moved, _record(other.uuid), str(other.uuid)),
            (moved, "not a record", "HistoryRecord"),
            (moved, _record(instance.uuid, trigger_metadata={"x": {1, 2}}), "trigger_metadata"),
            (moved, _record(instance.uuid, outcome="maybe"), "outcome"),
            ("not an instance", _record(instance.uuid), "WorkflowInstance"),
        ]
        broken = _moved(instance)
        broken.context = {"x": float("nan")}
        bad.append((broken, _record(instance.uuid), "context"))
        for candidate, record, named in bad:
            with pytest.raises(InvalidArgumentError) as raised:
                await store.persist_transition(candidate, record)
            assert named in str(raised.value)
        assert (await find_stored(conformance_provider, instance.uuid)).version == 0
        assert await conformance_provider.history_store.find_by_instance_uuid(instance.uuid) == []
