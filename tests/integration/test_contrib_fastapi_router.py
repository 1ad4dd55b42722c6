"""contrib.fastapi.workflow_router() served by uvicorn, called over real HTTP.

One app mounts the router three times on the runtime of workflow_lifespan: in full at
/workflows, read-only at /ro and behind an API-key dependency at /secure; a second app, whose
provider has neither idempotency nor durable execution, checks the 501s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import uuid4

import pytest
from helpers import ManualClock, wait_until

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from fastapi import Depends, FastAPI, Header, HTTPException  # noqa: E402

from duraflows_pg_async import (  # noqa: E402
    CommandRef,
    CommandRegistry,
    CommandResult,
    DefinitionRegistry,
    DurableExecutionPolicy,
    Event,
    ExecutionContext,
    State,
    Timeout,
    TimeoutRetryPolicy,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
)
from duraflows_pg_async.contrib.fastapi import (  # noqa: E402
    workflow_lifespan,
    workflow_router,
)

ORDER = WorkflowDefinition(
    name="order",
    initial_state="created",
    states={
        "created": State(
            events={
                "pay": Event(
                    target_state="paid",
                    commands=(CommandRef("record_payment"),),
                    metadata={"label": "Pay"},
                ),
                "explode": Event(target_state="paid", commands=(CommandRef("boom"),)),
                "cancel": Event(target_state="cancelled"),
                "expire": Event(
                    target_state="expired",
                    timeout=Timeout(minutes=1),
                    commands=(CommandRef("boom"),),
                ),
            }
        ),
        "paid": State(
            events={
                "ship": Event(target_state="shipped"),
                "refund": Event(target_state="shipped", commands=(CommandRef("refuse"),)),
            }
        ),
        "shipped": State(),
        "cancelled": State(),
        "expired": State(),
    },
)
API_KEY = "s3cret"


async def record_payment(subject: object, ctx: ExecutionContext) -> CommandResult:
    if isinstance(subject, dict) and "amount" in subject:
        ctx.context["paid"] = subject["amount"]
    return CommandResult(ok=True, code="PAID")


async def boom(subject: object, ctx: ExecutionContext) -> CommandResult:
    raise RuntimeError("boom")


async def refuse(subject: object, ctx: ExecutionContext) -> CommandResult:
    return CommandResult(ok=False, code="DECLINED")


def build_runtime_factory(clock: ManualClock) -> Any:
    def build_runtime(persistence: WorkflowPersistenceProvider) -> WorkflowRuntime:
        commands = CommandRegistry()
        commands.register("record_payment", record_payment)
        commands.register("boom", boom)
        commands.register("refuse", refuse)
        definitions = DefinitionRegistry()
        definitions.register(ORDER, command_names=commands.names())
        return WorkflowRuntime(
            definitions=definitions,
            commands=commands,
            persistence=persistence,
            clock=clock,
            timeout_retry=TimeoutRetryPolicy(max_attempts=1),
            durable_execution=DurableExecutionPolicy(max_attempts=1),
        )

    return build_runtime


async def require_api_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
    if x_api_key != API_KEY:
        raise HTTPException(401, "a valid X-API-Key header is required")


def create_app(dsn: str, clock: ManualClock, *, features: bool = True) -> FastAPI:
    options = {"idempotency": True, "durable_execution": True} if features else {}
    app = FastAPI(
        lifespan=workflow_lifespan(
            dsn=dsn,
            build_runtime=build_runtime_factory(clock),
            worker=False,
            pool_options={"min_size": 1, "max_size": 4},
            persistence_options=options,
        )
    )
    app.include_router(workflow_router())
    app.include_router(workflow_router(prefix="/ro", read_only=True, tags=["read-only"]))
    app.include_router(
        workflow_router(
            prefix="/secure", dependencies=[Depends(require_api_key)], max_body_bytes=1024
        )
    )
    return app


@dataclass
class Served:
    client: Any  # httpx.AsyncClient
    clock: ManualClock
    app: FastAPI

    @property
    def runtime(self) -> WorkflowRuntime:
        runtime: WorkflowRuntime = self.app.state.duraflows_runtime
        return runtime


@asynccontextmanager
async def serving(dsn: str, *, features: bool = True) -> AsyncIterator[Served]:
    clock = ManualClock(datetime.now(UTC))
    app = create_app(dsn, clock, features=features)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="on", log_level="warning", ws="none"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            task.result()
            pytest.fail("uvicorn stopped before it started")
        return bool(server.started)

    await wait_until(started, within=15, what="uvicorn listening")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield Served(client=client, clock=clock, app=app)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@pytest.fixture
async def served(database: str) -> AsyncIterator[Served]:
    async with serving(database) as served:
        yield served


async def create(client: Any, prefix: str = "/workflows", **body: Any) -> dict[str, Any]:
    response = await client.post(prefix, json={"workflowName": "order", **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_create_get_trigger_history_and_events(served: Served) -> None:
    client = served.client
    created = await create(
        client, context={"n": 1}, metadata={"orderId": "A-1"}, triggerMetadata={"by": "t"}
    )
    assert created["workflowName"] == "order"
    assert created["currentState"] == "created"
    assert created["context"] == {"n": 1}
    assert created["metadata"] == {"orderId": "A-1"}
    uuid = created["uuid"]

    response = await client.get(f"/workflows/{uuid}")
    assert response.status_code == 200
    assert response.json() == created

    response = await client.get(f"/workflows/{uuid}/events")
    assert response.status_code == 200
    assert response.json() == [
        {
            "eventName": "pay",
            "targetState": "paid",
            "hasCommands": True,
            "hasTimeout": False,
            "metadata": {"label": "Pay"},
        },
        {"eventName": "explode", "targetState": "paid", "hasCommands": True, "hasTimeout": False},
        {
            "eventName": "cancel",
            "targetState": "cancelled",
            "hasCommands": False,
            "hasTimeout": False,
        },
        {"eventName": "expire", "targetState": "expired", "hasCommands": True, "hasTimeout": True},
    ]

    response = await client.post(
        f"/workflows/{uuid}/events/pay",
        json={"subject": {"amount": 12}, "triggerMetadata": {"source": "http"}},
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["outcome"] == "success"
    assert (result["fromState"], result["toState"]) == ("created", "paid")
    assert result["commandResults"] == [{"ok": True, "code": "PAID"}]

    # A body is optional.
    response = await client.post(f"/workflows/{uuid}/events/ship")
    assert response.status_code == 200, response.text
    assert response.json()["toState"] == "shipped"

    response = await client.get(f"/workflows/{uuid}/history")
    assert response.status_code == 200
    history = response.json()
    assert [h["eventName"] for h in history] == ["ship", "pay"]
    assert history[1]["uuid"] == result["historyUuid"]
    assert history[1]["triggerMetadata"] == {"source": "http"}
    assert history[1]["commandResultsJson"] == [{"ok": True, "code": "PAID"}]
    response = await client.get(f"/workflows/{uuid}/history", params={"limit": 1, "offset": 1})
    assert [h["eventName"] for h in response.json()] == ["pay"]
    instance = (await client.get(f"/workflows/{uuid}")).json()
    assert instance["context"] == {"n": 1, "paid": 12}


async def test_instance_errors(served: Served) -> None:
    client = served.client
    missing = uuid4()
    for method, path in [
        ("GET", f"/workflows/{missing}"),
        ("GET", f"/workflows/{missing}/events"),
        ("POST", f"/workflows/{missing}/events/pay"),
        ("POST", f"/workflows/{missing}/rearm"),
    ]:
        response = await client.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert isinstance(response.json()["detail"], str)
    # The history of an unknown instance is empty (the runtime does not look the instance up).
    assert (await client.get(f"/workflows/{missing}/history")).json() == []

    # Not a uuid: 422, never another route.
    assert (await client.get("/workflows/not-a-uuid")).status_code == 422

    uuid = (await create(client))["uuid"]
    response = await client.post(f"/workflows/{uuid}/events/ship")
    assert response.status_code == 409
    assert response.json()["state"] == "created"
    # A mandatory command failed and the event has no error state: nothing changed.
    assert (await client.post(f"/workflows/{uuid}/events/pay")).status_code == 200
    response = await client.post(f"/workflows/{uuid}/events/refund")
    assert response.status_code == 409
    assert "no error state" in response.json()["detail"]
    assert (await client.get(f"/workflows/{uuid}")).json()["currentState"] == "paid"
    for params in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"limit": "x"}):
        response = await client.get(f"/workflows/{uuid}/history", params=params)
        assert response.status_code == 422, params

    # Unknown workflow name: 422 (the name is a body field; /workflows exists).
    response = await client.post("/workflows", json={"workflowName": "nope"})
    assert response.status_code == 422
    assert "nope" not in response.text
    for body in (
        {},
        {"workflowName": ""},
        {"workflowName": "order", "context": [1]},
        {"workflowName": "order", "context": {"big": 2**60}},
        {"workflowName": "order", "extra": 1},
        {"workflow_name": "order"},
    ):
        response = await client.post("/workflows", json=body)
        assert response.status_code == 422, body
    response = await client.post(
        "/workflows", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


async def test_errors_do_not_echo_the_request(served: Served) -> None:
    client = served.client
    marker = "ECHO" * 50
    response = await client.post(
        "/workflows", json={"workflowName": marker * 10, "context": {"x": marker}}
    )
    assert response.status_code == 422
    assert "ECHOECHO" not in response.text
    response = await client.post("/workflows", json={"workflowName": "order", marker: 1})
    assert response.status_code == 422
    assert marker not in response.text
    assert len(response.text) < 1000
    uuid = (await create(client))["uuid"]
    response = await client.post(
        f"/workflows/{uuid}/events/pay", json={"idempotencyKey": "x" * 300}
    )
    assert response.status_code == 422
    assert "x" * 100 not in response.text
    # A key within pydantic's 256 characters but over the runtime's 256 bytes: the runtime's
    # InvalidArgumentError, clipped.
    response = await client.post(
        f"/workflows/{uuid}/events/pay", json={"idempotencyKey": "é" * 200}
    )
    assert response.status_code == 422
    assert "é" not in response.text
    assert len(response.json()["detail"]) <= 300
    # The runtime's messages quote event names and keys: the router answers its own.
    long_event = "EV" * 100
    response = await client.post(f"/workflows/{uuid}/events/{long_event}")
    assert response.status_code == 409
    assert response.json() == {
        "detail": "the event is not available in the current state",
        "state": "created",
    }
    key = "KEY" * 80
    assert (
        await client.post(f"/workflows/{uuid}/events/pay", json={"idempotencyKey": key})
    ).status_code == 200
    response = await client.post(f"/workflows/{uuid}/events/ship", json={"idempotencyKey": key})
    assert response.status_code == 409
    assert "KEY" not in response.text


async def test_nul_characters_are_422(served: Served) -> None:
    client = served.client
    response = await client.post(
        "/workflows", json={"workflowName": "order", "context": {"a": "\x00"}}
    )
    assert response.status_code == 422, response.text
    uuid = (await create(client))["uuid"]
    response = await client.post(f"/workflows/{uuid}/events/pay", json={"idempotencyKey": "k\x00"})
    assert response.status_code == 422, response.text
    response = await client.post(f"/workflows/{uuid}/events/pa%00y")
    assert response.status_code in (409, 422), response.text


async def test_bodies_over_the_limit_are_413(served: Served) -> None:
    client = served.client
    big = {"workflowName": "order", "context": {"pad": "x" * (65 * 1024)}}
    response = await client.post("/workflows", json=big)
    assert response.status_code == 413

    async def chunked() -> AsyncIterator[bytes]:
        yield b'{"workflowName": "order", "context": {"pad": "'
        for _ in range(70):
            yield b"x" * 1024
        yield b'"}}'

    response = await client.post(
        "/workflows", content=chunked(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    # /secure was given max_body_bytes=1024.
    response = await client.post(
        "/secure",
        json={"workflowName": "order", "context": {"pad": "x" * 2000}},
        headers={"X-API-Key": API_KEY},
    )
    assert response.status_code == 413
    assert await served.runtime.find_parked_timeouts() == []  # nothing odd stored


async def test_idempotent_trigger_replays(served: Served) -> None:
    client = served.client
    uuid = (await create(client))["uuid"]
    body = {"subject": {"amount": 5}, "idempotencyKey": "k-1", "idempotencyFingerprint": "f-1"}
    first = await client.post(f"/workflows/{uuid}/events/pay", json=body)
    assert first.status_code == 200, first.text
    again = await client.post(f"/workflows/{uuid}/events/pay", json=body)
    assert again.status_code == 200
    assert again.json() == first.json()
    assert len((await client.get(f"/workflows/{uuid}/history")).json()) == 1
    # The same key for another event, or with another fingerprint: 409.
    response = await client.post(f"/workflows/{uuid}/events/ship", json={"idempotencyKey": "k-1"})
    assert response.status_code == 409
    response = await client.post(
        f"/workflows/{uuid}/events/pay",
        json={**body, "idempotencyFingerprint": "f-2"},
    )
    assert response.status_code == 409


async def test_enqueue_get_cancel_and_retry_executions(served: Served) -> None:
    client = served.client
    uuid = (await create(client))["uuid"]
    body = {"idempotencyKey": "q-1", "subject": {"amount": 7}}
    response = await client.post(f"/workflows/{uuid}/executions/pay", json=body)
    assert response.status_code == 202, response.text
    execution = response.json()
    assert execution["status"] == "pending"
    assert execution["workflowInstanceUuid"] == uuid
    assert execution["eventName"] == "pay"
    assert execution["subject"] == {"amount": 7}
    # The same key again: the same execution.
    again = await client.post(f"/workflows/{uuid}/executions/pay", json=body)
    assert again.status_code == 202
    assert again.json()["uuid"] == execution["uuid"]

    response = await client.get(f"/workflows/executions/{execution['uuid']}")
    assert response.status_code == 200
    assert response.json()["uuid"] == execution["uuid"]
    # The instance is busy with its queued execution.
    response = await client.post(f"/workflows/{uuid}/events/cancel")
    assert response.status_code == 409
    # Only a parked execution can be retried.
    response = await client.post(f"/workflows/executions/{execution['uuid']}/retry")
    assert response.status_code == 409

    response = await client.post(f"/workflows/executions/{execution['uuid']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    response = await client.post(f"/workflows/executions/{execution['uuid']}/cancel")
    assert response.status_code == 409
    assert response.json()["executionStatus"] == "cancelled"
    assert (await client.post(f"/workflows/{uuid}/events/cancel")).status_code == 200

    # A command that raises parks the execution (max_attempts=1); retry makes it pending.
    uuid = (await create(client))["uuid"]
    response = await client.post(
        f"/workflows/{uuid}/executions/explode", json={"idempotencyKey": "q-2"}
    )
    assert response.status_code == 202
    parked_uuid = response.json()["uuid"]
    await served.runtime.process_pending_executions()
    response = await client.get(f"/workflows/executions/{parked_uuid}")
    assert response.json()["status"] == "parked"
    response = await client.post(f"/workflows/executions/{parked_uuid}/retry")
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["attempts"]) == ("pending", 0)

    missing = uuid4()
    for method, path in [
        ("GET", f"/workflows/executions/{missing}"),
        ("POST", f"/workflows/executions/{missing}/retry"),
        ("POST", f"/workflows/executions/{missing}/cancel"),
        ("POST", f"/workflows/{missing}/executions/pay"),
    ]:
        response = await client.request(method, path, json={"idempotencyKey": "z"})
        assert response.status_code == 404, (method, path, response.text)
    # The key is required; the event must be available.
    assert (await client.post(f"/workflows/{uuid}/executions/pay", json={})).status_code == 422
    response = await client.post(
        f"/workflows/{uuid}/executions/ship", json={"idempotencyKey": "q-3"}
    )
    assert response.status_code == 409


async def test_parked_timeouts_and_rearm(served: Served) -> None:
    client = served.client
    uuid = (await create(client))["uuid"]
    served.clock.advance(timedelta(minutes=2))
    result = await served.runtime.process_expired_workflows()
    assert [p.uuid for p in result.parked] != []
    response = await client.get("/workflows/parked")
    assert response.status_code == 200
    (parked,) = response.json()
    assert parked["uuid"] == uuid
    assert parked["timeoutRetry"]["parkedAt"] is not None
    assert (await client.get("/workflows/parked", params={"workflow": "other"})).json() == []
    assert len((await client.get("/workflows/parked", params={"limit": 1})).json()) == 1
    assert (await client.get("/workflows/parked", params={"limit": 0})).status_code == 422
    response = await client.get("/workflows/parked", params={"workflow": "a\x00b"})
    assert response.status_code == 422
    assert response.json() == {"detail": "workflow must not contain NUL characters"}

    response = await client.post(f"/workflows/{uuid}/rearm")
    assert response.status_code == 200
    assert response.json()["timeoutRetry"] is None
    assert (await client.get("/workflows/parked")).json() == []


async def test_list_instances_filters_and_pages(served: Served) -> None:
    client = served.client
    uuids = sorted([(await create(client))["uuid"] for _ in range(5)])
    paid = uuids[1]
    assert (await client.post(f"/workflows/{paid}/events/pay")).status_code == 200

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["after"] = cursor
        response = await client.get("/workflows", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"items", "nextCursor"}
        assert len(page["items"]) <= 2
        seen += [item["uuid"] for item in page["items"]]
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert (pages, seen) == (3, uuids)
    everything = (await client.get("/workflows")).json()
    assert [item["uuid"] for item in everything["items"]] == uuids
    assert everything["nextCursor"] is None
    assert everything["items"][0]["workflowName"] == "order"

    async def listed(**params: Any) -> list[str]:
        response = await client.get("/workflows", params=params)
        assert response.status_code == 200, response.text
        return [item["uuid"] for item in response.json()["items"]]

    assert await listed(workflow="order", state="paid") == [paid]
    assert await listed(workflow="order", state="created") == [u for u in uuids if u != paid]
    assert await listed(workflow="other") == []
    version = everything["items"][0]["definitionVersion"]
    assert version == 1
    assert await listed(workflow="order", version=version) == uuids
    assert await listed(workflow="order", version=version + 1) == []

    # Timeouts: the four "created" ones fall due; processing parks them (boom, one attempt);
    # rearming one makes it due again.
    assert await listed(status="due") == []
    served.clock.advance(timedelta(minutes=2))
    created = [u for u in uuids if u != paid]
    assert await listed(status="due") == created
    await served.runtime.process_expired_workflows()
    assert await listed(status="parked") == created
    assert (await client.post(f"/workflows/{created[0]}/rearm")).status_code == 200
    assert await listed(status="due") == [created[0]]
    assert await listed(status="parked", workflow="order", state="created") == created[1:]
    assert await listed(status="retrying") == []
    assert await listed(status="claimed") == []

    # The read-only router lists too.
    response = await client.get("/ro", params={"status": "due"})
    assert response.status_code == 200
    assert [item["uuid"] for item in response.json()["items"]] == [created[0]]


async def test_list_instances_refusals_are_422(served: Served) -> None:
    client = served.client
    for _ in range(3):
        await create(client)
    first = (await client.get("/workflows", params={"limit": 1})).json()
    cursor = first["nextCursor"]
    assert cursor is not None
    assert (await client.get("/workflows", params={"limit": 1, "after": cursor})).status_code == 200
    for params in (
        {"limit": 0},
        {"limit": 1001},
        {"limit": "many"},
        {"status": "sleeping"},
        {"version": 0, "workflow": "order"},
        {"version": 2**31, "workflow": "order"},
        {"workflow": ""},
        {"workflow": "w" * 256},
        {"after": ""},
        {"after": "c" * 2001},
    ):
        response = await client.get("/workflows", params=params)
        assert response.status_code == 422, params
        assert "sleeping" not in response.text
    for params, detail in (
        ({"state": "created"}, "state needs workflow"),
        ({"version": 1}, "version needs workflow"),
        ({"workflow": "a\x00b"}, "workflow must not contain NUL characters"),
        ({"workflow": "order", "state": "a\x00b"}, "state must not contain NUL characters"),
    ):
        response = await client.get("/workflows", params=params)
        assert response.status_code == 422, params
        assert response.json() == {"detail": detail}, params
    # Not a cursor, an edited one, one of another listing: 422 without the cursor's text.
    for params in (
        {"after": "not-a-cursor-SECRETISH"},
        {"after": cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB")},
        {"after": cursor, "workflow": "order"},
    ):
        response = await client.get("/workflows", params=params)
        assert response.status_code == 422, params
        detail = response.json()["detail"]
        assert isinstance(detail, str)
        assert detail.startswith("after "), detail
        assert params["after"] not in response.text
        assert "SECRETISH" not in response.text


async def test_stats_counts_per_workflow_and_state(served: Served) -> None:
    client = served.client
    assert (await client.get("/workflows/stats")).json() == []
    uuids = [(await create(client))["uuid"] for _ in range(3)]
    assert (await client.post(f"/workflows/{uuids[2]}/events/pay")).status_code == 200
    served.clock.advance(timedelta(minutes=2))
    await served.runtime.process_expired_workflows()
    assert (await client.post(f"/workflows/{uuids[0]}/rearm")).status_code == 200
    due_at = (await client.get(f"/workflows/{uuids[0]}")).json()["expiresAt"]

    response = await client.get("/workflows/stats")
    assert response.status_code == 200, response.text
    assert response.json() == [
        {
            "workflowName": "order",
            "state": "created",
            "instances": 2,
            "due": 1,
            "retrying": 0,
            "parked": 1,
            "claimed": 0,
            "oldestDueAt": due_at,
        },
        {
            "workflowName": "order",
            "state": "paid",
            "instances": 1,
            "due": 0,
            "retrying": 0,
            "parked": 0,
            "claimed": 0,
            "oldestDueAt": None,
        },
    ]
    assert due_at.endswith("Z")
    assert (await client.get("/workflows/stats", params={"workflow": "order"})).json() == (
        response.json()
    )
    assert (await client.get("/workflows/stats", params={"workflow": "other"})).json() == []
    assert (await client.get("/ro/stats")).json() == response.json()
    for params in ({"workflow": ""}, {"workflow": "w" * 256}, {"workflow": "a\x00b"}):
        assert (await client.get("/workflows/stats", params=params)).status_code == 422


async def test_read_only_leaves_out_every_mutation(served: Served) -> None:
    client = served.client
    uuid = (await create(client))["uuid"]
    execution = (
        await client.post(f"/workflows/{uuid}/executions/pay", json={"idempotencyKey": "r"})
    ).json()["uuid"]
    for path in (
        "/ro",
        "/ro/stats",
        f"/ro/{uuid}",
        f"/ro/{uuid}/events",
        f"/ro/{uuid}/history",
        "/ro/parked",
        f"/ro/executions/{execution}",
    ):
        assert (await client.get(path)).status_code == 200, path
    for path in (
        "/ro",
        f"/ro/{uuid}/events/pay",
        f"/ro/{uuid}/executions/pay",
        f"/ro/{uuid}/rearm",
        f"/ro/executions/{execution}/retry",
        f"/ro/executions/{execution}/cancel",
    ):
        response = await client.post(path, json={"workflowName": "order", "idempotencyKey": "r"})
        assert response.status_code in (404, 405), path
    paths = served.app.openapi()["paths"]
    assert not any("post" in item for path, item in paths.items() if path.startswith("/ro"))
    assert (await client.get(f"/workflows/executions/{execution}")).json()["status"] == "pending"


async def test_dependencies_guard_every_route(served: Served) -> None:
    client = served.client
    uuid = (await create(client))["uuid"]
    for method, path in [
        ("POST", "/secure"),
        ("GET", f"/secure/{uuid}"),
        ("GET", f"/secure/{uuid}/history"),
        ("POST", f"/secure/{uuid}/events/pay"),
        ("GET", "/secure/parked"),
        ("GET", "/secure"),
        ("GET", "/secure/stats"),
    ]:
        response = await client.request(method, path, json={"workflowName": "order"})
        assert response.status_code == 401, (method, path)
        response = await client.request(
            method, path, headers={"X-API-Key": "wrong"}, json={"workflowName": "order"}
        )
        assert response.status_code == 401, (method, path)
    response = await client.get(f"/secure/{uuid}", headers={"X-API-Key": API_KEY})
    assert response.status_code == 200
    response = await client.post(
        f"/secure/{uuid}/events/pay", headers={"X-API-Key": API_KEY}, json={}
    )
    assert response.status_code == 200


async def test_openapi_lists_every_body_and_response(served: Served) -> None:
    response = await served.client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    schemas = spec["components"]["schemas"]
    for name in (
        "CreateInstanceRequest",
        "TriggerEventRequest",
        "EnqueueEventRequest",
        "WorkflowInstanceResponse",
        "HistoryRecordResponse",
        "ExecutionResultResponse",
        "AvailableEventResponse",
        "WorkflowExecutionResponse",
        "InstancePageResponse",
        "StateStatsResponse",
        "ErrorResponse",
    ):
        assert name in schemas, name
    assert "workflowName" in schemas["CreateInstanceRequest"]["properties"]
    assert "currentState" in schemas["WorkflowInstanceResponse"]["properties"]
    assert schemas["EnqueueEventRequest"]["required"] == ["idempotencyKey"]
    assert set(schemas["InstancePageResponse"]["properties"]) == {"items", "nextCursor"}
    assert set(schemas["StateStatsResponse"]["properties"]) == {
        "workflowName",
        "state",
        "instances",
        "due",
        "retrying",
        "parked",
        "claimed",
        "oldestDueAt",
    }
    paths = spec["paths"]
    expected = {
        ("post", "/workflows"): "201",
        ("get", "/workflows"): "200",
        ("get", "/workflows/stats"): "200",
        ("get", "/workflows/{instance_uuid}"): "200",
        ("get", "/workflows/{instance_uuid}/history"): "200",
        ("get", "/workflows/{instance_uuid}/events"): "200",
        ("post", "/workflows/{instance_uuid}/events/{event_name}"): "200",
        ("post", "/workflows/{instance_uuid}/executions/{event_name}"): "202",
        ("post", "/workflows/{instance_uuid}/rearm"): "200",
        ("get", "/workflows/parked"): "200",
        ("get", "/workflows/executions/{execution_uuid}"): "200",
        ("post", "/workflows/executions/{execution_uuid}/retry"): "200",
        ("post", "/workflows/executions/{execution_uuid}/cancel"): "200",
    }
    listing = {p["name"]: p for p in paths["/workflows"]["get"]["parameters"]}
    assert set(listing) == {"workflow", "state", "version", "status", "limit", "after"}
    assert listing["limit"]["schema"]["maximum"] == 1000
    assert "requestBody" not in paths["/workflows"]["get"]
    for (method, path), status in expected.items():
        operation = paths[path][method]
        content = operation["responses"][status]["content"]["application/json"]
        assert content["schema"], (method, path)
        assert "422" in operation["responses"], (method, path)
        takes_body = method == "post" and not path.endswith(("/rearm", "/retry", "/cancel"))
        assert ("requestBody" in operation) == takes_body, (method, path)


async def test_not_enabled_features_are_501(database: str) -> None:
    async with serving(database, features=False) as served:
        client = served.client
        uuid = (await create(client))["uuid"]
        response = await client.post(f"/workflows/{uuid}/events/pay", json={"idempotencyKey": "k"})
        assert response.status_code == 501
        response = await client.post(
            f"/workflows/{uuid}/executions/pay", json={"idempotencyKey": "k"}
        )
        assert response.status_code == 501
        assert (await client.get(f"/workflows/executions/{uuid4()}")).status_code == 501
        # Without a key the event runs as usual.
        assert (await client.post(f"/workflows/{uuid}/events/pay")).status_code == 200
