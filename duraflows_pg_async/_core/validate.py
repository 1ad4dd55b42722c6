"""Checks applied to every public input before any SQL runs."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from duraflows_pg_async._core.echo import echo
from duraflows_pg_async.errors import InvalidArgumentError

# jsonb itself accepts deeper documents, but a context nested this deep is a bug, and refusing it
# here keeps both our check and the encoders far from Python's recursion limit.
MAX_JSON_DEPTH = 200

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# The string forms of a UUID: 32 ASCII hex digits, hyphens, optional braces and urn:uuid: prefix.
# uuid.UUID() alone also reads whitespace, signs, underscores, "0x" and non-ASCII digits (it
# calls int(text, 16)), so it would take " +1_2...", "\u0663" * 32 and the like as some other
# UUID.
_UUID_TEXT = re.compile(r"(?:urn:uuid:)?\{?[0-9A-Fa-f-]+\}?")

# PostgreSQL's integer (version columns) and bigint (LIMIT, OFFSET). A larger int cannot be bound,
# so it is refused here, on every provider, before asyncpg's bind error could look like a
# codec problem.
INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1

# An int whose decimal form is longer than this may exceed Python's int-to-str limit
# (sys.set_int_max_str_digits, at least 640 digits): json.dumps and repr() then raise ValueError.
_LONG_INT = 10**600
# JavaScript's Number.MAX_SAFE_INTEGER: beyond it, a JSON integer is rounded by JSON.parse.
JS_SAFE_INTEGER = 2**53 - 1
_UTC_MIN = datetime.min.replace(tzinfo=UTC)
_UTC_MAX = datetime.max.replace(tzinfo=UTC)


# The longest duration accepted anywhere (a state's timeout, a retry delay). A deadline is
# now + duration and must stay a Python datetime (year 9999 at most) and a PostgreSQL timestamptz:
# 100 years keeps that true for any clock before the year 9899, and no real wait is that long (a
# longer one is a unit mistake, such as milliseconds given as days).
MAX_DURATION = timedelta(days=36525)
_MAX_DURATION_TEXT = "100 years (36525 days)"
_UNIT_SECONDS = {"seconds": 1.0, "minutes": 60.0, "hours": 3600.0, "days": 86400.0}

# A JSON path names at most this many characters of each key, and an error names at most this
# much of a path (its start and its end), so that hostile keys cannot make a message huge.
_PATH_KEY_LIMIT = 100
_PATH_LIMIT = 600


# The types whose instances coerce_uuid hands back as they are. Another UUID subclass may
# override int or __str__, so it is copied into a plain UUID; asyncpg's own, which every uuid
# column of a row comes back as, is added by the adapter (trust_uuid_type).
_AS_IS_UUID_TYPES: set[type] = {UUID}


def trust_uuid_type(kind: object) -> None:
    """Let ``coerce_uuid`` hand back instances of ``kind`` (a UUID subclass that keeps UUID's
    value semantics: equality, hash and text) without copying them."""
    if not (isinstance(kind, type) and issubclass(kind, UUID)):
        raise InvalidArgumentError(f"{kind!r} is not a UUID subclass")
    _AS_IS_UUID_TYPES.add(kind)


def coerce_uuid(value: object, name: str) -> UUID:
    """A UUID from a UUID or its string form; anything else is InvalidArgumentError."""
    if type(value) in _AS_IS_UUID_TYPES:
        return value  # type: ignore[return-value]
    if isinstance(value, UUID):
        return UUID(int=value.int)
    if isinstance(value, str):
        if _UUID_TEXT.fullmatch(value):
            try:
                return UUID(value)
            except ValueError:
                pass
        raise InvalidArgumentError(f"{name} must be a UUID, got {echo(value)}")
    raise InvalidArgumentError(
        f"{name} must be a UUID or a UUID string, got {type(value).__name__}"
    )


def require_aware(value: object, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidArgumentError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgumentError(
            f"{name} must be timezone-aware (for example datetime.now(UTC)), got naive "
            f"{echo(value)}"
        )
    if value.year == 1 or value.year == 9999:
        _check_utc_range(value, name)
    return value


def _check_utc_range(value: datetime, name: str) -> None:
    """At datetime's limits: converting to UTC can overflow, and asyncpg writes the first and
    last instants as -infinity/infinity, which read back as *naive* datetime.min/max. Both are
    refused, before any SQL, on every provider."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise InvalidArgumentError(
            f"{name} is outside the range of datetime once converted to UTC, got {echo(value)}"
        ) from None
    if utc in (_UTC_MIN, _UTC_MAX):
        raise InvalidArgumentError(
            f"{name} must lie strictly between datetime.min and datetime.max in UTC (asyncpg "
            f"stores those two instants as -infinity/infinity), got {echo(value)}"
        )


