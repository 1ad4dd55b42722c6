"""Driver errors raised by the package's own SQL, mapped onto the package's error tree.

The rule: choose by asyncpg class (or SQLSTATE) and connection state, never by message text; keep
asyncpg's error in ``__cause__``; let errors of a caller's own code pass unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import asyncpg

from duraflows_pg_async.errors import (
    ConfigurationError,
    ConnectionLostError,
    DatabaseError,
    LockTimeoutError,
    StatementTimeoutError,
    TransactionConflictError,
    WorkflowError,
)

__all__ = ["map_db_errors", "map_optional_table_errors", "raise_mapped", "translate_db_error"]

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    ConnectionError,
    OSError,
)


def _connection_gone(connection: Any) -> bool:
    """Whether ``connection`` (a pooled proxy or a connection) can no longer be used.

    When the server drops a connection that sits idle between our statements (a terminated
    backend, a restart, a cut network), asyncpg may notice first: it closes the connection and
    detaches the pool's proxy, and our next statement fails with a client-side InterfaceError.
    The connection's state, not the error's wording, tells that apart from a misuse.
    """
    is_closed = getattr(connection, "is_closed", None)  # None for a pool: not one connection
    if is_closed is None:
        return False
    try:
        return bool(is_closed())
    except asyncpg.InterfaceError:
        return True  # a proxy asyncpg detached: it does so when the connection died


def _is_client_encode_error(exc: BaseException) -> bool:
    """asyncpg's bind-time error: the value never left the process.

    asyncpg raises it as a DataError (SQLSTATE 22000) chained to the encoder's exception, which
    no error sent by the server carries.
    """
    return type(exc) is asyncpg.DataError and exc.__cause__ is not None


def translate_db_error(
    exc: BaseException, what: str, connection: Any = None, *, connecting: bool = False
) -> WorkflowError | None:
    """The package error for a driver error raised by our own statement, or None to re-raise.

    ``connecting``: ``exc`` was raised while a connection was being made (``pool.acquire()``),
    before any statement of ours.
    """
    if isinstance(exc, WorkflowError):
        return None
    if connecting and isinstance(exc, TimeoutError):
        # asyncpg's connect timeout, which covers every host of a multi-host DSN: a server that
        # never answers (a dead machine, a black-holed network) used it all. No statement ran,
        # so this is the server being unreachable, not the StatementTimeoutError below.
        return ConnectionLostError(f"{what}: no connection to PostgreSQL within the timeout")
    if isinstance(exc, asyncpg.LockNotAvailableError):
        return LockTimeoutError(f"{what}: lock not available (lock_timeout)")
    if isinstance(exc, asyncpg.QueryCanceledError):
        return StatementTimeoutError(f"{what}: statement cancelled (statement_timeout)")
    if isinstance(exc, asyncpg.SerializationError | asyncpg.DeadlockDetectedError):
        return TransactionConflictError(f"{what}: {type(exc).__name__} (SQLSTATE {exc.sqlstate})")
    if isinstance(exc, TimeoutError):
        # Before the connection errors: TimeoutError is an OSError (asyncpg command_timeout).
        return StatementTimeoutError(f"{what}: timed out in the driver")
    # InternalClientError: asyncpg's protocol state is broken (typically the server's FATAL
    # arrived while the connection was idle), so the connection is unusable.
    lost = isinstance(exc, asyncpg.InternalClientError) or (
        isinstance(exc, asyncpg.InterfaceError) and _connection_gone(connection)
    )
    if isinstance(exc, _CONNECTION_ERRORS) or lost:
        return ConnectionLostError(f"{what}: connection to PostgreSQL lost ({type(exc).__name__})")
    if _is_client_encode_error(exc):
        # Our stores check JSON before binding, so this is a pool without JSON codecs or a
        # json_dumps that refused a value the standard library accepts (orjson, ints > 64 bits).
        return ConfigurationError(
            f"{what}: could not encode a query argument ({exc}). If the pool has no JSON codecs, "
            "create it with duraflows_pg_async.create_pool() or call "
            "duraflows_pg_async.register_codecs(conn) in your pool's init="
        )
    if isinstance(exc, asyncpg.PostgresError):
        return DatabaseError(f"{what}: {type(exc).__name__} (SQLSTATE {exc.sqlstate}): {exc}")
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError):
        return DatabaseError(f"{what}: {type(exc).__name__}: {exc}")
    return None


def raise_mapped(
    exc: Exception, what: str, connection: Any = None, *, connecting: bool = False
) -> NoReturn:
    """Raise ``exc`` as the package's error with ``exc`` as cause, or unchanged if it is not a
    driver error. For ``except`` blocks on hot paths, where a try costs nothing."""
    mapped = translate_db_error(exc, what, connection, connecting=connecting)
    if mapped is None:
        raise exc
    raise mapped from exc


@contextmanager
def map_db_errors(what: str, connection: Any = None, *, connecting: bool = False) -> Iterator[None]:
    """Wrap driver errors raised inside the block in the package's tree; ``what`` names the call
    and ``connection``, when given, is the one the block used; ``connecting``: the block makes
    connections and runs no statement of ours (see ``translate_db_error``)."""
    try:
        yield
    except Exception as exc:
        raise_mapped(exc, what, connection, connecting=connecting)


@contextmanager
def map_optional_table_errors(
    what: str, connection: Any, *, table: str, migration: str
) -> Iterator[None]:
    """``map_db_errors`` for a store over an optional table: when the table does not exist, a
    ConfigurationError that names the migration to apply."""
    try:
        with map_db_errors(what, connection):
            yield
    except DatabaseError as exc:
        if isinstance(exc.__cause__, asyncpg.UndefinedTableError):
            raise ConfigurationError(
                f"{what}: table {table} does not exist: apply migration {migration} "
                "(duraflows-pg migrate up, or migrations.apply())"
            ) from exc.__cause__
        raise
