"""MemoryWorkflowHistoryStore: the transition history in memory."""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID, uuid4

from duraflows_pg_async._core.model import HistoryOutcome, HistoryRecord
from duraflows_pg_async._core.store_checks import checked_record
from duraflows_pg_async._core.validate import coerce_uuid, require_int
from duraflows_pg_async.errors import WorkflowInstanceNotFoundError

from .database import MemoryDatabase
from .locks import KEY_SHARE
from .round_trip import as_jsonb
from .rows import HistoryRow
from .store_base import MemoryStore, reading_level, statement
from .transaction import Level

__all__ = ["MemoryWorkflowHistoryStore", "add_history_row"]


def _text(value: str | None) -> str | None:
    return None if value is None else str.__str__(value)


def add_history_row(
    database: MemoryDatabase,
    level: Level,
    record: HistoryRecord,
    instance_uuid: UUID,
    results: list[dict[str, Any]],
    trigger_metadata: dict[str, Any],
) -> UUID:
    """Add the row of a checked ``record`` (see ``checked_record``) at ``level``; its new uuid.

    The caller has checked that the instance exists and holds a lock on it.
    """
    row_uuid = uuid4()
    level.history.append(
        HistoryRow(
            uuid=row_uuid,
            workflow_instance_uuid=instance_uuid,
            from_state=_text(record.from_state),
            event_name=str.__str__(record.event_name),
            to_state=str.__str__(record.to_state),
            outcome=cast(HistoryOutcome, str.__str__(record.outcome)),
            command_results=as_jsonb(results),
            error_message=_text(record.error_message),
            rejected_by=_text(record.rejected_by),
            trigger_metadata=as_jsonb(trigger_metadata),
            definition_version=(
                None
                if record.definition_version is None
                else int.__index__(record.definition_version)
            ),
            created_at=database._next_history_at(),
        )
    )
    return row_uuid


class MemoryWorkflowHistoryStore(MemoryStore):
    """The transition history in memory. Joins the current transaction if there is one.

    Rows read back newest first, in the order they were written.
    """

    __slots__ = ()

    async def append(self, record: HistoryRecord) -> UUID:
        """Store one history row and return its new uuid.

        An instance this transaction cannot see raises WorkflowInstanceNotFoundError. Like the
        foreign key check, waits while another transaction holds the instance FOR UPDATE.
        """
        instance_uuid, results, trigger_metadata = checked_record(record)
        assert isinstance(record, HistoryRecord)

        database = self._database
        what = f"append history of instance {instance_uuid}"

        async def op(level: Level) -> UUID:
            if database._instance(level, instance_uuid) is None:
                raise WorkflowInstanceNotFoundError(instance_uuid)
            await database._locks.acquire(level, instance_uuid, KEY_SHARE, what)
            return add_history_row(
                database, level, record, instance_uuid, results, trigger_metadata
            )

        return await statement(database, what, op)

    async def find_by_instance_uuid(
        self, instance_uuid: UUID | str, limit: int = 50, offset: int = 0
    ) -> list[HistoryRecord]:
        """The instance's history, newest first (``[]`` for an unknown instance)."""
        key = coerce_uuid(instance_uuid, "instance_uuid")
        require_int(limit, "limit", minimum=1)
        require_int(offset, "offset", minimum=0)
        level = reading_level(self._database, f"find history of instance {key}")
        rows = self._database._history_of(level, key)
        rows.sort(key=lambda row: (row.created_at, row.uuid), reverse=True)
        return [row.export() for row in rows[offset : offset + limit]]