def optional_aware(value: object, name: str) -> datetime | None:
    return None if value is None else require_aware(value, name)


def require_int(value: object, name: str, *, minimum: int, maximum: int = INT8_MAX) -> int:
    if type(value) is not int or value < minimum or value > maximum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InvalidArgumentError(f"{name} must be {kind} of at most {maximum}, got {echo(value)}")
    return value


def optional_int(value: object, name: str, *, minimum: int, maximum: int = INT8_MAX) -> int | None:
    return None if value is None else require_int(value, name, minimum=minimum, maximum=maximum)


TextProblem = Literal["NUL", "unpaired surrogate"]
"""Why PostgreSQL cannot store a string (see ``text_problem``)."""


def text_problem(text: str) -> TextProblem | None:
    """What keeps ``text`` out of PostgreSQL, or None: a NUL or an unpaired surrogate.

    text and jsonb refuse NUL, and UTF-8 (hence asyncpg) cannot encode an unpaired surrogate.
    The one rule behind every string check: names, text columns and the strings inside JSON.
    """
    # NUL is looked for in every string, ASCII ones too.
    if "\x00" in text:
        return "NUL"
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "unpaired surrogate"
    return None


# How each check words a text problem.
_STR_PROBLEMS: dict[TextProblem, str] = {
    "NUL": "must not contain NUL characters",
    "unpaired surrogate": "contains an unpaired surrogate and is not valid Unicode",
}
_JSON_PROBLEMS: dict[TextProblem, str] = {
    "NUL": "strings stored as jsonb cannot contain NUL (\\u0000)",
    "unpaired surrogate": "string contains an unpaired surrogate and is not valid Unicode",
}


def require_str(value: object, name: str, *, non_empty: bool = True) -> str:
    if not isinstance(value, str) or (non_empty and not value):
        raise InvalidArgumentError(f"{name} must be a non-empty string, got {echo(value)}")
    # Refused here, on every provider, before asyncpg's bind would fail.
    if (problem := text_problem(value)) is not None:
        raise InvalidArgumentError(f"{name} {_STR_PROBLEMS[problem]}, got {echo(value)}")
    return value


def optional_str(value: object, name: str) -> str | None:
    return None if value is None else require_str(value, name, non_empty=False)


def require_bool(value: object, name: str) -> bool:
    # Exactly a bool: 0, 1, None and other truthy stand-ins are refused, not interpreted.
    if type(value) is not bool:
        raise InvalidArgumentError(f"{name} must be True or False, got {echo(value)}")
    return value


def require_identifier(value: object, name: str) -> str:
    if not isinstance(value, str) or len(value) > 63 or not _IDENTIFIER.fullmatch(value):
        raise InvalidArgumentError(
            f"{name} must be an identifier matching ^[A-Za-z_][A-Za-z0-9_]*$ of at most 63 "
            f"characters, got {echo(value)}"
        )
    return value


