"""The OpenTelemetry back end: ``OpenTelemetryMetrics``.

opentelemetry-api is imported when one is built, so that importing ``duraflows_pg_async.metrics``
needs it only for OpenTelemetry. The observable gauges' callbacks run on the SDK reader's thread:
they only read the last snapshot, replaced whole by ``refresh()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from duraflows_pg_async._core import metrics as _metrics
from duraflows_pg_async._core.tracing import TRACER_NAME
from duraflows_pg_async._core.validate import require_duration
from duraflows_pg_async._metrics.figures import (
    ATTRIBUTES,
    EVENT_BUCKETS,
    EVENT_DURATION,
    EXECUTION_LATENCY,
    GAUGES,
    LATENCY_BUCKETS,
    LEASE_LOSSES,
    STATS_UP,
    SWEEPS,
    SWEPT,
    TRANSITIONS,
    Figure,
    Gauge,
    SnapshotSource,
    checked_runtime,
)
from duraflows_pg_async.errors import ConfigurationError, InvalidArgumentError, WorkflowError

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

    from duraflows_pg_async._runtime.runtime import WorkflowRuntime

__all__ = ["DEFAULT_REFRESH_INTERVAL", "OpenTelemetryMetrics"]

DEFAULT_REFRESH_INTERVAL = 15.0
"""Seconds between two refreshes of the database figures by ``start()``."""


def _attributes(figure: Figure, labels: Iterable[str]) -> dict[str, str]:
    return {ATTRIBUTES[name]: value for name, value in zip(figure.labels, labels, strict=True)}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("duraflows-pg-async")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0"


class _Recorder:
    """The in-process figures, as OpenTelemetry counters and histograms."""

    def __init__(self, meter: Any) -> None:
        def counter(figure: Figure) -> Any:
            return meter.create_counter(figure.otel_name, unit=figure.unit, description=figure.help)

        def histogram(figure: Figure, buckets: tuple[float, ...]) -> Any:
            try:
                return meter.create_histogram(
                    figure.otel_name,
                    unit=figure.unit,
                    description=figure.help,
                    explicit_bucket_boundaries_advisory=buckets,
                )
            except TypeError:  # an API before 1.23: the SDK's default buckets (or a View)
                return meter.create_histogram(
                    figure.otel_name, unit=figure.unit, description=figure.help
                )

        self.transitions = counter(TRANSITIONS)
        self.lease_losses = counter(LEASE_LOSSES)
        self.sweeps = counter(SWEEPS)
        self.swept = counter(SWEPT)
        self.durations = histogram(EVENT_DURATION, EVENT_BUCKETS)
        self.latencies = histogram(EXECUTION_LATENCY, LATENCY_BUCKETS)

    def transition(self, workflow: str, source: str, outcome: str, seconds: float | None) -> None:
        self.transitions.add(1, _attributes(TRANSITIONS, (workflow, source, outcome)))
        if seconds is not None:
            self.durations.record(seconds, _attributes(EVENT_DURATION, (workflow, source)))

    def execution_latency(self, workflow: str, seconds: float) -> None:
        self.latencies.record(seconds, _attributes(EXECUTION_LATENCY, (workflow,)))

    def lease_lost(self) -> None:
        self.lease_losses.add(1)

    def sweep(self, kind: str, outcome: str, counts: Mapping[str, int]) -> None:
        self.sweeps.add(1, _attributes(SWEEPS, (kind, outcome)))
        for result, count in counts.items():
            self.swept.add(count, _attributes(SWEPT, (kind, result)))


class OpenTelemetryMetrics:
    """The runtime's figures as OpenTelemetry metrics, through ``meter_provider`` (default: the
    global one, which follows the provider your application sets); see docs/metrics.md.

    Counters and histograms are recorded as ``runtime`` works. The gauges are observable: they
    report the database figures of the last refresh, so something must refresh them: ``start()``
    a task that does it every ``interval`` seconds, or ``await refresh()`` yourself. Needs the
    ``otel`` extra (ConfigurationError without it). ``close()`` stops recording. Build one per
    runtime and meter provider: OpenTelemetry keeps the first instrument of a name.
    """

    def __init__(
        self, runtime: WorkflowRuntime, *, meter_provider: MeterProvider | None = None
    ) -> None:
        self.runtime = checked_runtime(runtime)
        try:
            from opentelemetry import metrics as otel_metrics
            from opentelemetry.metrics import Observation
        except ImportError as exc:
            raise ConfigurationError(
                "OpenTelemetryMetrics needs opentelemetry-api: "
                "pip install 'duraflows-pg-async[otel]'"
            ) from exc
        if meter_provider is None:
            meter_provider = otel_metrics.get_meter_provider()
        elif not callable(getattr(meter_provider, "get_meter", None)):
            raise InvalidArgumentError(
                "meter_provider must be an OpenTelemetry MeterProvider or None, got "
                f"{type(meter_provider).__name__}"
            )
        meter = meter_provider.get_meter(TRACER_NAME, _version())
        self._observation = Observation
        self._source = SnapshotSource(self.runtime)
        self._recorder = _Recorder(meter)
        for gauge in GAUGES:
            meter.create_observable_gauge(
                gauge.figure.otel_name,
                callbacks=[self._observer(gauge)],
                unit=gauge.figure.unit,
                description=gauge.figure.help,
            )
        meter.create_observable_gauge(
            STATS_UP.otel_name,
            callbacks=[self._observe_up],
            unit=STATS_UP.unit,
            description=STATS_UP.help,
        )
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        _metrics.attach(self.runtime, self._recorder)

    def _observer(self, gauge: Gauge) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            snapshot = self._source.snapshot
            if snapshot is None or self._closed:
                return []
            return [
                self._observation(value, _attributes(gauge.figure, labels))
                for labels, value in gauge.samples(snapshot)
            ]

        return observe

    def _observe_up(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._closed:
            return []
        return [self._observation(0 if self._source.snapshot is None else 1)]

    async def refresh(self) -> None:
        """Read the database figures now. If it fails, the error is raised and the gauges report
        nothing (``duraflows.stats.up`` 0) until a refresh succeeds."""
        await self._source.refresh()

    def start(self, interval: float = DEFAULT_REFRESH_INTERVAL) -> None:
        """Refresh the database figures now and then every ``interval`` seconds, in a task of
        the running event loop, until ``stop()`` or ``close()``. A failed refresh is logged and
        tried again at the next interval."""
        seconds = require_duration(interval, "interval", timedelta_ok=False, positive=True)
        if self._closed:
            raise WorkflowError("this OpenTelemetryMetrics is closed")
        if self._task is not None and not self._task.done():
            raise WorkflowError("this OpenTelemetryMetrics is already started")
        self._task = asyncio.get_running_loop().create_task(
            self._refresh_every(seconds), name="duraflows metrics refresh"
        )

    async def _refresh_every(self, seconds: float) -> None:
        while True:
            await self._source.refresh_or_log()
            await asyncio.sleep(seconds)

    async def stop(self) -> None:
        """Stop the task of ``start()`` (nothing if none runs); the figures stay as they are."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def close(self) -> None:
        """Stop recording: the counters stop counting, the gauges report nothing, the task of
        ``start()`` is cancelled. Idempotent."""
        if self._closed:
            return
        self._closed = True
        _metrics.detach(self.runtime, self._recorder)
        if self._task is not None:
            self._task.cancel()
            self._task = None
