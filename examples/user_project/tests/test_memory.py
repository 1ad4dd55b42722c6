"""The same workflow on the in-memory provider: no database, milliseconds per test."""

import pytest
from approvals import build_runtime

from duraflows_pg_async import WorkflowRuntime, memory_workflow_providers
from duraflows_pg_async.testing import ManualClock


# --8<-- [start:memory]
@pytest.fixture
def memory_runtime(duraflows_clock: ManualClock) -> WorkflowRuntime:
    return build_runtime(memory_workflow_providers(), clock=duraflows_clock)


async def test_a_rejected_claim_stays_rejected(memory_runtime: WorkflowRuntime) -> None:
    claim = await memory_runtime.create_instance("expense", context={"amount": 120})
    await memory_runtime.trigger_event(claim.uuid, "reject")
    assert [e.event_name for e in await memory_runtime.get_available_events(claim.uuid)] == []


# --8<-- [end:memory]


# --8<-- [start:both]
@pytest.fixture(params=["memory", "postgres"])
def any_runtime(request: pytest.FixtureRequest, duraflows_clock: ManualClock) -> WorkflowRuntime:
    """The in-memory provider, then PostgreSQL: the test runs on both."""
    if request.param == "memory":
        return build_runtime(memory_workflow_providers(), clock=duraflows_clock)
    return request.getfixturevalue("runtime")  # the conftest's, on duraflows_pool


async def test_a_three_day_timeout_on_both_providers(
    any_runtime: WorkflowRuntime, duraflows_clock: ManualClock
) -> None:
    claim = await any_runtime.create_instance("expense", context={"amount": 1})
    duraflows_clock.advance(days=3, seconds=1)
    assert (await any_runtime.process_expired_workflows()).processed == 1
    assert (await any_runtime.get_instance(claim.uuid)).current_state == "escalated"


# --8<-- [end:both]
