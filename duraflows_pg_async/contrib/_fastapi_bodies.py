"""The REST router's bodies: requests checked before they reach the runtime, and the response
schemas its OpenAPI document shows (the routes answer the records' ``to_json()``)."""

# No ``from __future__ import annotations``: pydantic reads these models' annotations at
# class creation.

import math
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from duraflows_pg_async._core.json_form import optional_utc_text
from duraflows_pg_async._core.model import StateStats
from duraflows_pg_async._runtime.execution import AvailableEvent
from duraflows_pg_async._runtime.queries import MAX_PAGE_SIZE

# Request bodies are small JSON documents; a larger one is refused (413) before it is parsed.
DEFAULT_MAX_BODY_BYTES = 64 * 1024
# Numbers stored in jsonb are also read by JavaScript (@duraflows/pg), where a number is a double.
MAX_SAFE_INTEGER = 2**53 - 1
MAX_JSON_DEPTH = 32
# Error messages are clipped to this many characters, whatever they quote.
MAX_DETAIL = 300
MAX_ERRORS = 10
MAX_NAME = 255
MAX_HISTORY_LIMIT = 500
MAX_PARKED_LIMIT = 500
MAX_OFFSET = 10_000_000
MAX_LIST_LIMIT = MAX_PAGE_SIZE
# list_instances refuses a longer cursor anyway; the query parameter is bounded before it.
MAX_CURSOR = 2000


def clip(text: str, limit: int = MAX_DETAIL) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bounded_json(value: Any) -> Any:
    """``value`` itself if every number is a safe integer or a finite float and it is nested at
    most MAX_JSON_DEPTH levels; otherwise ValueError naming where (a 422)."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        if isinstance(item, int):
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise ValueError(
                    f"{where or 'value'}: integers must lie within -{MAX_SAFE_INTEGER} to "
                    f"{MAX_SAFE_INTEGER}"
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{where or 'value'}: numbers must be finite")
        elif isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise ValueError(f"{where or 'value'}: nested deeper than {MAX_JSON_DEPTH} levels")
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                if isinstance(key, int):
                    path = f"{where}[{key}]"
                else:
                    path = f"{where}.{clip(key, 40)}" if where else clip(key, 40)
                stack.append((child, path, depth + 1))
    return value


_JsonObject = Annotated[dict[str, Any], AfterValidator(bounded_json)]
_JsonValue = Annotated[Any, AfterValidator(bounded_json)]
_Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
# The runtime checks keys and fingerprints (at most 256 bytes, not blank): a 422 either way.
_Key = Annotated[str, Field(min_length=1, max_length=256)]


# --- request bodies --------------------------------------------------------------------------


class _RequestBody(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=False, extra="forbid")


class CreateInstanceRequest(_RequestBody):
    """``POST {prefix}``: upstream's ``CreateWorkflowInstanceInput``."""

    workflow_name: _Name
    context: _JsonObject | None = None
    metadata: _JsonObject | None = None
    trigger_metadata: _JsonObject | None = None


class TriggerEventRequest(_RequestBody):
    """``POST {prefix}/{uuid}/events/{event}``; a repeated ``idempotencyKey`` replays the first
    result."""

    subject: _JsonValue = None
    trigger_metadata: _JsonObject | None = None
    idempotency_key: _Key | None = None
    idempotency_fingerprint: _Key | None = None


class EnqueueEventRequest(_RequestBody):
    """``POST {prefix}/{uuid}/executions/{event}``: a queued event needs its idempotency key."""

    idempotency_key: _Key
    idempotency_fingerprint: _Key | None = None
    subject: _JsonValue = None
    trigger_metadata: _JsonObject | None = None


# --- response schemas (OpenAPI only: the routes answer the records' to_json()) ----------------


