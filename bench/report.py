"""results.json → Markdown tables, target verdicts and the throughput chart.

Everything here works on the JSON-shaped results dictionary (as written to ``results.json``), so
a report can be rendered again from a saved file (``python -m bench --report-only FILE``). Only
:func:`write_chart` needs matplotlib, imported when it is called.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .stats import ratio

__all__ = [
    "LABELS",
    "VARIANTS",
    "evaluate_targets",
    "fmt_ratio",
    "markdown_table",
    "render_markdown",
    "write_chart",
]

Results = Mapping[str, Any]

VARIANTS = ("asyncpg", "pgbench", "adapter", "runtime")
LABELS = {
    "asyncpg": "A: asyncpg",
    "pgbench": "B: pgbench",
    "adapter": "adapter",
    "runtime": "runtime",
}
LATENCY_CONCURRENCY = (1, 8)
TARGET_CONCURRENCY = 8


# --- formatting --------------------------------------------------------------------------------


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None
) -> str:
    """A GitHub Markdown table; ``align`` is one letter per column (``l`` or ``r``)."""
    if align is None:
        align = "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers):
        raise ValueError("one alignment letter per column")
    if any(len(row) != len(headers) for row in rows):
        raise ValueError("every row needs one cell per header")
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = [_row(headers), _row(rule)]
    lines.extend(_row([str(cell) for cell in row]) for row in rows)
    return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def fmt_rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# --- lookups -----------------------------------------------------------------------------------


def measurement(results: Results, variant: str, concurrency: int) -> Mapping[str, Any] | None:
    """The throughput entry of ``variant`` at ``concurrency``, or None if not measured."""
    for item in results.get("throughput", {}).get("variants", {}).get(variant, []):
        if item["concurrency"] == concurrency:
            return item  # type: ignore[no-any-return]
    return None


def median_rate(results: Results, variant: str, concurrency: int) -> float | None:
    item = measurement(results, variant, concurrency)
    return None if item is None else float(item["median_per_second"])


def latency_ms(results: Results, variant: str, concurrency: int, key: str) -> float | None:
    item = measurement(results, variant, concurrency)
    if item is None or not item.get("latency"):
        return None
    return float(item["latency"][key])


def concurrencies(results: Results) -> list[int]:
    return [int(c) for c in results.get("throughput", {}).get("concurrency", [])]


def sweep_run(results: Results, workers: int) -> Mapping[str, Any] | None:
    for run in results.get("sweep", {}).get("runs", []):
        if run["workers"] == workers:
            return run  # type: ignore[no-any-return]
    return None


def sweep_scaling(results: Results) -> float | None:
    one, four = sweep_run(results, 1), sweep_run(results, 4)
    if one is None or four is None:
        return None
    return ratio(four["per_second"], one["per_second"])


def batched_run(results: Results, mode: str, workers: int) -> Mapping[str, Any] | None:
    """A batched sweep run: ``mode`` "tasks" (workers in this process) or "processes"."""
    for run in results.get("batched_sweep", {}).get("runs", []):
        if run["mode"] == mode and run["workers"] == workers:
            return run  # type: ignore[no-any-return]
    return None


def pgqueuer_rate(results: Results) -> float | None:
    queue = results.get("batched_sweep", {}).get("pgqueuer")
    return None if queue is None else float(queue["per_second"])


def batched_speedup(results: Results) -> float | None:
    """One batched worker against one per-instance worker, in the same run."""
    batched, baseline = batched_run(results, "tasks", 1), sweep_run(results, 1)
    if batched is None or baseline is None:
        return None
    return ratio(batched["per_second"], baseline["per_second"])


def filed_baseline(results: Results) -> Mapping[str, Any] | None:
    """The per-instance sweep of the issue's commit, run in the same run (None: not attempted)."""
    return results.get("batched_sweep", {}).get("filed_baseline")  # type: ignore[no-any-return]


def filed_label(results: Results) -> str:
    """The filed baseline's commit, short."""
    filed = filed_baseline(results)
    if filed is None:
        return "the filed commit"
    ref = str(filed.get("short") or filed["ref"])
    full_hash = len(ref) == 40 and all(c in "0123456789abcdef" for c in ref.lower())
    return ref[:7] if full_hash else ref


def filed_rate(results: Results) -> float | None:
    filed = filed_baseline(results)
    if filed is None or not filed.get("available"):
        return None
    return float(filed["per_second"])


