"""Input checks that run before any SQL."""

from __future__ import annotations

import math
from collections import OrderedDict
from datetime import UTC, datetime, timedelta, timezone
from enum import IntEnum
from typing import Any
from uuid import UUID, uuid4

import pytest

from duraflows_pg_async import InvalidArgumentError
from duraflows_pg_async._validate import (
    MAX_JSON_DEPTH,
    check_json,
    coerce_uuid,
    require_aware,
    require_identifier,
    require_int,
    timeout_ms,
)


class Level(IntEnum):
    LOW = 1


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"a": [1, 2.5, "x", None, True, False]},
        {"nested": {"deep": [{"k": "v"}]}},
        {"tuple": (1, 2)},
        {"ordered": OrderedDict(a=1)},
        {"enum": Level.LOW},
        {"unicode": "é ☃ 𝄞"},
        {"big": 2**80},
    ],
)
def test_json_values_are_accepted(value: Any) -> None:
    check_json(value, "context")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"x": math.nan}, "context['x']: nan is not a JSON number"),
        ({"x": -math.inf}, "context['x']: -inf is not a JSON number"),
        ({"x": [0, {1, 2}]}, "context['x'][1]: set value"),
        ({"x": b"raw"}, "context['x']: bytes value"),
        ({"x": object()}, "context['x']: object value"),
        ({"x": uuid4()}, "context['x']: UUID value"),
        ({(1, 2): "v"}, "context: key (1, 2) is a tuple"),
        ({None: "v"}, "context: key None is a NoneType"),
        ({"x": "a\x00b"}, "context['x']: strings stored as jsonb cannot contain NUL"),
        ({"bad\x00key": 1}, "context: key 'bad\\x00key'"),
        ({"x": "\udcff"}, "context['x']: string contains an unpaired surrogate"),
    ],
)
def test_non_json_values_name_their_path(value: Any, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        check_json(value, "context")
    assert message in str(caught.value)


def test_depth_limit_is_enforced_without_recursion_errors() -> None:
    ok: Any = 1
    for _ in range(MAX_JSON_DEPTH):
        ok = [ok]
    check_json(ok, "context")
    too_deep: Any = 1
    for _ in range(50_000):
        too_deep = {"k": too_deep}
    with pytest.raises(InvalidArgumentError, match="nested deeper than"):
        check_json(too_deep, "context")


def test_coerce_uuid() -> None:
    value = uuid4()
    assert coerce_uuid(value, "u") is value
    assert coerce_uuid(str(value).upper(), "u") == value
    assert type(coerce_uuid(str(value), "u")) is UUID
    for bad in ["nope", "", "123e4567-e89b-12d3-a456-42661417400", 5, None, b"x"]:
        with pytest.raises(InvalidArgumentError, match="instance_uuid must be a UUID"):
            coerce_uuid(bad, "instance_uuid")


def test_require_aware() -> None:
    aware = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2)))
    assert require_aware(aware, "t") is aware
    with pytest.raises(InvalidArgumentError, match="t must be timezone-aware"):
        require_aware(datetime(2026, 1, 1), "t")
    with pytest.raises(InvalidArgumentError, match="t must be a datetime"):
        require_aware("2026-01-01T00:00:00Z", "t")


def test_require_int_refuses_bools_and_floats() -> None:
    assert require_int(3, "limit", minimum=1) == 3
    for bad in [True, 1.0, 0, "1", None]:
        with pytest.raises(InvalidArgumentError, match="limit must be a positive integer"):
            require_int(bad, "limit", minimum=1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (0, 0),
        (3, 3000),
        (0.0001, 1),
        (1.2345, 1235),
        (timedelta(milliseconds=250), 250),
        (timedelta(microseconds=1), 1),
    ],
)
def test_timeout_ms_rounds_up(value: object, expected: int | None) -> None:
    assert timeout_ms(value, "lock_timeout") == expected


@pytest.mark.parametrize("value", [-1, -0.001, math.nan, math.inf, "3", True, [1], 10**10])
def test_timeout_ms_refuses(value: object) -> None:
    with pytest.raises(InvalidArgumentError, match="lock_timeout"):
        timeout_ms(value, "lock_timeout")


@pytest.mark.parametrize("name", ["a", "_x", "Tenant_42", "x" * 63])
def test_identifiers_accepted(name: str) -> None:
    assert require_identifier(name, "schema") == name


@pytest.mark.parametrize("name", ["", "1a", "a-b", "a b", 'a"b', "a;drop", "x" * 64, "é", None])
def test_identifiers_refused(name: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="schema must be an identifier"):
        require_identifier(name, "schema")


def test_aware_utc_constant_used_by_examples_is_aware() -> None:
    assert require_aware(datetime.now(UTC), "now").tzinfo is not None
