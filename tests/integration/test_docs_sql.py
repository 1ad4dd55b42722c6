"""The monitoring queries of docs/operations.md run on the real schema and count the right rows."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from helpers import wait_until

from duraflows_pg_async import HistoryRecord, TimeoutRetry, WorkflowPersistenceProvider
from duraflows_pg_async.testing import make_instance

OPERATIONS = Path(__file__).parents[2] / "docs" / "operations.md"
CLAIM_AGO = timedelta(minutes=10)


def sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", OPERATIONS.read_text(), re.DOTALL)


def block_after(phrase: str) -> str:
    text = OPERATIONS.read_text()
    match = re.search(r"```sql\n(.*?)```", text[text.index(phrase) :], re.DOTALL)
    assert match is not None, f"no sql block after {phrase!r}"
    return match.group(1)


def test_the_page_has_the_queries_this_module_checks() -> None:
    assert len(sql_blocks()) == 5


@pytest.fixture
async def seeded(providers: WorkflowPersistenceProvider, pool: asyncpg.Pool) -> None:
    """2 due, 1 not yet due, 1 retrying (due), 1 retrying (later), 2 parked, 1 with no deadline,
    1 due and claimed by a sweep, 1 due whose claim ended 10 minutes ago (stalled)."""
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    instances = [
        make_instance(workflow_name="order", current_state="awaiting", expires_at=now - hour),
        make_instance(workflow_name="order", current_state="awaiting", expires_at=now - 2 * hour),
        make_instance(workflow_name="order", current_state="awaiting", expires_at=now + hour),
        make_instance(
            workflow_name="order",
            current_state="awaiting",
            expires_at=now - 3 * hour,
            timeout_retry=TimeoutRetry(attempts=1, last_error="x", retry_at=now - hour),
        ),
        make_instance(
            workflow_name="order",
            current_state="awaiting",
            expires_at=now - 3 * hour,
            timeout_retry=TimeoutRetry(attempts=2, last_error="x", retry_at=now + hour),
        ),
        *(
            make_instance(
                workflow_name="order",
                current_state="awaiting",
                expires_at=now - 5 * hour,
                timeout_retry=TimeoutRetry(attempts=10, last_error="x", parked_at=now),
            )
            for _ in range(2)
        ),
        make_instance(workflow_name="signup", current_state="done"),
    ]
    claimed = make_instance(
        workflow_name="order", current_state="awaiting", expires_at=now - timedelta(minutes=20)
    )
    stalled = make_instance(
        workflow_name="order", current_state="awaiting", expires_at=now - timedelta(minutes=30)
    )
    instances += [claimed, stalled]
    async with providers.transaction_runner.transaction():
        for instance in instances:
            await providers.instance_store.create(instance)
        for outcome in ("failure", "failure", "guard-rejected", "success"):
            await providers.history_store.append(
                HistoryRecord(
                    workflow_instance_uuid=instances[0].uuid,
                    from_state="awaiting",
                    event_name="pay",
                    to_state="awaiting",
                    outcome=outcome,
                    rejected_by="has_items" if outcome == "guard-rejected" else None,
                )
            )
    # A sweep's claim: timeout_retry_at without retry state (attempts 0).
    for instance, claim_end in ((claimed, now + timedelta(minutes=10)), (stalled, now - CLAIM_AGO)):
        await pool.execute(
            "UPDATE workflow_instances SET timeout_retry_at = $2 WHERE uuid = $1",
            instance.uuid,
            claim_end,
        )


@pytest.mark.usefixtures("seeded")
async def test_due_backlog_counts_due_rows_and_the_oldest_lag(pool: asyncpg.Pool) -> None:
    row = await pool.fetchrow(block_after("Due timeouts not yet fired"))
    assert row is not None
    # Two plain deadlines, one retry whose time has come, and the two claimed instances.
    assert row["due"] == 5
    assert timedelta(hours=1, minutes=59) < row["oldest_lag"] < timedelta(hours=2, minutes=5)
    assert (row["claimed"], row["stalled_claims"]) == (2, 1)
    assert CLAIM_AGO <= row["oldest_stalled_claim"] < CLAIM_AGO + timedelta(minutes=5)


async def test_due_backlog_lag_of_a_claim_runs_from_its_deadline(
    pool: asyncpg.Pool, providers: WorkflowPersistenceProvider
) -> None:
    now = datetime.now(UTC)
    stalled = make_instance(expires_at=now - timedelta(minutes=30))
    async with providers.transaction_runner.transaction():
        await providers.instance_store.create(stalled)
    await pool.execute(
        "UPDATE workflow_instances SET timeout_retry_at = $2 WHERE uuid = $1",
        stalled.uuid,
        now - CLAIM_AGO,
    )
    row = await pool.fetchrow(block_after("Due timeouts not yet fired"))
    assert row is not None
    assert (row["due"], row["claimed"], row["stalled_claims"]) == (1, 1, 1)
    # From its deadline, 30 minutes ago; not from the end of its claim, 10 minutes ago.
    assert timedelta(minutes=29) < row["oldest_lag"] < timedelta(minutes=35)


@pytest.mark.usefixtures("seeded")
async def test_retrying_and_parked(pool: asyncpg.Pool) -> None:
    row = await pool.fetchrow(block_after("Timeouts that failed"))
    assert row is not None
    assert (row["retrying"], row["parked"]) == (2, 2)


@pytest.mark.usefixtures("seeded")
async def test_instances_per_state(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(block_after("Instances per workflow and state"))
    assert [tuple(r) for r in rows] == [("order", "awaiting", 9), ("signup", "done", 1)]


@pytest.mark.usefixtures("seeded")
async def test_failed_and_rejected_events(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(block_after("Events in the last hour"))
    assert [tuple(r) for r in rows] == [
        ("failure", "pay", "awaiting", 2),
        ("guard-rejected", "pay", "awaiting", 1),
    ]


async def test_lock_waits_show_the_waiter_and_its_blocker(
    pool: asyncpg.Pool, providers: WorkflowPersistenceProvider
) -> None:
    instance = make_instance()
    async with providers.transaction_runner.transaction():
        await providers.instance_store.create(instance)
    holder = await pool.acquire()
    waiter = await pool.acquire()
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(
            "SELECT 1 FROM workflow_instances WHERE uuid = $1 FOR UPDATE", instance.uuid
        )
        blocked = waiter.execute(
            "SELECT 1 FROM workflow_instances WHERE uuid = $1 FOR UPDATE", instance.uuid
        )
        task = asyncio.ensure_future(blocked)
        waits = block_after("Sessions waiting on a workflow row lock")

        async def queued() -> list[asyncpg.Record]:
            rows = list(await pool.fetch(waits))
            if not rows:
                # The waiter cannot finish before the holder lets go.
                assert not task.done(), task
            return rows

        rows = await wait_until(queued, what="the waiter queued on the row lock")
        assert len(rows) == 1
        assert rows[0]["blocking_pid"] == holder.get_server_pid()
        assert rows[0]["pid"] == waiter.get_server_pid()
        assert rows[0]["blocking_state"] == "idle in transaction"
        await tx.rollback()
        await task
    finally:
        await pool.release(waiter)
        await pool.release(holder)
