"""``python -m bench.dashboard``: how long each dashboard page takes at a million instances.

A benchmark, not a test. It fills a fresh embedded PostgreSQL (default settings) with
``--instances`` instances over ten workflows (contexts of about 300 bytes; 1 in 50 due, 1 in
1,000 claimed, 3 in 1,000 retrying, 1 in 1,000 parked), a history for one instance in 100 and
queued executions, VACUUMs it (as autovacuum would), then times every page rendered in-process
(httpx over ASGI: the dashboard's own time, no network) against its baseline: the raw SQL of
the same queries on a bare asyncpg connection, so the ratio is what the runtime, the rendering
and the HTTP layer add. The workflows page's queries are those of ``estimate_stats`` (a
sample); the exact ``stats()`` SQL is timed too, for comparison. Medians and p95 of
``--repeat`` requests, after a warm-up.

    python -m bench.dashboard --instances 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx

from duraflows_pg_async import (
    CommandRegistry,
    DefinitionRegistry,
    Event,
    State,
    Timeout,
    WorkflowDefinition,
    WorkflowRuntime,
    create_pool,
    migrations,
    pg_workflow_providers,
)
from duraflows_pg_async._pg.instance_estimates import (
    ESTIMATE_DUE_CAP,
    ESTIMATE_EXACT_BELOW,
    ESTIMATE_SAMPLE_ROWS,
)
from duraflows_pg_async._pg.queries import (
    due_probe_sql,
    estimated_stats_sql,
    list_executions_sql,
    list_instances_sql,
    render_queries,
    stats_sql,
    table_rows_sql,
)
from duraflows_pg_async.dashboard import dashboard_app
from duraflows_pg_async.embedded import EmbeddedPostgres

from .machine import describe_machine
from .stats import percentile, ratio

WORKFLOWS = 10
DEFAULT_OUT = Path(__file__).with_name("results") / "dashboard.json"


def _definition(n: int) -> WorkflowDefinition:
    timeout = Timeout(hours=1)
    return WorkflowDefinition(
        name=f"wf{n}",
        initial_state="open",
        states={
            "open": State(events={"review": Event(target_state="review", timeout=timeout)}),
            "review": State(
                events={"close": Event(target_state="done"), "fail": Event(target_state="failed")}
            ),
            "done": State(),
            "failed": State(),
        },
    )


async def populate(conn: asyncpg.Connection, instances: int, now: datetime) -> None:
    """The instances (as tests/integration/test_instance_query_plans.py lays them out, scaled;
    each workflow with all four states),
    a history of three rows for one in 100, and executions: one in 1,000 instances has a
    completed one, a few are parked or pending."""
    await conn.execute(
        "INSERT INTO workflow_instances (uuid, workflow_name, current_state, definition_version, "
        "expires_at, timeout_attempts, timeout_retry_at, timeout_parked_at, timeout_last_error, "
        "context_json) "
        "SELECT gen_random_uuid(), 'wf' || (g % 10), "
        "CASE WHEN g % 2000 < 10 THEN 'failed' WHEN (g / 10) % 10 < 6 THEN 'open' "
        "WHEN (g / 10) % 10 < 9 THEN 'review' ELSE 'done' END, 1, "
        "CASE WHEN g % 50 = 0 THEN $1::timestamptz - interval '1 hour' "
        "WHEN g % 3 = 0 THEN $1::timestamptz + interval '1 hour' END, "
        "CASE WHEN g % 50 = 0 AND g % 1000 = 0 THEN 0 "
        "WHEN g % 50 = 0 AND g % 333 < 15 THEN 1 WHEN g % 50 = 0 AND g % 1000 = 500 THEN 3 "
        "ELSE 0 END, "
        "CASE WHEN g % 50 = 0 AND g % 1000 = 0 "
        "THEN $1::timestamptz + (CASE WHEN g % 2000 = 0 THEN -1 ELSE 1 END) * interval '1 minute' "
        "WHEN g % 50 = 0 AND g % 333 < 15 "
        "THEN $1::timestamptz + (CASE WHEN g % 2 = 0 THEN -1 ELSE 1 END) * interval '1 minute' "
        "END, "
        "CASE WHEN g % 50 = 0 AND g % 1000 = 500 THEN $1::timestamptz - interval '1 day' END, "
        "CASE WHEN g % 50 = 0 AND (g % 333 < 15 OR g % 1000 = 500) THEN 'boom' END, "
        "jsonb_build_object('order', g, 'customer', md5(g::text), 'note', repeat('x', 250)) "
        "FROM generate_series(1, $2::int) g",
        now,
        instances,
    )
    await conn.execute(
        "INSERT INTO workflow_history (workflow_instance_uuid, from_state, event_name, to_state, "
        "outcome, definition_version, created_at) "
        "SELECT i.uuid, 'open', e.name, 'review', 'success', 1, $1::timestamptz - e.n * "
        "interval '1 minute' FROM (SELECT uuid FROM workflow_instances TABLESAMPLE SYSTEM (1)) i "
        "CROSS JOIN (VALUES ('review', 3), ('close', 2), ('reopen', 1)) AS e(name, n)",
        now,
    )


async def add_executions(
    conn: asyncpg.Connection, runtime: WorkflowRuntime, count: int
) -> list[UUID]:
    """``count`` executions copied from one real record: 1 in 20 parked, 1 in 20 pending."""
    instance = await conn.fetchval(
        "SELECT uuid FROM workflow_instances WHERE workflow_name = 'wf1' AND current_state = "
        "'open' AND timeout_attempts = 0 AND timeout_retry_at IS NULL LIMIT 1"
    )
    record = await runtime.enqueue_event(instance, "review", idempotency_key="bench-0")
    template = record.to_json()
    rows = []
    targets = await conn.fetch(
        "SELECT uuid FROM workflow_instances WHERE uuid <> $1 LIMIT $2", instance, count
    )
    for n, target in enumerate(targets):
        status = "parked" if n % 20 == 0 else "pending" if n % 20 == 1 else "completed"
        uuid = uuid4()
        data = {**template, "uuid": str(uuid), "workflowInstanceUuid": str(target["uuid"])}
        data.update(status=status, idempotencyKey=f"bench-{n + 1}")
        row = (
            uuid,
            target["uuid"],
            f"bench-{n + 1}",
            status,
            datetime.now(UTC),
            0,
            json.dumps(data),
        )
        rows.append(row)
    await conn.executemany(
        "INSERT INTO workflow_executions (uuid, workflow_instance_uuid, idempotency_key, status, "
        "available_at, revision, execution_json) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        rows,
    )
    return [row[0] for row in rows if row[3] == "parked"]


async def vacuum(conn: asyncpg.Connection) -> None:
    """VACUUM ANALYZE until the visibility map covers the table (index-only scans need it)."""
    for _ in range(10):
        await conn.execute(
            "VACUUM ANALYZE workflow_instances, workflow_history, workflow_executions"
        )
        row = await conn.fetchrow(
            "SELECT relpages, relallvisible FROM pg_class "
            "WHERE oid = 'workflow_instances'::regclass"
        )
        if row is not None and row["relallvisible"] >= 0.95 * row["relpages"]:
            return


async def timed(work: Callable[[], Awaitable[Any]], repeat: int) -> list[float]:
    for _ in range(3):
        await work()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        await work()
        times.append((time.perf_counter() - start) * 1000)
    return times


def summary(times: list[float]) -> dict[str, float]:
    return {"median_ms": percentile(times, 50), "p95_ms": percentile(times, 95)}


async def measure(instances: int, repeat: int, say: Callable[[str], None]) -> dict[str, Any]:
    server = await asyncio.to_thread(EmbeddedPostgres)
    await asyncio.to_thread(server.start)
    try:
        admin = await asyncpg.connect(server.dsn())
        await admin.execute("CREATE DATABASE dashboard_bench")
        await admin.close()
        dsn = server.dsn("dashboard_bench")
        raw = await asyncpg.connect(dsn)
        await migrations.apply(raw)
        now = datetime.now(UTC)
        started = time.perf_counter()
        await populate(raw, instances, now)
        say(f"{instances:,} instances inserted in {time.perf_counter() - started:.0f} s")
        pool = await create_pool(dsn, min_size=2, max_size=4)
        definitions = DefinitionRegistry()
        for n in range(WORKFLOWS):
            definitions.register(_definition(n))
        runtime = WorkflowRuntime(
            definitions=definitions,
            commands=CommandRegistry(),
            persistence=pg_workflow_providers(pool, durable_execution=True),
        )
        await runtime.initialize()
        parked_executions = await add_executions(raw, runtime, 2000)
        await vacuum(raw)
        say("vacuumed; timing the pages")
        sample = await raw.fetchval(
            "SELECT workflow_instance_uuid FROM workflow_history LIMIT 1 OFFSET 100"
        )
        q = render_queries(None)
        table_rows = await raw.fetchval(table_rows_sql(None))
        exact_stats = summary(
            await timed(lambda: raw.fetch(stats_sql(None, workflow=False), now), repeat)
        )
        say(f"stats() exact, its SQL alone: {exact_stats['median_ms']:.1f} ms")
        wf3 = {"workflow": True, "state": True, "version": False, "after": False}
        pages: dict[str, tuple[str, Callable[[], Awaitable[Any]]]] = {
            "workflows": ("/", lambda: _overview_queries(raw, now, table_rows)),
            "instances": (
                "/instances",
                lambda: raw.fetch(
                    list_instances_sql(
                        None, workflow=False, state=False, version=False, status=None, after=False
                    ),
                    51,
                ),
            ),
            "instances of a state": (
                "/instances?workflow=wf3&state=review",
                lambda: raw.fetch(
                    list_instances_sql(None, status=None, **wf3), 51, "wf3", "review"
                ),
            ),
            "instances due": (
                "/instances?status=due",
                lambda: raw.fetch(
                    list_instances_sql(
                        None, workflow=False, state=False, version=False, status="due", after=False
                    ),
                    51,
                    now,
                ),
            ),
            "instance": (
                f"/instances/{sample}",
                lambda: _instance_queries(raw, q, sample),
            ),
            "timeouts (parked)": (
                "/timeouts",
                lambda: raw.fetch(
                    list_instances_sql(
                        None,
                        workflow=False,
                        state=False,
                        version=False,
                        status="parked",
                        after=False,
                    ),
                    51,
                ),
            ),
            "timeouts (retrying)": (
                "/timeouts?status=retrying",
                lambda: raw.fetch(
                    list_instances_sql(
                        None,
                        workflow=False,
                        state=False,
                        version=False,
                        status="retrying",
                        after=False,
                    ),
                    51,
                ),
            ),
            "executions": (
                "/executions",
                lambda: raw.fetch(
                    list_executions_sql(None, status=None, workflow=False, after=False), 51
                ),
            ),
            "executions (parked)": (
                "/executions?status=parked",
                lambda: raw.fetch(
                    list_executions_sql(None, status="parked", workflow=False, after=False),
                    51,
                    "parked",
                ),
            ),
            "execution": (
                f"/executions/{parked_executions[0]}",
                lambda: raw.fetchrow(q.select_execution, parked_executions[0]),
            ),
        }
        app = dashboard_app(runtime)
        transport = httpx.ASGITransport(app=app)
        results = []
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for name, (path, baseline) in pages.items():

                async def get(path: str = path) -> None:
                    response = await client.get(path)
                    assert response.status_code == 200, (path, response.text[:500])

                page_times = await timed(get, repeat)
                sql_times = await timed(baseline, repeat)
                page, sql = summary(page_times), summary(sql_times)
                results.append(
                    {
                        "page": name,
                        "path": path,
                        "render": page,
                        "sql": sql,
                        "ratio": ratio(page["median_ms"], sql["median_ms"]),
                    }
                )
                say(
                    f"{name:22} page {page['median_ms']:7.1f} ms (p95 {page['p95_ms']:6.1f}) "
                    f"· SQL {sql['median_ms']:7.1f} ms"
                )
        await pool.close()
        await raw.close()
    finally:
        await asyncio.to_thread(server.close)
    return {
        "format": 1,
        "instances": instances,
        "repeat": repeat,
        "machine": describe_machine(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "pages": results,
        "exact_stats_sql": exact_stats,
    }


async def _overview_queries(raw: asyncpg.Connection, now: datetime, table_rows: float) -> None:
    """What the workflows page asks a large table (PgWorkflowInstanceStore.estimate_stats)."""
    await raw.fetchval(table_rows_sql(None))
    percent = min(100.0, 100.0 * ESTIMATE_SAMPLE_ROWS / table_rows)
    await raw.fetch(estimated_stats_sql(None), now, percent, ESTIMATE_EXACT_BELOW)
    await raw.fetch(due_probe_sql(None, ESTIMATE_DUE_CAP + 1), now)


async def _instance_queries(raw: asyncpg.Connection, q: Any, uuid: UUID) -> None:
    await raw.fetchrow(q.select_instance, uuid)
    await raw.fetch(q.select_history, uuid, 100, 0)
    await raw.fetchrow(q.select_active_execution, uuid)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Dashboard pages at {results['instances']:,} instances "
        f"(median of {results['repeat']}, ms)",
        "",
        "| page | path | page median | page p95 | raw SQL median | ratio |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in results["pages"]:
        lines.append(
            f"| {row['page']} | `{row['path'][:40]}` | {row['render']['median_ms']:.1f} | "
            f"{row['render']['p95_ms']:.1f} | {row['sql']['median_ms']:.1f} | "
            f"{row['ratio']:.1f}x |"
        )
    exact = results["exact_stats_sql"]
    lines += [
        "",
        f"stats() counting every instance exactly, its SQL alone: {exact['median_ms']:.1f} ms "
        f"(p95 {exact['p95_ms']:.1f}); the workflows page samples instead (estimate_stats).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__)
    p.add_argument("--instances", type=int, default=1_000_000, help="default 1,000,000")
    p.add_argument("--repeat", type=int, default=20, help="requests per page (default 20)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    start = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {message}", file=sys.stderr, flush=True)

    results = asyncio.run(measure(args.instances, args.repeat, say))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
