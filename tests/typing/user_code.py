"""Code as users write it, checked by ``mypy --strict`` (CI runs it; pytest never imports it).

It must type-check without casts or ``type: ignore``: when a public signature loses precision,
this file stops compiling under mypy before a user notices.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

import asyncpg

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    CommandResult,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    ExecutionResult,
    GuardRef,
    GuardRegistry,
    PgTransactionRunner,
    State,
    StateEnterEvent,
    Timeout,
    TimeoutRetryPolicy,
    TimeoutWorker,
    WorkflowDefinition,
    WorkflowInstance,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
    create_pool,
    memory_workflow_providers,
    pg_workflow_providers,
)
from duraflows_pg_async.metrics import (
    ASGIApp,
    OpenTelemetryMetrics,
    PrometheusMetrics,
    metrics_app,
    render_prometheus,
)
from duraflows_pg_async.types import ExecutionStats, ProcessExpiredResult


@dataclass
class Expense:
    amount: int


EXPENSE = WorkflowDefinition(
    name="expense",
    initial_state="submitted",
    states={
        "submitted": State(
            events={
                "approve": Event(
                    target_state="approved",
                    guard=GuardRef("within_budget"),
                    commands=(CommandRef("pay"),),
                ),
                "escalate": Event(target_state="escalated", timeout=Timeout(days=3)),
            }
        ),
        "approved": State(),
        "escalated": State(),
    },
)


def within_budget(subject: Expense | None, ctx: ExecutionContext) -> bool:
    return subject is not None and subject.amount <= int(ctx.context.get("budget", 0))


async def pay(subject: Expense | None, ctx: ExecutionContext) -> CommandResult:
    ctx.context["paid_at"] = ctx.now.isoformat()
    return CommandResult(ok=True, metadata={"transition": str(ctx.transition_uuid)})


def audit(subject: object, ctx: ExecutionContext) -> None:
    ctx.context["audited_from"] = ctx.from_state


def notify(event: StateEnterEvent) -> None:
    print(event.workflow_name, event.instance_uuid, event.to_state)


def build_runtime(persistence: WorkflowPersistenceProvider) -> WorkflowRuntime:
    definitions = DefinitionRegistry()
    definitions.register(EXPENSE)
    commands = CommandRegistry()
    commands.register("pay", pay)
    commands.register("audit", audit, best_effort=True)
    # A lambda's ctx is an ExecutionContext too: a misspelt attribute fails type checking.
    commands.register("trace", lambda subject, ctx: print(ctx.from_state, ctx.to_state))
    guards = GuardRegistry()
    guards.register("within_budget", within_budget)
    return WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        guards=guards,
        persistence=persistence,
        observers=[notify],
        timeout_retry=TimeoutRetryPolicy(initial_delay=timedelta(seconds=30)),
        sweep_lease=timedelta(seconds=20),
    )


async def own_sql_in_the_workflow_transaction(pool: asyncpg.Pool, key: UUID) -> ExecutionResult:
    providers = pg_workflow_providers(
        pool, lock_timeout=2.5, statement_timeout=timedelta(seconds=5)
    )
    runtime = build_runtime(providers)
    runner: PgTransactionRunner = providers.transaction_runner  # no cast needed
    async with runner.transaction():
        await runner.connection().execute("SELECT 1")
        return await runtime.trigger_event(key, "approve", subject=Expense(amount=10))


async def join_a_transaction_of_mine(pool: asyncpg.Pool, key: UUID) -> None:
    providers = pg_workflow_providers(pool)
    runtime = build_runtime(providers)
    async with (
        pool.acquire() as conn,
        conn.transaction(),
        providers.transaction_runner.bind(conn),
    ):
        await runtime.trigger_event(key, "approve", subject=Expense(amount=1))


async def main(dsn: str) -> None:
    pool = await create_pool(dsn)
    try:
        runtime = build_runtime(pg_workflow_providers(pool))
        await runtime.initialize()
        instance: WorkflowInstance = await runtime.create_instance(
            "expense", context={"budget": 100}
        )
        await own_sql_in_the_workflow_transaction(pool, instance.uuid)
        swept: ProcessExpiredResult = await runtime.process_expired_workflows(
            limit=10, workflow_names=["expense"]
        )
        print(swept.processed, [f.retry_at for f in swept.failed])
        worker = TimeoutWorker(runtime, batch_size=50, poll_interval=0.5, lease=10)
        task = asyncio.create_task(worker.run())
        worker.stop()
        await task
    finally:
        await pool.close()


async def in_memory() -> None:
    runtime = build_runtime(memory_workflow_providers())
    created = await runtime.create_instance("expense")
    handle = runtime.handle(created.uuid)
    result = await handle.trigger_event("approve", subject=Expense(amount=0))
    print(result.outcome, result.history_uuid)


async def measured(runtime: WorkflowRuntime) -> ASGIApp:
    metrics = PrometheusMetrics(runtime)
    body, content_type = await render_prometheus(metrics, accept="text/plain")
    print(len(body), content_type)
    otel = OpenTelemetryMetrics(runtime)
    otel.start(interval=30)
    await otel.stop()
    otel.close()
    queued: list[ExecutionStats] = await runtime.execution_stats()
    print([(s.status, s.executions, s.due, s.oldest_due_at) for s in queued])
    return metrics_app(metrics)
