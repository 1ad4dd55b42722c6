"""Concurrency and cancellation: no lost update, exactly-once sweeping, cancellation anywhere."""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from helpers import SWEEP, ManualClock, row_locked

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    OnEnter,
    State,
    Timeout,
    WorkflowDefinition,
    WorkflowRuntime,
    create_pool,
    pg_workflow_providers,
)
from duraflows_pg_async.errors import LockTimeoutError

START = datetime(2026, 4, 1, 8, 0, tzinfo=UTC)

FLOW = WorkflowDefinition(
    name="flow",
    initial_state="new",
    states={
        "new": State(
            on_enter=OnEnter(target_state="ready", commands=(CommandRef("count"),)),
        ),
        "ready": State(
            events={
                "bump": Event(commands=(CommandRef("count"),)),
                "advance": Event(target_state="step1", commands=(CommandRef("count"),)),
                "expire": Event(target_state="expired", timeout=Timeout(minutes=5)),
            }
        ),
        "step1": State(on_enter=OnEnter(target_state="step2", commands=(CommandRef("count"),))),
        "step2": State(on_enter=OnEnter(target_state="done", commands=(CommandRef("count"),))),
        "done": State(),
        "expired": State(),
    },
)


def make_runtime(
    pool: asyncpg.Pool, clock: ManualClock, seen: list[int] | None = None
) -> WorkflowRuntime:
    definitions = DefinitionRegistry()
    definitions.register(FLOW)
    commands = CommandRegistry()

    async def count(subject: Any, ctx: ExecutionContext) -> None:
        value = int(ctx.context.get("n", 0))
        if seen is not None:
            seen.append(value)
        await asyncio.sleep(0)  # a yield, not a wait: a real command awaits something
        ctx.context["n"] = value + 1

    commands.register("count", count)
    return WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        persistence=pg_workflow_providers(pool, lock_timeout=30),
        clock=clock,
    )


async def idle_in_transaction(pool: asyncpg.Pool) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state LIKE 'idle in transaction%'"
        )
    )


@pytest.mark.slow
async def test_64_concurrent_events_on_one_instance_lose_nothing(database: str) -> None:
    pool = await create_pool(database, min_size=16, max_size=16)
    try:
        seen: list[int] = []
        runtime = make_runtime(pool, ManualClock(START), seen)
        instance = await runtime.create_instance("flow")
        seen.clear()
        results = await asyncio.gather(
            *(runtime.trigger_event(instance.uuid, "bump") for _ in range(64))
        )
        assert all(r.outcome == "success" for r in results)
        # Each transition saw the previous one's committed context: strictly sequential.
        assert sorted(seen) == list(range(1, 65))
        stored = await runtime.get_instance(instance.uuid)
        assert stored is not None
        # create's onEnter hop (1) + 64 events; the counter started at 1 after that hop.
        assert (stored.version, stored.context["n"]) == (65, 65)
        history = await runtime.get_history(instance.uuid, limit=100)
        assert len(history) == 65
        assert [h.event_name for h in history[:64]] == ["bump"] * 64
        assert {r.history_uuid for r in results} == {h.uuid for h in history[:64]}
        # The final context is the history's: one success row per increment.
        assert sum(1 for h in history if h.outcome == "success") == stored.context["n"]
    finally:
        await pool.close()


WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    from datetime import UTC, datetime
    from duraflows_pg_async import (
        CommandRef, CommandRegistry, DefinitionRegistry, Event, State, Timeout, TimeoutWorker,
        WorkflowDefinition, WorkflowRuntime, create_pool, pg_workflow_providers,
    )

    DEF = WorkflowDefinition(name="sweep", initial_state="waiting", states={
        "waiting": State(events={"fire": Event(target_state="fired",
            commands=(CommandRef("log"),), timeout=Timeout(minutes=1))}),
        "fired": State(),
    })

    async def main(dsn):
        pool = await create_pool(dsn, min_size=2, max_size=4)
        persistence = pg_workflow_providers(pool, lock_timeout=30)
        definitions = DefinitionRegistry()
        definitions.register(DEF)
        commands = CommandRegistry()

        async def log(subject, ctx):
            conn = persistence.transaction_runner.connection()
            await conn.execute(
                "INSERT INTO sweep_log (transition_uuid, worker) VALUES ($1, $2)",
                ctx.transition_uuid, sys.argv[1])

        commands.register("log", log)
        runtime = WorkflowRuntime(definitions=definitions, commands=commands,
                                  persistence=persistence)
        batched = sys.argv[2:] == ["batched"]
        workers = [TimeoutWorker(runtime, batch_size=50, poll_interval=0.05, batched=batched)
                   for _ in range(2)]
        async with asyncio.TaskGroup() as group:
            for worker in workers:
                group.create_task(worker.run())
            # Until every instance is swept: a poll (this script cannot import the tests'
            # helpers), bounded by the test's communicate(timeout=240).
            while await pool.fetchval(
                "SELECT count(*) FROM workflow_instances WHERE expires_at IS NOT NULL"
            ):
                await asyncio.sleep(0.1)
            for worker in workers:
                worker.stop()
        print(sum(w.stats.processed for w in workers))
        await pool.close()

    asyncio.run(main(os.environ["DATABASE_URL"]))
    """
)


@pytest.mark.slow
async def test_four_workers_in_two_processes_sweep_each_instance_once(database: str) -> None:
    await _sweep_in_two_processes(database, batched=(False, False))


@pytest.mark.slow
async def test_batched_and_per_instance_workers_in_two_processes_sweep_each_instance_once(
    database: str,
) -> None:
    # One process of batched workers (row locks, no claims), one of per-instance workers
    # (claims): each instance still fires once.
    await _sweep_in_two_processes(database, batched=(True, False))


async def _sweep_in_two_processes(database: str, *, batched: tuple[bool, bool]) -> None:
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(
            "CREATE TABLE sweep_log (transition_uuid uuid PRIMARY KEY, worker text NOT NULL)"
        )
        # The definition snapshot, then 5,000 instances due a minute ago.
        pool = await create_pool(database, min_size=1, max_size=2)
        definitions = DefinitionRegistry()
        definitions.register(SWEEP)
        await WorkflowRuntime(
            definitions=definitions,
            commands=CommandRegistry(),
            persistence=pg_workflow_providers(pool),
        ).initialize()
        await pool.close()
        await conn.execute(
            "INSERT INTO workflow_instances (uuid, workflow_name, current_state, "
            "definition_version, expires_at) SELECT gen_random_uuid(), 'sweep', 'waiting', 1, "
            "now() - interval '1 minute' - (g || ' milliseconds')::interval "
            "FROM generate_series(1, 5000) g"
        )
        # The DSN (and the server's password) in the environment: a command line is public.
        env = {**os.environ, "DATABASE_URL": database}

        def run(name: str, batched: bool) -> subprocess.Popen[str]:
            return subprocess.Popen(
                [sys.executable, "-c", WORKER_SCRIPT, name, *(["batched"] if batched else [])],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

        processes = [run("p1", batched[0]), run("p2", batched[1])]
        outputs = [await asyncio.to_thread(p.communicate, timeout=240) for p in processes]
        for process, (_out, err) in zip(processes, outputs, strict=True):
            assert process.returncode == 0, err
        processed = [int(out.strip().splitlines()[-1]) for out, _ in outputs]
        assert sum(processed) == 5000
        assert all(count > 0 for count in processed), processed  # both processes took work
        per_instance = await conn.fetch(
            "SELECT workflow_instance_uuid, count(*) AS n FROM workflow_history GROUP BY 1"
        )
        assert len(per_instance) == 5000
        assert {row["n"] for row in per_instance} == {1}
        assert await conn.fetchval("SELECT count(*) FROM sweep_log") == 5000
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM workflow_instances WHERE expires_at IS NOT NULL "
                "OR current_state <> 'fired'"
            )
            == 0
        )
    finally:
        await conn.close()


async def _cancel_after(delay: float, operation: Any) -> bool:
    """Run ``operation()`` and cancel it after ``delay`` seconds; True if it finished first."""
    task = asyncio.create_task(operation())
    await asyncio.sleep(delay)  # what is tested: a cancellation at this point of the operation
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return False
    return True


async def _duration(operation: Any) -> float:
    """The median time of three uncancelled runs of ``operation()``."""
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(3):
        started = loop.time()
        await operation()
        times.append(loop.time() - started)
    return sorted(times)[1]


def _delays(duration: float, trials: int) -> list[float]:
    """Cancellation delays spread evenly from 0 to 1.3 times the operation's duration, so that
    the cancellation lands at every await of it, and also after it finished."""
    return [duration * 1.3 * n / (trials - 1) for n in range(trials)]


async def _cut_everywhere(
    trial: Callable[[float], Awaitable[bool]], duration: float, trials: int
) -> tuple[int, int]:
    """Run ``trial(delay)`` over ``_delays(duration, trials)``; returns (finished, runs).

    The duration was measured once, and a busy machine may slow every later run past it; then
    no run finished and the late points were never reached, so the delay keeps doubling until
    one run finishes (the condition waited on), bounded only as a last resort."""
    delays = _delays(duration, trials)
    finished = 0
    for delay in delays:
        finished += await trial(delay)
    delay, runs = delays[-1], len(delays)
    while finished == 0:
        delay *= 2
        assert delay < 60, "the operation never finished within a minute"
        runs += 1
        finished += await trial(delay)
    return finished, runs


@pytest.mark.slow
async def test_cancellation_at_every_await_point_leaves_no_partial_write(database: str) -> None:
    pool = await create_pool(database, min_size=2, max_size=4)
    clock = ManualClock(START)
    runtime = make_runtime(pool, clock)
    try:
        # create_instance with its onEnter chain (new -> ready): nothing, or the whole thing.
        async def create_trial(delay: float) -> bool:
            before = await pool.fetchval("SELECT count(*) FROM workflow_instances")
            done = await _cancel_after(delay, lambda: runtime.create_instance("flow"))
            rows = await pool.fetch(
                "SELECT current_state, version, context_json->>'n' AS n FROM workflow_instances"
            )
            assert len(rows) in (before, before + 1)
            assert all(
                (r["current_state"], r["version"], r["n"]) == ("ready", 1, "1") for r in rows
            )
            assert await idle_in_transaction(pool) == 0
            return done

        # An event whose chain runs two more hops (ready -> step1 -> step2 -> done).
        async def event_trial(delay: float) -> bool:
            instance = await runtime.create_instance("flow")
            done = await _cancel_after(
                delay, functools.partial(runtime.trigger_event, instance.uuid, "advance")
            )
            stored = await runtime.get_instance(instance.uuid)
            assert stored is not None
            history = await runtime.get_history(instance.uuid)
            if stored.current_state == "ready":
                assert (stored.version, len(history)) == (1, 1)
            else:
                assert (stored.current_state, stored.version, len(history)) == ("done", 4, 4)
                assert stored.context["n"] == 4
            assert await idle_in_transaction(pool) == 0
            return done

        # A sweep of due instances: each instance fires whole or not at all.
        async def due_sweep() -> None:
            await pool.execute("UPDATE workflow_instances SET expires_at = NULL")
            await runtime.create_instance("flow")
            clock.set(START + timedelta(minutes=10))
            await runtime.process_expired_workflows(limit=5)
            clock.set(START)

        async def sweep_trial(delay: float) -> bool:
            await pool.execute("UPDATE workflow_instances SET expires_at = NULL")
            instance = await runtime.create_instance("flow")
            clock.set(START + timedelta(minutes=10))
            done = await _cancel_after(delay, lambda: runtime.process_expired_workflows(limit=5))
            clock.set(START)
            stored = await runtime.get_instance(instance.uuid)
            assert stored is not None
            history = await runtime.get_history(instance.uuid)
            assert (stored.current_state, stored.version, len(history)) in (
                ("ready", 1, 1),
                ("expired", 2, 2),
            )
            assert await idle_in_transaction(pool) == 0
            return done

        # Each phase is timed right before it runs: the create phase's check reads every row,
        # so no instance may have moved on yet.
        results = {}
        create_time = await _duration(lambda: runtime.create_instance("flow"))
        results["create"] = await _cut_everywhere(create_trial, create_time, 80)
        probe = [await runtime.create_instance("flow") for _ in range(3)]
        event_time = await _duration(lambda: runtime.trigger_event(probe.pop().uuid, "advance"))
        results["event"] = await _cut_everywhere(event_trial, event_time, 120)
        results["sweep"] = await _cut_everywhere(sweep_trial, await _duration(due_sweep), 60)
        assert pool.get_idle_size() == pool.get_size()
        # Every phase was cut at early, middle and late points and also ran to the end (a
        # delay of zero always cancels before the first round trip completes).
        for phase, (finished, runs) in results.items():
            assert 0 < finished < runs, (phase, finished, runs)
    finally:
        await pool.close()


async def test_lock_timeout_fails_fast_and_leaves_nothing(database: str) -> None:
    pool = await create_pool(database, min_size=1, max_size=2)
    try:
        definitions = DefinitionRegistry()
        definitions.register(FLOW)
        commands = CommandRegistry()
        commands.register("count", lambda s, c: None)
        runtime = WorkflowRuntime(
            definitions=definitions,
            commands=commands,
            persistence=pg_workflow_providers(pool, lock_timeout=0.2),
        )
        instance = await runtime.create_instance("flow")
        async with row_locked(database, instance.uuid):
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(LockTimeoutError) as caught:
                await runtime.trigger_event(instance.uuid, "bump")
            assert loop.time() - started < 3
            assert isinstance(caught.value.__cause__, asyncpg.LockNotAvailableError)
        stored = await runtime.get_instance(instance.uuid)
        assert stored is not None
        assert stored.version == 1
        assert len(await runtime.get_history(instance.uuid)) == 1
        assert pool.get_idle_size() == pool.get_size()
        # Free again: the same call now succeeds.
        assert (await runtime.trigger_event(instance.uuid, "bump")).outcome == "success"
    finally:
        await pool.close()
