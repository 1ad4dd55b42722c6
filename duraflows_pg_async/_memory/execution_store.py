"""MemoryWorkflowExecutionStore: queued executions in memory, kept as their stored JSON."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from duraflows_pg_async._core.executions import (
    ACTIVE_STATUSES,
    DUE_STATUSES,
    ExecutionStats,
    WorkflowExecution,
)
from duraflows_pg_async._core.idempotency import require_idempotency_text
from duraflows_pg_async._core.json_form import parse_utc
from duraflows_pg_async._core.store_checks import checked_execution_listing
from duraflows_pg_async._core.validate import coerce_uuid, require_aware, require_int
from duraflows_pg_async.errors import (
    DatabaseError,
    InvalidArgumentError,
    WorkflowError,
    WorkflowInstanceNotFoundError,
)

from .locks import FOR_UPDATE, KEY_SHARE
from .round_trip import as_jsonb
from .store_base import MemoryStore, reading_level, statement
from .transaction import Level

__all__ = ["MemoryWorkflowExecutionStore"]


def _checked(execution: object, method: str) -> WorkflowExecution:
    if not isinstance(execution, WorkflowExecution):
        raise InvalidArgumentError(
            f"{method}: execution must be a WorkflowExecution, got {type(execution).__name__}"
        )
    require_idempotency_text(execution.idempotency_key, f"{method}: execution.idempotency_key")
    return execution


def _read(data: dict[str, Any]) -> WorkflowExecution:
    return WorkflowExecution.from_json(data)  # from_json copies: callers get their own objects


class MemoryWorkflowExecutionStore(MemoryStore):
    """Queued executions in memory, with the PostgreSQL store's rules: writes need the runner's
    transaction, one execution per (instance, key), one active execution per instance, and
    ``update`` matches the previous revision."""

    __slots__ = ()

    async def create(self, execution: WorkflowExecution) -> None:
        """Insert the execution; a duplicate key or a second active execution on the instance
        raises DatabaseError (and aborts the transaction, as in PostgreSQL)."""
        e = _checked(execution, "create")
        data = as_jsonb(e.to_json())
        database = self._database
        instance_uuid = e.workflow_instance_uuid
        what = f"create execution {e.uuid} of instance {instance_uuid}"

        async def op(level: Level) -> None:
            if database._instance(level, instance_uuid) is None:
                raise WorkflowInstanceNotFoundError(instance_uuid)
            await database._locks.acquire(level, instance_uuid, KEY_SHARE, what)
            # The unique keys: a concurrent insert of the same key or active slot waits.
            await database._locks.acquire(level, ("execution", e.uuid), FOR_UPDATE, what)
            await database._locks.acquire(
                level, ("execution-key", instance_uuid, e.idempotency_key), FOR_UPDATE, what
            )
            rows = database._all_executions(level)
            if e.uuid in rows:
                raise DatabaseError(f"{what}: uuid already used (unique violation)")
            for row in rows.values():
                if row["workflowInstanceUuid"] != str(instance_uuid):
                    continue
                if row["idempotencyKey"] == e.idempotency_key:
                    raise DatabaseError(f"{what}: key already used (unique violation)")
                if e.status in ACTIVE_STATUSES and row["status"] in ACTIVE_STATUSES:
                    raise DatabaseError(
                        f"{what}: the instance has an active execution (unique violation)"
                    )
            level.executions[e.uuid] = data

        await statement(database, what, op, requires_transaction="WorkflowExecutionStore.create")

    async def update(self, execution: WorkflowExecution) -> None:
        """Write the execution whole; the stored revision must be ``execution.revision - 1``
        (WorkflowError "revision conflict" otherwise, nothing written)."""
        e = _checked(execution, "update")
        require_int(e.revision, "execution.revision", minimum=1)
        data = as_jsonb(e.to_json())
        database = self._database
        what = f"update execution {e.uuid}"

        async def op(level: Level) -> None:
            await database._locks.acquire(level, ("execution", e.uuid), FOR_UPDATE, what)
            row = database._all_executions(level).get(e.uuid)
            if row is None or row["revision"] != e.revision - 1:
                raise WorkflowError(
                    f"Durable execution revision conflict: execution {e.uuid} is not at "
                    f"revision {e.revision - 1}"
                )
            if e.status in ACTIVE_STATUSES and row["status"] not in ACTIVE_STATUSES:
                for other_uuid, other in database._all_executions(level).items():
                    if (
                        other_uuid != e.uuid
                        and other["workflowInstanceUuid"] == row["workflowInstanceUuid"]
                        and other["status"] in ACTIVE_STATUSES
                    ):
                        raise DatabaseError(
                            f"{what}: the instance has an active execution (unique violation)"
                        )
            level.executions[e.uuid] = data

        await statement(database, what, op, requires_transaction="WorkflowExecutionStore.update")

    async def find_by_uuid(self, execution_uuid: UUID | str) -> WorkflowExecution | None:
        """The execution, or None."""
        key = coerce_uuid(execution_uuid, "execution_uuid")
        level = reading_level(self._database, f"find execution {key}")
        row = self._database._all_executions(level).get(key)
        return None if row is None else _read(row)

    async def find_by_key(self, instance_uuid: UUID | str, key: str) -> WorkflowExecution | None:
        """The instance's execution with this idempotency key, or None."""
        uuid = str(coerce_uuid(instance_uuid, "instance_uuid"))
        text = require_idempotency_text(key, "key")
        level = reading_level(self._database, f"find execution of instance {uuid} by key")
        for row in self._database._all_executions(level).values():
            if row["workflowInstanceUuid"] == uuid and row["idempotencyKey"] == text:
                return _read(row)
        return None

    async def find_active(self, instance_uuid: UUID | str) -> WorkflowExecution | None:
        """The instance's pending, running or parked execution, or None."""
        uuid = str(coerce_uuid(instance_uuid, "instance_uuid"))
        level = reading_level(self._database, f"find the active execution of instance {uuid}")
        for row in self._database._all_executions(level).values():
            if row["workflowInstanceUuid"] == uuid and row["status"] in ACTIVE_STATUSES:
                return _read(row)
        return None

    async def find_due(self, limit: int, now: datetime) -> list[WorkflowExecution]:
        """Up to ``limit`` pending or running executions available at ``now`` whose lease (if
        any) has expired, oldest first; a hint that callers re-check under the instance's
        lock."""
        require_int(limit, "limit", minimum=1)
        when = require_aware(now, "now")
        level = reading_level(self._database, "find due executions")
        due: list[tuple[datetime, UUID, dict[str, Any]]] = []
        for uuid, row in self._database._all_executions(level).items():
            if row["status"] not in DUE_STATUSES:
                continue
            available = parse_utc(row["availableAt"], "availableAt")
            lease = row["leaseUntil"]
            if available <= when and (lease is None or parse_utc(lease, "leaseUntil") <= when):
                due.append((available, uuid, row))
        due.sort(key=lambda item: (item[0], item[1]))
        return [_read(row) for _, _, row in due[:limit]]

    async def list_executions(
        self,
        *,
        limit: int,
        status: str | None = None,
        workflow_name: str | None = None,
        after_uuid: UUID | str | None = None,
    ) -> list[WorkflowExecution]:
        """Up to ``limit`` executions matching every filter given (``workflow_name`` is the
        record's), in ascending uuid order, each greater than ``after_uuid``."""
        after = checked_execution_listing(limit, status, workflow_name, after_uuid)
        level = reading_level(self._database, "list executions")
        # UUIDs compare as 128-bit integers: PostgreSQL's (byte) order of uuid values.
        found = sorted(
            (
                (uuid, row)
                for uuid, row in self._database._all_executions(level).items()
                if (status is None or row["status"] == status)
                and (workflow_name is None or row["workflowName"] == workflow_name)
                and (after is None or uuid > after)
            ),
            key=lambda item: item[0],
        )
        return [_read(row) for _, row in found[:limit]]

    async def stats(self, *, now: datetime) -> list[ExecutionStats]:
        """The active executions per status, pending, running then parked, with the due ones at
        ``now`` and when the oldest fell due (see the PostgreSQL store)."""
        when = require_aware(now, "now")
        level = reading_level(self._database, "execution stats")
        counts = {status: [0, 0] for status in ACTIVE_STATUSES}
        oldest: dict[str, datetime] = {}
        for row in self._database._all_executions(level).values():
            status = row["status"]
            if status not in counts:
                continue
            counts[status][0] += 1
            available = parse_utc(row["availableAt"], "availableAt")
            lease = (
                None if row["leaseUntil"] is None else parse_utc(row["leaseUntil"], "leaseUntil")
            )
            if status in DUE_STATUSES and available <= when and (lease is None or lease <= when):
                counts[status][1] += 1
                due_at = available if lease is None else max(available, lease)
                if status not in oldest or due_at < oldest[status]:
                    oldest[status] = due_at
        return [
            ExecutionStats(status, counts[status][0], counts[status][1], oldest.get(status))
            for status in ACTIVE_STATUSES
        ]
