"""The conformance suite of the history store."""

from __future__ import annotations

import math
from typing import Any, cast
from uuid import UUID, uuid4

import pytest

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.model import CommandResult, HistoryOutcome, HistoryRecord
from duraflows_pg_async.errors import InvalidArgumentError, WorkflowInstanceNotFoundError

from ._helpers import MALFORMED_UUIDS, assert_aware, create_committed
from .data import make_instance

__all__ = ["HistoryStoreConformance"]


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
        await create_committed(provider, instance)
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
        assert_aware(stored.created_at, "created_at")
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
            for bad in MALFORMED_UUIDS:
                with pytest.raises(InvalidArgumentError):
                    await history.find_by_instance_uuid(bad)
                with pytest.raises(InvalidArgumentError):
                    await history.append(_record(cast(UUID, bad)))
            await history.append(_record(owner, "still-usable"))
        assert [r.event_name for r in await history.find_by_instance_uuid(owner)] == [
            "still-usable"
        ]
