"""Every error duraflows-pg-async raises.

```text
WorkflowError
├── InvalidArgumentError               (also a ValueError)
├── ConfigurationError
├── NoActiveTransactionError
├── TransactionTaskError
├── CommitRolledBackError
├── OptimisticLockError
├── WorkflowInstanceNotFoundError
├── InstanceAlreadyExistsError
├── DatabaseError                      (asyncpg's error is in __cause__)
│   ├── LockTimeoutError
│   ├── StatementTimeoutError
│   ├── TransactionConflictError
│   └── ConnectionLostError
├── WorkflowDefinitionError
│   └── IncompatibleDefinitionError
├── InvalidEventError
├── CommandFailureError
├── OnEnterDepthExceededError
└── UnreadableRowError
```

Errors raised by the package's own SQL are wrapped (original in ``__cause__``); errors raised by a
caller's own code or SQL inside a transaction propagate unchanged.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterator, Sized
from contextlib import contextmanager
from typing import Any, NoReturn
from uuid import UUID

import asyncpg

__all__ = [
    "WorkflowError",
    "InvalidArgumentError",
    "ConfigurationError",
    "NoActiveTransactionError",
    "TransactionTaskError",
    "CommitRolledBackError",
    "OptimisticLockError",
    "WorkflowInstanceNotFoundError",
    "InstanceAlreadyExistsError",
    "DatabaseError",
    "LockTimeoutError",
    "StatementTimeoutError",
    "TransactionConflictError",
    "ConnectionLostError",
    "WorkflowDefinitionError",
    "IncompatibleDefinitionError",
    "InvalidEventError",
    "CommandFailureError",
    "OnEnterDepthExceededError",
    "UnreadableRowError",
    "map_db_errors",
]


# How much of a caller's value an error message repeats: enough to recognise it, little enough
# that a 20 MB event name does not become a 20 MB message that an app logs or returns to its
# client. Errors keep the full value in their attributes (``exc.event_name``); only messages are
# bounded.
ECHO_LIMIT = 200


class _BoundedRepr(reprlib.Repr):
    """reprlib's bounded repr(), which also bounds subclasses of the builtin containers and ints
    too long for repr() (reprlib gives those to the plain repr())."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = self.maxother = self.maxlong = limit

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 4 * self.maxlong:
            # Python refuses to write ints longer than sys.get_int_max_str_digits() digits.
            return f"<int of {x.bit_length()} bits>"
        return super().repr_int(x, level)

    def repr_instance(self, x: object, level: int) -> str:
        for kind, method in _CONTAINERS:
            if isinstance(x, kind):
                return str(getattr(self, method)(x, level))
        return super().repr_instance(x, level)


_CONTAINERS: tuple[tuple[type, str], ...] = (
    (int, "repr_int"),
    (str, "repr_str"),
    (dict, "repr_dict"),
    (list, "repr_list"),
    (tuple, "repr_tuple"),
    (frozenset, "repr_frozenset"),
    (set, "repr_set"),
)


def echo(value: object, limit: int = ECHO_LIMIT, *, raw: bool = False) -> str:
    """``value`` as an error message repeats it: repr() cut to about ``limit`` characters, with
    the full size after the cut (``'aaaa'... (20000090 characters)``). Never raises.

    With ``raw=True`` a str is given as itself and a UUID as its str() (for messages that quote
    names, ``Event "ship"``); anything else as without it.
    """
    try:
        return _echo(value, limit, raw)
    except Exception:
        # A hostile __repr__ or __len__, or a container nested too deep for reprlib.
        return f"<unprintable {type(value).__name__}>"


def _echo(value: object, limit: int, raw: bool) -> str:
    if isinstance(value, str):
        text = str.__str__(value)  # a str subclass's own __str__/__getitem__ play no part
        size, unit = len(text), "characters"
        head = text[:limit]
        shown = head if raw else repr(head)
    elif isinstance(value, bytes | bytearray):
        size, unit = len(value), "bytes"
        shown = repr(bytes(memoryview(value)[:limit]))
    elif raw and isinstance(value, UUID):
        return str(value)
    else:
        shown = _BoundedRepr(limit).repr(value)
        # reprlib marks what it left out with "...": say how many items there were.
        size = len(value) if isinstance(value, Sized) and "..." in shown else -1
        unit = "items"
    # The repr() of a non-printable character is up to 10 characters long; the 3 spare
    # characters are the quotes (and b) around a repr() that is not cut.
    cut = len(shown) > limit + 3
    if cut:
        shown = shown[:limit]
    if unit == "items":
        if size >= 0:
            return f"{shown}{'...' if cut else ''} ({size} item{'' if size == 1 else 's'})"
        return f"{shown}..." if cut else shown
    return f"{shown}... ({size} {unit})" if cut or size > limit else shown


class WorkflowError(Exception):
    """Base class of every error this package raises."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message if message is not None else (type(self).__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidArgumentError(WorkflowError, ValueError):
    """An argument given to a public entry point is not acceptable; nothing was written."""


class ConfigurationError(WorkflowError):
    """The pool or provider is set up in a way this package cannot work with."""


class NoActiveTransactionError(WorkflowError):
    """The call requires an active transaction on this pool and there is none."""


class TransactionTaskError(WorkflowError):
    """A transaction's connection was used from a task other than the one that opened it."""


