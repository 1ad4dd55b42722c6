"""Values as PostgreSQL gives them back: the jsonb and timestamptz round trips.

The in-memory stores copy every value on write and on read through these, so that a test sees
what the PostgreSQL provider would return.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from duraflows_pg_async._core.model import TimeoutRetry

__all__ = ["as_jsonb", "as_timestamptz", "copy_jsonb", "optional_timestamptz", "stored_retry"]


def as_jsonb(value: Any) -> Any:
    """``value`` as PostgreSQL's jsonb gives it back (``check_json`` has accepted it)."""
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        text = float.__repr__(value)
        if "e+" in text:
            # jsonb keeps numbers as numeric, which prints 1e+16 as 10000000000000000.
            return int(Decimal(text))
        return 0.0 if value == 0 else float(text)
    if isinstance(value, dict):
        # jsonb orders object keys by their length in bytes, then bytewise.
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return {key: as_jsonb(value[key]) for key in keys}
    return [as_jsonb(item) for item in value]


def copy_jsonb(value: Any) -> Any:
    """A deep copy of a value ``as_jsonb`` produced."""
    if isinstance(value, dict):
        return {key: copy_jsonb(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_jsonb(item) for item in value]
    return value


def as_timestamptz(value: datetime) -> datetime:
    """An aware datetime as timestamptz gives it back: a plain datetime in UTC."""
    d = value.astimezone(UTC)
    return datetime(d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond, tzinfo=UTC)


def optional_timestamptz(value: datetime | None) -> datetime | None:
    return None if value is None else as_timestamptz(value)


def stored_retry(retry: TimeoutRetry | None) -> TimeoutRetry | None:
    """The retry state as the instance's timeout columns give it back."""
    if retry is None:
        return None
    return TimeoutRetry(
        attempts=int.__index__(retry.attempts),
        last_error=str.__str__(retry.last_error),
        retry_at=optional_timestamptz(retry.retry_at),
        parked_at=optional_timestamptz(retry.parked_at),
    )
