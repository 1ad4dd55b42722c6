"""The aiohttp example (examples/aiohttp_app.py) on a real TCP port, called over real HTTP.

The cleanup_ctx of duraflows_pg_async.contrib.aiohttp opens the pool, migrates, builds the
runtime and runs a TimeoutWorker; the tests check each route, the error mapping, the
all-or-nothing invoice endpoint, the worker's sweep and that cleanup leaves no connection behind.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import io
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from helpers import ManualClock, wait_until

pytest.importorskip("aiohttp")

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from duraflows_pg_async.errors import InvalidArgumentError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "aiohttp_app.py"
APP_NAME = "duraflows-aiohttp-example"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("duraflows_example_aiohttp_app", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Served:
    client: TestClient[web.Request, web.Application]
    clock: ManualClock
    app: web.Application
    dsn: str = field(repr=False)  # it carries the server's password


async def app_connections(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", APP_NAME
        )
    finally:
        await conn.close()
    return count


async def wait_until_no_app_connections(dsn: str) -> None:
    """pool.close() has returned; the server may take a moment to end the backends."""

    async def none_open() -> bool:
        return await app_connections(dsn) == 0

    # Each look opens a connection of its own: asked at the pace of before, not faster.
    await wait_until(
        none_open, within=10, interval=0.05, what=f"the connections of {APP_NAME} closed"
    )


@asynccontextmanager
async def serving(dsn: str, **server_options: Any) -> AsyncIterator[Served]:
    """The example on an unmigrated database (the cleanup_ctx migrates), on a free TCP port."""
    clock = ManualClock(datetime.now(UTC))
    app = load_example().create_app(
        dsn,
        clock=clock,
        worker_options={"poll_interval": 0.05},
        pool_options={
            "min_size": 1,
            "max_size": 4,
            "server_settings": {"application_name": APP_NAME},
        },
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(**server_options)
    client = TestClient(server)
    await client.start_server()
    try:
        yield Served(client=client, clock=clock, app=app, dsn=dsn)
    finally:
        await client.close()


@pytest.fixture
async def served(empty_database: str) -> AsyncIterator[Served]:
    async with serving(empty_database) as served:
        yield served


async def create_order(client: TestClient[web.Request, web.Application], **context: Any) -> str:
    response = await client.post("/orders", json={"context": context})
    assert response.status == 201, await response.text()
    body = await response.json()
    assert body["currentState"] == "created"
    return str(body["uuid"])


async def get_json(client: TestClient[web.Request, web.Application], path: str) -> Any:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_create_trigger_and_read(served: Served) -> None:
    client = served.client
    uuid = await create_order(client, order_id="A-1")
    response = await client.post(f"/orders/{uuid}/events/pay", json={"amount_cents": 900})
    assert response.status == 200, await response.text()
    paid = await response.json()
    response = await client.post(f"/orders/{uuid}/events/ship")
    assert (await response.json())["toState"] == "shipped"

    body = await get_json(client, f"/orders/{uuid}")
    assert body["currentState"] == "shipped"
    assert body["context"] == {"order_id": "A-1", "paid_cents": 900}
    assert [(h["eventName"], h["fromState"], h["toState"]) for h in body["history"]] == [
        ("ship", "paid", "shipped"),
        ("pay", "created", "paid"),
    ]
    # The model's to_json(): upstream's camelCase objects.
    assert body["workflowName"] == "order"
    assert body["uuid"] == uuid
    assert body["createdAt"].endswith("Z")
    assert body["history"][1]["commandResultsJson"] == [{"ok": True, "code": "PAID"}]
    assert body["history"][1]["workflowInstanceUuid"] == uuid
    # An event's result is ExecutionResult.to_json(): camelCase too, no rejectedBy unless set.
    assert paid == {
        "outcome": "success",
        "fromState": "created",
        "toState": "paid",
        "commandResults": [{"ok": True, "code": "PAID"}],
        "historyUuid": body["history"][1]["uuid"],
    }


async def test_error_mapping(served: Served) -> None:
    client = served.client
    uuid = await create_order(client)
    missing = uuid4()
    response = await client.post(f"/orders/{missing}/events/pay")
    assert response.status == 404
    assert str(missing) in (await response.json())["detail"]
    assert (await client.get(f"/orders/{missing}")).status == 404

    response = await client.post(f"/orders/{uuid}/events/ship")
    assert response.status == 409
    assert (await response.json())["state"] == "created"

    assert (await client.post("/orders/not-a-uuid/events/pay")).status == 422
    assert (await client.get("/orders/not-a-uuid")).status == 422
    assert (await client.post("/orders", json={"context": [1, 2]})).status == 422
    assert (await client.post("/orders", data=b"{not json")).status == 422


async def test_pay_with_invoice_is_all_or_nothing(served: Served) -> None:
    client = served.client
    uuid = await create_order(client)
    response = await client.post(f"/orders/{uuid}/pay-with-invoice", json={"amount_cents": 1250})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["toState"] == "paid"
    invoices = await get_json(client, f"/invoices/{uuid}")
    assert invoices == [{"id": body["invoice_id"], "amount_cents": 1250}]
    history = (await get_json(client, f"/orders/{uuid}"))["history"]
    assert history[0]["triggerMetadata"] == {"invoiceId": body["invoice_id"]}

    # Paying twice: "pay" is not available in "paid", so the new invoice row is rolled back.
    response = await client.post(f"/orders/{uuid}/pay-with-invoice", json={"amount_cents": 700})
    assert response.status == 409
    assert await get_json(client, f"/invoices/{uuid}") == invoices

    missing = uuid4()
    response = await client.post(f"/orders/{missing}/pay-with-invoice", json={"amount_cents": 700})
    assert response.status == 404
    assert await get_json(client, f"/invoices/{missing}") == []
    response = await client.post(f"/orders/{uuid}/pay-with-invoice", json={"amount_cents": -1})
    assert response.status == 422

    conn = await asyncpg.connect(served.dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM invoices") == 1
    finally:
        await conn.close()


async def test_cleanup_ctx_worker_sweeps_due_orders(served: Served) -> None:
    client = served.client
    uuid = await create_order(client)
    paid = await create_order(client)
    await client.post(f"/orders/{paid}/events/pay")
    served.clock.advance(days=1, minutes=1)

    async def expired() -> Any:
        body = await get_json(client, f"/orders/{uuid}")
        return body if body["currentState"] == "expired" else None

    body = await wait_until(expired, within=10, what="the worker expiring the due order")
    assert body["currentState"] == "expired"
    assert body["history"][0]["eventName"] == "expire"
    assert body["history"][0]["triggerMetadata"] == {"source": "timeout"}
    assert (await get_json(client, f"/orders/{paid}"))["currentState"] == "paid"


async def test_cleanup_stops_worker_and_closes_pool(served: Served) -> None:
    from duraflows_pg_async.contrib.aiohttp import POOL_KEY, RUNTIME_KEY, WORKER_KEY

    await create_order(served.client)
    assert await app_connections(served.dsn) >= 1
    worker = served.app[WORKER_KEY]
    assert worker is not None
    assert worker.running
    assert served.app[RUNTIME_KEY].persistence.transaction_runner is not None
    pool = served.app[POOL_KEY]

    await served.client.close()

    assert not worker.running
    assert pool.is_closing()
    await wait_until_no_app_connections(served.dsn)


# --- input validation and limits ------------------------------------------------------------

# An error answer stays this small whatever the request held.
SMALL_ANSWER = 4096
MIB = 2**20
JSON = {"Content-Type": "application/json"}


async def stored_rows(dsn: str) -> tuple[int, int]:
    """(workflow instances, invoices) in the example's database."""
    conn = await asyncpg.connect(dsn)
    try:
        instances = await conn.fetchval("SELECT count(*) FROM workflow_instances")
        invoices = await conn.fetchval("SELECT count(*) FROM invoices")
    finally:
        await conn.close()
    return instances, invoices


