"""The child of :mod:`bench.sweep_baseline`: one per-instance ``TimeoutWorker`` of the package as
of a pinned commit, draining the due instances the parent inserted.

It runs with that commit's ``duraflows_pg_async`` (extracted by ``git archive``) first on its
path, so it uses only the public API that existed then: ``TimeoutWorker`` without ``batched``,
``Timeout`` in minutes. Nothing from the rest of ``bench`` is imported (it uses the current API),
and the child checks that the package it runs is the extracted one.

``python -m bench.sweep_baseline_child PACKAGE_DIR INSTANCES BATCH_SIZE POLL_INTERVAL CODEC LOOP``,
the DSN in ``DATABASE_URL`` (never on the command line: it carries the server's password). Timed
as ``bench.sweep.run_sweep`` times: from the worker's start to the moment the observer (after
each COMMIT) has seen every instance enter its final state. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# As bench.sweep.STALL_SECONDS: a sweep without progress for this long is abandoned.
STALL_SECONDS = 60.0


def sweep_workflow() -> Any:
    """bench.sweep.SWEEP_WORKFLOW, written with the API of the pinned commit (a unit test checks
    that the two stay the same definition)."""
    from duraflows_pg_async import CommandRef, Event, State, Timeout, WorkflowDefinition

    return WorkflowDefinition(
        name="bench_timeout",
        version=1,
        initial_state="waiting",
        states={
            "waiting": State(
                events={
                    "expire": Event(
                        target_state="expired",
                        commands=(CommandRef("record"),),
                        timeout=Timeout(minutes=5),
                    )
                }
            ),
            "expired": State(),
        },
    )


def json_functions(codec: str) -> tuple[Any, Any] | None:
    """bench.workloads' (dumps, loads) of the package's pools for ``codec`` (None: the package's
    own default); a unit test checks that the two agree."""
    if codec == "orjson":
        import orjson

        return orjson.dumps, orjson.loads
    if codec == "stdlib":
        return json.dumps, json.loads
    return None


async def _sweep(
    dsn: str, instances: int, batch_size: int, poll_interval: float, codec: str
) -> dict[str, Any]:
    from duraflows_pg_async import (
        CommandRegistry,
        CommandResult,
        DefinitionRegistry,
        TimeoutWorker,
        WorkflowRuntime,
        create_pool,
        pg_workflow_providers,
    )

    recorded: collections.Counter[str] = collections.Counter()
    done = asyncio.Event()
    entered = 0

    def observe(event: Any) -> None:
        nonlocal entered
        entered += 1
        if entered >= instances:
            done.set()

    def record(subject: Any, ctx: Any) -> Any:
        recorded[ctx.context["id"]] += 1
        return CommandResult(ok=True, code="EXPIRED")

    functions = json_functions(codec)
    if functions is None:
        pool = await create_pool(dsn, min_size=2, max_size=2)
    else:
        dumps, loads = functions
        pool = await create_pool(dsn, min_size=2, max_size=2, json_dumps=dumps, json_loads=loads)
    try:
        definitions = DefinitionRegistry()
        definitions.register(sweep_workflow())
        commands = CommandRegistry()
        commands.register("record", record)
        runtime = WorkflowRuntime(
            definitions=definitions,
            commands=commands,
            persistence=pg_workflow_providers(pool),
            observers=[observe],
        )
        await runtime.initialize()
        worker = TimeoutWorker(runtime, batch_size=batch_size, poll_interval=poll_interval)
        start = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            group.create_task(worker.run())
            last, last_progress = 0, time.perf_counter()
            while not done.is_set():
                try:
                    await asyncio.wait_for(done.wait(), 1.0)
                except TimeoutError:
                    if entered != last:
                        last, last_progress = entered, time.perf_counter()
                    elif time.perf_counter() - last_progress > STALL_SECONDS:
                        break
            seconds = time.perf_counter() - start
            worker.stop()
    finally:
        await pool.close()
    return {
        "seconds": seconds,
        "processed": entered,
        "per_second": entered / seconds if seconds > 0 else 0.0,
        "commands_repeated": sum(1 for count in recorded.values() if count > 1),
        "failed": worker.stats.failed,
        "sweeps": worker.stats.sweeps,
    }


def main() -> None:
    package_dir = Path(sys.argv[1]).resolve()
    instances, batch_size = int(sys.argv[2]), int(sys.argv[3])
    poll_interval, codec, loop = float(sys.argv[4]), sys.argv[5], sys.argv[6]
    import duraflows_pg_async

    here = Path(duraflows_pg_async.__file__).resolve()
    # The point of the run: the pinned commit's code, never the package of the working tree.
    assert here.is_relative_to(package_dir), f"imported {here}, not the one under {package_dir}"
    sweep = _sweep(os.environ["DATABASE_URL"], instances, batch_size, poll_interval, codec)
    if loop == "uvloop":
        import uvloop

        report = uvloop.run(sweep)
    else:
        report = asyncio.run(sweep)
    print(json.dumps({**report, "loop": loop, "package": str(here)}), flush=True)


if __name__ == "__main__":
    main()
