"""Wake-ups: how late timeouts fire and how soon a queued execution starts, with wake-ups
(workers sleep until the nearest due time, woken by LISTEN/NOTIFY) and with polling every
second (``wakeups=False``), in the same run; and what the NOTIFY costs a transition.

Lateness is fired - due: the wall clock when the timeout's command runs, minus the instance's
deadline. Instances are created through the runtime at evenly spread times, each with a short
timeout, so that every deadline is written while the worker sleeps (the case a NOTIFY is for).
Enqueue latency is the time from the ``enqueue_event`` call to its first command running.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    ExecutionWorker,
    State,
    Timeout,
    TimeoutWorker,
    WorkflowDefinition,
    WorkflowRuntime,
    pg_workflow_providers,
)

from .stats import percentile, ratio
from .workloads import Codec, duraflows_pool

__all__ = ["WakeupResult", "run_wakeups"]

# Each deadline is this long after its instance is created: written while the worker sleeps.
TIMEOUT_SECONDS = 0.25
# Every worker's poll_interval: the fallback of wake-ups, the rhythm of polling.
POLL_INTERVAL = 1.0

TIMED = WorkflowDefinition(
    name="bench_wakeup",
    initial_state="waiting",
    states={
        "waiting": State(
            events={
                "expire": Event(
                    target_state="expired",
                    commands=(CommandRef("fired"),),
                    timeout=Timeout(seconds=TIMEOUT_SECONDS),
                ),
                "touch": Event(target_state="waiting"),
            }
        ),
        # Touched after it fired (a loaded machine): back to waiting, never an error.
        "expired": State(events={"touch": Event(target_state="waiting")}),
    },
)
QUEUED = WorkflowDefinition(
    name="bench_queued",
    initial_state="new",
    states={
        "new": State(events={"go": Event(target_state="done", commands=(CommandRef("ran"),))}),
        "done": State(),
    },
)


@dataclass(frozen=True, slots=True)
class WakeupResult:
    mode: str  # "wakeups" or "polling"
    what: str  # "timeout lateness" or "enqueue to first command"
    count: int
    spread_seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float


class _Bench:
    """A runtime whose commands record when they ran, by the context's ``i``."""

    def __init__(self, pool: asyncpg.Pool, *, wakeups: bool) -> None:
        self.ran: dict[int, float] = {}
        self.all_ran = asyncio.Event()
        self.expected = 0
        definitions = DefinitionRegistry()
        definitions.register(TIMED)
        definitions.register(QUEUED)
        commands = CommandRegistry()

        def record(subject: Any, ctx: ExecutionContext) -> None:
            self.ran.setdefault(ctx.context["i"], time.time())
            if len(self.ran) >= self.expected:
                self.all_ran.set()

        commands.register("fired", record)
        commands.register("ran", record)
        self.runtime = WorkflowRuntime(
            definitions=definitions,
            commands=commands,
            persistence=pg_workflow_providers(pool, durable_execution=True, wakeups=wakeups),
        )


async def _paced(count: int, spread: float, step: Any) -> None:
    """``step(i)`` for i in 0..count-1, the i-th at i * spread / count seconds from now."""
    start = time.perf_counter()
    for i in range(count):
        delay = start + i * spread / count - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await step(i)


def _summary(mode: str, what: str, spread: float, delays: list[float]) -> WakeupResult:
    ms = [d * 1000 for d in delays]
    return WakeupResult(
        mode=mode,
        what=what,
        count=len(ms),
        spread_seconds=spread,
        p50_ms=percentile(ms, 50),
        p99_ms=percentile(ms, 99),
        max_ms=max(ms),
    )


async def _lateness(pool: asyncpg.Pool, mode: str, count: int, spread: float) -> WakeupResult:
    bench = _Bench(pool, wakeups=mode == "wakeups")
    bench.expected = count
    await bench.runtime.initialize()
    due: dict[int, float] = {}
    worker = TimeoutWorker(bench.runtime, poll_interval=POLL_INTERVAL)
    task = asyncio.get_running_loop().create_task(worker.run())

    async def create(i: int) -> None:
        instance = await bench.runtime.create_instance("bench_wakeup", context={"i": i})
        assert instance.expires_at is not None
        due[i] = instance.expires_at.timestamp()

    try:
        await _paced(count, spread, create)
        await asyncio.wait_for(bench.all_ran.wait(), spread + 60)
    finally:
        worker.stop()
        await task
    return _summary(mode, "timeout lateness", spread, [bench.ran[i] - due[i] for i in due])


