"""The pure parts of the benchmark harness (bench/): statistics, pgbench parsing, the report.

No server and no timing: the figures below are made up, and nothing asserts how fast anything is.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench(name: str) -> ModuleType:
    # bench/ sits at the repository root, outside the installed package; appended (not
    # prepended) to sys.path so that the installed duraflows_pg_async keeps winning.
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))
    return importlib.import_module(f"bench.{name}")


stats = _bench("stats")
pgbench = _bench("pgbench")
report = _bench("report")
sql = _bench("sql")


# --- percentiles -------------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    assert stats.percentile([4, 1, 3, 2], 50) == 2.5
    assert stats.percentile([4, 1, 3, 2], 0) == 1
    assert stats.percentile([4, 1, 3, 2], 100) == 4
    assert stats.percentile([10, 20], 25) == 12.5


def test_percentile_of_one_to_a_hundred_and_one() -> None:
    values = list(range(101, 0, -1))
    assert stats.percentile(values, 99) == 100
    assert stats.percentile(values, 50) == 51
    assert stats.median([3, 1, 2]) == 2


def test_percentile_of_a_single_value() -> None:
    assert stats.percentile([7.5], 99) == 7.5


@pytest.mark.parametrize("q", [-1, 100.5, float("nan")])
def test_percentile_refuses_a_rank_outside_0_to_100(q: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        stats.percentile([1, 2], q)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        stats.percentile([], 50)


def test_summarize_ns_reports_milliseconds() -> None:
    summary = stats.summarize_ns([3_000_000, 1_000_000, 2_000_000, 4_000_000])
    assert summary is not None
    assert summary.count == 4
    assert summary.p50_ms == pytest.approx(2.5)
    assert summary.p99_ms == pytest.approx(3.97)
    assert summary.mean_ms == pytest.approx(2.5)
    assert summary.max_ms == pytest.approx(4.0)
    assert stats.summarize_ns([]) is None


def test_ratio_is_none_without_a_usable_baseline() -> None:
    assert stats.ratio(3.0, 2.0) == 1.5
    assert stats.ratio(None, 2.0) is None
    assert stats.ratio(3.0, None) is None
    assert stats.ratio(3.0, 0.0) is None


# --- pgbench -----------------------------------------------------------------------------------

STDOUT = """\
pgbench (18.6)
transaction type: transition.sql
scaling factor: 1
query mode: prepared
number of clients: 4
number of threads: 4
maximum number of tries: 1
duration: 5 s
number of transactions actually processed: 29540
number of failed transactions: 0 (0.000%)
latency average = 0.677 ms
initial connection time = 7.020 ms
tps = 5907.812345 (without initial connection time)
"""


def test_parse_summary_reads_tps_and_counts() -> None:
    summary = pgbench.parse_summary(STDOUT)
    assert summary.tps == pytest.approx(5907.812345)
    assert summary.processed == 29540
    assert summary.failed == 0


def test_parse_summary_without_tps_is_an_error() -> None:
    with pytest.raises(pgbench.PgbenchError, match="no tps"):
        pgbench.parse_summary("pgbench (18.6)\nnumber of clients: 4\n")


def test_parse_log_lines_collects_latencies_failures_and_skips() -> None:
    lines = [
        "0 1 4307 0 1795564329 694127",
        "0 2 831 0 1795564329 694976",
        "",
        "3 17 failed 0 1795564330 100 0",
        "1 9 skipped 0 1795564330 200 5",
        "2 5 953 0 1795564329 695933 12 0",
    ]
    log = pgbench.parse_log_lines(lines)
    assert log.latencies_us == [4307, 831, 953]
    assert log.failed == 1
    assert log.skipped == 1


def test_parse_log_lines_appends_to_an_existing_log() -> None:
    log = pgbench.parse_log_lines(["0 1 10 0 1 1"])
    pgbench.parse_log_lines(["1 1 20 0 1 1"], into=log)
    assert log.latencies_us == [10, 20]


@pytest.mark.parametrize("line", ["0 1 10", "0 1 ten 0 1 1"])
def test_parse_log_lines_refuses_a_malformed_line(line: str) -> None:
    with pytest.raises(pgbench.PgbenchError, match="line 1"):
        pgbench.parse_log_lines([line])


def test_pgbench_script_runs_one_transition_per_transaction() -> None:
    script = sql.pgbench_script()
    lines = [line for line in script.splitlines() if line]
    assert lines[0] == "\\set id :client_id + 1"
    assert lines[1] == "BEGIN;"
    assert lines[2].startswith("SELECT uuid, workflow_name")
    assert lines[2].endswith("\\gset r_")
    assert "FOR UPDATE" in lines[2]
    assert lines[3].startswith("UPDATE workflow_instances SET")
    assert "AND version = :r_version" in lines[3]
    assert lines[4].startswith("INSERT INTO workflow_history")
    assert "RETURNING uuid" in lines[4]
    assert lines[5] == "COMMIT;"
    # pgbench reads ":name" as a variable even inside quotes: the JSON literals must not have one.
    assert '":t' not in script
    assert '":"' not in script


def test_pgbench_instance_uuids_match_the_script() -> None:
    assert str(sql.pgbench_instance_uuid(1)) == "b0000000-0000-4000-8000-000000000001"
    assert str(sql.pgbench_instance_uuid(16)) == "b0000000-0000-4000-8000-000000000016"
    assert "'b0000000-0000-4000-8000-' || lpad(:id, 12, '0')" in sql.pgbench_script()
    with pytest.raises(ValueError, match="out of range"):
        sql.pgbench_instance_uuid(0)


def test_baseline_statements_have_the_transition_shape() -> None:
    assert sql.LOCK_INSTANCE.endswith("FROM workflow_instances WHERE uuid = $1 FOR UPDATE")
    assert sql.UPDATE_INSTANCE.endswith("WHERE uuid = $1 AND version = $13")
    assert sql.INSERT_HISTORY.endswith("$10, now()) RETURNING uuid")
    assert len(sql.INSTANCE_COLUMNS.split(", ")) == 15


# --- the report --------------------------------------------------------------------------------


def _entry(c: int, rounds: list[float], p50: float, p99: float) -> dict[str, Any]:
    ordered = sorted(rounds)
    return {
        "concurrency": c,
        "rounds_per_second": rounds,
        "median_per_second": ordered[len(ordered) // 2],
        "transitions": 1000,
        "seconds": 1.0,
        "latency": {"count": 1000, "p50_ms": p50, "p99_ms": p99, "mean_ms": p50, "max_ms": p99},
    }


def _results() -> dict[str, Any]:
    return {
        "options": {"rounds": 3, "duration": 5.0, "codec": "default", "smoke": False},
        "machine": {"cpu_model": "Test CPU", "logical_cpus": 2, "ram_gb": 8.0, "os": "Linux"},
        "server": {"version": "18.6", "settings": {"fsync": "on", "synchronous_commit": "on"}},
        "throughput": {
            "concurrency": [1, 8],
            "variants": {
                "asyncpg": [
                    _entry(1, [900, 1000, 1100], 1.0, 2.0),
                    _entry(8, [3900, 4000, 4100], 2.0, 4.0),
                ],
                "pgbench": [
                    _entry(1, [2000, 2000, 2000], 0.5, 1.0),
                    _entry(8, [8000, 8000, 8000], 1.0, 2.0),
                ],
                "adapter": [
                    _entry(1, [800, 900, 1000], 1.1, 1.4),
                    _entry(8, [4000, 4400, 4800], 2.0, 3.0),
                ],
                "runtime": [
                    _entry(1, [700, 700, 700], 1.2, 1.6),
                    _entry(8, [3000, 3000, 3000], 2.5, 5.0),
                ],
            },
        },
        "sweep": {
            "instances": 20000,
            "batch_size": 100,
            "poll_interval": 0.05,
            "runs": [
                {
                    "workers": 1,
                    "instances": 20000,
                    "seconds": 20.0,
                    "per_second": 1000.0,
                    "processed_twice": 0,
                    "commands_repeated": 0,
                    "failed": 0,
                    "left_due": 0,
                },
                {
                    "workers": 4,
                    "instances": 20000,
                    "seconds": 10.0,
                    "per_second": 2000.0,
                    "processed_twice": 0,
                    "commands_repeated": 0,
                    "failed": 0,
                    "left_due": 0,
                },
            ],
        },
        "memory": [
            {
                "surface": "runtime",
                "concurrency": 4,
                "warmup": 5000,
                "transitions": 100000,
                "rss_before_mb": 40.0,
                "rss_after_mb": 52.5,
                "growth_mb": 12.5,
                "allocated_blocks_growth": 1200,
            },
        ],
    }


def test_markdown_table_renders_and_escapes_pipes() -> None:
    table = report.markdown_table(["name", "value"], [["a|b", 1]])
    assert table.splitlines() == ["| name | value |", "| :--- | ---: |", "| a\\|b | 1 |"]


def test_markdown_table_refuses_ragged_rows() -> None:
    with pytest.raises(ValueError, match="one cell per header"):
        report.markdown_table(["a", "b"], [["only one"]])


def test_throughput_table_gives_ratios_to_both_baselines() -> None:
    table = report.throughput_table(_results())
    rows = {
        tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in table.splitlines()
    }
    adapter_8 = rows[("8", "adapter")]
    assert "| 4,400 |" in adapter_8
    assert "| 4,000-4,800 |" in adapter_8
    assert "| 1.10x | 0.55x |" in adapter_8
    assert "| 1.00x | 0.50x |" in rows[("1", "A: asyncpg")]
    assert "| 2.00x | 1.00x |" in rows[("1", "B: pgbench")]


def test_latency_table_shows_concurrency_1_and_8_with_ratios() -> None:
    table = report.latency_table(_results())
    runtime_1 = next(line for line in table.splitlines() if line.startswith("| 1 | runtime"))
    # p50 1.2 ms, p99 1.6 ms against A (1.0, 2.0) and B (0.5, 1.0)
    assert "| 1.200 | 1.600 | 1.20x | 0.80x | 2.40x | 1.60x | 1,000 |" in runtime_1


def test_targets_report_met_missed_and_unmeasured() -> None:
    targets = {t["target"]: t for t in report.evaluate_targets(_results())}
    assert targets["adapter throughput at c=8"]["value"] == pytest.approx(1.1)
    assert targets["adapter throughput at c=8"]["threshold"] == "≥ 1.4x A"
    assert targets["adapter throughput at c=8"]["met"] is False
    assert targets["runtime throughput at c=8"]["value"] == pytest.approx(0.75)
    assert targets["runtime throughput at c=8"]["met"] is False
    assert targets["runtime throughput at c=8 against B"]["value"] == pytest.approx(0.375)
    assert targets["runtime throughput at c=8 against B"]["threshold"] == "≥ 0.65x B"
    assert targets["sweep scaling, 1 → 4 workers"]["value"] == pytest.approx(2.0)
    assert targets["adapter p99 latency at c=1"]["met"] is False  # 1.4 / 1.0
    assert targets["runtime p99 latency at c=1"]["met"] is False  # 1.6 / 1.0
    faster = _results()
    faster["throughput"]["variants"]["adapter"][1] = _entry(8, [5600, 5600, 5600], 2.0, 3.0)
    faster["throughput"]["variants"]["runtime"][1] = _entry(8, [5200, 5200, 5200], 2.0, 3.0)
    faster["throughput"]["variants"]["adapter"][0] = _entry(1, [900, 900, 900], 1.1, 1.3)
    met = {t["target"]: t["met"] for t in report.evaluate_targets(faster)}
    assert met["adapter throughput at c=8"] is True  # 1.4
    assert met["runtime throughput at c=8"] is True  # 1.3
    assert met["runtime throughput at c=8 against B"] is True  # 0.65
    assert met["adapter p99 latency at c=1"] is True  # 1.3 / 1.0
    assert targets["runtime RSS growth over 100,000 transitions"]["met"] is False
    assert targets["instances processed twice by the sweep"]["met"] is True

    results = _results()
    results["throughput"]["concurrency"] = [1]
    for entries in results["throughput"]["variants"].values():
        del entries[1]
    unmeasured = {t["target"]: t for t in report.evaluate_targets(results)}
    assert unmeasured["adapter throughput at c=8"]["met"] is None
    assert unmeasured["adapter throughput at c=8"]["measured"] == "not measured (c=8)"


def test_render_markdown_has_every_section() -> None:
    markdown = report.render_markdown(_results())
    for heading in (
        "### Throughput",
        "### Latency",
        "### Timeout sweep",
        "### Memory",
        "### Targets",
    ):
        assert heading in markdown
    assert "Scaling from 1 to 4 workers: 2.00x." in markdown
    assert "| runtime | 4 | 5,000 | 100,000 | 40.0 | 52.5 | +12.50 | +1,200 | n/a |" in markdown
    assert "Test CPU, 2 logical CPUs" in markdown


def test_write_chart_draws_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "throughput.png"
    report.write_chart(_results(), path)
    assert path.read_bytes().startswith(b"\x89PNG")


# --- options -----------------------------------------------------------------------------------


def test_smoke_options_and_explicit_overrides() -> None:
    cli = _bench("__main__")
    smoke = cli.options_from(cli.parser().parse_args(["--smoke"]))
    assert smoke.smoke
    assert smoke.duration == 0.3
    assert smoke.concurrency == (1, 4)
    assert smoke.sweep_instances == 500
    assert smoke.pgbench_seconds == 1
    mixed = cli.options_from(cli.parser().parse_args(["--smoke", "--concurrency", "8,1,8"]))
    assert mixed.concurrency == (1, 8)
    full = cli.options_from(cli.parser().parse_args([]))
    assert (full.duration, full.rounds, full.concurrency) == (5.0, 3, (1, 4, 8, 16))
    assert (full.sweep_instances, full.memory_transitions) == (20_000, 100_000)
    assert full.loop == "auto"
    assert cli.options_from(cli.parser().parse_args(["--loop", "asyncio"])).loop == "asyncio"
    assert cli.loop_factory("asyncio") == ("asyncio", None)
    name, factory = cli.loop_factory("auto")
    assert (name == "uvloop") is (factory is not None)


@pytest.mark.parametrize("argv", [["--concurrency", "0"], ["--duration", "-1"], ["--rounds", "x"]])
def test_bad_options_are_refused(argv: list[str]) -> None:
    cli = _bench("__main__")
    with pytest.raises(SystemExit):
        cli.parser().parse_args(argv)


def _batched(mode: str, workers: int, per_second: float) -> dict[str, Any]:
    return {
        "mode": mode,
        "workers": workers,
        "instances": 20000,
        "seconds": 20000 / per_second,
        "per_second": per_second,
        "processed_twice": 0,
        "commands_repeated": 0,
        "failed": 0,
        "left_due": 0,
        "sweeps": 201,
    }


def test_batched_sweeps_are_reported_against_the_per_instance_sweep_and_pgqueuer() -> None:
    results = _results()
    results["batched_sweep"] = {
        "instances": 20000,
        "batch_size": 100,
        "runs": [
            _batched("tasks", 1, 25000.0),
            _batched("tasks", 4, 40000.0),
            _batched("processes", 4, 50000.0),
        ],
        "pgqueuer": {
            "version": "1.6.0",
            "jobs": 20000,
            "dequeue": 1,
            "batch_size": 10,
            "seconds": 8.0,
            "per_second": 2500.0,
            "drained": 20000,
        },
    }
    targets = {t["target"]: t for t in report.evaluate_targets(results)}
    speedup = targets["batched sweep, 1 worker, against the per-instance sweep"]
    assert (speedup["value"], speedup["met"]) == (pytest.approx(25.0), True)
    versus = targets["batched sweep, 1 worker, against pgqueuer's drain (1 worker)"]
    assert (versus["value"], versus["met"]) == (pytest.approx(10.0), True)
    markdown = report.render_markdown(results)
    assert "### Batched timeout sweep (20,000 due instances, batch size 100" in markdown
    # 40,000/s: 40x the per-instance worker (1,000/s), 16x pgqueuer, 1.6x one batched worker.
    # (No filed baseline in these results: its column says n/a.)
    assert (
        "| tasks, one process | 4 | 20,000 | 0.50 | 40,000 | 40.00x | n/a | 16.00x | 1.60x |"
        in (markdown)
    )
    assert (
        "| one per process | 4 | 20,000 | 0.40 | 50,000 | 50.00x | n/a | 20.00x | n/a |" in markdown
    )
    assert "pgqueuer 1.6.0 drain" in markdown

    unmeasured = {t["target"]: t for t in report.evaluate_targets(_results())}
    assert unmeasured["batched sweep, 1 worker, against the per-instance sweep"]["met"] is None
    assert "### Batched timeout sweep" not in report.render_markdown(_results())


def _wakeup(mode: str, what: str, p99: float) -> dict[str, Any]:
    return {
        "mode": mode,
        "what": what,
        "count": 1000,
        "spread_seconds": 10.0,
        "p50_ms": p99 / 4,
        "p99_ms": p99,
        "max_ms": p99 * 2,
    }


def test_wakeups_are_reported_against_polling_and_the_50_ms_goal() -> None:
    results = _results()
    assert report.wakeups_section(results) == []
    results["wakeups"] = {
        "poll_interval": 1.0,
        "timeout_seconds": 0.25,
        "runs": [
            _wakeup("wakeups", "timeout lateness", 20.0),
            _wakeup("wakeups", "enqueue to first command", 60.0),
            _wakeup("polling", "timeout lateness", 1000.0),
        ],
        "notify_throughput_ratio": 0.9,
    }
    targets = {t["target"]: t for t in report.evaluate_targets(results)}
    assert targets["timeout lateness p99 with wake-ups"]["met"] is True
    assert targets["enqueue to first command p99 with wake-ups"]["met"] is False
    markdown = report.render_markdown(results)
    assert "### Wake-ups (poll interval 1.0 s" in markdown
    assert "| timeout lateness | polling | 1,000 over 10 s |" in markdown
    assert "0.90x the rate of the same transitions without wake-ups" in markdown


FILED_TARGET = (
    "batched sweep, 1 worker, against the per-instance TimeoutWorker of 8eb6902 "
    "(the issue's baseline), same run"
)


def _with_batched(filed: dict[str, Any] | None) -> dict[str, Any]:
    results = _results()
    results["batched_sweep"] = {
        "instances": 20000,
        "batch_size": 100,
        "runs": [_batched("tasks", 1, 25000.0), _batched("tasks", 4, 40000.0)],
        "pgqueuer": {
            "version": "1.6.0",
            "jobs": 20000,
            "dequeue": 1,
            "batch_size": 10,
            "seconds": 8.0,
            "per_second": 2500.0,
            "drained": 20000,
        },
    }
    if filed is not None:
        results["batched_sweep"]["filed_baseline"] = filed
    return results


def test_batched_sweep_is_reported_against_the_filed_baseline_of_the_same_run() -> None:
    commit = "8eb6902088509599d9181da1c8265a6643750320"
    results = _with_batched(
        {
            "ref": commit,
            "available": True,
            "commit": commit,
            "short": "8eb6902",
            "loop": "uvloop",
            **_batched("filed", 1, 625.0),
        }
    )
    targets = {t["target"]: t for t in report.evaluate_targets(results)}
    filed = targets[FILED_TARGET]
    # 25,000/s against 625/s: 40x, where the current per-instance sweep (1,000/s) gives 25x.
    assert (filed["value"], filed["met"], filed["measured"]) == (
        pytest.approx(40.0),
        True,
        "40.00x",
    )
    assert filed["threshold"] == "≥ 20.0x"
    assert targets["batched sweep, 1 worker, against the per-instance sweep"]["value"] == (
        pytest.approx(25.0)
    )
    slower = _with_batched({**results["batched_sweep"]["filed_baseline"], "per_second": 1500.0})
    missed = {t["target"]: t for t in report.evaluate_targets(slower)}[FILED_TARGET]
    assert (missed["value"], missed["met"]) == (pytest.approx(25000 / 1500), False)

    markdown = report.render_markdown(results)
    assert "| x per-instance 1 worker | x per-instance at 8eb6902 | x pgqueuer |" in markdown
    # The baseline's own row first, then each batched run against it.
    assert (
        "| per-instance at 8eb6902 (issue's baseline) | 1 | 20,000 | 32.00 | 625 | 0.62x | "
        "1.00x | 0.25x | n/a |" in markdown
    )
    assert "| tasks, one process | 4 | 20,000 | 0.50 | 40,000 | 40.00x | 64.00x | 16.00x |" in (
        markdown
    )
    assert "the per-instance TimeoutWorker of 8eb6902, the commit before its changes" in markdown
    assert "625 instances/s (loop `uvloop`), 0.62x the per-instance sweep" in markdown
    assert "25.00x the per-instance sweep, 40.00x the per-instance sweep of 8eb6902" in markdown
    assert f"| {FILED_TARGET} | ≥ 20.0x | 40.00x | yes |" in markdown


def test_an_unavailable_filed_baseline_is_reported_with_its_reason_and_no_verdict() -> None:
    reason = "no commit 8eb6902 (git rev-parse in /src: fatal: not a git repository)"
    results = _with_batched({"ref": "8eb6902", "available": False, "reason": reason})
    targets = {t["target"]: t for t in report.evaluate_targets(results)}
    filed = targets[FILED_TARGET]
    assert (filed["value"], filed["met"], filed["measured"]) == (None, None, "not measured")
    # The comparison with the current per-instance sweep is still made.
    assert targets["batched sweep, 1 worker, against the per-instance sweep"]["met"] is True
    markdown = report.render_markdown(results)
    assert f"8eb6902, was not measured: {reason}." in markdown
    assert "per-instance at 8eb6902 (issue's baseline)" not in markdown
    assert "| tasks, one process | 1 | 20,000 | 0.80 | 25,000 | 25.00x | n/a | 10.00x |" in markdown
    assert f"| {FILED_TARGET} | ≥ 20.0x | not measured | n/a |" in markdown

    # Results saved before the filed baseline was measured: no verdict, and no error.
    older = {t["target"]: t for t in report.evaluate_targets(_with_batched(None))}
    unnamed = older[FILED_TARGET.replace("8eb6902", "the filed commit")]
    assert unnamed["met"] is None
    assert "was not measured" not in report.render_markdown(_with_batched(None))


def test_the_baseline_child_sweeps_the_same_workflow_with_the_same_codecs() -> None:
    # The child runs the pinned commit's package, so it writes the sweep's workflow and picks the
    # codec itself; here, on the current package, both must match what bench.sweep uses.
    child = _bench("sweep_baseline_child")
    sweep = _bench("sweep")
    workloads = _bench("workloads")
    assert child.sweep_workflow().to_dict() == sweep.SWEEP_WORKFLOW.to_dict()
    for codec in ("default", "stdlib", "orjson"):
        assert child.json_functions(codec) == workloads._json_functions(codec, baseline=False)


def test_the_filed_baseline_is_unavailable_outside_a_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    baseline = _bench("sweep_baseline")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(baseline.BaselineUnavailable, match="8eb6902"):
        baseline.extract_package("8eb6902", into, root=tmp_path)
    assert not any(into.iterdir())


def test_baseline_ref_option_defaults_to_the_filed_commit() -> None:
    cli = _bench("__main__")
    baseline = _bench("sweep_baseline")
    assert baseline.FILED_BASELINE.startswith("8eb6902")
    assert len(baseline.FILED_BASELINE) == 40
    assert cli.options_from(cli.parser().parse_args([])).baseline_ref == baseline.FILED_BASELINE
    given = cli.options_from(cli.parser().parse_args(["--smoke", "--baseline-ref", "v0.1.0"]))
    assert given.baseline_ref == "v0.1.0"
