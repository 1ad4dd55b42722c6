"""The rules every write of an instance keeps: UTC times, the next version, the state's deadline."""

from __future__ import annotations

from datetime import UTC, datetime

from duraflows_pg_async._core.contract import Clock
from duraflows_pg_async._core.model import WorkflowInstance
from duraflows_pg_async._core.validate import require_aware
from duraflows_pg_async._definitions.model import State, WorkflowDefinition

__all__ = ["deadline", "next_version", "utc_now"]


def utc_now(clock: Clock) -> datetime:
    """``clock.now()`` in UTC.

    Deadlines are now + a duration, and adding a timedelta to a zone-aware local time is
    wall-clock arithmetic, an hour off across a daylight-saving change.
    """
    now = require_aware(clock.now(), "clock.now()")
    return now if now.tzinfo is UTC else now.astimezone(UTC)


def next_version(
    instance: WorkflowInstance,
    now: datetime,
    *,
    definition: WorkflowDefinition | None = None,
    transition: bool = False,
) -> None:
    """Mark ``instance`` as changed at ``now``, before the store writes it.

    The store's optimistic check expects version + 1. ``definition``: the version that ruled the
    change, which the instance is pinned to from now on. ``transition``: the change is a
    transition (an event or a cleared deadline), which also moves ``last_transition_at``.
    """
    instance.version += 1
    instance.updated_at = now
    if transition:
        instance.last_transition_at = now
    if definition is not None:
        instance.definition_version = definition.version


def deadline(state: State, now: datetime) -> datetime | None:
    """When the timeout of ``state`` fires if it is entered at ``now``; None if it has none."""
    for event in state.events.values():
        if event.timeout is not None:
            return now + event.timeout.to_timedelta()
    return None
