"""pgqueuer's own drain benchmark, on the benchmark's server: the yardstick of the batched sweep.

The steps of ``tools/benchmark.py --strategy drain`` in pgqueuer's repository (not shipped in
its wheel), done with its public API: enqueue N jobs on two entrypoints (each only counting
its job; both async, as pgqueuer 1.6 runs no sync entrypoint), then ``dequeue`` queue
managers, each on its own asyncpg connection, drain them with
``PgQueuer.run(batch_size=..., mode=drain)``, under uvloop as the original runs. Rate = jobs /
seconds from the managers' start to the end of the drain.

A queue is a weaker contract than a sweep: a picked job is marked picked and committed, then
run with no row lock held and no transaction around it; its completion is written afterwards.

Run in a child process (``python -m bench.pgqueuer_drain``, the DSN in ``DATABASE_URL``) so that
its event loop and imports stay out of the benchmark's process; prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The repository: the children import ``bench`` from it.
ROOT = Path(__file__).resolve().parent.parent

__all__ = ["PgqueuerResult", "run_pgqueuer_drain"]


@dataclass(frozen=True, slots=True)
class PgqueuerResult:
    version: str
    jobs: int
    dequeue: int
    batch_size: int
    seconds: float
    per_second: float
    drained: int


async def run_pgqueuer_drain(
    dsn: str, *, jobs: int, dequeue: int = 1, batch_size: int = 10
) -> PgqueuerResult:
    """Run the drain in a child process and return what it measured."""
    root = str(ROOT)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.pgqueuer_drain",
        str(jobs),
        str(dequeue),
        str(batch_size),
        cwd=root,
        # The DSN carries the server's password: never on a command line.
        env={
            **os.environ,
            "DATABASE_URL": dsn,
            "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
        },
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"pgqueuer drain failed (exit {child.returncode})")
    data: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return PgqueuerResult(**data)


async def _drain(dsn: str, jobs: int, dequeue: int, batch_size: int) -> dict[str, Any]:
    import asyncpg
    from pgqueuer import AsyncpgDriver, PgQueuer, Queries, __version__
    from pgqueuer.models import Job
    from pgqueuer.types import QueueExecutionMode

    setup = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(setup))
    if not await queries.schema_is_installed():
        await queries.install()
    await queries.clear_statistics_log()
    await queries.clear_queue()
    entrypoints = ["syncfetch", "asyncfetch"] * jobs
    await queries.enqueue(
        random.sample(entrypoints, k=jobs), [b"" for _ in range(jobs)], [0] * jobs
    )

    drained = 0
    managers = []
    connections = [await asyncpg.connect(dsn) for _ in range(dequeue)]
    for conn in connections:
        pgq = PgQueuer(AsyncpgDriver(conn))

        @pgq.entrypoint("asyncfetch")
        async def asyncfetch(job: Job) -> None:
            nonlocal drained
            drained += 1

        @pgq.entrypoint("syncfetch")  # async too: pgqueuer 1.6 refuses sync entrypoints
        async def syncfetch(job: Job) -> None:
            nonlocal drained
            drained += 1

        managers.append(pgq)
    start = time.perf_counter()
    await asyncio.gather(
        *(pgq.run(batch_size=batch_size, mode=QueueExecutionMode.drain) for pgq in managers)
    )
    seconds = time.perf_counter() - start
    for conn in [setup, *connections]:
        await conn.close()
    return {
        "version": __version__,
        "jobs": jobs,
        "dequeue": dequeue,
        "batch_size": batch_size,
        "seconds": seconds,
        "per_second": jobs / seconds,
        "drained": drained,
    }


def main() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    jobs, dequeue, batch_size = (int(arg) for arg in sys.argv[1:4])
    drain = _drain(os.environ["DATABASE_URL"], jobs, dequeue, batch_size)
    try:
        import uvloop
    except ImportError:  # Windows: pgqueuer runs on asyncio's own loop there
        result = asyncio.run(drain)
    else:
        result = uvloop.run(drain)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
