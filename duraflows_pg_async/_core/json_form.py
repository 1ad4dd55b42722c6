"""The pieces of the model's JSON form: UTC timestamp strings, and a reader that names each field.

The form is upstream's (``@duraflows/core``): camelCase keys, UUIDs as strings, and timestamps as
the ISO-8601 strings a JavaScript ``Date`` serialises to, here with microseconds.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from duraflows_pg_async._core.echo import echo
from duraflows_pg_async.errors import InvalidArgumentError

from .validate import INT4_MAX, coerce_uuid, optional_int, optional_str, require_int, require_str

__all__ = ["JsonReader", "copy_json", "utc_text", "optional_utc_text", "parse_utc"]


def copy_json(value: Any) -> Any:
    """A deep copy, so that the JSON form and the record share no mutable object."""
    return copy.deepcopy(value)


def utc_text(value: datetime, name: str) -> str:
    """``value`` in UTC as ``2026-05-01T10:01:02.118000Z``: always six fraction digits.

    A naive datetime is taken as UTC (the stores only ever give aware ones).
    """
    if value.tzinfo is None or value.utcoffset() is None:
        utc = value
    else:
        try:
            utc = value.astimezone(UTC)
        except OverflowError:
            raise InvalidArgumentError(
                f"{name} is outside the range of datetime once converted to UTC, got {echo(value)}"
            ) from None
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def optional_utc_text(value: datetime | None, name: str) -> str | None:
    return None if value is None else utc_text(value, name)


def parse_utc(value: object, name: str) -> datetime:
    """An aware UTC datetime from an ISO-8601 string with a time zone (``Z`` or ``+HH:MM``)."""
    if not isinstance(value, str):
        raise InvalidArgumentError(
            f"{name} must be an ISO-8601 timestamp string, got {type(value).__name__}"
        )
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgumentError(
            f"{name} must be an ISO-8601 timestamp such as 2026-05-01T10:01:02.118Z, "
            f"got {echo(value)}"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise InvalidArgumentError(
            f"{name} must carry a time zone (Z or +HH:MM), got {echo(value)}"
        )
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidArgumentError(
            f"{name} is outside the range of datetime once converted to UTC, got {echo(value)}"
        ) from None


class JsonReader:
    """The fields of one JSON object, each checked; an error names the field by its key path."""

    __slots__ = ("_data", "_path", "_where")

    def __init__(self, data: object, where: str, path: str = "") -> None:
        if not isinstance(data, Mapping):
            what = f"{where}: {path[:-1]}" if path else where
            raise InvalidArgumentError(
                f"{what} must be a JSON object (a dict), got {type(data).__name__}"
            )
        self._data: Mapping[Any, Any] = data
        self._where = where
        self._path = path

    def name(self, key: str) -> str:
        """How an error names ``key``: ``WorkflowInstance.from_json: timeoutRetry.retryAt``."""
        return f"{self._where}: {self._path}{key}"

    def required(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            raise InvalidArgumentError(f"{self.name(key)} is missing") from None

    def optional(self, key: str) -> Any:
        """The value of ``key``; a missing key reads as ``None`` (JavaScript drops undefined)."""
        return self._data.get(key)

    def child(self, key: str) -> JsonReader | None:
        """A reader of the nested object at ``key``, or ``None`` when it is null or missing."""
        value = self.optional(key)
        return None if value is None else JsonReader(value, self._where, f"{self._path}{key}.")

    def text(self, key: str, *, non_empty: bool = True) -> str:
        return require_str(self.required(key), self.name(key), non_empty=non_empty)

    def optional_text(self, key: str) -> str | None:
        return optional_str(self.optional(key), self.name(key))

    def integer(self, key: str, *, minimum: int) -> int:
        return require_int(self.required(key), self.name(key), minimum=minimum, maximum=INT4_MAX)

    def optional_integer(self, key: str, *, minimum: int) -> int | None:
        value = self.optional(key)
        return optional_int(value, self.name(key), minimum=minimum, maximum=INT4_MAX)

    def uuid(self, key: str) -> UUID:
        return coerce_uuid(self.required(key), self.name(key))

    def optional_uuid(self, key: str) -> UUID | None:
        value = self.optional(key)
        return None if value is None else coerce_uuid(value, self.name(key))

    def time(self, key: str) -> datetime:
        return parse_utc(self.required(key), self.name(key))

    def optional_time(self, key: str) -> datetime | None:
        value = self.optional(key)
        return None if value is None else parse_utc(value, self.name(key))

    def json_object(self, key: str, *, default_empty: bool = False) -> dict[str, Any]:
        """A copy of the object at ``key``; ``default_empty`` reads missing or null as ``{}``."""
        value = self.optional(key) if default_empty else self.required(key)
        if value is None and default_empty:
            return {}
        if not isinstance(value, dict):
            raise InvalidArgumentError(
                f"{self.name(key)} must be a JSON object (a dict), got {type(value).__name__}"
            )
        return dict(copy_json(value))

    def json_list(self, key: str) -> list[Any]:
        value = self.required(key)
        if not isinstance(value, list):
            raise InvalidArgumentError(
                f"{self.name(key)} must be a JSON array (a list), got {type(value).__name__}"
            )
        return value
