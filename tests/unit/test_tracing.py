"""OpenTelemetry spans of the runtime, on the in-memory provider (its runner opens no spans of
its own: the transaction spans are checked against PostgreSQL in tests/integration).

The spans go to an SDK TracerProvider made for each test and handed to ``_tracing`` directly, so
no test touches OpenTelemetry's global provider (which can be set only once per process).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import Any

import pytest
from helpers import (
    ManualClock,
    Spans,
    attributes,
    parent_id,
    reminder,
    span_context,
    span_id,
    use_provider,
)
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    CommandResult,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    GuardRef,
    GuardRegistry,
    State,
    Timeout,
    WorkflowDefinition,
    WorkflowRuntime,
    __version__,
    memory_workflow_providers,
)
from duraflows_pg_async._core import tracing as _tracing
from duraflows_pg_async.errors import InvalidEventError, WorkflowInstanceNotFoundError

ORDER = WorkflowDefinition(
    name="order",
    initial_state="placed",
    states={
        "placed": State(
            events={
                "pay": Event(target_state="paid", guard=GuardRef("can_pay")),
                "ship": Event(
                    target_state="shipped",
                    error_state="on_hold",
                    commands=(CommandRef("ship"),),
                ),
                "boom": Event(target_state="paid", commands=(CommandRef("explode"),)),
                "expire": Event(target_state="expired", timeout=Timeout(minutes=5)),
            }
        ),
        "paid": State(),
        "shipped": State(),
        "on_hold": State(),
        "expired": State(),
    },
)


def make_runtime(clock: ManualClock | None = None, **options: Any) -> WorkflowRuntime:
    definitions = DefinitionRegistry()
    definitions.register(ORDER)
    commands = CommandRegistry()

    def ship(subject: Any, ctx: ExecutionContext) -> CommandResult:
        return CommandResult(ok=bool(subject), code="SHIPPED" if subject else "NO_STOCK")

    def explode(subject: Any, ctx: ExecutionContext) -> None:
        raise RuntimeError("the command blew up")

    commands.register("ship", ship)
    commands.register("explode", explode)
    guards = GuardRegistry()
    guards.register("can_pay", lambda subject, ctx: bool(subject))
    return WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        guards=guards,
        persistence=memory_workflow_providers(),
        clock=clock,
        **options,
    )


# --- without OpenTelemetry ---------------------------------------------------------------------

# Runs in a fresh interpreter in which `import opentelemetry` fails, as when it is not installed.
WITHOUT_OTEL = """
import asyncio, json, sys
sys.modules["opentelemetry"] = None
import duraflows_pg_async
from duraflows_pg_async._core import tracing as _tracing
from duraflows_pg_async import (
    DefinitionRegistry, CommandRegistry, Event, State, Timeout, WorkflowDefinition,
    WorkflowRuntime, memory_workflow_providers,
)

definition = WorkflowDefinition(
    name="w", initial_state="a",
    states={"a": State(events={"go": Event(target_state="b", timeout=Timeout(minutes=1))}),
            "b": State()},
)

async def main():
    definitions = DefinitionRegistry()
    definitions.register(definition)
    persistence = memory_workflow_providers()
    runtime = WorkflowRuntime(
        definitions=definitions, commands=CommandRegistry(), persistence=persistence
    )
    async with persistence.transaction_runner.transaction():
        first = await runtime.create_instance("w")
    second = await runtime.create_instance("w")
    result = await runtime.trigger_event(first.uuid, "go")
    swept = await runtime.sweep(10)
    return {
        "enabled": _tracing.ENABLED,
        "outcome": result.outcome,
        "to_state": result.to_state,
        "swept": swept.processed,
        "still_a": (await runtime.get_instance(second.uuid)).current_state,
        "otel_loaded": [m for m in sys.modules if m.startswith("opentelemetry.")],
    }

