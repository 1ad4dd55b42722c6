"""The transaction runner: one asyncpg connection per transaction, found through a ContextVar.

The ContextVar (``_core.scope.TaskScopes``) maps each pool to the innermost transaction scope of
the current task, so that stores called inside ``async with runner.transaction():`` share its
connection, and two pools never see each other's transaction. It is set only inside a runner
scope and reset by token on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from contextvars import Token
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeAlias, TypeVar, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from duraflows_pg_async._core import tracing as _tracing
from duraflows_pg_async._core.scope import TaskOwned, TaskScopes, run_callbacks
from duraflows_pg_async._core.validate import timeout_ms
from duraflows_pg_async._pg.error_mapping import map_db_errors, raise_mapped
from duraflows_pg_async.errors import (
    CommitRolledBackError,
    InvalidArgumentError,
    NoActiveTransactionError,
)

from . import session_reset

__all__ = ["PgTransactionRunner", "ambient_connection"]

T = TypeVar("T")
# A pooled connection, or the caller's own connection given to bind().
AnyConnection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
logger = logging.getLogger("duraflows_pg_async")

# How long cleanup (ROLLBACK, release) may take once a transaction failed or was cancelled; past
# it the connection is terminated rather than trusted.
CLEANUP_TIMEOUT = 10.0


class _Root(TaskOwned):
    """One database transaction: owned (BEGIN/COMMIT here) or bound (the caller's).

    ``handed_out``: ``connection()`` gave the connection to code other than the package's, whose
    SQL may leave session state, so the COMMIT carries the session reset (see session_reset).
    """

    __slots__ = ("connection", "handed_out", "savepoints")

    def __init__(self, connection: AnyConnection) -> None:
        super().__init__()
        self.connection = connection
        self.savepoints = 0
        self.handed_out = False


class _Scope:
    """The transaction or savepoint a task is in; after-commit callbacks wait here."""

    __slots__ = ("callbacks", "root")

    def __init__(self, root: _Root) -> None:
        self.root = root
        self.callbacks: list[Callable[[], Any]] = []


_SCOPES: TaskScopes[asyncpg.Pool, _Scope] = TaskScopes("duraflows_pg_async_scopes")


def ambient_connection(pool: asyncpg.Pool) -> AnyConnection | None:
    """The connection of this task's transaction on ``pool``, or None outside one."""
    scope = _SCOPES.current(pool)
    return None if scope is None else scope.root.connection


async def _settle(awaitable: Awaitable[None]) -> None:
    """Run cleanup (ROLLBACK, release) to the end, even if the caller is cancelled meanwhile.

    The cleanup runs in a task of its own; a cancellation that arrives during it is re-raised once
    the cleanup is done, so the connection is back in the pool before the caller unwinds.
    """
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    task.result()


async def _close_owned(
    pool: asyncpg.Pool, conn: PoolConnectionProxy[Any], reason: BaseException
) -> None:
    """ROLLBACK and release; a connection whose ROLLBACK failed is terminated, never pooled."""
    try:
        async with asyncio.timeout(CLEANUP_TIMEOUT):
            await conn.execute("ROLLBACK")
    except (Exception, asyncio.CancelledError) as rollback_error:
        logger.warning(
            "duraflows: ROLLBACK failed (%r) after %r; terminating the connection",
            rollback_error,
            reason,
        )
        # When the server ended the connection, asyncpg has already detached the proxy and
        # returned its slot to the pool; there is nothing left to terminate then.
        with contextlib.suppress(asyncpg.InterfaceError):
            conn.terminate()
    await pool.release(conn)


async def _rollback_to(conn: AnyConnection, name: str, reason: BaseException) -> None:
    """ROLLBACK TO and RELEASE the savepoint ``name`` after ``reason``; never raises."""
    try:
        async with asyncio.timeout(CLEANUP_TIMEOUT):
            await conn.execute(f"ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")
    except (Exception, asyncio.CancelledError) as rollback_error:
        # The original error propagates; the outer transaction's own cleanup deals with a
        # connection that cannot even roll back to a savepoint.
        logger.warning(
            "duraflows: ROLLBACK TO SAVEPOINT %s failed (%r) after %r", name, rollback_error, reason
        )


class _Transaction:
    """``async with runner.transaction():`` — an owned transaction or a savepoint in one."""

    __slots__ = ("_parent", "_runner", "_savepoint", "_scope", "_span", "_token")

    def __init__(self, runner: PgTransactionRunner) -> None:
        self._runner = runner
        self._scope: _Scope | None = None
        self._parent: _Scope | None = None
        self._token: Token[dict[asyncpg.Pool, _Scope] | None] | None = None
        self._savepoint: str | None = None
        self._span: _tracing.Span | None = None

    async def __aenter__(self) -> None:
        if self._scope is not None:
            raise InvalidArgumentError("a transaction() context cannot be entered twice")
        runner = self._runner
        pool = runner._pool
        parent = _SCOPES.owned(pool)
        if _tracing.active():
            # Started before acquire(): time spent waiting for a pooled connection shows here.
            self._span = (
                _tracing.start(_tracing.TRANSACTION, _tracing.DB_ATTRIBUTES)
                if parent is None
                else _tracing.start(_tracing.SAVEPOINT)
            )
        try:
            if parent is not None:
                root = parent.root
                root.savepoints += 1
                name = f"duraflows_sp_{root.savepoints}"
                with map_db_errors("SAVEPOINT"):
                    await root.connection.execute(f"SAVEPOINT {name}")
                self._parent = parent
                self._savepoint = name
            else:
                try:
                    conn = await pool.acquire()
                except Exception as exc:
                    raise_mapped(exc, "acquire a connection", connecting=True)
                try:
                    await conn.execute(runner._begin_sql)
                except BaseException as exc:
                    await _settle(_close_owned(pool, conn, exc))
                    if isinstance(exc, Exception):
                        raise_mapped(exc, "BEGIN", conn)
                    raise
                root = _Root(conn)
        except BaseException as exc:
            if self._span is not None:
                self._span.end(exc)
                self._span = None
            raise
        if self._span is not None and self._span.recording:
            self._span.update(
                _tracing.connection_attributes(root.connection)
                if self._savepoint is None
                else {"duraflows.savepoint.name": self._savepoint}
            )
        scope = _Scope(root)
        self._scope = scope
        self._token = _SCOPES.push(pool, scope)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope = self._scope
        token = self._token
        assert scope is not None
        assert token is not None
        _SCOPES.reset(token)
        span = self._span
        try:
            if self._savepoint is not None:
                await self._exit_savepoint(scope, exc)
            else:
                await self._exit_owned(scope, exc)
        except BaseException as failure:
            if span is not None:
                self._end_span(span, scope, failure)
            raise
        if span is not None:
            # Ended before the after-commit callbacks run: spans they start (an observer's, say)
            # belong to the caller's span, not to a transaction that is over.
            self._end_span(span, scope, exc)
        if self._savepoint is None and exc is None and scope.callbacks:
            await run_callbacks(scope.callbacks)

    def _end_span(self, span: _tracing.Span, scope: _Scope, error: BaseException | None) -> None:
        if span.recording:
            if self._savepoint is not None:
                span.update(
                    {"duraflows.transaction.outcome": "release" if error is None else "rollback"}
                )
            else:
                span.update(
                    {
                        "duraflows.transaction.outcome": "commit" if error is None else "rollback",
                        "duraflows.transaction.savepoints": scope.root.savepoints,
                    }
                )
        span.end(error)

    async def _exit_savepoint(self, scope: _Scope, exc: BaseException | None) -> None:
        conn = scope.root.connection
        name = self._savepoint
        parent = self._parent
        assert parent is not None
        if exc is None:
            # If the body swallowed a SQL error, the transaction is aborted and RELEASE fails:
            # that failure must surface rather than let the caller believe its writes happened.
            with map_db_errors(f"RELEASE SAVEPOINT {name}"):
                await conn.execute(f"RELEASE SAVEPOINT {name}")
            parent.callbacks.extend(scope.callbacks)
            return
        await _settle(self._rollback_savepoint(conn, exc))

    async def _rollback_savepoint(self, conn: AnyConnection, reason: BaseException) -> None:
        assert self._savepoint is not None
        await _rollback_to(conn, self._savepoint, reason)

    async def _exit_owned(self, scope: _Scope, exc: BaseException | None) -> None:
        root = scope.root
        root.closed = True
        pool = self._runner._pool
        conn = root.connection
        assert isinstance(conn, PoolConnectionProxy)
        if exc is not None:
            await _settle(_close_owned(pool, conn, exc))
            return
        try:
            status = await session_reset.commit(conn, reset=root.handed_out)
        except asyncpg.InFailedSQLTransactionError as aborted:
            # The session reset statements ahead of COMMIT meet the aborted transaction first.
            await _settle(_close_owned(pool, conn, aborted))
            raise CommitRolledBackError() from aborted
        except BaseException as commit_error:
            # A cancellation that lands while COMMIT is in flight leaves the transaction either
            # committed or rolled back as a whole; ROLLBACK afterwards is harmless either way.
            await _settle(_close_owned(pool, conn, commit_error))
            if isinstance(commit_error, asyncio.CancelledError):
                logger.warning(
                    "duraflows: cancelled while COMMIT was in flight; the transaction either "
                    "committed or rolled back as a whole, and its after_commit callbacks were "
                    "skipped"
                )
            if isinstance(commit_error, Exception):
                raise_mapped(commit_error, "COMMIT", conn)
            raise
        await pool.release(conn)
        if status == "ROLLBACK":
            raise CommitRolledBackError()


# Connection methods that send nothing to the server: they need no savepoint first.
_QUIET = frozenset(
    {
        "get_reset_query",
        "get_server_pid",
        "get_server_version",
        "get_settings",
        "is_closed",
        "is_in_transaction",
    }
)
_SENDS = frozenset(
    name
    for name in dir(asyncpg.Connection)
    if not name.startswith("_") and inspect.iscoroutinefunction(getattr(asyncpg.Connection, name))
)


class _GuardedConnection:
    """The connection as a lazy savepoint's block sees it: the first statement sent through it
    is preceded by the block's SAVEPOINT.

    Anything else that could reach the server without a statement of ours first (``cursor()``,
    a listener) marks the block ``unguarded``: its SQL may have run outside the savepoint.
    """

    __slots__ = ("before", "materialized", "name", "real", "root", "unguarded")

    def __init__(
        self, root: _Root, name: str, before: Callable[[], Awaitable[None]] | None
    ) -> None:
        self.root = root
        self.real = root.connection
        self.name = name
        self.before = before
        self.materialized = False
        self.unguarded = False

    async def materialize(self) -> None:
        if self.materialized:
            return
        before, self.before = self.before, None
        if before is not None:
            # Outside the savepoint, on the plain connection: what the caller kept back until
            # now (a batch's rows) must be in the database before the block's SQL reads it.
            self.root.connection = self.real
            try:
                await before()
            finally:
                self.root.connection = cast(AnyConnection, self)
        with map_db_errors(f"SAVEPOINT {self.name}", self.real):
            await self.real.execute(f"SAVEPOINT {self.name}")
        self.materialized = True

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.real, name)
        if self.materialized or name in _QUIET:
            return attribute
        if name in _SENDS:

            async def sent(*args: Any, **kwargs: Any) -> Any:
                await self.materialize()
                return await attribute(*args, **kwargs)

            return sent
        self.unguarded = True
        return attribute


