"""PgWorkflowHistoryStore: the append-only transition history in ``workflow_history``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg

from duraflows_pg_async._core.model import CommandResult, HistoryRecord
from duraflows_pg_async._core.store_checks import checked_built_record, checked_record
from duraflows_pg_async._core.validate import coerce_uuid, require_int
from duraflows_pg_async._pg.error_mapping import map_db_errors, raise_mapped
from duraflows_pg_async.errors import WorkflowError, WorkflowInstanceNotFoundError

from .codecs import decoded
from .store_base import PgStore

__all__ = ["PgWorkflowHistoryStore"]


def _record_from_row(row: asyncpg.Record) -> HistoryRecord:
    # By column name: the SELECT list (queries.HISTORY_COLUMNS) may change order freely.
    results = decoded(row["command_results_json"], "workflow_history.command_results_json")
    return HistoryRecord(
        uuid=row["uuid"],
        workflow_instance_uuid=row["workflow_instance_uuid"],
        from_state=row["from_state"],
        event_name=row["event_name"],
        to_state=row["to_state"],
        outcome=row["outcome"],
        error_message=row["error_message"],
        command_results=[CommandResult.from_json(item) for item in results],
        trigger_metadata=decoded(
            row["trigger_metadata_json"], "workflow_history.trigger_metadata_json"
        ),
        rejected_by=row["rejected_by"],
        definition_version=row["definition_version"],
        created_at=row["created_at"],
    )


class PgWorkflowHistoryStore(PgStore):
    """The transition history. Joins the current transaction if there is one.

    Rows appended in one transaction read back in the order they were written.
    """

    __slots__ = ()

    async def append(self, record: HistoryRecord) -> UUID:
        """Insert one history row and return its database-assigned uuid.

        An unknown instance raises WorkflowInstanceNotFoundError.
        """
        instance_uuid, results, trigger_metadata = checked_record(record)
        executor = self._executor()
        try:
            row_uuid = await executor.fetchval(
                self._q.insert_history,
                instance_uuid,
                record.from_state,
                record.event_name,
                record.to_state,
                record.outcome,
                record.error_message,
                record.rejected_by,
                results,
                trigger_metadata,
                record.definition_version,
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise WorkflowInstanceNotFoundError(instance_uuid) from exc
        except Exception as exc:
            raise_mapped(exc, f"append history of instance {instance_uuid}", executor)
        if row_uuid is None:
            raise WorkflowError(
                "Failed to append workflow history: INSERT ... RETURNING uuid returned no row"
            )
        return row_uuid  # type: ignore[no-any-return]

    def built_append_row(self, record: HistoryRecord, row_uuid: UUID, rank: int) -> tuple[Any, ...]:
        """What ``append`` writes for ``record``, a record the runtime built itself (only its
        command results are checked again, with ``append``'s errors), as row ``row_uuid`` and
        the ``rank``-th row of its instance, for ``append_rows``."""
        results, trigger_metadata = checked_built_record(record, "append")
        return (
            row_uuid,
            record.workflow_instance_uuid,
            record.from_state,
            record.event_name,
            record.to_state,
            record.outcome,
            record.error_message,
            record.rejected_by,
            results,
            trigger_metadata,
            record.definition_version,
            rank,
        )

    async def append_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert rows of ``append_row`` in one statement; the rows of one instance read back
        in their rank order, after the rows it already had."""
        if not rows:
            return
        columns = [list(column) for column in zip(*rows, strict=True)]
        executor = self._executor()
        try:
            await executor.execute(self._q.insert_histories, *columns)
        except Exception as exc:
            raise_mapped(exc, f"append {len(rows)} history rows", executor)

    async def find_by_instance_uuid(
        self, instance_uuid: UUID | str, limit: int = 50, offset: int = 0
    ) -> list[HistoryRecord]:
        """The instance's history, newest first (``[]`` for an unknown instance)."""
        key = coerce_uuid(instance_uuid, "instance_uuid")
        require_int(limit, "limit", minimum=1)
        require_int(offset, "offset", minimum=0)
        executor = self._executor()
        with map_db_errors(f"find history of instance {key}", executor):
            rows = await executor.fetch(self._q.select_history, key, limit, offset)
        return [_record_from_row(row) for row in rows]
