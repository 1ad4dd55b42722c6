"""Conformance data: valid instances with any field overridden."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from duraflows_pg_async._core.model import WorkflowInstance

__all__ = ["make_instance"]


def make_instance(**overrides: Any) -> WorkflowInstance:
    """A new, valid [`WorkflowInstance`][duraflows_pg_async.WorkflowInstance]; keyword arguments
    override any field.

    Defaults: a random ``uuid4()``, workflow ``"conformance"`` in state ``"start"``, version 0,
    empty ``context`` and ``metadata``, no deadline, no definition version, no timeout retry, and
    timezone-aware UTC times that all differ: ``created_at`` two hours ago, ``last_transition_at``
    one hour ago, ``updated_at`` now.
    """
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "uuid": uuid4(),
        "workflow_name": "conformance",
        "current_state": "start",
        "version": 0,
        "context": {},
        "metadata": {},
        "expires_at": None,
        # Distinct times, so that a store that reads or writes one timestamp column for another
        # fails the round-trip tests instead of passing on equal values.
        "last_transition_at": now - timedelta(hours=1),
        "created_at": now - timedelta(hours=2),
        "updated_at": now,
        "definition_version": None,
        "timeout_retry": None,
    }
    unknown = set(overrides) - set(fields)
    if unknown:
        raise TypeError(f"make_instance() got unknown fields: {', '.join(sorted(unknown))}")
    fields.update(overrides)
    return WorkflowInstance(**fields)
