"""An order workflow API on aiohttp, with duraflows_pg_async.contrib.aiohttp.

Run it (the migrations and the example's ``invoices`` table are created at start-up)::

    pip install 'duraflows-pg-async[aiohttp]'
    DATABASE_URL=postgresql://localhost/orders python examples/aiohttp_app.py

Routes:

- ``POST /orders`` (``{"context": {...}}``): create an order, 201;
- ``POST /orders/{uuid}/events/{event}`` (optional JSON body, handed to commands as ``subject``);
- ``GET /orders/{uuid}``: the instance and its history, newest first;
- ``POST /orders/{uuid}/pay-with-invoice`` (``{"amount_cents": 1250}``): inserts an invoice row
  and fires ``pay`` in ONE transaction: if the event fails, the invoice is not written.

Errors: unknown order 404, event not available in the current state 409, a bad argument (such
as a malformed uuid or body) 422. An unpaid order expires after a day: the cleanup_ctx's timeout
worker fires its ``expire`` event.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from uuid import UUID

from aiohttp import web

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
from duraflows_pg_async.contrib.aiohttp import POOL_KEY, RUNTIME_KEY, workflow_cleanup_ctx

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


def build_runtime_factory(
    clock: Clock | None = None,
) -> Callable[[WorkflowPersistenceProvider], WorkflowRuntime]:
    """``build_runtime(persistence)`` for the cleanup_ctx; ``clock`` lets tests move time."""

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


async def json_body(request: web.Request, *, required: bool = False) -> dict[str, Any] | None:
    """The request's JSON object; ``None`` for an empty optional body."""
    if not request.can_read_body:
        if required:
            raise InvalidArgumentError("a JSON object body is required")
        return None
    try:
        body = await request.json()
    except ValueError:
        raise InvalidArgumentError("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidArgumentError("the body must be a JSON object")
    return body


# --- error mapping and routes ----------------------------------------------------------------


@web.middleware
async def workflow_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except WorkflowInstanceNotFoundError as exc:
        return web.json_response({"detail": str(exc)}, status=404)
    except InvalidEventError as exc:
        return web.json_response({"detail": str(exc), "state": exc.state}, status=409)
    except InvalidArgumentError as exc:
        return web.json_response({"detail": str(exc)}, status=422)


routes = web.RouteTableDef()


@routes.post("/orders")
async def create_order(request: web.Request) -> web.Response:
    body = await json_body(request) or {}
    instance = await request.app[RUNTIME_KEY].create_instance(
        "order", context=body.get("context", {})
    )
    return web.json_response(instance_json(instance), status=201)


@routes.post("/orders/{uuid}/events/{event}")
async def trigger(request: web.Request) -> web.Response:
    result = await request.app[RUNTIME_KEY].trigger_event(
        request.match_info["uuid"],
        request.match_info["event"],
        subject=await json_body(request),
        trigger_metadata={"source": "http"},
    )
    return web.json_response(result_json(result))


@routes.get("/orders/{uuid}")
async def show(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    instance = await runtime.get_instance(request.match_info["uuid"])
    if instance is None:
        raise WorkflowInstanceNotFoundError(request.match_info["uuid"])
    history = await runtime.get_history(instance.uuid)
    return web.json_response(
        {**instance_json(instance), "history": [history_json(h) for h in history]}
    )


def parse_uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise InvalidArgumentError(f"not a uuid: {text!r}") from None


@routes.post("/orders/{uuid}/pay-with-invoice")
async def pay_with_invoice(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    body = await json_body(request, required=True) or {}
    amount = body.get("amount_cents")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise InvalidArgumentError("amount_cents must be a positive integer")
    uuid = parse_uuid(request.match_info["uuid"])
    runner = runtime.persistence.transaction_runner
    assert isinstance(runner, PgTransactionRunner)
    # One transaction: our INSERT and the event commit together or not at all. The event runs
    # as a savepoint inside it; if it raises, the whole block rolls back.
    async with runner.transaction():
        invoice_id = await runner.connection().fetchval(
            "INSERT INTO invoices (order_uuid, amount_cents) VALUES ($1, $2) RETURNING id",
            uuid,
            amount,
        )
        result = await runtime.trigger_event(
            uuid, "pay", subject=body, trigger_metadata={"invoiceId": invoice_id}
        )
    return web.json_response({"invoice_id": invoice_id, **result_json(result)})


@routes.get("/invoices/{uuid}")
async def invoices(request: web.Request) -> web.Response:
    rows = await request.app[POOL_KEY].fetch(
        "SELECT id, amount_cents FROM invoices WHERE order_uuid = $1 ORDER BY id",
        parse_uuid(request.match_info["uuid"]),
    )
    return web.json_response([dict(row) for row in rows])


async def invoices_table(app: web.Application) -> AsyncIterator[None]:
    """Runs after the workflow cleanup_ctx (so its pool is open): the example's own table."""
    async with app[POOL_KEY].acquire() as conn:
        await conn.execute(INVOICES_DDL)
    yield


def create_app(
    dsn: str | None = None,
    *,
    clock: Clock | None = None,
    worker_options: Mapping[str, Any] | None = None,
    pool_options: Mapping[str, Any] | None = None,
) -> web.Application:
    """The app; ``dsn`` defaults to ``$DATABASE_URL``."""
    app = web.Application(middlewares=[workflow_errors])
    app.cleanup_ctx.append(
        workflow_cleanup_ctx(
            dsn=dsn if dsn is not None else os.environ["DATABASE_URL"],
            build_runtime=build_runtime_factory(clock),
            migrate=True,
            worker=True,
            worker_options=worker_options,
            pool_options=pool_options,
            persistence_options={"lock_timeout": 5},
        )
    )
    app.cleanup_ctx.append(invoices_table)
    app.add_routes(routes)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
