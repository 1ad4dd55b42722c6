"""The CLI's forms of instances and history rows: JSON objects, and text for a terminal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from duraflows_pg_async._core.model import HistoryRecord, WorkflowInstance

from .output import json_text, one_line, safe_text

__all__ = ["when", "instance_json", "history_json", "retry_text", "instance_text"]


def when(value: datetime | None) -> str:
    """A timestamp in UTC to the millisecond, or ``-``."""
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def instance_json(instance: WorkflowInstance) -> dict[str, Any]:
    """Every column of an instance, the timeout retry as an object (or null)."""
    retry = instance.timeout_retry
    return {
        "uuid": instance.uuid,
        "workflow_name": instance.workflow_name,
        "current_state": instance.current_state,
        "version": instance.version,
        "definition_version": instance.definition_version,
        "context": instance.context,
        "metadata": instance.metadata,
        "expires_at": instance.expires_at,
        "last_transition_at": instance.last_transition_at,
        "created_at": instance.created_at,
        "updated_at": instance.updated_at,
        "timeout_retry": None
        if retry is None
        else {
            "attempts": retry.attempts,
            "last_error": retry.last_error,
            "retry_at": retry.retry_at,
            "parked_at": retry.parked_at,
        },
        "claimed_until": instance.claimed_until,
    }


def history_json(record: HistoryRecord) -> dict[str, Any]:
    """Every column of a history row, the command results in their stored form."""
    return {
        "uuid": record.uuid,
        "created_at": record.created_at,
        "event_name": record.event_name,
        "from_state": record.from_state,
        "to_state": record.to_state,
        "outcome": record.outcome,
        "error_message": record.error_message,
        "rejected_by": record.rejected_by,
        "command_results": [r.to_json() for r in record.command_results],
        "trigger_metadata": record.trigger_metadata,
        "definition_version": record.definition_version,
    }


def _claim_text(instance: WorkflowInstance) -> str:
    claimed = instance.claimed_until
    if claimed is None:
        return "none"
    if claimed <= datetime.now(UTC):
        # A lapsed claim: the sweep that took the instance never finished it (a worker died or
        # stalled); any sweep takes it again.
        return f"claimed by a sweep until {when(claimed)} (lapsed: due again)"
    return f"claimed by a sweep until {when(claimed)}"


def retry_text(instance: WorkflowInstance) -> str:
    """The timeout retry, parked state or sweep claim of an instance, in words (or ``none``)."""
    retry = instance.timeout_retry
    if retry is None:
        return "none" if instance.claimed_until is None else _claim_text(instance)
    if retry.parked_at is not None:
        return f"parked at {when(retry.parked_at)} after {retry.attempts} attempts"
    return f"attempt {retry.attempts}, next at {when(retry.retry_at)}"


def instance_text(instance: WorkflowInstance) -> str:
    """An instance as aligned ``name  value`` lines, every value escaped."""
    retry = instance.timeout_retry
    fields = [
        ("uuid", str(instance.uuid)),
        ("workflow", instance.workflow_name),
        ("state", instance.current_state),
        ("version", str(instance.version)),
        ("definition version", str(instance.definition_version or "-")),
        ("expires at", when(instance.expires_at)),
        ("timeout retry", retry_text(instance) if instance.timeout_retry else "none"),
        ("sweep claim", _claim_text(instance)),
        ("last error", one_line(retry.last_error if retry else None, 200) or "-"),
        ("last transition", when(instance.last_transition_at)),
        ("created at", when(instance.created_at)),
        ("updated at", when(instance.updated_at)),
        ("context", json_text(instance.context, indent=None)),
        ("metadata", json_text(instance.metadata, indent=None)),
    ]
    width = max(len(name) for name, _ in fields)
    return "\n".join(f"{name.ljust(width)}  {safe_text(value)}" for name, value in fields)
