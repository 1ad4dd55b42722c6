"""MemoryWorkflowIdempotencyStore: event idempotency receipts in memory."""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from uuid import UUID

from duraflows_pg_async._core.idempotency import (
    IdempotencyRecord,
    checked_receipt_key,
    checked_reservation,
    checked_result,
)
from duraflows_pg_async.errors import DatabaseError, WorkflowError, WorkflowInstanceNotFoundError

from .locks import FOR_UPDATE, KEY_SHARE
from .round_trip import as_jsonb, copy_jsonb
from .store_base import MemoryStore, statement
from .transaction import Level

__all__ = ["MemoryWorkflowIdempotencyStore"]


class MemoryWorkflowIdempotencyStore(MemoryStore):
    """Receipts of keyed events in memory. Every method needs the runner's transaction
    (NoActiveTransactionError otherwise); receipts commit and roll back with it, savepoints
    included, as PostgreSQL's do."""

    __slots__ = ()

    async def find(self, instance_uuid: UUID | str, key: str) -> IdempotencyRecord | None:
        """The receipt of ``key`` on the instance, or None."""
        uuid, text = checked_receipt_key(instance_uuid, key)

        async def op(level: Level) -> IdempotencyRecord | None:
            row = self._database._receipt(level, (uuid, text))
            return None if row is None else replace(row, result=copy_jsonb(row.result))

        return await statement(
            self._database,
            f"find idempotency key of instance {uuid}",
            op,
            requires_transaction="WorkflowIdempotencyStore.find",
        )

    async def reserve(
        self,
        instance_uuid: UUID | str,
        key: str,
        *,
        event_name: str,
        fingerprint: str | None = None,
    ) -> None:
        """Insert a reservation (no result yet). A key already reserved on the instance raises
        DatabaseError (and, as any failed statement, aborts the transaction); the stored receipt
        is left as it is. An unknown instance raises
        WorkflowInstanceNotFoundError."""
        uuid, text, name, print_ = checked_reservation(instance_uuid, key, event_name, fingerprint)
        database = self._database
        what = f"reserve idempotency key of instance {uuid}"

        async def op(level: Level) -> None:
            if database._instance(level, uuid) is None:
                raise WorkflowInstanceNotFoundError(uuid)
            # The foreign key's lock on the instance, then the key's own: a second transaction
            # inserting the same key waits for the first to end, as on the primary key.
            await database._locks.acquire(level, uuid, KEY_SHARE, what)
            undo = await database._locks.acquire(level, ("receipt", uuid, text), FOR_UPDATE, what)
            if database._receipt(level, (uuid, text)) is not None:
                database._locks.undo(level, undo)
                raise DatabaseError(f"{what}: key {text!r} is already reserved (unique violation)")
            level.receipts[(uuid, text)] = IdempotencyRecord(
                workflow_instance_uuid=uuid,
                key=text,
                event_name=name,
                fingerprint=print_,
                result=None,
                created_at=level.root.started_at,
            )

        await statement(database, what, op, requires_transaction="WorkflowIdempotencyStore.reserve")

    async def complete(self, instance_uuid: UUID | str, key: str, result: dict[str, Any]) -> None:
        """Record ``result`` (a JSON object) on the reservation. A key that is not reserved, or
        already completed, raises WorkflowError."""
        uuid, text = checked_receipt_key(instance_uuid, key)
        value = as_jsonb(checked_result(result))
        database = self._database

        async def op(level: Level) -> None:
            row = database._receipt(level, (uuid, text))
            if row is None or row.result is not None:
                raise WorkflowError(
                    f"idempotency reservation {text!r} of workflow instance {uuid} is missing or "
                    "already completed"
                )
            level.receipts[(uuid, text)] = replace(row, result=value)

        await statement(
            database,
            f"complete idempotency key of instance {uuid}",
            op,
            requires_transaction="WorkflowIdempotencyStore.complete",
        )
