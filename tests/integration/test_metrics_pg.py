"""duraflows_pg_async.metrics against PostgreSQL: real transitions, sweeps at a ManualClock, queued
executions and a lost lease, read back from the Prometheus text output (parsed with
prometheus_client's parser) and from OpenTelemetry's SDK (InMemoryMetricReader).

Each test builds its collector on a registry or meter provider of its own: prometheus_client's
global registry and OpenTelemetry's global provider are left alone.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers import ManualClock, run_python
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    DefinitionRegistry,
    DurableExecutionPolicy,
    Event,
    GuardRef,
    GuardRegistry,
    State,
    Timeout,
    TimeoutRetryPolicy,
    WorkflowDefinition,
    WorkflowRuntime,
    create_pool,
    pg_workflow_providers,
)
from duraflows_pg_async._core import metrics as _metrics
from duraflows_pg_async._pg.queries import execution_stats_sql
from duraflows_pg_async.errors import InvalidEventError, WorkflowInstanceNotFoundError
from duraflows_pg_async.metrics import OpenTelemetryMetrics, PrometheusMetrics, render_prometheus
from duraflows_pg_async.testing import make_instance

SHOP = WorkflowDefinition(
    name="shop",
    initial_state="cart",
    states={
        "cart": State(
            events={
                "pay": Event(
                    target_state="paid", error_state="declined", commands=(CommandRef("charge"),)
                ),
                "approve": Event(target_state="paid", guard=GuardRef("allowed")),
                "pack": Event(target_state="packed", commands=(CommandRef("pack"),)),
                "expire": Event(
                    target_state="expired",
                    commands=(CommandRef("close"),),
                    timeout=Timeout(minutes=5),
                ),
            }
        ),
        "paid": State(),
        "declined": State(),
        "packed": State(),
        "expired": State(),
    },
)
DOC = Path(__file__).parents[2] / "docs" / "metrics.md"
LEASE = DurableExecutionPolicy(lease_duration=timedelta(seconds=30))


@dataclass
class Shop:
    runtime: WorkflowRuntime
    clock: ManualClock
    pool: asyncpg.Pool


def _runtime(pool: asyncpg.Pool, clock: ManualClock) -> WorkflowRuntime:
    from duraflows_pg_async import CommandResult

    def charge(subject: Any, ctx: Any) -> CommandResult:
        return CommandResult(ok=subject != "declined")

    def close(subject: Any, ctx: Any) -> None:
        if ctx.context.get("broken"):
            raise RuntimeError("cannot close")

    def pack(subject: Any, ctx: Any) -> None:
        if subject == "slow":  # outlives its lease: the checkpoint finds it lost
            clock.advance(LEASE.lease_duration + timedelta(seconds=1))

    definitions = DefinitionRegistry()
    definitions.register(SHOP)
    commands = CommandRegistry()
    commands.register("charge", charge)
    commands.register("close", close)
    commands.register("pack", pack)
    guards = GuardRegistry()
    guards.register("allowed", lambda subject, ctx: bool(subject))
    return WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        guards=guards,
        persistence=pg_workflow_providers(pool, idempotency=True, durable_execution=True),
        clock=clock,
        timeout_retry=TimeoutRetryPolicy(initial_delay=60, max_attempts=2),
        durable_execution=LEASE,
    )


@pytest.fixture
async def shop(pool: asyncpg.Pool, clock: ManualClock) -> Shop:
    return Shop(_runtime(pool, clock), clock, pool)


class Scrape:
    """One Prometheus scrape, parsed: ``value(name, **labels)``."""

    def __init__(self, body: bytes) -> None:
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


async def scrape(metrics: PrometheusMetrics) -> Scrape:
    body, content_type = await render_prometheus(metrics)
    assert content_type.startswith("text/plain; version=0.0.4")
    return Scrape(body)


@pytest.fixture
async def prometheus(shop: Shop) -> AsyncIterator[PrometheusMetrics]:
    metrics = PrometheusMetrics(shop.runtime, registry=CollectorRegistry())
    yield metrics
    metrics.close()


async def test_transitions_sweeps_and_the_timeout_gauges(
    shop: Shop, prometheus: PrometheusMetrics
) -> None:
    runtime, clock = shop.runtime, shop.clock
    # Five in the cart: paid, declined, rejected (by its guard), one whose timeout will
    # expire it, one whose timeout will fail.
    paid, declined, rejected, _ = [await runtime.create_instance("shop") for _ in range(4)]
    await runtime.create_instance("shop", context={"broken": True})
    await runtime.trigger_event(paid.uuid, "pay", idempotency_key="pay-1")
    await runtime.trigger_event(paid.uuid, "pay", idempotency_key="pay-1")  # replayed
    await runtime.trigger_event(declined.uuid, "pay", subject="declined")
    await runtime.trigger_event(rejected.uuid, "approve", subject=False)
    with pytest.raises(InvalidEventError):
        await runtime.trigger_event(rejected.uuid, "no-such-event")
    with pytest.raises(WorkflowInstanceNotFoundError):  # no workflow to count it under
        await runtime.trigger_event(make_instance().uuid, "pay")

    clock.advance(minutes=10)
    before = await scrape(prometheus)
    transitions = "duraflows_transitions_total"
    for outcome, count in [
        ("success", 1),
        ("replayed", 1),
        ("failure", 1),
        ("guard-rejected", 1),
        ("error", 1),
    ]:
        assert before.value(transitions, workflow="shop", source="event", outcome=outcome) == count
    assert sum(v for (n, _), v in before.samples.items() if n == transitions) == 5
    durations = "duraflows_event_duration_seconds_count"
    assert before.value(durations, workflow="shop", source="event") == 5
    assert before.value("duraflows_stats_up") == 1
    assert before.value("duraflows_instances", workflow="shop", state="cart") == 3
    assert before.value("duraflows_instances", workflow="shop", state="paid") == 1
    assert before.value("duraflows_instances", workflow="shop", state="declined") == 1
    # rejected, expiring and broken fell due 5 minutes after their creation.
    assert before.value("duraflows_due_timeouts", workflow="shop", state="cart") == 3
    assert before.value("duraflows_oldest_due_lag_seconds", workflow="shop") == 300
    assert before.value("duraflows_retrying_timeouts", workflow="shop", state="cart") == 0
    assert before.value("duraflows_executions", status="pending") == 0
    assert before.value("duraflows_due_executions") == 0
    assert before.value("duraflows_oldest_due_execution_lag_seconds") == 0

    first = await runtime.sweep()
    assert (first.processed, len(first.failed)) == (2, 1)
    after = await scrape(prometheus)
    assert after.value(transitions, workflow="shop", source="timeout", outcome="success") == 2
    assert after.value(transitions, workflow="shop", source="timeout", outcome="error") == 1
    assert after.value(durations, workflow="shop", source="timeout") == 3
    assert after.value("duraflows_worker_sweeps_total", kind="timeout", outcome="ok") == 1
    items = "duraflows_worker_items_total"
    assert after.value(items, kind="timeout", result="processed") == 2
    assert after.value(items, kind="timeout", result="failed") == 1
    assert after.value(items, kind="timeout", result="parked") == 0
    assert after.value("duraflows_due_timeouts", workflow="shop", state="cart") == 0
    assert after.value("duraflows_retrying_timeouts", workflow="shop", state="cart") == 1
    assert after.value("duraflows_oldest_due_lag_seconds", workflow="shop") == 0
    assert after.value("duraflows_instances", workflow="shop", state="expired") == 2

    clock.advance(minutes=2)  # past the retry: its second failure parks it
    assert (await scrape(prometheus)).value(
        "duraflows_oldest_due_lag_seconds", workflow="shop"
    ) == 60
    second = await runtime.sweep()
    assert len(second.parked) == 1
    parked = await scrape(prometheus)
    assert parked.value("duraflows_parked_timeouts", workflow="shop", state="cart") == 1
    assert parked.value("duraflows_retrying_timeouts", workflow="shop", state="cart") == 0
    assert parked.value(items, kind="timeout", result="parked") == 1
    assert parked.value("duraflows_worker_sweeps_total", kind="timeout", outcome="ok") == 2


async def test_a_batched_sweep_counts_each_timeout_once_its_batch_commits(
    shop: Shop, prometheus: PrometheusMetrics
) -> None:
    runtime, clock = shop.runtime, shop.clock
    for _ in range(2):
        await runtime.create_instance("shop")
    await runtime.create_instance("shop", context={"broken": True})
    clock.advance(minutes=10)

    result = await runtime.sweep(batched=True)
    assert (result.processed, len(result.failed)) == (2, 1)
    after = await scrape(prometheus)
    transitions = "duraflows_transitions_total"
    assert after.value(transitions, workflow="shop", source="timeout", outcome="success") == 2
    assert after.value(transitions, workflow="shop", source="timeout", outcome="error") == 1
    assert (
        after.value("duraflows_event_duration_seconds_count", workflow="shop", source="timeout")
        == 3
    )
    assert after.value("duraflows_worker_sweeps_total", kind="timeout", outcome="ok") == 1
    assert after.value("duraflows_worker_items_total", kind="timeout", result="processed") == 2


async def test_queued_executions_their_latency_and_a_lost_lease(
    shop: Shop, prometheus: PrometheusMetrics
) -> None:
    runtime, clock = shop.runtime, shop.clock
    order = await runtime.create_instance("shop")
    await runtime.enqueue_event(order.uuid, "pay", idempotency_key="k1")
    clock.advance(seconds=30)
    queued = await scrape(prometheus)
    assert queued.value("duraflows_executions", status="pending") == 1
    assert queued.value("duraflows_executions", status="running") == 0
    assert queued.value("duraflows_due_executions") == 1
    assert queued.value("duraflows_oldest_due_execution_lag_seconds") == 30

    done = await runtime.process_pending_executions()
    assert done.completed != []
    finished = await scrape(prometheus)
    transitions = "duraflows_transitions_total"
    assert finished.value(transitions, workflow="shop", source="execution", outcome="success") == 1
    latency = "duraflows_execution_latency_seconds"
    assert finished.value(f"{latency}_count", workflow="shop") == 1
    assert finished.value(f"{latency}_sum", workflow="shop") == 30  # the runtime's clock
    assert finished.value("duraflows_executions", status="pending") == 0
    assert finished.value("duraflows_worker_sweeps_total", kind="execution", outcome="ok") == 1
    assert finished.value("duraflows_worker_items_total", kind="execution", result="completed") == 1

    # A guard that says no at acceptance completes the execution at once: a transition, no
    # latency (it never waited for a worker).
    guarded = await runtime.create_instance("shop")
    await runtime.enqueue_event(guarded.uuid, "approve", idempotency_key="k2", subject=False)
    rejected = await scrape(prometheus)
    assert (
        rejected.value(transitions, workflow="shop", source="execution", outcome="guard-rejected")
        == 1
    )
    assert rejected.value(f"{latency}_count", workflow="shop") == 1

    slow = await runtime.create_instance("shop")
    await runtime.enqueue_event(slow.uuid, "pack", idempotency_key="k3", subject="slow")
    lost = await runtime.process_pending_executions()
    assert lost.skipped != []
    after = await scrape(prometheus)
    assert after.value("duraflows_execution_lease_losses_total") == 1
    assert after.value("duraflows_worker_items_total", kind="execution", result="skipped") == 1
    # Its lease has run out: running, and due again for another worker.
    assert after.value("duraflows_executions", status="running") == 1
    assert after.value("duraflows_due_executions") == 1
    assert after.value("duraflows_oldest_due_execution_lag_seconds") == 1


async def test_a_failed_refresh_leaves_the_gauges_out_and_the_scrape_up(
    database: str, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await create_pool(database, min_size=1, max_size=2)
    runtime = _runtime(pool, clock)
    metrics = PrometheusMetrics(runtime, registry=CollectorRegistry())
    try:
        order = await runtime.create_instance("shop")
        await runtime.trigger_event(order.uuid, "pay")
        assert (await scrape(metrics)).value("duraflows_stats_up") == 1
        await pool.close()
        with caplog.at_level(logging.DEBUG, logger="duraflows_pg_async"):
            down = await scrape(metrics)
            again = await scrape(metrics)
        assert down.value("duraflows_stats_up") == 0
        assert "duraflows_instances" not in down.names()
        # The in-process counters are still served.
        assert (
            down.value(
                "duraflows_transitions_total", workflow="shop", source="event", outcome="success"
            )
            == 1
        )
        assert again.value("duraflows_stats_up") == 0
        failures = [r for r in caplog.records if "could not read the database figures" in r.message]
        assert [r.levelno for r in failures] == [logging.WARNING, logging.DEBUG]
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the closed pool raises
            await metrics.refresh()
        # A sweep and a poll that raise are counted as errors.
        with pytest.raises(Exception):  # noqa: B017, PT011
            await runtime.sweep()
        with pytest.raises(Exception):  # noqa: B017, PT011
            await runtime.process_pending_executions()
        failed = await scrape(metrics)
        for kind in ("timeout", "execution"):
            assert failed.value("duraflows_worker_sweeps_total", kind=kind, outcome="error") == 1
            assert failed.value("duraflows_worker_sweeps_total", kind=kind, outcome="ok") is None
    finally:
        metrics.close()
        await pool.close()


class _Broken:
    """A recorder whose every call fails."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any) -> None:
            raise RuntimeError(f"broken {name}")

        return fail


