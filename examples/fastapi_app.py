"""An order workflow API on FastAPI, with duraflows_pg_async.contrib.fastapi.

Run it (the migrations and the example's ``invoices`` table are created at start-up)::

    pip install 'duraflows-pg-async[fastapi]' uvicorn
    DATABASE_URL=postgresql://localhost/orders uvicorn --factory examples.fastapi_app:create_app

Routes:

- ``POST /orders`` (``{"context": {...}}``): create an order, 201;
- ``POST /orders/{uuid}/events/{event}`` (optional JSON body, handed to commands as ``subject``);
- ``GET /orders/{uuid}``: the instance and its history, newest first;
- ``POST /orders/{uuid}/pay-with-invoice`` (``{"amount_cents": 1250}``): inserts an invoice row
  and fires ``pay`` in ONE transaction: if the event fails, the invoice is not written.

Errors: unknown order 404, event not available in the current state 409, a bad argument (such
as a malformed uuid) 422. An unpaid order expires after a day: the lifespan's timeout worker
fires its ``expire`` event.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import Body, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from duraflows_pg_async import (
    Clock,
    CommandRef,
    CommandRegistry,
    CommandResult,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    ExecutionResult,
    HistoryRecord,
    InvalidArgumentError,
    InvalidEventError,
    PgTransactionRunner,
    State,
    Timeout,
    WorkflowDefinition,
    WorkflowInstance,
    WorkflowInstanceNotFoundError,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
)
from duraflows_pg_async.contrib.fastapi import get_pool, get_runtime, workflow_lifespan

RuntimeDep = Annotated[WorkflowRuntime, Depends(get_runtime)]
PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
OptionalBody = Annotated[dict[str, Any] | None, Body()]

ORDER = WorkflowDefinition(
    name="order",
    initial_state="created",
    states={
        "created": State(
            events={
                "pay": Event(target_state="paid", commands=(CommandRef("record_payment"),)),
                "cancel": Event(target_state="cancelled"),
                "expire": Event(target_state="expired", timeout=Timeout(days=1)),
            }
        ),
        "paid": State(events={"ship": Event(target_state="shipped")}),
        "shipped": State(),
        "cancelled": State(),
        "expired": State(),
    },
)

INVOICES_DDL = """
CREATE TABLE IF NOT EXISTS invoices (
    id bigserial PRIMARY KEY,
    order_uuid uuid NOT NULL,
    amount_cents integer NOT NULL CHECK (amount_cents > 0),
    created_at timestamptz NOT NULL DEFAULT now()
)
"""


async def record_payment(subject: object, ctx: ExecutionContext) -> CommandResult:
    """Keeps the paid amount (from the request body) in the order's context."""
    if isinstance(subject, Mapping) and "amount_cents" in subject:
        ctx.context["paid_cents"] = subject["amount_cents"]
    return CommandResult(ok=True, code="PAID")


def build_runtime_factory(clock: Clock | None = None) -> Any:
    """``build_runtime(persistence)`` for the lifespan; ``clock`` lets tests move time."""

    def build_runtime(persistence: WorkflowPersistenceProvider) -> WorkflowRuntime:
        commands = CommandRegistry()
        commands.register("record_payment", record_payment)
        definitions = DefinitionRegistry()
        definitions.register(ORDER, command_names=commands.names())
        return WorkflowRuntime(
            definitions=definitions, commands=commands, persistence=persistence, clock=clock
        )

    return build_runtime


# --- JSON ------------------------------------------------------------------------------------


def instance_json(instance: WorkflowInstance) -> dict[str, Any]:
    return {
        "uuid": str(instance.uuid),
        "workflow": instance.workflow_name,
        "state": instance.current_state,
        "version": instance.version,
        "context": instance.context,
        "expires_at": instance.expires_at.isoformat() if instance.expires_at else None,
    }


def history_json(row: HistoryRecord) -> dict[str, Any]:
    return {
        "event": row.event_name,
        "from_state": row.from_state,
        "to_state": row.to_state,
        "outcome": row.outcome,
        "trigger_metadata": row.trigger_metadata,
    }


