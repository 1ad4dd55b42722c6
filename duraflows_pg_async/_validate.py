"""Checks applied to every public input before any SQL runs."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from .errors import InvalidArgumentError

# jsonb itself accepts deeper documents, but a context nested this deep is a bug, and refusing it
# here keeps both our check and the encoders far from Python's recursion limit.
MAX_JSON_DEPTH = 200

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# The string forms of a UUID: 32 ASCII hex digits, hyphens, optional braces and urn:uuid: prefix.
# uuid.UUID() alone also reads whitespace, signs, underscores, "0x" and non-ASCII digits (it
# calls int(text, 16)), so " +1_2...", "\u0663" * 32 and the like were silently taken as some
# other UUID (reliability suite, tests/reliability/test_hostile_input.py).
_UUID_TEXT = re.compile(r"(?:urn:uuid:)?\{?[0-9A-Fa-f-]+\}?")

# PostgreSQL's integer (version columns) and bigint (LIMIT, OFFSET). A larger int cannot be bound:
# asyncpg's bind error surfaced as a misleading ConfigurationError ("pool has no JSON codecs")
# while the in-memory provider accepted the value (reliability suite, test_hostile_input.py).
INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1

# An int whose decimal form is longer than this may exceed Python's int-to-str limit
# (sys.set_int_max_str_digits, at least 640 digits): json.dumps and repr() then raise ValueError.
_LONG_INT = 10**600
_UTC_MIN = datetime.min.replace(tzinfo=UTC)
_UTC_MAX = datetime.max.replace(tzinfo=UTC)


def safe_repr(value: object) -> str:
    """repr() for an error message: never raises (a hostile __repr__, an int too long to print)."""
    try:
        return repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def coerce_uuid(value: object, name: str) -> UUID:
    """A UUID from a UUID or its string form; anything else is InvalidArgumentError."""
    if type(value) is UUID:
        return value
    if isinstance(value, UUID):
        return UUID(int=value.int)
    if isinstance(value, str):
        if _UUID_TEXT.fullmatch(value):
            try:
                return UUID(value)
            except ValueError:
                pass
        raise InvalidArgumentError(f"{name} must be a UUID, got {value!r}")
    raise InvalidArgumentError(
        f"{name} must be a UUID or a UUID string, got {type(value).__name__}"
    )


def require_aware(value: object, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidArgumentError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgumentError(
            f"{name} must be timezone-aware (for example datetime.now(UTC)), got naive {value!r}"
        )
    if value.year == 1 or value.year == 9999:
        _check_utc_range(value, name)
    return value


def _check_utc_range(value: datetime, name: str) -> None:
    """At datetime's limits: converting to UTC can overflow (a raw OverflowError from the memory
    provider, a ConfigurationError from asyncpg's bind), and asyncpg writes the first and last
    instants as -infinity/infinity, which read back as *naive* datetime.min/max (reliability
    suite, test_hostile_input.py). Both are refused, before any SQL, on every provider."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise InvalidArgumentError(
            f"{name} is outside the range of datetime once converted to UTC, got {value!r}"
        ) from None
    if utc in (_UTC_MIN, _UTC_MAX):
        raise InvalidArgumentError(
            f"{name} must lie strictly between datetime.min and datetime.max in UTC (asyncpg "
            f"stores those two instants as -infinity/infinity), got {value!r}"
        )


def optional_aware(value: object, name: str) -> datetime | None:
    return None if value is None else require_aware(value, name)


def require_int(value: object, name: str, *, minimum: int, maximum: int = INT8_MAX) -> int:
    if type(value) is not int or value < minimum or value > maximum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InvalidArgumentError(
            f"{name} must be {kind} of at most {maximum}, got {safe_repr(value)}"
        )
    return value


def optional_int(value: object, name: str, *, minimum: int, maximum: int = INT8_MAX) -> int | None:
    return None if value is None else require_int(value, name, minimum=minimum, maximum=maximum)


def require_str(value: object, name: str, *, non_empty: bool = True) -> str:
    if not isinstance(value, str) or (non_empty and not value):
        raise InvalidArgumentError(f"{name} must be a non-empty string, got {safe_repr(value)}")
    if "\x00" in value:
        raise InvalidArgumentError(f"{name} must not contain NUL characters, got {value!r}")
    if not value.isascii():
        # PostgreSQL text is UTF-8: asyncpg could not encode an unpaired surrogate, and its bind
        # error surfaced as a misleading ConfigurationError while the in-memory provider stored
        # the value (reliability suite, test_hostile_input.py).
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgumentError(
                f"{name} contains an unpaired surrogate and is not valid Unicode, got {value!r}"
            ) from None
    return value


def optional_str(value: object, name: str) -> str | None:
    return None if value is None else require_str(value, name, non_empty=False)


def require_identifier(value: object, name: str) -> str:
    if not isinstance(value, str) or len(value) > 63 or not _IDENTIFIER.fullmatch(value):
        raise InvalidArgumentError(
            f"{name} must be an identifier matching ^[A-Za-z_][A-Za-z0-9_]*$ of at most 63 "
            f"characters, got {safe_repr(value)}"
        )
    return value