class _LazySavepoint:
    """``async with runner.lazy_savepoint():`` — a savepoint that costs nothing unless used.

    SAVEPOINT is sent just before the block's first statement; a block that sends none (its
    writes buffered for later, say) needs no RELEASE nor ROLLBACK TO either. A failure rolls back
    to the savepoint if there is one; its after-commit callbacks are dropped either way.
    ``unguarded`` tells that the block reached the connection in a way the savepoint could not
    cover (see ``_GuardedConnection``): then a failure of it cannot be undone alone.
    """

    __slots__ = ("_before", "_guard", "_parent", "_runner", "_scope", "_token")

    def __init__(
        self, runner: PgTransactionRunner, before: Callable[[], Awaitable[None]] | None
    ) -> None:
        self._runner = runner
        self._before = before
        self._guard: _GuardedConnection | None = None
        self._parent: _Scope | None = None
        self._scope: _Scope | None = None
        self._token: Token[dict[asyncpg.Pool, _Scope] | None] | None = None

    @property
    def used(self) -> bool:
        """Whether the block reached the connection (sent SQL, or might have)."""
        guard = self._guard
        return guard is not None and (guard.materialized or guard.unguarded)

    @property
    def unguarded(self) -> bool:
        guard = self._guard
        return guard is not None and guard.unguarded and not guard.materialized

    async def __aenter__(self) -> None:
        if self._scope is not None:
            raise InvalidArgumentError("a lazy_savepoint() context cannot be entered twice")
        pool = self._runner._pool
        parent = _SCOPES.owned(pool)
        if parent is None:
            raise NoActiveTransactionError("lazy_savepoint requires an active transaction")
        root = parent.root
        root.savepoints += 1
        guard = _GuardedConnection(root, f"duraflows_sp_{root.savepoints}", self._before)
        # Every use of the transaction's connection inside the block (stores, connection(),
        # nested savepoints) goes through the guard until the block ends.
        root.connection = cast(AnyConnection, guard)
        self._guard = guard
        self._parent = parent
        scope = _Scope(root)
        self._scope = scope
        self._token = _SCOPES.push(pool, scope)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope, parent, guard, token = self._scope, self._parent, self._guard, self._token
        assert scope is not None
        assert parent is not None
        assert guard is not None
        assert token is not None
        _SCOPES.reset(token)
        scope.root.connection = guard.real
        if exc is None:
            if guard.materialized:
                with map_db_errors(f"RELEASE SAVEPOINT {guard.name}", guard.real):
                    await guard.real.execute(f"RELEASE SAVEPOINT {guard.name}")
            parent.callbacks.extend(scope.callbacks)
            return
        if guard.materialized:
            await _settle(_rollback_to(guard.real, guard.name, exc))


