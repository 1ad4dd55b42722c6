"""Checks applied to every public input before any SQL runs."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from .errors import InvalidArgumentError

# jsonb itself accepts deeper documents, but a context nested this deep is a bug, and refusing it
# here keeps both our check and the encoders far from Python's recursion limit.
MAX_JSON_DEPTH = 200

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def coerce_uuid(value: object, name: str) -> UUID:
    """A UUID from a UUID or its string form; anything else is InvalidArgumentError."""
    if type(value) is UUID:
        return value
    if isinstance(value, UUID):
        return UUID(int=value.int)
    if isinstance(value, str):
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
    return value


def optional_aware(value: object, name: str) -> datetime | None:
    return None if value is None else require_aware(value, name)


def require_int(value: object, name: str, *, minimum: int) -> int:
    if type(value) is not int or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InvalidArgumentError(f"{name} must be {kind}, got {value!r}")
    return value


def optional_int(value: object, name: str, *, minimum: int) -> int | None:
    return None if value is None else require_int(value, name, minimum=minimum)


def require_str(value: object, name: str, *, non_empty: bool = True) -> str:
    if not isinstance(value, str) or (non_empty and not value):
        raise InvalidArgumentError(f"{name} must be a non-empty string, got {value!r}")
    if "\x00" in value:
        raise InvalidArgumentError(f"{name} must not contain NUL characters, got {value!r}")
    return value


def optional_str(value: object, name: str) -> str | None:
    return None if value is None else require_str(value, name, non_empty=False)


def require_identifier(value: object, name: str) -> str:
    if not isinstance(value, str) or len(value) > 63 or not _IDENTIFIER.fullmatch(value):
        raise InvalidArgumentError(
            f"{name} must be an identifier matching ^[A-Za-z_][A-Za-z0-9_]*$ of at most 63 "
            f"characters, got {value!r}"
        )
    return value


def timeout_ms(value: object, name: str) -> int | None:
    """Milliseconds for a SET LOCAL timeout, rounded up; ``None`` means not configured."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise InvalidArgumentError(
            f"{name} must be a timedelta or a number of seconds, got {type(value).__name__}"
        )
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise InvalidArgumentError(f"{name} must be a finite, non-negative duration, got {value!r}")
    ms = math.ceil(seconds * 1000)
    if ms > 2_147_483_647:
        raise InvalidArgumentError(f"{name} must be at most 2147483647 milliseconds, got {value!r}")
    return ms


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
        elif kind is int or kind is bool or item is None:
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
                        f"{path}: key {key!r} is a {type(key).__name__}; JSON object keys must be "
                        "strings"
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
    if text.isascii():
        if "\x00" in text:
            raise InvalidArgumentError(
                f"{path}: strings stored as jsonb cannot contain NUL (\\u0000)"
            )
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            f"{path}: string contains an unpaired surrogate and is not valid Unicode"
        ) from None


def _check_json_other(item: Any, path: str) -> None:
    # Subclasses of the scalar JSON types (IntEnum, a str subclass) encode as their base type.
    if isinstance(item, bool | int):
        return
    if isinstance(item, float):
        if not math.isfinite(item):
            raise InvalidArgumentError(f"{path}: {item!r} is not a JSON number")
        return
    if isinstance(item, str):
        _check_json_str(item, path)
        return
    raise InvalidArgumentError(
        f"{path}: {type(item).__name__} value {_short_repr(item)} is not JSON "
        "(allowed: dict, list, str, int, float, bool, None)"
    )


def _short_repr(item: object) -> str:
    text = repr(item)
    return text if len(text) <= 60 else text[:57] + "..."
