"""Query parameters of the dashboard's pages: a bad one is a 400 page that names it."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request

__all__ = ["BadParameterError", "choice", "integer", "text"]

_MAX_TEXT = 200
_MAX_CURSOR = 2000


class BadParameterError(Exception):
    """A query parameter the page cannot use; ``name`` is the parameter."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


def text(request: Request, name: str, *, max_length: int = _MAX_TEXT) -> str | None:
    """The parameter, or None when absent or empty."""
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if len(value) > max_length:
        raise BadParameterError(name, f"longer than {max_length} characters")
    if any(ord(char) < 32 for char in value):
        raise BadParameterError(name, "holds control characters")
    return value


def cursor(request: Request) -> str | None:
    """``after``: the cursor of the next page."""
    return text(request, "after", max_length=_MAX_CURSOR)


def integer(request: Request, name: str, *, minimum: int, maximum: int) -> int | None:
    value = text(request, name)
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise BadParameterError(name, f"must be a whole number from {minimum} to {maximum}")
    number = int(value)
    if not minimum <= number <= maximum:
        raise BadParameterError(name, f"must be a whole number from {minimum} to {maximum}")
    return number


def choice(request: Request, name: str, choices: Sequence[str]) -> str | None:
    value = text(request, name)
    if value is not None and value not in choices:
        raise BadParameterError(name, f"must be one of {', '.join(choices)}")
    return value
