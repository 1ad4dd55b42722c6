"""``duraflows-pg dashboard``: the dashboard served by uvicorn, fetched over real HTTP."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from dashboard_seed import Shop, seed, shop_runtime
from helpers import ManualClock, wait_for_line
from test_cli import assert_clean_error, cli
from test_cli_executions import worker_env

from duraflows_pg_async import pg_workflow_providers


@pytest.fixture
async def shop(pool: asyncpg.Pool, clock: ManualClock) -> Shop:
    runtime, down = shop_runtime(pg_workflow_providers(pool, durable_execution=True), clock)
    return await seed(runtime, down, clock)


class Dashboard:
    """A ``duraflows-pg dashboard`` process and the address it announced."""

    def __init__(self, proc: subprocess.Popen[str], url: str, line: str) -> None:
        self.proc = proc
        self.url = url
        self.line = line

    async def stop(self) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(self.proc.communicate, timeout=20)
        return self.proc.returncode, out, err


async def start(database: str, *args: str) -> AsyncIterator[Dashboard]:
    argv = [sys.executable, "-m", "duraflows_pg_async", "dashboard", "--port", "0", *args]
    proc = await asyncio.to_thread(
        subprocess.Popen,
        argv,
        env=worker_env(database),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await wait_for_line(proc.stdout, "dashboard on http://", within=60)
        found = re.search(r"dashboard on (http://\S+/)", line)
        assert found, line
        yield Dashboard(proc, found.group(1), line)
    finally:
        if proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.communicate)


async def test_serves_the_pages_and_takes_actions(database: str, shop: Shop) -> None:
    async for dashboard in start(database):
        async with httpx.AsyncClient(base_url=dashboard.url, timeout=30) as client:
            home = await client.get("/")
            assert home.status_code == 200
            # Drawn from the stored snapshot: the command has no APP. (Its clock is the real one,
            # months after the shop's: the retrying timeout is due too.)
            assert "approved · 4 (" in home.text
            assert "1 parked)" in home.text
            assert (await client.get("/static/mermaid.min.js")).status_code == 200
            page = await client.get("/timeouts")
            assert str(shop.parked) in page.text
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            assert token
            done = await client.post(
                f"/instances/{shop.parked}/rearm",
                data={"csrf_token": token.group(1), "next": "/timeouts"},
                headers={"origin": dashboard.url.rstrip("/")},
            )
            assert done.status_code == 303
        instance = await shop.runtime.get_instance(shop.parked)
        assert instance is not None
        assert instance.timeout_retry is None
        code, _, err = await dashboard.stop()
        assert code == 0, err


async def test_read_only_under_a_root_path(database: str, shop: Shop) -> None:
    async for dashboard in start(database, "--read-only", "--root-path", "/ops"):
        async with httpx.AsyncClient(base_url=dashboard.url, timeout=30) as client:
            page = await client.get("/timeouts")
            assert page.status_code == 200
            assert 'href="/ops/instances' in page.text
            assert '<form method="post"' not in page.text
            refused = await client.post(
                f"/instances/{shop.parked}/rearm", headers={"origin": dashboard.url.rstrip("/")}
            )
            assert refused.status_code == 403
        assert "(read-only)" in dashboard.line
        code, _, err = await dashboard.stop()
        assert code == 0, err


async def test_usage_errors() -> None:
    for args, message in [
        (["--port", "70000"], "--port must be from 0 to 65535"),
        (["--root-path", "ops"], "--root-path must start with /"),
        (["--pool-size", "0"], "--pool-size must be at least 1"),
    ]:
        result = await cli("dashboard", *args, url="postgresql://localhost/x")
        assert_clean_error(result, 2, message)
    result = await cli("dashboard")
    assert_clean_error(result, 2, "give --database-url or set DATABASE_URL")
