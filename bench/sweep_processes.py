"""The timeout sweep drained by k worker processes: how batched sweeps scale past one process.

Each child (``python -m bench.sweep_processes``, the DSN in ``DATABASE_URL``) builds the sweep's
runtime on a pool of its own, says ``ready``, waits for ``go`` on its stdin, then sweeps as a
``TimeoutWorker`` does (``runtime.sweep(batch_size, batched=...)``) until a sweep finds nothing
due that no other worker holds, and prints one JSON line: what it fired, and the wall-clock time
of its last batch. The run lasts from ``go`` to the last child's last batch.
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

import asyncpg

from .sweep import SweepResult, _sweep_runtime, count_repeats, reset_due_instances
from .workloads import Codec, duraflows_pool

# The repository: the children import ``bench`` from it.
ROOT = Path(__file__).resolve().parent.parent

__all__ = ["run_sweep_processes"]


async def run_sweep_processes(
    *,
    dsn: str,
    admin: asyncpg.Pool,
    instances: int,
    processes: int,
    batch_size: int,
    codec: Codec,
    batched: bool = True,
) -> SweepResult:
    """Insert ``instances`` due instances and time ``processes`` worker processes draining them."""
    await reset_due_instances(admin, instances)
    root = str(ROOT)
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.sweep_processes",
            str(batch_size),
            codec,
            "1" if batched else "0",
            cwd=root,
            # The DSN carries the server's password: never on a command line.
            env={
                **os.environ,
                "DATABASE_URL": dsn,
                "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
            },
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), 120)
            if line.strip() != b"ready":
                raise RuntimeError(f"sweep worker process did not start: {line!r}")
        start = time.time()
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        reports: list[dict[str, Any]] = []
        for child in children:
            out, _ = await child.communicate()
            if child.returncode != 0:
                raise RuntimeError(f"sweep worker process failed (exit {child.returncode})")
            reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    fired = sum(int(r["processed"]) for r in reports)
    seconds = max(float(r["last"]) for r in reports) - start
    twice, left = await count_repeats(admin)
    return SweepResult(
        workers=processes,
        instances=instances,
        seconds=seconds,
        per_second=fired / seconds if seconds > 0 else 0.0,
        processed_twice=twice,
        commands_repeated=sum(int(r["repeated"]) for r in reports),
        failed=sum(int(r["failed"]) for r in reports),
        left_due=left,
        sweeps=sum(int(r["sweeps"]) for r in reports),
    )


async def _child(dsn: str, batch_size: int, codec: Codec, batched: bool) -> dict[str, Any]:
    recorded: collections.Counter[str] = collections.Counter()
    pool = await duraflows_pool(dsn, 2, codec)
    try:
        runtime = _sweep_runtime(pool, recorded, lambda event: None)
        await runtime.initialize()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        processed = failed = sweeps = 0
        last = time.time()
        while True:
            result = await runtime.sweep(batch_size, batched=batched)
            sweeps += 1
            failed += len(result.failed)
            if result.processed:
                processed += result.processed
                last = time.time()
            elif not result.failed:
                break  # nothing due that another worker does not hold
    finally:
        await pool.close()
    return {
        "processed": processed,
        "failed": failed,
        "sweeps": sweeps,
        "last": last,
        "repeated": sum(1 for count in recorded.values() if count > 1),
    }


def main() -> None:
    batch_size, codec, batched = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
    report = asyncio.run(_child(os.environ["DATABASE_URL"], batch_size, codec, batched))  # type: ignore[arg-type]
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
