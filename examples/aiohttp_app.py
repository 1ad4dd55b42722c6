"""An order workflow API on aiohttp, with duraflows_pg_async.contrib.aiohttp.

Run it (the migrations and the example's ``invoices`` table are created at start-up)::

    pip install 'duraflows-pg-async[aiohttp]'
    DATABASE_URL=postgresql://localhost/orders python examples/aiohttp_app.py

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
reused for another event or with another amount 409, a bad argument (such as a malformed
uuid, body or ``Idempotency-Key``) 422, a body over 64 KiB 413. An unpaid order expires after a
day: the cleanup_ctx's timeout worker fires its ``expire`` event.

Input is checked before it reaches the workflow (the part to copy into your own app):

- ``web.Application(client_max_size=MAX_BODY_BYTES)``: aiohttp stops reading a body over the
  limit, whether it declares its Content-Length or streams in chunks, and raises
  ``HTTPRequestEntityTooLarge`` (413);
- ``json_body`` answers 422 for a body that is not JSON, including nesting too deep for
  ``json.loads`` (a ``RecursionError``, which would otherwise be a 500);
- amounts are integers from 1 to 2**31 - 1 (``invoices.amount_cents`` is an ``integer``
  column); every other number in a context or an event body is a safe integer (at most
  2**53 - 1 either way, so JavaScript readers of the jsonb read it exactly) or a finite float,
  nested at most ``MAX_JSON_DEPTH`` levels;
- path parameters are a canonical UUID and an event name of at most 63 characters; a webhook's
  ``order_uuid`` is a canonical UUID too and its ``event_id`` 1 to 200 ASCII letters, digits,
  ``_`` or ``-``, so its key stays within the runtime's 256 bytes; an ``Idempotency-Key`` header
  is checked by the runtime (not blank, at most 256 bytes);
- a 422 names the field (``{"detail": [{"loc": ["body", "amount_cents"], "msg": ...}]}``, the
  shape FastAPI uses) and no error body echoes the request: messages are clipped to
  ``MAX_DETAIL`` characters.
"""

from __future__ import annotations

import math
import os
import re
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
    PgTransactionRunner,
    State,
    Timeout,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
)
from duraflows_pg_async.contrib.aiohttp import POOL_KEY, RUNTIME_KEY, workflow_cleanup_ctx
from duraflows_pg_async.errors import (
    IdempotencyConflictError,
    IdempotencyInProgressError,
    InvalidArgumentError,
    InvalidEventError,
    WorkflowInstanceNotFoundError,
)

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


# --- input rules -----------------------------------------------------------------------------

# Orders are small JSON documents: 64 KiB leaves plenty of room and keeps a client from making us
# buffer, parse and store megabytes. aiohttp's own default is 1 MiB.
MAX_BODY_BYTES = 64 * 1024
# invoices.amount_cents is a PostgreSQL integer.
MAX_AMOUNT_CENTS = 2**31 - 1
# Contexts are jsonb, also read by JavaScript (@duraflows/pg), where a number is a double: larger
# integers would come back as other values.
MAX_SAFE_INTEGER = 2**53 - 1
MAX_JSON_DEPTH = 32
# Error messages are clipped to this many characters, whatever input they quote.
MAX_DETAIL = 300

# The form of the UUIDs this app hands out; uuid.UUID() alone also reads signs and underscores.
UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
# The example's event names are identifiers; anything else cannot be one of them.
EVENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# A payment provider's event id; "psp:" + 200 ASCII characters is well within the 256 bytes the
# runtime allows an idempotency key.
PSP_EVENT_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")


