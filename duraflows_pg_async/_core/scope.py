"""What every transaction runner shares: the task that owns a transaction, the ContextVar that
finds a task's transaction, and running the after-commit callbacks.

A transaction belongs to the task that opened it. Tasks created inside it inherit the ContextVar
but must not use the transaction: the owner may commit at any time, and a connection runs one
statement at a time.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Hashable
from contextvars import ContextVar, Token
from typing import Any, Generic, Protocol, TypeVar

from duraflows_pg_async.errors import TransactionTaskError

__all__ = ["Scope", "TaskOwned", "TaskScopes", "run_callbacks"]

logger = logging.getLogger("duraflows_pg_async")


class TaskOwned:
    """One transaction's owner: the task that opened it, and whether it has ended."""

    __slots__ = ("closed", "task")

    def __init__(self) -> None:
        self.task = asyncio.current_task()
        self.closed = False

    def owned_by_current_task(self) -> bool:
        return self.task is asyncio.current_task() and not self.closed

    def inherited_error(self) -> TransactionTaskError:
        """The error for a task that is not the owner, or for a transaction that has ended."""
        task = "no task" if self.task is None else f"task {self.task.get_name()!r}"
        return TransactionTaskError(
            "this task inherited a duraflows transaction from the task that opened it "
            f"({task}); its connection cannot be shared. Open a transaction of its own in this "
            "task, or await the call in the task that owns the transaction"
        )


class Scope(Protocol):
    """A transaction or a savepoint in one, as a runner keeps it."""

    @property
    def root(self) -> TaskOwned: ...


K = TypeVar("K", bound=Hashable)
S = TypeVar("S", bound=Scope)


class TaskScopes(Generic[K, S]):
    """Each key's (a pool's, a database's) innermost scope in the current task, in one ContextVar.

    The ContextVar is set only inside a runner's scope and reset by token when that scope exits,
    so keys never see each other's transactions and a scope never outlives its block.
    """

    __slots__ = ("_var",)

    def __init__(self, name: str) -> None:
        self._var: ContextVar[dict[K, S] | None] = ContextVar(name, default=None)

    def current(self, key: K) -> S | None:
        """This task's scope on ``key``, or None; another task's (inherited) is an error."""
        scopes = self._var.get()
        scope = None if scopes is None else scopes.get(key)
        if scope is None:
            return None
        if not scope.root.owned_by_current_task():
            raise scope.root.inherited_error()
        return scope

    def owned(self, key: K) -> S | None:
        """Like ``current``, but another task's scope reads as absent (this task may open one)."""
        scopes = self._var.get()
        scope = None if scopes is None else scopes.get(key)
        if scope is None or not scope.root.owned_by_current_task():
            return None
        return scope

    def push(self, key: K, scope: S) -> Token[dict[K, S] | None]:
        """Make ``scope`` the innermost on ``key``; pass the token to ``reset`` on exit."""
        current = self._var.get()
        return self._var.set({key: scope} if current is None else {**current, key: scope})

    def reset(self, token: Token[dict[K, S] | None]) -> None:
        self._var.reset(token)


async def run_callbacks(callbacks: list[Callable[[], Any]]) -> None:
    """Run after-commit callbacks in order, awaiting those that return an awaitable.

    One that raises is logged and does not stop the others.
    """
    # Index loop: callbacks registered while draining (by a callback) run too.
    index = 0
    while index < len(callbacks):
        callback = callbacks[index]
        index += 1
        try:
            result = callback()
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.warning("duraflows: after_commit callback %r failed", callback, exc_info=True)