async def raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request over a plain socket, for request lines no HTTP client library would send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + b"\r\nHost: test\r\nConnection: close\r\n")
        writer.write(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, content = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), content


async def test_amounts_are_bounded_by_the_integer_column(served: Served) -> None:
    client = served.client
    uuid = await create_order(client)
    for amount in (2**31, 10**20, -(2**31), 0, 1.5, "100", True):
        for route in (f"/orders/{uuid}/pay-with-invoice", f"/orders/{uuid}/events/pay"):
            response = await client.post(route, json={"amount_cents": amount})
            assert response.status == 422, (route, amount, await response.text())
            assert (await response.json())["detail"][0]["loc"] == ["body", "amount_cents"]
    for body in ({"amount_cents": None}, {}):
        response = await client.post(f"/orders/{uuid}/pay-with-invoice", json=body)
        assert response.status == 422, await response.text()
    assert (await get_json(client, f"/orders/{uuid}"))["currentState"] == "created"
    assert await stored_rows(served.dsn) == (1, 0)

    response = await client.post(
        f"/orders/{uuid}/pay-with-invoice", json={"amount_cents": 2**31 - 1}
    )
    assert response.status == 200, await response.text()
    assert (await get_json(client, f"/invoices/{uuid}"))[0]["amount_cents"] == 2**31 - 1


