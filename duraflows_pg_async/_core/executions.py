"""Durable executions: a queued event's record, its command checkpoints and its retry policy.

The record is stored whole as upstream's JSON (``execution_json``, camelCase, timestamps as ISO
strings, durations in milliseconds), so a TypeScript worker and this package read each other's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, cast
from uuid import UUID

from duraflows_pg_async._core.echo import echo
from duraflows_pg_async._core.validate import require_duration
from duraflows_pg_async.errors import InvalidArgumentError

from .json_form import JsonReader, copy_json, optional_utc_text, utc_text
from .model import CommandResult, ExecutionResult

__all__ = [
    "ACTIVE_STATUSES",
    "CommandCheckpoint",
    "DurableExecutionPolicy",
    "ExecutionStats",
    "ExecutionStatus",
    "WorkflowExecution",
]

ExecutionStatus = Literal["pending", "running", "parked", "completed", "cancelled"]
"""Where a queued execution is: waiting or leased (active), parked, completed or cancelled."""

EXECUTION_STATUSES: tuple[str, ...] = ("pending", "running", "parked", "completed", "cancelled")
# An execution in one of these occupies its instance (the unique index of migration 008).
ACTIVE_STATUSES: tuple[ExecutionStatus, ...] = ("pending", "running", "parked")
# Statuses a worker may pick up.
DUE_STATUSES: tuple[str, ...] = ("pending", "running")


@dataclass(frozen=True, slots=True)
class ExecutionStats:
    """How many queued executions are in one active status (pending, running or parked)."""

    status: ExecutionStatus
    executions: int
    due: int
    """Executions a worker would take now: pending or running, available, no lease left."""
    oldest_due_at: datetime | None
    """When the longest-waiting due execution fell due (available, and its lease over);
    ``None``: none is due."""


_MS = timedelta(milliseconds=1)


def _milliseconds(value: timedelta) -> int:
    return value // _MS


@dataclass(frozen=True, slots=True)
class DurableExecutionPolicy:
    """Leases and retries of queued executions; captured by each execution at acceptance.

    ``lease_duration``: how long a worker owns an execution without a heartbeat.
    ``initial_delay`` doubles after each failed attempt up to ``max_delay``; after
    ``max_attempts`` attempts of one command the execution parks. Durations are a ``timedelta``
    or seconds, whole milliseconds of at least 1 ms (upstream stores milliseconds).
    """

    lease_duration: timedelta = timedelta(seconds=30)
    initial_delay: timedelta = timedelta(seconds=1)
    max_delay: timedelta = timedelta(hours=1)
    max_attempts: int = 10

    def __post_init__(self) -> None:
        for name in ("lease_duration", "initial_delay", "max_delay"):
            value = timedelta(seconds=require_duration(getattr(self, name), name))
            if value < _MS or value % _MS:
                raise InvalidArgumentError(
                    f"{name} must be a whole number of milliseconds of at least 1 ms, "
                    f"got {echo(getattr(self, name))}"
                )
            object.__setattr__(self, name, value)
        if type(self.max_attempts) is not int or self.max_attempts < 1:
            raise InvalidArgumentError(
                f"max_attempts must be a positive integer, got {echo(self.max_attempts)}"
            )
        if self.max_delay < self.initial_delay:
            raise InvalidArgumentError("max_delay must be at least initial_delay")

    def backoff(self, attempts: int) -> timedelta:
        """The wait after the ``attempts``-th failed attempt (1, 2, 4, ... times initial_delay)."""
        factor: int = 2 ** min(max(attempts - 1, 0), 52)
        try:
            delay = self.initial_delay * factor
        except OverflowError:
            return self.max_delay
        return min(self.max_delay, delay)

    def to_json(self) -> dict[str, int]:
        return {
            "leaseDurationMs": _milliseconds(self.lease_duration),
            "initialDelayMs": _milliseconds(self.initial_delay),
            "maxDelayMs": _milliseconds(self.max_delay),
            "maxAttempts": self.max_attempts,
        }

    @classmethod
    def from_json(cls, data: object) -> DurableExecutionPolicy:
        read = JsonReader(data, "DurableExecutionPolicy.from_json")
        return cls(
            lease_duration=read.integer("leaseDurationMs", minimum=1) * _MS,
            initial_delay=read.integer("initialDelayMs", minimum=1) * _MS,
            max_delay=read.integer("maxDelayMs", minimum=1) * _MS,
            max_attempts=read.integer("maxAttempts", minimum=1),
        )


@dataclass(frozen=True, slots=True)
class CommandCheckpoint:
    """One command of an execution that finished: its result and the context after it.

    ``id`` is the command's zero-based position in the execution (event commands, then onEnter
    commands), stable across retries; ``attempts`` is how many attempts it took.
    """

    id: str
    name: str
    result: CommandResult
    context: dict[str, Any]
    attempts: int
    completed_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "result": self.result.to_json(),
            "context": copy_json(self.context),
            "attempts": self.attempts,
            "completedAt": utc_text(self.completed_at, "completed_at"),
        }

    @classmethod
    def from_json(cls, data: object) -> CommandCheckpoint:
        read = JsonReader(data, "CommandCheckpoint.from_json")
        result = read.json_object("result")
        return cls(
            id=read.text("id"),
            name=read.text("name"),
            result=CommandResult.from_json(result),
            context=read.json_object("context"),
            attempts=read.integer("attempts", minimum=0),
            completed_at=read.time("completedAt"),
        )


@dataclass(slots=True)
class WorkflowExecution:
    """A queued event (``enqueue_event``) and its progress, command by command.

    The instance's state, context and history stay as they were until the whole event and its
    onEnter chain finish; ``journal`` holds what finished so far. ``result`` is set once the
    execution is completed. ``revision`` is the optimistic-lock counter of the record.
    """

    uuid: UUID
    workflow_instance_uuid: UUID
    workflow_name: str
    event_name: str
    idempotency_key: str
    idempotency_fingerprint: str | None
    status: ExecutionStatus
    revision: int
    definition: dict[str, Any]
    best_effort_commands: list[str]
    instance_version: int
    from_state: str
    initial_context: dict[str, Any]
    metadata: dict[str, Any]
    subject: Any
    trigger_metadata: dict[str, Any]
    journal: list[CommandCheckpoint]
    result: ExecutionResult | None
    attempts: int
    last_error: str | None
    available_at: datetime
    lease_token: str | None
    lease_until: datetime | None
    created_at: datetime
    updated_at: datetime
    policy: DurableExecutionPolicy
    max_on_enter_depth: int
    rejected_by: str | None = None
    has_subject: bool = field(default=True, repr=False)

    @property
    def is_active(self) -> bool:
        """Whether it occupies its instance (pending, running or parked)."""
        return self.status in ACTIVE_STATUSES

    def to_json(self) -> dict[str, Any]:
        """Upstream's ``execution_json`` (optional keys left out when unset)."""
        out: dict[str, Any] = {
            "uuid": str(self.uuid),
            "workflowInstanceUuid": str(self.workflow_instance_uuid),
            "workflowName": self.workflow_name,
            "eventName": self.event_name,
            "idempotencyKey": self.idempotency_key,
        }
        if self.idempotency_fingerprint is not None:
            out["idempotencyFingerprint"] = self.idempotency_fingerprint
        out.update(
            {
                "status": self.status,
                "revision": self.revision,
                "definition": copy_json(self.definition),
                "bestEffortCommands": list(self.best_effort_commands),
                "instanceVersion": self.instance_version,
                "fromState": self.from_state,
                "initialContext": copy_json(self.initial_context),
                "metadata": copy_json(self.metadata),
            }
        )
        if self.has_subject:
            out["subject"] = copy_json(self.subject)
        out["triggerMetadata"] = copy_json(self.trigger_metadata)
        out["journal"] = [checkpoint.to_json() for checkpoint in self.journal]
        if self.rejected_by is not None:
            out["rejectedBy"] = self.rejected_by
        out.update(
            {
                "result": None if self.result is None else self.result.to_json(),
                "attempts": self.attempts,
                "lastError": self.last_error,
                "availableAt": utc_text(self.available_at, "available_at"),
                "leaseToken": self.lease_token,
                "leaseUntil": optional_utc_text(self.lease_until, "lease_until"),
                "createdAt": utc_text(self.created_at, "created_at"),
                "updatedAt": utc_text(self.updated_at, "updated_at"),
                "policy": self.policy.to_json(),
                "maxOnEnterDepth": self.max_on_enter_depth,
            }
        )
        return out

    @classmethod
    def from_json(cls, data: object) -> WorkflowExecution:
        """Read ``execution_json`` written by either runtime; InvalidArgumentError names a bad
        field."""
        read = JsonReader(data, "WorkflowExecution.from_json")
        status = read.text("status")
        if status not in EXECUTION_STATUSES:
            raise InvalidArgumentError(
                f"{read.name('status')} must be one of {list(EXECUTION_STATUSES)}, "
                f"got {echo(status)}"
            )
        result = read.optional("result")
        best_effort = read.json_list("bestEffortCommands")
        if not all(isinstance(name, str) for name in best_effort):
            raise InvalidArgumentError(f"{read.name('bestEffortCommands')} must hold strings")
        raw: Any = data
        return cls(
            uuid=read.uuid("uuid"),
            workflow_instance_uuid=read.uuid("workflowInstanceUuid"),
            workflow_name=read.text("workflowName"),
            event_name=read.text("eventName"),
            idempotency_key=read.text("idempotencyKey"),
            idempotency_fingerprint=read.optional_text("idempotencyFingerprint"),
            status=cast(ExecutionStatus, status),
            revision=read.integer("revision", minimum=0),
            definition=read.json_object("definition"),
            best_effort_commands=list(best_effort),
            instance_version=read.integer("instanceVersion", minimum=0),
            from_state=read.text("fromState"),
            initial_context=read.json_object("initialContext"),
            metadata=read.json_object("metadata", default_empty=True),
            subject=copy_json(read.optional("subject")),
            trigger_metadata=read.json_object("triggerMetadata", default_empty=True),
            journal=[CommandCheckpoint.from_json(item) for item in read.json_list("journal")],
            result=None if result is None else ExecutionResult.from_json(result),
            attempts=read.integer("attempts", minimum=0),
            last_error=read.optional_text("lastError"),
            available_at=read.time("availableAt"),
            lease_token=read.optional_text("leaseToken"),
            lease_until=read.optional_time("leaseUntil"),
            created_at=read.time("createdAt"),
            updated_at=read.time("updatedAt"),
            policy=DurableExecutionPolicy.from_json(read.required("policy")),
            max_on_enter_depth=read.integer("maxOnEnterDepth", minimum=1),
            rejected_by=read.optional_text("rejectedBy"),
            has_subject="subject" in raw,
        )