class _ResponseBody(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class TimeoutRetryResponse(_ResponseBody):
    """``TimeoutRetry.to_json()``."""

    attempts: int
    last_error: str
    retry_at: str | None
    parked_at: str | None


class WorkflowInstanceResponse(_ResponseBody):
    """``WorkflowInstance.to_json()``: every key present, unset ones ``null``."""

    uuid: UUID
    workflow_name: str
    current_state: str
    version: int
    definition_version: int | None
    expires_at: str | None
    timeout_retry: TimeoutRetryResponse | None
    last_transition_at: str
    context: dict[str, Any]
    metadata: dict[str, Any]
    created_at: str
    updated_at: str
    claimed_until: str | None


class CommandResultResponse(_ResponseBody):
    """``CommandResult.to_json()``: unset keys left out."""

    ok: bool
    code: str | None = None
    message: str | None = None
    metadata: dict[str, Any] | None = None
    error: Any = None


class HistoryRecordResponse(_ResponseBody):
    """``HistoryRecord.to_json()``: upstream's ``WorkflowHistoryRecord``."""

    workflow_instance_uuid: UUID
    from_state: str | None
    event_name: str
    to_state: str
    outcome: Literal["success", "failure", "guard-rejected"]
    error_message: str | None = None
    rejected_by: str | None = None
    command_results_json: list[CommandResultResponse]
    trigger_metadata: dict[str, Any]
    definition_version: int | None = None
    created_at: str | None = None
    uuid: UUID | None = None


class ExecutionResultResponse(_ResponseBody):
    """``ExecutionResult.to_json()``: upstream's ``WorkflowExecutionResult``."""

    outcome: Literal["success", "failure", "guard-rejected"]
    from_state: str
    to_state: str
    command_results: list[CommandResultResponse]
    history_uuid: UUID
    rejected_by: str | None = None


class AvailableEventResponse(_ResponseBody):
    """Upstream's ``AvailableWorkflowEvent`` (guards are not evaluated)."""

    event_name: str
    target_state: str | None = None
    error_state: str | None = None
    has_commands: bool
    has_timeout: bool
    metadata: dict[str, Any] | None = None


class CommandCheckpointResponse(_ResponseBody):
    """One finished command of a queued execution."""

    id: str
    name: str
    result: CommandResultResponse
    context: dict[str, Any]
    attempts: int
    completed_at: str


class DurableExecutionPolicyResponse(_ResponseBody):
    """``DurableExecutionPolicy.to_json()``."""

    lease_duration_ms: int
    initial_delay_ms: int
    max_delay_ms: int
    max_attempts: int


class WorkflowExecutionResponse(_ResponseBody):
    """``WorkflowExecution.to_json()``: a queued event and its journal."""

    uuid: UUID
    workflow_instance_uuid: UUID
    workflow_name: str
    event_name: str
    idempotency_key: str
    idempotency_fingerprint: str | None = None
    status: Literal["pending", "running", "parked", "completed", "cancelled"]
    revision: int
    definition: dict[str, Any]
    best_effort_commands: list[str]
    instance_version: int
    from_state: str
    initial_context: dict[str, Any]
    metadata: dict[str, Any]
    subject: Any = None
    trigger_metadata: dict[str, Any]
    journal: list[CommandCheckpointResponse]
    rejected_by: str | None = None
    result: ExecutionResultResponse | None
    attempts: int
    last_error: str | None
    available_at: str
    lease_token: str | None
    lease_until: str | None
    created_at: str
    updated_at: str
    policy: DurableExecutionPolicyResponse
    max_on_enter_depth: int


class InstancePageResponse(_ResponseBody):
    """``GET {prefix}``: one page of instances in ascending uuid order; ``nextCursor`` is the
    ``after`` of the next page (with the same filters), ``null`` on the last."""

    items: list[WorkflowInstanceResponse]
    next_cursor: str | None


class StateStatsResponse(_ResponseBody):
    """``GET {prefix}/stats``: one workflow and state; ``oldestDueAt`` is when the
    longest-waiting due instance fell due (``null``: none is due)."""

    workflow_name: str
    state: str
    instances: int
    due: int
    retrying: int
    parked: int
    claimed: int
    oldest_due_at: str | None


class ErrorResponse(_ResponseBody):
    """Every error: ``detail`` is a clipped message, or pydantic's errors without the input;
    ``state`` is the instance's state when an event is not available in it, ``executionStatus``
    the status of an execution that cannot be retried or cancelled."""

    detail: str | list[dict[str, Any]]
    state: str | None = None
    execution_status: str | None = None


def available_event_json(event: AvailableEvent) -> dict[str, Any]:
    """Upstream's ``AvailableWorkflowEvent``: ``targetState``, ``errorState`` and ``metadata``
    only when set."""
    out: dict[str, Any] = {"eventName": event.event_name}
    if event.target_state is not None:
        out["targetState"] = event.target_state
    if event.error_state is not None:
        out["errorState"] = event.error_state
    out["hasCommands"] = event.has_commands
    out["hasTimeout"] = event.has_timeout
    if event.metadata:
        out["metadata"] = dict(event.metadata)
    return out


def state_stats_json(row: StateStats) -> dict[str, Any]:
    """A ``StateStats`` as camelCase JSON, ``oldestDueAt`` in UTC text or ``null``."""
    return {
        "workflowName": row.workflow_name,
        "state": row.state,
        "instances": row.instances,
        "due": row.due,
        "retrying": row.retrying,
        "parked": row.parked,
        "claimed": row.claimed,
        "oldestDueAt": optional_utc_text(row.oldest_due_at, "StateStats.oldest_due_at"),
    }
