"""The plans PostgreSQL uses for list_instances and stats on 100,000 instances: every filter
combination is served by an index (migration 101's, the primary key, or the due indexes of 005 and
100), with no Seq Scan of workflow_instances and no Sort of more than a bounded set of rows."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from helpers import wait_until

from duraflows_pg_async._pg.queries import list_instances_sql, stats_sql

NOW = datetime(2026, 6, 1, tzinfo=UTC)
ROWS = 100_000
STATUSES = (None, "due", "retrying", "parked", "claimed")
# The largest set of rows a Sort may take: the due rows of every workflow (2,000, see populate).
SORT_BOUND = 2_500


def plan_nodes(plan: Any) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, depth first."""
    nodes, stack = [], [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    return nodes


async def populate(pool: asyncpg.Pool) -> None:
    """100,000 instances over ten workflows (wf0..wf9), plus 300 of a rare one.

    Each has a context of about 300 bytes (a small real one: with empty contexts the table is so
    narrow that counting every row is cheaper from the table than from an index). States: 'open'
    (~60%), 'review' (~30%), 'done' (~10%, minus the 50 'failed' per workflow);
    versions 1 and 2. A third have a deadline; 2,000 are due (deadline passed), 200 claimed
    (100 of them with an ended claim), 300 retrying (150 of them due), 100 parked.
    """
    await pool.execute(
        "INSERT INTO workflow_instances (uuid, workflow_name, current_state, definition_version, "
        "expires_at, timeout_attempts, timeout_retry_at, timeout_parked_at, timeout_last_error, "
        "context_json) "
        "SELECT gen_random_uuid(), 'wf' || (g % 10), "
        "CASE WHEN g % 2000 < 10 THEN 'failed' WHEN g % 10 < 6 THEN 'open' "
        "WHEN g % 10 < 9 THEN 'review' ELSE 'done' END, 1 + (g / 10) % 2, "
        # deadline: 1 in 50 passed (due), else a third in the future, else none
        "CASE WHEN g % 50 = 0 THEN $1::timestamptz - interval '1 hour' "
        "WHEN g % 3 = 0 THEN $1::timestamptz + interval '1 hour' END, "
        # retrying: 300 rows (g % 50 = 0 and g % 1000 in 0..149: half due, half later)
        "CASE WHEN g % 50 = 0 AND g % 1000 = 0 THEN 0 "
        "WHEN g % 50 = 0 AND g % 333 < 15 THEN 1 WHEN g % 50 = 0 AND g % 1000 = 500 THEN 3 "
        "ELSE 0 END, "
        "CASE WHEN g % 50 = 0 AND g % 1000 = 0 "  # claimed: 100 ended, 100 running
        "THEN $1::timestamptz + (CASE WHEN g % 2000 = 0 THEN -1 ELSE 1 END) * interval '1 minute' "
        "WHEN g % 50 = 0 AND g % 333 < 15 "
        "THEN $1::timestamptz + (CASE WHEN g % 2 = 0 THEN -1 ELSE 1 END) * interval '1 minute' "
        "END, "
        "CASE WHEN g % 50 = 0 AND g % 1000 = 500 THEN $1::timestamptz - interval '1 day' END, "
        "CASE WHEN g % 50 = 0 AND (g % 333 < 15 OR g % 1000 = 500) THEN 'boom' END, "
        # A context of 300-odd bytes: a small but real one (the planner weighs the table's size)
        "jsonb_build_object('order', g, 'customer', md5(g::text), 'note', repeat('x', 250)) "
        f"FROM generate_series(1, {ROWS}) g",
        NOW,
    )
    await pool.execute(
        "INSERT INTO workflow_instances (uuid, workflow_name, current_state, definition_version) "
        "SELECT gen_random_uuid(), 'rare', 'open', 1 FROM generate_series(1, 300)"
    )
    # VACUUM sets the visibility map, which index-only scans need (autovacuum does it in
    # production: on a table it has not yet vacuumed, stats counts through bitmap heap scans of
    # the same index instead); ANALYZE gives the planner the statistics.
    await wait_until(lambda: all_visible(pool), within=60, interval=0.2, what="a vacuumed table")


async def all_visible(pool: asyncpg.Pool) -> bool:
    """VACUUM ANALYZE, then whether it marked the table's pages all-visible (another database's
    transaction on the shared test server can hold the horizon back for a moment)."""
    await pool.execute("VACUUM ANALYZE workflow_instances")
    row = await pool.fetchrow(
        "SELECT relpages, relallvisible FROM pg_class WHERE oid = 'workflow_instances'::regclass"
    )
    assert row is not None
    return bool(row["relallvisible"] >= 0.95 * row["relpages"])


def list_combinations() -> list[dict[str, Any]]:
    """Every filter combination list_instances supports, with values common and rare."""
    found: list[dict[str, Any]] = []
    for status, after in itertools.product(STATUSES, (False, True)):
        found.append({"status": status, "after": after})
        for workflow, state, version in itertools.product(
            ("wf1", "rare"), (None, "open", "failed"), (None, 1)
        ):
            found.append(
                {
                    "workflow_name": workflow,
                    "state": state,
                    "definition_version": version,
                    "status": status,
                    "after": after,
                }
            )
    return found


def list_statement(combination: dict[str, Any]) -> tuple[str, list[Any]]:
    workflow, state = combination.get("workflow_name"), combination.get("state")
    version, status = combination.get("definition_version"), combination["status"]
    sql = list_instances_sql(
        None,
        workflow=workflow is not None,
        state=state is not None,
        version=version is not None,
        status=status,
        after=combination["after"],
    )
    args: list[Any] = [51, *(v for v in (workflow, state, version) if v is not None)]
    if status == "due":
        args.append(NOW)
    if combination["after"]:
        args.append(UUID(int=2**127))
    return sql, args


def check_plan(nodes: list[dict[str, Any]], label: str) -> set[str]:
    """The indexes a plan reads; fails on a Seq Scan or on a Sort of too many rows."""
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], (label, nodes)
    for node in nodes:
        if node["Node Type"] in ("Sort", "Incremental Sort"):
            (child,) = node["Plans"]
            sorted_rows = child["Actual Rows"] * child["Actual Loops"]
            assert sorted_rows <= SORT_BOUND, (label, sorted_rows, nodes)
    indexes = {n["Index Name"] for n in nodes if "Index Name" in n}
    assert indexes, (label, nodes)
    return indexes