def batched_vs_filed(results: Results) -> float | None:
    """One batched worker against the per-instance worker of the issue's commit, same run."""
    batched = batched_run(results, "tasks", 1)
    return None if batched is None else ratio(batched["per_second"], filed_rate(results))


def batched_vs_pgqueuer(results: Results) -> float | None:
    batched = batched_run(results, "tasks", 1)
    return None if batched is None else ratio(batched["per_second"], pgqueuer_rate(results))


# --- tables ------------------------------------------------------------------------------------


def throughput_table(results: Results) -> str:
    rows: list[list[object]] = []
    for c in concurrencies(results):
        a, b = median_rate(results, "asyncpg", c), median_rate(results, "pgbench", c)
        for variant in VARIANTS:
            item = measurement(results, variant, c)
            if item is None:
                continue
            rounds = [float(r) for r in item["rounds_per_second"]]
            value = float(item["median_per_second"])
            spread = f"{fmt_rate(min(rounds))}-{fmt_rate(max(rounds))}" if rounds else "n/a"
            rows.append(
                [
                    c,
                    LABELS[variant],
                    fmt_rate(value),
                    spread,
                    fmt_ratio(ratio(value, a)),
                    fmt_ratio(ratio(value, b)),
                ]
            )
    return markdown_table(
        ["concurrency", "variant", "transitions/s (median)", "rounds min-max", "x A", "x B"],
        rows,
        "rlrrrr",
    )


def latency_table(results: Results) -> str:
    measured = concurrencies(results)
    levels = [c for c in LATENCY_CONCURRENCY if c in measured] or measured
    rows: list[list[object]] = []
    for c in levels:
        a50, a99 = (latency_ms(results, "asyncpg", c, k) for k in ("p50_ms", "p99_ms"))
        b50, b99 = (latency_ms(results, "pgbench", c, k) for k in ("p50_ms", "p99_ms"))
        for variant in VARIANTS:
            item = measurement(results, variant, c)
            if item is None or not item.get("latency"):
                continue
            p50, p99 = float(item["latency"]["p50_ms"]), float(item["latency"]["p99_ms"])
            rows.append(
                [
                    c,
                    LABELS[variant],
                    fmt_ms(p50),
                    fmt_ms(p99),
                    fmt_ratio(ratio(p50, a50)),
                    fmt_ratio(ratio(p99, a99)),
                    fmt_ratio(ratio(p50, b50)),
                    fmt_ratio(ratio(p99, b99)),
                    f"{int(item['latency']['count']):,}",
                ]
            )
    return markdown_table(
        [
            "concurrency",
            "variant",
            "p50 ms",
            "p99 ms",
            "p50 x A",
            "p99 x A",
            "p50 x B",
            "p99 x B",
            "transitions",
        ],
        rows,
        "rlrrrrrrr",
    )


def sweep_table(results: Results) -> str:
    sweep = results.get("sweep", {})
    runs = sweep.get("runs", [])
    one = sweep_run(results, 1)
    rows: list[list[object]] = []
    for run in runs:
        k = int(run["workers"])
        rate = float(run["per_second"])
        rows.append(
            [
                k,
                f"{int(run['instances']):,}",
                f"{float(run['seconds']):.2f}",
                fmt_rate(rate),
                fmt_ratio(ratio(rate, one["per_second"] if one else None)),
                fmt_ratio(ratio(rate, median_rate(results, "asyncpg", k))),
                fmt_ratio(ratio(rate, median_rate(results, "pgbench", k))),
                run.get("sweeps", "n/a"),
                run["processed_twice"],
                run["commands_repeated"],
                run["failed"],
                run["left_due"],
            ]
        )
    return markdown_table(
        [
            "workers",
            "instances",
            "seconds",
            "instances/s",
            "x 1 worker",
            "x A (c=workers)",
            "x B (c=workers)",
            "batches swept",
            "processed twice",
            "command ran twice",
            "failed attempts",
            "left due",
        ],
        rows,
        "r" * 12,
    )