class CommitRolledBackError(WorkflowError):
    """PostgreSQL answered COMMIT with ROLLBACK because an earlier statement failed."""

    def __init__(self) -> None:
        super().__init__(
            "COMMIT was rolled back by PostgreSQL because an earlier statement in the transaction "
            "failed"
        )


class OptimisticLockError(WorkflowError):
    """An instance update found a different version than expected (modified concurrently)."""

    def __init__(self, instance_uuid: UUID, expected_version: int) -> None:
        self.instance_uuid = instance_uuid
        self.expected_version = expected_version
        super().__init__(
            f'Optimistic locking failure: workflow instance "{instance_uuid}" was modified '
            f"concurrently (expected version {expected_version})"
        )


class WorkflowInstanceNotFoundError(WorkflowError):
    """No workflow instance has the given uuid."""

    def __init__(self, instance_uuid: UUID | str) -> None:
        self.instance_uuid = instance_uuid
        super().__init__(f'Workflow instance "{echo(instance_uuid, raw=True)}" not found')


class InstanceAlreadyExistsError(WorkflowError):
    """A workflow instance with this uuid already exists."""

    def __init__(self, instance_uuid: UUID) -> None:
        self.instance_uuid = instance_uuid
        super().__init__(f'Workflow instance "{instance_uuid}" already exists')


class DatabaseError(WorkflowError):
    """A statement issued by this package failed in the database or the driver."""


class LockTimeoutError(DatabaseError):
    """A row lock was not granted within lock_timeout (SQLSTATE 55P03)."""


class StatementTimeoutError(DatabaseError):
    """A statement was cancelled by statement_timeout or a cancel request (SQLSTATE 57014)."""


class TransactionConflictError(DatabaseError):
    """PostgreSQL aborted the transaction for a deadlock or serialization failure; retry it."""


class ConnectionLostError(DatabaseError):
    """The connection to PostgreSQL was lost or closed during the call."""


class WorkflowDefinitionError(WorkflowError):
    """A workflow definition is invalid, unknown, duplicated or drifted from its stored version."""

    def __init__(self, workflow_name: str, message: str) -> None:
        self.workflow_name = workflow_name
        super().__init__(f'Workflow "{echo(workflow_name, raw=True)}": {message}')


class IncompatibleDefinitionError(WorkflowDefinitionError):
    """The instance's state no longer exists in the definition that governs it."""


class InvalidEventError(WorkflowError):
    """The event is not defined on the instance's current state."""

    def __init__(self, instance_uuid: UUID, state: str, event_name: str) -> None:
        self.instance_uuid = instance_uuid
        self.state = state
        self.event_name = event_name
        super().__init__(
            f'Event "{echo(event_name, raw=True)}" is not available on state '
            f'"{echo(state, raw=True)}" for instance "{echo(instance_uuid, raw=True)}"'
        )


class CommandFailureError(WorkflowError):
    """A mandatory command failed and the event or onEnter has no error state to route to."""

    def __init__(
        self, instance_uuid: UUID, event_name: str, command_name: str, result: Any
    ) -> None:
        self.instance_uuid = instance_uuid
        self.event_name = event_name
        self.command_name = command_name
        self.result = result
        detail = getattr(result, "message", None) or getattr(result, "code", None) or "unknown"
        super().__init__(
            f'Command "{echo(command_name, raw=True)}" failed during event '
            f'"{echo(event_name, raw=True)}" of workflow instance '
            f'"{echo(instance_uuid, raw=True)}": {echo(detail, raw=True)}'
        )


class OnEnterDepthExceededError(WorkflowError):
    """An onEnter chain went deeper than max_on_enter_depth."""

    def __init__(self, instance_uuid: UUID, state: str, max_depth: int) -> None:
        self.instance_uuid = instance_uuid
        self.state = state
        self.max_depth = max_depth
        super().__init__(
            f'onEnter chain of workflow instance "{instance_uuid}" exceeded the maximum depth '
            f'of {max_depth} at state "{echo(state, raw=True)}"'
        )


class UnreadableRowError(WorkflowError):
    """A stored row holds a value this package cannot decode; the row was left as it is."""

    def __init__(self, instance_uuid: UUID, column: str, reason: str) -> None:
        self.instance_uuid = instance_uuid
        self.column = column
        self.reason = reason
        super().__init__(f'Workflow instance "{instance_uuid}" cannot be read: {column} {reason}')


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
    exc: BaseException, what: str, connection: Any = None
) -> WorkflowError | None:
    """The package error for a driver error raised by our own statement, or None to re-raise."""
    if isinstance(exc, WorkflowError):
        return None
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


def raise_mapped(exc: Exception, what: str, connection: Any = None) -> NoReturn:
    """Raise ``exc`` as the package's error with ``exc`` as cause, or unchanged if it is not a
    driver error. For ``except`` blocks on hot paths, where a try costs nothing."""
    mapped = translate_db_error(exc, what, connection)
    if mapped is None:
        raise exc
    raise mapped from exc


@contextmanager
def map_db_errors(what: str, connection: Any = None) -> Iterator[None]:
    """Wrap driver errors raised inside the block in the package's tree; ``what`` names the call
    and ``connection``, when given, is the one the block used."""
    try:
        yield
    except Exception as exc:
        raise_mapped(exc, what, connection)


for _name in __all__:
    globals()[_name].__module__ = "duraflows_pg_async.errors"
del _name
