"""The error tree and the one place asyncpg errors are mapped."""

from __future__ import annotations

import inspect
from uuid import uuid4

import asyncpg
import pytest

import duraflows_pg_async
from duraflows_pg_async import errors
from duraflows_pg_async.errors import (
    ConfigurationError,
    ConnectionLostError,
    DatabaseError,
    LockTimeoutError,
    OptimisticLockError,
    StatementTimeoutError,
    TransactionConflictError,
    WorkflowError,
    map_db_errors,
)


def public_error_classes() -> list[type[BaseException]]:
    return [
        obj
        for name in errors.__all__
        if inspect.isclass(obj := getattr(errors, name)) and issubclass(obj, BaseException)
    ]


def test_every_error_is_a_workflow_error_with_a_one_line_docstring() -> None:
    classes = public_error_classes()
    assert len(classes) >= 18
    for cls in classes:
        assert issubclass(cls, WorkflowError), cls
        doc = (cls.__doc__ or "").strip()
        assert doc, cls
        assert "\n" not in doc, cls
        assert cls.__module__ == "duraflows_pg_async.errors"


def test_every_error_is_reexported_from_the_package_root() -> None:
    for cls in public_error_classes():
        assert getattr(duraflows_pg_async, cls.__name__) is cls


def test_tree_in_the_docstring_lists_every_class() -> None:
    doc = errors.__doc__ or ""
    for cls in public_error_classes():
        assert cls.__name__ in doc, cls


def bind_error() -> BaseException:
    """The shape of asyncpg's client-side bind error: a DataError chained to the encoder's."""
    try:
        try:
            raise TypeError("expected str, got dict")
        except TypeError as cause:
            raise asyncpg.DataError("invalid input for query argument $7") from cause
    except asyncpg.DataError as exc:
        return exc


@pytest.mark.parametrize(
    ("driver_error", "expected"),
    [
        (asyncpg.LockNotAvailableError("lock"), LockTimeoutError),
        (asyncpg.QueryCanceledError("cancel"), StatementTimeoutError),
        (asyncpg.DeadlockDetectedError("deadlock"), TransactionConflictError),
        (asyncpg.SerializationError("serial"), TransactionConflictError),
        (asyncpg.ConnectionDoesNotExistError("gone"), ConnectionLostError),
        (asyncpg.exceptions.AdminShutdownError("terminated"), ConnectionLostError),
        (ConnectionResetError("reset"), ConnectionLostError),
        (TimeoutError(), StatementTimeoutError),
        (asyncpg.DivisionByZeroError("x"), DatabaseError),
        (bind_error(), ConfigurationError),
        (asyncpg.DataError("sent by the server"), DatabaseError),
        (asyncpg.ClientConfigurationError("bad dsn"), DatabaseError),
        (asyncpg.InternalClientError("protocol state"), DatabaseError),
        (asyncpg.InterfaceError("misuse"), DatabaseError),
    ],
)
def test_driver_errors_map_by_class_and_keep_the_cause(
    driver_error: BaseException, expected: type[WorkflowError]
) -> None:
    with pytest.raises(expected) as caught, map_db_errors("lock_by_uuid"):
        raise driver_error
    assert caught.value.__cause__ is driver_error
    assert "lock_by_uuid" in str(caught.value)


def test_other_errors_pass_through_unchanged() -> None:
    original = KeyError("user code")
    with pytest.raises(KeyError) as caught, map_db_errors("x"):
        raise original
    assert caught.value is original
    mine = OptimisticLockError(uuid4(), 3)
    with pytest.raises(OptimisticLockError) as caught_mine, map_db_errors("x"):
        raise mine
    assert caught_mine.value is mine


def test_optimistic_lock_message_names_instance_and_version() -> None:
    instance_uuid = uuid4()
    error = OptimisticLockError(instance_uuid, 7)
    assert str(error) == (
        f'Optimistic locking failure: workflow instance "{instance_uuid}" was modified '
        "concurrently (expected version 7)"
    )


def test_default_message_is_the_docstring() -> None:
    assert str(DatabaseError()) == DatabaseError.__doc__
