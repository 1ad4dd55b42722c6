"""Input checks that run before any SQL."""

from __future__ import annotations

import math
from collections import OrderedDict
from datetime import UTC, datetime, timedelta, timezone
from enum import IntEnum
from typing import Any
from uuid import UUID, uuid4

import pytest

from duraflows_pg_async import TimeoutRetryPolicy
from duraflows_pg_async._core.model import TimeoutRetry
from duraflows_pg_async._core.validate import (
    MAX_DURATION,
    MAX_JSON_DEPTH,
    check_json,
    coerce_uuid,
    require_aware,
    require_duration,
    require_identifier,
    require_int,
    require_str,
    timeout_ms,
    trust_uuid_type,
)
from duraflows_pg_async.errors import InvalidArgumentError


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


def test_coerce_uuid_copies_subclasses_but_asyncpgs_own() -> None:
    from asyncpg.pgproto import pgproto

    import duraflows_pg_async.stores  # noqa: F401  (the adapter trusts asyncpg's UUID)

    class Hostile(UUID):
        def __str__(self) -> str:
            return "not what it seems"

    hostile = Hostile(int=5)
    copied = coerce_uuid(hostile, "u")
    assert type(copied) is UUID
    assert copied == hostile
    from_row = pgproto.UUID(str(uuid4()))
    assert coerce_uuid(from_row, "u") is from_row
    with pytest.raises(InvalidArgumentError, match="not a UUID subclass"):
        trust_uuid_type(str)


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


# ------------------------------------------------------------------------------------------------
# Messages repeat a bounded part of the input

HUGE = 20_000_090


def _short(error: BaseException, size: int = HUGE) -> str:
    text = str(error)
    assert len(text) < 1024, len(text)
    assert f"({size} characters)" in text
    return text


