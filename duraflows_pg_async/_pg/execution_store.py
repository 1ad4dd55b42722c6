"""PgWorkflowExecutionStore: queued executions in ``workflow_executions`` (migration 008)."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from uuid import UUID

import asyncpg

from duraflows_pg_async._core.executions import ACTIVE_STATUSES, ExecutionStats, WorkflowExecution
from duraflows_pg_async._core.idempotency import require_idempotency_text
from duraflows_pg_async._core.store_checks import checked_execution_listing
from duraflows_pg_async._core.validate import coerce_uuid, require_aware, require_int
from duraflows_pg_async._pg.error_mapping import map_optional_table_errors
from duraflows_pg_async.errors import (
    InvalidArgumentError,
    UnreadableRowError,
    WorkflowError,
    WorkflowInstanceNotFoundError,
)

from .codecs import decoded
from .queries import execution_stats_sql, list_executions_sql
from .runner import AnyConnection
from .store_base import PgStore
from .wakeups import execution_payload

__all__ = ["PgWorkflowExecutionStore"]

_log = logging.getLogger("duraflows_pg_async")


def _mapped(what: str, conn: AnyConnection | asyncpg.Pool) -> AbstractContextManager[None]:
    return map_optional_table_errors(what, conn, table="workflow_executions", migration="008")


def _checked(execution: object, method: str) -> WorkflowExecution:
    if not isinstance(execution, WorkflowExecution):
        raise InvalidArgumentError(
            f"{method}: execution must be a WorkflowExecution, got {type(execution).__name__}"
        )
    require_idempotency_text(execution.idempotency_key, f"{method}: execution.idempotency_key")
    return execution


def _execution_from(row: asyncpg.Record) -> WorkflowExecution:
    data = decoded(row["execution_json"], "workflow_executions.execution_json")
    try:
        return WorkflowExecution.from_json(data)
    except InvalidArgumentError as exc:
        raise UnreadableRowError(
            row["workflow_instance_uuid"],
            f"workflow_executions.execution_json of execution {row['uuid']}",
            str(exc),
        ) from exc


class PgWorkflowExecutionStore(PgStore):
    """Queued executions. ``create`` and ``update`` need the transaction holding the instance's
    row lock (NoActiveTransactionError otherwise); reads join it or run on the pool."""

    __slots__ = ()

    async def create(self, execution: WorkflowExecution) -> None:
        """Insert the execution. A second execution with its key, or a second active one on the
        instance, raises DatabaseError (the statement fails and aborts the transaction)."""
        e = _checked(execution, "create")
        conn = self._transaction_connection("WorkflowExecutionStore.create")
        data = e.to_json()
        what = f"create execution {e.uuid} of instance {e.workflow_instance_uuid}"
        query, wake = self._wake(e)
        with _mapped(what, conn):
            try:
                await conn.execute(
                    query,
                    e.uuid,
                    e.workflow_instance_uuid,
                    e.idempotency_key,
                    e.status,
                    e.available_at,
                    e.lease_until,
                    e.revision,
                    data,
                    *wake,
                )
            except asyncpg.ForeignKeyViolationError as exc:
                raise WorkflowInstanceNotFoundError(e.workflow_instance_uuid) from exc

    async def update(self, execution: WorkflowExecution) -> None:
        """Write the execution whole; the stored revision must be ``execution.revision - 1``
        (WorkflowError "revision conflict" otherwise, nothing written)."""
        e = _checked(execution, "update")
        require_int(e.revision, "execution.revision", minimum=1)
        conn = self._transaction_connection("WorkflowExecutionStore.update")
        data = e.to_json()
        query, wake = self._wake(e, update=True)
        with _mapped(f"update execution {e.uuid}", conn):
            status = await conn.execute(
                query,
                e.uuid,
                e.status,
                e.available_at,
                e.lease_until,
                e.revision,
                data,
                *wake,
            )
        if status != "UPDATE 1":
            raise WorkflowError(
                f"Durable execution revision conflict: execution {e.uuid} is not at revision "
                f"{e.revision - 1}"
            )

    def _wake(self, e: WorkflowExecution, *, update: bool = False) -> tuple[str, tuple[str, ...]]:
        """The statement writing ``e``, and its NOTIFY payload if it notifies: a pending
        execution available soon (enqueued, retried, or its next command) wakes the workers."""
        plain = self._q.update_execution if update else self._q.insert_execution
        if e.status != "pending" or not self._notifies(e.available_at, datetime.now(UTC)):
            return plain, ()
        notify = self._q.update_execution_notify if update else self._q.insert_execution_notify
        return notify, (execution_payload(e.available_at),)

    async def find_by_uuid(self, execution_uuid: UUID | str) -> WorkflowExecution | None:
        """The execution, or None."""
        key = coerce_uuid(execution_uuid, "execution_uuid")
        executor = self._executor()
        with _mapped(f"find execution {key}", executor):
            row = await executor.fetchrow(self._q.select_execution, key)
        return None if row is None else _execution_from(row)

    async def find_by_key(self, instance_uuid: UUID | str, key: str) -> WorkflowExecution | None:
        """The instance's execution with this idempotency key, or None."""
        uuid = coerce_uuid(instance_uuid, "instance_uuid")
        text = require_idempotency_text(key, "key")
        executor = self._executor()
        with _mapped(f"find execution of instance {uuid} by key", executor):
            row = await executor.fetchrow(self._q.select_execution_by_key, uuid, text)
        return None if row is None else _execution_from(row)

    async def find_active(self, instance_uuid: UUID | str) -> WorkflowExecution | None:
        """The instance's pending, running or parked execution, or None."""
        uuid = coerce_uuid(instance_uuid, "instance_uuid")
        executor = self._executor()
        with _mapped(f"find the active execution of instance {uuid}", executor):
            row = await executor.fetchrow(self._q.select_active_execution, uuid)
        return None if row is None else _execution_from(row)

    async def find_due(self, limit: int, now: datetime) -> list[WorkflowExecution]:
        """Up to ``limit`` pending or running executions available at ``now`` whose lease (if
        any) has expired, oldest first. No locks: callers re-check under the instance's lock."""
        require_int(limit, "limit", minimum=1)
        when = require_aware(now, "now")
        executor = self._executor()
        with _mapped("find due executions", executor):
            rows = await executor.fetch(self._q.select_due_executions, limit, when)
        out: list[WorkflowExecution] = []
        for row in rows:
            try:
                out.append(_execution_from(row))
            except UnreadableRowError as exc:
                # One unreadable record must not stop the others: it stays for an operator.
                _log.warning("duraflows: skipped a due execution: %s", exc)
        return out

    async def list_executions(
        self,
        *,
        limit: int,
        status: str | None = None,
        workflow_name: str | None = None,
        after_uuid: UUID | str | None = None,
    ) -> list[WorkflowExecution]:
        """Up to ``limit`` executions matching every filter given (``workflow_name`` is the
        record's), in ascending uuid order, each greater than ``after_uuid``. No locks."""
        after = checked_execution_listing(limit, status, workflow_name, after_uuid)
        sql = list_executions_sql(
            self._schema, status=status, workflow=workflow_name is not None, after=after is not None
        )
        arguments = [value for value in (status, workflow_name, after) if value is not None]
        executor = self._executor()
        with _mapped("list executions", executor):
            rows = await executor.fetch(sql, limit, *arguments)
        return [_execution_from(row) for row in rows]

    async def stats(self, *, now: datetime) -> list[ExecutionStats]:
        """The active executions per status, pending, running then parked (a status without
        executions counts zero), with the due ones at ``now`` and when the oldest fell due.
        Completed and cancelled executions are not counted: the table keeps them all."""
        when = require_aware(now, "now")
        executor = self._executor()
        with _mapped("execution stats", executor):
            rows = await executor.fetch(execution_stats_sql(self._schema), when)
        found = {row["status"]: row for row in rows}
        return [
            ExecutionStats(
                status=status,
                executions=found[status]["executions"] if status in found else 0,
                due=found[status]["due"] if status in found else 0,
                oldest_due_at=found[status]["oldest_due_at"] if status in found else None,
            )
            for status in ACTIVE_STATUSES
        ]
