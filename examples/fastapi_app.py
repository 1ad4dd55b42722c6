"""An order workflow API on FastAPI, with duraflows_pg_async.contrib.fastapi.

Run it (the migrations and the example's ``invoices`` table are created at start-up)::

    pip install 'duraflows-pg-async[fastapi]' uvicorn
    DATABASE_URL=postgresql://localhost/orders uvicorn --factory examples.fastapi_app:create_app

Routes:

- ``POST /orders`` (``{"context": {...}}``): create an order, 201;
- ``POST /orders/{uuid}/events/{event}`` (optional JSON body, handed to commands as ``subject``;
  an optional ``Idempotency-Key`` header makes a retry with the same key replay the first result);
- ``GET /orders/{uuid}``: the instance and its ``history``, newest first;
- ``POST /orders/{uuid}/pay-with-invoice`` (``{"amount_cents": 1250}``): inserts an invoice row
  and fires ``pay`` in ONE transaction: if the event fails, the invoice is not written;
- ``GET /invoices/{uuid}``: the order's invoice rows;
- ``POST /webhooks/payments`` (``{"event_id": "evt_...", "order_uuid": "...", "amount_cents":
  2500}``), the way a payment provider calls you: fires ``pay`` once per ``event_id`` (idempotency
  key ``psp:<event_id>``, fingerprint from the order and amount); a redelivery gets the first
  result again and runs nothing. Receipts are kept per order, so an ``event_id`` is checked
  against the deliveries of its own order only.

An order, its history rows and an event's result are answered as ``WorkflowInstance.to_json()``,
``HistoryRecord.to_json()`` and ``ExecutionResult.to_json()`` give them: upstream's camelCase
objects (``currentState``, ``eventName``, ``toState``, ...), the shape a TypeScript duraflows
service reads.

Errors: unknown order 404, event not available in the current state 409, an idempotency key
reused for another event or with another amount 409, a bad argument (such as a malformed uuid
or ``Idempotency-Key``) 422, a body over 64 KiB 413. An unpaid order expires after a day: the
lifespan's timeout worker fires its ``expire`` event.

Input is checked before it reaches the workflow (the part to copy into your own app):

- ``BodySizeLimit`` answers 413 to a body over ``MAX_BODY_BYTES``, whether it declares its
  Content-Length or streams in chunks: Starlette itself reads a body of any size;
- amounts are strict integers from 1 to 2**31 - 1 (``invoices.amount_cents`` is an ``integer``
  column); every other number in a context or an event body is a safe integer (at most
  2**53 - 1 either way, so JavaScript readers of the jsonb read it exactly) or a finite float,
  nested at most ``MAX_JSON_DEPTH`` levels;
- path parameters are a UUID and an event name of at most 63 characters; a webhook's
  ``event_id`` is 1 to ``MAX_EVENT_ID`` ASCII letters, digits, ``_`` or ``-``, so its key stays
  within the runtime's 256 bytes; an ``Idempotency-Key`` header is checked by the runtime (not
  blank, at most 256 bytes);
- error bodies never echo the request: the validation handler drops pydantic's ``input`` and
  every message is clipped to ``MAX_DETAIL`` characters.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from duraflows_pg_async import (
    Clock,
    CommandRef,
    CommandRegistry,
    CommandResult,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    PgTransactionRunner,
    State,
    Timeout,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
)
from duraflows_pg_async.contrib.fastapi import get_pool, get_runtime, workflow_lifespan
from duraflows_pg_async.errors import (
    IdempotencyConflictError,
    IdempotencyInProgressError,
    InvalidArgumentError,
    InvalidEventError,
    WorkflowInstanceNotFoundError,
)

RuntimeDep = Annotated[WorkflowRuntime, Depends(get_runtime)]
PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]

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


# --- input rules -----------------------------------------------------------------------------

# Orders are small JSON documents: 64 KiB leaves plenty of room and keeps a client from making us
# buffer, parse and store megabytes.
MAX_BODY_BYTES = 64 * 1024
# invoices.amount_cents is a PostgreSQL integer.
MAX_AMOUNT_CENTS = 2**31 - 1
# Contexts are jsonb, also read by JavaScript (@duraflows/pg), where a number is a double: larger
# integers would come back as other values.
MAX_SAFE_INTEGER = 2**53 - 1
MAX_JSON_DEPTH = 32
# A payment provider's event id; "psp:" + 200 ASCII characters is well within the 256 bytes the
# runtime allows an idempotency key.
MAX_EVENT_ID = 200
# Error messages are clipped to this many characters, whatever input they quote.
MAX_DETAIL = 300
MAX_ERRORS = 10


def clip(text: str, limit: int = MAX_DETAIL) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bounded_json(value: Any) -> Any:
    """``value`` itself, if every number in it is a safe integer or a finite float and it is
    nested at most MAX_JSON_DEPTH levels; otherwise ValueError naming where (a 422)."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        if isinstance(item, int):
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise ValueError(
                    f"{path or 'value'}: integers must lie within -{MAX_SAFE_INTEGER} to "
                    f"{MAX_SAFE_INTEGER}"
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{path or 'value'}: numbers must be finite")
        elif isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise ValueError(f"{path or 'value'}: nested deeper than {MAX_JSON_DEPTH} levels")
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                if isinstance(key, int):
                    where = f"{path}[{key}]"
                else:
                    where = f"{path}.{clip(key, 40)}" if path else clip(key, 40)
                stack.append((child, where, depth + 1))
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(bounded_json)]
AmountCents = Annotated[int, Field(strict=True, ge=1, le=MAX_AMOUNT_CENTS)]
# The example's event names are identifiers; anything else cannot be one of them.
EventName = Annotated[str, Path(max_length=63, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
PspEventId = Annotated[
    str, Field(strict=True, min_length=1, max_length=MAX_EVENT_ID, pattern=r"^[A-Za-z0-9_-]+$")
]
# Checked by the runtime (a blank or too long key is an InvalidArgumentError, a 422).
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


class NewOrder(BaseModel):
    context: JsonObject = Field(default_factory=dict)


class Payment(BaseModel):
    amount_cents: AmountCents


class PaymentWebhook(BaseModel):
    """What the payment provider posts; the fields it adds besides these are ignored."""

    event_id: PspEventId
    order_uuid: UUID
    amount_cents: AmountCents

    def idempotency_key(self) -> str:
        """One payment event of the provider, whichever delivery of it this is."""
        return f"psp:{self.event_id}"

    def fingerprint(self) -> str:
        """The inputs that change what ``pay`` does: the same event id with another amount is
        a conflict (409), not a replay. (With another order it is another order's receipt.)"""
        return f"pay:{self.order_uuid}:{self.amount_cents}"


class EventBody(BaseModel):
    """An event's subject: any JSON object; ``amount_cents``, when present, is an amount."""

    model_config = ConfigDict(extra="allow")

    amount_cents: AmountCents | None = None

    @model_validator(mode="after")
    def _bounded_extras(self) -> EventBody:
        bounded_json(self.model_extra)
        return self


def bounded_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic's errors without ``input`` and ``ctx`` (they hold what the client sent)."""
    return [
        {
            "loc": [clip(part, 40) if isinstance(part, str) else part for part in error["loc"]],
            "msg": clip(str(error["msg"])),
            "type": error["type"],
        }
        for error in errors[:MAX_ERRORS]
    ]


class BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is larger than {max_bytes} bytes")


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 and never stored.

    A declared Content-Length over the limit is refused before the app runs; a body without one
    (chunked) is counted as it arrives and refused at the first byte over the limit, so leaving
    the header out does not get around it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        too_large = declared is not None and (
            not (declared.isascii() and declared.isdigit()) or int(declared) > self.max_bytes
        )
        if too_large:
            await self.refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI passes an HTTPException raised while reading the body on to the
                    # app's handlers, which answer 413.
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            # Read by something outside FastAPI's handlers (another middleware).
            if started:
                raise
            await self.refuse(scope, receive, send)

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = BodyTooLarge(self.max_bytes).detail
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


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
        # idempotency=True: keyed events (the webhook, Idempotency-Key) need its receipts table.
        persistence_options={"lock_timeout": 5, "idempotency": True},
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with workflow(app):
            async with app.state.duraflows_pool.acquire() as conn:
                await conn.execute(INVOICES_DDL)
            yield

    app = FastAPI(title="orders", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": bounded_errors(exc.errors())}, status_code=422)

    @app.exception_handler(WorkflowInstanceNotFoundError)
    async def not_found(request: Request, exc: WorkflowInstanceNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": clip(str(exc))}, status_code=404)

    @app.exception_handler(InvalidEventError)
    async def invalid_event(request: Request, exc: InvalidEventError) -> JSONResponse:
        return JSONResponse({"detail": clip(str(exc)), "state": exc.state}, status_code=409)

    @app.exception_handler(InvalidArgumentError)
    async def invalid_argument(request: Request, exc: InvalidArgumentError) -> JSONResponse:
        return JSONResponse({"detail": clip(str(exc))}, status_code=422)

    @app.exception_handler(IdempotencyConflictError)
    @app.exception_handler(IdempotencyInProgressError)
    async def idempotency_conflict(
        request: Request, exc: IdempotencyConflictError | IdempotencyInProgressError
    ) -> JSONResponse:
        return JSONResponse({"detail": clip(str(exc))}, status_code=409)

    @app.post("/orders", status_code=201)
    async def create_order(runtime: RuntimeDep, body: NewOrder | None = None) -> dict[str, Any]:
        context = body.context if body is not None else {}
        instance = await runtime.create_instance("order", context=context)
        return instance.to_json()

    @app.post("/orders/{order_uuid}/events/{event_name}")
    async def trigger(
        order_uuid: UUID,
        event_name: EventName,
        runtime: RuntimeDep,
        body: EventBody | None = None,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        subject = body.model_dump(exclude_unset=True) if body is not None else None
        result = await runtime.trigger_event(
            order_uuid,
            event_name,
            subject=subject,
            trigger_metadata={"source": "http"},
            idempotency_key=idempotency_key,
        )
        return result.to_json()

    @app.get("/orders/{order_uuid}")
    async def show(order_uuid: UUID, runtime: RuntimeDep) -> dict[str, Any]:
        instance = await runtime.get_instance(order_uuid)
        if instance is None:
            raise WorkflowInstanceNotFoundError(order_uuid)
        history = await runtime.get_history(instance.uuid)
        return {**instance.to_json(), "history": [h.to_json() for h in history]}

    @app.post("/orders/{order_uuid}/pay-with-invoice")
    async def pay_with_invoice(
        order_uuid: UUID, body: Payment, runtime: RuntimeDep
    ) -> dict[str, Any]:
        uuid, amount = order_uuid, body.amount_cents
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
                uuid, "pay", subject=body.model_dump(), trigger_metadata={"invoiceId": invoice_id}
            )
        return {"invoice_id": invoice_id, **result.to_json()}

    @app.get("/invoices/{order_uuid}")
    async def invoices(order_uuid: UUID, pool: PoolDep) -> list[dict[str, Any]]:
        rows = await pool.fetch(
            "SELECT id, amount_cents FROM invoices WHERE order_uuid = $1 ORDER BY id", order_uuid
        )
        return [dict(row) for row in rows]

    @app.post("/webhooks/payments")
    async def payment_webhook(body: PaymentWebhook, runtime: RuntimeDep) -> dict[str, Any]:
        # A provider delivers an event at least once: a redelivery (same event_id) replays the
        # recorded result, even after the order moved on, and runs nothing.
        result = await runtime.trigger_event(
            body.order_uuid,
            "pay",
            subject={"amount_cents": body.amount_cents},
            trigger_metadata={"source": "psp", "eventId": body.event_id},
            idempotency_key=body.idempotency_key(),
            idempotency_fingerprint=body.fingerprint(),
        )
        return result.to_json()

    return app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
