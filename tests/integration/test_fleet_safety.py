"""A database shared by many services: sweeps touch only their own workflows, never wait on a
row someone else holds, survive rows they cannot read, and keep their claims short and visible."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from helpers import ManualClock, lock_row, reminder

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    CommandResult,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    State,
    Timeout,
    TimeoutRetryPolicy,
    TimeoutWorker,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
    pg_workflow_providers,
)
from duraflows_pg_async._core.text import storable_text
from duraflows_pg_async._runtime.sweeper import DEFAULT_SWEEP_LEASE
from duraflows_pg_async.errors import InvalidArgumentError, UnreadableRowError
from duraflows_pg_async.stores import PgWorkflowInstanceStore

Send = Callable[[Any, ExecutionContext], Awaitable[None] | None]


def runtime_for(
    persistence: WorkflowPersistenceProvider,
    clock: ManualClock,
    *names: str,
    send: Send | None = None,
    **options: Any,
) -> WorkflowRuntime:
    definitions = DefinitionRegistry()
    for name in names:
        definitions.register(reminder(name))
    commands = CommandRegistry()

    def default_send(subject: Any, ctx: ExecutionContext) -> None:
        ctx.context["sent"] = True

    commands.register("send", send or default_send)
    return WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        persistence=persistence,
        clock=clock,
        **options,
    )


async def due_instances(
    runtime: WorkflowRuntime, clock: ManualClock, workflow: str, n: int
) -> list[UUID]:
    return [(await runtime.create_instance(workflow)).uuid for _ in range(n)]


async def fire_all(runtime: WorkflowRuntime) -> int:
    total = 0
    while True:
        result = await runtime.process_expired_workflows(limit=100)
        total += result.processed
        if result.processed + result.rejected + len(result.failed) == 0:
            return total


# --- 1. a sweep claims only its runtime's workflows ------------------------------------------


async def test_a_sweep_leaves_other_workflows_alone(
    any_persistence: WorkflowPersistenceProvider,
    clock: ManualClock,
) -> None:
    alpha = runtime_for(any_persistence, clock, "alpha")
    beta = runtime_for(any_persistence, clock, "beta")
    betas = await due_instances(beta, clock, "beta", 100)
    alphas = await due_instances(alpha, clock, "alpha", 3)
    clock.advance(minutes=6)

    result = await alpha.process_expired_workflows(limit=200)
    assert (result.processed, result.failed, result.parked) == (3, [], [])
    for key in betas:
        instance = await beta.get_instance(key)
        assert instance is not None
        # Not claimed, not failed, not delayed: alpha's sweep never took it.
        assert (instance.current_state, instance.timeout_retry, instance.claimed_until) == (
            "waiting",
            None,
            None,
        )
    assert await fire_all(beta) == 100
    for key in alphas:
        instance = await alpha.get_instance(key)
        assert instance is not None
        assert instance.current_state == "reminded"


async def test_runtimes_of_different_workflows_sweep_side_by_side(
    any_persistence: WorkflowPersistenceProvider,
    clock: ManualClock,
) -> None:
    all_reminded = asyncio.Event()
    sent: list[str] = []

    def send(subject: Any, ctx: ExecutionContext) -> None:
        assert ctx.from_state is not None  # a timeout's event, not a creation
        sent.append(ctx.from_state)
        if len(sent) == 80:
            all_reminded.set()

    alpha = runtime_for(any_persistence, clock, "alpha", send=send)
    beta = runtime_for(any_persistence, clock, "beta", send=send)
    await due_instances(alpha, clock, "alpha", 40)
    await due_instances(beta, clock, "beta", 40)
    clock.advance(minutes=6)
    workers = [
        TimeoutWorker(alpha, batch_size=7, poll_interval=0.01),
        TimeoutWorker(beta, batch_size=7, poll_interval=0.01),
    ]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        async with asyncio.timeout(60):
            await all_reminded.wait()
    finally:
        for w in workers:
            w.stop()
        await asyncio.gather(*tasks)
    assert [w.stats.processed for w in workers] == [40, 40]
    assert [w.stats.failed for w in workers] == [0, 0]
    assert [w.stats.parked for w in workers] == [0, 0]


async def test_workflow_names_narrow_a_sweep(
    any_persistence: WorkflowPersistenceProvider, clock: ManualClock
) -> None:
    both = runtime_for(any_persistence, clock, "alpha", "beta")
    await due_instances(both, clock, "alpha", 2)
    betas = await due_instances(both, clock, "beta", 2)
    clock.advance(minutes=6)
    result = await both.process_expired_workflows(workflow_names=["alpha"])
    assert result.processed == 2
    for key in betas:
        instance = await both.get_instance(key)
        assert instance is not None
        assert instance.current_state == "waiting"
    worker = TimeoutWorker(both, workflow_names=["beta"])
    assert worker.workflow_names == ["beta"]
    with pytest.raises(InvalidArgumentError, match="'gamma' is not registered"):
        await both.process_expired_workflows(workflow_names=["alpha", "gamma"])
    with pytest.raises(InvalidArgumentError, match="workflow_names"):
        await both.process_expired_workflows(workflow_names="alpha")
    with pytest.raises(InvalidArgumentError, match="not registered"):
        TimeoutWorker(both, workflow_names=["gamma"])


async def test_the_claim_query_is_served_by_the_per_workflow_index(pool: asyncpg.Pool) -> None:
    """100,000 overdue rows of another service's workflow: the sweep reaches its own rows by
    the per-workflow index, without scanning or sorting the others."""
    now = datetime(2026, 5, 1, tzinfo=UTC)
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO workflow_instances (uuid, workflow_name, current_state, "
            "definition_version, expires_at) SELECT gen_random_uuid(), "
            "CASE WHEN g % 1000 = 0 THEN 'beta' ELSE 'alpha' END, 'waiting', 1, "
            "$1::timestamptz - (g || ' seconds')::interval FROM generate_series(1, 100000) g",
            now,
        )
        await conn.execute("ANALYZE workflow_instances")
        store = pg_workflow_providers(pool).instance_store
        assert isinstance(store, PgWorkflowInstanceStore)
        queries = store._q
        async with conn.transaction():
            # Generic plans too: asyncpg prepares the statement, and PostgreSQL switches to a
            # generic plan after five executions.
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            plan = "\n".join(
                row[0]
                for row in await conn.fetch(
                    "EXPLAIN "
                    + queries.claim_expired_of.replace("$1", "100")
                    .replace("$2", "'2026-05-01T00:00:00Z'::timestamptz")
                    .replace("$3", "'2026-05-01T00:02:00Z'::timestamptz")
                    .replace("$4", "ARRAY['beta']")
                )
            )
        assert "workflow_instances_workflow_due_idx" in plan, plan
        assert "Seq Scan on workflow_instances" not in plan, plan
        assert "Sort Key: (COALESCE" not in plan.split("->  Limit")[-1], plan


# --- 2. a row the decoder cannot read -------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_json", "reason"),
    [
        ('"oops"', "holds a JSON string, not a JSON object"),
        ('{"x": 1e5000}', "cannot be decoded"),
        ("[1, 2]", "holds JSON an array, not a JSON object"),
    ],
)
async def test_an_unreadable_row_is_parked_and_the_batch_fires(
    providers: WorkflowPersistenceProvider,
    pool: asyncpg.Pool,
    bad_json: str,
    reason: str,
    clock: ManualClock,
) -> None:
    runtime = runtime_for(providers, clock, "alpha")
    keys = await due_instances(runtime, clock, "alpha", 5)
    bad = keys[2]
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE workflow_instances SET context_json = $2::text::jsonb WHERE uuid = $1",
            bad,
            bad_json,
        )
    clock.advance(minutes=6)

    with pytest.raises(UnreadableRowError) as info:
        await runtime.get_instance(bad)
    assert info.value.instance_uuid == bad
    assert info.value.column == "workflow_instances.context_json"
    assert str(bad) in str(info.value)
    assert reason in str(info.value)

    result = await runtime.process_expired_workflows()
    assert result.processed == 4
    for key in keys:
        if key != bad:
            swept = await runtime.get_instance(key)
            assert swept is not None
            assert swept.current_state == "reminded"
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT timeout_parked_at, timeout_last_error, timeout_attempts, "
            "context_json::text AS context FROM workflow_instances WHERE uuid = $1",
            bad,
        )
    assert row is not None
    assert row["timeout_parked_at"] == clock.now()
    assert "workflow_instances.context_json" in row["timeout_last_error"]
    assert str(bad) in row["timeout_last_error"]
    assert row["timeout_attempts"] == 1
    assert row["context"] != "{}"  # the data itself is left for someone to repair
    # Later sweeps pass over it; once repaired and rearmed, it fires.
    assert (await runtime.process_expired_workflows()).processed == 0
    async with pool.acquire() as conn:
        await conn.execute("UPDATE workflow_instances SET context_json = '{}' WHERE uuid = $1", bad)
    await runtime.rearm_timeout(bad)
    assert (await runtime.process_expired_workflows()).processed == 1


async def test_an_unreadable_metadata_column_is_named(
    providers: WorkflowPersistenceProvider, pool: asyncpg.Pool, clock: ManualClock
) -> None:
    runtime = runtime_for(providers, clock, "alpha")
    (key,) = await due_instances(runtime, clock, "alpha", 1)
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE workflow_instances SET metadata_json = '{\"n\": 1e5000}' WHERE uuid = $1", key
        )
    with pytest.raises(UnreadableRowError, match="metadata_json cannot be decoded"):
        await runtime.trigger_event(key, "remind")


# --- 4. text that PostgreSQL cannot store ---------------------------------------------------


def routed_runtime(persistence: WorkflowPersistenceProvider, clock: ManualClock) -> WorkflowRuntime:
    definitions = DefinitionRegistry()
    definitions.register(
        WorkflowDefinition(
            name="billing",
            initial_state="open",
            states={
                "open": State(
                    events={
                        "notify": Event(target_state="notified", commands=(CommandRef("ping"),)),
                        "charge": Event(
                            target_state="charged",
                            error_state="declined",
                            commands=(CommandRef("charge"),),
                        ),
                    }
                ),
                "notified": State(),
                "charged": State(),
                "declined": State(),
            },
        )
    )
    commands = CommandRegistry()

    def ping(subject: Any, ctx: ExecutionContext) -> None:
        raise RuntimeError("bad byte \x00 and half a pair \ud83d")

    def charge(subject: Any, ctx: ExecutionContext) -> CommandResult:
        return CommandResult(
            ok=False,
            code="DECLINED\x00",
            message="card \x00 declined \udc00",
            metadata={"why\x00": ["\ud800"]},
            error={"detail": "\x00"},
        )

    commands.register("ping", ping, best_effort=True)
    commands.register("charge", charge)
    return WorkflowRuntime(
        definitions=definitions, commands=commands, persistence=persistence, clock=clock
    )


async def test_command_text_with_nul_or_lone_surrogates_is_stored(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    runtime = routed_runtime(any_persistence, ManualClock())
    first = await runtime.create_instance("billing")
    result = await runtime.trigger_event(first.uuid, "notify")
    assert (result.outcome, result.to_state) == ("success", "notified")
    (thrown,) = result.command_results
    assert thrown.message == "bad byte \ufffd and half a pair \ufffd"
    assert thrown.error == {"name": "RuntimeError", "message": thrown.message}

    second = await runtime.create_instance("billing")
    routed = await runtime.trigger_event(second.uuid, "charge")
    assert (routed.outcome, routed.to_state) == ("failure", "declined")
    (declined,) = routed.command_results
    assert declined.code == "DECLINED\ufffd"
    assert declined.message == "card \ufffd declined \ufffd"
    assert declined.metadata == {"why\ufffd": ["\ufffd"]}
    assert declined.error == {"detail": "\ufffd"}
    (record,) = await runtime.get_history(second.uuid)
    assert record.error_message == "card \ufffd declined \ufffd"
    assert record.command_results == [declined]
    assert storable_text("plain") == "plain"


# --- 6. a row held by someone else ----------------------------------------------------------


async def test_a_sweep_passes_over_a_claimed_row_a_request_holds(
    database: str, pool: asyncpg.Pool, clock: ManualClock
) -> None:
    """Providers as `duraflows-pg worker` builds them (no lock_timeout): a request locks an
    instance after the sweep claimed it; the sweep fires the rest, does not count the held one
    as a failure, and a later sweep fires it once the request lets go."""
    locked = asyncio.Event()
    holder: list[asyncpg.Connection] = []
    keys: list[UUID] = []

    async def send(subject: Any, ctx: ExecutionContext) -> None:
        ctx.context["sent"] = True
        if not holder:
            conn = await asyncpg.connect(database)
            holder.append(conn)
            await conn.execute("BEGIN")
            await lock_row(conn, keys[-1])
            locked.set()

    runtime = runtime_for(pg_workflow_providers(pool), clock, "alpha", send=send)
    for _ in range(50):
        keys.append((await runtime.create_instance("alpha")).uuid)
        clock.advance(seconds=1)
    clock.advance(minutes=6)
    try:
        async with asyncio.timeout(60):
            result = await runtime.process_expired_workflows(limit=100)
        assert locked.is_set()
        assert result.processed == 49
        assert result.failed == []
        held = await runtime.get_instance(keys[-1])
        assert held is not None
        assert held.current_state == "waiting"
        assert held.timeout_retry is None  # not counted as a failed attempt
        # Still held: the claim could not be handed back without waiting, so the next sweep
        # tries again, and the claim never outlives the request by more than that.
        assert (await runtime.process_expired_workflows()).processed == 0
    finally:
        for conn in holder:
            await conn.execute("ROLLBACK")
            await conn.close()
    assert (await runtime.process_expired_workflows()).processed == 1


# --- 7. deadlines across a daylight-saving change --------------------------------------------


async def test_deadlines_are_exact_across_a_dst_change(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    paris = ZoneInfo("Europe/Paris")
    # 30 minutes before the clocks go forward (2026-03-29 02:00 -> 03:00 in Paris).
    clock = ManualClock(datetime(2026, 3, 29, 1, 30, tzinfo=paris))
    definitions = DefinitionRegistry()
    definitions.register(
        WorkflowDefinition(
            name="daily",
            initial_state="waiting",
            states={
                "waiting": State(
                    events={"expire": Event(target_state="expired", timeout=Timeout(days=1))}
                ),
                "expired": State(),
            },
        )
    )
    runtime = WorkflowRuntime(
        definitions=definitions,
        commands=CommandRegistry(),
        persistence=any_persistence,
        clock=clock,
    )
    instance = await runtime.create_instance("daily")
    assert instance.expires_at is not None
    assert instance.expires_at - clock.now() == timedelta(days=1)
    assert instance.expires_at == datetime(2026, 3, 29, 0, 30, tzinfo=UTC) + timedelta(days=1)
    # Due exactly 24 hours later, not 23 (elapsed time: added in UTC, shown in Paris time).
    start = clock.now().astimezone(UTC)
    clock.set((start + timedelta(hours=23, minutes=59)).astimezone(paris))
    assert (await runtime.process_expired_workflows()).processed == 0
    clock.set((start + timedelta(hours=24, minutes=1)).astimezone(paris))
    assert (await runtime.process_expired_workflows()).processed == 1


# --- 8. claims: visible, released by rearm, configurable, short by default --------------------


async def test_claims_are_visible_and_rearm_releases_them(
    any_persistence: WorkflowPersistenceProvider,
    clock: ManualClock,
) -> None:
    runtime = runtime_for(any_persistence, clock, "alpha", sweep_lease=timedelta(seconds=45))
    (key,) = await due_instances(runtime, clock, "alpha", 1)
    clock.advance(minutes=6)
    store = any_persistence.instance_store
    async with any_persistence.transaction_runner.transaction():
        (claimed,) = await store.find_expired(
            10, clock.now(), claim_until=clock.now() + runtime.sweep_lease
        )
    assert claimed.claimed_until == clock.now() + timedelta(seconds=45)
    seen = await runtime.get_instance(key)
    assert seen is not None
    assert seen.claimed_until == clock.now() + timedelta(seconds=45)
    assert (await runtime.process_expired_workflows()).processed == 0  # claimed: not ours now
    rearmed = await runtime.rearm_timeout(key)
    assert rearmed.claimed_until is None
    seen = await runtime.get_instance(key)
    assert seen is not None
    assert seen.claimed_until is None
    assert (await runtime.process_expired_workflows()).processed == 1


def test_the_default_lease_keeps_a_killed_worker_s_stall_under_30_seconds() -> None:
    # The stall after a kill is the lease plus one poll interval of the next worker.
    assert DEFAULT_SWEEP_LEASE + timedelta(seconds=1) <= timedelta(seconds=30)


@pytest.mark.parametrize("lease", [0, -1, float("nan"), "20", timedelta(0)])
async def test_a_bad_lease_is_refused(
    any_persistence: WorkflowPersistenceProvider, lease: object
) -> None:
    with pytest.raises(InvalidArgumentError, match="lease"):
        runtime_for(any_persistence, ManualClock(), "alpha", sweep_lease=lease)
    runtime = runtime_for(any_persistence, ManualClock(), "alpha")
    with pytest.raises(InvalidArgumentError, match="lease"):
        await runtime.sweep(lease=lease)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="lease"):
        TimeoutWorker(runtime, lease=lease)  # type: ignore[arg-type]


async def test_a_slow_batch_hands_back_what_it_has_not_reached_at_half_lease(
    any_persistence: WorkflowPersistenceProvider,
    clock: ManualClock,
) -> None:

    def send(subject: Any, ctx: ExecutionContext) -> None:
        clock.advance(seconds=4)  # each instance takes 4 s of the runtime's clock

    runtime = runtime_for(
        any_persistence, clock, "alpha", send=send, sweep_lease=timedelta(seconds=20)
    )
    keys = await due_instances(runtime, clock, "alpha", 6)
    clock.advance(minutes=6)
    result = await runtime.process_expired_workflows()
    # 0 s, 4 s, 8 s: started before half the lease (10 s); the rest is handed back.
    assert result.processed == 3
    rest = [await runtime.get_instance(k) for k in keys]
    waiting = [i for i in rest if i is not None and i.current_state == "waiting"]
    assert len(waiting) == 3
    assert all(i.claimed_until is None for i in waiting)
    assert (await runtime.process_expired_workflows()).processed == 3


# --- 13 and 15: failures that cannot be recorded, and the log of each attempt -----------------


class _BrokenPolicy(TimeoutRetryPolicy):
    """Stands for any failure of the recording step itself."""

    calls = 0

    def next(self, previous: Any, message: str, now: datetime) -> Any:
        type(self).calls += 1
        if type(self).calls == 1:
            raise OverflowError("date value out of range")
        return super().next(previous, message, now)


async def test_a_failure_that_cannot_be_recorded_is_not_rerun_at_once(
    any_persistence: WorkflowPersistenceProvider,
    caplog: pytest.LogCaptureFixture,
    clock: ManualClock,
) -> None:
    runs: list[UUID] = []

    def send(subject: Any, ctx: ExecutionContext) -> None:
        runs.append(ctx.transition_uuid)
        raise RuntimeError("the mail server said no")

    _BrokenPolicy.calls = 0
    runtime = runtime_for(any_persistence, clock, "alpha", send=send, timeout_retry=_BrokenPolicy())
    (key,) = await due_instances(runtime, clock, "alpha", 1)
    clock.advance(minutes=6)
    with caplog.at_level(logging.ERROR, logger="duraflows_pg_async"):
        result = await runtime.process_expired_workflows()
    assert len(runs) == 1
    assert result.failed[0].attempts is None
    assert "could not record the failed timeout" in caplog.text
    assert str(key) in caplog.text
    for _ in range(3):
        await runtime.process_expired_workflows()
    assert len(runs) == 1  # postponed, not retried in every sweep
    clock.advance(minutes=2)  # the policy's first delay is 1 minute
    await runtime.process_expired_workflows()
    assert len(runs) == 2


async def test_each_failed_attempt_is_logged(
    any_persistence: WorkflowPersistenceProvider,
    caplog: pytest.LogCaptureFixture,
    clock: ManualClock,
) -> None:

    def send(subject: Any, ctx: ExecutionContext) -> None:
        raise RuntimeError("the mail server said no")

    runtime = runtime_for(any_persistence, clock, "alpha", send=send)
    (key,) = await due_instances(runtime, clock, "alpha", 1)
    clock.advance(minutes=6)
    with caplog.at_level(logging.WARNING, logger="duraflows_pg_async"):
        (failure,) = (await runtime.process_expired_workflows()).failed
    assert failure.retry_at is not None
    (record,) = [r for r in caplog.records if "failed, attempt 1" in r.getMessage()]
    message = record.getMessage()
    assert str(key) in message
    assert "'alpha'" in message
    assert failure.retry_at.isoformat() in message
    assert "the mail server said no" in message
