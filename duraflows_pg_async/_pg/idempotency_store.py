"""PgWorkflowIdempotencyStore: event idempotency receipts in ``workflow_event_idempotency``."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any
from uuid import UUID

import asyncpg

from duraflows_pg_async._core.idempotency import (
    IdempotencyRecord,
    checked_receipt_key,
    checked_reservation,
    checked_result,
)
from duraflows_pg_async._pg.error_mapping import map_optional_table_errors
from duraflows_pg_async.errors import (
    DatabaseError,
    WorkflowError,
    WorkflowInstanceNotFoundError,
)

from .codecs import decoded
from .runner import AnyConnection
from .store_base import PgStore

__all__ = ["PgWorkflowIdempotencyStore"]


def _mapped(what: str, conn: AnyConnection) -> AbstractContextManager[None]:
    return map_optional_table_errors(
        what, conn, table="workflow_event_idempotency", migration="007"
    )


def _record_from_row(row: asyncpg.Record) -> IdempotencyRecord:
    result = row["result_json"]
    return IdempotencyRecord(
        workflow_instance_uuid=row["workflow_instance_uuid"],
        key=row["idempotency_key"],
        event_name=row["event_name"],
        fingerprint=row["fingerprint"],
        result=None
        if result is None
        else decoded(result, "workflow_event_idempotency.result_json"),
        created_at=row["created_at"],
    )


class PgWorkflowIdempotencyStore(PgStore):
    """Receipts of keyed events. Every method needs the transaction that holds the instance's
    row lock (NoActiveTransactionError otherwise), so a receipt commits or rolls back, savepoints
    included, with the transition it records."""

    __slots__ = ()

    async def find(self, instance_uuid: UUID | str, key: str) -> IdempotencyRecord | None:
        """The receipt of ``key`` on the instance, or None."""
        uuid, text = checked_receipt_key(instance_uuid, key)
        conn = self._transaction_connection("WorkflowIdempotencyStore.find")
        with _mapped(f"find idempotency key of instance {uuid}", conn):
            row = await conn.fetchrow(self._q.select_receipt, uuid, text)
        return None if row is None else _record_from_row(row)

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
        conn = self._transaction_connection("WorkflowIdempotencyStore.reserve")
        what = f"reserve idempotency key of instance {uuid}"
        with _mapped(what, conn):
            try:
                await conn.execute(self._q.insert_receipt, uuid, text, name, print_)
            except asyncpg.UniqueViolationError as exc:
                raise DatabaseError(
                    f"{what}: key {text!r} is already reserved (unique violation)"
                ) from exc
            except asyncpg.ForeignKeyViolationError as exc:
                raise WorkflowInstanceNotFoundError(uuid) from exc

    async def complete(self, instance_uuid: UUID | str, key: str, result: dict[str, Any]) -> None:
        """Record ``result`` (a JSON object) on the reservation. A key that is not reserved, or
        already completed, raises WorkflowError."""
        uuid, text = checked_receipt_key(instance_uuid, key)
        value = checked_result(result)
        conn = self._transaction_connection("WorkflowIdempotencyStore.complete")
        with _mapped(f"complete idempotency key of instance {uuid}", conn):
            status = await conn.execute(self._q.complete_receipt, uuid, text, value)
        if status != "UPDATE 1":
            raise WorkflowError(
                f"idempotency reservation {text!r} of workflow instance {uuid} is missing or "
                "already completed"
            )
