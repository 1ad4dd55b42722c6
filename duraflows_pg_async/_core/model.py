"""The persistence model: instances, history records, command results, stored definitions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast
from uuid import UUID

from duraflows_pg_async._core.echo import echo
from duraflows_pg_async.errors import InvalidArgumentError

from .json_form import JsonReader, copy_json, optional_utc_text, utc_text

__all__ = [
    "CommandResult",
    "ExecutionOutcome",
    "ExecutionResult",
    "HistoryOutcome",
    "HistoryRecord",
    "InstanceStatus",
    "StateStats",
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

    def to_json(self) -> dict[str, Any]:
        """Upstream's ``WorkflowTimeoutRetry``: ``{attempts, lastError, retryAt, parkedAt}``.

        Timestamps as in [`WorkflowInstance.to_json`][duraflows_pg_async.WorkflowInstance.to_json].
        """
        return {
            "attempts": self.attempts,
            "lastError": self.last_error,
            "retryAt": optional_utc_text(self.retry_at, "TimeoutRetry.retry_at"),
            "parkedAt": optional_utc_text(self.parked_at, "TimeoutRetry.parked_at"),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TimeoutRetry:
        """Read [`to_json`][duraflows_pg_async.TimeoutRetry.to_json]'s shape back.

        A malformed field raises `InvalidArgumentError` naming it.
        """
        return _retry_from(JsonReader(data, "TimeoutRetry.from_json"))


def _retry_from(read: JsonReader) -> TimeoutRetry:
    return TimeoutRetry(
        attempts=read.integer("attempts", minimum=1),
        last_error=read.text("lastError", non_empty=False),
        retry_at=read.optional_time("retryAt"),
        parked_at=read.optional_time("parkedAt"),
    )


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

    def to_json(self) -> dict[str, Any]:
        """Upstream's ``WorkflowInstance`` object, ready for ``json.dumps``.

        The keys are upstream's: ``uuid``, ``workflowName``, ``currentState``, ``version``,
        ``definitionVersion``, ``expiresAt``, ``timeoutRetry`` (see
        [`TimeoutRetry.to_json`][duraflows_pg_async.TimeoutRetry.to_json]), ``lastTransitionAt``,
        ``context``, ``metadata``, ``createdAt``, ``updatedAt``; and ours, ``claimedUntil``.
        Every key is present, unset ones as ``null``. The uuid is a lowercase string. Timestamps
        are ISO-8601 UTC strings with microseconds, ``"2026-05-01T10:01:02.118123Z"`` (a naive
        datetime is taken as UTC), which JavaScript's ``new Date()`` reads to the millisecond.
        ``context`` and ``metadata`` are deep copies.
        """
        return {
            "uuid": str(self.uuid),
            "workflowName": self.workflow_name,
            "currentState": self.current_state,
            "version": self.version,
            "definitionVersion": self.definition_version,
            "expiresAt": optional_utc_text(self.expires_at, "WorkflowInstance.expires_at"),
            "timeoutRetry": None if self.timeout_retry is None else self.timeout_retry.to_json(),
            "lastTransitionAt": utc_text(
                self.last_transition_at, "WorkflowInstance.last_transition_at"
            ),
            "context": copy_json(self.context),
            "metadata": copy_json(self.metadata),
            "createdAt": utc_text(self.created_at, "WorkflowInstance.created_at"),
            "updatedAt": utc_text(self.updated_at, "WorkflowInstance.updated_at"),
            "claimedUntil": optional_utc_text(self.claimed_until, "WorkflowInstance.claimed_until"),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkflowInstance:
        """Read [`to_json`][duraflows_pg_async.WorkflowInstance.to_json]'s shape back.

        Timestamps need a time zone (``Z`` or ``+HH:MM``) and come back as UTC datetimes; a
        missing nullable key reads as ``None``; unknown keys are ignored. A malformed field
        raises `InvalidArgumentError` naming it.
        """
        read = JsonReader(data, "WorkflowInstance.from_json")
        retry = read.child("timeoutRetry")
        return cls(
            uuid=read.uuid("uuid"),
            workflow_name=read.text("workflowName"),
            current_state=read.text("currentState"),
            version=read.integer("version", minimum=0),
            definition_version=read.optional_integer("definitionVersion", minimum=1),
            expires_at=read.optional_time("expiresAt"),
            timeout_retry=None if retry is None else _retry_from(retry),
            last_transition_at=read.time("lastTransitionAt"),
            context=read.json_object("context"),
            metadata=read.json_object("metadata"),
            created_at=read.time("createdAt"),
            updated_at=read.time("updatedAt"),
            claimed_until=read.optional_time("claimedUntil"),
        )


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
        """Read the stored shape back; a missing ``ok`` reads as ``False``."""
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

    def to_json(self) -> dict[str, Any]:
        """Upstream's ``WorkflowHistoryRecord`` object, ready for ``json.dumps``.

        The keys are ``workflowInstanceUuid``, ``fromState``, ``eventName``, ``toState``,
        ``outcome``, ``commandResultsJson`` and ``triggerMetadata``; ``errorMessage``,
        ``rejectedBy``, ``definitionVersion``, ``createdAt`` and our ``uuid`` only when set
        (JavaScript drops ``undefined``). ``commandResultsJson`` is upstream's property name, so
        a TypeScript service reads the same object; it holds each
        [`CommandResult.to_json`][duraflows_pg_async.CommandResult.to_json]. UUIDs and
        timestamps are strings, as in
        [`WorkflowInstance.to_json`][duraflows_pg_async.WorkflowInstance.to_json].
        """
        out: dict[str, Any] = {
            "workflowInstanceUuid": str(self.workflow_instance_uuid),
            "fromState": self.from_state,
            "eventName": self.event_name,
            "toState": self.to_state,
            "outcome": self.outcome,
        }
        if self.error_message is not None:
            out["errorMessage"] = self.error_message
        if self.rejected_by is not None:
            out["rejectedBy"] = self.rejected_by
        out["commandResultsJson"] = [r.to_json() for r in self.command_results]
        out["triggerMetadata"] = copy_json(self.trigger_metadata)
        if self.definition_version is not None:
            out["definitionVersion"] = self.definition_version
        if self.created_at is not None:
            out["createdAt"] = utc_text(self.created_at, "HistoryRecord.created_at")
        if self.uuid is not None:
            out["uuid"] = str(self.uuid)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HistoryRecord:
        """Read [`to_json`][duraflows_pg_async.HistoryRecord.to_json]'s shape back.

        A missing ``triggerMetadata`` reads as ``{}``, any other missing optional key as
        ``None``; unknown keys are ignored. A malformed field raises `InvalidArgumentError`
        naming it.
        """
        read = JsonReader(data, "HistoryRecord.from_json")
        return cls(
            workflow_instance_uuid=read.uuid("workflowInstanceUuid"),
            from_state=read.optional_text("fromState"),
            event_name=read.text("eventName"),
            to_state=read.text("toState"),
            outcome=_outcome_from(read),
            error_message=read.optional_text("errorMessage"),
            rejected_by=read.optional_text("rejectedBy"),
            command_results=_command_results_from(read),
            trigger_metadata=read.json_object("triggerMetadata", default_empty=True),
            definition_version=read.optional_integer("definitionVersion", minimum=1),
            created_at=read.optional_time("createdAt"),
            uuid=read.optional_uuid("uuid"),
        )


def _outcome_from(read: JsonReader) -> HistoryOutcome:
    outcome: object = read.required("outcome")
    if not isinstance(outcome, str) or outcome not in HISTORY_OUTCOMES:
        raise InvalidArgumentError(
            f"{read.name('outcome')} must be one of {sorted(HISTORY_OUTCOMES)}, got {echo(outcome)}"
        )
    return cast(HistoryOutcome, outcome)


def _command_results_from(read: JsonReader) -> list[CommandResult]:
    results = []
    for index, item in enumerate(read.json_list("commandResultsJson")):
        if not isinstance(item, Mapping) or not isinstance(item.get("ok"), bool):
            raise InvalidArgumentError(
                f"{read.name(f'commandResultsJson[{index}]')} must be a JSON object with a "
                f"boolean ok, got {echo(item)}"
            )
        results.append(CommandResult.from_json(copy_json(item)))
    return results


@dataclass(frozen=True, slots=True)
class StoredWorkflowDefinition:
    """A definition snapshot as stored in ``workflow_definitions``; the first content wins."""

    workflow_name: str
    version: int
    content_hash: str
    definition_json: dict[str, Any]
    registered_at: datetime

    def to_json(self) -> dict[str, Any]:
        """Upstream's ``StoredWorkflowDefinition``: ``{workflowName, version, contentHash,
        definitionJson, registeredAt}``, ready for ``json.dumps``.

        ``definitionJson`` is a copy; ``registeredAt`` as the timestamps of
        [`WorkflowInstance.to_json`][duraflows_pg_async.WorkflowInstance.to_json].
        """
        return {
            "workflowName": self.workflow_name,
            "version": self.version,
            "contentHash": self.content_hash,
            "definitionJson": copy_json(self.definition_json),
            "registeredAt": utc_text(self.registered_at, "StoredWorkflowDefinition.registered_at"),
        }


InstanceStatus = Literal["due", "retrying", "parked", "claimed"]
"""A timeout status ``list_instances`` filters by (the sweep's view of an instance's timeout).

