"""``worker APP``: timeout workers and execution workers on the APP's runtime until SIGINT or
SIGTERM.

Execution workers run when the runtime's provider has an execution store (for a factory APP: when
the database has the ``workflow_executions`` table), unless --no-executions or --workflow says
otherwise. The first signal lets the workers finish the work in hand (exit 0), a second cancels
it (exit 1). Progress goes to stdout, logs to stderr; with --json both are one JSON object a line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._pg.providers import pg_workflow_providers
from duraflows_pg_async._runtime.execution_worker import ExecutionWorker
from duraflows_pg_async._runtime.runtime import WorkflowRuntime
from duraflows_pg_async._runtime.worker import (
    MAX_CONCURRENCY,
    PollingWorker,
    TimeoutWorker,
    default_concurrency,
)

from .app import build_runtime, load_app, use_app_dir
from .database import (
    Target,
    has_execution_table,
    pool,
    schema_option,
    seconds,
    target_from,
)
from .exits import EXIT_USAGE, CliError
from .output import PROG, emit, json_text, notice, safe_text
from .signals import run

__all__ = ["worker_command"]


class _SafeLogFormatter(logging.Formatter):
    """Log lines with stored text (command errors) escaped; tracebacks keep their line breaks."""

    def format(self, record: logging.LogRecord) -> str:
        return safe_text(super().format(record), keep_newlines=True)


class _JsonLogFormatter(logging.Formatter):
    """One JSON object per log record, for ``worker --json``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = "".join(traceback.format_exception(*record.exc_info))
        return json_text(data, indent=None)


@dataclass(frozen=True)
class _WorkerOptions:
    """The worker's options that can also come from the environment, checked."""

    lock_timeout: float | None
    statement_timeout: float | None
    lease: float | None
    workflows: tuple[str, ...] | None


def _worker_options(args: argparse.Namespace) -> _WorkerOptions:
    """The worker's options, or a usage error."""
    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}", EXIT_USAGE)
    if args.concurrency is not None and not 1 <= args.concurrency <= MAX_CONCURRENCY:
        raise CliError(
            f"--concurrency must be between 1 and {MAX_CONCURRENCY}, got {args.concurrency}",
            EXIT_USAGE,
        )
    if not args.timeouts and args.executions is False:
        raise CliError("--no-timeouts and --no-executions: nothing to run", EXIT_USAGE)
    workflows = None
    if args.workflow is not None:
        empty = [name for name in args.workflow if not name]
        if empty:
            raise CliError("--workflow needs a workflow name", EXIT_USAGE)
        workflows = tuple(dict.fromkeys(args.workflow))
    return _WorkerOptions(
        lock_timeout=seconds(
            args.lock_timeout, "--lock-timeout", "DURAFLOWS_LOCK_TIMEOUT", zero_ok=True
        ),
        statement_timeout=seconds(
            args.statement_timeout,
            "--statement-timeout",
            "DURAFLOWS_STATEMENT_TIMEOUT",
            zero_ok=True,
        ),
        lease=seconds(args.lease, "--lease", "DURAFLOWS_WORKER_LEASE", zero_ok=False),
        workflows=workflows,
    )


def _setup_logging(level_name: str, as_json: bool) -> None:
    """Log to stderr at ``level_name``: escaped text, or one JSON object a record."""
    level = logging.getLevelName(level_name.upper())
    if not isinstance(level, int):
        raise CliError(f"--log-level must be a logging level name, got {level_name!r}", EXIT_USAGE)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonLogFormatter()
        if as_json
        else _SafeLogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler])


async def _runtime_of(
    app: object,
    args: argparse.Namespace,
    options: _WorkerOptions,
    providers: WorkflowPersistenceProvider,
) -> WorkflowRuntime:
    """The APP's runtime on ``providers``, its --workflow names checked against it."""
    if isinstance(app, WorkflowRuntime):
        for given, option in (
            (options.lock_timeout, "--lock-timeout"),
            (options.statement_timeout, "--statement-timeout"),
        ):
            if given is not None:
                notice(
                    f"worker: {option} has no effect: {args.app} is a ready WorkflowRuntime "
                    "that uses its own persistence",
                    args.json,
                    level="warning",
                )
    runtime = await build_runtime(app, args.app, providers)
    if options.workflows is not None:
        unknown = [name for name in options.workflows if name not in runtime.definitions]
        if unknown:
            known = ", ".join(sorted(runtime.definitions.names())) or "none"
            raise CliError(
                f"--workflow {', '.join(unknown)}: not registered in {args.app} "
                f"(registered: {known})",
                EXIT_USAGE,
            )
    return runtime


