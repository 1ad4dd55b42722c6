"""Values as error messages repeat them: a bounded repr() that never raises."""

from __future__ import annotations

import reprlib
from collections.abc import Sized
from uuid import UUID

__all__ = ["ECHO_LIMIT", "echo"]

# How much of a caller's value an error message repeats: enough to recognise it, little enough
# that a 20 MB event name does not become a 20 MB message that an app logs or returns to its
# client. Errors keep the full value in their attributes (``exc.event_name``); only messages are
# bounded.
ECHO_LIMIT = 200


class _BoundedRepr(reprlib.Repr):
    """reprlib's bounded repr(), which also bounds subclasses of the builtin containers and ints
    too long for repr() (reprlib gives those to the plain repr())."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = self.maxother = self.maxlong = limit

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 4 * self.maxlong:
            # Python refuses to write ints longer than sys.get_int_max_str_digits() digits.
            return f"<int of {x.bit_length()} bits>"
        return super().repr_int(x, level)

    def repr_instance(self, x: object, level: int) -> str:
        for kind, method in _CONTAINERS:
            if isinstance(x, kind):
                return str(getattr(self, method)(x, level))
        return super().repr_instance(x, level)


_CONTAINERS: tuple[tuple[type, str], ...] = (
    (int, "repr_int"),
    (str, "repr_str"),
    (dict, "repr_dict"),
    (list, "repr_list"),
    (tuple, "repr_tuple"),
    (frozenset, "repr_frozenset"),
    (set, "repr_set"),
)


def echo(value: object, limit: int = ECHO_LIMIT, *, raw: bool = False) -> str:
    """``value`` as an error message repeats it: repr() cut to about ``limit`` characters, with
    the full size after the cut (``'aaaa'... (20000090 characters)``). Never raises.

    With ``raw=True`` a str is given as itself and a UUID as its str() (for messages that quote
    names, ``Event "ship"``); anything else as without it.
    """
    try:
        return _echo(value, limit, raw)
    except Exception:
        # A hostile __repr__ or __len__, or a container nested too deep for reprlib.
        return f"<unprintable {type(value).__name__}>"


def _echo(value: object, limit: int, raw: bool) -> str:
    if isinstance(value, str):
        text = str.__str__(value)  # a str subclass's own __str__/__getitem__ play no part
        size, unit = len(text), "characters"
        head = text[:limit]
        shown = head if raw else repr(head)
    elif isinstance(value, bytes | bytearray):
        size, unit = len(value), "bytes"
        shown = repr(bytes(memoryview(value)[:limit]))
    elif raw and isinstance(value, UUID):
        return str(value)
    else:
        shown = _BoundedRepr(limit).repr(value)
        # reprlib marks what it left out with "...": say how many items there were.
        size = len(value) if isinstance(value, Sized) and "..." in shown else -1
        unit = "items"
    # The repr() of a non-printable character is up to 10 characters long; the 3 spare
    # characters are the quotes (and b) around a repr() that is not cut.
    cut = len(shown) > limit + 3
    if cut:
        shown = shown[:limit]
    if unit == "items":
        if size >= 0:
            return f"{shown}{'...' if cut else ''} ({size} item{'' if size == 1 else 's'})"
        return f"{shown}..." if cut else shown
    return f"{shown}... ({size} {unit})" if cut or size > limit else shown