async def test_a_failing_metric_never_breaks_the_work_it_counts(
    shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    runtime, clock = shop.runtime, shop.clock
    broken = _Broken()
    _metrics.attach(runtime, broken)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(_metrics, "_warned", False)
    try:
        with caplog.at_level(logging.DEBUG, logger="duraflows_pg_async"):
            order = await runtime.create_instance("shop")
            result = await runtime.trigger_event(order.uuid, "pay")
            assert (result.outcome, result.to_state) == ("success", "paid")
            await runtime.create_instance("shop")
            clock.advance(minutes=10)
            assert (await runtime.sweep()).processed == 1
            queued = await runtime.create_instance("shop")
            await runtime.enqueue_event(queued.uuid, "pay", idempotency_key="k")
            assert len((await runtime.process_pending_executions()).completed) == 1
            slow = await runtime.create_instance("shop")
            await runtime.enqueue_event(slow.uuid, "pack", idempotency_key="k", subject="slow")
            assert len((await runtime.process_pending_executions()).skipped) == 1
    finally:
        _metrics.detach(runtime, broken)
        monkey.undo()
    assert (await runtime.get_instance(queued.uuid)).current_state == "paid"  # type: ignore[union-attr]
    failures = [r for r in caplog.records if "a metric failed" in r.message]
    assert failures[0].levelno == logging.WARNING
    assert {r.levelno for r in failures[1:]} == {logging.DEBUG}
    assert len(failures) >= 5


def _otel_points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    """Every data point by metric name: (attributes, value, or the histogram's count)."""
    points: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        value = point.count  # type: ignore[union-attr]
                    points.setdefault(metric.name, []).append((dict(point.attributes or {}), value))
    return points


async def test_the_same_figures_through_opentelemetry(shop: Shop) -> None:
    runtime, clock = shop.runtime, shop.clock
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics = OpenTelemetryMetrics(runtime, meter_provider=provider)
    try:
        order = await runtime.create_instance("shop")
        await runtime.trigger_event(order.uuid, "pay")
        await runtime.create_instance("shop")
        queued = await runtime.create_instance("shop")
        await runtime.enqueue_event(queued.uuid, "pay", idempotency_key="k")
        clock.advance(minutes=10)
        before = _otel_points(reader)
        assert before["duraflows.stats.up"] == [({}, 0)]  # nothing refreshed yet
        assert "duraflows.instances" not in before
        await metrics.refresh()
        points = _otel_points(reader)
        workflow = {"duraflows.workflow.name": "shop"}
        assert points["duraflows.transitions"] == [
            ({**workflow, "duraflows.source": "event", "duraflows.outcome": "success"}, 1)
        ]
        assert points["duraflows.event.duration"] == [
            ({**workflow, "duraflows.source": "event"}, 1)
        ]
        assert ({**workflow, "duraflows.state": "cart"}, 2) in points["duraflows.instances"]
        # Due counts the instance its queued execution holds too (sweeps pass over it).
        assert ({**workflow, "duraflows.state": "cart"}, 2) in points["duraflows.timeouts.due"]
        assert points["duraflows.timeouts.oldest_due_lag"] == [(workflow, 300.0)]
        assert ({"duraflows.execution.status": "pending"}, 1) in points["duraflows.executions"]
        assert points["duraflows.executions.due"] == [({}, 1)]
        assert points["duraflows.executions.oldest_due_lag"] == [({}, 600.0)]
        assert points["duraflows.stats.up"] == [({}, 1)]

        await runtime.process_pending_executions()
        await runtime.sweep()
        points = _otel_points(reader)
        assert points["duraflows.execution.latency"] == [(workflow, 1)]
        sweeps = {a["duraflows.worker.kind"]: v for a, v in points["duraflows.worker.sweeps"]}
        assert sweeps == {"timeout": 1, "execution": 1}
    finally:
        metrics.close()
        provider.shutdown()
    assert _metrics.probe(runtime, "event") is None


async def test_execution_stats_read_the_active_executions_only(
    shop: Shop, raw_connection: asyncpg.Connection
) -> None:
    """However many completed executions the table keeps, the stats read 008's index of active
    executions, not the table."""
    await raw_connection.execute(
        "INSERT INTO workflow_instances (uuid, workflow_name, current_state, version, "
        "context_json, metadata_json) SELECT gen_random_uuid(), 'shop', 'paid', 1, '{}', '{}' "
        "FROM generate_series(1, 20000)"
    )
    await raw_connection.execute(
        "INSERT INTO workflow_executions (uuid, workflow_instance_uuid, idempotency_key, status, "
        "available_at, revision, execution_json) SELECT gen_random_uuid(), uuid, 'k', "
        "'completed', now(), 1, '{}' FROM workflow_instances"
    )
    await raw_connection.execute("ANALYZE workflow_executions")
    plan = await raw_connection.fetchval(
        f"EXPLAIN (FORMAT JSON) {execution_stats_sql(None)}", shop.clock.now()
    )
    text = str(plan)
    assert "workflow_executions_active_idx" in text, text
    assert "Seq Scan" not in text, text
    stats = await shop.runtime.execution_stats()
    assert [(s.status, s.executions) for s in stats] == [
        ("pending", 0),
        ("running", 0),
        ("parked", 0),
    ]


async def test_the_docs_example_runs_as_written(database: str) -> None:
    match = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert match is not None, "docs/metrics.md has no python block"
    result = await run_python(match.group(1), database)
    assert result.returncode == 0, result.stderr
    content_type, body = result.stdout.split("\n", 1)
    assert content_type.startswith("text/plain; version=0.0.4")
    scraped = Scrape(body.encode())
    labels = {"workflow": "ticket", "source": "event", "outcome": "success"}
    assert scraped.value("duraflows_transitions_total", **labels) == 1
    assert scraped.value("duraflows_stats_up") == 1
    assert scraped.value("duraflows_instances", workflow="ticket", state="closed") == 1
    # The lines the page shows are in the output as printed.
    shown = re.search(
        r"It prints, among the rest:\n\n```text\n(.*?)```", DOC.read_text(), re.DOTALL
    )
    assert shown is not None
    for line in shown.group(1).splitlines():
        assert line in body.splitlines(), line
