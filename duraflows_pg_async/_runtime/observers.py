"""Observers: the states one transaction entered, handed to them after COMMIT."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from duraflows_pg_async._core.model import WorkflowInstance

from .execution import StateEnterEvent, freeze, maybe_await

__all__ = ["EnteredStates", "Observer"]

logger = logging.getLogger("duraflows_pg_async")

Observer = Callable[[StateEnterEvent], Any]
"""``fn(event)``, sync or async, called after COMMIT for each state entered; errors are logged."""


class EnteredStates:
    """The states entered in one transaction, queued for the observers.

    It shares the runtime's list of observers, so that it sees the observers of the moment: a
    state is queued (its snapshots taken) only while some observer listens.
    """

    __slots__ = ("_observers", "events")

    def __init__(self, observers: list[Observer]) -> None:
        self._observers = observers
        self.events: list[StateEnterEvent] = []

    def record(
        self,
        instance: WorkflowInstance,
        from_state: str | None,
        transition_uuid: UUID,
        trigger_event: str | None,
        trigger_metadata: Mapping[str, Any],
        now: datetime,
    ) -> None:
        """Queue the entry of ``instance`` into its current state."""
        if self._observers:
            self.events.append(
                StateEnterEvent(
                    workflow_name=instance.workflow_name,
                    instance_uuid=instance.uuid,
                    state=instance.current_state,
                    from_state=from_state,
                    to_state=instance.current_state,
                    transition_uuid=transition_uuid,
                    trigger_event=trigger_event,
                    context=freeze(instance.context),
                    metadata=freeze(instance.metadata),
                    trigger_metadata=freeze(trigger_metadata),
                    occurred_at=now,
                )
            )

    async def notify(self) -> None:
        """Call every observer for every queued entry, in order; an observer's error is logged."""
        for event in self.events:
            for observer in list(self._observers):
                try:
                    await maybe_await(observer(event))
                except Exception:
                    logger.warning(
                        "duraflows: observer %r failed for instance %s entering %r",
                        observer,
                        event.instance_uuid,
                        event.state,
                        exc_info=True,
                    )
