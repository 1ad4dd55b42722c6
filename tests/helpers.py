"""What many test modules share: a clock the test moves, the reminder workflow, span readers,
waits on a condition or on a line of a process's output. Loaded as a pytest plugin by
tests/conftest.py (``pytest_plugins``), so its fixtures (``clock``, ``spans``) are available to
every test; its other names are imported as ``from helpers import ...`` (``tests/`` is on
``sys.path`` as the folder of the suite's conftest, and mypy reads it as the top-level module
``helpers``, as it does ``conftest``).
"""

from __future__ import annotations

import asyncio
import io
import os
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import asyncpg
import pytest
from asyncpg.pool import PoolConnectionProxy

from duraflows_pg_async import (
    Clock,
    CommandRef,
    Event,
    PgTransactionRunner,
    State,
    Timeout,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    __version__,
)
from duraflows_pg_async._core import tracing as _tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanContext

T = TypeVar("T")

# --- time ----------------------------------------------------------------------------------------

# Where a ManualClock starts unless told otherwise.
START = datetime(2026, 5, 1, tzinfo=UTC)


class ManualClock:
    """A ``Clock`` whose time moves only when the test moves it.

    ``now()`` is timezone-aware: UTC, unless the clock was started or ``set()`` in another zone
    (a test of local time, say), which it then keeps. ``advance()`` adds elapsed time, whatever
    the zone shows.
    """

    def __init__(self, start: datetime = START) -> None:
        self._now = _aware(start)

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        """From now on, ``now()`` is ``when`` (which must be timezone-aware)."""
        self._now = _aware(when)

    def advance(self, delta: timedelta | None = None, /, **units: float) -> None:
        """Move forward (or back) by ``delta``, or by ``timedelta(**units)``."""
        step = delta if delta is not None else timedelta(**units)
        self._now = (self._now.astimezone(UTC) + step).astimezone(self._now.tzinfo)

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()})"


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"a ManualClock tells timezone-aware time, not {when!r}")
    return when


if TYPE_CHECKING:
    _IS_A_CLOCK: Clock = ManualClock()


@pytest.fixture
def clock() -> ManualClock:
    """A ManualClock at ``START`` (2026-05-01 00:00 UTC)."""
    return ManualClock()


# --- definitions ---------------------------------------------------------------------------------


def reminder(
    name: str = "reminder",
    *,
    event: str = "remind",
    target: str = "reminded",
    command: str = "send",
    minutes: float = 5,
) -> WorkflowDefinition:
    """A workflow that waits in ``waiting`` for one event: it runs ``command`` and moves to
    ``target``, and its timeout fires it ``minutes`` after the instance entered ``waiting``."""
    return WorkflowDefinition(
        name=name,
        initial_state="waiting",
        states={
            "waiting": State(
                events={
                    event: Event(
                        target_state=target,
                        commands=(CommandRef(command),),
                        timeout=Timeout(minutes=minutes),
                    )
                }
            ),
            target: State(),
        },
    )


REMINDER = reminder()
# What the sweep tests with workers in other processes fire (test_worker_kill's child imports it
# from here; test_concurrency's script, run without tests/ on its path, spells it out again).
SWEEP = reminder("sweep", event="fire", target="fired", command="log", minutes=1)


# --- OpenTelemetry spans -------------------------------------------------------------------------


