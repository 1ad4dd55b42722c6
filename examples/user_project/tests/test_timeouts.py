"""A three-day timeout, fired at once: the runtime's clock is the test's ManualClock."""

import asyncio
from datetime import timedelta

import asyncpg
from approvals import build_runtime

from duraflows_pg_async import (
    StateEnterEvent,
    TimeoutWorker,
    WorkflowRuntime,
    pg_workflow_providers,
)
from duraflows_pg_async.testing import ManualClock


# --8<-- [start:sweep]
async def test_an_undecided_claim_is_escalated_after_three_days(
    runtime: WorkflowRuntime, duraflows_clock: ManualClock
) -> None:
    claim = await runtime.create_instance("expense", context={"amount": 120})

    duraflows_clock.advance(timedelta(days=2))
    assert (await runtime.process_expired_workflows()).processed == 0

    # Due once the clock is past the deadline (three days after submission).
    duraflows_clock.advance(timedelta(days=1, seconds=1))
    assert (await runtime.process_expired_workflows()).processed == 1
    assert (await runtime.get_instance(claim.uuid)).current_state == "escalated"


# --8<-- [end:sweep]


# --8<-- [start:worker]
async def test_a_worker_escalates_it(
    duraflows_pool: asyncpg.Pool, duraflows_clock: ManualClock
) -> None:
    escalated = asyncio.Event()

    def observe(event: StateEnterEvent) -> None:
        if event.state == "escalated":
            escalated.set()

    runtime = build_runtime(
        pg_workflow_providers(duraflows_pool), clock=duraflows_clock, observers=[observe]
    )
    await runtime.create_instance("expense", context={"amount": 120})
    worker = TimeoutWorker(runtime, poll_interval=0.05)  # polls often: the test waits less
    async with asyncio.TaskGroup() as group:
        group.create_task(worker.run())
        duraflows_clock.advance(days=3, seconds=1)
        # Wait for what the worker does, not for time: the bound only fails a broken test.
        await asyncio.wait_for(escalated.wait(), timeout=30)
        worker.stop()  # run() returns, the task group ends
    assert worker.stats.processed == 1


# --8<-- [end:worker]