``"due"``: a sweep would take it now (its deadline, retry time or ended claim has passed, and it
is not parked); ``"retrying"``: a timeout failed and waits for a retry; ``"parked"``: retries are
exhausted; ``"claimed"``: a sweep took it (the claim ends at the stored retry time). Due overlaps
retrying (a retry whose time has come) and claimed (a claim that has ended).
"""
INSTANCE_STATUSES: tuple[str, ...] = ("due", "retrying", "parked", "claimed")


@dataclass(frozen=True, slots=True)
class StateStats:
    """How many instances of one workflow are in one state, and their timeout statuses."""

    workflow_name: str
    state: str
    instances: int
    due: int
    """Instances a sweep would take now."""
    retrying: int
    parked: int
    claimed: int
    oldest_due_at: datetime | None
    """When the longest-waiting due instance fell due (``None``: none is due)."""


ExecutionOutcome = Literal["success", "failure", "guard-rejected"]
"""How an event ended: moved on, routed to an error state, or turned down by its guard."""


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """The outcome of ``trigger_event``.

    ``to_state`` is the final state after any onEnter chain; ``command_results`` holds the event's
    results followed by every onEnter hop's; ``history_uuid`` is the last history row written.
    """

    outcome: ExecutionOutcome
    from_state: str
    to_state: str
    command_results: list[CommandResult]
    history_uuid: UUID
    rejected_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Upstream's JSON shape (camelCase; ``rejectedBy`` only when set): the form an
        idempotency receipt stores, readable by the TypeScript runtime too."""
        out: dict[str, Any] = {
            "outcome": self.outcome,
            "fromState": self.from_state,
            "toState": self.to_state,
            "commandResults": [result.to_json() for result in self.command_results],
            "historyUuid": str(self.history_uuid),
        }
        if self.rejected_by is not None:
            out["rejectedBy"] = self.rejected_by
        return out

    @classmethod
    def from_json(cls, data: object) -> ExecutionResult:
        """Read ``to_json()``'s shape back, as written by either runtime.

        Raises InvalidArgumentError naming the first field that does not fit.
        """
        if not isinstance(data, Mapping):
            raise InvalidArgumentError(f"result must be a JSON object, got {echo(data)}")

        def text(key: str, *, optional: bool = False) -> Any:
            value = data.get(key)
            if value is None and optional:
                return None
            if not isinstance(value, str):
                raise InvalidArgumentError(f"result.{key} must be a string, got {echo(value)}")
            return value

        outcome = text("outcome")
        if outcome not in ("success", "failure", "guard-rejected"):
            raise InvalidArgumentError(f"result.outcome is not an outcome, got {echo(outcome)}")
        results = data.get("commandResults", [])
        if not isinstance(results, list) or not all(isinstance(r, Mapping) for r in results):
            raise InvalidArgumentError(
                f"result.commandResults must be a list of objects, got {echo(results)}"
            )
        history = text("historyUuid")
        try:
            history_uuid = UUID(history)
        except ValueError:
            raise InvalidArgumentError(
                f"result.historyUuid must be a UUID, got {echo(history)}"
            ) from None
        return cls(
            outcome=outcome,
            from_state=text("fromState"),
            to_state=text("toState"),
            command_results=[CommandResult.from_json(result) for result in results],
            history_uuid=history_uuid,
            rejected_by=text("rejectedBy", optional=True),
        )
