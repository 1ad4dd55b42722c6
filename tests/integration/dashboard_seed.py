"""A small shop to show on the dashboard: instances in every timeout status, a history, queued
executions pending and parked, and a context that tries to inject HTML. Shared by the dashboard's
HTTP, browser and CLI tests and by scripts/screenshots.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from duraflows_pg_async import (
    Clock,
    CommandRef,
    CommandRegistry,
    DefinitionRegistry,
    DurableExecutionPolicy,
    Event,
    ExecutionContext,
    State,
    Timeout,
    TimeoutRetryPolicy,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
)

XSS = '<script>alert("owned")</script><img src=x onerror=alert(1)>'

ORDERS = WorkflowDefinition(
    name="orders",
    initial_state="new",
    states={
        "new": State(
            events={
                "approve": Event(target_state="approved"),
                "reject": Event(target_state="rejected"),
            }
        ),
        "approved": State(
            events={
                "ship": Event(
                    target_state="shipped",
                    commands=(CommandRef("ship"),),
                    timeout=Timeout(minutes=30),
                ),
                "cancel": Event(target_state="rejected"),
            }
        ),
        "shipped": State(),
        "rejected": State(),
    },
)


@dataclass
class Shop:
    """The runtime, and the instances and executions worth a look."""

    runtime: WorkflowRuntime
    down: dict[str, bool]
    parked: UUID
    retrying: UUID
    xss: UUID
    parked_execution: UUID
    pending_execution: UUID
    history: UUID


def shop_runtime(
    persistence: WorkflowPersistenceProvider, clock: Clock | None = None
) -> tuple[WorkflowRuntime, dict[str, bool]]:
    """A runtime of ``orders`` whose ``ship`` command fails while ``down["ship"]`` is set."""
    down = {"ship": False}

    async def ship(subject: Any, ctx: ExecutionContext) -> None:
        if down["ship"]:
            raise RuntimeError("carrier API unreachable")
        ctx.context["tracking"] = "TRK-1"

    definitions = DefinitionRegistry()
    definitions.register(ORDERS)
    commands = CommandRegistry()
    commands.register("ship", ship)
    runtime = WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        persistence=persistence,
        clock=clock,
        timeout_retry=TimeoutRetryPolicy(initial_delay=60, max_delay=60, max_attempts=2),
        durable_execution=DurableExecutionPolicy(max_attempts=1),
    )
    return runtime, down


async def seed(runtime: WorkflowRuntime, down: dict[str, bool], clock: Any) -> Shop:
    """Fill the shop; ``clock`` is the runtime's ManualClock (moved to make timeouts due)."""
    create = runtime.create_instance
    for n in range(3):
        await create("orders", context={"order": n}, metadata={"tenant": "acme"})
    history = await create("orders", context={"order": 10})
    await runtime.trigger_event(history.uuid, "approve", trigger_metadata={"by": "ops"})
    await runtime.trigger_event(history.uuid, "ship")
    rejected = await create("orders", context={"order": 11})
    await runtime.trigger_event(rejected.uuid, "reject")
    xss = await create("orders", context={"note": XSS}, metadata={XSS: XSS})

    # Two approved instances whose timeout fails: one retrying, one parked.
    parked = await create("orders", context={"order": 20})
    await runtime.trigger_event(parked.uuid, "approve")
    down["ship"] = True
    clock.advance(minutes=31)
    assert (await runtime.process_expired_workflows()).failed
    clock.advance(minutes=2)
    retrying = await create("orders", context={"order": 21})
    await runtime.trigger_event(retrying.uuid, "approve")
    clock.advance(minutes=31)
    result = await runtime.process_expired_workflows()
    assert [p.uuid for p in result.parked] == [parked.uuid], result
    clock.advance(minutes=1)

    # Queued executions: one parked (its command failed; max_attempts=1), one pending.
    queued = await create("orders", context={"order": 30})
    await runtime.trigger_event(queued.uuid, "approve")
    parked_execution = await runtime.enqueue_event(queued.uuid, "ship", idempotency_key="ship-30")
    await runtime.process_pending_executions()
    down["ship"] = False
    waiting = await create("orders", context={"order": 31})
    await runtime.trigger_event(waiting.uuid, "approve")
    pending = await runtime.enqueue_event(waiting.uuid, "ship", idempotency_key="ship-31")
    return Shop(
        runtime=runtime,
        down=down,
        parked=parked.uuid,
        retrying=retrying.uuid,
        xss=xss.uuid,
        parked_execution=parked_execution.uuid,
        pending_execution=pending.uuid,
        history=history.uuid,
    )
