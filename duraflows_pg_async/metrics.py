"""Metrics of the runtime for Prometheus and OpenTelemetry (docs/metrics.md).

[`PrometheusMetrics`][duraflows_pg_async.metrics.PrometheusMetrics] (extra ``prometheus``) and
[`OpenTelemetryMetrics`][duraflows_pg_async.metrics.OpenTelemetryMetrics] (extra ``otel``) collect
the same figures of one runtime: events run (transitions) and their duration, queued executions'
latency and lost leases, sweeps and polls, counted in this process; and, read from the database
on refresh, the instances per state, the due, retrying, parked and claimed timeouts, the
oldest-due lag and the queue of executions. Importing this module needs neither extra; building
a collector needs its own. While no collector is attached, the runtime pays a flag test.
"""

from __future__ import annotations

from ._metrics.otel import DEFAULT_REFRESH_INTERVAL, OpenTelemetryMetrics
from ._metrics.prometheus import ASGIApp, PrometheusMetrics, metrics_app, render_prometheus

__all__ = [
    "PrometheusMetrics",
    "render_prometheus",
    "metrics_app",
    "ASGIApp",
    "OpenTelemetryMetrics",
    "DEFAULT_REFRESH_INTERVAL",
]

for _name in ("PrometheusMetrics", "OpenTelemetryMetrics", "render_prometheus", "metrics_app"):
    globals()[_name].__module__ = __name__
del _name
