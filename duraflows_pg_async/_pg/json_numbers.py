"""JSON functions for the codecs that give numbers back exactly as jsonb holds them.

jsonb keeps every number as ``numeric`` and prints it in plain decimal notation, however it was
written: ``1e22`` comes back as ``10000000000000000000000`` and ``1.5e-7`` as ``0.00000015``. The
standard library reads an integer literal of any length as an exact ``int``; orjson reads one
outside the 64-bit range as a rounded ``float`` (and writing that float back stores the rounded
value). So the orjson functions are wrapped here: a document holding such a literal is read by the
standard library instead, and a value orjson refuses to write (an int beyond 64 bits) is written
by the standard library. A number no Python type holds (a decimal beyond a float's range, an
integer longer than Python's int-to-str limit) raises UnreadableJsonError (a DatabaseError)
naming its key path instead of coming back as ``inf`` or a bare ValueError.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from duraflows_pg_async._core.validate import check_json
from duraflows_pg_async.errors import DatabaseError

__all__ = [
    "UnreadableJsonError",
    "exact_loads",
    "exact_orjson_dumps",
    "exact_orjson_loads",
    "is_exact_loads",
    "stdlib_dumps",
]

JsonDumps = Callable[[Any], str | bytes]
JsonLoads = Callable[[str | bytes], Any]

# One encoder for the module: json.dumps with non-default options builds a JSONEncoder on every
# call. Its encode() is what json.dumps(value, <these options>) returns.
stdlib_dumps: Callable[[Any], str] = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode

_INF = float("inf")
_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1
# The shortest integer literal outside [-2**63, 2**64 - 1] has 19 digits (-9223372036854775809).
_SHORTEST_WIDE = 19
_RUN = b"0" * _SHORTEST_WIDE
# Every ASCII digit becomes "0" and every other byte a space: a run of digits is then a plain
# substring search away, at C speed (a regular expression costs several times orjson's parse).
_DIGIT_MASK = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_MINUS = 0x2D


class UnreadableJsonError(DatabaseError):
    """JSON sent by PostgreSQL holds a number no Python type holds; the message names its key
    path. Raised by the codec while asyncpg reads rows, so the connection stays usable."""


class _OutOfRange(Exception):
    """A float literal beyond a float's range (raised inside the decoder, caught by exact_loads)."""


def _finite_float(text: str) -> float:
    value = float(text)
    if value == _INF or value == -_INF:
        raise _OutOfRange
    return value


_DECODER = json.JSONDecoder(parse_float=_finite_float)


def is_exact_loads(loads: object) -> bool:
    """Whether ``loads`` is one of this module's (which read bytes as well as str)."""
    return loads is exact_loads or getattr(loads, "duraflows_exact", False) is True


def exact_loads(data: str | bytes) -> Any:
    """``json.loads`` that refuses, naming the key path, a number it would not read exactly
    enough: a decimal beyond a float's range (``inf``) or an integer longer than Python's
    int-to-str limit. Integers of any other length come back exact."""
    text = data if isinstance(data, str) else bytes(data).decode()
    try:
        return _DECODER.decode(text)
    except _OutOfRange:
        pass
    except ValueError as exc:
        # A syntax error stays what it is; a plain ValueError is the int-to-str limit.
        if isinstance(exc, json.JSONDecodeError):
            raise
    raise _unreadable(text) from None


class _Unreadable:
    __slots__ = ("kind", "literal")

    def __init__(self, literal: str, kind: str) -> None:
        self.literal = literal
        self.kind = kind


def _float_or_marker(text: str) -> float | _Unreadable:
    value = float(text)
    return _Unreadable(text, "float") if value == _INF or value == -_INF else value


def _int_or_marker(text: str) -> int | _Unreadable:
    try:
        return int(text)
    except ValueError:
        return _Unreadable(text, "int")


def _unreadable(text: str) -> UnreadableJsonError:
    value = json.loads(text, parse_float=_float_or_marker, parse_int=_int_or_marker)
    stack: list[tuple[Any, str]] = [(value, "value")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, _Unreadable):
            literal = item.literal
            shown = literal if len(literal) <= 40 else f"{literal[:16]}...{literal[-16:]}"
            digits = sum(c.isdigit() for c in literal)
            if item.kind == "float":
                why = "is beyond the range of a float"
            else:
                why = "is longer than Python's int-to-str limit (sys.set_int_max_str_digits)"
            return UnreadableJsonError(
                f"JSON read from PostgreSQL: {path}: the number {shown} ({digits} digits) {why}"
            )
        if isinstance(item, dict):
            stack.extend((child, f"{path}[{key!r}]") for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in reversed(list(enumerate(item))))
    return UnreadableJsonError("JSON read from PostgreSQL holds a number Python cannot read")


def _wide_integer(raw: bytes, digits: bytes) -> bool:
    """Whether ``raw`` holds a run of digits outside the 64-bit range (``digits`` is its mask).

    A run inside a string or after a decimal point counts too: reading such a document with the
    standard library gives the same values, only slower.
    """
    start = digits.find(_RUN)
    while start != -1:
        end = digits.find(b" ", start)
        if end == -1:
            end = len(digits)
        if end - start > _SHORTEST_WIDE + 1:
            return True
        negative = start > 0 and raw[start - 1] == _MINUS
        if not _INT64_MIN <= int(raw[start - negative : end]) <= _UINT64_MAX:
            return True
        start = digits.find(_RUN, end)
    return False


def exact_orjson_loads(orjson_loads: JsonLoads, decode_error: type[Exception]) -> JsonLoads:
    """orjson's ``loads`` for a document without integers beyond 64 bits, ``exact_loads`` for
    the others (orjson reads those as rounded floats)."""

    def loads(data: str | bytes) -> Any:
        raw = data.encode() if isinstance(data, str) else bytes(data)
        if len(raw) >= _SHORTEST_WIDE:
            digits = raw.translate(_DIGIT_MASK)
            if _RUN in digits and _wide_integer(raw, digits):
                return exact_loads(data)
        try:
            return orjson_loads(data)
        except decode_error:
            # orjson refuses a number beyond a float's range without its key path.
            return exact_loads(data)

    loads.__wrapped__ = orjson_loads  # type: ignore[attr-defined]
    loads.duraflows_exact = True  # type: ignore[attr-defined]
    return loads


def exact_orjson_dumps(orjson_dumps: JsonDumps) -> JsonDumps:
    """orjson's ``dumps``, with the standard library writing what orjson refuses but JSON holds
    (integers beyond 64 bits, float subclasses); a value that is not JSON at all raises
    InvalidArgumentError naming its key path."""

    def dumps(value: Any) -> str | bytes:
        try:
            return orjson_dumps(value)
        except TypeError:
            check_json(value, "value")
            return stdlib_dumps(value)

    dumps.__wrapped__ = orjson_dumps  # type: ignore[attr-defined]
    return dumps
