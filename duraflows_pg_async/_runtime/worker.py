"""TimeoutWorker: the async loop that sweeps due timeouts, and the loop it shares with
ExecutionWorker (``execution_worker``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Generic, Protocol, TypeVar

import anyio

from duraflows_pg_async._core.contract import WorkflowWakeups
from duraflows_pg_async._core.validate import require_bool, require_duration, require_int
from duraflows_pg_async.errors import InvalidArgumentError

from .execution import ProcessExpiredResult
from .instance_updates import utc_now
from .runtime import WorkflowRuntime
from .sweeper import checked_lease, sweep_names

__all__ = [
    "BATCHED_CONCURRENCY",
    "MAX_CONCURRENCY",
    "PollingWorker",
    "TimeoutWorker",
    "WorkerStats",
    "default_concurrency",
]

logger = logging.getLogger("duraflows_pg_async")

# Sweeps a batched TimeoutWorker runs at once by default: two keep Python and the server busy
# together (one batch fires while the other's writes and COMMIT are at the server); more add
# little in one process, whose Python is the limit.
BATCHED_CONCURRENCY = 2
# The most sweeps one worker runs at once (each holds a pool connection).
MAX_CONCURRENCY = 64


def default_concurrency(batched: bool) -> int:
    """How many sweeps a TimeoutWorker runs at once when ``concurrency`` is not given."""
    return BATCHED_CONCURRENCY if batched else 1


# After a poll that could not even reach the database, wait this long (doubling up to the cap)
# instead of the poll interval, so a database outage does not turn into a hot loop of errors.
_ERROR_BACKOFF_CAP = 30.0

# A sleep until a due time ends this much after it: the sweep's rule is "due before now", and a
# timer firing a hair early would find nothing and sleep again for nothing.
_DUE_MARGIN = 0.001


class _Stats(Protocol):
    errors: int


StatsT = TypeVar("StatsT", bound=_Stats)


class PollingWorker(Generic[StatsT]):
    """The loop of both workers (not public): poll, then poll again at once or sleep; back off
    on errors; ``stop()`` and cancellation.

    A subclass sets ``stats`` and ``_what`` (what a poll is, for the log) and implements
    ``_poll()``, which returns whether more work is known to be due now, and for wake-ups
    ``_next_due()`` and ``_wanted()``.

    With the provider's wake-ups (``persistence.wakeups``), a poll that leaves nothing due now
    is followed by a sleep until the nearest due time, at most ``poll_interval``, cut short by
    a wake-up (a NOTIFY of a write that committed) due before the sleep would end. Without
    them, or while the nearest-due query fails, the sleep is ``poll_interval``.
    """

    _what: ClassVar[str]
    stats: StatsT

    def __init__(self, runtime: WorkflowRuntime, batch_size: int, poll_interval: float) -> None:
        if not isinstance(runtime, WorkflowRuntime):
            raise InvalidArgumentError("runtime must be a WorkflowRuntime")
        self.runtime = runtime
        self.batch_size = require_int(batch_size, "batch_size", minimum=1)
        self.poll_interval = require_duration(
            poll_interval, "poll_interval", timedelta_ok=False, positive=True
        )
        self._stopping = False
        self._wake: anyio.Event | None = None
        self._running = False
        self._wakeups: WorkflowWakeups | None = runtime.persistence.wakeups
        # While the worker sleeps, a wake-up due before _wake_before wakes it. While it polls
        # (_wake_before None), wake-ups only lower _noticed, the earliest due they announced:
        # the sleep that follows ends by then. Waking at once instead would make a busy
        # database's stream of notifications a loop of polls. During an error's back-off, no
        # wake-up counts (_deaf).
        self._wake_before: datetime | None = None
        self._noticed: datetime | None = None
        self._deaf = False

    @property
    def running(self) -> bool:
        """Whether ``run()`` is active."""
        return self._running

    def stop(self) -> None:
        """Ask the worker to stop after the work in hand; ``run()`` then returns.

        Called before ``run()``, it makes ``run()`` return at once.
        """
        self._stopping = True
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Poll until stopped or cancelled."""
        if self._running:
            raise InvalidArgumentError(f"this {type(self).__name__} is already running")
        self._check_can_run()
        self._running = True
        self._wake = anyio.Event()
        backoff = self.poll_interval
        if self._wakeups is not None:
            self._wakeups.subscribe(self._on_wakeup)
        try:
            while not self._stopping:
                # A fresh event before the poll: a wake-up for a write that commits after the
                # poll's snapshot, even before the sleep begins, is not lost.
                if self._wake.is_set():
                    self._wake = anyio.Event()
                self._wake_before = None
                self._noticed = None
                self._deaf = False
                try:
                    more_due_now = await self._poll()
                except Exception:
                    self.stats.errors += 1
                    logger.warning(
                        "duraflows: %s failed; retrying in %.1fs",
                        self._what,
                        backoff,
                        exc_info=True,
                    )
                    self._deaf = True
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, max(_ERROR_BACKOFF_CAP, self.poll_interval))
                    continue
                backoff = self.poll_interval
                if not more_due_now:
                    await self._sleep(await self._delay())
        finally:
            self._running = False
            if self._wakeups is not None:
                with anyio.CancelScope(shield=True):
                    await self._wakeups.unsubscribe(self._on_wakeup)

    async def _delay(self) -> float:
        """Seconds until the nearest due time, at most ``poll_interval``; sets the bound of the
        wake-ups that cut the sleep short."""
        waker = self._wakeups
        if waker is None:
            return self.poll_interval
        now = utc_now(self.runtime.clock)
        try:
            due = await self._next_due(waker, now)
        except Exception:
            # Polling is the rule: a failed query only costs the early wake.
            logger.debug("duraflows: nearest due time unknown", exc_info=True)
            due = None
        delay = self.poll_interval
        # No await from here on: a wake-up lands either in _noticed or against _wake_before.
        for when in (due, self._noticed):
            if when is not None:
                delay = min(delay, max(0.0, (when - now).total_seconds()) + _DUE_MARGIN)
        self._wake_before = now + timedelta(seconds=delay)
        self._noticed = None
        return delay

    def _on_wakeup(self, kind: str, workflow_name: str | None, due: datetime | None) -> None:
        """A wake-up (on the event loop): wakes the sleep if it is ours and due before the
        sleep ends."""
        if self._deaf or self._wake is None or not self._wanted(kind, workflow_name):
            return
        if self._wake_before is None:
            if due is None:
                due = datetime.min.replace(tzinfo=UTC)
            if self._noticed is None or due < self._noticed:
                self._noticed = due
        elif due is None or due < self._wake_before:
            self._wake.set()

    async def _next_due(self, wakeups: WorkflowWakeups, now: datetime) -> datetime | None:
        """The nearest due time after ``now`` of this worker's work (None: none)."""
        raise NotImplementedError

    def _wanted(self, kind: str, workflow_name: str | None) -> bool:
        """Whether a wake-up of ``kind`` (and workflow) is for this worker."""
        raise NotImplementedError

    def _check_can_run(self) -> None:
        """Raise if ``run()`` cannot work where it is called (nothing to check by default)."""

    async def _poll(self) -> bool:
        """One poll; returns whether more work is known to be due now."""
        raise NotImplementedError

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        with anyio.move_on_after(seconds):
            await self._wake.wait()


