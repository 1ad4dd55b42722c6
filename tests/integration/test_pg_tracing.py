"""OpenTelemetry spans against PostgreSQL: transactions and savepoints of PgTransactionRunner,
and how they nest under the runtime's event and sweep spans.

Each test gets an SDK TracerProvider of its own, handed to ``_tracing`` directly: OpenTelemetry's
global provider can be set only once per process, so no test sets it. The docs example, which
does set it, runs in a subprocess.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from helpers import (
    ManualClock,
    Spans,
    attributes,
    lock_row,
    parent_id,
    run_python,
    span_context,
    span_id,
    use_provider,
)
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import StatusCode

from duraflows_pg_async import (
    CommandRegistry,
    DefinitionRegistry,
    Event,
    GuardRef,
    GuardRegistry,
    PgTransactionRunner,
    State,
    Timeout,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
    create_pool,
    pg_workflow_providers,
)
from duraflows_pg_async._core import tracing as _tracing
from duraflows_pg_async.errors import CommitRolledBackError, DatabaseError
from duraflows_pg_async.testing import make_instance

DOC = Path(__file__).parents[2] / "docs" / "tracing.md"

ORDER = WorkflowDefinition(
    name="order",
    initial_state="placed",
    states={
        "placed": State(
            events={
                "pay": Event(target_state="paid", guard=GuardRef("can_pay")),
                "expire": Event(target_state="expired", timeout=Timeout(minutes=5)),
            }
        ),
        "paid": State(),
        "expired": State(),
    },
)


def make_runtime(
    persistence: WorkflowPersistenceProvider, clock: ManualClock | None = None, **options: Any
) -> WorkflowRuntime:
    definitions = DefinitionRegistry()
    definitions.register(ORDER)
    guards = GuardRegistry()
    guards.register("can_pay", lambda subject, ctx: bool(subject))
    return WorkflowRuntime(
        definitions=definitions,
        commands=CommandRegistry(),
        guards=guards,
        persistence=persistence,
        clock=clock,
        **options,
    )


# --- transactions --------------------------------------------------------------------------------


async def test_a_committed_transaction(
    spans: Spans, providers: WorkflowPersistenceProvider, database: str
) -> None:
    runner = providers.transaction_runner
    async with runner.transaction():
        await providers.instance_store.create(make_instance())
    span = spans.one("duraflows.transaction")
    dsn = urlsplit(database)
    assert attributes(span) == {
        "db.system.name": "postgresql",
        "db.system": "postgresql",
        "db.namespace": dsn.path.lstrip("/"),
        "server.address": dsn.hostname,
        "server.port": dsn.port,
        "duraflows.transaction.outcome": "commit",
        "duraflows.transaction.savepoints": 0,
    }
    assert span.status.status_code is StatusCode.UNSET
    assert span.events == ()
    assert trace.get_current_span() is trace.INVALID_SPAN


async def test_without_a_tracer_provider_a_transaction_does_no_tracing_work(
    monkeypatch: pytest.MonkeyPatch, providers: WorkflowPersistenceProvider
) -> None:
    # The API's proxy tracer before any provider is set, as the package takes it at import.
    monkeypatch.setattr(_tracing, "_tracer", trace.ProxyTracer(_tracing.TRACER_NAME))

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a span was started without a tracer provider")

    monkeypatch.setattr(_tracing, "start", refuse)
    async with providers.transaction_runner.transaction():
        await providers.instance_store.create(make_instance())
        async with providers.transaction_runner.transaction():
            pass


async def test_a_rolled_back_transaction(
    spans: Spans, providers: WorkflowPersistenceProvider
) -> None:
    with pytest.raises(ValueError, match="changed my mind"):
        async with providers.transaction_runner.transaction():
            await providers.instance_store.create(make_instance())
            raise ValueError("changed my mind")
    span = spans.one("duraflows.transaction")
    assert attributes(span)["duraflows.transaction.outcome"] == "rollback"
    assert attributes(span)["error.type"] == "ValueError"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError: changed my mind"
    (event,) = span.events
    assert event.name == "exception"
    assert dict(event.attributes or {})["exception.message"] == "changed my mind"


async def test_commit_answered_with_rollback_is_an_error(
    spans: Spans, providers: WorkflowPersistenceProvider
) -> None:
    runner = providers.transaction_runner
    assert isinstance(runner, PgTransactionRunner)
    with pytest.raises(CommitRolledBackError):
        async with runner.transaction():
            # A SQL error swallowed without a savepoint: PostgreSQL answers COMMIT with ROLLBACK.
            with pytest.raises(asyncpg.PostgresError):
                await runner.connection().execute("SELECT 1/0")
    span = spans.one("duraflows.transaction")
    assert attributes(span)["duraflows.transaction.outcome"] == "rollback"
    assert attributes(span)["error.type"] == "duraflows_pg_async.errors.CommitRolledBackError"
    assert span.status.status_code is StatusCode.ERROR


async def test_a_cancelled_transaction_rolls_back_without_an_error_status(
    spans: Spans, providers: WorkflowPersistenceProvider
) -> None:
    started = asyncio.Event()

    async def body() -> None:
        async with providers.transaction_runner.transaction():
            started.set()
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(body())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    span = spans.one("duraflows.transaction")
    assert attributes(span)["duraflows.transaction.outcome"] == "rollback"
    assert span.status.status_code is StatusCode.UNSET  # as OpenTelemetry's use_span


async def test_savepoints_are_child_spans(
    spans: Spans, providers: WorkflowPersistenceProvider
) -> None:
    runner = providers.transaction_runner
    async with runner.transaction():
        async with runner.transaction():
            await providers.instance_store.create(make_instance())
        with pytest.raises(KeyError):
            async with runner.transaction():
                raise KeyError("inner")
    outer = spans.one("duraflows.transaction")
    released, rolled_back = spans.named("duraflows.savepoint")
    assert parent_id(released) == parent_id(rolled_back) == span_id(outer)
    assert attributes(released) == {
        "duraflows.savepoint.name": "duraflows_sp_1",
        "duraflows.transaction.outcome": "release",
    }
    assert released.status.status_code is StatusCode.UNSET
    assert attributes(rolled_back)["duraflows.savepoint.name"] == "duraflows_sp_2"
    assert attributes(rolled_back)["duraflows.transaction.outcome"] == "rollback"
    assert rolled_back.status.status_code is StatusCode.ERROR
    # The caught error does not fail the transaction, which commits.
    assert attributes(outer)["duraflows.transaction.outcome"] == "commit"
    assert attributes(outer)["duraflows.transaction.savepoints"] == 2
    assert outer.status.status_code is StatusCode.UNSET


async def test_a_transaction_that_cannot_start(spans: Spans, database: str) -> None:
    class Started(SpanProcessor):
        def __init__(self) -> None:
            self.event = asyncio.Event()

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            self.event.set()

    started = Started()
    spans.provider.add_span_processor(started)
    pool = await create_pool(database, min_size=1, max_size=1)
    runner = pg_workflow_providers(pool).transaction_runner

    async def enter() -> None:
        async with runner.transaction():
            pass

    async with pool.acquire():
        # The only connection is taken: once its span has started, the transaction waits in
        # acquire() until it is cancelled.
        task = asyncio.create_task(enter())
        await started.event.wait()
        waiting_at = time.time_ns()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await pool.close()
    with pytest.raises(DatabaseError):
        async with runner.transaction():
            pass
    waited, refused = spans.named("duraflows.transaction")
    assert "duraflows.transaction.outcome" not in attributes(waited)
    assert waited.status.status_code is StatusCode.UNSET  # a cancellation is not an error
    assert waited.end_time is not None
    assert waited.start_time is not None
    assert waited.start_time <= waiting_at <= waited.end_time  # the wait for a connection
    assert refused.status.status_code is StatusCode.ERROR
    assert trace.get_current_span() is trace.INVALID_SPAN


async def test_a_failing_span_processor_never_breaks_a_transaction(
    monkeypatch: pytest.MonkeyPatch, providers: WorkflowPersistenceProvider
) -> None:
    class Broken(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            raise RuntimeError("broken processor")

    provider = TracerProvider()
    provider.add_span_processor(Broken())
    use_provider(monkeypatch, provider)
    instance = make_instance()
    runner = providers.transaction_runner
    async with runner.transaction(), runner.transaction():  # a transaction and a savepoint
        await providers.instance_store.create(instance)
    assert await providers.instance_store.find_by_uuid(instance.uuid) is not None


# --- the runtime's spans around them -------------------------------------------------------------


async def test_the_transaction_is_a_child_of_the_event(
    spans: Spans, providers: WorkflowPersistenceProvider
) -> None:
    tracer = spans.provider.get_tracer("app")

    def observer(event: Any) -> None:
        with tracer.start_as_current_span("observer"):
            pass

    runtime = make_runtime(providers, observers=[observer])
    created = await runtime.create_instance("order")
    create_span = spans.one("duraflows.create_instance")
    (create_tx,) = [s for s in spans.named("duraflows.transaction") if parent_id(s) is not None]
    assert parent_id(create_tx) == span_id(create_span)
    spans.exporter.clear()

    await runtime.trigger_event(created.uuid, "pay", subject=True)
    event = spans.one("duraflows.trigger_event")
    transaction = spans.one("duraflows.transaction")
    observer_span = spans.one("observer")
    assert parent_id(transaction) == span_id(event)
    assert span_context(transaction).trace_id == span_context(event).trace_id
    # Observers run after COMMIT: under the event, not under the transaction that is over.
    assert parent_id(observer_span) == span_id(event)
    assert transaction.end_time is not None
    assert observer_span.start_time is not None
    assert transaction.end_time <= observer_span.start_time
    assert attributes(event)["duraflows.event.outcome"] == "success"
    assert attributes(transaction)["duraflows.transaction.outcome"] == "commit"


async def test_an_event_in_the_callers_transaction_is_a_savepoint_under_it(
    spans: Spans, providers: WorkflowPersistenceProvider
) -> None:
    runtime = make_runtime(providers)
    created = await runtime.create_instance("order")
    spans.exporter.clear()
    async with providers.transaction_runner.transaction():
        await runtime.trigger_event(created.uuid, "pay", subject=True)
    transaction = spans.one("duraflows.transaction")
    event = spans.one("duraflows.trigger_event")
    savepoint = spans.one("duraflows.savepoint")
    assert parent_id(event) == span_id(transaction)
    assert parent_id(savepoint) == span_id(event)


async def test_a_guard_rejected_event(spans: Spans, providers: WorkflowPersistenceProvider) -> None:
    runtime = make_runtime(providers)
    created = await runtime.create_instance("order")
    spans.exporter.clear()
    result = await runtime.trigger_event(created.uuid, "pay", subject=False)
    assert result.outcome == "guard-rejected"
    event = spans.one("duraflows.trigger_event")
    assert attributes(event)["duraflows.event.outcome"] == "guard-rejected"
    assert attributes(event)["duraflows.guard.name"] == "can_pay"
    assert attributes(event)["duraflows.state.to"] == "placed"
    assert event.status.status_code is StatusCode.UNSET
    # The rejection row is written and committed: the transaction did not fail.
    transaction = spans.one("duraflows.transaction")
    assert attributes(transaction)["duraflows.transaction.outcome"] == "commit"


async def test_a_sweep_of_two_due_instances(
    spans: Spans, providers: WorkflowPersistenceProvider, clock: ManualClock
) -> None:
    runtime = make_runtime(providers, clock)
    due = {(await runtime.create_instance("order")).uuid for _ in range(2)}
    clock.advance(minutes=6)
    await runtime.create_instance("order")  # not due
    spans.exporter.clear()

    result = await runtime.sweep(10)
    assert result.processed == 2
    sweep = spans.one("duraflows.sweep")
    assert parent_id(sweep) is None
    assert attributes(sweep) == {
        "duraflows.sweep.limit": 10,
        "duraflows.sweep.found": 2,
        "duraflows.sweep.processed": 2,
        "duraflows.sweep.rejected": 0,
        "duraflows.sweep.business_failed": 0,
        "duraflows.sweep.failed": 0,
        "duraflows.sweep.parked": 0,
    }
    children = spans.children(sweep)
    # The scan's transaction, then one timeout span per instance.
    assert [s.name for s in children] == [
        "duraflows.transaction",
        "duraflows.timeout",
        "duraflows.timeout",
    ]
    timeouts = children[1:]
    assert {attributes(s)["duraflows.instance.uuid"] for s in timeouts} == {str(u) for u in due}
    for timeout in timeouts:
        assert attributes(timeout)["duraflows.timeout.outcome"] == "processed"
        assert attributes(timeout)["duraflows.event.name"] == "expire"
        assert attributes(timeout)["duraflows.state.to"] == "expired"
        (transaction,) = spans.children(timeout)
        assert transaction.name == "duraflows.transaction"
        assert attributes(transaction)["duraflows.transaction.outcome"] == "commit"
    assert len(spans.all()) == 6


async def test_a_database_error_in_an_event(
    spans: Spans, providers: WorkflowPersistenceProvider, pool: asyncpg.Pool
) -> None:
    runtime = make_runtime(providers)
    created = await runtime.create_instance("order")
    spans.exporter.clear()
    async with pool.acquire() as conn, conn.transaction():
        await lock_row(conn, created.uuid)
        slow = make_runtime(pg_workflow_providers(pool, lock_timeout=0.05))
        with pytest.raises(DatabaseError):
            await slow.trigger_event(created.uuid, "pay", subject=True)
    event = spans.one("duraflows.trigger_event")
    transaction = spans.one("duraflows.transaction")
    assert event.status.status_code is StatusCode.ERROR
    assert attributes(event)["error.type"] == "duraflows_pg_async.errors.LockTimeoutError"
    assert transaction.status.status_code is StatusCode.ERROR
    assert attributes(transaction)["duraflows.transaction.outcome"] == "rollback"


# --- without OpenTelemetry ------------------------------------------------------------------------

WITHOUT_OTEL = """
import asyncio, os, sys
sys.modules["opentelemetry"] = None  # as if it were not installed
from duraflows_pg_async import (
    CommandRegistry, DefinitionRegistry, Event, State, WorkflowDefinition, WorkflowRuntime,
    create_pool, pg_workflow_providers,
)
from duraflows_pg_async._core import tracing as _tracing