def result_json(result: ExecutionResult) -> dict[str, Any]:
    return {
        "outcome": result.outcome,
        "from_state": result.from_state,
        "state": result.to_state,
        "rejected_by": result.rejected_by,
        "command_results": [r.to_json() for r in result.command_results],
    }


# --- the app ---------------------------------------------------------------------------------


def create_app(
    dsn: str | None = None,
    *,
    clock: Clock | None = None,
    worker_options: Mapping[str, Any] | None = None,
    pool_options: Mapping[str, Any] | None = None,
) -> FastAPI:
    """The app; ``dsn`` defaults to ``$DATABASE_URL``."""
    workflow = workflow_lifespan(
        dsn=dsn if dsn is not None else os.environ["DATABASE_URL"],
        build_runtime=build_runtime_factory(clock),
        migrate=True,
        worker=True,
        worker_options=worker_options,
        pool_options=pool_options,
        persistence_options={"lock_timeout": 5},
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with workflow(app):
            async with app.state.duraflows_pool.acquire() as conn:
                await conn.execute(INVOICES_DDL)
            yield

    app = FastAPI(title="orders", lifespan=lifespan)

    @app.exception_handler(WorkflowInstanceNotFoundError)
    async def not_found(request: Request, exc: WorkflowInstanceNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(InvalidEventError)
    async def invalid_event(request: Request, exc: InvalidEventError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "state": exc.state}, status_code=409)

    @app.exception_handler(InvalidArgumentError)
    async def invalid_argument(request: Request, exc: InvalidArgumentError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.post("/orders", status_code=201)
    async def create_order(runtime: RuntimeDep, body: OptionalBody = None) -> dict[str, Any]:
        context = (body or {}).get("context", {})
        instance = await runtime.create_instance("order", context=context)
        return instance_json(instance)

    @app.post("/orders/{order_uuid}/events/{event_name}")
    async def trigger(
        order_uuid: str,
        event_name: str,
        runtime: RuntimeDep,
        body: OptionalBody = None,
    ) -> dict[str, Any]:
        result = await runtime.trigger_event(
            order_uuid, event_name, subject=body, trigger_metadata={"source": "http"}
        )
        return result_json(result)

    @app.get("/orders/{order_uuid}")
    async def show(order_uuid: str, runtime: RuntimeDep) -> dict[str, Any]:
        instance = await runtime.get_instance(order_uuid)
        if instance is None:
            raise WorkflowInstanceNotFoundError(order_uuid)
        history = await runtime.get_history(instance.uuid)
        return {**instance_json(instance), "history": [history_json(h) for h in history]}

    @app.post("/orders/{order_uuid}/pay-with-invoice")
    async def pay_with_invoice(
        order_uuid: str,
        body: Annotated[dict[str, Any], Body()],
        runtime: RuntimeDep,
    ) -> dict[str, Any]:
        amount = body.get("amount_cents")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            raise InvalidArgumentError("amount_cents must be a positive integer")
        try:
            uuid = UUID(order_uuid)
        except ValueError:
            raise InvalidArgumentError(f"not a uuid: {order_uuid!r}") from None
        runner = runtime.persistence.transaction_runner
        assert isinstance(runner, PgTransactionRunner)
        # One transaction: our INSERT and the event commit together or not at all. The event
        # runs as a savepoint inside it; if it raises, the whole block rolls back.
        async with runner.transaction():
            invoice_id = await runner.connection().fetchval(
                "INSERT INTO invoices (order_uuid, amount_cents) VALUES ($1, $2) RETURNING id",
                uuid,
                amount,
            )
            result = await runtime.trigger_event(
                uuid, "pay", subject=body, trigger_metadata={"invoiceId": invoice_id}
            )
        return {"invoice_id": invoice_id, **result_json(result)}

    @app.get("/invoices/{order_uuid}")
    async def invoices(order_uuid: UUID, pool: PoolDep) -> list[dict[str, Any]]:
        rows = await pool.fetch(
            "SELECT id, amount_cents FROM invoices WHERE order_uuid = $1 ORDER BY id", order_uuid
        )
        return [dict(row) for row in rows]

    return app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