print(json.dumps(asyncio.run(main())))
"""


def test_without_opentelemetry_the_package_imports_and_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_OTEL],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "enabled": False,
        "outcome": "success",
        "to_state": "b",
        "swept": 0,  # nothing is due yet
        "still_a": "a",
        "otel_loaded": [],
    }


async def test_api_without_sdk_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # What an application gets when a dependency (FastAPI, say) pulls in the API and nobody
    # configures an SDK: the no-op tracer. start() returns None, so nothing else is done.
    monkeypatch.setattr(_tracing, "_tracer", trace.NoOpTracer())
    assert _tracing.ENABLED
    assert _tracing.start(_tracing.TRIGGER_EVENT) is None
    runtime = make_runtime()
    created = await runtime.create_instance("order")
    result = await runtime.trigger_event(created.uuid, "pay", subject=True)
    assert result.to_state == "paid"
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_without_a_tracer_provider_no_span_is_started(monkeypatch: pytest.MonkeyPatch) -> None:
    # The API's proxy tracer, as the package takes it at import, before any provider is set:
    # it could only make non-recording spans that carry the current context unchanged.
    monkeypatch.setattr(_tracing, "_tracer", trace.ProxyTracer(_tracing.TRACER_NAME))
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert _tracing._READ_PROVIDER  # the API's record agrees with its public answer
    assert trace._TRACER_PROVIDER is None
    assert not _tracing.active()
    monkeypatch.setattr(_tracing, "_tracer", trace.NoOpTracer())
    assert not _tracing.active()
    monkeypatch.setattr(_tracing, "_tracer", TracerProvider().get_tracer(_tracing.TRACER_NAME))
    assert _tracing.active()


async def test_without_a_tracer_provider_an_event_does_no_tracing_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_tracing, "_tracer", trace.ProxyTracer(_tracing.TRACER_NAME))

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a span was started without a tracer provider")

    monkeypatch.setattr(_tracing, "start", refuse)
    runtime = make_runtime()
    created = await runtime.create_instance("order")
    result = await runtime.trigger_event(created.uuid, "pay", subject=True)
    assert result.to_state == "paid"


# --- events --------------------------------------------------------------------------------------


async def test_trigger_event_span(spans: Spans) -> None:
    runtime = make_runtime()
    created = await runtime.create_instance("order")
    spans.exporter.clear()
    result = await runtime.trigger_event(created.uuid, "pay", subject=True)
    assert result.outcome == "success"
    span = spans.one("duraflows.trigger_event")
    assert span.kind is SpanKind.INTERNAL
    assert span.status.status_code is StatusCode.UNSET
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "duraflows_pg_async"
    assert span.instrumentation_scope.version == __version__
    assert attributes(span) == {
        "duraflows.workflow.name": "order",
        "duraflows.workflow.version": 1,
        "duraflows.instance.uuid": str(created.uuid),
        "duraflows.event.name": "pay",
        "duraflows.state.from": "placed",
        "duraflows.state.to": "paid",
        "duraflows.event.outcome": "success",
    }
    # The memory runner has no spans; nothing else was started.
    assert [s.name for s in spans.all()] == ["duraflows.trigger_event"]


async def test_guard_rejected_and_routed_failure_outcomes(spans: Spans) -> None:
    runtime = make_runtime()
    first = await runtime.create_instance("order")
    second = await runtime.create_instance("order")
    await runtime.trigger_event(first.uuid, "pay", subject=False)
    await runtime.trigger_event(second.uuid, "ship", subject=False)
    rejected, failed = spans.named("duraflows.trigger_event")
    assert attributes(rejected)["duraflows.event.outcome"] == "guard-rejected"
    assert attributes(rejected)["duraflows.guard.name"] == "can_pay"
    assert attributes(rejected)["duraflows.state.to"] == "placed"
    assert rejected.status.status_code is StatusCode.UNSET
    assert attributes(failed)["duraflows.event.outcome"] == "failure"
    assert attributes(failed)["duraflows.state.to"] == "on_hold"
    assert "duraflows.guard.name" not in attributes(failed)
    assert failed.status.status_code is StatusCode.UNSET  # an outcome, not an error


async def test_an_exception_sets_error_status_and_is_recorded(spans: Spans) -> None:
    runtime = make_runtime()
    created = await runtime.create_instance("order")
    with pytest.raises(RuntimeError, match="blew up"):
        await runtime.trigger_event(created.uuid, "boom")
    with pytest.raises(InvalidEventError):
        await runtime.trigger_event(created.uuid, "nope")
    missing = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(WorkflowInstanceNotFoundError):
        await runtime.trigger_event(missing, "pay")
    boom, nope, unknown = spans.named("duraflows.trigger_event")
    assert boom.status.status_code is StatusCode.ERROR
    assert boom.status.description == "RuntimeError: the command blew up"
    assert attributes(boom)["error.type"] == "RuntimeError"
    assert "duraflows.event.outcome" not in attributes(boom)
    (event,) = boom.events
    assert event.name == "exception"
    assert dict(event.attributes or {})["exception.type"] == "RuntimeError"
    assert attributes(nope)["error.type"] == "duraflows_pg_async.errors.InvalidEventError"
    assert attributes(nope)["duraflows.event.name"] == "nope"
    assert attributes(unknown)["duraflows.instance.uuid"] == missing
    assert "duraflows.workflow.name" not in attributes(unknown)
    assert unknown.status.status_code is StatusCode.ERROR


async def test_create_instance_span(spans: Spans) -> None:
    created = await make_runtime().create_instance("order")
    span = spans.one("duraflows.create_instance")
    assert attributes(span) == {
        "duraflows.workflow.name": "order",
        "duraflows.workflow.version": 1,
        "duraflows.instance.uuid": str(created.uuid),
        "duraflows.state.to": "placed",
    }


async def test_spans_nest_under_the_callers_span_and_observers_under_the_event(
    spans: Spans,
) -> None:
    tracer = spans.provider.get_tracer("app")
    observed: list[int] = []

    def observer(event: Any) -> None:
        with tracer.start_as_current_span("observer") as span:
            observed.append(span.get_span_context().span_id)

    runtime = make_runtime(observers=[observer])
    created = await runtime.create_instance("order")
    spans.exporter.clear()
    observed.clear()
    with tracer.start_as_current_span("request"):
        await runtime.trigger_event(created.uuid, "pay", subject=True)
    request = spans.one("request")
    event = spans.one("duraflows.trigger_event")
    observer_span = spans.one("observer")
    assert parent_id(event) == span_id(request)
    assert parent_id(observer_span) == span_id(event)  # observers run after COMMIT, in the call
    assert span_context(event).trace_id == span_context(request).trace_id
    assert trace.get_current_span() is trace.INVALID_SPAN  # the context was restored


# --- sweeps --------------------------------------------------------------------------------------


async def test_sweep_span_with_a_child_per_instance(spans: Spans, clock: ManualClock) -> None:
    runtime = make_runtime(clock)
    due = [await runtime.create_instance("order") for _ in range(2)]
    clock.advance(minutes=6)
    await runtime.create_instance("order")  # not due
    spans.exporter.clear()
    result = await runtime.sweep(10)
    assert result.processed == 2
    sweep = spans.one("duraflows.sweep")
    assert attributes(sweep) == {
        "duraflows.sweep.limit": 10,
        "duraflows.sweep.found": 2,
        "duraflows.sweep.processed": 2,
        "duraflows.sweep.rejected": 0,
        "duraflows.sweep.business_failed": 0,
        "duraflows.sweep.failed": 0,
        "duraflows.sweep.parked": 0,
    }
    timeouts = spans.named("duraflows.timeout")
    assert len(timeouts) == 2
    assert {parent_id(s) for s in timeouts} == {span_id(sweep)}
    assert {attributes(s)["duraflows.instance.uuid"] for s in timeouts} == {
        str(i.uuid) for i in due
    }
    for span in timeouts:
        assert {k: v for k, v in attributes(span).items() if k != "duraflows.instance.uuid"} == {
            "duraflows.workflow.name": "order",
            "duraflows.workflow.version": 1,
            "duraflows.event.name": "expire",
            "duraflows.state.from": "placed",
            "duraflows.state.to": "expired",
            "duraflows.event.outcome": "success",
            "duraflows.timeout.outcome": "processed",
        }


async def test_a_failing_timeout_is_an_error_span_and_counted(
    spans: Spans, clock: ManualClock
) -> None:
    definitions = DefinitionRegistry()
    definitions.register(
        reminder("flaky", event="expire", target="done", command="explode", minutes=1)
    )
    commands = CommandRegistry()

    def explode(subject: Any, ctx: ExecutionContext) -> None:
        raise RuntimeError("no luck")

    commands.register("explode", explode)
    runtime = WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        persistence=memory_workflow_providers(),
        clock=clock,
    )
    await runtime.create_instance("flaky")
    clock.advance(minutes=2)
    spans.exporter.clear()
    result = await runtime.sweep(10)
    assert len(result.failed) == 1
    timeout = spans.one("duraflows.timeout")
    assert timeout.status.status_code is StatusCode.ERROR
    assert attributes(timeout)["duraflows.timeout.outcome"] == "failed"
    assert attributes(timeout)["duraflows.timeout.attempts"] == 1
    assert attributes(timeout)["error.type"] == "RuntimeError"
    sweep = spans.one("duraflows.sweep")
    assert attributes(sweep)["duraflows.sweep.failed"] == 1
    assert attributes(sweep)["duraflows.sweep.processed"] == 0
    assert sweep.status.status_code is StatusCode.UNSET  # the sweep itself went fine


async def test_an_empty_sweep_has_no_timeout_spans(spans: Spans) -> None:
    await make_runtime().sweep(5)
    assert [s.name for s in spans.all()] == ["duraflows.sweep"]
    assert attributes(spans.one("duraflows.sweep"))["duraflows.sweep.found"] == 0


# --- robustness ----------------------------------------------------------------------------------


class Broken(SpanProcessor):
    def __init__(self, where: str) -> None:
        self.where = where

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.where == "start":
            raise RuntimeError("broken processor")

    def on_end(self, span: ReadableSpan) -> None:
        if self.where == "end":
            raise RuntimeError("broken processor")


@pytest.mark.parametrize("where", ["start", "end"])
async def test_a_failing_span_processor_never_breaks_the_call(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    clock: ManualClock,
    where: str,
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(Broken(where))
    use_provider(monkeypatch, provider)
    monkeypatch.setattr(_tracing, "_warned", False)
    runtime = make_runtime(clock)
    with caplog.at_level(logging.DEBUG, logger="duraflows_pg_async"):
        created = await runtime.create_instance("order")
        result = await runtime.trigger_event(created.uuid, "pay", subject=True)
        clock.advance(minutes=6)
        await runtime.create_instance("order")
        clock.advance(minutes=6)
        swept = await runtime.sweep(10)
    assert result.to_state == "paid"
    assert swept.processed == 1
    assert trace.get_current_span() is trace.INVALID_SPAN
    failures = [r for r in caplog.records if "tracing failed" in r.getMessage()]
    assert failures
    assert [r.levelno for r in failures].count(logging.WARNING) == 1  # then debug only


async def test_a_sampled_out_span_is_propagated_but_not_described(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_provider(monkeypatch, provider)
    outer = _tracing.start(_tracing.TRIGGER_EVENT)
    assert outer is not None
    assert not outer.recording
    outer_context = trace.get_current_span().get_span_context()
    assert outer_context.is_valid
    assert not outer_context.trace_flags.sampled
    inner = _tracing.start(_tracing.TRANSACTION)
    assert inner is not None
    # Same trace: a child of the dropped span is dropped with it, not sampled anew as a root.
    assert trace.get_current_span().get_span_context().trace_id == outer_context.trace_id
    inner.end()
    outer.end()
    assert trace.get_current_span() is trace.INVALID_SPAN

    runtime = make_runtime()
    created = await runtime.create_instance("order")
    assert (await runtime.trigger_event(created.uuid, "pay", subject=True)).to_state == "paid"
    assert exporter.get_finished_spans() == ()
