"""What the collectors measure, in one table for both back ends, and the database snapshot that
feeds the gauges.

The counters and histograms are recorded in this process as the runtime works
(``_core/metrics.py``). The gauges are figures of the database (``runtime.stats()``,
``runtime.execution_stats()``): PostgreSQL is asynchronous and both back ends collect
synchronously (OpenTelemetry from its reader's thread), so they read a ``Snapshot`` that
``refresh()`` replaced last.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from duraflows_pg_async._core.executions import ExecutionStats
from duraflows_pg_async._core.model import StateStats
from duraflows_pg_async._runtime.instance_updates import utc_now
from duraflows_pg_async._runtime.runtime import WorkflowRuntime
from duraflows_pg_async.errors import InvalidArgumentError

__all__ = [
    "ATTRIBUTES",
    "COUNTERS",
    "EVENT_BUCKETS",
    "EVENT_DURATION",
    "EXECUTION_LATENCY",
    "GAUGES",
    "LATENCY_BUCKETS",
    "LEASE_LOSSES",
    "STATS_UP",
    "SWEEPS",
    "SWEPT",
    "TRANSITIONS",
    "Figure",
    "Gauge",
    "Snapshot",
    "SnapshotSource",
    "checked_runtime",
]

logger = logging.getLogger("duraflows_pg_async")

# Label names (Prometheus) and the attribute keys OpenTelemetry gets for them.
ATTRIBUTES: dict[str, str] = {
    "workflow": "duraflows.workflow.name",
    "state": "duraflows.state",
    "source": "duraflows.source",
    "outcome": "duraflows.outcome",
    "kind": "duraflows.worker.kind",
    "result": "duraflows.worker.result",
    "status": "duraflows.execution.status",
}


@dataclass(frozen=True, slots=True)
class Figure:
    """One metric: its Prometheus name (a counter's without ``_total``), its OpenTelemetry
    name and unit, what it means, and its labels."""

    name: str
    otel_name: str
    unit: str
    help: str
    labels: tuple[str, ...] = ()


TRANSITIONS = Figure(
    "duraflows_transitions",
    "duraflows.transitions",
    "{transition}",
    "Events run, by workflow, source (event, timeout, execution) and outcome (success, "
    "failure, guard-rejected, error, replayed).",
    ("workflow", "source", "outcome"),
)
LEASE_LOSSES = Figure(
    "duraflows_execution_lease_losses",
    "duraflows.execution.lease_losses",
    "{loss}",
    "Queued executions whose worker lost its lease before it could checkpoint.",
)
SWEEPS = Figure(
    "duraflows_worker_sweeps",
    "duraflows.worker.sweeps",
    "{sweep}",
    "Timeout sweeps (kind timeout) and execution polls (kind execution), by outcome (ok, error).",
    ("kind", "outcome"),
)
SWEPT = Figure(
    "duraflows_worker_items",
    "duraflows.worker.items",
    "{item}",
    "What sweeps and polls did, by kind and result (timeout: processed, rejected, "
    "business_failed, failed, parked; execution: progressed, completed, retrying, parked, "
    "skipped, failed).",
    ("kind", "result"),
)
COUNTERS = (TRANSITIONS, LEASE_LOSSES, SWEEPS, SWEPT)

EVENT_DURATION = Figure(
    "duraflows_event_duration_seconds",
    "duraflows.event.duration",
    "s",
    "How long an event took in this process (trigger_event, or a timeout fired by a sweep), "
    "by workflow and source.",
    ("workflow", "source"),
)
EXECUTION_LATENCY = Figure(
    "duraflows_execution_latency_seconds",
    "duraflows.execution.latency",
    "s",
    "From the acceptance of a queued execution (enqueue_event) to its completion, by "
    "workflow (the runtime's clock).",
    ("workflow",),
)
# Event durations are a transaction's; queued executions wait for workers and retries.
EVENT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATENCY_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The database's figures at ``taken_at`` (the runtime's clock). ``executions`` is None when
    the runtime's provider has no execution store."""

    taken_at: datetime
    states: tuple[StateStats, ...]
    executions: tuple[ExecutionStats, ...] | None


Samples = list[tuple[tuple[str, ...], float]]


def _lag(now: datetime, since: datetime | None) -> float:
    return 0.0 if since is None else max((now - since).total_seconds(), 0.0)


def _per_state(field: str) -> Callable[[Snapshot], Samples]:
    def samples(snapshot: Snapshot) -> Samples:
        return [((s.workflow_name, s.state), float(getattr(s, field))) for s in snapshot.states]

    return samples


def _oldest_due_lag(snapshot: Snapshot) -> Samples:
    lags: dict[str, float] = {}
    for s in snapshot.states:
        lag = _lag(snapshot.taken_at, s.oldest_due_at)
        lags[s.workflow_name] = max(lags.get(s.workflow_name, 0.0), lag)
    return [((workflow,), lag) for workflow, lag in lags.items()]


def _executions(snapshot: Snapshot) -> Samples:
    return [((e.status,), float(e.executions)) for e in snapshot.executions or ()]


def _due_executions(snapshot: Snapshot) -> Samples:
    if snapshot.executions is None:
        return []
    return [((), float(sum(e.due for e in snapshot.executions)))]


def _oldest_due_execution_lag(snapshot: Snapshot) -> Samples:
    if snapshot.executions is None:
        return []
    lags = [_lag(snapshot.taken_at, e.oldest_due_at) for e in snapshot.executions]
    return [((), max(lags, default=0.0))]


@dataclass(frozen=True, slots=True)
class Gauge:
    """A figure of the database and how to read it from a snapshot."""

    figure: Figure
    samples: Callable[[Snapshot], Samples]


def _state_gauge(name: str, otel_name: str, help: str, field: str) -> Gauge:
    return Gauge(
        Figure(name, otel_name, "{instance}", help, ("workflow", "state")), _per_state(field)
    )


GAUGES = (
    _state_gauge(
        "duraflows_instances",
        "duraflows.instances",
        "Instances per workflow and state.",
        "instances",
    ),
    _state_gauge(
        "duraflows_due_timeouts",
        "duraflows.timeouts.due",
        "Instances whose timeout a sweep would fire now (the due backlog).",
        "due",
    ),
    _state_gauge(
        "duraflows_retrying_timeouts",
        "duraflows.timeouts.retrying",
        "Instances whose timeout failed and waits for its next attempt.",
        "retrying",
    ),
    _state_gauge(
        "duraflows_parked_timeouts",
        "duraflows.timeouts.parked",
        "Instances whose timeout exhausted its retries: an operator must rearm them.",
        "parked",
    ),
    _state_gauge(
        "duraflows_claimed_timeouts",
        "duraflows.timeouts.claimed",
        "Instances claimed by a sweep in progress.",
        "claimed",
    ),
    Gauge(
        Figure(
            "duraflows_oldest_due_lag_seconds",
            "duraflows.timeouts.oldest_due_lag",
            "s",
            "How long the longest-waiting due timeout of the workflow has been due (0: none).",
            ("workflow",),
        ),
        _oldest_due_lag,
    ),
    Gauge(
        Figure(
            "duraflows_executions",
            "duraflows.executions",
            "{execution}",
            "Active queued executions by status (pending, running, parked).",
            ("status",),
        ),
        _executions,
    ),
    Gauge(
        Figure(
            "duraflows_due_executions",
            "duraflows.executions.due",
            "{execution}",
            "Queued executions a worker would take now (the execution queue depth).",
        ),
        _due_executions,
    ),
    Gauge(
        Figure(
            "duraflows_oldest_due_execution_lag_seconds",
            "duraflows.executions.oldest_due_lag",
            "s",
            "How long the longest-waiting due queued execution has been due (0: none).",
        ),
        _oldest_due_execution_lag,
    ),
)
STATS_UP = Figure(
    "duraflows_stats_up",
    "duraflows.stats.up",
    "1",
    "1 when the last refresh of the database figures succeeded, 0 when it failed (the other "
    "database figures are then left out) or none was made.",
)


def checked_runtime(runtime: object) -> WorkflowRuntime:
    """``runtime``, if it is a WorkflowRuntime (InvalidArgumentError naming it otherwise)."""
    if not isinstance(runtime, WorkflowRuntime):
        raise InvalidArgumentError(
            f"runtime must be a WorkflowRuntime, got {type(runtime).__name__}"
        )
    return runtime


class SnapshotSource:
    """The database figures of one runtime, as of the last ``refresh()``."""

    def __init__(self, runtime: WorkflowRuntime) -> None:
        self.runtime = runtime
        self.snapshot: Snapshot | None = None
        self._failing = False

    async def refresh(self) -> Snapshot:
        """Read the figures again. On failure the previous ones are dropped (stale figures
        would look true) and the error is raised."""
        runtime = self.runtime
        try:
            states = await runtime.stats()
            executions = None
            if runtime.persistence.execution_store is not None:
                executions = tuple(await runtime.execution_stats())
        except BaseException:
            self.snapshot = None
            raise
        self.snapshot = Snapshot(utc_now(runtime.clock), tuple(states), executions)
        self._failing = False
        return self.snapshot

    async def refresh_or_log(self) -> bool:
        """``refresh()``; a failure is logged (as a warning when it starts a run of failures,
        then at debug level) instead of raised. Returns whether it succeeded."""
        try:
            await self.refresh()
        except Exception:
            level = logging.DEBUG if self._failing else logging.WARNING
            self._failing = True
            logger.log(
                level, "duraflows: metrics could not read the database figures", exc_info=True
            )
            return False
        return True