class _Bound:
    """``async with runner.bind(conn):`` — workflow calls join a transaction the caller owns."""

    __slots__ = ("_conn", "_runner", "_scope", "_token")

    def __init__(self, runner: PgTransactionRunner, conn: AnyConnection) -> None:
        self._runner = runner
        self._conn = conn
        self._token: Token[dict[asyncpg.Pool, _Scope] | None] | None = None
        self._scope: _Scope | None = None

    async def __aenter__(self) -> AnyConnection:
        conn = self._conn
        pool = self._runner._pool
        if _SCOPES.owned(pool) is not None:
            raise InvalidArgumentError(
                "bind() was called inside a transaction of this runner's pool; workflow calls "
                "already join that transaction"
            )
        is_in_transaction = getattr(conn, "is_in_transaction", None)
        if is_in_transaction is None or not is_in_transaction():
            raise InvalidArgumentError(
                "bind(conn) needs an asyncpg connection inside a transaction (start one with "
                "conn.transaction() first); the caller owns BEGIN and COMMIT"
            )
        self._scope = _Scope(_Root(conn))
        self._token = _SCOPES.push(pool, self._scope)
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope = self._scope
        token = self._token
        assert scope is not None
        assert token is not None
        try:
            # The caller's COMMIT is out of sight: callbacks run when the block succeeds, still
            # inside the bound scope, so workflow calls they make join the caller's transaction.
            if exc is None and scope.callbacks:
                await run_callbacks(scope.callbacks)
        finally:
            scope.root.closed = True
            _SCOPES.reset(token)


