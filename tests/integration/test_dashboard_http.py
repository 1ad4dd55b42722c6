"""The dashboard over HTTP (httpx's ASGI transport) on a real database: pages, escaping,
cross-site refusal, read-only, error pages, paging, mounting under a prefix."""

from __future__ import annotations

import html as html_module
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import pytest
from dashboard_seed import XSS, Shop, seed, shop_runtime
from fastapi import FastAPI
from helpers import ManualClock

from duraflows_pg_async import (
    CommandRegistry,
    DefinitionRegistry,
    WorkflowRuntime,
    memory_workflow_providers,
    pg_workflow_providers,
)
from duraflows_pg_async._core import metrics as _metrics
from duraflows_pg_async.dashboard import dashboard_app
from duraflows_pg_async.errors import InvalidArgumentError

HOST = "http://dash.test"


@pytest.fixture
async def shop(pool: asyncpg.Pool, clock: ManualClock) -> Shop:
    runtime, down = shop_runtime(pg_workflow_providers(pool, durable_execution=True), clock)
    return await seed(runtime, down, clock)


async def _client(app: object) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url=HOST) as client:
        yield client


@pytest.fixture
async def client(shop: Shop) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _client(dashboard_app(shop.runtime)):
        yield client


def token_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "the page has no form"
    return found.group(1)


async def post(
    client: httpx.AsyncClient, path: str, token: str | None, *, origin: str | None = HOST
) -> httpx.Response:
    headers = {} if origin is None else {"origin": origin}
    data = {"next": "/"} if token is None else {"csrf_token": token}
    return await client.post(path, data=data, headers=headers)


async def test_every_page_renders(client: httpx.AsyncClient, shop: Shop) -> None:
    pages = {
        "/": ["state &#34;approved · 4 (1 retrying, 1 parked)&#34; as s1", "orders"],
        "/instances": [str(shop.parked), str(shop.xss)],
        f"/instances/{shop.history}": ["shipped", "approve", "ship", "&#34;by&#34;: &#34;ops&#34;"],
        "/timeouts": [str(shop.parked), "carrier API unreachable"],
        "/timeouts?status=retrying": [str(shop.retrying)],
        "/executions": [str(shop.parked_execution), str(shop.pending_execution)],
        "/executions?status=parked": [str(shop.parked_execution)],
        f"/executions/{shop.parked_execution}": ["ship-30", "carrier API unreachable"],
    }
    for path, wanted in pages.items():
        response = await client.get(path)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in response.headers["content-security-policy"]
        for text in wanted:
            assert text in response.text, (path, text)
    parked_only = (await client.get("/executions?status=parked")).text
    assert str(shop.pending_execution) not in parked_only


async def test_the_workflows_page_draws_every_state_with_its_counts(
    client: httpx.AsyncClient,
) -> None:
    html = (await client.get("/")).text
    diagram = re.search(r'<pre class="mermaid diagram">(.*?)</pre>', html, re.S)
    assert diagram
    text = html_module.unescape(diagram.group(1))
    for line in ("new · 4", "shipped · 1", "rejected · 1", "class s1 parked"):
        assert line in text, line
    assert 'href="/instances?workflow=orders&amp;state=approved&amp;status=parked">1</a>' in html


async def test_user_data_is_escaped(client: httpx.AsyncClient, shop: Shop) -> None:
    html = (await client.get(f"/instances/{shop.xss}")).text
    assert XSS not in html
    assert "<img src=x" not in html
    # In the context's JSON (its quotes escaped by JSON, then by HTML) and as a metadata key.
    assert "&lt;script&gt;alert(\\&#34;owned\\&#34;)&lt;/script&gt;&lt;img" in html