@dataclass(slots=True)
class WorkerStats:
    """Running totals of one worker (for logs, metrics and tests)."""

    sweeps: int = 0
    processed: int = 0
    rejected: int = 0
    business_failed: int = 0
    failed: int = 0
    parked: int = 0
    errors: int = 0

    def add(self, result: ProcessExpiredResult) -> None:
        self.sweeps += 1
        self.processed += result.processed
        self.rejected += result.rejected
        self.business_failed += len(result.business_failed)
        self.failed += len(result.failed)
        self.parked += len(result.parked)


class TimeoutWorker(PollingWorker[WorkerStats]):
    """Sweeps due timeouts until ``stop()`` is called or its task is cancelled.

    Each sweep takes up to ``batch_size`` due instances; a full batch is followed at once by the
    next sweep, otherwise the worker sleeps ``poll_interval`` seconds. ``stop()`` lets the
    instance in hand finish, then ``run()`` returns; cancelling the task instead rolls that
    instance back. Any number of workers, in one process or many, can sweep one database: each
    instance is processed once. A failing instance is retried with backoff and then parked, so
    it never makes a worker spin.

    ``workflow_names`` narrows the sweeps to some of the runtime's workflows (default: all it
    registers); ``lease`` is how long a sweep's batch stays claimed (default: the runtime's
    ``sweep_lease``), the longest the batch of a killed worker waits for another worker.
    ``batched=True`` sweeps each batch in one transaction, every instance under a savepoint:
    many times the throughput, with the batch's rows locked until its COMMIT (see
    docs/timeouts-and-workers.md, "Batched sweeps").

    ``concurrency`` is how many sweeps the worker runs at once, each in a transaction (and a
    pool connection) of its own; default 2 when batched, so that one batch fires in Python
    while the other's writes and COMMIT are at the server, else 1. A poll is over when all of
    them are; an error in one cancels the others (their batches roll back, as on cancellation).
    """

    _what = "timeout sweep"

    def __init__(
        self,
        runtime: WorkflowRuntime,
        *,
        batch_size: int = 100,
        poll_interval: float = 1.0,
        workflow_names: Iterable[str] | None = None,
        lease: timedelta | float | None = None,
        batched: bool = False,
        concurrency: int | None = None,
    ) -> None:
        super().__init__(runtime, batch_size, poll_interval)
        self.batched = require_bool(batched, "batched")
        if concurrency is None:
            concurrency = default_concurrency(self.batched)
        self.concurrency = require_int(
            concurrency, "concurrency", minimum=1, maximum=MAX_CONCURRENCY
        )
        self.workflow_names = (
            None if workflow_names is None else sweep_names(runtime.definitions, workflow_names)
        )
        self.lease = None if lease is None else checked_lease(lease, "lease")
        self.stats = WorkerStats()

    def _names(self) -> list[str]:
        if self.workflow_names is not None:
            return self.workflow_names
        return sweep_names(self.runtime.definitions, None)

    async def _next_due(self, wakeups: WorkflowWakeups, now: datetime) -> datetime | None:
        return await wakeups.next_timeout_due(self._names(), now)

    def _wanted(self, kind: str, workflow_name: str | None) -> bool:
        if kind not in ("timeout", "any"):
            return False
        return workflow_name is None or workflow_name in self._names()

    async def _poll(self) -> bool:
        if self.concurrency == 1:
            return await self._sweep()
        full: list[bool] = []

        async def sweep() -> None:
            full.append(await self._sweep())

        async with anyio.create_task_group() as group:
            for _ in range(self.concurrency):
                group.start_soon(sweep)
        return any(full)

    async def _sweep(self) -> bool:
        """One sweep; returns whether its batch was full."""
        result = await self.runtime.sweep(
            self.batch_size,
            should_stop=lambda: self._stopping,
            workflow_names=self.workflow_names,
            lease=self.lease,
            batched=self.batched,
        )
        self.stats.add(result)
        # Only settled instances count: a failure whose retry could not be recorded is still
        # due, and sweeping again at once would spin on it.
        settled = sum(1 for f in result.failed if f.attempts is not None)
        progress = result.processed + result.rejected + settled
        # A full batch means more may be due now; anything less means we caught up.
        return progress >= self.batch_size
