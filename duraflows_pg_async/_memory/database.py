"""MemoryDatabase: the committed rows of one in-memory provider, read as one transaction sees them.

A transaction's writes stay in its levels (``Level``) until it commits; reads look through the
levels of the reading transaction first, then at the committed rows (READ COMMITTED).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from duraflows_pg_async._core.executions import ACTIVE_STATUSES
from duraflows_pg_async._core.idempotency import IdempotencyRecord
from duraflows_pg_async._core.model import StoredWorkflowDefinition, WorkflowInstance

from .locks import LockTable
from .rows import HistoryRow
from .transaction import Level, Transaction

__all__ = ["MemoryDatabase"]

T = TypeVar("T")

_ONE_MICROSECOND = timedelta(microseconds=1)


class MemoryDatabase:
    """The shared state of one in-memory provider; build it with ``memory_workflow_providers()``.

    Every call builds a new, independent database.
    """

    __slots__ = (
        "_claims",
        "_definitions",
        "_executions",
        "_history",
        "_instances",
        "_last_history_at",
        "_locks",
        "_receipts",
    )

    def __init__(self) -> None:
        self._instances: dict[UUID, WorkflowInstance] = {}
        self._history: dict[UUID, list[HistoryRow]] = {}
        self._definitions: dict[tuple[str, int], StoredWorkflowDefinition] = {}
        self._receipts: dict[tuple[UUID, str], IdempotencyRecord] = {}
        self._executions: dict[UUID, dict[str, Any]] = {}
        self._locks = LockTable()
        # Sweep claims (find_expired(claim_until=...)), kept outside the transactional state.
        self._claims: dict[UUID, datetime] = {}
        self._last_history_at = datetime.min.replace(tzinfo=UTC)

    def __repr__(self) -> str:
        return f"<MemoryDatabase instances={len(self._instances)} at {id(self):#x}>"

    # --- reads as one transaction sees them ------------------------------------------------

    def _instance(self, level: Level | None, key: UUID) -> WorkflowInstance | None:
        while level is not None:
            row = level.instances.get(key)
            if row is not None:
                return row
            level = level.parent
        return self._instances.get(key)

    def _all_instances(self, level: Level | None) -> dict[UUID, WorkflowInstance]:
        if level is None:
            return self._instances
        view = self._instances
        for each in level.chain():
            if each.instances:
                if view is self._instances:
                    view = dict(view)
                view.update(each.instances)
        return view

    def _history_of(self, level: Level | None, key: UUID) -> list[HistoryRow]:
        rows = list(self._history.get(key, ()))
        if level is not None:
            for each in level.chain():
                rows.extend(row for row in each.history if row.workflow_instance_uuid == key)
        return rows

    def _definition(
        self, level: Level | None, key: tuple[str, int]
    ) -> StoredWorkflowDefinition | None:
        while level is not None:
            row = level.definitions.get(key)
            if row is not None:
                return row
            level = level.parent
        return self._definitions.get(key)

    def _all_definitions(
        self, level: Level | None
    ) -> dict[tuple[str, int], StoredWorkflowDefinition]:
        view = dict(self._definitions)
        if level is not None:
            for each in level.chain():
                view.update(each.definitions)
        return view

    def _receipt(self, level: Level | None, key: tuple[UUID, str]) -> IdempotencyRecord | None:
        while level is not None:
            row = level.receipts.get(key)
            if row is not None:
                return row
            level = level.parent
        return self._receipts.get(key)

    def _all_executions(self, level: Level | None) -> dict[UUID, dict[str, Any]]:
        view = dict(self._executions)
        if level is not None:
            for each in level.chain():
                view.update(each.executions)
        return view

    def _busy_instances(self, level: Level | None) -> frozenset[UUID]:
        """Instances with an active (pending, running or parked) execution."""
        return frozenset(
            UUID(row["workflowInstanceUuid"])
            for row in self._all_executions(level).values()
            if row["status"] in ACTIVE_STATUSES
        )

    def _next_history_at(self) -> datetime:
        # Strictly increasing, so rows read back in the order they were written.
        now = max(datetime.now(UTC), self._last_history_at + _ONE_MICROSECOND)
        self._last_history_at = now
        return now

    # --- ends of savepoints and transactions -------------------------------------------------

    def _release_savepoint(self, level: Level) -> None:
        parent = level.parent
        assert parent is not None
        parent.instances.update(level.instances)
        parent.history.extend(level.history)
        parent.definitions.update(level.definitions)
        parent.receipts.update(level.receipts)
        parent.executions.update(level.executions)
        for key, mode in level.locks.items():
            if mode > parent.locks.get(key, 0):
                parent.locks[key] = mode
        parent.callbacks.extend(level.callbacks)

    def _rollback_savepoint(self, level: Level) -> None:
        self._locks.roll_back_savepoint(level)

    def _end(self, level: Level, *, commit: bool) -> None:
        """Commit or roll back a whole transaction (its outermost level) and free its locks."""
        if commit:
            self._instances.update(level.instances)
            for row in level.history:
                self._history.setdefault(row.workflow_instance_uuid, []).append(row)
            self._definitions.update(level.definitions)
            self._receipts.update(level.receipts)
            self._executions.update(level.executions)
        self._locks.release_all(level.root)

    async def _autocommit(self, op: Callable[[Level], Awaitable[T]]) -> T:
        """Run one statement outside a transaction (no lock_timeout, as on the pool)."""
        level = Level(Transaction(None), None, None)
        try:
            result = await op(level)
        except BaseException:
            self._end(level, commit=False)
            raise
        self._end(level, commit=True)
        return result
