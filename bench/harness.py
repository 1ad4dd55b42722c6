"""One benchmark run: start the server, measure every variant, write the three outputs."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg

from duraflows_pg_async import migrations
from duraflows_pg_async.embedded import EmbeddedPostgres

from . import report, sql
from .machine import describe_machine, describe_server
from .memory import SURFACES, measure_in_child
from .pgbench import run_pgbench
from .pgqueuer_drain import run_pgqueuer_drain
from .stats import median, summarize_ns
from .sweep import run_sweep
from .sweep_baseline import FILED_BASELINE, run_filed_baseline
from .sweep_processes import run_sweep_processes
from .wakeups import run_wakeups
from .workloads import (
    Codec,
    RoundResult,
    Transition,
    adapter_transitions,
    asyncpg_pool,
    asyncpg_transitions,
    build_runtime,
    create_rows,
    duraflows_pool,
    new_uuids,
    run_round,
    runtime_transitions,
)

__all__ = ["DEFAULT_OUT", "Options", "run", "write_outputs"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DATABASE = "bench"
PYTHON_VARIANTS = ("asyncpg", "adapter", "runtime")


@dataclass(frozen=True, slots=True)
class Options:
    duration: float = 5.0
    rounds: int = 3
    concurrency: tuple[int, ...] = (1, 4, 8, 16)
    warmup: float = 1.0
    sweep_instances: int = 20_000
    sweep_workers: tuple[int, ...] = (1, 2, 4)
    sweep_batch_size: int = 100
    sweep_poll_interval: float = 0.05
    # Batched sweeps: k TimeoutWorkers in this process, then k worker processes; pgqueuer's
    # drain (one queue manager, its default batch of 10) as the yardstick.
    batched_workers: tuple[int, ...] = (1, 2, 4)
    batched_processes: tuple[int, ...] = (1, 2, 4)
    pgqueuer_batch_size: int = 10
    # The baseline: the per-instance TimeoutWorker of this commit, run in the same run.
    baseline_ref: str = FILED_BASELINE
    # Wake-ups: timeouts written over wakeup_spread seconds, executions enqueued over
    # wakeup_execution_spread seconds; with wake-ups and with polling every second.
    wakeup_timeouts: int = 1_000
    wakeup_spread: float = 10.0
    wakeup_executions: int = 200
    wakeup_execution_spread: float = 5.0
    memory_transitions: int = 100_000
    memory_warmup: int = 5_000
    memory_concurrency: int = 4
    codec: Codec = "default"
    # The event loop every Python variant runs on: "auto" is uvloop when it is installed (as a
    # service installed with the [speed] extra would run), else asyncio's.
    loop: str = "auto"
    out: Path = DEFAULT_OUT
    smoke: bool = False

    @property
    def pgbench_seconds(self) -> int:
        """pgbench's -T takes whole seconds."""
        return max(1, round(self.duration))


SMOKE = {
    "duration": 0.3,
    "rounds": 1,
    "concurrency": (1, 4),
    "warmup": 0.1,
    "sweep_instances": 500,
    "wakeup_timeouts": 100,
    "wakeup_spread": 1.0,
    "wakeup_executions": 20,
    "wakeup_execution_spread": 1.0,
    "memory_transitions": 2_000,
    "memory_warmup": 200,
}


