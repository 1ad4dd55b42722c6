"""The dashboard's overview of a large table: per-state counts estimated from a sample.

Counting a million instances exactly (``stats()``) reads every index entry; the overview needs
only orders of magnitude for its large states, and exact figures where they are small or matter
(retrying, parked, claimed, a small due backlog).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from duraflows_pg_async._core.model import StateStats
from duraflows_pg_async._core.validate import require_aware, require_int
from duraflows_pg_async._pg.error_mapping import map_db_errors

from .queries import due_probe_sql, estimated_stats_sql, table_rows_sql
from .runner import AnyConnection

__all__ = [
    "ESTIMATE_DUE_CAP",
    "ESTIMATE_EXACT_BELOW",
    "ESTIMATE_FROM_ROWS",
    "ESTIMATE_SAMPLE_ROWS",
    "estimate_stats",
]

# estimate_stats: a table of fewer rows is counted exactly; a larger one is sampled to about
# ESTIMATE_SAMPLE_ROWS rows, a state with fewer than ESTIMATE_EXACT_BELOW of them is counted
# exactly (at a million rows: under about 6,700), and due is exact up to ESTIMATE_DUE_CAP rows.
ESTIMATE_FROM_ROWS = 200_000
ESTIMATE_SAMPLE_ROWS = 15_000
ESTIMATE_EXACT_BELOW = 100
ESTIMATE_DUE_CAP = 2_000


async def estimate_stats(
    executor: AnyConnection | asyncpg.Pool,
    schema: str | None,
    *,
    now: datetime,
    from_rows: int | None = None,
    sample_rows: int | None = None,
) -> tuple[list[StateStats], frozenset[tuple[str, str, str]]] | None:
    """``stats(now=now)`` for a large table, with the counts of its large states estimated
    from a sample of its pages; None when the table is small enough to count (then call
    ``stats``). Also returns which (workflow, state, "instances" or "due") are estimates.
    ``from_rows`` (default ESTIMATE_FROM_ROWS): the planner's row count from which the
    table is sampled; ``sample_rows`` (default ESTIMATE_SAMPLE_ROWS): about how many rows.

    Exact: the instances of a state with few rows in the sample, retrying, parked and
    claimed, and due when the backlog is under ESTIMATE_DUE_CAP rows. Reads a fixed number
    of pages and index entries, however large the table (the dashboard's overview).
    """
    when = require_aware(now, "now")
    threshold = ESTIMATE_FROM_ROWS if from_rows is None else from_rows
    sample = ESTIMATE_SAMPLE_ROWS if sample_rows is None else sample_rows
    require_int(threshold, "from_rows", minimum=1)
    require_int(sample, "sample_rows", minimum=1)
    with map_db_errors("estimate_stats", executor):
        table_rows = await executor.fetchval(table_rows_sql(schema))
        if table_rows is None or table_rows < threshold:
            return None
        percent = min(100.0, 100.0 * sample / table_rows)
        rows = await executor.fetch(
            estimated_stats_sql(schema), when, percent, ESTIMATE_EXACT_BELOW
        )
        probed = await executor.fetch(due_probe_sql(schema, ESTIMATE_DUE_CAP + 1), when)
    scale = table_rows / max(1, sum(row["sampled"] for row in rows))
    due = {(r["workflow_name"], r["current_state"]): r for r in probed}
    due_exact = sum(r["due"] for r in probed) <= ESTIMATE_DUE_CAP
    estimated: set[tuple[str, str, str]] = set()
    found = []
    for row in rows:
        key = (row["workflow_name"], row["current_state"])
        instances = row["instances"]
        if instances is None:
            instances = round(row["sampled"] * scale)
            estimated.add((*key, "instances"))
        seen = due.get(key)
        due_count = 0 if seen is None else seen["due"]
        oldest = row["sampled_oldest"] if seen is None else seen["oldest_due_at"]
        if not due_exact and row["sampled_due"]:
            due_count = max(due_count, round(row["sampled_due"] * scale))
            estimated.add((*key, "due"))
        found.append(
            StateStats(
                workflow_name=key[0],
                state=key[1],
                instances=max(instances, due_count, row["retrying"] + row["parked"]),
                due=due_count,
                retrying=row["retrying"],
                parked=row["parked"],
                claimed=row["claimed"],
                oldest_due_at=oldest if due_count else None,
            )
        )
    return sorted(found, key=lambda s: (s.workflow_name, s.state)), frozenset(estimated)