def batched_table(results: Results) -> str:
    baseline = sweep_run(results, 1)
    filed, label = filed_rate(results), filed_label(results)
    queue = pgqueuer_rate(results)
    rows: list[list[object]] = []
    runs = list(results.get("batched_sweep", {}).get("runs", []))
    if filed is not None:
        # The baseline first: one per-instance worker of the filed commit.
        runs.insert(0, {**(filed_baseline(results) or {}), "mode": "filed"})
    for run in runs:
        rate = float(run["per_second"])
        one = batched_run(results, run["mode"], 1)
        rows.append(
            [
                {
                    "tasks": "tasks, one process",
                    "processes": "one per process",
                    "filed": f"per-instance at {label} (issue's baseline)",
                }[run["mode"]],
                int(run["workers"]),
                f"{int(run['instances']):,}",
                f"{float(run['seconds']):.2f}",
                fmt_rate(rate),
                fmt_ratio(ratio(rate, baseline["per_second"] if baseline else None)),
                fmt_ratio(ratio(rate, filed)),
                fmt_ratio(ratio(rate, queue)),
                fmt_ratio(ratio(rate, one["per_second"] if one else None)),
                run.get("sweeps", "n/a"),
                run["processed_twice"],
                run["commands_repeated"],
                run["failed"],
                run["left_due"],
            ]
        )
    return markdown_table(
        [
            "workers",
            "how many",
            "instances",
            "seconds",
            "instances/s",
            "x per-instance 1 worker",
            f"x per-instance at {label}",
            "x pgqueuer",
            "x batched 1",
            "sweeps",
            "processed twice",
            "command ran twice",
            "failed attempts",
            "left due",
        ],
        rows,
        "l" + "r" * 13,
    )


def memory_table(results: Results) -> str:
    rows = [
        [
            item["surface"],
            item["concurrency"],
            f"{int(item['warmup']):,}",
            f"{int(item['transitions']):,}",
            f"{float(item['rss_before_mb']):.1f}",
            f"{float(item['rss_after_mb']):.1f}",
            f"{float(item['growth_mb']):+.2f}",
            _signed(item.get("allocated_blocks_growth")),
            _signed(item.get("gc_objects_growth")),
        ]
        for item in results.get("memory", [])
    ]
    return markdown_table(
        [
            "surface",
            "tasks",
            "warm-up transitions",
            "measured transitions",
            "RSS before (MB)",
            "RSS after (MB)",
            "RSS growth (MB)",
            "allocated blocks growth",
            "GC objects growth",
        ],
        rows,
        "lrrrrrrrr",
    )


def _signed(value: object) -> str:
    return "n/a" if value is None else f"{int(str(value)):+,}"


# --- targets -----------------------------------------------------------------------------------


def _verdict(value: float | None, limit: float, *, at_least: bool) -> bool | None:
    if value is None:
        return None
    return value >= limit if at_least else value <= limit


def evaluate_targets(results: Results) -> list[dict[str, Any]]:
    """The issue's targets with what this run measured; ``met`` is None when not measured."""
    c = TARGET_CONCURRENCY
    targets: list[dict[str, Any]] = []

    def add(name: str, threshold: str, value: float | None, shown: str, met: bool | None) -> None:
        targets.append(
            {"target": name, "threshold": threshold, "value": value, "measured": shown, "met": met}
        )

    # Issue 14, item 1: transitions faster than hand-written asyncpg.
    for variant, baseline, limit in (
        ("adapter", "asyncpg", 1.4),
        ("runtime", "asyncpg", 1.3),
        ("runtime", "pgbench", 0.65),
    ):
        value = ratio(median_rate(results, variant, c), median_rate(results, baseline, c))
        letter = "A" if baseline == "asyncpg" else "B"
        add(
            f"{variant} throughput at c={c}" + ("" if letter == "A" else " against B"),
            f"≥ {limit}x {letter}",
            value,
            f"not measured (c={c})" if value is None else f"{fmt_ratio(value)} {letter}",
            _verdict(value, limit, at_least=True),
        )
    scaling = sweep_scaling(results)
    add(
        "sweep scaling, 1 → 4 workers",
        "≥ 1.50x",
        scaling,
        fmt_ratio(scaling),
        _verdict(scaling, 1.5, at_least=True),
    )
    for variant in ("adapter", "runtime"):
        value = ratio(
            latency_ms(results, variant, 1, "p99_ms"), latency_ms(results, "pgbench", 1, "p99_ms")
        )
        add(
            f"{variant} p99 latency at c=1",
            "≤ 1.30x B's p99",
            value,
            "not measured" if value is None else f"{fmt_ratio(value)} B",
            _verdict(value, 1.3, at_least=False),
        )
    for item in results.get("memory", []):
        growth = float(item["growth_mb"])
        add(
            f"{item['surface']} RSS growth over {int(item['transitions']):,} transitions",
            "≤ 10 MB",
            growth,
            f"{growth:+.2f} MB",
            _verdict(growth, 10.0, at_least=False),
        )
    speedup = batched_speedup(results)
    add(
        "batched sweep, 1 worker, against the per-instance sweep",
        "≥ 20.0x",
        speedup,
        fmt_ratio(speedup),
        _verdict(speedup, 20.0, at_least=True),
    )
    # The issue's own baseline: its goal is 20x the per-instance worker of the day it was filed,
    # and that code, run in this run, is what the sweep above is measured against here.
    filed = batched_vs_filed(results)
    add(
        f"batched sweep, 1 worker, against the per-instance TimeoutWorker of "
        f"{filed_label(results)} (the issue's baseline), same run",
        "≥ 20.0x",
        filed,
        "not measured" if filed is None else fmt_ratio(filed),
        _verdict(filed, 20.0, at_least=True),
    )
    versus = batched_vs_pgqueuer(results)
    add(
        "batched sweep, 1 worker, against pgqueuer's drain (1 worker)",
        "> 1.00x",
        versus,
        fmt_ratio(versus),
        None if versus is None else versus > 1.0,
    )
    # Issue 14, item 3: wake-ups in milliseconds.
    woken = {
        run["what"]: float(run["p99_ms"])
        for run in results.get("wakeups", {}).get("runs", [])
        if run["mode"] == "wakeups"
    }
    for what in ("timeout lateness", "enqueue to first command"):
        p99 = woken.get(what)
        add(
            f"{what} p99 with wake-ups",
            "≤ 50 ms",
            p99,
            "not measured" if p99 is None else f"{fmt_ms(p99)} ms",
            _verdict(p99, 50.0, at_least=False),
        )
    runs = [
        *results.get("sweep", {}).get("runs", []),
        *results.get("batched_sweep", {}).get("runs", []),
    ]
    if runs:
        twice = max(int(run["processed_twice"]) + int(run["commands_repeated"]) for run in runs)
        add("instances processed twice by the sweep", "= 0", twice, str(twice), twice == 0)
    return targets


