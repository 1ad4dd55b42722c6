"""A transaction of the in-memory database, and its levels: the transaction and its savepoints."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from duraflows_pg_async._core.idempotency import IdempotencyRecord
from duraflows_pg_async._core.model import StoredWorkflowDefinition, WorkflowInstance
from duraflows_pg_async._core.scope import TaskOwned

from .rows import HistoryRow

__all__ = ["ABORTED", "Level", "Transaction"]

# PostgreSQL's words for a statement in a transaction that an earlier failure aborted.
ABORTED = (
    "current transaction is aborted, commands ignored until end of transaction block "
    "(SQLSTATE 25P02)"
)


class Transaction(TaskOwned):
    """One transaction: opened by a runner, or a single statement run outside one.

    ``held`` is its effective lock mode per key and ``waiting`` the lock it waits for, which is
    what deadlock detection follows.
    """

    __slots__ = ("held", "lock_timeout", "savepoints", "started_at", "waiting")

    def __init__(self, lock_timeout: float | None) -> None:
        super().__init__()
        self.lock_timeout = lock_timeout
        self.started_at = datetime.now(UTC)
        self.held: dict[Hashable, int] = {}
        self.waiting: tuple[Hashable, int] | None = None
        self.savepoints = 0


class Level:
    """The transaction or one savepoint in it: its writes, the locks it took, its callbacks."""

    __slots__ = (
        "aborted",
        "callbacks",
        "definitions",
        "executions",
        "history",
        "instances",
        "locks",
        "parent",
        "receipts",
        "root",
        "savepoint",
    )

    def __init__(self, root: Transaction, parent: Level | None, savepoint: str | None) -> None:
        self.root = root
        self.parent = parent
        self.savepoint = savepoint
        self.instances: dict[UUID, WorkflowInstance] = {}
        self.history: list[HistoryRow] = []
        self.definitions: dict[tuple[str, int], StoredWorkflowDefinition] = {}
        self.locks: dict[Hashable, int] = {}
        self.receipts: dict[tuple[UUID, str], IdempotencyRecord] = {}
        # Executions as their stored JSON (execution_json), by uuid.
        self.executions: dict[UUID, dict[str, Any]] = {}
        self.callbacks: list[Callable[[], Any]] = []
        self.aborted = False

    def chain(self) -> list[Level]:
        """This level and its parents, outermost first."""
        levels: list[Level] = []
        level: Level | None = self
        while level is not None:
            levels.append(level)
            level = level.parent
        levels.reverse()
        return levels
