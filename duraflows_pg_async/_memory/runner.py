"""MemoryTransactionRunner: transactions and savepoints on a MemoryDatabase, found through a
ContextVar.

The ContextVar (``_core.scope.TaskScopes``) maps each database to the innermost level of the
current task, so that stores called inside ``async with runner.transaction():`` join it. It is set
only inside a runner scope and reset by token on exit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import Token
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

from duraflows_pg_async._core.scope import TaskScopes, run_callbacks
from duraflows_pg_async._core.validate import timeout_ms
from duraflows_pg_async.errors import (
    CommitRolledBackError,
    DatabaseError,
    InvalidArgumentError,
    NoActiveTransactionError,
)

from .database import MemoryDatabase
from .transaction import ABORTED, Level, Transaction

__all__ = ["MemoryTransactionRunner", "ambient_level"]

T = TypeVar("T")

_SCOPES: TaskScopes[MemoryDatabase, Level] = TaskScopes("duraflows_pg_async_memory_scopes")


def ambient_level(database: MemoryDatabase) -> Level | None:
    """This task's innermost level on ``database``, or None outside a transaction."""
    return _SCOPES.current(database)


class _MemoryTransaction:
    """``async with runner.transaction():`` — a transaction, or a savepoint inside one."""

    __slots__ = ("_level", "_runner", "_token")

    def __init__(self, runner: MemoryTransactionRunner) -> None:
        self._runner = runner
        self._level: Level | None = None
        self._token: Token[dict[MemoryDatabase, Level] | None] | None = None

    async def __aenter__(self) -> None:
        if self._level is not None:
            raise InvalidArgumentError("a transaction() context cannot be entered twice")
        database = self._runner._database
        parent = _SCOPES.owned(database)
        if parent is not None:
            root = parent.root
            root.savepoints += 1
            name = f"duraflows_sp_{root.savepoints}"
            if parent.aborted:
                raise DatabaseError(f"SAVEPOINT {name}: {ABORTED}")
            level = Level(root, parent, name)
        else:
            level = Level(Transaction(self._runner._lock_timeout), None, None)
        self._level = level
        self._token = _SCOPES.push(database, level)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        level = self._level
        token = self._token
        assert level is not None
        assert token is not None
        _SCOPES.reset(token)
        database = self._runner._database
        parent = level.parent
        if parent is not None:
            if exc is not None:
                database._rollback_savepoint(level)
                return
            database._release_savepoint(level)
            if level.aborted:
                # As PostgreSQL's RELEASE SAVEPOINT: the error was swallowed inside the block, so
                # the transaction stays aborted.
                parent.aborted = True
                raise DatabaseError(f"RELEASE SAVEPOINT {level.savepoint}: {ABORTED}")
            return
        level.root.closed = True
        if exc is not None:
            database._end(level, commit=False)
            return
        if level.aborted:
            database._end(level, commit=False)
            raise CommitRolledBackError()
        database._end(level, commit=True)
        if level.callbacks:
            await run_callbacks(level.callbacks)


class MemoryTransactionRunner:
    """The in-memory counterpart of ``PgTransactionRunner`` (without ``connection``/``bind``).

    A transaction belongs to the task that opened it; nested calls are savepoints; after-commit
    callbacks run after the outermost commit. ``lock_timeout`` (a ``timedelta`` or seconds; 0
    disables it) bounds every lock wait of the transactions this runner opens.
    """

    __slots__ = ("_database", "_lock_timeout", "lock_timeout_ms")

    def __init__(
        self, database: MemoryDatabase, *, lock_timeout: timedelta | float | None = None
    ) -> None:
        if not isinstance(database, MemoryDatabase):
            raise InvalidArgumentError(
                f"database must be a MemoryDatabase, got {type(database).__name__}"
            )
        self._database = database
        self.lock_timeout_ms = timeout_ms(lock_timeout, "lock_timeout")
        self._lock_timeout = self.lock_timeout_ms / 1000 if self.lock_timeout_ms else None

    @property
    def database(self) -> MemoryDatabase:
        return self._database

    def transaction(self) -> _MemoryTransaction:
        """An async context manager: the outermost one commits, nested ones are savepoints."""
        return _MemoryTransaction(self)

    async def run_in_transaction(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()`` inside ``transaction()`` and return its result."""
        if not callable(fn):
            raise InvalidArgumentError(f"fn must be an async callable, got {fn!r}")
        async with _MemoryTransaction(self):
            return await fn()

    def after_commit(self, callback: Callable[[], Any]) -> None:
        """Run ``callback()`` (awaited if it returns an awaitable) after the outermost commit.

        Dropped on rollback of the transaction or enclosing savepoint; one that raises is logged
        on the ``duraflows_pg_async`` logger. Outside a transaction: NoActiveTransactionError.
        """
        if not callable(callback):
            raise InvalidArgumentError(f"callback must be callable, got {callback!r}")
        level = _SCOPES.current(self._database)
        if level is None:
            raise NoActiveTransactionError("after_commit requires an active transaction")
        level.callbacks.append(callback)

    def is_transaction_active(self) -> bool:
        """Whether the current task is inside a transaction of this runner's database."""
        return _SCOPES.owned(self._database) is not None