def require_duration(
    value: object,
    name: str,
    *,
    unit: str = "seconds",
    timedelta_ok: bool = True,
    positive: bool = False,
    maximum: timedelta = MAX_DURATION,
) -> float:
    """Check a duration given as a timedelta or a number of ``unit``; return it in seconds.

    NaN, infinities, bools, negative values (zero too with ``positive``) and anything longer
    than ``maximum`` are InvalidArgumentError naming ``name``. Compared in float seconds, so no
    value makes timedelta or datetime arithmetic overflow. With ``positive``, the duration is at
    least one microsecond (timedelta's resolution), so it never rounds to zero.
    """
    if isinstance(value, timedelta) and timedelta_ok:
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            count = float(value)
        except OverflowError:
            count = math.inf if value > 0 else -math.inf  # an int beyond float's range
        else:
            if not math.isfinite(count):
                raise InvalidArgumentError(f"{name} must be a finite number, got {echo(value)}")
        seconds = count * _UNIT_SECONDS[unit]
    else:
        kind = "a timedelta or a number of " + unit if timedelta_ok else "a number"
        raise InvalidArgumentError(f"{name} must be {kind}, got {echo(value)}")
    if seconds < 0 or (positive and seconds < 1e-6):
        sign = "positive" if positive else "non-negative"
        raise InvalidArgumentError(f"{name} must be {sign}, got {echo(value)}")
    if seconds > maximum.total_seconds():
        limit = (
            _MAX_DURATION_TEXT
            if maximum == MAX_DURATION
            else f"{maximum // timedelta(milliseconds=1)} milliseconds"
        )
        raise InvalidArgumentError(f"{name} must be at most {limit}, got {echo(value)}")
    return seconds


# PostgreSQL's lock_timeout and statement_timeout are int4 milliseconds.
_MAX_SET_LOCAL_TIMEOUT = timedelta(milliseconds=INT4_MAX)


def timeout_ms(value: object, name: str) -> int | None:
    """Milliseconds for a SET LOCAL timeout, rounded up; ``None`` means not configured."""
    if value is None:
        return None
    seconds = require_duration(value, name, maximum=_MAX_SET_LOCAL_TIMEOUT)
    # From the float seconds, not a timedelta: a positive timeout below a microsecond must round
    # up to 1 ms, never down to 0 (which PostgreSQL reads as "no timeout").
    ms = math.ceil(seconds * 1000)
    if ms > INT4_MAX:
        raise InvalidArgumentError(
            f"{name} must be at most {INT4_MAX} milliseconds, got {echo(value)}"
        )
    return ms


