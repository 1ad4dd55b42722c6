"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright, clicks
through every page and action over uvicorn and a real database.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``) and the ``playwright`` package; no
browser is downloaded. Without them the tests are skipped, unless DURAFLOWS_REQUIRE_BROWSER=1
(CI), where they fail. With DURAFLOWS_SCREENSHOTS=DIR, the pages are saved there as
``dashboard-*.png`` (``python scripts/screenshots.py`` writes docs/images/).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from dashboard_seed import Shop, seed, shop_runtime
from helpers import ManualClock, wait_until

from duraflows_pg_async import pg_workflow_providers
from duraflows_pg_async.dashboard import dashboard_app

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = os.environ.get("DURAFLOWS_SCREENSHOTS")


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install playwright; no browser download)"
    return None


_REASON = _missing()
if _REASON is not None and os.environ.get("DURAFLOWS_REQUIRE_BROWSER") != "1":
    pytestmark = pytest.mark.skip(reason=f"no browser: {_REASON}")


@pytest.fixture
def _browser_present() -> None:
    if _REASON is not None:
        pytest.fail(f"DURAFLOWS_REQUIRE_BROWSER=1 but {_REASON}")


@pytest.fixture
async def shop(pool: asyncpg.Pool, _browser_present: None) -> Shop:
    # Started an hour and a bit ago, so that the clock ends near the database's now(), which
    # stamps the history: the pages (and screenshots) show times that agree.
    clock = ManualClock(datetime.now(UTC) - timedelta(minutes=66))
    runtime, down = shop_runtime(pg_workflow_providers(pool, durable_execution=True), clock)
    shop = await seed(runtime, down, clock)
    for n in range(55):  # more than a page of instances in "new"
        await runtime.create_instance("orders", context={"bulk": n})
    return shop


@contextmanager
def _no_signal_capture() -> Iterator[None]:
    yield


async def serve(app: Any, root_path: str = "") -> AsyncIterator[str]:
    """uvicorn in this event loop on a free port; yields the base URL."""
    import uvicorn

    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", root_path=root_path
    )
    server = uvicorn.Server(config)
    server.capture_signals = _no_signal_capture  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        assert not task.done(), task.result()
        return bool(server.started)

    await wait_until(started, within=30, what="uvicorn listening")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    opened = await context.new_page()
    problems: list[str] = []
    opened.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    opened.on("pageerror", lambda error: problems.append(str(error)))
    opened.on("dialog", lambda dialog: problems.append(f"a dialog opened: {dialog.message}"))
    yield opened
    await context.close()
    # 404 pages log their status; nothing else may fail (a CSP refusal, a script error, XSS).
    assert [p for p in problems if "404" not in p] == []


async def shot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        os.makedirs(SCREENSHOTS, exist_ok=True)
        await page.screenshot(path=str(Path(SCREENSHOTS) / f"dashboard-{name}.png"), full_page=True)


async def flash(page: Page) -> str:
    return (await page.locator("p.flash").inner_text()).strip()


