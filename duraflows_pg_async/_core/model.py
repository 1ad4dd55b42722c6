"""The persistence model: instances, history records, command results, stored definitions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

__all__ = [
    "CommandResult",
    "HistoryOutcome",
    "HistoryRecord",
    "StoredWorkflowDefinition",
    "TimeoutRetry",
    "WorkflowInstance",
]

HistoryOutcome = Literal["success", "failure", "guard-rejected"]
"""The ``outcome`` column of a history row (the same values as the runtime's outcome)."""
HISTORY_OUTCOMES: frozenset[str] = frozenset(("success", "failure", "guard-rejected"))


@dataclass(frozen=True, slots=True)
class TimeoutRetry:
    """Retry state of a failing timeout: retrying (``retry_at`` set) or parked (``parked_at``)."""

    attempts: int
    last_error: str
    retry_at: datetime | None = None
    parked_at: datetime | None = None


@dataclass(slots=True)
class WorkflowInstance:
    """One running workflow: its current state, version and JSON context.

    ``version`` is the optimistic-lock counter: a caller increments it *before* calling
    ``update()``, and the store matches ``version - 1``. ``metadata`` is written once, at create.

    ``claimed_until`` is read-only: set when a timeout sweep holds a lease on the instance (see
    ``find_expired(claim_until=...)``); ``update()`` never writes it and always ends the claim.
    """

    uuid: UUID
    workflow_name: str
    current_state: str
    version: int
    context: dict[str, Any]
    metadata: dict[str, Any]
    expires_at: datetime | None
    last_transition_at: datetime
    created_at: datetime
    updated_at: datetime
    definition_version: int | None = None
    timeout_retry: TimeoutRetry | None = None
    claimed_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a command returned; stored in history as ``{ok, code, message, metadata, error}``."""

    ok: bool
    code: str | None = None
    message: str | None = None
    metadata: Mapping[str, Any] | None = None
    error: Any = None

    def to_json(self) -> dict[str, Any]:
        """The upstream JSON shape; unset fields are left out, as JavaScript drops ``undefined``."""
        out: dict[str, Any] = {"ok": self.ok}
        if self.code is not None:
            out["code"] = self.code
        if self.message is not None:
            out["message"] = self.message
        if self.metadata is not None:
            out["metadata"] = dict(self.metadata)
        if self.error is not None:
            out["error"] = self.error
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CommandResult:
        return cls(
            ok=bool(data.get("ok", False)),
            code=data.get("code"),
            message=data.get("message"),
            metadata=data.get("metadata"),
            error=data.get("error"),
        )


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """One row of the append-only transition history.

    ``uuid`` and ``created_at`` are assigned by the database; they are ``None`` on a record that
    has not been written yet and set on every record read back.
    """

    workflow_instance_uuid: UUID
    from_state: str | None
    event_name: str
    to_state: str
    outcome: HistoryOutcome
    command_results: list[CommandResult] = field(default_factory=list)
    error_message: str | None = None
    rejected_by: str | None = None
    trigger_metadata: dict[str, Any] = field(default_factory=dict)
    definition_version: int | None = None
    uuid: UUID | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoredWorkflowDefinition:
    """A definition snapshot as stored in ``workflow_definitions``; the first content wins."""

    workflow_name: str
    version: int
    content_hash: str
    definition_json: dict[str, Any]
    registered_at: datetime