async def test_context_numbers_are_bounded_to_safe_integers(served: Served) -> None:
    client = served.client
    for context in ({"n": 2**53}, {"n": -(2**53)}, {"a": [{"b": 10**20}]}):
        response = await client.post("/orders", json={"context": context})
        assert response.status == 422, (context, await response.text())
        assert (await response.json())["detail"][0]["loc"] == ["body", "context"]
    response = await client.post("/orders", data=b'{"context": {"n": NaN}}', headers=JSON)
    assert response.status == 422, await response.text()
    uuid = await create_order(client, n=2**53 - 1, m=-(2**53 - 1), x=0.5)
    response = await client.post(f"/orders/{uuid}/events/cancel", json={"note": 10**20})
    assert response.status == 422, await response.text()
    assert (await get_json(client, f"/orders/{uuid}"))["context"]["n"] == 2**53 - 1


async def test_bodies_over_the_limit_are_413_and_not_stored(served: Served) -> None:
    client = served.client
    opening, closing = b'{"context": {"blob": "', b'"}}'
    response = await client.post(
        "/orders", data=io.BytesIO(opening + b"x" * 60 * MIB + closing), headers=JSON
    )
    assert response.status == 413, (await response.text())[:200]

    async def chunked() -> AsyncIterator[bytes]:
        yield opening
        chunk = b"x" * MIB
        for _ in range(60):
            yield chunk
        yield closing

    # No Content-Length: the bytes are counted as they arrive.
    response = await client.post("/orders", data=chunked(), headers=JSON)
    assert response.status == 413, (await response.text())[:200]
    assert len(await response.read()) < SMALL_ANSWER
    assert await stored_rows(served.dsn) == (0, 0)

    # Just under the limit is accepted.
    response = await client.post("/orders", data=opening + b"x" * 60_000 + closing, headers=JSON)
    assert response.status == 201, (await response.text())[:200]


async def test_deep_nesting_is_a_client_error(served: Served) -> None:
    def nested(depth: int) -> bytes:
        return b'{"context": {"a": ' + b"[" * depth + b"]" * depth + b"}}"

    client = served.client
    response = await client.post("/orders", data=nested(200_000), headers=JSON)
    assert response.status == 413
    # Within the size limit: too deep for json.loads, then too deep for the context rule.
    for depth in (30_000, 500, 40):
        response = await client.post("/orders", data=nested(depth), headers=JSON)
        assert response.status == 422, (depth, (await response.text())[:200])
        assert len(await response.read()) < SMALL_ANSWER
    assert await stored_rows(served.dsn) == (0, 0)


@pytest.fixture
async def served_long_urls(empty_database: str) -> AsyncIterator[Served]:
    """A server that passes request lines of any length to the app."""
    async with serving(empty_database, max_line_size=64 * MIB) as served:
        yield served


async def test_errors_do_not_echo_unbounded_input(served_long_urls: Served) -> None:
    served = served_long_urls
    client = served.client
    uuid = await create_order(client)
    huge = "e" * 20_000_000
    assert client.port is not None
    for head in (
        f"POST /orders/{uuid}/events/{huge} HTTP/1.1",
        f"POST /orders/{huge}/events/pay HTTP/1.1",
        f"POST /orders/{huge}/pay-with-invoice HTTP/1.1",
        f"GET /orders/{huge} HTTP/1.1",
        f"GET /invoices/{huge} HTTP/1.1",
    ):
        status, content = await raw_request(client.port, head, b'{"amount_cents": 1}')
        assert status == 422, (head[:60], content[:200])
        assert len(content) < SMALL_ANSWER, head[:60]

    # Keys and strings within the size limit are not echoed in full either.
    key = "k" * 60_000
    for route, body in (
        ("/orders", {"context": {key: 2**60}}),
        ("/orders", {"context": {key: "\u0000"}}),
        (f"/orders/{uuid}/events/cancel", {key: 2**60}),
        (f"/orders/{uuid}/events/pay", {"amount_cents": key}),
    ):
        response = await client.post(route, json=body)
        assert response.status == 422, (route, (await response.text())[:200])
        assert len(await response.read()) < SMALL_ANSWER, route
    response = await client.post("/orders", data=b'{"' + b"k" * 60_000, headers=JSON)
    assert response.status == 422
    assert len(await response.read()) < SMALL_ANSWER

    # An event the state does not have: 409, naming it.
    response = await client.post(f"/orders/{uuid}/events/ship")
    assert response.status == 409
    assert "ship" in (await response.json())["detail"]
    assert await stored_rows(served.dsn) == (1, 0)