async def test_click_through_every_page_and_action(page: Page, shop: Shop) -> None:
    runtime = shop.runtime
    async for base in serve(dashboard_app(runtime)):
        # Workflows: Mermaid drew the diagram (an SVG) with the live counts.
        await page.goto(base + "/")
        await page.wait_for_selector("body[data-diagrams=drawn]")
        svg = page.locator("pre.mermaid svg")
        assert await svg.count() == 1
        drawn = await svg.text_content() or ""
        assert "approved · 4 (1 retrying, 1 parked)" in drawn
        assert "new · 59" in drawn
        await shot(page, "workflows")

        # A status count leads to the instances in that status.
        await page.get_by_role("link", name="1 parked").click()
        await page.wait_for_url(re.compile(r"/instances\?workflow=orders&status=parked$"))
        assert await page.locator("table.instances tbody tr").count() == 1
        await page.go_back()

        # The state table leads to the instances in that state; the filter form narrows them.
        await page.get_by_role("link", name="approved", exact=True).click()
        await page.wait_for_url(re.compile(r"/instances\?workflow=orders&state=approved$"))
        assert await page.locator("table.instances tbody tr").count() == 4
        await page.select_option("select[name=status]", "parked")
        await page.get_by_role("button", name="Filter").click()
        await page.wait_for_url(re.compile(r"status=parked"))
        rows = page.locator("table.instances tbody tr")
        assert await rows.count() == 1
        await shot(page, "instances")

        # One instance: its context, retry state, history; re-arm its parked timeout.
        await rows.locator("a.uuid").click()
        await page.wait_for_url(f"**/instances/{shop.parked}")
        assert "carrier API unreachable" in await page.locator("dd.retry").inner_text()
        assert '"order": 20' in await page.locator("pre.context").inner_text()
        await shot(page, "instance")
        await page.get_by_role("button", name="Re-arm timeout").click()
        await page.wait_for_selector("p.flash.ok")
        assert f"Re-armed the timeout of instance {shop.parked}" in await flash(page)
        instance = await runtime.get_instance(shop.parked)
        assert instance is not None
        assert instance.timeout_retry is None

        # Paging: 59 instances in "new", 50 a page.
        await page.goto(base + "/instances?workflow=orders&state=new")
        assert await page.locator("table.instances tbody tr").count() == 50
        await page.get_by_role("link", name="Next page »").click()
        assert await page.locator("table.instances tbody tr").count() == 9
        await page.get_by_role("link", name="« First page").click()
        assert await page.locator("table.instances tbody tr").count() == 50

        # Timeouts: the retrying tab, re-armed from the list.
        await page.get_by_role("link", name="Timeouts").click()
        assert "No parked timeout." in await page.locator("main").inner_text()
        await page.get_by_role("link", name="Retrying").click()
        await page.wait_for_url(re.compile(r"status=retrying"))
        await shot(page, "timeouts")
        await (
            page.get_by_role("row", name=re.compile(str(shop.retrying)))
            .get_by_role("button", name="Re-arm")
            .click()
        )
        await page.wait_for_selector("p.flash.ok")
        assert page.url.endswith("/timeouts?status=retrying")
        instance = await runtime.get_instance(shop.retrying)
        assert instance is not None
        assert instance.timeout_retry is None

        # Executions: retry the parked one from the list, cancel the pending one from its page.
        await page.get_by_role("link", name="Executions").click()
        await shot(page, "executions")
        await (
            page.get_by_role("row", name=re.compile(str(shop.parked_execution)))
            .get_by_role("button", name="Retry")
            .click()
        )
        await page.wait_for_selector("p.flash.ok")
        execution = await runtime.get_execution(shop.parked_execution)
        assert execution is not None
        assert execution.status == "pending"
        await page.get_by_role("link", name="Parked", exact=True).click()
        await page.wait_for_url(re.compile(r"/executions\?status=parked$"))
        assert "No execution matches." in await page.locator("main").inner_text()
        await page.get_by_role("link", name="Pending", exact=True).click()
        assert await page.locator("table.executions tbody tr").count() == 2
        await page.fill("input[name=workflow]", "nothing")
        await page.get_by_role("button", name="Filter").click()
        await page.wait_for_url(re.compile(r"status=pending&workflow=nothing"))
        assert "No execution matches." in await page.locator("main").inner_text()
        await page.get_by_role("link", name="All", exact=True).click()
        assert page.url.endswith("/executions?workflow=nothing")  # the filter stays
        await page.get_by_role("link", name="Executions").click()
        await page.get_by_role("link", name=str(shop.pending_execution)).click()
        await page.wait_for_url(f"**/executions/{shop.pending_execution}")
        await shot(page, "execution")
        await page.get_by_role("button", name="Cancel").click()
        await page.wait_for_selector("p.flash.ok")
        execution = await runtime.get_execution(shop.pending_execution)
        assert execution is not None
        assert execution.status == "cancelled"
        assert "cancelled" in await page.locator("dl.facts").inner_text()

        # A hostile context is shown as text, and runs nothing (the page fixture watches).
        await page.goto(f"{base}/instances/{shop.xss}")
        assert "<script>alert" in await page.locator("pre.context").inner_text()

        # An unknown instance is a 404 page.
        response = await page.goto(f"{base}/instances/00000000-0000-0000-0000-000000000000")
        assert response is not None
        assert response.status == 404
        assert "404" in await page.locator("h1").inner_text()


async def test_read_only_shows_no_action(page: Page, shop: Shop) -> None:
    async for base in serve(dashboard_app(shop.runtime, read_only=True)):
        for path in ("/timeouts", f"/instances/{shop.parked}", "/executions"):
            await page.goto(base + path)
            assert await page.locator("form[method=post]").count() == 0, path
            assert await page.locator(".badge.read-only").count() == 1


async def test_under_a_root_path(page: Page, shop: Shop) -> None:
    """Behind a proxy that serves it under /ops (uvicorn's root_path), links stay under it."""
    from fastapi import FastAPI

    host = FastAPI()
    host.mount("/ops", dashboard_app(shop.runtime))
    async for base in serve(host):
        await page.goto(base + "/ops/")
        await page.wait_for_selector("body[data-diagrams=drawn]")
        await page.get_by_role("link", name="Timeouts").click()
        await page.wait_for_url(f"{base}/ops/timeouts")
        await page.get_by_role("button", name="Re-arm").click()
        await page.wait_for_selector("p.flash.ok")
        assert page.url == f"{base}/ops/timeouts"