class InvalidRequest(Exception):
    """A 422 naming the offending part of the request (``loc``), as FastAPI's errors do."""

    def __init__(self, loc: tuple[str, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


def clip(text: str, limit: int = MAX_DETAIL) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bounded_json(value: Any) -> Any:
    """``value`` itself, if every number in it is a safe integer or a finite float and it is
    nested at most MAX_JSON_DEPTH levels; otherwise ValueError naming where."""
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


def json_field(value: Any, *loc: str) -> Any:
    try:
        return bounded_json(value)
    except ValueError as exc:
        raise InvalidRequest(loc, str(exc)) from None


def amount_field(body: Mapping[str, Any]) -> int:
    amount = body.get("amount_cents")
    if type(amount) is not int or not 1 <= amount <= MAX_AMOUNT_CENTS:
        raise InvalidRequest(
            ("body", "amount_cents"), f"must be an integer from 1 to {MAX_AMOUNT_CENTS}"
        )
    return amount


def uuid_field(body: Mapping[str, Any], name: str) -> UUID:
    value = body.get(name)
    if not isinstance(value, str) or not UUID_TEXT.fullmatch(value):
        raise InvalidRequest(("body", name), "must be a UUID")
    return UUID(value)


def event_id_field(body: Mapping[str, Any]) -> str:
    value = body.get("event_id")
    if not isinstance(value, str) or not PSP_EVENT_ID.fullmatch(value):
        raise InvalidRequest(
            ("body", "event_id"), "must be 1 to 200 ASCII letters, digits, '_' or '-'"
        )
    return value


def path_uuid(request: web.Request) -> UUID:
    text = request.match_info["uuid"]
    if not UUID_TEXT.fullmatch(text):
        raise InvalidRequest(("path", "uuid"), "must be a UUID")
    return UUID(text)


def path_event(request: web.Request) -> str:
    name = request.match_info["event"]
    if not EVENT_NAME.fullmatch(name):
        raise InvalidRequest(("path", "event"), "must be an identifier of at most 63 characters")
    return name


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


async def json_body(request: web.Request, *, required: bool = False) -> dict[str, Any] | None:
    """The request's JSON object; ``None`` for an empty optional body.

    A body over the app's ``client_max_size`` raises HTTPRequestEntityTooLarge (413) here.
    """
    if not request.can_read_body:
        if required:
            raise InvalidRequest(("body",), "a JSON object body is required")
        return None
    try:
        body = await request.json()
    except (ValueError, RecursionError):
        # json.loads raises RecursionError for nesting deeper than Python's recursion limit.
        raise InvalidRequest(("body",), "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest(("body",), "the body must be a JSON object")
    return body


# --- error mapping and routes ----------------------------------------------------------------


@web.middleware
async def workflow_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except InvalidRequest as exc:
        error = {"loc": [clip(part, 40) for part in exc.loc], "msg": clip(exc.msg)}
        return web.json_response({"detail": [error]}, status=422)
    except web.HTTPRequestEntityTooLarge:
        detail = f"the request body is larger than {MAX_BODY_BYTES} bytes"
        return web.json_response({"detail": detail}, status=413)
    except WorkflowInstanceNotFoundError as exc:
        return web.json_response({"detail": clip(str(exc))}, status=404)
    except InvalidEventError as exc:
        return web.json_response({"detail": clip(str(exc)), "state": exc.state}, status=409)
    except InvalidArgumentError as exc:
        return web.json_response({"detail": clip(str(exc))}, status=422)
    except (IdempotencyConflictError, IdempotencyInProgressError) as exc:
        return web.json_response({"detail": clip(str(exc))}, status=409)


routes = web.RouteTableDef()


@routes.post("/orders")
async def create_order(request: web.Request) -> web.Response:
    body = await json_body(request) or {}
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise InvalidRequest(("body", "context"), "must be a JSON object")
    instance = await request.app[RUNTIME_KEY].create_instance(
        "order", context=json_field(context, "body", "context")
    )
    return web.json_response(instance.to_json(), status=201)


@routes.post("/orders/{uuid}/events/{event}")
async def trigger(request: web.Request) -> web.Response:
    uuid, event = path_uuid(request), path_event(request)
    body = await json_body(request)
    if body is not None:
        # As in the FastAPI example: a missing or null amount is no payment amount.
        if body.get("amount_cents") is not None:
            amount_field(body)
        json_field(body, "body")
    result = await request.app[RUNTIME_KEY].trigger_event(
        uuid,
        event,
        subject=body,
        trigger_metadata={"source": "http"},
        # Checked by the runtime: a blank or too long key is an InvalidArgumentError (422).
        idempotency_key=request.headers.get("Idempotency-Key"),
    )
    return web.json_response(result.to_json())


@routes.get("/orders/{uuid}")
async def show(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    uuid = path_uuid(request)
    instance = await runtime.get_instance(uuid)
    if instance is None:
        raise WorkflowInstanceNotFoundError(uuid)
    history = await runtime.get_history(instance.uuid)
    return web.json_response({**instance.to_json(), "history": [h.to_json() for h in history]})


@routes.post("/orders/{uuid}/pay-with-invoice")
async def pay_with_invoice(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    uuid = path_uuid(request)
    body = await json_body(request, required=True) or {}
    amount = amount_field(body)
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
            uuid,
            "pay",
            subject={"amount_cents": amount},
            trigger_metadata={"invoiceId": invoice_id},
        )
    return web.json_response({"invoice_id": invoice_id, **result.to_json()})


@routes.get("/invoices/{uuid}")
async def invoices(request: web.Request) -> web.Response:
    rows = await request.app[POOL_KEY].fetch(
        "SELECT id, amount_cents FROM invoices WHERE order_uuid = $1 ORDER BY id",
        path_uuid(request),
    )
    return web.json_response([dict(row) for row in rows])


@routes.post("/webhooks/payments")
async def payment_webhook(request: web.Request) -> web.Response:
    body = await json_body(request, required=True) or {}
    # The provider's other fields are ignored.
    event_id = event_id_field(body)
    order_uuid = uuid_field(body, "order_uuid")
    amount = amount_field(body)
    # A provider delivers an event at least once: a redelivery (same event_id) replays the
    # recorded result, even after the order moved on, and runs nothing. The fingerprint holds
    # the inputs that change what "pay" does: the same event id with another amount is a
    # conflict (409), not a replay. (With another order it is another order's receipt.)
    result = await request.app[RUNTIME_KEY].trigger_event(
        order_uuid,
        "pay",
        subject={"amount_cents": amount},
        trigger_metadata={"source": "psp", "eventId": event_id},
        idempotency_key=f"psp:{event_id}",
        idempotency_fingerprint=f"pay:{order_uuid}:{amount}",
    )
    return web.json_response(result.to_json())


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
    app = web.Application(middlewares=[workflow_errors], client_max_size=MAX_BODY_BYTES)
    app.cleanup_ctx.append(
        workflow_cleanup_ctx(
            dsn=dsn if dsn is not None else os.environ["DATABASE_URL"],
            build_runtime=build_runtime_factory(clock),
            migrate=True,
            worker=True,
            worker_options=worker_options,
            pool_options=pool_options,
            # idempotency=True: keyed events (the webhook, Idempotency-Key) need its receipts.
            persistence_options={"lock_timeout": 5, "idempotency": True},
        )
    )
    app.cleanup_ctx.append(invoices_table)
    app.add_routes(routes)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
