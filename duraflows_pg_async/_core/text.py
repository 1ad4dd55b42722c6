"""Text as PostgreSQL can store it: no NUL (text and jsonb refuse it), no unpaired surrogates
(UTF-8 cannot encode them). Both become U+FFFD, so text produced by code we do not control (an
exception's message, a command's result) is stored instead of failing the transition."""

from __future__ import annotations

from typing import Any

from .validate import MAX_JSON_DEPTH

__all__ = ["storable_json", "storable_text"]

_REPLACEMENT = "\ufffd"


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    # A Python str holds astral characters as one code point, so any code point in the
    # surrogate range is an unpaired surrogate.
    return text.isascii() or not any("\ud800" <= ch <= "\udfff" for ch in text)


def storable_text(text: str) -> str:
    """``text`` with NUL and unpaired surrogates replaced by U+FFFD (itself when it has none)."""
    if _storable(text):
        return text
    cleaned = text.replace("\x00", _REPLACEMENT)
    return "".join(_REPLACEMENT if "\ud800" <= ch <= "\udfff" else ch for ch in cleaned)


def storable_json(value: Any, _depth: int = 0) -> Any:
    """A JSON-shaped value with ``storable_text`` applied to every string and key; the same
    object when nothing had to change.

    Below ``MAX_JSON_DEPTH`` it leaves the value as it is: such a value (or a cycle) is refused
    by ``check_json`` when it is written, with its key path, rather than overflowing Python's
    recursion limit here.
    """
    if isinstance(value, str):
        return storable_text(value)
    if _depth >= MAX_JSON_DEPTH:
        return value
    if isinstance(value, dict):
        items = [
            (storable_text(k) if isinstance(k, str) else k, storable_json(v, _depth + 1))
            for k, v in value.items()
        ]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, value.items(), strict=True)):
            return value
        return dict(items)
    if isinstance(value, list | tuple):
        cleaned = [storable_json(item, _depth + 1) for item in value]
        if all(a is b for a, b in zip(cleaned, value, strict=True)):
            return value
        return cleaned
    return value
