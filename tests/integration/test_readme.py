"""README's quick start runs as written, against the test server."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
from helpers import run_python, wait_for_line, wait_until

README = Path(__file__).parents[2] / "README.md"


def python_block(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"README has no python block under {heading}"
    return match.group(1)


def test_every_python_block_is_tested() -> None:
    assert README.read_text().count("```python") == 3


async def run_block(heading: str, dsn: str) -> subprocess.CompletedProcess[str]:
    result = await run_python(python_block(heading), dsn)
    assert result.returncode == 0, result.stderr
    return result


async def test_quick_start_runs_as_written(empty_database: str) -> None:
    result = await run_block("## Quick start", empty_database)
    assert result.stdout.splitlines() == [
        "entered submitted",
        "entered approved",
        "entered paid",
        "success paid",
        "approve submitted -> approved",
        "onEnter approved -> paid",
    ]


async def test_store_example_runs_as_written(database: str) -> None:
    # The template is migrated already; the example's own apply() must then be a no-op.
    result = await run_block("## Using the stores directly", database)
    assert result.stdout.splitlines() == ["committed", "[('pay', 'awaiting_payment', 'paid')]"]
    conn = await asyncpg.connect(database)
    try:
        row = await conn.fetchrow("SELECT current_state, version FROM workflow_instances")
        assert row is not None
        assert tuple(row) == ("paid", 1)
    finally:
        await conn.close()


async def test_tutorial_service_runs_as_written(empty_database: str, tmp_path: Path) -> None:
    (tmp_path / "approvals.py").write_text(python_block("## Tutorial: an approval service"))
    env = {**os.environ, "DATABASE_URL": empty_database, "ESCALATE_AFTER_SECONDS": "1"}
    env.pop("PYTHONPATH", None)  # the package as installed, the app from its own directory
    server = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "uvicorn", "approvals:app", "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        started = await wait_for_line(server.stderr, "Uvicorn running on", within=60)
        found = re.search(r"Uvicorn running on (http://\S+)", started)
        assert found, started
        async with httpx.AsyncClient(base_url=found.group(1), timeout=30) as http:

            async def new_request(amount: int) -> str:
                created = await http.post(
                    "/workflows", json={"workflowName": "purchase", "context": {"amount": amount}}
                )
                assert created.status_code == 201, created.text
                uuid: str = created.json()["uuid"]
                submitted = await http.post(f"/workflows/{uuid}/events/submit")
                assert submitted.json()["toState"] == "pending", submitted.text
                return uuid

            async def state_of(uuid: str) -> tuple[str, dict[str, object]]:
                body = (await http.get(f"/workflows/{uuid}")).json()
                return body["currentState"], body["context"]

            # The guard refuses a request without an amount.
            empty = await http.post("/workflows", json={"workflowName": "purchase"})
            refused = await http.post(f"/workflows/{empty.json()['uuid']}/events/submit")
            assert refused.json()["outcome"] == "guard-rejected"

            # The webhook, delivered twice with one key: one approval, one order.
            approved = await new_request(50)
            calls = [
                await http.post(
                    f"/webhooks/decisions/{approved}",
                    json={"decision": "approve", "by": "ana"},
                    headers={"Idempotency-Key": "slack-42"},
                )
                for _ in range(2)
            ]
            assert calls[0].json() == calls[1].json()
            assert calls[0].json()["toState"] == "ordered"
            assert await state_of(approved) == ("ordered", {"amount": 50, "po_number": "PO-50"})
            history = (await http.get(f"/workflows/{approved}/history")).json()
            assert [h["toState"] for h in history] == ["ordered", "approved", "pending"]

            # Nobody decides on this one: the worker escalates it and pages the manager.
            waiting = await new_request(120)

            async def escalated() -> bool:
                return await state_of(waiting) == (
                    "escalated",
                    {"amount": 120, "notified": ["manager"]},
                )

            await wait_until(escalated, within=60, interval=0.2, what="the escalation")

            # The dashboard and its metrics are mounted.
            dashboard = await http.get("/ops/")
            assert dashboard.status_code == 200
            assert "purchase" in dashboard.text
            metrics = await http.get("/ops/metrics")
            assert "duraflows_transitions_total" in metrics.text
    finally:
        server.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(server.communicate, timeout=60)
    assert server.returncode == 0, err
