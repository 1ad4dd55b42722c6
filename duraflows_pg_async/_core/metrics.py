"""In-process metrics: the hooks the runtime calls and the recorders behind them (docs/metrics.md).

A recorder (``duraflows_pg_async.metrics``' Prometheus or OpenTelemetry collector) attaches to one
runtime. Call sites test ``ACTIVE``, or get None from ``probe``, before anything else: while no
recorder is attached anywhere, a transition costs a flag test and no clock is read.

A recorder that raises is logged (once as a warning, then at debug level) and ignored: a metric
must never break the work it counts.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

__all__ = [
    "ACTIVE",
    "Probe",
    "Recorder",
    "attach",
    "detach",
    "execution_finished",
    "lease_lost",
    "observed",
    "probe",
    "swept",
]

logger = logging.getLogger("duraflows_pg_async")


class _Outcome(Protocol):
    @property
    def outcome(self) -> str: ...


R = TypeVar("R", bound=_Outcome)
T = TypeVar("T")


class Recorder(Protocol):
    """What a collector records. Label values are short, bounded strings (no instance uuids)."""

    def transition(self, workflow: str, source: str, outcome: str, seconds: float | None) -> None:
        """An event ran: ``source`` "event", "timeout" or "execution"; ``seconds`` the time it
        took in this process (None: not measured)."""

    def execution_latency(self, workflow: str, seconds: float) -> None:
        """A queued execution completed ``seconds`` after it was accepted (runtime clock)."""

    def lease_lost(self) -> None:
        """A worker lost the lease of a queued execution (ExecutionLeaseLostError)."""

    def sweep(self, kind: str, outcome: str, counts: Mapping[str, int]) -> None:
        """A sweep ("timeout") or execution poll ("execution") ended ("ok" or "error") having
        done ``counts`` (what each result list held)."""


ACTIVE = False
# id(runtime) -> its recorders. The hooks look runtimes up by id, which is cheaper than hashing
# them; _runtimes keeps each one alive while it has recorders, so that its id is not reused.
_recorders: dict[int, tuple[Recorder, ...]] = {}
_runtimes: dict[int, object] = {}
_warned = False


def attach(runtime: object, recorder: Recorder) -> None:
    """Send ``runtime``'s figures to ``recorder`` too."""
    global ACTIVE
    _recorders[id(runtime)] = (*_recorders.get(id(runtime), ()), recorder)
    _runtimes[id(runtime)] = runtime
    ACTIVE = True


def detach(runtime: object, recorder: Recorder) -> None:
    """Stop sending ``runtime``'s figures to ``recorder`` (nothing if it was not attached)."""
    global ACTIVE
    left = tuple(r for r in _recorders.get(id(runtime), ()) if r is not recorder)
    if left:
        _recorders[id(runtime)] = left
    else:
        _recorders.pop(id(runtime), None)
        _runtimes.pop(id(runtime), None)
    ACTIVE = bool(_recorders)


def _failed() -> None:
    global _warned
    level = logging.DEBUG if _warned else logging.WARNING
    _warned = True
    logger.log(level, "duraflows: a metric failed; carrying on without it", exc_info=True)


def _record(recorders: tuple[Recorder, ...], name: str, *args: Any) -> None:
    for recorder in recorders:
        try:
            getattr(recorder, name)(*args)
        except Exception:
            _failed()


class Probe:
    """One event being measured, from ``probe()`` to ``done()``.

    ``workflow`` may be set once it is known (an event on an unknown instance is not counted);
    ``outcome``, when set, overrides the outcome given to ``done()``.
    """

    __slots__ = ("outcome", "recorders", "source", "started", "workflow")

    def __init__(self, recorders: tuple[Recorder, ...], source: str, workflow: str | None) -> None:
        self.recorders = recorders
        self.source = source
        self.workflow = workflow
        self.outcome: str | None = None
        self.started = time.perf_counter()

    def done(self, outcome: str | None) -> None:
        """Record the event (``outcome`` None: it did not run, nothing is recorded)."""
        outcome = self.outcome or outcome
        if outcome is None or self.workflow is None:
            return
        seconds = time.perf_counter() - self.started
        _record(self.recorders, "transition", self.workflow, self.source, outcome, seconds)


def probe(runtime: object, source: str, workflow: str | None = None) -> Probe | None:
    """A probe started now, or None when no recorder listens to ``runtime``."""
    if not ACTIVE:
        return None
    recorders = _recorders.get(id(runtime))
    return None if recorders is None else Probe(recorders, source, workflow)


def observed(probe: Probe | None, awaitable: Awaitable[R]) -> Awaitable[R]:
    """``await awaitable``, recorded by ``probe`` with the result's outcome, or "error" if it
    raises. Without a probe, ``awaitable`` is handed back as it is."""
    if probe is None:
        return awaitable
    return _observed(probe, awaitable)


async def _observed(probe: Probe, awaitable: Awaitable[R]) -> R:
    try:
        result = await awaitable
    except Exception:
        probe.done("error")
        raise
    probe.done(result.outcome)
    return result


def swept(
    runtime: object,
    kind: str,
    awaitable: Awaitable[T],
    counts: Callable[[T], Mapping[str, int]],
) -> Awaitable[T]:
    """``await awaitable`` (a sweep or an execution poll), recorded as ``kind`` with what
    ``counts(result)`` says it did, or as an error if it raises."""
    if not ACTIVE or id(runtime) not in _recorders:
        return awaitable
    return _swept(_recorders[id(runtime)], kind, awaitable, counts)


async def _swept(
    recorders: tuple[Recorder, ...],
    kind: str,
    awaitable: Awaitable[T],
    counts: Callable[[T], Mapping[str, int]],
) -> T:
    try:
        result = await awaitable
    except Exception:
        _record(recorders, "sweep", kind, "error", {})
        raise
    try:
        done = counts(result)
    except Exception:
        _failed()
        return result
    _record(recorders, "sweep", kind, "ok", done)
    return result


def lease_lost(runtime: object) -> None:
    """Count a lost execution lease."""
    if ACTIVE and id(runtime) in _recorders:
        _record(_recorders[id(runtime)], "lease_lost")


def execution_finished(runtime: Any, execution: Any) -> None:
    """Count a queued execution completed in the current transaction, once it commits: its
    outcome, and unless its guard turned it down at acceptance, how long it took since then.

    ``execution`` is a WorkflowExecution with its ``result`` set; it is read now.
    """
    if not ACTIVE or id(runtime) not in _recorders:
        return
    recorders = _recorders[id(runtime)]
    try:
        outcome: str = execution.result.outcome
        seconds: float | None = None
        if outcome != "guard-rejected":
            seconds = (execution.updated_at - execution.created_at).total_seconds()
        callback = functools.partial(
            _execution_committed, recorders, execution.workflow_name, outcome, seconds
        )
        runtime.persistence.transaction_runner.after_commit(callback)
    except Exception:
        _failed()


def _execution_committed(
    recorders: tuple[Recorder, ...], workflow: str, outcome: str, seconds: float | None
) -> None:
    _record(recorders, "transition", workflow, "execution", outcome, None)
    if seconds is not None:
        _record(recorders, "execution_latency", workflow, max(seconds, 0.0))
