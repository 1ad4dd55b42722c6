"""The app on PostgreSQL: each test gets a fresh database, migrated, with the app's table."""

import asyncpg
from approvals import submit_claim

from duraflows_pg_async import WorkflowRuntime


# --8<-- [start:approve]
async def test_an_approved_claim_is_paid(runtime: WorkflowRuntime) -> None:
    claim = await runtime.create_instance("expense", context={"amount": 120})

    result = await runtime.trigger_event(claim.uuid, "approve")

    assert (result.outcome, result.to_state) == ("success", "paid")
    instance = await runtime.get_instance(claim.uuid)
    assert instance.context["paid"] == 120
    history = await runtime.get_history(claim.uuid)
    assert [(h.event_name, h.to_state) for h in reversed(history)] == [
        ("approve", "approved"),
        ("onEnter", "paid"),
    ]


# --8<-- [end:approve]


async def test_a_claim_over_budget_is_not_approved(runtime: WorkflowRuntime) -> None:
    claim = await runtime.create_instance("expense", context={"amount": 9000})
    result = await runtime.trigger_event(claim.uuid, "approve")
    assert result.outcome == "guard-rejected"
    assert (await runtime.get_instance(claim.uuid)).current_state == "submitted"


# --8<-- [start:own-table]
async def test_a_claim_and_its_instance_are_written_together(
    runtime: WorkflowRuntime, duraflows_pool: asyncpg.Pool
) -> None:
    uuid = await submit_claim(runtime, "ada", 80)

    row = await duraflows_pool.fetchrow("SELECT * FROM expense_claims")
    assert (row["instance_uuid"], row["employee"], row["amount"]) == (uuid, "ada", 80)
    assert (await runtime.get_instance(uuid)).current_state == "submitted"


async def test_every_test_starts_from_an_empty_database(duraflows_pool: asyncpg.Pool) -> None:
    assert await duraflows_pool.fetchval("SELECT count(*) FROM expense_claims") == 0
    assert await duraflows_pool.fetchval("SELECT count(*) FROM workflow_instances") == 0


# --8<-- [end:own-table]
