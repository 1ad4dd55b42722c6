"""The CLI's text forms of instances and timestamps (its JSON is the model's ``to_json()``)."""

from __future__ import annotations

from datetime import UTC, datetime

from duraflows_pg_async._core.model import WorkflowInstance

from .output import json_text, one_line, safe_text

__all__ = ["when", "retry_text", "instance_text"]


def when(value: datetime | None) -> str:
    """A timestamp in UTC to the millisecond, or ``-``."""
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


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


def instance_text(instance: WorkflowInstance, queued: str | None = None) -> str:
    """An instance as aligned ``name  value`` lines, every value escaped; ``queued``: what the
    line of its queued execution says (no such line when None)."""
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
        *([("queued execution", queued)] if queued is not None else []),
        ("last error", one_line(retry.last_error if retry else None, 200) or "-"),
        ("last transition", when(instance.last_transition_at)),
        ("created at", when(instance.created_at)),
        ("updated at", when(instance.updated_at)),
        ("context", json_text(instance.context, indent=None)),
        ("metadata", json_text(instance.metadata, indent=None)),
    ]
    width = max(len(name) for name, _ in fields)
    return "\n".join(f"{name.ljust(width)}  {safe_text(value)}" for name, value in fields)