@dataclass(frozen=True)
class _Kinds:
    """Which workers run."""

    timeouts: bool
    executions: bool


async def _kinds(
    runtime: WorkflowRuntime, app: object, args: argparse.Namespace, schema: str | None
) -> _Kinds:
    """The kinds of worker to run, from --timeouts/--executions and the runtime's provider."""
    store = runtime.persistence.execution_store
    if store is not None:
        # Fail now, with a clear message, rather than in every poll's log line.
        await store.find_due(1, datetime.now(UTC))
    executions: bool | None = args.executions
    if executions is None:
        # --workflow narrows the worker to some workflows; the queue cannot be narrowed.
        executions = store is not None and args.workflow is None
    elif executions and store is None:
        if isinstance(app, WorkflowRuntime):
            raise CliError(
                f"--executions: {args.app} is a WorkflowRuntime whose provider has no execution "
                "store: build it with pg_workflow_providers(pool, durable_execution=True)",
                EXIT_USAGE,
            )
        where = "" if schema is None else f' in schema "{schema}"'
        migrate = "duraflows-pg migrate up" + ("" if schema is None else f" --schema {schema}")
        raise CliError(
            f"--executions: table workflow_executions is missing{where}: run `{migrate}`"
        )
    if not args.timeouts and not executions:
        why = "--workflow narrows the worker" if store is not None else "no execution store"
        raise CliError(
            f"--no-timeouts: nothing to run ({why}; --executions runs execution workers)",
            EXIT_USAGE,
        )
    kinds = _Kinds(timeouts=bool(args.timeouts), executions=executions)
    _warn_ineffective(args, kinds)
    return kinds


def _sweeps(args: argparse.Namespace) -> int:
    """How many sweeps each timeout worker runs at once (TimeoutWorker's default when unset)."""
    return int(args.concurrency or default_concurrency(args.batched))


def _warn_ineffective(args: argparse.Namespace, kinds: _Kinds) -> None:
    """Say so when an option of the timeout workers has nothing to act on."""
    if not kinds.timeouts:
        for given, option in (
            (args.workflow, "--workflow"),
            (args.lease, "--lease"),
            (args.batched or None, "--batched"),
            (args.concurrency, "--concurrency"),
        ):
            if given is not None:
                notice(
                    f"worker: {option} has no effect with --no-timeouts",
                    args.json,
                    level="warning",
                )
    elif kinds.executions and args.workflow is not None:
        notice(
            "worker: --workflow narrows the timeout sweeps only: the execution workers run the "
            "queued executions of every workflow",
            args.json,
            level="warning",
        )


def _kinds_text(count: int, kinds: _Kinds) -> str:
    if kinds.timeouts and kinds.executions:
        return f"{count} worker(s) running for timeouts and {count} for queued executions"
    return f"{count} worker(s) running for {'timeouts' if kinds.timeouts else 'queued executions'}"


def _announce_start(args: argparse.Namespace, options: _WorkerOptions, kinds: _Kinds) -> None:
    if args.json:
        started = {
            "event": "started",
            "workers": args.workers,
            "timeouts": kinds.timeouts,
            "executions": kinds.executions,
            "batch_size": args.batch_size,
            "poll_interval": args.poll_interval,
            "lease": options.lease,
            "workflows": options.workflows,
            "batched": args.batched,
            "concurrency": _sweeps(args),
        }
        emit(json_text(started, indent=None), flush=True)
    else:
        scope = f"; workflows {', '.join(options.workflows)}" if options.workflows else ""
        emit(
            f"{PROG} worker: {_kinds_text(args.workers, kinds)} "
            f"(batch size {args.batch_size}{', batched' if args.batched else ''}, "
            f"poll interval {args.poll_interval}s{scope}); "
            "stop with SIGINT or SIGTERM",
            flush=True,
        )