def check_json(value: object, name: str, *, js_safe_integers: bool = False) -> None:
    """Refuse anything PostgreSQL's jsonb or JSON itself cannot hold, naming the key path.

    Accepted: dict with str keys, list, tuple, str, int, finite float, bool and None. Strings may
    not contain NUL or unpaired surrogates (jsonb rejects both). With ``js_safe_integers``,
    integers beyond JavaScript's safe range (±(2**53 - 1)), which JSON.parse rounds, are refused.
    """
    low, high = (-JS_SAFE_INTEGER - 1, JS_SAFE_INTEGER + 1) if js_safe_integers else _LONG_BOUNDS
    if type(value) is dict and _flat_and_plain(value, low, high):
        return
    # An explicit stack instead of recursion: depth is bounded by MAX_JSON_DEPTH, not by Python.
    # Each entry carries its trail, (parent trail, key or index), from which the path is written
    # only when there is an error to report.
    stack: list[tuple[object, _Trail, int]] = [(value, None, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        item, trail, depth = pop()
        kind = type(item)
        if kind is str:
            if (problem := text_problem(item)) is not None:  # type: ignore[arg-type]
                raise InvalidArgumentError(f"{_path(name, trail)}: {_JSON_PROBLEMS[problem]}")
        elif kind is int:
            if not low < item < high:  # type: ignore[operator]
                _check_json_int(item, name, trail, js_safe_integers)  # type: ignore[arg-type]
        elif kind is bool or item is None:
            continue
        elif kind is float:
            if not math.isfinite(item):  # type: ignore[arg-type]
                raise InvalidArgumentError(f"{_path(name, trail)}: {item!r} is not a JSON number")
        elif isinstance(item, dict):
            if depth >= MAX_JSON_DEPTH:
                raise InvalidArgumentError(
                    f"{_path(name, trail)}: nested deeper than {MAX_JSON_DEPTH} levels"
                )
            for key, child in item.items():
                if type(key) is not str:
                    raise InvalidArgumentError(
                        f"{_path(name, trail)}: key {echo(key)} is a {type(key).__name__}; JSON "
                        "object keys must be strings"
                    )
                if (problem := text_problem(key)) is not None:
                    raise InvalidArgumentError(
                        f"{_path(name, trail)}: key {echo(key, _PATH_KEY_LIMIT)}: "
                        f"{_JSON_PROBLEMS[problem]}"
                    )
                push((child, (trail, key), depth + 1))
        elif isinstance(item, list | tuple):
            if depth >= MAX_JSON_DEPTH:
                raise InvalidArgumentError(
                    f"{_path(name, trail)}: nested deeper than {MAX_JSON_DEPTH} levels"
                )
            for index, child in enumerate(item):
                push((child, (trail, index), depth + 1))
        else:
            _check_json_other(item, name, trail, js_safe_integers)


def _flat_and_plain(value: dict[Any, Any], low: int, high: int) -> bool:
    """Whether ``value`` passes check_json for certain on a shortcut: an object of at most 32
    keys whose keys and values are of JSON's exact types, with ASCII strings, no nested
    container, no NUL, integers inside (low, high) and finite floats: the shape of most contexts
    and metadata. False sends it down check_json's full walk, which names any problem."""
    if len(value) > 32:
        return False
    for key, child in value.items():
        if type(key) is not str or not key.isascii() or "\x00" in key:
            return False
        kind = type(child)
        if kind is str:
            if not child.isascii() or "\x00" in child:
                return False
        elif kind is int:
            if not low < child < high:
                return False
        elif kind is float:
            if not math.isfinite(child):
                return False
        elif kind is not bool and child is not None:
            return False
    return True


_LONG_BOUNDS = (-_LONG_INT, _LONG_INT)
_Trail = tuple[Any, str | int] | None


def _path(name: str, trail: _Trail) -> str:
    """``name['key'][0]...`` for an error message, at most about _PATH_LIMIT characters."""
    steps: list[str] = []
    while trail is not None:
        trail, step = trail
        steps.append(f"[{step}]" if type(step) is int else f"[{echo(step, _PATH_KEY_LIMIT)}]")
    path = name + "".join(reversed(steps))
    if len(path) <= _PATH_LIMIT:
        return path
    keep = _PATH_LIMIT // 3
    return f"{path[:keep]}...{path[len(path) - 2 * keep :]}"


def _check_json_int(item: int, name: str, trail: _Trail, js_safe_integers: bool) -> None:
    if js_safe_integers and not -JS_SAFE_INTEGER <= item <= JS_SAFE_INTEGER:
        raise InvalidArgumentError(
            f"{_path(name, trail)}: {echo(item, 60)} is beyond JavaScript's safe integers "
            "(±(2**53 - 1)), which a TypeScript runtime on this database would round "
            "(js_safe_integers=True); store it as a string"
        )
    # json.dumps (in asyncpg's codec) cannot write an int longer than Python's int-to-str limit.
    try:
        int.__repr__(item)
    except ValueError:
        raise InvalidArgumentError(
            f"{_path(name, trail)}: integer of {item.bit_length()} bits is too long to write as "
            "JSON (Python's int-to-str limit, sys.set_int_max_str_digits)"
        ) from None


def _check_json_other(item: Any, name: str, trail: _Trail, js_safe_integers: bool) -> None:
    # Subclasses of the scalar JSON types (IntEnum, a str subclass) encode as their base type.
    if isinstance(item, bool):
        return
    if isinstance(item, int):
        if js_safe_integers or not -_LONG_INT < item < _LONG_INT:
            _check_json_int(item, name, trail, js_safe_integers)
        return
    if isinstance(item, float):
        if not math.isfinite(item):
            raise InvalidArgumentError(f"{_path(name, trail)}: {echo(item)} is not a JSON number")
        return
    if isinstance(item, str):
        if (problem := text_problem(item)) is not None:
            raise InvalidArgumentError(f"{_path(name, trail)}: {_JSON_PROBLEMS[problem]}")
        return
    raise InvalidArgumentError(
        f"{_path(name, trail)}: {type(item).__name__} value {echo(item, 60)} is not JSON "
        "(allowed: dict, list, str, int, float, bool, None)"
    )
