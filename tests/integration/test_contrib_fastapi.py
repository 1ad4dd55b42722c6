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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

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
    spec.loader.exec_module(module)
    return module


class MovableClock:
    def __init__(self) -> None:
        self.current = datetime.now(UTC)

    def now(self) -> datetime:
        return self.current


@dataclass
class Served:
    client: Any  # httpx.AsyncClient
    clock: MovableClock
    server: Any  # uvicorn.Server
    task: asyncio.Task[None]
    dsn: str

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
    for _ in range(200):
        if await app_connections(dsn) == 0:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"connections of {APP_NAME} are still open")


@pytest.fixture
async def served(empty_database: str) -> AsyncIterator[Served]:
    """The example on an unmigrated database (the lifespan migrates), on a free TCP port."""
    clock = MovableClock()
    app = load_example().create_app(
        empty_database,
        clock=clock,
        worker_options={"poll_interval": 0.05},
        pool_options={
            "min_size": 1,
            "max_size": 4,
            "server_settings": {"application_name": APP_NAME},
        },
    )
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="on", log_level="warning", ws="none"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(15):
        while not server.started:
            if task.done():
                task.result()
                pytest.fail("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        served = Served(client=client, clock=clock, server=server, task=task, dsn=empty_database)
        try:
            yield served
        finally:
            await served.shutdown()


async def create_order(client: Any, **context: Any) -> str:
    response = await client.post("/orders", json={"context": context})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["state"] == "created"
    return str(body["uuid"])


async def test_create_trigger_and_read(served: Served) -> None:
    uuid = await create_order(served.client, order_id="A-1")
    response = await served.client.post(f"/orders/{uuid}/events/pay", json={"amount_cents": 900})
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "success"
    assert response.json()["state"] == "paid"
    response = await served.client.post(f"/orders/{uuid}/events/ship")
    assert response.json()["state"] == "shipped"

    response = await served.client.get(f"/orders/{uuid}")
    assert response.status_code == 200
    body = response.json()
    assert body["state"] == "shipped"
    assert body["context"] == {"order_id": "A-1", "paid_cents": 900}
    assert [(h["event"], h["from_state"], h["to_state"]) for h in body["history"]] == [
        ("ship", "paid", "shipped"),
        ("pay", "created", "paid"),
    ]


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
    assert response.json()["state"] == "paid"
    invoices = (await served.client.get(f"/invoices/{uuid}")).json()
    assert invoices == [{"id": invoice_id, "amount_cents": 1250}]
    history = (await served.client.get(f"/orders/{uuid}")).json()["history"]
    assert history[0]["trigger_metadata"] == {"invoiceId": invoice_id}

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
    served.clock.current += timedelta(days=1, minutes=1)

    async with asyncio.timeout(10):
        while True:
            body = (await served.client.get(f"/orders/{uuid}")).json()
            if body["state"] == "expired":
                break
            await asyncio.sleep(0.05)
    assert body["history"][0]["event"] == "expire"
    assert body["history"][0]["trigger_metadata"] == {"source": "timeout"}
    assert (await served.client.get(f"/orders/{paid}")).json()["state"] == "paid"


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


async def test_get_runtime_without_lifespan_is_a_configuration_error() -> None:
    from fastapi import FastAPI
    from starlette.requests import Request

    from duraflows_pg_async import ConfigurationError
    from duraflows_pg_async.contrib.fastapi import get_pool, get_runtime

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
    from duraflows_pg_async import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="WorkflowRuntime"):
        async with lifespan(FastAPI()):
            pass
    await wait_until_no_app_connections(database)


def test_import_without_fastapi_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "duraflows_pg_async.contrib.fastapi", raising=False)
    with pytest.raises(ImportError, match=r"duraflows-pg-async\[fastapi\]"):
        importlib.import_module("duraflows_pg_async.contrib.fastapi")