# --- idempotent webhooks and Idempotency-Key ------------------------------------------------


async def order_rows(dsn: str, uuid: str) -> tuple[int, int]:
    """(history rows, idempotency receipts) of one order."""
    conn = await asyncpg.connect(dsn)
    try:
        history = await conn.fetchval(
            "SELECT count(*) FROM workflow_history WHERE workflow_instance_uuid = $1", UUID(uuid)
        )
        receipts = await conn.fetchval(
            "SELECT count(*) FROM workflow_event_idempotency WHERE workflow_instance_uuid = $1",
            UUID(uuid),
        )
    finally:
        await conn.close()
    return history, receipts


async def test_payment_webhook_pays_once_per_event_id(served: Served) -> None:
    client = served.client
    uuid = await create_order(client)
    history_before, _ = await order_rows(served.dsn, uuid)
    webhook = {"event_id": "evt_1Nq8", "order_uuid": uuid, "amount_cents": 2500}

    response = await client.post("/webhooks/payments", json=webhook)
    assert response.status == 200, await response.text()
    result = await response.json()
    order = await get_json(client, f"/orders/{uuid}")
    assert result == {
        "outcome": "success",
        "fromState": "created",
        "toState": "paid",
        "commandResults": [{"ok": True, "code": "PAID"}],
        "historyUuid": order["history"][0]["uuid"],
    }
    assert order["context"] == {"paid_cents": 2500}
    assert order["history"][0]["triggerMetadata"] == {"source": "psp", "eventId": "evt_1Nq8"}
    assert await order_rows(served.dsn, uuid) == (history_before + 1, 1)

    # Redelivered (with a field the provider added): the first result, nothing runs, although
    # "pay" is no longer available in "paid".
    for _ in range(2):
        response = await client.post("/webhooks/payments", json={**webhook, "attempt": 2})
        assert response.status == 200, await response.text()
        assert await response.json() == result
    assert await order_rows(served.dsn, uuid) == (history_before + 1, 1)
    assert await get_json(client, f"/orders/{uuid}") == order

    # The same event id with another amount is not a redelivery: 409, nothing runs.
    response = await client.post("/webhooks/payments", json={**webhook, "amount_cents": 2600})
    assert response.status == 409, await response.text()
    assert "psp:evt_1Nq8" in (await response.json())["detail"]
    assert len(await response.read()) < SMALL_ANSWER
    # A new event id for the paid order: "pay" is not available (409 naming the state).
    response = await client.post("/webhooks/payments", json={**webhook, "event_id": "evt_2"})
    assert response.status == 409, await response.text()
    assert (await response.json())["state"] == "paid"
    assert await order_rows(served.dsn, uuid) == (history_before + 1, 1)
    assert await get_json(client, f"/orders/{uuid}") == order

    # Receipts are kept per order (docs/idempotency.md): the same event id for another order
    # is that order's first delivery.
    other = await create_order(client)
    response = await client.post("/webhooks/payments", json={**webhook, "order_uuid": other})
    assert response.status == 200, await response.text()
    assert (await response.json())["historyUuid"] != result["historyUuid"]
    assert await order_rows(served.dsn, other) == (history_before + 1, 1)