async def _run_until_stopped(
    workers: list[PollingWorker[Any]],
    args: argparse.Namespace,
    options: _WorkerOptions,
    kinds: _Kinds,
) -> int:
    """Run the workers, once started say so, and wait until they stop; returns how many stop
    signals arrived.

    The first SIGINT/SIGTERM lets each worker finish the work in hand, a second cancels it
    (a timeout rolls back and a later sweep retries it; a queued execution's command in hand is
    run again once its lease ends).
    """
    tasks = [
        asyncio.create_task(w.run(), name=f"duraflows-worker-{n}") for n, w in enumerate(workers)
    ]
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            name = signal.Signals(signum).name
            notice(
                f"worker: {name}: stopping after the instances in hand (send again to abort them)",
                args.json,
                event="stopping",
                signal=name,
            )
            for w in workers:
                w.stop()
        else:
            for t in tasks:
                t.cancel()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, int(sig))
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Windows
            pass
    try:
        _announce_start(args, options, kinds)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for t in tasks:
            t.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
    return signals


def _announce_end(
    timeout_workers: list[TimeoutWorker],
    execution_workers: list[ExecutionWorker],
    signals: int,
    as_json: bool,
) -> int:
    """Print the totals; returns the exit code."""
    processed = sum(w.stats.processed for w in timeout_workers)
    failed = sum(w.stats.failed for w in timeout_workers)
    parked = sum(w.stats.parked for w in timeout_workers)
    queued = {
        name: sum(getattr(w.stats, name) for w in execution_workers)
        for name in ("processed", "completed", "retrying", "parked", "failed")
    }
    # A second signal cancelled the work in hand: the exit status tells a supervisor that the
    # stop was not clean.
    how = "aborted" if signals > 1 else "stopped"
    code = 1 if signals > 1 else 0
    if as_json:
        stats: dict[str, Any] = {"processed": processed, "failed": failed, "parked": parked}
        if execution_workers:
            stats["executions"] = queued
        emit(json_text({"event": how, **stats, "exit_code": code}, indent=None), flush=True)
    else:
        totals = []
        if timeout_workers:
            totals.append(f"{processed} timeouts processed, {failed} failed, {parked} parked")
        if execution_workers:
            totals.append(
                f"{queued['processed']} execution steps, {queued['completed']} executions "
                f"completed, {queued['retrying']} retrying, {queued['parked']} parked, "
                f"{queued['failed']} failed"
            )
        emit(f"{PROG} worker: {how}; {'; '.join(totals)}", flush=True)
    return code


async def _worker(db: Target, args: argparse.Namespace) -> int:
    options = _worker_options(args)
    schema = schema_option(args.schema)
    _setup_logging(str(args.log_level), args.json)
    use_app_dir(args.app_dir)
    app = load_app(args.app)
    # A connection for each sweep a timeout worker runs at once and for each execution worker,
    # and two for commands and observers that use their own.
    async with pool(db, max_size=(_sweeps(args) + 1) * args.workers + 2) as opened:
        # A factory's provider has an execution store when the database has the table: then
        # the timeout sweeps leave the instances of queued executions alone, as the
        # application's own runtimes (built with durable_execution=True) do.
        has_table = not isinstance(app, WorkflowRuntime) and await has_execution_table(
            opened, schema
        )
        providers = pg_workflow_providers(
            opened,
            schema=schema,
            lock_timeout=options.lock_timeout,
            statement_timeout=options.statement_timeout,
            durable_execution=has_table,
            wakeups=bool(args.wakeups),
            listen_dsn=args.listen_dsn,
        )
        runtime = await _runtime_of(app, args, options, providers)
        await runtime.initialize()
        # Fail now, with a clear message, rather than in every sweep's log line.
        await runtime.persistence.instance_store.find_parked_timeouts(limit=1)
        kinds = await _kinds(runtime, app, args, schema)
        timeout_workers = [
            TimeoutWorker(
                runtime,
                batch_size=args.batch_size,
                poll_interval=args.poll_interval,
                workflow_names=options.workflows,
                lease=options.lease,
                batched=args.batched,
                concurrency=args.concurrency,
            )
            for _ in range(args.workers if kinds.timeouts else 0)
        ]
        execution_workers = [
            ExecutionWorker(runtime, batch_size=args.batch_size, poll_interval=args.poll_interval)
            for _ in range(args.workers if kinds.executions else 0)
        ]
        workers: list[PollingWorker[Any]] = [*timeout_workers, *execution_workers]
        signals = await _run_until_stopped(workers, args, options, kinds)
        return _announce_end(timeout_workers, execution_workers, signals, args.json)


def worker_command(args: argparse.Namespace) -> int:
    """``worker APP``; its usage errors are reported before a connection is attempted."""
    _worker_options(args)
    return int(run(_worker(target_from(args), args)))
