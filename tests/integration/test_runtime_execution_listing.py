"""``WorkflowRuntime.list_executions``: cursors, refusals, and the indexes that serve it."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from dashboard_seed import seed, shop_runtime
from helpers import ManualClock
from test_cli_executions import plan_nodes

from duraflows_pg_async import memory_workflow_providers, pg_workflow_providers
from duraflows_pg_async._pg.queries import list_executions_sql
from duraflows_pg_async.errors import DurableExecutionNotSupportedError, InvalidArgumentError


async def test_pages_follow_their_cursor(pool: asyncpg.Pool, clock: ManualClock) -> None:
    runtime, down = shop_runtime(pg_workflow_providers(pool, durable_execution=True), clock)
    shop = await seed(runtime, down, clock)
    for n in range(4):
        instance = await runtime.create_instance("orders")
        await runtime.trigger_event(instance.uuid, "approve")
        await runtime.enqueue_event(instance.uuid, "ship", idempotency_key=f"k{n}")
    seen = []
    after = None
    while True:
        page = await runtime.list_executions(status="pending", limit=2, after=after)
        seen += [e.uuid for e in page.items]
        if page.next_cursor is None:
            break
        after = page.next_cursor
    assert len(seen) == 5
    assert seen == sorted(seen)
    assert shop.pending_execution in seen
    everything = await runtime.list_executions(workflow_name="orders", limit=1000)
    assert {e.status for e in everything.items} == {"pending", "parked"}
    assert everything.next_cursor is None

    first = await runtime.list_executions(status="pending", limit=1)
    assert first.next_cursor is not None
    with pytest.raises(InvalidArgumentError, match="other filters"):
        await runtime.list_executions(status="parked", after=first.next_cursor)
    instances = await runtime.list_instances(limit=1)
    assert instances.next_cursor is not None
    with pytest.raises(InvalidArgumentError, match=r"filters|cursor"):
        await runtime.list_executions(after=instances.next_cursor)
    bad: list[dict[str, Any]] = [
        {"limit": 0},
        {"limit": 1001},
        {"status": "late"},
        {"workflow_name": ""},
        {"after": "garbage"},
    ]
    for arguments in bad:
        with pytest.raises(InvalidArgumentError):
            await runtime.list_executions(**arguments)


async def test_needs_an_execution_store() -> None:
    runtime, _ = shop_runtime(memory_workflow_providers())
    with pytest.raises(DurableExecutionNotSupportedError):
        await runtime.list_executions()


async def test_active_statuses_read_the_index_of_active_executions(pool: asyncpg.Pool) -> None:
    # 5,000 finished executions and a few active ones: an active page must not read them all.
    await pool.execute(
        "INSERT INTO workflow_instances (uuid, workflow_name, current_state) "
        "SELECT gen_random_uuid(), 'shipping', 'shipped' FROM generate_series(1, 5000)"
    )
    await pool.execute(
        "INSERT INTO workflow_executions (uuid, workflow_instance_uuid, idempotency_key, status, "
        "available_at, revision, execution_json) SELECT gen_random_uuid(), uuid, 'k', "
        "CASE WHEN random() < 0.002 THEN 'parked' ELSE 'completed' END, now(), 1, "
        """'{"workflowName": "shipping"}'::jsonb FROM workflow_instances"""
    )
    await pool.execute("ANALYZE workflow_executions")
    for workflow in (False, True):
        sql = list_executions_sql(None, status="parked", workflow=workflow, after=True)
        args: list[Any] = ["parked", *(["shipping"] if workflow else [])]
        plan = plan_nodes(
            await pool.fetchval(
                "EXPLAIN (FORMAT JSON) " + sql, 50, *args, "00000000-0000-0000-0000-000000000000"
            )
        )
        assert "workflow_executions_active_idx" in [n.get("Index Name") for n in plan], plan
        assert not [n for n in plan if n["Node Type"] == "Seq Scan"], plan
    # Unfiltered: the primary key, in uuid order, up to the page.
    sql = list_executions_sql(None, status=None, workflow=False, after=False)
    plan = plan_nodes(await pool.fetchval("EXPLAIN (FORMAT JSON) " + sql, 50))
    assert "workflow_executions_pkey" in [n.get("Index Name") for n in plan], plan
    assert not [n for n in plan if n["Node Type"] in ("Seq Scan", "Sort")], plan


def test_the_listing_is_qualified_by_the_schema() -> None:
    sql = list_executions_sql("tenant_a", status=None, workflow=False, after=False)
    assert 'FROM "tenant_a".workflow_executions ' in sql
