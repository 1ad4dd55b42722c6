"""The rows the in-memory database keeps, and the copies of them the stores hand out."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from duraflows_pg_async._core.model import (
    CommandResult,
    HistoryOutcome,
    HistoryRecord,
    StoredWorkflowDefinition,
    WorkflowInstance,
)

from .round_trip import copy_jsonb

__all__ = ["HistoryRow", "export_definition", "export_instance"]


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One stored history row: command results and trigger metadata as jsonb holds them."""

    uuid: UUID
    workflow_instance_uuid: UUID
    from_state: str | None
    event_name: str
    to_state: str
    outcome: HistoryOutcome
    command_results: list[dict[str, Any]]
    error_message: str | None
    rejected_by: str | None
    trigger_metadata: dict[str, Any]
    definition_version: int | None
    created_at: datetime

    def export(self) -> HistoryRecord:
        return HistoryRecord(
            uuid=self.uuid,
            workflow_instance_uuid=self.workflow_instance_uuid,
            from_state=self.from_state,
            event_name=self.event_name,
            to_state=self.to_state,
            outcome=self.outcome,
            command_results=[CommandResult.from_json(copy_jsonb(r)) for r in self.command_results],
            error_message=self.error_message,
            rejected_by=self.rejected_by,
            trigger_metadata=copy_jsonb(self.trigger_metadata),
            definition_version=self.definition_version,
            created_at=self.created_at,
        )


def export_instance(row: WorkflowInstance, claims: dict[UUID, datetime]) -> WorkflowInstance:
    """A copy of a stored instance, with its sweep claim (an instance with retry state has none)."""
    return dataclasses.replace(
        row,
        context=copy_jsonb(row.context),
        metadata=copy_jsonb(row.metadata),
        claimed_until=claims.get(row.uuid) if row.timeout_retry is None else None,
    )


def export_definition(row: StoredWorkflowDefinition) -> StoredWorkflowDefinition:
    return StoredWorkflowDefinition(
        workflow_name=row.workflow_name,
        version=row.version,
        content_hash=row.content_hash,
        definition_json=copy_jsonb(row.definition_json),
        registered_at=row.registered_at,
    )
