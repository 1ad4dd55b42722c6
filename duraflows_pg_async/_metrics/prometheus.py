"""The Prometheus back end: ``PrometheusMetrics``, ``render_prometheus`` and ``metrics_app``.

prometheus_client is imported when a ``PrometheusMetrics`` is built, so that importing
``duraflows_pg_async.metrics`` needs it only for Prometheus.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from duraflows_pg_async._core import metrics as _metrics
from duraflows_pg_async._metrics.figures import (
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
    SnapshotSource,
    checked_runtime,
)
from duraflows_pg_async.errors import ConfigurationError, InvalidArgumentError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from duraflows_pg_async._runtime.runtime import WorkflowRuntime

__all__ = ["ASGIApp", "PrometheusMetrics", "metrics_app", "render_prometheus"]

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]
"""An ASGI application: ``await app(scope, receive, send)``."""


def _import_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigurationError(
            "PrometheusMetrics needs prometheus-client: "
            "pip install 'duraflows-pg-async[prometheus]'"
        ) from exc
    return prometheus_client


class _Recorder:
    """The in-process figures, as prometheus_client counters and histograms."""

    def __init__(self, prometheus: Any) -> None:
        def counter(figure: Any) -> Any:
            return prometheus.Counter(figure.name, figure.help, figure.labels, registry=None)

        self.transitions = counter(TRANSITIONS)
        self.lease_losses = counter(LEASE_LOSSES)
        self.sweeps = counter(SWEEPS)
        self.swept = counter(SWEPT)
        self.durations = prometheus.Histogram(
            EVENT_DURATION.name,
            EVENT_DURATION.help,
            EVENT_DURATION.labels,
            registry=None,
            buckets=EVENT_BUCKETS,
        )
        self.latencies = prometheus.Histogram(
            EXECUTION_LATENCY.name,
            EXECUTION_LATENCY.help,
            EXECUTION_LATENCY.labels,
            registry=None,
            buckets=LATENCY_BUCKETS,
        )
        self.collectors = (
            self.transitions,
            self.durations,
            self.latencies,
            self.lease_losses,
            self.sweeps,
            self.swept,
        )

    def transition(self, workflow: str, source: str, outcome: str, seconds: float | None) -> None:
        self.transitions.labels(workflow, source, outcome).inc()
        if seconds is not None:
            self.durations.labels(workflow, source).observe(seconds)

    def execution_latency(self, workflow: str, seconds: float) -> None:
        self.latencies.labels(workflow).observe(seconds)

    def lease_lost(self) -> None:
        self.lease_losses.inc()

    def sweep(self, kind: str, outcome: str, counts: Mapping[str, int]) -> None:
        self.sweeps.labels(kind, outcome).inc()
        for result, count in counts.items():
            # Every result appears, at 0 too, so that rate() sees the series from the start.
            self.swept.labels(kind, result).inc(count)


class _DatabaseFigures:
    """A prometheus_client collector of the gauges, read from the last snapshot."""

    def __init__(self, prometheus: Any, source: SnapshotSource) -> None:
        from prometheus_client.core import GaugeMetricFamily

        self._family = GaugeMetricFamily
        self._source = source

    def describe(self) -> list[Metric]:
        # Names only: the registry checks them for duplicates without a snapshot.
        figures = [gauge.figure for gauge in GAUGES] + [STATS_UP]
        return [self._family(f.name, f.help, labels=f.labels) for f in figures]

    def collect(self) -> Iterator[Metric]:
        snapshot = self._source.snapshot
        up = self._family(STATS_UP.name, STATS_UP.help)
        up.add_metric([], 0.0 if snapshot is None else 1.0)
        yield up
        if snapshot is None:
            return
        for gauge in GAUGES:
            samples = gauge.samples(snapshot)
            if not samples:
                continue
            family = self._family(gauge.figure.name, gauge.figure.help, labels=gauge.figure.labels)
            for labels, value in samples:
                family.add_metric(list(labels), value)
            yield family


class PrometheusMetrics:
    """The runtime's figures as Prometheus metrics, registered in ``registry`` (default:
    prometheus_client's global ``REGISTRY``); see docs/metrics.md.

    Counters and histograms are recorded in this process as ``runtime`` works. The gauges are
    figures of the database, read by ``await refresh()``, which
    [`render_prometheus()`][duraflows_pg_async.metrics.render_prometheus] and
    [`metrics_app()`][duraflows_pg_async.metrics.metrics_app] call on each scrape. A registry
    holds one ``PrometheusMetrics`` (InvalidArgumentError otherwise); ``close()`` takes it out,
    and lets go of the runtime, when the runtime is done with.
    Needs the ``prometheus`` extra (ConfigurationError without it).
    """

    def __init__(
        self, runtime: WorkflowRuntime, *, registry: CollectorRegistry | None = None
    ) -> None:
        self.runtime = checked_runtime(runtime)
        prometheus = _import_prometheus()
        if registry is None:
            registry = prometheus.REGISTRY
        elif not isinstance(registry, prometheus.CollectorRegistry):
            raise InvalidArgumentError(
                "registry must be a prometheus_client CollectorRegistry or None, got "
                f"{type(registry).__name__}"
            )
        self.registry: CollectorRegistry = registry
        self._source = SnapshotSource(self.runtime)
        self._recorder = _Recorder(prometheus)
        self._registered: list[Any] = []
        try:
            for collector in (
                *self._recorder.collectors,
                _DatabaseFigures(prometheus, self._source),
            ):
                registry.register(collector)
                self._registered.append(collector)
        except ValueError as exc:  # a name already registered
            self._unregister()
            raise InvalidArgumentError(
                f"registry already holds duraflows metrics (one PrometheusMetrics per registry): "
                f"{exc}"
            ) from exc
        _metrics.attach(self.runtime, self._recorder)
        self._closed = False

    async def refresh(self) -> None:
        """Read the database figures now. If it fails, the error is raised and the gauges are
        left out (``duraflows_stats_up`` 0) until a refresh succeeds."""
        await self._source.refresh()

    def close(self) -> None:
        """Stop recording and take the metrics out of the registry. Idempotent."""
        if self._closed:
            return
        self._closed = True
        _metrics.detach(self.runtime, self._recorder)
        self._unregister()

    def _unregister(self) -> None:
        while self._registered:
            self.registry.unregister(self._registered.pop())


async def render_prometheus(
    metrics: PrometheusMetrics, *, accept: str | None = None
) -> tuple[bytes, str]:
    """Refresh the database figures, then render ``metrics.registry`` for a scrape: the body and
    its content type. ``accept`` is the scrape's Accept header: OpenMetrics when it asks for it,
    the Prometheus text format otherwise.

    A failed refresh does not fail the scrape: it is logged, and the gauges are left out
    (``duraflows_stats_up`` 0).
    """
    if not isinstance(metrics, PrometheusMetrics):
        raise InvalidArgumentError(
            f"metrics must be a PrometheusMetrics, got {type(metrics).__name__}"
        )
    if accept is not None and not isinstance(accept, str):
        raise InvalidArgumentError(f"accept must be a str or None, got {type(accept).__name__}")
    from prometheus_client.exposition import choose_encoder

    await metrics._source.refresh_or_log()
    encoder, content_type = choose_encoder(accept or "")
    body: bytes = encoder(metrics.registry)
    return body, content_type


class _MetricsApp:
    """The ASGI app of ``metrics_app`` (an object, not a function: Starlette's ``add_route``
    serves an object as an ASGI app, a function as a request handler)."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self.metrics = metrics

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"metrics_app serves HTTP, not {scope['type']!r}")
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(
                send, 405, b"Method Not Allowed\n", "text/plain", [(b"allow", b"GET, HEAD")]
            )
            return
        accept = None
        for name, value in scope.get("headers", ()):
            if name.lower() == b"accept":
                accept = value.decode("latin-1")
        body, content_type = await render_prometheus(self.metrics, accept=accept)
        await _respond(
            send, 200, b"" if scope["method"] == "HEAD" else body, content_type, length=len(body)
        )


async def _respond(
    send: Callable[[Any], Awaitable[None]],
    status: int,
    body: bytes,
    content_type: str,
    extra: list[tuple[bytes, bytes]] | None = None,
    *,
    length: int | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body) if length is None else length).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(
    receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
) -> None:
    """Served alone (uvicorn), the app has nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def metrics_app(metrics: PrometheusMetrics) -> ASGIApp:
    """An ASGI app answering GET (and HEAD) with
    [`render_prometheus(metrics)`][duraflows_pg_async.metrics.render_prometheus], for any ASGI
    framework or server: ``app.mount("/metrics", metrics_app(m))`` (Starlette, FastAPI; the
    mount answers at ``/metrics/``), ``app.add_route("/metrics", metrics_app(m))``, or
    ``uvicorn.run(metrics_app(m))``. Other methods get 405."""
    if not isinstance(metrics, PrometheusMetrics):
        raise InvalidArgumentError(
            f"metrics must be a PrometheusMetrics, got {type(metrics).__name__}"
        )
    return _MetricsApp(metrics)
