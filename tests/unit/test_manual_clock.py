"""ManualClock (duraflows_pg_async.testing): time that moves only when a test moves it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from duraflows_pg_async import Clock
from duraflows_pg_async.errors import InvalidArgumentError
from duraflows_pg_async.testing import ManualClock

START = datetime(2026, 1, 1, tzinfo=UTC)


def test_it_is_a_clock_that_stands_still() -> None:
    clock: Clock = ManualClock(START)
    assert clock.now() == START
    assert clock.now() == START


def test_by_default_it_starts_at_the_wall_clock_s_time_in_utc() -> None:
    before = datetime.now(UTC)
    now = ManualClock().now()
    assert before <= now <= datetime.now(UTC)
    assert now.tzinfo is UTC


def test_advance_by_a_timedelta_seconds_or_units_returns_the_new_time() -> None:
    clock = ManualClock(START)
    assert clock.advance(timedelta(days=3)) == START + timedelta(days=3)
    assert clock.advance(1.5) == START + timedelta(days=3, seconds=1.5)
    assert clock.advance(hours=1, minutes=2) == START + timedelta(
        days=3, hours=1, minutes=2, seconds=1.5
    )
    assert clock.advance(0) == clock.now()


def test_set_goes_anywhere_and_converts_to_utc() -> None:
    clock = ManualClock(START)
    paris = timezone(timedelta(hours=1))
    clock.set(datetime(2025, 6, 1, 12, tzinfo=paris))
    assert clock.now() == datetime(2025, 6, 1, 11, tzinfo=UTC)
    assert clock.now().tzinfo is UTC
    assert ManualClock(datetime(2026, 1, 1, 1, tzinfo=paris)).now() == START


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.advance(timedelta(seconds=-1)), "forward only"),
        (lambda c: c.advance(-1), "non-negative"),
        (lambda c: c.advance(days=-1), "forward only"),
        (lambda c: c.advance(float("nan")), "finite"),
        (lambda c: c.advance("1 day"), "timedelta or a number"),
        (lambda c: c.advance(timedelta(1), days=1), "not both"),
        (lambda c: c.advance(weeks=1, fortnights=1), "fortnights"),
        (lambda c: c.set(datetime(2026, 1, 1)), "timezone-aware"),
        (lambda c: c.set("2026-01-01"), "must be a datetime"),
        (lambda c: c.advance(timedelta.max), "at most"),
    ],
)
def test_bad_moves_are_clear_errors_and_change_nothing(call: object, message: str) -> None:
    clock = ManualClock(START)
    with pytest.raises(InvalidArgumentError, match=message):
        call(clock)  # type: ignore[operator]
    assert clock.now() == START


def test_a_naive_start_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="timezone-aware"):
        ManualClock(datetime(2026, 1, 1))


def test_repr_shows_the_time() -> None:
    assert repr(ManualClock(START)) == "ManualClock(2026-01-01T00:00:00+00:00)"
