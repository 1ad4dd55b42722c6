"""``python -m bench``: see docs/performance.md, or ``python -m bench --help``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .harness import DEFAULT_OUT, SMOKE, Options, run, write_outputs


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return tuple(sorted(set(values)))


def _positive_int(text: str) -> int:
    (value,) = _positive_ints(text)
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _show(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def parser() -> argparse.ArgumentParser:
    defaults = Options()
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Transition throughput, latency, sweep scaling and memory of duraflows-pg-async, "
            "against hand-written asyncpg (A) and pgbench (B), on one embedded PostgreSQL 18 "
            "with durable default settings. Writes results.json, results.md and throughput.png."
        ),
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds, for CI: "
        + ", ".join(f"{k.replace('_', '-')} {_show(v)}" for k, v in SMOKE.items())
        + " (explicit options still win)",
    )
    p.add_argument(
        "--duration", type=_positive_float, help=f"seconds per round (default {defaults.duration})"
    )
    p.add_argument(
        "--rounds", type=_positive_int, help=f"interleaved rounds (default {defaults.rounds})"
    )
    p.add_argument(
        "--concurrency",
        type=_positive_ints,
        help="comma-separated task / client counts (default "
        + ",".join(map(str, defaults.concurrency))
        + ")",
    )
    p.add_argument(
        "--warmup",
        type=_positive_float,
        help=f"warm-up seconds per variant and concurrency (default {defaults.warmup})",
    )
    p.add_argument(
        "--sweep-instances",
        type=_positive_int,
        help=f"due instances per sweep run (default {defaults.sweep_instances})",
    )
    p.add_argument(
        "--sweep-workers",
        type=_positive_ints,
        help="comma-separated worker counts (default "
        + ",".join(map(str, defaults.sweep_workers))
        + ")",
    )
    p.add_argument(
        "--baseline-ref",
        metavar="REV",
        help="the commit whose per-instance TimeoutWorker the batched sweep is compared with, "
        "run in the same run from its git archive (default "
        f"{defaults.baseline_ref[:7]}, the issue's baseline)",
    )
    p.add_argument(
        "--wakeup-timeouts",
        type=_positive_int,
        help=f"timeouts written for the lateness run (default {defaults.wakeup_timeouts})",
    )
    p.add_argument(
        "--wakeup-spread",
        type=_positive_float,
        help=f"seconds they are written over (default {defaults.wakeup_spread})",
    )
    p.add_argument(
        "--wakeup-executions",
        type=_positive_int,
        help=f"executions enqueued for the latency run (default {defaults.wakeup_executions})",
    )
    p.add_argument(
        "--memory-transitions",
        type=_positive_int,
        help=f"measured transitions per surface (default {defaults.memory_transitions})",
    )
    p.add_argument(
        "--memory-warmup",
        type=_positive_int,
        help=f"transitions before the first RSS reading (default {defaults.memory_warmup})",
    )
    p.add_argument(
        "--codec",
        choices=("default", "stdlib", "orjson"),
        help="JSON codec: 'default' = stdlib json for A, the package's default for the adapter "
        "and runtime; 'stdlib' or 'orjson' = that codec for all (default: default)",
    )
    p.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        help="event loop of the Python variants: 'auto' = uvloop when it is installed, else "
        "asyncio's (default: auto)",
    )
    p.add_argument("--out", type=Path, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument(
        "--report-only",
        type=Path,
        metavar="RESULTS_JSON",
        help="render results.md and throughput.png from a saved results.json into --out; no run",
    )
    return p


def loop_factory(loop: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """The loop's resolved name and factory (None: asyncio's) for ``--loop``."""
    if loop == "asyncio":
        return "asyncio", None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if loop == "uvloop":
            raise SystemExit("bench: --loop uvloop, but uvloop is not installed") from None
        return "asyncio", None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return "uvloop", factory


def options_from(args: argparse.Namespace) -> Options:
    values: dict[str, Any] = dict(SMOKE) if args.smoke else {}
    for field in dataclasses.fields(Options):
        given = getattr(args, field.name, None)
        if given is not None and field.name != "smoke":
            values[field.name] = given
    return Options(**values, smoke=bool(args.smoke))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    options = options_from(args)
    if args.report_only is not None:
        results = json.loads(args.report_only.read_text(encoding="utf-8"))
        out = args.out or args.report_only.resolve().parent
    else:
        name, factory = loop_factory(options.loop)
        options = dataclasses.replace(options, loop=name)
        with asyncio.Runner(loop_factory=factory) as runner:
            results = runner.run(run(options))
        out = options.out
    markdown = write_outputs(results, out)
    print(markdown)
    print(f"bench: wrote {out / 'results.json'}, results.md and throughput.png", file=sys.stderr)
    # Not a timing: an instance processed twice by the sweep is a correctness bug.
    repeated = sum(
        int(run["processed_twice"]) + int(run["commands_repeated"])
        for run in results.get("sweep", {}).get("runs", [])
    )
    if repeated:
        print(f"bench: the sweep processed instances twice ({repeated})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