async def test_rearm_needs_this_sites_token_and_origin(
    client: httpx.AsyncClient, shop: Shop
) -> None:
    page = await client.get("/timeouts")
    token = token_of(page.text)
    assert page.cookies.get("duraflows_csrf") == token
    cookie = page.headers["set-cookie"].lower()
    assert "samesite=strict" in cookie
    assert "httponly" in cookie
    path = f"/instances/{shop.parked}/rearm"
    refused = [
        await post(client, path, None),
        await post(client, path, "x" * 43),
        await post(client, path, token, origin="http://evil.test"),
        await post(client, path, token, origin="null"),
        await post(client, path, token, origin=None),  # neither Origin nor Referer
    ]
    assert [r.status_code for r in refused] == [403] * 5
    assert "cross-site request refused" in refused[0].text
    still = await shop.runtime.get_instance(shop.parked)
    assert still is not None
    assert still.timeout_retry is not None

    # A Referer of this site stands in for a missing Origin.
    done = await client.post(
        path, data={"csrf_token": token, "next": "/timeouts"}, headers={"referer": HOST + "/x"}
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/timeouts"
    rearmed = await shop.runtime.get_instance(shop.parked)
    assert rearmed is not None
    assert rearmed.timeout_retry is None
    after = await client.get("/timeouts")
    assert f"Re-armed the timeout of instance {shop.parked}" in after.text
    assert str(shop.parked) not in after.text.split("</p>", 1)[1]
    # The message is shown once.
    assert "Re-armed" not in (await client.get("/timeouts")).text


async def test_a_foreign_next_is_not_followed(client: httpx.AsyncClient, shop: Shop) -> None:
    token = token_of((await client.get("/timeouts")).text)
    for foreign in ("//evil.test/x", "https://evil.test/", "\\\\evil.test", "x"):
        response = await client.post(
            f"/instances/{shop.retrying}/rearm",
            data={"csrf_token": token, "next": foreign},
            headers={"origin": HOST},
        )
        assert response.status_code == 303
        assert response.headers["location"] == f"/instances/{shop.retrying}"


async def test_retry_and_cancel_an_execution(client: httpx.AsyncClient, shop: Shop) -> None:
    token = token_of((await client.get("/executions")).text)
    retried = await post(client, f"/executions/{shop.parked_execution}/retry", token)
    assert retried.status_code == 303
    execution = await shop.runtime.get_execution(shop.parked_execution)
    assert execution is not None
    assert execution.status == "pending"
    cancelled = await post(client, f"/executions/{shop.pending_execution}/cancel", token)
    assert cancelled.status_code == 303
    execution = await shop.runtime.get_execution(shop.pending_execution)
    assert execution is not None
    assert execution.status == "cancelled"
    # A refusal of the runtime comes back as a message, not an error page.
    again = await post(client, f"/executions/{shop.pending_execution}/retry", token)
    assert again.status_code == 303
    page = await client.get(again.headers["location"])
    assert 'class="flash error"' in page.text


async def test_read_only_renders_no_form_and_refuses_posts(shop: Shop) -> None:
    async for client in _client(dashboard_app(shop.runtime, read_only=True)):
        for path in ("/timeouts", "/executions", f"/instances/{shop.parked}"):
            html = (await client.get(path)).text
            assert '<form method="post"' not in html, path
            assert "read-only" in html
        page = await client.get("/timeouts")
        token = page.cookies.get("duraflows_csrf")
        for path in (
            f"/instances/{shop.parked}/rearm",
            f"/executions/{shop.parked_execution}/retry",
            f"/executions/{shop.pending_execution}/cancel",
        ):
            response = await post(client, path, token)
            assert response.status_code == 403, path
            assert "read-only" in response.text
    instance = await shop.runtime.get_instance(shop.parked)
    assert instance is not None
    assert instance.timeout_retry is not None


async def test_error_pages(client: httpx.AsyncClient, shop: Shop) -> None:
    cases = {
        f"/instances/{uuid4()}": (404, "not found"),
        "/instances/not-a-uuid": (404, "not a uuid"),
        f"/executions/{uuid4()}": (404, "no queued execution"),
        "/nowhere": (404, "Not Found"),
        "/instances?version=x": (400, "Bad parameter &#39;version&#39;"),
        "/instances?version=0": (400, "Bad parameter &#39;version&#39;"),
        "/instances?state=new": (400, "Bad parameter &#39;state&#39;: needs a workflow"),
        "/instances?status=late": (400, "Bad parameter &#39;status&#39;"),
        "/instances?limit=5000": (400, "Bad parameter &#39;limit&#39;"),
        "/instances?after=garbage": (400, "Bad parameter &#39;after&#39;"),
        "/timeouts?status=due": (400, "Bad parameter &#39;status&#39;"),
        "/executions?status=late": (400, "Bad parameter &#39;status&#39;"),
        "/executions?after=garbage": (400, "Bad parameter &#39;after&#39;"),
    }
    for path, (status, text) in cases.items():
        response = await client.get(path)
        assert response.status_code == status, (path, response.text)
        assert text.lower() in response.text.lower(), (path, response.text)
    # A cursor of one listing is refused by another.
    page = await client.get("/instances?limit=1")
    cursor = re.search(r'after=([^"&]+)', page.text)
    assert cursor
    other = await client.get(f"/instances?workflow=orders&after={cursor.group(1)}")
    assert other.status_code == 400
    assert "other filters" in other.text


async def test_instances_page_by_page(client: httpx.AsyncClient, shop: Shop) -> None:
    for n in range(55):
        await shop.runtime.create_instance("orders", context={"bulk": n})
    seen: list[str] = []
    path: str | None = "/instances?workflow=orders&state=new"
    while path is not None:
        html = (await client.get(path)).text
        seen += re.findall(r'<a class="uuid" href="/instances/([0-9a-f-]{36})"', html)
        found = re.search(r'<a class="next" href="([^"]+)"', html)
        path = None if found is None else found.group(1).replace("&amp;", "&")
        assert len(seen) < 200
    assert len(seen) == 55 + 4
    assert seen == sorted(seen)


async def test_mounted_under_a_prefix(shop: Shop) -> None:
    host = FastAPI()
    host.mount("/ops", dashboard_app(shop.runtime))
    async for client in _client(host):
        first = await client.get("/ops/")
        assert "path=/ops;" in first.headers["set-cookie"].lower()
        html = first.text
        assert 'href="/ops/static/dashboard.css"' in html
        assert 'src="/ops/static/mermaid.min.js"' in html
        assert 'href="/ops/instances?workflow=orders&amp;state=new"' in html
        assert (await client.get("/ops/static/mermaid.min.js")).status_code == 200
        page = await client.get("/ops/timeouts")
        assert 'name="next" value="/timeouts"' in page.text
        assert f'action="/ops/instances/{shop.parked}/rearm"' in page.text
        done = await client.post(
            f"/ops/instances/{shop.parked}/rearm",
            data={"csrf_token": token_of(page.text), "next": "/timeouts"},
            headers={"origin": HOST},
        )
        assert done.status_code == 303
        assert done.headers["location"] == "/ops/timeouts"
        assert "Re-armed" in (await client.get("/ops/timeouts")).text


async def test_without_an_execution_store(pool: asyncpg.Pool, clock: ManualClock) -> None:
    runtime, _ = shop_runtime(pg_workflow_providers(pool), clock)
    async for client in _client(dashboard_app(runtime)):
        html = (await client.get("/executions")).text
        assert "Queued executions are off" in html
        assert (await client.get(f"/executions/{uuid4()}")).status_code == 404
        assert (await client.get("/")).status_code == 200


async def test_refuses_what_is_not_a_runtime() -> None:
    with pytest.raises(InvalidArgumentError, match="WorkflowRuntime"):
        dashboard_app(object())  # type: ignore[arg-type]
    runtime, _ = shop_runtime(memory_workflow_providers())
    with pytest.raises(InvalidArgumentError, match="read_only"):
        dashboard_app(runtime, read_only=1)  # type: ignore[arg-type]


async def test_an_empty_runtime_reads_the_stored_definitions(
    pool: asyncpg.Pool, shop: Shop
) -> None:
    """As ``duraflows-pg dashboard`` runs it: no registered workflow, the stored snapshots."""
    runtime = WorkflowRuntime(
        definitions=DefinitionRegistry(),
        commands=CommandRegistry(),
        persistence=pg_workflow_providers(pool, durable_execution=True),
    )
    async for client in _client(dashboard_app(runtime)):
        home = (await client.get("/")).text
        assert "state &#34;approved · 4 (" in home
        page = (await client.get(f"/instances/{shop.parked}")).text
        assert "<strong>ship</strong> → shipped" in page
        assert "<strong>cancel</strong> → rejected" in page


def test_the_dashboard_names_its_extra_when_starlette_is_missing() -> None:
    code = (
        "import sys; sys.modules['starlette'] = None\n"
        "try:\n"
        "    import duraflows_pg_async.dashboard\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'duraflows-pg-async[dashboard]'" in result.stdout


def own_collector(app: Any) -> Any:
    """The dashboard's own metrics collector, once a scrape made it."""
    return app.state.duraflows_metrics


async def test_metrics_of_its_own_or_the_applications(shop: Shop) -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_client.parser import text_string_to_metric_families

    from duraflows_pg_async.metrics import PrometheusMetrics

    def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    # Its own collector, on a private registry, made at the first scrape (until then the
    # runtime's hooks cost nothing): the database figures of the seeded shop.
    dashboard = dashboard_app(shop.runtime, read_only=True)
    assert own_collector(dashboard) is None
    assert not _metrics.ACTIVE
    try:
        async for client in _client(dashboard):
            response = await client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            own = samples(response.text)
            assert own[("duraflows_stats_up", ())] == 1
            parked = [v for (name, _), v in own.items() if name == "duraflows_parked_timeouts"]
            assert sum(parked) == 1  # the seeded shop parks one timeout
            assert (await client.get("/metrics")).status_code == 200  # the same collector
    finally:
        made = own_collector(dashboard)
        assert made is not None
        made.close()
    assert not _metrics.ACTIVE

    # The application's collector: what the runtime did since it was made is counted there.
    registry = CollectorRegistry()
    collector = PrometheusMetrics(shop.runtime, registry=registry)
    try:
        await shop.runtime.create_instance("orders")
        async for client in _client(dashboard_app(shop.runtime, metrics=collector)):
            text = (await client.get("/metrics")).text
        assert samples(text)[("duraflows_stats_up", ())] == 1
        assert "duraflows_transitions_total" in text
    finally:
        collector.close()
    with pytest.raises(InvalidArgumentError, match="metrics must be a PrometheusMetrics"):
        dashboard_app(shop.runtime, metrics=registry)  # type: ignore[arg-type]