async def test_payment_webhook_input_is_checked(served: Served) -> None:
    client = served.client
    uuid = await create_order(client)
    rows = await order_rows(served.dsn, uuid)
    valid = {"event_id": "evt_1", "order_uuid": uuid, "amount_cents": 2500}
    bad_values = {
        "event_id": (None, 7, "", "evt 1", "évt_1", "evt/1", "evt_1\n", "e" * 201),
        "order_uuid": (None, 7, "not-a-uuid", f"{{{uuid}}}", "1" * 60_000),
        "amount_cents": (None, 0, 2**31, 1.5, "2500", True),
    }
    for name, values in bad_values.items():
        for value in values:
            response = await client.post("/webhooks/payments", json={**valid, name: value})
            assert response.status == 422, (name, value, (await response.text())[:200])
            assert (await response.json())["detail"][0]["loc"] == ["body", name]
            assert len(await response.read()) < SMALL_ANSWER
    for body in ({}, [valid], {k: v for k, v in valid.items() if k != "event_id"}):
        response = await client.post("/webhooks/payments", json=body)
        assert response.status == 422, (body, (await response.text())[:200])
    response = await client.post("/webhooks/payments")
    assert response.status == 422
    # Not echoed: a 60,000-character event id comes back as a short message.
    response = await client.post("/webhooks/payments", json={**valid, "event_id": "k" * 60_000})
    assert response.status == 422
    assert "k" * 100 not in await response.text()
    assert await order_rows(served.dsn, uuid) == rows

    missing = str(uuid4())
    response = await client.post("/webhooks/payments", json={**valid, "order_uuid": missing})
    assert response.status == 404
    assert (await get_json(client, f"/orders/{uuid}"))["currentState"] == "created"
    assert await order_rows(served.dsn, uuid) == rows


async def test_idempotency_key_header_replays_an_event(served: Served) -> None:
    client = served.client
    uuid = await create_order(client)
    history_before, _ = await order_rows(served.dsn, uuid)
    route = f"/orders/{uuid}/events/pay"

    response = await client.post(
        route, json={"amount_cents": 900}, headers={"Idempotency-Key": "req-1"}
    )
    assert response.status == 200, await response.text()
    result = await response.json()
    assert result["toState"] == "paid"
    # A retry (header names are case-insensitive): the same result, nothing runs.
    response = await client.post(
        route, json={"amount_cents": 900}, headers={"idempotency-key": "req-1"}
    )
    assert response.status == 200, await response.text()
    assert await response.json() == result
    assert await order_rows(served.dsn, uuid) == (history_before + 1, 1)

    # The key on another event: 409 (ship is available; the key is not).
    ship = f"/orders/{uuid}/events/ship"
    response = await client.post(ship, headers={"Idempotency-Key": "req-1"})
    assert response.status == 409, await response.text()
    assert "req-1" in (await response.json())["detail"]
    assert await order_rows(served.dsn, uuid) == (history_before + 1, 1)
    # A key of exactly 256 bytes is a key.
    response = await client.post(ship, headers={"Idempotency-Key": "k" * 256})
    assert response.status == 200, await response.text()
    assert (await response.json())["toState"] == "shipped"
    assert await order_rows(served.dsn, uuid) == (history_before + 2, 2)


async def test_bad_idempotency_key_header_is_422(served: Served) -> None:
    client = served.client
    uuid = await create_order(client)
    rows = await order_rows(served.dsn, uuid)
    for key in ("", "k" * 257, "k" * 8000):
        response = await client.post(
            f"/orders/{uuid}/events/pay",
            json={"amount_cents": 900},
            headers={"Idempotency-Key": key},
        )
        assert response.status == 422, (len(key), (await response.text())[:200])
        assert "idempotency_key" in (await response.json())["detail"]
        assert len(await response.read()) < SMALL_ANSWER
    assert await order_rows(served.dsn, uuid) == rows
    assert (await get_json(client, f"/orders/{uuid}"))["currentState"] == "created"


async def test_failed_startup_closes_the_pool(database: str) -> None:
    from duraflows_pg_async.contrib.aiohttp import workflow_cleanup_ctx

    app = web.Application()
    app.cleanup_ctx.append(
        workflow_cleanup_ctx(
            dsn=database,
            build_runtime=lambda persistence: "not a runtime",  # type: ignore[arg-type,return-value]
            pool_options={"server_settings": {"application_name": APP_NAME}},
        )
    )
    runner = web.AppRunner(app)
    with pytest.raises(InvalidArgumentError, match="WorkflowRuntime"):
        await runner.setup()
    await runner.cleanup()
    await wait_until_no_app_connections(database)


def test_import_without_aiohttp_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp", None)
    monkeypatch.delitem(sys.modules, "duraflows_pg_async.contrib.aiohttp", raising=False)
    with pytest.raises(ImportError, match=r"duraflows-pg-async\[aiohttp\]"):
        importlib.import_module("duraflows_pg_async.contrib.aiohttp")