def targets_table(results: Results) -> str:
    rows = [
        [
            t["target"],
            t["threshold"],
            t["measured"],
            "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**"),
        ]
        for t in evaluate_targets(results)
    ]
    return markdown_table(["target", "threshold", "this run", "met"], rows, "llrl")


# --- the whole report --------------------------------------------------------------------------


def describe_run(results: Results) -> str:
    machine = results.get("machine", {})
    server = results.get("server", {})
    options = results.get("options", {})
    settings = server.get("settings", {})
    durable = ", ".join(
        f"{name}={settings[name].split(' ')[0]}"
        for name in ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")
        if name in settings
    )
    lines = [
        f"- Machine: {machine.get('cpu_model', '?')}, {machine.get('logical_cpus', '?')} logical "
        f"CPUs, {machine.get('ram_gb', '?')} GB RAM; {machine.get('os', '?')}",
        f"- Software: {machine.get('python', '?')}, asyncpg {machine.get('asyncpg', '?')}, "
        f"PostgreSQL {server.get('version', '?')} (embedded, default settings: {durable}), "
        f"{server.get('pgbench', 'pgbench ?')}",
        f"- Run: {options.get('rounds', '?')} interleaved rounds of "
        f"{options.get('duration', '?')} s per variant and concurrency, "
        f"JSON codec `{options.get('codec', '?')}`, event loop `{options.get('loop', 'asyncio')}`"
        + (" (**smoke run**: figures are not meaningful)" if options.get("smoke") else "")
        + f"; started {results.get('started_at', '?')}, took {results.get('wall_seconds', 0):.0f} s"
        + (f"; commit {machine['git_commit']}" if machine.get("git_commit") else ""),
    ]
    return "\n".join(lines)


