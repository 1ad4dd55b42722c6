"""WorkflowHandle: the runtime's operations on one instance."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from uuid import UUID

from duraflows_pg_async._core.executions import WorkflowExecution
from duraflows_pg_async._core.model import ExecutionResult, HistoryRecord, WorkflowInstance

from .execution import AvailableEvent

if TYPE_CHECKING:
    from .runtime import WorkflowRuntime

__all__ = ["WorkflowHandle"]


class WorkflowHandle:
    """``runtime.handle(uuid)``: the runtime's per-instance calls without repeating the uuid."""

    __slots__ = ("runtime", "uuid")

    def __init__(self, runtime: WorkflowRuntime, instance_uuid: UUID) -> None:
        self.runtime = runtime
        self.uuid = instance_uuid

    async def get_instance(self) -> WorkflowInstance | None:
        return await self.runtime.get_instance(self.uuid)

    async def trigger_event(
        self,
        event_name: str,
        *,
        subject: Any = None,
        trigger_metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        idempotency_fingerprint: str | None = None,
    ) -> ExecutionResult:
        """``WorkflowRuntime.trigger_event`` on this instance."""
        return await self.runtime.trigger_event(
            self.uuid,
            event_name,
            subject=subject,
            trigger_metadata=trigger_metadata,
            idempotency_key=idempotency_key,
            idempotency_fingerprint=idempotency_fingerprint,
        )

    async def enqueue_event(
        self,
        event_name: str,
        *,
        idempotency_key: str,
        idempotency_fingerprint: str | None = None,
        subject: Any = None,
        trigger_metadata: Mapping[str, Any] | None = None,
    ) -> WorkflowExecution:
        """``WorkflowRuntime.enqueue_event`` on this instance."""
        return await self.runtime.enqueue_event(
            self.uuid,
            event_name,
            idempotency_key=idempotency_key,
            idempotency_fingerprint=idempotency_fingerprint,
            subject=subject,
            trigger_metadata=trigger_metadata,
        )

    async def get_available_events(self) -> list[AvailableEvent]:
        return await self.runtime.get_available_events(self.uuid)

    async def get_history(self, *, limit: int = 50, offset: int = 0) -> list[HistoryRecord]:
        return await self.runtime.get_history(self.uuid, limit=limit, offset=offset)
