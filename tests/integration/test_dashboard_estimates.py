"""The dashboard's overview of a large table: ``PgWorkflowInstanceStore.estimate_stats``
samples the counts of large states and keeps the rest exact; the workflows page marks the
estimates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from duraflows_pg_async import (
    CommandRegistry,
    DefinitionRegistry,
    WorkflowRuntime,
    pg_workflow_providers,
)
from duraflows_pg_async._pg import instance_estimates
from duraflows_pg_async._pg.instance_store import PgWorkflowInstanceStore
from duraflows_pg_async.dashboard import dashboard_app

NOW = datetime(2026, 5, 1, tzinfo=UTC)
ROWS = 20_000


async def populate(pool: asyncpg.Pool) -> None:
    """20,000 instances of one workflow: open 60%, review 30%, done 10% (less 20 failed); 1 in 50
    due an hour ago, 40 parked, and contexts of 300 bytes."""
    await pool.execute(
        "INSERT INTO workflow_instances (uuid, workflow_name, current_state, expires_at, "
        "timeout_attempts, timeout_parked_at, timeout_last_error, context_json) "
        "SELECT gen_random_uuid(), 'big', CASE WHEN g % 1000 = 7 THEN 'failed' "
        "WHEN g % 10 < 6 THEN 'open' WHEN g % 10 < 9 THEN 'review' ELSE 'done' END, "
        "CASE WHEN g % 50 = 0 THEN $1::timestamptz - interval '1 hour' END, "
        "CASE WHEN g % 500 = 1 THEN 3 ELSE 0 END, "
        "CASE WHEN g % 500 = 1 THEN $1::timestamptz END, "
        "CASE WHEN g % 500 = 1 THEN 'boom' END, "
        "jsonb_build_object('note', repeat('x', 300)) FROM generate_series(1, $2::int) g",
        NOW,
        ROWS,
    )
    await pool.execute("VACUUM ANALYZE workflow_instances")


async def test_large_states_are_sampled_the_rest_is_exact(pool: asyncpg.Pool) -> None:
    await populate(pool)
    store = pg_workflow_providers(pool).instance_store
    assert isinstance(store, PgWorkflowInstanceStore)
    exact = await store.stats(now=NOW)
    assert await store.estimate_stats(now=NOW) is None  # under 200,000 rows: count them
    found = await store.estimate_stats(now=NOW, from_rows=1000, sample_rows=3000)
    assert found is not None
    estimated_stats, estimated = found
    assert [(s.workflow_name, s.state) for s in estimated_stats] == [
        (s.workflow_name, s.state) for s in exact
    ]
    by_state = {s.state: s for s in exact}
    for got in estimated_stats:
        wanted = by_state[got.state]
        # Retrying, parked, claimed and (a backlog under the cap) due are exact.
        assert (got.due, got.retrying, got.parked, got.claimed, got.oldest_due_at) == (
            wanted.due,
            wanted.retrying,
            wanted.parked,
            wanted.claimed,
            wanted.oldest_due_at,
        )
        if ("big", got.state, "instances") in estimated:
            assert abs(got.instances - wanted.instances) <= 0.3 * wanted.instances, got
        else:
            assert got.instances == wanted.instances
    # The rare state is counted, the large ones are sampled.
    assert ("big", "failed", "instances") not in estimated
    assert ("big", "open", "instances") in estimated
    assert not [key for key in estimated if key[2] == "due"]


async def test_a_large_due_backlog_is_estimated(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await populate(pool)
    monkeypatch.setattr(instance_estimates, "ESTIMATE_DUE_CAP", 100)  # 400 due rows
    store = pg_workflow_providers(pool).instance_store
    assert isinstance(store, PgWorkflowInstanceStore)
    found = await store.estimate_stats(now=NOW, from_rows=1000, sample_rows=3000)
    assert found is not None
    stats, estimated = found
    due = sum(s.due for s in stats)
    assert ("big", "open", "due") in estimated
    assert 100 <= due <= 800
    oldest = min(s.oldest_due_at for s in stats if s.oldest_due_at is not None)
    assert oldest == NOW - timedelta(hours=1)


async def test_the_workflows_page_marks_estimates(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await populate(pool)
    monkeypatch.setattr(instance_estimates, "ESTIMATE_FROM_ROWS", 1000)
    runtime = WorkflowRuntime(
        definitions=DefinitionRegistry(),
        commands=CommandRegistry(),
        persistence=pg_workflow_providers(pool),
    )
    transport = httpx.ASGITransport(app=dashboard_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://dash.test") as client:
        html = (await client.get("/")).text
    assert "an estimate from a sample of the table" in html
    assert "≈" in html
    # The rare state's count is exact (20 rows), and so are the parked timeouts.
    assert '<td class="n">20</td>' in html
    assert "40 parked" in html
