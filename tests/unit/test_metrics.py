"""duraflows_pg_async.metrics without PostgreSQL (the in-memory provider): argument checks, the
hooks' flag, the ASGI app, the OpenTelemetry refresh task, missing extras.

tests/integration/test_metrics_pg.py checks the figures themselves against PostgreSQL.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import prometheus_client
import pytest
from helpers import ManualClock, reminder, wait_until
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from duraflows_pg_async import (
    CommandRegistry,
    DefinitionRegistry,
    WorkflowRuntime,
    memory_workflow_providers,
)
from duraflows_pg_async._core import metrics as _metrics
from duraflows_pg_async.errors import ConfigurationError, InvalidArgumentError, WorkflowError
from duraflows_pg_async.metrics import (
    OpenTelemetryMetrics,
    PrometheusMetrics,
    metrics_app,
    render_prometheus,
)


def make_runtime(clock: ManualClock | None = None) -> WorkflowRuntime:
    definitions = DefinitionRegistry()
    definitions.register(reminder())
    commands = CommandRegistry()
    commands.register("send", lambda subject, ctx: None)
    return WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        persistence=memory_workflow_providers(durable_execution=True),
        clock=clock,
    )


def transitions(body: bytes) -> float:
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "duraflows_transitions":
            return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    return 0.0


@pytest.fixture
async def metrics() -> AsyncIterator[PrometheusMetrics]:
    collector = PrometheusMetrics(make_runtime(), registry=CollectorRegistry())
    yield collector
    collector.close()


async def test_bad_arguments_name_themselves() -> None:
    runtime = make_runtime()
    for bad in (None, "runtime", memory_workflow_providers()):
        with pytest.raises(InvalidArgumentError, match="runtime must be a WorkflowRuntime"):
            PrometheusMetrics(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="runtime must be a WorkflowRuntime"):
            OpenTelemetryMetrics(bad)  # type: ignore[arg-type]
    for bad_registry in ("registry", object(), prometheus_client.Counter):
        with pytest.raises(InvalidArgumentError, match="registry must be a prometheus_client"):
            PrometheusMetrics(runtime, registry=bad_registry)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="meter_provider must be"):
        OpenTelemetryMetrics(runtime, meter_provider="provider")  # type: ignore[arg-type]
    for bad_metrics in (None, runtime, "metrics"):
        with pytest.raises(InvalidArgumentError, match="metrics must be a PrometheusMetrics"):
            await render_prometheus(bad_metrics)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="metrics must be a PrometheusMetrics"):
            metrics_app(bad_metrics)  # type: ignore[arg-type]
    collector = PrometheusMetrics(runtime, registry=CollectorRegistry())
    try:
        with pytest.raises(InvalidArgumentError, match="accept must be a str"):
            await render_prometheus(collector, accept=b"text/plain")  # type: ignore[arg-type]
    finally:
        collector.close()
    otel = OpenTelemetryMetrics(runtime, meter_provider=MeterProvider())
    try:
        for bad_interval in (0, -1, "15", True, None, float("nan")):
            with pytest.raises(InvalidArgumentError, match="interval"):
                otel.start(bad_interval)  # type: ignore[arg-type]
    finally:
        otel.close()
    # Nothing was left attached by the refused calls.
    assert _metrics.probe(runtime, "event") is None


async def test_a_registry_holds_one_collector_and_close_takes_it_out() -> None:
    registry = CollectorRegistry()
    runtime = make_runtime()
    first = PrometheusMetrics(runtime, registry=registry)
    with pytest.raises(InvalidArgumentError, match="one PrometheusMetrics per registry"):
        PrometheusMetrics(make_runtime(), registry=registry)
    first.close()
    first.close()  # idempotent
    assert list(registry.collect()) == []
    second = PrometheusMetrics(runtime, registry=registry)
    second.close()


async def test_the_default_registry_is_prometheus_clients_global_one() -> None:
    collector = PrometheusMetrics(make_runtime())
    try:
        assert collector.registry is prometheus_client.REGISTRY
        body = prometheus_client.generate_latest()
        assert b"duraflows_stats_up" in body
    finally:
        collector.close()
    assert b"duraflows_stats_up" not in prometheus_client.generate_latest()


async def test_the_hooks_cost_a_flag_test_until_a_collector_attaches() -> None:
    runtime, other = make_runtime(), make_runtime()
    assert not _metrics.ACTIVE
    assert _metrics.probe(runtime, "event") is None
    collector = PrometheusMetrics(runtime, registry=CollectorRegistry())
    try:
        assert _metrics.ACTIVE
        # Figures are a runtime's own: another runtime in the process is not counted.
        assert _metrics.probe(other, "event") is None
        instance = await other.create_instance("reminder")
        await other.trigger_event(instance.uuid, "remind")
        body, _ = await render_prometheus(collector)
        assert transitions(body) == 0
        instance = await runtime.create_instance("reminder")
        await runtime.trigger_event(instance.uuid, "remind")
        body, _ = await render_prometheus(collector)
        assert transitions(body) == 1
    finally:
        collector.close()
    assert not _metrics.ACTIVE


async def test_the_asgi_app_serves_the_scrape(metrics: PrometheusMetrics) -> None:
    instance = await metrics.runtime.create_instance("reminder")
    await metrics.runtime.trigger_event(instance.uuid, "remind")
    app = Starlette()
    app.mount("/mounted", metrics_app(metrics))
    app.add_route("/metrics", metrics_app(metrics))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path in ("/metrics", "/mounted/"):
            response = await client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert transitions(response.content) == 1
        head = await client.head("/metrics")
        assert (head.status_code, head.content) == (200, b"")
        assert int(head.headers["content-length"]) > 0
        refused = await client.post("/metrics")
        assert (refused.status_code, refused.headers["allow"]) == (405, "GET, HEAD")
        openmetrics = await client.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.endswith("# EOF\n")


async def test_the_asgi_app_alone_answers_the_lifespan(metrics: PrometheusMetrics) -> None:
    app = metrics_app(metrics)
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for kind in ("lifespan.startup", "lifespan.shutdown"):
        messages.put_nowait({"type": kind})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, messages.get, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_opentelemetry_refreshes_in_a_task_until_stopped() -> None:
    clock = ManualClock()
    runtime = make_runtime(clock)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    otel = OpenTelemetryMetrics(runtime, meter_provider=provider)

    def instances() -> float | None:
        data = reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "duraflows.instances":
                        points: list[Any] = list(metric.data.data_points)
                        return float(sum(p.value for p in points))
        return None

    async def counted(expected: float) -> bool:
        return instances() == expected

    try:
        await runtime.create_instance("reminder")
        otel.start(0.01)
        with pytest.raises(WorkflowError, match="already started"):
            otel.start()
        await wait_until(lambda: counted(1), what="the first refresh")
        await runtime.create_instance("reminder")
        await wait_until(lambda: counted(2), what="a later refresh")
        await otel.stop()
        await otel.stop()  # nothing left to stop
        await runtime.create_instance("reminder")
        assert instances() == 2  # no refresh since stop()
        await otel.refresh()
        assert instances() == 3
        otel.start(60)  # started again: refreshes at once
    finally:
        otel.close()
        provider.shutdown()
    assert _metrics.probe(runtime, "event") is None
    with pytest.raises(WorkflowError, match="closed"):
        otel.start()


async def test_a_missing_extra_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = make_runtime()
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match=r"duraflows-pg-async\[prometheus\]"):
        PrometheusMetrics(runtime)
    monkeypatch.setitem(sys.modules, "opentelemetry.metrics", None)
    with pytest.raises(ConfigurationError, match=r"duraflows-pg-async\[otel\]"):
        OpenTelemetryMetrics(runtime)
    assert _metrics.probe(runtime, "event") is None


def test_importing_the_module_needs_neither_extra() -> None:
    import subprocess

    code = (
        "import sys; sys.modules['prometheus_client'] = None; "
        "sys.modules['opentelemetry'] = None; import duraflows_pg_async.metrics; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