@pytest.mark.parametrize(
    "value",
    ["0" * HUGE, "urn:uuid:" + "{" * (HUGE - 9), "\U0001ffff" * HUGE],
    ids=["digits", "braces", "astral"],
)
def test_a_huge_uuid_string_gives_a_short_message(value: str) -> None:
    with pytest.raises(InvalidArgumentError, match="instance_uuid must be a UUID") as caught:
        coerce_uuid(value, "instance_uuid")
    _short(caught.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a" * (HUGE - 1) + "\x00", "event_name must not contain NUL characters"),
        ("a" * (HUGE - 1) + "\udcff", "event_name contains an unpaired surrogate"),
    ],
    ids=["nul", "surrogate"],
)
def test_require_str_messages_are_short(value: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as caught:
        require_str(value, "event_name")
    _short(caught.value)


def test_require_int_message_of_a_huge_int_is_short() -> None:
    with pytest.raises(InvalidArgumentError, match="<int of 16610 bits>") as caught:
        require_int(10**5000, "limit", minimum=1)
    assert len(str(caught.value)) < 200


def test_json_paths_with_huge_keys_are_short() -> None:
    key = "k" * HUGE
    value: Any = {"x": math.nan}
    for _ in range(150):
        value = {key: value}
    with pytest.raises(InvalidArgumentError, match="nan is not a JSON number") as caught:
        check_json(value, "context")
    text = str(caught.value)
    assert len(text) < 1024
    assert text.startswith(f"context[{'k' * 100!r}... ({HUGE} characters)]")
    assert text.endswith("['x']: nan is not a JSON number")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"k" * HUGE + "\x00": 1}, "strings stored as jsonb cannot contain NUL"),
        ({("k" * HUGE,): 1}, "is a tuple; JSON object keys must be strings"),
        ({"x": {"k" * HUGE}}, "set value"),
        ({"x": "v" * HUGE + "\x00"}, "strings stored as jsonb cannot contain NUL"),
    ],
    ids=["nul-key", "tuple-key", "set", "nul-value"],
)
def test_json_messages_about_huge_values_are_short(value: Any, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as caught:
        check_json(value, "context")
    assert len(str(caught.value)) < 1024


# ------------------------------------------------------------------------------------------------
# Durations: the one checker every duration goes through


def test_the_longest_duration_is_100_years() -> None:
    assert timedelta(days=36525) == MAX_DURATION
    # From any plausible clock, a deadline that far out is a datetime (and a timestamptz).
    assert datetime(9898, 12, 31, tzinfo=UTC) + MAX_DURATION < datetime.max.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "kwargs", "seconds"),
    [
        (0, {}, 0.0),
        (1.5, {}, 1.5),
        (timedelta(minutes=2), {}, 120.0),
        (2, {"unit": "minutes"}, 120.0),
        (36525, {"unit": "days"}, MAX_DURATION.total_seconds()),
        (MAX_DURATION, {}, MAX_DURATION.total_seconds()),
        (1e-6, {"positive": True}, 1e-6),
    ],
)
def test_require_duration_accepts(value: object, kwargs: dict[str, Any], seconds: float) -> None:
    assert require_duration(value, "delay", **kwargs) == seconds


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        (math.nan, {}, "delay must be a finite number, got nan"),
        (math.inf, {}, "delay must be a finite number, got inf"),
        (-1, {}, "delay must be non-negative, got -1"),
        (-(10**400), {}, "delay must be non-negative, got <int of 1329 bits>"),
        (0, {"positive": True}, "delay must be positive, got 0"),
        (1e-7, {"positive": True}, "delay must be positive, got 1e-07"),
        (timedelta(0), {"positive": True}, "delay must be positive"),
        (True, {}, "delay must be a timedelta or a number of seconds, got True"),
        ("1", {}, "delay must be a timedelta or a number of seconds, got '1'"),
        (timedelta(1), {"timedelta_ok": False}, "delay must be a number, got datetime.timedelta"),
        (1e300, {}, "delay must be at most 100 years (36525 days), got 1e+300"),
        (10**400, {}, "delay must be at most 100 years (36525 days), got <int of 1329 bits>"),
        (36526, {"unit": "days"}, "delay must be at most 100 years (36525 days), got 36526"),
        (1e306, {"unit": "days"}, "delay must be at most 100 years (36525 days), got 1e+306"),
        (
            MAX_DURATION + timedelta(microseconds=1),
            {},
            "delay must be at most 100 years (36525 days)",
        ),
        (timedelta(days=3e6), {}, "delay must be at most 100 years (36525 days)"),
        (2, {"maximum": timedelta(seconds=1)}, "delay must be at most 1000 milliseconds, got 2"),
    ],
)
def test_require_duration_refuses(value: object, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        require_duration(value, "delay", **kwargs)
    assert str(caught.value).startswith(message)


def test_timeout_ms_rounds_a_sub_microsecond_timeout_up_to_one_millisecond() -> None:
    assert timeout_ms(1e-7, "lock_timeout") == 1
    assert timeout_ms(timedelta(milliseconds=2**31 - 1), "lock_timeout") == 2**31 - 1
    with pytest.raises(InvalidArgumentError, match="at most 2147483647 milliseconds"):
        timeout_ms(2147483.6475, "lock_timeout")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_delay": 1e300}, "max_delay must be at most 100 years (36525 days), got 1e+300"),
        ({"max_delay": timedelta(days=3_000_000)}, "max_delay must be at most 100 years"),
        ({"max_delay": 10**400}, "max_delay must be at most 100 years"),
        ({"initial_delay": math.inf}, "initial_delay must be a finite number, got inf"),
        ({"initial_delay": 1e-9}, "initial_delay must be positive, got 1e-09"),
        ({"initial_delay": timedelta(0)}, "initial_delay must be positive"),
        ({"initial_delay": True}, "initial_delay must be a timedelta or a number of seconds"),
        ({"max_attempts": -(10**5000)}, "max_attempts must be a positive integer, got <int of"),
    ],
)
def test_timeout_retry_policy_refuses_delays_it_could_not_schedule(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        TimeoutRetryPolicy(**kwargs)
    assert str(caught.value).startswith(message)


def test_timeout_retry_policy_accepts_100_years_and_numbers_of_seconds() -> None:
    policy = TimeoutRetryPolicy(initial_delay=30, max_delay=MAX_DURATION)
    assert policy.initial_delay == timedelta(seconds=30)
    assert policy.max_delay == MAX_DURATION
    now = datetime(2026, 1, 1, tzinfo=UTC)
    previous = TimeoutRetry(attempts=8, last_error="x", retry_at=now, parked_at=None)
    retry = policy.next(previous, "boom", now)
    assert retry.retry_at == now + timedelta(seconds=30 * 2**8)


def test_a_retry_that_no_datetime_can_hold_is_parked_not_raised() -> None:
    policy = TimeoutRetryPolicy(initial_delay=MAX_DURATION, max_delay=MAX_DURATION)
    near_the_end = datetime(9950, 1, 1, tzinfo=UTC)
    retry = policy.next(None, "boom", near_the_end)
    assert (retry.attempts, retry.retry_at, retry.parked_at) == (1, None, near_the_end)


def test_a_huge_failure_message_is_cut_before_it_is_cleaned() -> None:
    policy = TimeoutRetryPolicy()
    retry = policy.next(None, "\x00\udcff" * HUGE, datetime(2026, 1, 1, tzinfo=UTC))
    assert retry.last_error == "\ufffd" * 2000