async def _enqueue(pool: asyncpg.Pool, mode: str, count: int, spread: float) -> WakeupResult:
    bench = _Bench(pool, wakeups=mode == "wakeups")
    bench.expected = count
    await bench.runtime.initialize()
    uuids = [
        (await bench.runtime.create_instance("bench_queued", context={"i": i})).uuid
        for i in range(count)
    ]
    called: dict[int, float] = {}
    worker = ExecutionWorker(bench.runtime, poll_interval=POLL_INTERVAL)
    task = asyncio.get_running_loop().create_task(worker.run())

    async def enqueue(i: int) -> None:
        called[i] = time.time()
        await bench.runtime.enqueue_event(uuids[i], "go", idempotency_key="bench")

    try:
        await asyncio.sleep(0.2)  # let the worker fall asleep: the case measured
        await _paced(count, spread, enqueue)
        await asyncio.wait_for(bench.all_ran.wait(), spread + 60)
    finally:
        worker.stop()
        await task
    delays = [bench.ran[i] - called[i] for i in called]
    return _summary(mode, "enqueue to first command", spread, delays)


async def _touch_rate(pool: asyncpg.Pool, *, wakeups: bool, seconds: float, tasks: int) -> float:
    """Transitions per second of ``touch`` (each re-arms a deadline 0.25 s away: with wake-ups,
    each notifies) by ``tasks`` tasks, one instance each, while a TimeoutWorker runs (with
    wake-ups, it listens: what a service with workers pays)."""
    bench = _Bench(pool, wakeups=wakeups)
    await bench.runtime.initialize()
    uuids = [
        (await bench.runtime.create_instance("bench_wakeup", context={"i": i})).uuid
        for i in range(tasks)
    ]
    done = 0
    end = 0.0  # set when the tasks start

    async def loop(uuid: Any) -> None:
        nonlocal done
        while time.perf_counter() < end:
            await bench.runtime.trigger_event(uuid, "touch")
            done += 1

    worker = TimeoutWorker(bench.runtime, poll_interval=POLL_INTERVAL)
    task = asyncio.get_running_loop().create_task(worker.run())
    try:
        start = time.perf_counter()
        end = start + seconds
        async with asyncio.TaskGroup() as group:
            for uuid in uuids:
                group.create_task(loop(uuid))
        seconds = time.perf_counter() - start
    finally:
        worker.stop()
        await task
    return done / seconds


async def run_wakeups(
    *,
    dsn: str,
    admin: asyncpg.Pool,
    timeouts: int,
    spread: float,
    executions: int,
    execution_spread: float,
    throughput_seconds: float,
    rounds: int,
    codec: Codec,
) -> dict[str, Any]:
    """Both latencies with wake-ups and with polling, and the notify's cost in throughput (the
    rate with wake-ups over the rate without, in interleaved rounds)."""
    runs: list[WakeupResult] = []
    pool = await duraflows_pool(dsn, 4, codec)
    try:
        for mode in ("wakeups", "polling"):
            await admin.execute("TRUNCATE workflow_history, workflow_instances CASCADE")
            runs.append(await _lateness(pool, mode, timeouts, spread))
            await admin.execute("TRUNCATE workflow_history, workflow_instances CASCADE")
            runs.append(await _enqueue(pool, mode, executions, execution_spread))
        rates: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(rounds):
            for wakeups in (False, True):
                await admin.execute("TRUNCATE workflow_history, workflow_instances CASCADE")
                rates[wakeups].append(
                    await _touch_rate(pool, wakeups=wakeups, seconds=throughput_seconds, tasks=4)
                )
    finally:
        await pool.close()
    with_notify = percentile(rates[True], 50)
    without = percentile(rates[False], 50)
    return {
        "poll_interval": POLL_INTERVAL,
        "timeout_seconds": TIMEOUT_SECONDS,
        "runs": [dataclasses.asdict(r) for r in runs],
        "touch_per_second": {"wakeups": with_notify, "no_wakeups": without},
        "notify_throughput_ratio": ratio(with_notify, without),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