class PgTransactionRunner:
    """Runs work in a PostgreSQL transaction on connections from ``pool``.

    Nested ``transaction()`` / ``run_in_transaction()`` calls in the same task become savepoints;
    a failure rolls back only the nested part. ``lock_timeout`` and ``statement_timeout`` (a
    ``timedelta`` or seconds) are applied with ``SET LOCAL`` to transactions this runner opens.
    The pool is never closed by the runner.
    """

    __slots__ = ("_begin_sql", "_pool", "lock_timeout_ms", "statement_timeout_ms")

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        lock_timeout: timedelta | float | None = None,
        statement_timeout: timedelta | float | None = None,
    ) -> None:
        if not isinstance(pool, asyncpg.Pool):
            raise InvalidArgumentError(f"pool must be an asyncpg.Pool, got {type(pool).__name__}")
        self._pool = pool
        self.lock_timeout_ms = timeout_ms(lock_timeout, "lock_timeout")
        self.statement_timeout_ms = timeout_ms(statement_timeout, "statement_timeout")
        begin = ["BEGIN"]
        # SET does not take bind parameters; the values are validated integers.
        if self.lock_timeout_ms is not None:
            begin.append(f"SET LOCAL lock_timeout = {self.lock_timeout_ms}")
        if self.statement_timeout_ms is not None:
            begin.append(f"SET LOCAL statement_timeout = {self.statement_timeout_ms}")
        # One round trip: simple-query protocol runs the statements in order.
        self._begin_sql = "; ".join(begin)

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    def transaction(self) -> _Transaction:
        """An async context manager: the outermost one BEGINs and COMMITs, nested ones are
        savepoints. After-commit callbacks run after the outermost COMMIT."""
        return _Transaction(self)

    async def run_in_transaction(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()`` inside ``transaction()`` and return its result."""
        if not callable(fn):
            raise InvalidArgumentError(f"fn must be an async callable, got {fn!r}")
        async with _Transaction(self):
            return await fn()

    def lazy_savepoint(
        self, before_first_statement: Callable[[], Awaitable[None]] | None = None
    ) -> _LazySavepoint:
        """A savepoint in the current transaction whose SAVEPOINT is sent only before the
        block's first statement: free for a block that sends none. ``before_first_statement``
        is awaited just before that SAVEPOINT, outside it (the batched sweep writes the rows it
        kept back). For the batched sweep; outside a transaction: NoActiveTransactionError."""
        return _LazySavepoint(self, before_first_statement)

    def after_commit(self, callback: Callable[[], Any]) -> None:
        """Run ``callback()`` (awaited if it returns an awaitable) after the outermost COMMIT.

        Dropped if the transaction or the enclosing savepoint rolls back. A callback that raises
        is logged and does not stop the others. Outside a transaction: NoActiveTransactionError.
        """
        if not callable(callback):
            raise InvalidArgumentError(f"callback must be callable, got {callback!r}")
        scope = _SCOPES.current(self._pool)
        if scope is None:
            raise NoActiveTransactionError("after_commit requires an active transaction")
        scope.callbacks.append(callback)

    def is_transaction_active(self) -> bool:
        """Whether the current task is inside a transaction of this runner's pool."""
        return _SCOPES.owned(self._pool) is not None

    def connection(self) -> AnyConnection:
        """The current transaction's connection, so your own SQL joins the workflow transaction.

        Use it only from this task and only until the transaction ends.
        """
        scope = _SCOPES.current(self._pool)
        if scope is None:
            raise NoActiveTransactionError("connection() requires an active transaction")
        root = scope.root
        # Your SQL may leave session state (SET, cursors, LISTEN, advisory locks): the COMMIT
        # then carries the session reset.
        root.handed_out = True
        return root.connection

    def bind(self, conn: AnyConnection) -> _Bound:
        """Make workflow calls inside the block join ``conn``'s open transaction.

        The caller owns BEGIN and COMMIT; nested workflow calls become savepoints on ``conn``.
        After-commit callbacks registered inside run when the block exits without error (the
        runner cannot see your COMMIT).
        """
        return _Bound(self, conn)
