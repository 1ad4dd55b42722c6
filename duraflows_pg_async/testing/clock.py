"""ManualClock: a ``Clock`` that a test moves by hand, so a three-day timeout is due at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from duraflows_pg_async._core.validate import require_aware, require_duration
from duraflows_pg_async.errors import InvalidArgumentError

__all__ = ["ManualClock"]


class ManualClock:
    """A [`Clock`][duraflows_pg_async.Clock] whose time moves only when your test moves it.

    Give it to the runtime (`WorkflowRuntime(..., clock=clock)`); timeouts, retries and leases
    are then computed from `now()`, so `clock.advance(timedelta(days=3))` makes a three-day
    timeout due at once, for `process_expired_workflows()` and for a `TimeoutWorker` alike.

    `start` (timezone-aware) is where it starts; by default, the wall clock's time when the clock
    is made. `now()` is always in UTC. It moves forward only with `advance()`; `set()` puts it at
    any instant, earlier ones too. A naive datetime, a negative or non-finite step is an
    [`InvalidArgumentError`][duraflows_pg_async.errors.InvalidArgumentError].
    """

    __slots__ = ("_now",)

    def __init__(self, start: datetime | None = None) -> None:
        self._now = datetime.now(UTC) if start is None else _utc(start, "start")

    def now(self) -> datetime:
        """The clock's current time, timezone-aware, in UTC."""
        return self._now

    def advance(self, delta: timedelta | float | None = None, /, **units: float) -> datetime:
        """Move forward by `delta` (a `timedelta` or seconds) or by `timedelta(**units)`, as in
        `advance(days=3)`; returns the new `now()`."""
        if delta is not None and units:
            raise InvalidArgumentError("advance() takes a delta or keyword units, not both")
        if delta is None:
            try:
                delta = timedelta(**units)
            except TypeError as exc:
                raise InvalidArgumentError(f"advance(): {exc}") from None
        if isinstance(delta, timedelta) and delta < timedelta(0):
            raise InvalidArgumentError(
                f"advance() moves the clock forward only, got {delta!r}; set() goes back"
            )
        seconds = require_duration(delta, "advance()'s delta")
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=seconds)
        try:
            self._now = self._now + step
        except OverflowError:
            raise InvalidArgumentError(f"advance({step!r}) goes past datetime.max") from None
        return self._now

    def set(self, when: datetime) -> None:
        """From now on, `now()` is `when` (timezone-aware; converted to UTC), even if earlier."""
        self._now = _utc(when, "set()'s when")

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()})"


def _utc(when: object, name: str) -> datetime:
    return require_aware(when, name).astimezone(UTC)