def timeout_ms(value: object, name: str) -> int | None:
    """Milliseconds for a SET LOCAL timeout, rounded up; ``None`` means not configured."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            # An int beyond float's range (it escaped as a raw OverflowError): refused below.
            seconds = math.inf
    else:
        raise InvalidArgumentError(
            f"{name} must be a timedelta or a number of seconds, got {type(value).__name__}"
        )
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise InvalidArgumentError(
            f"{name} must be a finite, non-negative duration, got {safe_repr(value)}"
        )
    # Compared in float first: seconds * 1000 overflows to inf for huge finite values (1e306), and
    # math.ceil(inf) raised a raw OverflowError (reliability suite, test_hostile_input.py).
    ms = seconds * 1000
    if ms > 2_147_483_647 or math.ceil(ms) > 2_147_483_647:
        raise InvalidArgumentError(
            f"{name} must be at most 2147483647 milliseconds, got {safe_repr(value)}"
        )
    return math.ceil(ms)


def check_json(value: object, name: str) -> None:
    """Refuse anything PostgreSQL's jsonb or JSON itself cannot hold, naming the key path.

    Accepted: dict with str keys, list, tuple, str, int, finite float, bool and None. Strings may
    not contain NUL or unpaired surrogates (jsonb rejects both).
    """
    # An explicit stack instead of recursion: depth is bounded by MAX_JSON_DEPTH, not by Python.
    stack: list[tuple[object, str, int]] = [(value, name, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        item, path, depth = pop()
        kind = type(item)
        if kind is str:
            _check_json_str(item, path)  # type: ignore[arg-type]
        elif kind is int:
            if not -_LONG_INT < item < _LONG_INT:  # type: ignore[operator]
                _check_json_int(item, path)  # type: ignore[arg-type]
        elif kind is bool or item is None:
            continue
        elif kind is float:
            if not math.isfinite(item):  # type: ignore[arg-type]
                raise InvalidArgumentError(f"{path}: {item!r} is not a JSON number")
        elif isinstance(item, dict):
            if depth >= MAX_JSON_DEPTH:
                raise InvalidArgumentError(f"{path}: nested deeper than {MAX_JSON_DEPTH} levels")
            for key, child in item.items():
                if type(key) is not str:
                    raise InvalidArgumentError(
                        f"{path}: key {safe_repr(key)} is a {type(key).__name__}; JSON object "
                        "keys must be strings"
                    )
                _check_json_str(key, f"{path}: key {key!r}")
                push((child, f"{path}[{key!r}]", depth + 1))
        elif isinstance(item, list | tuple):
            if depth >= MAX_JSON_DEPTH:
                raise InvalidArgumentError(f"{path}: nested deeper than {MAX_JSON_DEPTH} levels")
            for index, child in enumerate(item):
                push((child, f"{path}[{index}]", depth + 1))
        else:
            _check_json_other(item, path)


def _check_json_str(text: str, path: str) -> None:
    # NUL is checked in every string: it was checked in ASCII strings only, so "\xe9\x00" got
    # through to a DatabaseError (SQLSTATE 22P05) on PostgreSQL while the in-memory provider
    # stored it (reliability suite, tests/reliability/test_hostile_input.py).
    if "\x00" in text:
        raise InvalidArgumentError(f"{path}: strings stored as jsonb cannot contain NUL (\\u0000)")
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            f"{path}: string contains an unpaired surrogate and is not valid Unicode"
        ) from None


def _check_json_int(item: int, path: str) -> None:
    # json.dumps (in asyncpg's codec) raised a plain ValueError for an int longer than Python's
    # int-to-str limit, while the in-memory provider stored it (reliability suite,
    # test_hostile_input.py).
    try:
        int.__repr__(item)
    except ValueError:
        raise InvalidArgumentError(
            f"{path}: integer of {item.bit_length()} bits is too long to write as JSON "
            "(Python's int-to-str limit, sys.set_int_max_str_digits)"
        ) from None


def _check_json_other(item: Any, path: str) -> None:
    # Subclasses of the scalar JSON types (IntEnum, a str subclass) encode as their base type.
    if isinstance(item, bool):
        return
    if isinstance(item, int):
        if not -_LONG_INT < item < _LONG_INT:
            _check_json_int(item, path)
        return
    if isinstance(item, float):
        if not math.isfinite(item):
            raise InvalidArgumentError(f"{path}: {safe_repr(item)} is not a JSON number")
        return
    if isinstance(item, str):
        _check_json_str(item, path)
        return
    raise InvalidArgumentError(
        f"{path}: {type(item).__name__} value {_short_repr(item)} is not JSON "
        "(allowed: dict, list, str, int, float, bool, None)"
    )


def _short_repr(item: object) -> str:
    text = safe_repr(item)
    return text if len(text) <= 60 else text[:57] + "..."
