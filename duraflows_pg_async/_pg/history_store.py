"""PgWorkflowHistoryStore: the append-only transition history in ``workflow_history``."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from duraflows_pg_async._core.model import HISTORY_OUTCOMES, CommandResult, HistoryRecord
from duraflows_pg_async._core.validate import (
    INT4_MAX,
    check_json,
    coerce_uuid,
    optional_int,
    optional_str,
    require_int,
    require_str,
    safe_repr,
)
from duraflows_pg_async.errors import (
    InvalidArgumentError,
    WorkflowError,
    WorkflowInstanceNotFoundError,
    map_db_errors,
    raise_mapped,
)

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


def _command_results_json(record: HistoryRecord, label: str) -> list[dict[str, Any]]:
    results = record.command_results
    if not isinstance(results, list | tuple):
        raise InvalidArgumentError(f"{label}: command_results must be a list of CommandResult")
    out = []
    for index, result in enumerate(results):
        if not isinstance(result, CommandResult):
            raise InvalidArgumentError(
                f"{label}: command_results[{index}] must be a CommandResult, "
                f"got {type(result).__name__}"
            )
        out.append(result.to_json())
    check_json(out, f"{label}: command_results")
    return out


def checked_record(record: object) -> tuple[UUID, list[dict[str, Any]], dict[str, Any]]:
    """Validate a history record before any write; returns (instance uuid, results JSON,
    trigger metadata)."""
    if not isinstance(record, HistoryRecord):
        raise InvalidArgumentError(
            f"append: record must be a HistoryRecord, got {type(record).__name__}"
        )
    instance_uuid = coerce_uuid(record.workflow_instance_uuid, "record.workflow_instance_uuid")
    label = f"append: history of instance {instance_uuid}"
    optional_str(record.from_state, f"{label}: from_state")
    require_str(record.event_name, f"{label}: event_name")
    require_str(record.to_state, f"{label}: to_state")
    # isinstance first: an unhashable outcome (a list) raised TypeError from the set lookup, and
    # a hostile repr escaped from the message (reliability suite, test_hostile_input.py).
    outcome: object = record.outcome
    if not isinstance(outcome, str) or outcome not in HISTORY_OUTCOMES:
        raise InvalidArgumentError(
            f"{label}: outcome must be one of {sorted(HISTORY_OUTCOMES)}, got {safe_repr(outcome)}"
        )
    optional_str(record.error_message, f"{label}: error_message")
    optional_str(record.rejected_by, f"{label}: rejected_by")
    results = _command_results_json(record, label)
    trigger_metadata = record.trigger_metadata
    if trigger_metadata is None:
        trigger_metadata = {}
    if not isinstance(trigger_metadata, dict):
        raise InvalidArgumentError(f"{label}: trigger_metadata must be a dict")
    check_json(trigger_metadata, f"{label}: trigger_metadata")
    optional_int(
        record.definition_version, f"{label}: definition_version", minimum=1, maximum=INT4_MAX
    )
    return instance_uuid, results, trigger_metadata


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
