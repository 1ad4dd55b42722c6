"""Canonical JSON byte for byte as JavaScript's ``JSON.stringify`` writes it, and its hash.

The content hash of a definition must equal the one the TypeScript runtime writes for the same
content, so keys are ordered as in a JavaScript object and numbers and strings are written as
JavaScript writes them.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal

from duraflows_pg_async._core.echo import echo
from duraflows_pg_async.errors import InvalidArgumentError

# JavaScript's Number.MAX_SAFE_INTEGER: a larger int is a double in JavaScript.
MAX_SAFE_INTEGER = 2**53 - 1

_JS_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
# What JSON.stringify escapes: quote, backslash, C0 controls and (since ES2019) lone surrogates.
_JS_NEEDS_ESCAPE = re.compile('[\x00-\x1f"\\\\\ud800-\udfff]')
_SURROGATE = re.compile("[\ud800-\udfff]")
# A JavaScript "array index": these keys come first in an object's key order, numerically.
_ARRAY_INDEX = re.compile("0|[1-9][0-9]{0,9}")
_MAX_ARRAY_INDEX = 2**32 - 2


def _js_text(text: str) -> str:
    """``text`` as JavaScript sees it: a surrogate pair given as two code points is one char."""
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-be", "surrogatepass").decode("utf-16-be", "surrogatepass")


def _js_escape(match: re.Match[str]) -> str:
    char = match.group()
    return _JS_ESCAPES.get(char) or f"\\u{ord(char):04x}"


def _js_string(text: str) -> str:
    return '"' + _JS_NEEDS_ESCAPE.sub(_js_escape, _js_text(text)) + '"'


def _js_number(value: float) -> str:
    """``Number.prototype.toString()`` of a double (ECMA-262 Number::toString, radix 10)."""
    if not math.isfinite(value):
        return "null"  # JSON.stringify(NaN) and of ±Infinity
    if value == 0:
        return "0"  # -0 included
    sign = "-" if value < 0 else ""
    # repr() is the shortest string that round-trips, as JavaScript requires.
    decimal = Decimal(float.__repr__(abs(value))).as_tuple()
    digits = "".join(map(str, decimal.digits))
    assert isinstance(decimal.exponent, int)
    n = len(digits) + decimal.exponent  # value = 0.<digits> x 10^n
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        exponent = n - 1
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent)}"
    return sign + text


def _js_int(value: int) -> str:
    if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return str(value)
    # JavaScript holds every number as a double.
    try:
        return _js_number(float(value))
    except OverflowError:
        return "null"


def _is_array_index(key: str) -> bool:
    return _ARRAY_INDEX.fullmatch(key) is not None and int(key) <= _MAX_ARRAY_INDEX


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _js_key_order(keys: list[str]) -> list[str]:
    """Keys sorted as ``Object.keys(o).sort()`` inserted into a fresh object, which then lists
    its array-index keys first in numeric order and the others in insertion order."""
    indices = sorted((key for key in keys if _is_array_index(key)), key=int)
    others = sorted((key for key in keys if not _is_array_index(key)), key=_utf16_key)
    return indices + others


def canonical_hash(value: object) -> str:
    """``"sha256:<64 hex>"`` of the UTF-8 canonical JSON of ``value``."""
    return "sha256:" + hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def canonical_json(value: object) -> str:
    """``value`` as compact JSON, keys in JavaScript object order, text as ``JSON.stringify``."""
    parts: list[str] = []
    _write_json(value, parts.append, "")
    return "".join(parts)


def _write_json(value: object, write: Callable[[str], object], path: str) -> None:
    if value is None:
        write("null")
    elif value is True:
        write("true")
    elif value is False:
        write("false")
    elif isinstance(value, str):
        write(_js_string(value))
    elif isinstance(value, int):
        write(_js_int(int(value)))
    elif isinstance(value, float):
        write(_js_number(float(value)))
    elif isinstance(value, Mapping):
        items: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgumentError(
                    f"{echo(path or 'value', raw=True)}: key {echo(key)} is not a string"
                )
            items[_js_text(key)] = item
        write("{")
        for index, key in enumerate(_js_key_order(list(items))):
            if index:
                write(",")
            write(_js_string(key))
            write(":")
            _write_json(items[key], write, f"{path}.{key}" if path else key)
        write("}")
    elif isinstance(value, list | tuple):
        write("[")
        for index, item in enumerate(value):
            if index:
                write(",")
            _write_json(item, write, f"{path}[{index}]")
        write("]")
    else:
        raise InvalidArgumentError(
            f"{echo(path or 'value', raw=True)}: {type(value).__name__} value is not JSON and "
            "cannot be hashed"
        )
