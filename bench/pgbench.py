"""Baseline B: the transition as a pgbench custom script, and the parsing of pgbench's output.

pgbench runs as a subprocess against the harness's server. Its throughput comes from the summary
it prints (``tps = … (without initial connection time)``); its latencies from the per-transaction
logs of ``-l --log-prefix``, one line per transaction::

    client_id transaction_no time script_no time_epoch time_us [schedule_lag] [retries]

where ``time`` is the transaction's elapsed time in microseconds, or ``failed`` / ``skipped``.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PgbenchError",
    "PgbenchLog",
    "PgbenchResult",
    "parse_log_lines",
    "parse_summary",
    "run_pgbench",
]

_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


class PgbenchError(RuntimeError):
    """pgbench failed, or its output could not be understood."""


@dataclass(slots=True)
class PgbenchLog:
    """What the per-transaction log files say."""

    latencies_us: list[int] = field(default_factory=list)
    failed: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class PgbenchSummary:
    tps: float
    processed: int
    failed: int


@dataclass(frozen=True, slots=True)
class PgbenchResult:
    clients: int
    seconds: int
    tps: float
    processed: int
    failed: int
    latencies_us: list[int]


def parse_log_lines(lines: Iterable[str], into: PgbenchLog | None = None) -> PgbenchLog:
    """Parse pgbench per-transaction log lines; blank lines are ignored, others must be well
    formed (PgbenchError otherwise)."""
    log = into if into is not None else PgbenchLog()
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 6:
            raise PgbenchError(f"pgbench log line {number} has {len(fields)} fields: {line!r}")
        elapsed = fields[2]
        if elapsed.isdigit():
            log.latencies_us.append(int(elapsed))
        elif elapsed == "skipped":
            log.skipped += 1
        elif elapsed == "failed" or elapsed in ("serialization", "deadlock", "other"):
            log.failed += 1
        else:
            raise PgbenchError(f"pgbench log line {number}: unexpected time {elapsed!r}")
    return log


def parse_summary(stdout: str) -> PgbenchSummary:
    """The throughput and counts from pgbench's summary on stdout."""
    tps = _TPS.search(stdout)
    processed = _PROCESSED.search(stdout)
    if tps is None or processed is None:
        raise PgbenchError(f"no tps / processed count in pgbench's output:\n{stdout}")
    failed = _FAILED.search(stdout)
    value = float(tps.group(1))
    if not math.isfinite(value):
        raise PgbenchError(f"pgbench reported tps = {tps.group(1)}")
    return PgbenchSummary(
        tps=value,
        processed=int(processed.group(1)),
        failed=int(failed.group(1)) if failed else 0,
    )


async def run_pgbench(
    *,
    pgbench: Path,
    script: Path,
    host: str,
    port: int,
    user: str,
    password: str | None,
    database: str,
    clients: int,
    seconds: int,
    log_prefix: Path,
) -> PgbenchResult:
    """Run ``pgbench -n -f script -c N -j N -T seconds -M prepared -l`` and parse its results.

    The password goes to pgbench in its environment (``PGPASSWORD``), never on its command line,
    which every user of the machine can read (``ps``). The log files
    (``<log_prefix>.<pid>[.<thread>]``) are read and deleted.
    """
    argv = [
        str(pgbench), "-n", "-f", str(script),
        "-c", str(clients), "-j", str(clients), "-T", str(seconds), "-M", "prepared",
        "-l", f"--log-prefix={log_prefix}",
        "-h", host, "-p", str(port), "-U", user, database,
    ]  # fmt: skip
    env = dict(os.environ)
    if password is not None:
        assert not any(password in arg for arg in argv)  # the password: environment only
        env["PGPASSWORD"] = password
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=log_prefix.parent,
        env=env,
    )
    out, err = await process.communicate()
    stdout = out.decode(errors="replace")
    if process.returncode != 0:
        raise PgbenchError(
            f"pgbench exited with {process.returncode}: {' '.join(argv)}\n{stdout}"
            f"{err.decode(errors='replace')[-4000:]}"
        )
    summary = parse_summary(stdout)
    log = PgbenchLog()
    files = sorted(log_prefix.parent.glob(f"{log_prefix.name}.*"))
    for path in files:
        with path.open(encoding="ascii") as handle:
            parse_log_lines(handle, into=log)
        path.unlink()
    if not files:
        raise PgbenchError(f"pgbench wrote no log file {log_prefix}.*")
    if summary.failed or log.failed:
        raise PgbenchError(f"pgbench: {max(summary.failed, log.failed)} transactions failed")
    return PgbenchResult(
        clients=clients,
        seconds=seconds,
        tps=summary.tps,
        processed=summary.processed,
        failed=summary.failed,
        latencies_us=log.latencies_us,
    )