class Progress:
    """Progress lines on stderr, with the time since the start."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass(slots=True)
class _Series:
    """The rounds of one variant at one concurrency."""

    rates: list[float] = dataclasses.field(default_factory=list)
    latencies_ns: list[int] = dataclasses.field(default_factory=list)
    transitions: int = 0
    seconds: float = 0.0

    def add(self, rate: float, transitions: int, seconds: float, latencies: Sequence[int]) -> None:
        self.rates.append(rate)
        self.transitions += transitions
        self.seconds += seconds
        self.latencies_ns.extend(latencies)

    def to_json(self, concurrency: int) -> dict[str, Any]:
        summary = summarize_ns(self.latencies_ns)
        return {
            "concurrency": concurrency,
            "rounds_per_second": self.rates,
            "median_per_second": median(self.rates),
            "transitions": self.transitions,
            "seconds": self.seconds,
            "latency": None if summary is None else dataclasses.asdict(summary),
        }


async def _create_database(server: EmbeddedPostgres) -> str:
    conn = await asyncpg.connect(server.dsn())
    try:
        await conn.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await conn.close()
    return server.dsn(DATABASE)


async def _throughput(
    options: Options, server: EmbeddedPostgres, dsn: str, admin: asyncpg.Pool, say: Progress
) -> dict[str, Any]:
    top = max(options.concurrency)
    asyncpg_uuids, adapter_uuids = new_uuids(top), new_uuids(top)
    await create_rows(admin, [*asyncpg_uuids, *adapter_uuids])
    await create_rows(admin, [sql.pgbench_instance_uuid(n) for n in range(1, top + 1)])
    creator = build_runtime(admin)
    runtime_uuids = [
        (await creator.create_instance("bench", context={"n": 0})).uuid for _ in range(top)
    ]
    series: dict[str, dict[int, _Series]] = {
        name: {c: _Series() for c in options.concurrency} for name in report.VARIANTS
    }
    with tempfile.TemporaryDirectory(prefix="duraflows-bench-") as work:
        script = Path(work) / "transition.sql"
        script.write_text(sql.pgbench_script(), encoding="utf-8")
        password = unquote(urlsplit(dsn).password or "") or None

        async def pgbench(clients: int, seconds: int, tag: str) -> Any:
            return await run_pgbench(
                pgbench=server.bin_dir / "pgbench",
                script=script,
                host="127.0.0.1",
                port=server.port,
                user="postgres",
                password=password,
                database=DATABASE,
                clients=clients,
                seconds=seconds,
                log_prefix=Path(work) / tag,
            )

        for c in options.concurrency:
            async with admin.acquire() as conn:
                await conn.execute("CHECKPOINT")
            pools = [
                await asyncpg_pool(dsn, c, options.codec),
                await duraflows_pool(dsn, c, options.codec),
                await duraflows_pool(dsn, c, options.codec),
            ]
            try:
                variants: dict[str, list[Transition]] = {
                    "asyncpg": asyncpg_transitions(pools[0], asyncpg_uuids[:c]),
                    "adapter": adapter_transitions(pools[1], adapter_uuids[:c]),
                    "runtime": runtime_transitions(build_runtime(pools[2]), runtime_uuids[:c]),
                }
                for transitions in variants.values():
                    await run_round(transitions, options.warmup)
                if options.warmup >= 1:
                    await pgbench(c, 1, f"warmup_c{c}")
                for number in range(1, options.rounds + 1):
                    line = []
                    for name in PYTHON_VARIANTS:
                        result: RoundResult = await run_round(variants[name], options.duration)
                        series[name][c].add(
                            result.per_second,
                            result.transitions,
                            result.seconds,
                            result.latencies_ns,
                        )
                        line.append(f"{name} {result.per_second:,.0f}")
                    pg = await pgbench(c, options.pgbench_seconds, f"c{c}_r{number}")
                    series["pgbench"][c].add(
                        pg.tps,
                        pg.processed,
                        float(pg.seconds),
                        [us * 1000 for us in pg.latencies_us],
                    )
                    line.append(f"pgbench {pg.tps:,.0f}")
                    say(f"c={c} round {number}/{options.rounds}: " + ", ".join(line) + " /s")
            finally:
                for pool in pools:
                    await pool.close()
    async with admin.acquire() as conn:
        # Every transition of every variant bumped the version once and wrote one history row.
        row = await conn.fetchrow(
            "SELECT count(*), count(*) FILTER (WHERE version <> (SELECT count(*) "
            "FROM workflow_history h WHERE h.workflow_instance_uuid = i.uuid)) "
            "FROM workflow_instances i"
        )
    assert row is not None
    checked, mismatched = row[0], row[1]
    if mismatched:
        raise RuntimeError(f"{mismatched} of {checked} instances: version != history rows")
    return {
        "concurrency": list(options.concurrency),
        "pgbench_seconds": options.pgbench_seconds,
        "instances_checked": checked,
        "variants": {
            name: [series[name][c].to_json(c) for c in options.concurrency]
            for name in report.VARIANTS
        },
    }


async def _sweep(options: Options, dsn: str, admin: asyncpg.Pool, say: Progress) -> dict[str, Any]:
    runs = []
    for workers in options.sweep_workers:
        result = await run_sweep(
            dsn=dsn,
            admin=admin,
            instances=options.sweep_instances,
            workers=workers,
            batch_size=options.sweep_batch_size,
            poll_interval=options.sweep_poll_interval,
            codec=options.codec,
        )
        say(
            f"sweep, {workers} worker(s): {result.per_second:,.0f} instances/s, "
            f"{result.processed_twice} processed twice, {result.left_due} left due"
        )
        runs.append(dataclasses.asdict(result))
    return {
        "instances": options.sweep_instances,
        "batch_size": options.sweep_batch_size,
        "poll_interval": options.sweep_poll_interval,
        "runs": runs,
    }


async def _batched_sweep(
    options: Options, dsn: str, admin: asyncpg.Pool, say: Progress
) -> dict[str, Any]:
    """The filed baseline (the per-instance sweep of ``baseline_ref``), batched sweeps in tasks
    and in processes, and pgqueuer's drain, on the same rows count."""
    filed = await run_filed_baseline(
        dsn=dsn,
        admin=admin,
        ref=options.baseline_ref,
        instances=options.sweep_instances,
        batch_size=options.sweep_batch_size,
        poll_interval=options.sweep_poll_interval,
        codec=options.codec,
    )
    if filed["available"]:
        say(
            f"per-instance sweep of {filed['short']} (the issue's baseline), 1 worker: "
            f"{filed['per_second']:,.0f} instances/s, {filed['processed_twice']} processed "
            f"twice, {filed['left_due']} left due"
        )
    else:
        say(f"per-instance sweep of {options.baseline_ref}: not measured, {filed['reason']}")
    runs = []
    for workers in options.batched_workers:
        result = await run_sweep(
            dsn=dsn,
            admin=admin,
            instances=options.sweep_instances,
            workers=workers,
            batch_size=options.sweep_batch_size,
            poll_interval=options.sweep_poll_interval,
            codec=options.codec,
            batched=True,
        )
        say(
            f"batched sweep, {workers} worker(s) in this process: {result.per_second:,.0f} "
            f"instances/s, {result.processed_twice} processed twice"
        )
        runs.append({"mode": "tasks", **dataclasses.asdict(result)})
    for processes in options.batched_processes:
        result = await run_sweep_processes(
            dsn=dsn,
            admin=admin,
            instances=options.sweep_instances,
            processes=processes,
            batch_size=options.sweep_batch_size,
            codec=options.codec,
        )
        say(
            f"batched sweep, {processes} worker process(es): {result.per_second:,.0f} "
            f"instances/s, {result.processed_twice} processed twice"
        )
        runs.append({"mode": "processes", **dataclasses.asdict(result)})
    queue = await run_pgqueuer_drain(
        dsn, jobs=options.sweep_instances, batch_size=options.pgqueuer_batch_size
    )
    say(f"pgqueuer {queue.version} drain, 1 queue manager: {queue.per_second:,.0f} jobs/s")
    return {
        "instances": options.sweep_instances,
        "batch_size": options.sweep_batch_size,
        "filed_baseline": filed,
        "runs": runs,
        "pgqueuer": dataclasses.asdict(queue),
    }