async def main():
    pool = await create_pool(os.environ["DATABASE_URL"])
    persistence = pg_workflow_providers(pool)
    definitions = DefinitionRegistry()
    definitions.register(WorkflowDefinition(
        name="w", initial_state="a",
        states={"a": State(events={"go": Event(target_state="b")}), "b": State()},
    ))
    runtime = WorkflowRuntime(
        definitions=definitions, commands=CommandRegistry(), persistence=persistence
    )
    runner = persistence.transaction_runner
    async with runner.transaction():
        created = await runtime.create_instance("w")
        async with runner.transaction():
            pass
    try:
        async with runner.transaction():
            raise KeyError("x")
    except KeyError:
        pass
    result = await runtime.trigger_event(created.uuid, "go")
    await pool.close()
    print(_tracing.ENABLED, result.to_state)

asyncio.run(main())
"""


async def test_without_opentelemetry_the_runner_works(database: str) -> None:
    result = await run_python(WITHOUT_OTEL, database)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "b"]


async def test_the_flag_off_starts_no_span(
    spans: Spans, monkeypatch: pytest.MonkeyPatch, providers: WorkflowPersistenceProvider
) -> None:
    monkeypatch.setattr(_tracing, "ENABLED", False)
    runtime = make_runtime(providers)
    created = await runtime.create_instance("order")
    async with providers.transaction_runner.transaction():
        await runtime.trigger_event(created.uuid, "pay", subject=True)
    await runtime.sweep(5)
    assert spans.all() == []


# --- the docs example ----------------------------------------------------------------------------


def docs_example() -> str:
    match = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert match is not None, "docs/tracing.md has no python block"
    return match.group(1)


async def test_the_docs_example_runs_as_written(database: str) -> None:
    result = await run_python(docs_example(), database)
    assert result.returncode == 0, result.stderr
    names = re.findall(r'"name": "([^"]+)"', result.stdout)
    assert names == [
        "duraflows.transaction",
        "duraflows.create_instance",
        "duraflows.transaction",
        "duraflows.trigger_event",
    ], result.stdout
