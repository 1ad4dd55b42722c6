"""``duraflows-pg rearm --all --workflow NAME``: every parked timeout of one workflow."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from test_cli import assert_clean_error, cli

from duraflows_pg_async import (
    CommandRegistry,
    DefinitionRegistry,
    Event,
    State,
    TimeoutRetry,
    WorkflowDefinition,
    WorkflowInstance,
    WorkflowRuntime,
    pg_workflow_providers,
)


async def parked(pool: asyncpg.Pool, workflow: str) -> WorkflowInstance:
    now = datetime.now(UTC)
    instance = WorkflowInstance(
        uuid=uuid.uuid4(),
        workflow_name=workflow,
        current_state="waiting",
        version=3,
        context={},
        metadata={},
        expires_at=now - timedelta(hours=1),
        last_transition_at=now,
        created_at=now,
        updated_at=now,
        timeout_retry=TimeoutRetry(attempts=10, last_error="boom", parked_at=now),
    )
    await pg_workflow_providers(pool).instance_store.create(instance)
    return instance


async def parked_uuids(pool: asyncpg.Pool, workflow: str) -> set[uuid.UUID]:
    found = await pg_workflow_providers(pool).instance_store.find_parked_timeouts(
        workflow_name=workflow
    )
    return {instance.uuid for instance in found}


async def test_rearm_all_of_one_workflow_with_yes(database: str, pool: asyncpg.Pool) -> None:
    orders = {(await parked(pool, "order")).uuid for _ in range(3)}
    other = await parked(pool, "invoice")
    result = await cli("rearm", "--all", "--workflow", "order", "--yes", "--json", url=database)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert (body["workflow"], body["rearmed"]) == ("order", 3)
    assert {uuid.UUID(u) for u in body["uuids"]} == orders
    assert await parked_uuids(pool, "order") == set()
    assert await parked_uuids(pool, "invoice") == {other.uuid}
    again = await cli("rearm", "--all", "--workflow", "order", "--yes", url=database)
    assert again.returncode == 0, again.stderr
    assert "rearmed 0 parked timeout(s) of workflow 'order'" in again.stdout


async def test_rearm_all_asks_first_and_refuses_without_a_terminal(
    database: str, pool: asyncpg.Pool
) -> None:
    instance = await parked(pool, "order")
    refused = await cli("rearm", "--all", "--workflow", "order", url=database)
    assert_clean_error(refused, 2, "would rearm 1 parked timeout(s) of workflow 'order'")
    assert await parked_uuids(pool, "order") == {instance.uuid}


async def test_rearm_usage_errors(database: str) -> None:
    for args, text in [
        (("rearm",), "give the instance's UUID, or --all --workflow NAME"),
        (("rearm", "--all"), "--all takes no UUID and needs --workflow NAME"),
        (("rearm", "--all", str(uuid.uuid4()), "--workflow", "x"), "--all takes no UUID"),
        (("rearm", str(uuid.uuid4()), "--workflow", "x"), "give the instance's UUID, or --all"),
    ]:
        assert_clean_error(await cli(*args, url=database), 2, text)


async def test_rearm_leaves_an_instance_a_queued_execution_holds(
    database: str, pool: asyncpg.Pool
) -> None:
    held = await parked(pool, "order")
    free = await parked(pool, "order")
    definitions = DefinitionRegistry()
    definitions.register(
        WorkflowDefinition(
            name="order",
            initial_state="waiting",
            states={"waiting": State(events={"go": Event(target_state="done")}), "done": State()},
        )
    )
    runtime = WorkflowRuntime(
        definitions=definitions,
        commands=CommandRegistry(),
        persistence=pg_workflow_providers(pool, durable_execution=True),
    )
    await runtime.enqueue_event(held.uuid, "go", idempotency_key="k")

    one = await cli("rearm", str(held.uuid), url=database)
    assert_clean_error(one, 1, "busy")
    every = await cli("rearm", "--all", "--workflow", "order", "--yes", "--json", url=database)
    assert every.returncode == 0, every.stderr
    body = json.loads(every.stdout)
    assert (body["uuids"], body["busy"]) == ([str(free.uuid)], [str(held.uuid)])
    assert await parked_uuids(pool, "order") == {held.uuid}
