"""The error tree and the one place asyncpg errors are mapped."""

from __future__ import annotations

import inspect
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

from duraflows_pg_async import errors
from duraflows_pg_async._core.echo import echo
from duraflows_pg_async._pg.error_mapping import map_db_errors
from duraflows_pg_async.errors import (
    CommandFailureError,
    ConfigurationError,
    ConnectionLostError,
    DatabaseError,
    InvalidEventError,
    LockTimeoutError,
    OnEnterDepthExceededError,
    OptimisticLockError,
    StatementTimeoutError,
    TransactionConflictError,
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowInstanceNotFoundError,
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


@pytest.mark.parametrize(
    ("driver_error", "expected"),
    [
        # asyncpg's connect timeout: no statement ran, the server could not be reached.
        (TimeoutError(), ConnectionLostError),
        (ConnectionRefusedError("refused"), ConnectionLostError),
        (asyncpg.InvalidPasswordError("password"), DatabaseError),
    ],
)
def test_errors_while_connecting_map_a_timeout_to_a_lost_connection(
    driver_error: BaseException, expected: type[WorkflowError]
) -> None:
    with pytest.raises(expected) as caught, map_db_errors("acquire", connecting=True):
        raise driver_error
    assert type(caught.value) is expected
    assert caught.value.__cause__ is driver_error


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


# ------------------------------------------------------------------------------------------------
# What a message repeats of the caller's input is bounded

HUGE = 20_000_090


class EvilRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class HugeRepr:
    def __repr__(self) -> str:
        return "r" * HUGE


def _nested_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ship", "'ship'"),
        ("x" * 200, repr("x" * 200)),
        ("x" * 201, f"{'x' * 200!r}... (201 characters)"),
        ("x" * HUGE, f"{'x' * 200!r}... ({HUGE} characters)"),
        (b"y" * 1000, f"{b'y' * 200!r}... (1000 bytes)"),
        (42, "42"),
        (None, "None"),
        (True, "True"),
        (10**5000, "<int of 16610 bits>"),
        (list(range(10**6)), "[0, 1, 2, 3, 4, 5, ...] (1000000 items)"),
        ({"a": 1}, "{'a': 1}"),
    ],
    ids=lambda value: type(value).__name__,
)
def test_echo_repeats_a_bounded_repr_with_the_full_size(value: object, expected: str) -> None:
    assert echo(value) == expected


def test_echo_raw_gives_text_and_uuids_as_themselves() -> None:
    instance_uuid = uuid4()
    assert echo("ship", raw=True) == "ship"
    assert echo(instance_uuid, raw=True) == str(instance_uuid)
    assert echo("z" * HUGE, raw=True) == "z" * 200 + f"... ({HUGE} characters)"
    assert echo(5, raw=True) == "5"


@pytest.mark.parametrize(
    "value",
    [
        "\U0001ffff" * HUGE,  # repr() makes each 10 characters long
        "\x00" * 150,
        HugeRepr(),
        EvilRepr(),
        _nested_list(5000),
        [["a" * HUGE] * 10] * 10,
        {("k" * HUGE,): HugeRepr()},
    ],
    ids=lambda value: type(value).__name__,
)
def test_echo_never_raises_and_stays_short(value: object) -> None:
    assert len(echo(value)) < 300
    assert len(echo(value, raw=True)) < 300
    assert len(echo(value, 20)) < 60


def test_echo_of_an_unprintable_value_names_its_type() -> None:
    assert echo(EvilRepr()).startswith("<EvilRepr instance at ")


def test_echo_of_a_str_subclass_uses_the_text() -> None:
    class Name(str):
        def __repr__(self) -> str:
            raise RuntimeError("hostile")

        def __getitem__(self, item: Any) -> str:
            raise RuntimeError("hostile")

    assert echo(Name("ship")) == "'ship'"
    assert echo(Name("ship"), raw=True) == "ship"


def _short(error: BaseException) -> str:
    text = str(error)
    assert len(text) < 1024, len(text)
    assert f"({HUGE} characters)" in text
    return text


def test_error_messages_bound_caller_input_and_attributes_keep_it() -> None:
    instance_uuid = uuid4()
    long = "n" * HUGE

    invalid_event = InvalidEventError(instance_uuid, long, long)
    assert _short(invalid_event).startswith('Event "nnnn')
    assert str(instance_uuid) in str(invalid_event)
    assert invalid_event.event_name == long
    assert invalid_event.state == long

    not_found = WorkflowInstanceNotFoundError(long)
    assert _short(not_found).startswith('Workflow instance "nnnn')
    assert not_found.instance_uuid == long

    definition = WorkflowDefinitionError(long, "Workflow not found in registry")
    assert _short(definition).endswith(f'... ({HUGE} characters)": Workflow not found in registry')
    assert definition.workflow_name == long

    class Result:
        message = "m" * HUGE

    failure = CommandFailureError(instance_uuid, long, long, Result())
    assert _short(failure).count(f"({HUGE} characters)") == 3
    assert failure.command_name == long

    depth = OnEnterDepthExceededError(instance_uuid, long, 10)
    assert _short(depth).endswith(f'... ({HUGE} characters)"')


def test_short_input_is_repeated_unchanged() -> None:
    instance_uuid = uuid4()
    assert str(InvalidEventError(instance_uuid, "draft", "ship")) == (
        f'Event "ship" is not available on state "draft" for instance "{instance_uuid}"'
    )
    assert str(WorkflowInstanceNotFoundError(instance_uuid)) == (
        f'Workflow instance "{instance_uuid}" not found'
    )
    assert str(WorkflowDefinitionError("order", "boom")) == 'Workflow "order": boom'