async def _wakeups(
    options: Options, dsn: str, admin: asyncpg.Pool, say: Progress
) -> dict[str, Any]:
    result = await run_wakeups(
        dsn=dsn,
        admin=admin,
        timeouts=options.wakeup_timeouts,
        spread=options.wakeup_spread,
        executions=options.wakeup_executions,
        execution_spread=options.wakeup_execution_spread,
        throughput_seconds=options.duration,
        rounds=options.rounds,
        codec=options.codec,
    )
    for run in result["runs"]:
        say(
            f"wake-ups, {run['what']} ({run['mode']}): p50 {run['p50_ms']:.1f} ms, "
            f"p99 {run['p99_ms']:.1f} ms over {run['count']:,}"
        )
    notify = result["notify_throughput_ratio"]
    say(f"wake-ups, transitions that notify: {notify:.2f}x the rate of the same without")
    return result


async def _memory(options: Options, dsn: str, say: Progress) -> list[dict[str, Any]]:
    results = []
    for surface in SURFACES:
        result = await measure_in_child(
            dsn,
            surface,
            tasks=options.memory_concurrency,
            warmup=options.memory_warmup,
            count=options.memory_transitions,
            codec=options.codec,
        )
        say(
            f"memory, {surface}: {result.growth_mb:+.2f} MB RSS, "
            f"{result.allocated_blocks_growth:+,} allocated blocks over "
            f"{result.transitions:,} transitions"
        )
        results.append(dataclasses.asdict(result))
    return results


async def run(options: Options) -> dict[str, Any]:
    """Measure everything on a fresh embedded PostgreSQL and return the results dictionary."""
    say = Progress()
    started = datetime.now(UTC)
    machine = describe_machine()
    say("starting an embedded PostgreSQL with its default (durable) settings")
    server = await asyncio.to_thread(EmbeddedPostgres)
    await asyncio.to_thread(server.start)
    try:
        dsn = await _create_database(server)
        admin = await asyncpg_pool(dsn, 2, "stdlib")
        try:
            async with admin.acquire() as conn:
                await migrations.apply(conn)
                server_info = await describe_server(conn, server.bin_dir / "pgbench")
            say(f"PostgreSQL {server_info['version']} ready; measuring throughput")
            throughput = await _throughput(options, server, dsn, admin, say)
            sweep = await _sweep(options, dsn, admin, say)
            batched = await _batched_sweep(options, dsn, admin, say)
            wakeups = await _wakeups(options, dsn, admin, say)
            memory = await _memory(options, dsn, say)
        finally:
            await admin.close()
    finally:
        await asyncio.to_thread(server.close)
    results: dict[str, Any] = {
        "format": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - say.start,
        "options": {
            **{k: v for k, v in dataclasses.asdict(options).items() if k != "out"},
            "pgbench_seconds": options.pgbench_seconds,
        },
        "machine": machine,
        "server": server_info,
        "throughput": throughput,
        "sweep": sweep,
        "batched_sweep": batched,
        "wakeups": wakeups,
        "memory": memory,
    }
    results["targets"] = report.evaluate_targets(results)
    return results


def write_outputs(results: dict[str, Any], out: Path) -> str:
    """Write results.json, results.md and throughput.png into ``out``; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    markdown = report.render_markdown(results)
    (out / "results.md").write_text(markdown, encoding="utf-8")
    report.write_chart(results, out / "throughput.png")
    return markdown