def batched_section(results: Results) -> list[str]:
    """The batched sweeps and pgqueuer's drain, when the run measured them."""
    batched = results.get("batched_sweep")
    if not batched:
        return []
    queue = batched.get("pgqueuer") or {}
    filed, label = filed_baseline(results), filed_label(results)
    current = sweep_run(results, 1)
    if filed is None:
        filed_text: list[str] = []
    elif filed.get("available"):
        filed_text = [
            f"The issue's baseline: the per-instance TimeoutWorker of {label}, the commit before "
            "its changes, run from its git archive in a child process of this run, on the same "
            f"server and as many due instances: {fmt_rate(filed_rate(results))} instances/s "
            f"(loop `{filed.get('loop', '?')}`), "
            f"{fmt_ratio(ratio(filed_rate(results), current['per_second'] if current else None))} "
            "the per-instance sweep of the current code.",
            "",
        ]
    else:
        filed_text = [
            f"The issue's baseline, the per-instance TimeoutWorker of {label}, was not measured: "
            f"{filed.get('reason', 'no reason recorded')}.",
            "",
        ]
    return [
        f"### Batched timeout sweep ({int(batched.get('instances', 0)):,} due instances, batch "
        f"size {batched.get('batch_size', '?')}, one transaction per batch)",
        "",
        batched_table(results),
        "",
        *filed_text,
        f"pgqueuer {queue.get('version', '?')} drain (its own benchmark's steps), "
        f"{int(queue.get('jobs', 0)):,} jobs, {queue.get('dequeue', '?')} queue manager, batch "
        f"{queue.get('batch_size', '?')}: {fmt_rate(pgqueuer_rate(results))} jobs/s. Batched "
        f"1 worker: {fmt_ratio(batched_speedup(results))} the per-instance sweep, "
        f"{fmt_ratio(batched_vs_filed(results))} the per-instance sweep of {label}, "
        f"{fmt_ratio(batched_vs_pgqueuer(results))} pgqueuer.",
        "",
    ]


def wakeups_section(results: Results) -> list[str]:
    """Timeout lateness and enqueue latency with wake-ups and with polling, when measured."""
    wake = results.get("wakeups")
    if not wake:
        return []
    rows = [
        [
            run["what"],
            run["mode"],
            f"{int(run['count']):,} over {run['spread_seconds']:g} s",
            fmt_ms(run["p50_ms"]),
            fmt_ms(run["p99_ms"]),
            fmt_ms(run["max_ms"]),
        ]
        for run in wake.get("runs", [])
    ]
    return [
        f"### Wake-ups (poll interval {wake.get('poll_interval', '?')} s; each timeout "
        f"{wake.get('timeout_seconds', '?')} s after its instance is created)",
        "",
        markdown_table(["latency", "workers", "count", "p50 ms", "p99 ms", "max ms"], rows),
        "",
        "Transitions that re-arm a deadline and notify: "
        f"{fmt_ratio(wake.get('notify_throughput_ratio'))} the rate of the same transitions "
        "without wake-ups (4 tasks).",
        "",
    ]


def render_markdown(results: Results) -> str:
    sweep = results.get("sweep", {})
    scaling = sweep_scaling(results)
    parts = [
        "## Benchmark results",
        "",
        describe_run(results),
        "",
        "### Throughput (one transition per transaction, one instance per task)",
        "",
        throughput_table(results),
        "",
        "### Latency per transition",
        "",
        latency_table(results),
        "",
        f"### Timeout sweep ({int(sweep.get('instances', 0)):,} due instances, batch size "
        f"{sweep.get('batch_size', '?')}, poll interval {sweep.get('poll_interval', '?')} s)",
        "",
        sweep_table(results),
        "",
        f"Scaling from 1 to 4 workers: {fmt_ratio(scaling)}.",
        "",
        *batched_section(results),
        *wakeups_section(results),
        "### Memory (a fresh process per surface)",
        "",
        memory_table(results),
        "",
        "### Targets",
        "",
        targets_table(results),
        "",
    ]
    return "\n".join(parts)


def write_chart(results: Results, path: Path) -> None:
    """Throughput against concurrency for the four variants (median, whiskers min-max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"asyncpg": "o-", "pgbench": "s--", "adapter": "^-", "runtime": "D-"}
    figure, axes = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    levels = concurrencies(results)
    for variant in VARIANTS:
        points = [
            (c, item) for c in levels if (item := measurement(results, variant, c)) is not None
        ]
        if not points:
            continue
        xs = [c for c, _ in points]
        ys, low, high = [], [], []
        for _, item in points:
            middle = float(item["median_per_second"])
            rounds = [float(r) for r in item["rounds_per_second"]]
            ys.append(middle)
            low.append(middle - min(rounds))
            high.append(max(rounds) - middle)
        axes.errorbar(
            xs, ys, yerr=[low, high], fmt=styles[variant], capsize=3, label=LABELS[variant]
        )
    axes.set_xscale("log", base=2)
    axes.set_xticks(levels)
    axes.set_xticklabels([str(c) for c in levels])
    axes.set_xlabel("concurrency (tasks / pgbench clients)")
    axes.set_ylabel("transitions per second")
    axes.set_ylim(bottom=0)
    server = results.get("server", {})
    machine = results.get("machine", {})
    axes.set_title(
        f"Transition throughput, PostgreSQL {server.get('version', '?')} (durable), "
        f"{machine.get('logical_cpus', '?')} CPUs",
        fontsize=10,
    )
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
