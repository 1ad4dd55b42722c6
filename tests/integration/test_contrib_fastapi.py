"""The FastAPI example (examples/fastapi_app.py) served by uvicorn, called over real HTTP.

The lifespan of duraflows_pg_async.contrib.fastapi opens the pool, migrates, builds the runtime
and runs a TimeoutWorker; the tests check each route, the error mapping, the all-or-nothing
invoice endpoint, the worker's sweep and that shutdown leaves no connection behind.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
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

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app.py"
APP_NAME = "duraflows-fastapi-example"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("duraflows_example_fastapi_app", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # pydantic resolves the models' annotations through sys.modules, as after a plain import.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Served:
    client: Any  # httpx.AsyncClient
    clock: ManualClock
    server: Any  # uvicorn.Server
    task: asyncio.Task[None]
    dsn: str = field(repr=False)  # it carries the server's password
    port: int

    async def shutdown(self) -> None:
        if not self.task.done():
            self.server.should_exit = True
            await asyncio.wait_for(self.task, 15)


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
async def serving(dsn: str, **config_options: Any) -> AsyncIterator[Served]:
    """The example on an unmigrated database (the lifespan migrates), on a free TCP port."""
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
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_level="warning",
        ws="none",
        **config_options,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            task.result()
            pytest.fail("uvicorn stopped before it started")
        # uvicorn signals its start with nothing but this flag.
        return bool(server.started)

    await wait_until(started, within=15, what="uvicorn listening")
    port = server.servers[0].sockets[0].getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        served = Served(client=client, clock=clock, server=server, task=task, dsn=dsn, port=port)
        try:
            yield served
        finally:
            await served.shutdown()


@pytest.fixture
async def served(empty_database: str) -> AsyncIterator[Served]:
    async with serving(empty_database) as served:
        yield served


async def create_order(client: Any, **context: Any) -> str:
    response = await client.post("/orders", json={"context": context})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["currentState"] == "created"
    return str(body["uuid"])


async def test_create_trigger_and_read(served: Served) -> None:
    uuid = await create_order(served.client, order_id="A-1")
    response = await served.client.post(f"/orders/{uuid}/events/pay", json={"amount_cents": 900})
    assert response.status_code == 200, response.text
    paid = response.json()
    response = await served.client.post(f"/orders/{uuid}/events/ship")
    assert response.json()["toState"] == "shipped"

    response = await served.client.get(f"/orders/{uuid}")
    assert response.status_code == 200
    body = response.json()
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
    uuid = await create_order(served.client)
    missing = uuid4()
    response = await served.client.post(f"/orders/{missing}/events/pay")
    assert response.status_code == 404
    assert str(missing) in response.json()["detail"]
    assert (await served.client.get(f"/orders/{missing}")).status_code == 404

    response = await served.client.post(f"/orders/{uuid}/events/ship")
    assert response.status_code == 409
    assert response.json()["state"] == "created"

    response = await served.client.post("/orders/not-a-uuid/events/pay")
    assert response.status_code == 422
    assert (await served.client.get("/orders/not-a-uuid")).status_code == 422
    response = await served.client.post("/orders", json={"context": ["not", "an", "object"]})
    assert response.status_code == 422


async def test_pay_with_invoice_is_all_or_nothing(served: Served) -> None:
    uuid = await create_order(served.client)
    response = await served.client.post(
        f"/orders/{uuid}/pay-with-invoice", json={"amount_cents": 1250}
    )
    assert response.status_code == 200, response.text
    invoice_id = response.json()["invoice_id"]
    assert response.json()["toState"] == "paid"
    invoices = (await served.client.get(f"/invoices/{uuid}")).json()
    assert invoices == [{"id": invoice_id, "amount_cents": 1250}]
    history = (await served.client.get(f"/orders/{uuid}")).json()["history"]
    assert history[0]["triggerMetadata"] == {"invoiceId": invoice_id}

    # Paying twice: "pay" is not available in "paid", so the new invoice row is rolled back.
    response = await served.client.post(
        f"/orders/{uuid}/pay-with-invoice", json={"amount_cents": 700}
    )
    assert response.status_code == 409
    assert (await served.client.get(f"/invoices/{uuid}")).json() == invoices

    # An unknown order: the INSERT ran first, the event failed, nothing is left.
    missing = uuid4()
    response = await served.client.post(
        f"/orders/{missing}/pay-with-invoice", json={"amount_cents": 700}
    )
    assert response.status_code == 404
    assert (await served.client.get(f"/invoices/{missing}")).json() == []

    conn = await asyncpg.connect(served.dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM invoices") == 1
    finally:
        await conn.close()


async def test_lifespan_worker_sweeps_due_orders(served: Served) -> None:
    uuid = await create_order(served.client)
    paid = await create_order(served.client)
    await served.client.post(f"/orders/{paid}/events/pay")
    served.clock.advance(days=1, minutes=1)

    async def expired() -> Any:
        body = (await served.client.get(f"/orders/{uuid}")).json()
        return body if body["currentState"] == "expired" else None

    body = await wait_until(expired, within=10, what="the worker expiring the due order")
    assert body["history"][0]["eventName"] == "expire"
    assert body["history"][0]["triggerMetadata"] == {"source": "timeout"}
    assert (await served.client.get(f"/orders/{paid}")).json()["currentState"] == "paid"


async def test_shutdown_stops_worker_and_closes_pool(served: Served) -> None:
    await create_order(served.client)
    assert await app_connections(served.dsn) >= 1
    app = served.server.config.app
    worker = app.state.duraflows_worker
    assert worker.running

    await served.shutdown()

    assert not worker.running
    assert app.state.duraflows_runtime is None
    await wait_until_no_app_connections(served.dsn)


# --- input validation and limits ------------------------------------------------------------

# An error answer stays this small whatever the request held.
SMALL_ANSWER = 4096
MIB = 2**20


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
    """One request over a plain socket: httpx refuses URLs longer than 64 KiB."""
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


def json_request(payload: bytes) -> dict[str, Any]:
    return {"content": payload, "headers": {"content-type": "application/json"}}


async def test_amounts_are_bounded_by_the_integer_column(served: Served) -> None:
    client = served.client
    uuid = await create_order(client)
    for amount in (2**31, 10**20, -(2**31), 0, 1.5, "100", True):
        for route in (f"/orders/{uuid}/pay-with-invoice", f"/orders/{uuid}/events/pay"):
            response = await client.post(route, json={"amount_cents": amount})
            assert response.status_code == 422, (route, amount, response.text)
            assert response.json()["detail"][0]["loc"] == ["body", "amount_cents"]
    for body in ({"amount_cents": None}, {}):
        response = await client.post(f"/orders/{uuid}/pay-with-invoice", json=body)
        assert response.status_code == 422, response.text
    assert (await client.get(f"/orders/{uuid}")).json()["currentState"] == "created"
    assert await stored_rows(served.dsn) == (1, 0)

    response = await client.post(
        f"/orders/{uuid}/pay-with-invoice", json={"amount_cents": 2**31 - 1}
    )
    assert response.status_code == 200, response.text
    assert (await client.get(f"/invoices/{uuid}")).json()[0]["amount_cents"] == 2**31 - 1


async def test_context_numbers_are_bounded_to_safe_integers(served: Served) -> None:
    client = served.client
    for context in ({"n": 2**53}, {"n": -(2**53)}, {"a": [{"b": 10**20}]}):
        response = await client.post("/orders", json={"context": context})
        assert response.status_code == 422, (context, response.text)
        assert response.json()["detail"][0]["loc"] == ["body", "context"]
    uuid = await create_order(client, n=2**53 - 1, m=-(2**53 - 1), x=0.5)
    response = await client.post(f"/orders/{uuid}/events/cancel", json={"note": 10**20})
    assert response.status_code == 422, response.text
    assert (await client.get(f"/orders/{uuid}")).json()["context"]["n"] == 2**53 - 1


async def test_bodies_over_the_limit_are_413_and_not_stored(served: Served) -> None:
    client = served.client
    opening, closing = b'{"context": {"blob": "', b'"}}'
    response = await client.post("/orders", **json_request(opening + b"x" * 60 * MIB + closing))
    assert response.status_code == 413, response.text[:200]

    async def chunked() -> AsyncIterator[bytes]:
        yield opening
        chunk = b"x" * MIB
        for _ in range(60):
            yield chunk
        yield closing

    # No Content-Length: the bytes are counted as they arrive.
    response = await client.post(
        "/orders", content=chunked(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text[:200]
    assert len(response.content) < SMALL_ANSWER
    assert await stored_rows(served.dsn) == (0, 0)

    # Just under the limit is accepted.
    response = await client.post("/orders", **json_request(opening + b"x" * 60_000 + closing))
    assert response.status_code == 201, response.text[:200]


async def test_deep_nesting_is_a_client_error(served: Served) -> None:
    def nested(depth: int) -> bytes:
        return b'{"context": {"a": ' + b"[" * depth + b"]" * depth + b"}}"

    client = served.client
    response = await client.post("/orders", **json_request(nested(200_000)))
    assert response.status_code == 413
    # Within the size limit: too deep for json.loads, then too deep for the context rule.
    for depth in (30_000, 500, 40):
        response = await client.post("/orders", **json_request(nested(depth)))
        assert response.status_code in (400, 422), (depth, response.text[:200])
        assert len(response.content) < SMALL_ANSWER
    assert await stored_rows(served.dsn) == (0, 0)


@pytest.fixture
async def served_long_urls(empty_database: str) -> AsyncIterator[Served]:
    """A server that passes request lines of any length to the app (as httptools does)."""
    async with serving(empty_database, h11_max_incomplete_event_size=64 * MIB) as served:
        yield served


async def test_errors_do_not_echo_unbounded_input(served_long_urls: Served) -> None:
    served = served_long_urls
    uuid = await create_order(served.client)
    huge = "e" * 20_000_000
    for head in (
        f"POST /orders/{uuid}/events/{huge} HTTP/1.1",
        f"POST /orders/{huge}/events/pay HTTP/1.1",
        f"POST /orders/{huge}/pay-with-invoice HTTP/1.1",
        f"GET /orders/{huge} HTTP/1.1",
        f"GET /invoices/{huge} HTTP/1.1",
    ):
        status, content = await raw_request(served.port, head, b"{}")
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
        response = await served.client.post(route, json=body)
        assert response.status_code == 422, (route, response.text[:200])
        assert len(response.content) < SMALL_ANSWER, route
    response = await served.client.post("/orders", **json_request(b'{"' + b"k" * 60_000))
    assert response.status_code == 422
    assert len(response.content) < SMALL_ANSWER

    # An event the state does not have: 409, naming it.
    response = await served.client.post(f"/orders/{uuid}/events/ship")
    assert response.status_code == 409
    assert "ship" in response.json()["detail"]
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
    assert response.status_code == 200, response.text
    result = response.json()
    order = (await client.get(f"/orders/{uuid}")).json()
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
        assert response.status_code == 200, response.text
        assert response.json() == result
    assert await order_rows(served.dsn, uuid) == (history_before + 1, 1)
    assert (await client.get(f"/orders/{uuid}")).json() == order

    # The same event id with another amount is not a redelivery: 409, nothing runs.
    response = await client.post("/webhooks/payments", json={**webhook, "amount_cents": 2600})
    assert response.status_code == 409, response.text
    assert "psp:evt_1Nq8" in response.json()["detail"]
    assert len(response.content) < SMALL_ANSWER
    # A new event id for the paid order: "pay" is not available (409 naming the state).
    response = await client.post("/webhooks/payments", json={**webhook, "event_id": "evt_2"})
    assert response.status_code == 409, response.text
    assert response.json()["state"] == "paid"
    assert await order_rows(served.dsn, uuid) == (history_before + 1, 1)
    assert (await client.get(f"/orders/{uuid}")).json() == order

    # Receipts are kept per order (docs/idempotency.md): the same event id for another order
    # is that order's first delivery.
    other = await create_order(client)
    response = await client.post("/webhooks/payments", json={**webhook, "order_uuid": other})
    assert response.status_code == 200, response.text
    assert response.json()["historyUuid"] != result["historyUuid"]
    assert await order_rows(served.dsn, other) == (history_before + 1, 1)


async def test_payment_webhook_input_is_checked(served: Served) -> None:
    client = served.client
    uuid = await create_order(client)
    rows = await order_rows(served.dsn, uuid)
    valid = {"event_id": "evt_1", "order_uuid": uuid, "amount_cents": 2500}
    bad_values = {
        "event_id": (None, 7, "", "evt 1", "évt_1", "evt/1", "evt_1\n", "e" * 201),
        "order_uuid": (None, 7, "not-a-uuid", "1" * 60_000),
        "amount_cents": (None, 0, 2**31, 1.5, "2500", True),
    }
    for name, values in bad_values.items():
        for value in values:
            response = await client.post("/webhooks/payments", json={**valid, name: value})
            assert response.status_code == 422, (name, value, response.text[:200])
            assert ["body", name] in [error["loc"] for error in response.json()["detail"]]
            assert len(response.content) < SMALL_ANSWER
    for body in ({}, [valid], {k: v for k, v in valid.items() if k != "event_id"}):
        response = await client.post("/webhooks/payments", json=body)
        assert response.status_code == 422, (body, response.text[:200])
    # Not echoed: a 60,000-character event id comes back as a short message.
    response = await client.post("/webhooks/payments", json={**valid, "event_id": "k" * 60_000})
    assert response.status_code == 422
    assert "k" * 100 not in response.text
    assert await order_rows(served.dsn, uuid) == rows

    missing = str(uuid4())
    response = await client.post("/webhooks/payments", json={**valid, "order_uuid": missing})
    assert response.status_code == 404
    assert (await client.get(f"/orders/{uuid}")).json()["currentState"] == "created"
    assert await order_rows(served.dsn, uuid) == rows


async def test_idempotency_key_header_replays_an_event(served: Served) -> None:
    client = served.client
    uuid = await create_order(client)
    history_before, _ = await order_rows(served.dsn, uuid)
    route = f"/orders/{uuid}/events/pay"

    response = await client.post(
        route, json={"amount_cents": 900}, headers={"Idempotency-Key": "req-1"}
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["toState"] == "paid"
    # A retry (header names are case-insensitive): the same result, nothing runs.
    response = await client.post(
        route, json={"amount_cents": 900}, headers={"idempotency-key": "req-1"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == result
    assert await order_rows(served.dsn, uuid) == (history_before + 1, 1)

    # The key on another event: 409 (ship is available; the key is not).
    ship = f"/orders/{uuid}/events/ship"
    response = await client.post(ship, headers={"Idempotency-Key": "req-1"})
    assert response.status_code == 409, response.text
    assert "req-1" in response.json()["detail"]
    assert await order_rows(served.dsn, uuid) == (history_before + 1, 1)
    # A key of exactly 256 bytes is a key.
    response = await client.post(ship, headers={"Idempotency-Key": "k" * 256})
    assert response.status_code == 200, response.text
    assert response.json()["toState"] == "shipped"
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
        assert response.status_code == 422, (len(key), response.text[:200])
        assert "idempotency_key" in response.json()["detail"]
        assert len(response.content) < SMALL_ANSWER
    assert await order_rows(served.dsn, uuid) == rows
    assert (await client.get(f"/orders/{uuid}")).json()["currentState"] == "created"


async def test_get_runtime_without_lifespan_is_a_configuration_error() -> None:
    from fastapi import FastAPI
    from starlette.requests import Request

    from duraflows_pg_async.contrib.fastapi import get_pool, get_runtime
    from duraflows_pg_async.errors import ConfigurationError

    app = FastAPI()
    request = Request({"type": "http", "app": app, "headers": []})
    with pytest.raises(ConfigurationError, match="workflow_lifespan"):
        get_runtime(request)
    with pytest.raises(ConfigurationError):
        get_pool(request)


async def test_failed_startup_closes_the_pool(database: str) -> None:
    """A runtime that cannot initialize: the lifespan raises and leaves no connection open."""
    from fastapi import FastAPI

    from duraflows_pg_async.contrib.fastapi import workflow_lifespan

    def build_runtime(persistence: Any) -> Any:
        return "not a runtime"

    lifespan = workflow_lifespan(
        dsn=database,
        build_runtime=build_runtime,
        pool_options={"server_settings": {"application_name": APP_NAME}},
    )
    from duraflows_pg_async.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="WorkflowRuntime"):
        async with lifespan(FastAPI()):
            pass
    await wait_until_no_app_connections(database)


def test_import_without_fastapi_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "duraflows_pg_async.contrib.fastapi", raising=False)
    with pytest.raises(ImportError, match=r"duraflows-pg-async\[fastapi\]"):
        importlib.import_module("duraflows_pg_async.contrib.fastapi")
