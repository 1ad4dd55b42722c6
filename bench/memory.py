"""Resident-set growth over many transitions, measured in a fresh child process (needs psutil).

The parent has already allocated and freed a lot (the throughput rounds keep every latency), and
CPython keeps freed memory for reuse: a leak would first fill those holes and not show in the
parent's RSS. So each surface runs in a new interpreter (``python -m bench.memory``) that does
nothing else (its DSN in the ``DURAFLOWS_BENCH_DSN`` environment variable, never on its command
line), and reports on stdout as JSON. Besides RSS it reports the growth of CPython's
allocated blocks (``sys.getallocatedblocks``) and of the objects the GC tracks, which show a leak
of Python objects long before it moves the RSS by a page.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MemoryResult", "measure_growth", "measure_in_child"]

MB = 1_000_000  # decimal megabytes, as in the target "≤ 10 MB"
SURFACES = ("runtime", "adapter")
# The directory holding the bench package: the child runs `python -m bench.memory` from there.
_REPOSITORY = Path(__file__).resolve().parent.parent
# The child reads its DSN from this environment variable: the DSN carries the server's password,
# and a command line is readable by every user of the machine (``ps``), an environment is not.
DSN_VARIABLE = "DURAFLOWS_BENCH_DSN"


@dataclass(frozen=True, slots=True)
class MemoryResult:
    surface: str
    concurrency: int
    warmup: int
    transitions: int
    rss_before_mb: float
    rss_after_mb: float
    growth_mb: float
    allocated_blocks_growth: int
    gc_objects_growth: int
    # (transitions done, RSS in MB) after each tenth of the run, to tell a leak from a step
    samples: list[tuple[int, float]] = field(default_factory=list)


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


async def measure_growth(
    surface: str, transitions: Sequence[Any], *, warmup: int, count: int
) -> MemoryResult:
    """Run ``warmup`` transitions, collect garbage, then ``count`` more; RSS before and after."""
    from .workloads import run_count

    await run_count(transitions, warmup)
    gc.collect()
    before, blocks, objects = _rss(), sys.getallocatedblocks(), len(gc.get_objects())
    samples: list[tuple[int, float]] = [(0, before / MB)]
    steps = 10
    done = 0
    for step in range(1, steps + 1):
        target = count * step // steps
        await run_count(transitions, target - done)
        done = target
        gc.collect()
        samples.append((done, _rss() / MB))
    after = _rss()
    return MemoryResult(
        surface=surface,
        concurrency=len(transitions),
        warmup=warmup,
        transitions=count,
        rss_before_mb=before / MB,
        rss_after_mb=after / MB,
        growth_mb=(after - before) / MB,
        allocated_blocks_growth=sys.getallocatedblocks() - blocks,
        gc_objects_growth=len(gc.get_objects()) - objects,
        samples=samples,
    )


async def _child(dsn: str, surface: str, tasks: int, warmup: int, count: int, codec: Any) -> None:
    from .workloads import (
        adapter_transitions,
        build_runtime,
        create_rows,
        duraflows_pool,
        new_uuids,
        runtime_transitions,
    )

    pool = await duraflows_pool(dsn, tasks, codec)
    try:
        if surface == "runtime":
            runtime = build_runtime(pool)
            uuids = [
                (await runtime.create_instance("bench", context={"n": 0})).uuid
                for _ in range(tasks)
            ]
            transitions = runtime_transitions(runtime, uuids)
        else:
            uuids = new_uuids(tasks)
            await create_rows(pool, uuids)
            transitions = adapter_transitions(pool, uuids)
        result = await measure_growth(surface, transitions, warmup=warmup, count=count)
    finally:
        await pool.close()
    print(json.dumps(dataclasses.asdict(result)))


async def measure_in_child(
    dsn: str, surface: str, *, tasks: int, warmup: int, count: int, codec: str
) -> MemoryResult:
    """Run :func:`measure_growth` for ``surface`` in a fresh interpreter."""
    argv = [
        sys.executable, "-m", "bench.memory",
        "--surface", surface, "--tasks", str(tasks),
        "--warmup", str(warmup), "--count", str(count), "--codec", codec,
    ]  # fmt: skip
    assert not any(dsn in arg for arg in argv)  # the DSN and its password: environment only
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=_REPOSITORY,
        env={**os.environ, DSN_VARIABLE: dsn},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(
            f"the memory measurement of {surface} failed (exit {process.returncode}):\n"
            f"{err.decode(errors='replace')[-4000:]}"
        )
    data = json.loads(out.decode().strip().splitlines()[-1])
    data["samples"] = [tuple(sample) for sample in data["samples"]]
    return MemoryResult(**data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    parser.add_argument("--surface", choices=SURFACES, required=True)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=5_000)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--codec", choices=("default", "stdlib", "orjson"), default="default")
    args = parser.parse_args(argv)
    dsn = os.environ.get(DSN_VARIABLE)
    if not dsn:
        parser.error(f"the DSN comes from the {DSN_VARIABLE} environment variable, which is unset")
    asyncio.run(_child(dsn, args.surface, args.tasks, args.warmup, args.count, args.codec))


if __name__ == "__main__":
    main()