class Spans:
    """The spans a test produced, through an SDK provider of its own (the ``spans`` fixture)."""

    def __init__(self, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
        self.provider = provider
        self.exporter = exporter

    def all(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.all() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.named(name)
        return span

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        return [s for s in self.all() if parent_id(s) == span_id(parent)]


def use_provider(monkeypatch: pytest.MonkeyPatch, provider: TracerProvider) -> None:
    """Hand ``provider``'s tracer to the package for this test only.

    OpenTelemetry's global provider can be set only once per process, so no test sets it.
    """
    monkeypatch.setattr(_tracing, "_tracer", provider.get_tracer(_tracing.TRACER_NAME, __version__))


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spans]:
    """The package's spans of this test, kept in memory by an SDK provider of the test's own."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_provider(monkeypatch, provider)
    yield Spans(provider, exporter)
    provider.shutdown()


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_context(span: ReadableSpan) -> SpanContext:
    context = span.get_span_context()
    assert context is not None
    return context


def span_id(span: ReadableSpan) -> int:
    return span_context(span).span_id


# --- waiting for a condition ---------------------------------------------------------------------


async def wait_until(
    condition: Callable[[], Awaitable[T]],
    *,
    within: float = 10,
    interval: float = 0.01,
    what: str = "the condition",
) -> T:
    """Return the first true value of ``await condition()``, asked every ``interval`` seconds;
    fail with ``what`` if there is none ``within`` seconds.

    For a state that nothing signals (a server's view, another process, a file); an event the
    test can await is better where there is one. ``within`` is only a bound: a passing test
    never waits for it. An exception of ``condition`` (an assertion that a process still runs,
    say) ends the wait at once.
    """
    try:
        async with asyncio.timeout(within):
            while True:
                value = await condition()
                if value:
                    return value
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"not within {within} s: {what}") from None


async def wait_for_line(
    pipe: IO[str], text: str, *, within: float = 30, what: str | None = None
) -> str:
    """Read ``pipe`` (a process's stdout or stderr, opened with ``text=True``) up to the end of
    the first line that holds ``text``; return all that was read, that line included.

    A wait on the process's own signal, not a poll: a thread reads the pipe as the process writes
    it. It reads one byte at a time, so nothing after that line is taken: the process's later
    ``communicate()`` returns the rest, and what was read here plus that rest is the whole output.
    Fails (with what was read) if the pipe ends first, as it does when the process exits, or if
    there is no such line ``within`` seconds. The pipe's file object must not have been read
    before: its buffer would hold what this wait does not see.
    """
    assert isinstance(pipe, io.TextIOWrapper), pipe  # what Popen(..., text=True) makes
    fd, needle = pipe.fileno(), text.encode(pipe.encoding)
    deadline = time.monotonic() + within

    def read() -> tuple[bytes, str | None]:
        data = bytearray()
        line_start = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(data), f"not within {within} s"
            if not select.select([fd], [], [], left)[0]:
                continue
            byte = os.read(fd, 1)
            if not byte:
                return bytes(data), "the pipe ended (the process exited?)"
            data += byte
            if byte == b"\n":
                if needle in data[line_start:]:
                    return bytes(data), None
                line_start = len(data)

    data, failure = await asyncio.to_thread(read)
    lines = data.decode(pipe.encoding, pipe.errors or "strict")
    if failure is not None:
        raise AssertionError(f"{failure}: {what or repr(text)}; read so far: {lines!r}")
    return lines


# --- row locks -----------------------------------------------------------------------------------


async def lock_row(
    conn: asyncpg.Connection | PoolConnectionProxy[asyncpg.Record], instance_uuid: UUID
) -> None:
    """``SELECT ... FOR UPDATE`` of the instance's row, in ``conn``'s open transaction."""
    await conn.execute("SELECT 1 FROM workflow_instances WHERE uuid = $1 FOR UPDATE", instance_uuid)


@asynccontextmanager
async def row_locked(dsn: str, instance_uuid: UUID) -> AsyncIterator[asyncpg.Connection]:
    """The instance's row locked by a transaction of a connection of its own; the block gets
    that connection. The transaction is rolled back when the block ends."""
    holder = await asyncpg.connect(dsn)
    try:
        await holder.execute("BEGIN")
        await lock_row(holder, instance_uuid)
        yield holder
        await holder.execute("ROLLBACK")
    finally:
        await holder.close()


# --- PostgreSQL ----------------------------------------------------------------------------------


class PgDatabaseError:
    """``cause_database_error`` of ``TransactionRunnerConformance`` for the PostgreSQL runner (put
    it before the suite among the bases)."""

    async def cause_database_error(self, provider: WorkflowPersistenceProvider) -> object:
        # The suite calls this inside a nested transaction() (a savepoint): a caught SQL error
        # would otherwise leave the whole PostgreSQL transaction aborted.
        runner = provider.transaction_runner
        assert isinstance(runner, PgTransactionRunner)
        return await runner.connection().execute("SELECT 1/0")


async def run_python(code: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in a process of its own (waited for in a thread), with ``DATABASE_URL``
    in its environment: the URL carries the server's password, and a command line is public."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", code],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