def describe(nodes: list[dict[str, Any]]) -> str:
    return ", ".join(
        n["Node Type"] + (f" {n['Index Name']}" if "Index Name" in n else "") for n in nodes
    )


@pytest.mark.slow
async def test_list_instances_and_stats_are_served_by_indexes(pool: asyncpg.Pool) -> None:
    await populate(pool)
    for combination in list_combinations():
        sql, args = list_statement(combination)
        label = ",".join(f"{k}={v}" for k, v in combination.items() if v not in (None, False))
        nodes = plan_nodes(await pool.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args))
        indexes = check_plan(nodes, label)
        common = combination.get("workflow_name") != "rare" and combination.get("state") != "failed"
        if combination["status"] is None and common:
            # A common filter: read in keyset order, up to the page, with no Sort at all (a rare
            # one may be found by a bitmap scan, then sorted: a few hundred rows at most here).
            assert [n["Node Type"] for n in nodes] == ["Limit", "Index Scan"], (label, nodes)
            workflow, state = combination.get("workflow_name"), combination.get("state")
            assert indexes == {
                "workflow_instances_pkey"
                if workflow is None
                else "workflow_instances_workflow_uuid_idx"
                if state is None
                else "workflow_instances_workflow_state_idx"
            }, (label, nodes)
        if combination["status"] in ("retrying", "parked", "claimed") and common:
            # The rows with timeout state are found in 101's partial index (or 005's parked one);
            # with a rare state, the planner may start from the state's rows instead.
            assert indexes & {
                "workflow_instances_timeout_state_idx",
                "workflow_instances_timeout_parked_idx",
            }, (label, nodes)

    for workflow in (None, "wf1", "rare"):
        sql = stats_sql(None, workflow=workflow is not None)
        args = [NOW] if workflow is None else [NOW, workflow]
        nodes = plan_nodes(await pool.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args))
        indexes = check_plan(nodes, f"stats {workflow}")
        assert "workflow_instances_timeout_state_idx" in indexes, nodes
        # Instances are counted from the narrow (workflow_name, current_state, uuid) index alone:
        # all of it without a workflow (every row's index entry, not the rows), one workflow's
        # range with one.
        scans = [
            n
            for n in nodes
            if n.get("Index Name") == "workflow_instances_workflow_state_idx"
            and n["Node Type"] == "Index Only Scan"
        ]
        assert scans, nodes
        # The pairs' probes (one row each), then each pair's count (its whole range).
        read = sum(n["Actual Rows"] * n["Actual Loops"] for n in scans)
        expected = {None: ROWS + 300, "wf1": ROWS // 10, "rare": 300}[workflow]
        assert expected <= read <= expected + 2 * len(await pool.fetch(sql, *args)) + 2, scans
