"""The ``duraflows-pg`` command line: migrations, the schema generator, inspection, workers.

Exit codes: 0 success, 1 an operational failure (the database cannot be reached, the tables are
missing, an unknown instance), 2 a usage error (no database URL, a malformed argument). Errors go
to stderr as one ``duraflows-pg: ...`` line, never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect as pyinspect
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from . import migrations
from ._codecs import create_pool
from ._contract import WorkflowPersistenceProvider
from ._model import HistoryRecord, WorkflowInstance
from ._providers import pg_workflow_providers
from ._runtime import WorkflowRuntime
from ._validate import coerce_uuid
from .errors import InvalidArgumentError, WorkflowError, WorkflowInstanceNotFoundError

__all__ = ["main"]

PROG = "duraflows-pg"
NO_URL = "give --database-url or set DATABASE_URL"
MISSING_TABLES = "the duraflows tables are missing: run `duraflows-pg migrate up`"


class CliError(Exception):
    """A failure reported as one stderr line and an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# --- the parser ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    # --database-url is accepted before or after the command; the subcommand's copy defaults
    # to SUPPRESS so that it does not overwrite a value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url",
        default=argparse.SUPPRESS,
        help="PostgreSQL URL (default: $DATABASE_URL)",
    )
    parser = argparse.ArgumentParser(
        prog=PROG, description="duraflows-pg-async: PostgreSQL workflow persistence"
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="PostgreSQL URL (default: $DATABASE_URL; the demo starts an embedded server if unset)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser(
        "demo", parents=[common], help="run the demo end to end and print what it stored"
    )

    sql = commands.add_parser(
        "sql", parents=[common], help="print the fresh-install schema (generator output)"
    )
    sql.add_argument("--uuid-strategy", default="gen_random_uuid", help="gen_random_uuid|uuidv7")
    sql.add_argument("--schema", default=None, help="schema to create the tables in")
    sql.add_argument("--down", action="store_true", help="print the down (drop) script instead")

    migrate = commands.add_parser(
        "migrate", parents=[common], help="apply, roll back or list the dbmate migrations"
    )
    migrate.add_argument("action", choices=["up", "down", "status"])
    migrate.add_argument("--json", action="store_true", help="status as JSON")

    insp = commands.add_parser(
        "inspect", parents=[common], help="show one instance and its history"
    )
    insp.add_argument("uuid", help="the instance's uuid")
    insp.add_argument("--limit", type=int, default=50, help="history rows to show (default 50)")
    insp.add_argument("--schema", default=None, help="schema of the tables")
    insp.add_argument("--json", action="store_true", help="print JSON")

    parked = commands.add_parser(
        "parked", parents=[common], help="list instances whose timeout retries are exhausted"
    )
    parked.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    parked.add_argument("--workflow", default=None, help="only this workflow name")
    parked.add_argument("--schema", default=None, help="schema of the tables")
    parked.add_argument("--json", action="store_true", help="print JSON")

    rearm = commands.add_parser(
        "rearm", parents=[common], help="clear an instance's timeout retry or parked state"
    )
    rearm.add_argument("uuid", help="the instance's uuid")
    rearm.add_argument("--schema", default=None, help="schema of the tables")
    rearm.add_argument("--json", action="store_true", help="print JSON")

    worker = commands.add_parser(
        "worker", parents=[common], help="run timeout workers until SIGINT/SIGTERM"
    )
    worker.add_argument(
        "app",
        metavar="APP",
        help="module:attr of a runtime factory (called with the persistence provider, "
        "sync or async) or of a WorkflowRuntime",
    )
    worker.add_argument("--workers", type=int, default=1, help="concurrent workers (default 1)")
    worker.add_argument("--batch-size", type=int, default=100, help="per sweep (default 100)")
    worker.add_argument(
        "--poll-interval", type=float, default=1.0, help="seconds between sweeps (default 1)"
    )
    worker.add_argument("--schema", default=None, help="schema of the tables")
    worker.add_argument(
        "--log-level", default="INFO", help="logging level of the worker (default INFO)"
    )
    return parser


# --- helpers ---------------------------------------------------------------------------------


def _database_url(args: argparse.Namespace) -> str:
    url: str | None = args.database_url or os.environ.get("DATABASE_URL")
    if not url:
        raise CliError(NO_URL, 2)
    return url


def _root_message(exc: BaseException) -> str:
    """The innermost cause's text: the driver's own words rather than our wrapper's."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc) or type(exc).__name__


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _classify(exc: BaseException) -> CliError:
    """The exit code and message for an exception raised while a command ran."""
    chain = _chain(exc)
    if any(isinstance(e, asyncpg.UndefinedTableError) for e in chain):
        return CliError(MISSING_TABLES)
    if isinstance(exc, InvalidArgumentError):
        return CliError(str(exc), 2)
    if isinstance(exc, WorkflowInstanceNotFoundError):
        return CliError(str(exc))
    if any(
        isinstance(e, OSError | asyncpg.PostgresConnectionError | asyncpg.ClientConfigurationError)
        for e in chain
    ):
        return CliError(f"cannot reach the database: {_root_message(exc)}")
    if isinstance(exc, WorkflowError | asyncpg.PostgresError | asyncpg.InterfaceError):
        return CliError(str(exc))
    return CliError(f"{type(exc).__name__}: {exc}")


async def _connect(url: str) -> asyncpg.Connection:
    try:
        conn: asyncpg.Connection = await asyncpg.connect(url, timeout=15)
    except Exception as exc:
        raise CliError(f"cannot reach the database: {_root_message(exc)}") from exc
    return conn


@asynccontextmanager
async def _pool(url: str, max_size: int = 4) -> AsyncIterator[asyncpg.Pool]:
    try:
        pool = await create_pool(url, min_size=1, max_size=max_size, timeout=15)
    except Exception as exc:
        raise CliError(f"cannot reach the database: {_root_message(exc)}") from exc
    try:
        yield pool
    finally:
        await pool.close()


def _json_default(value: object) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _print_json(data: object) -> None:
    print(json.dumps(data, default=_json_default, indent=2, ensure_ascii=False))


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def _one_line(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def instance_json(instance: WorkflowInstance) -> dict[str, Any]:
    retry = instance.timeout_retry
    return {
        "uuid": instance.uuid,
        "workflow_name": instance.workflow_name,
        "current_state": instance.current_state,
        "version": instance.version,
        "definition_version": instance.definition_version,
        "context": instance.context,
        "metadata": instance.metadata,
        "expires_at": instance.expires_at,
        "last_transition_at": instance.last_transition_at,
        "created_at": instance.created_at,
        "updated_at": instance.updated_at,
        "timeout_retry": None
        if retry is None
        else {
            "attempts": retry.attempts,
            "last_error": retry.last_error,
            "retry_at": retry.retry_at,
            "parked_at": retry.parked_at,
        },
    }


def _history_json(record: HistoryRecord) -> dict[str, Any]:
    return {
        "uuid": record.uuid,
        "created_at": record.created_at,
        "event_name": record.event_name,
        "from_state": record.from_state,
        "to_state": record.to_state,
        "outcome": record.outcome,
        "error_message": record.error_message,
        "rejected_by": record.rejected_by,
        "command_results": [r.to_json() for r in record.command_results],
        "trigger_metadata": record.trigger_metadata,
        "definition_version": record.definition_version,
    }


def _retry_text(instance: WorkflowInstance) -> str:
    retry = instance.timeout_retry
    if retry is None:
        return "none"
    if retry.parked_at is not None:
        return f"parked at {_when(retry.parked_at)} after {retry.attempts} attempts"
    return f"attempt {retry.attempts}, next at {_when(retry.retry_at)}"


def _instance_text(instance: WorkflowInstance) -> str:
    retry = instance.timeout_retry
    fields = [
        ("uuid", str(instance.uuid)),
        ("workflow", instance.workflow_name),
        ("state", instance.current_state),
        ("version", str(instance.version)),
        ("definition version", str(instance.definition_version or "-")),
        ("expires at", _when(instance.expires_at)),
        ("timeout retry", _retry_text(instance)),
        ("last error", _one_line(retry.last_error if retry else None, 200) or "-"),
        ("last transition", _when(instance.last_transition_at)),
        ("created at", _when(instance.created_at)),
        ("updated at", _when(instance.updated_at)),
        ("context", json.dumps(instance.context, default=_json_default, ensure_ascii=False)),
        ("metadata", json.dumps(instance.metadata, default=_json_default, ensure_ascii=False)),
    ]
    width = max(len(name) for name, _ in fields)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in fields)


# --- the commands ----------------------------------------------------------------------------


async def _migrate(url: str, action: str, as_json: bool) -> int:
    conn = await _connect(url)
    try:
        if action == "up":
            done = await migrations.apply(conn)
            print("\n".join(f"applied {m.version}_{m.name}" for m in done) or "up to date")
        elif action == "down":
            done = await migrations.rollback(conn)
            print("\n".join(f"rolled back {m.version}_{m.name}" for m in done) or "nothing applied")
        else:
            entries = await migrations.status(conn)
            if as_json:
                _print_json(
                    [{"version": e.version, "name": e.name, "applied": e.applied} for e in entries]
                )
            else:
                for entry in entries:
                    print(f"[{'X' if entry.applied else ' '}] {entry.version}_{entry.name}")
    finally:
        await conn.close()
    return 0


async def _inspect(url: str, key: UUID, limit: int, schema: str | None, as_json: bool) -> int:
    async with _pool(url) as pool:
        providers = pg_workflow_providers(pool, schema=schema)
        instance = await providers.instance_store.find_by_uuid(key)
        if instance is None:
            raise CliError(f"no workflow instance {key}")
        history = await providers.history_store.find_by_instance_uuid(key, limit, 0)
    history.reverse()  # the store gives newest first; a table reads best oldest first
    if as_json:
        _print_json(
            {"instance": instance_json(instance), "history": [_history_json(r) for r in history]}
        )
        return 0
    print(_instance_text(instance))
    print()
    print(f"history ({len(history)} rows, oldest first):")
    rows = []
    for record in history:
        detail = record.error_message or (
            f"rejected by {record.rejected_by}" if record.rejected_by else ""
        )
        codes = ",".join(r.code or ("ok" if r.ok else "failed") for r in record.command_results)
        rows.append(
            [
                _when(record.created_at),
                record.event_name,
                f"{record.from_state or '∅'} -> {record.to_state}",
                record.outcome,
                codes,
                _one_line(detail, 50),
            ]
        )
    print(_table(["at", "event", "transition", "outcome", "commands", "detail"], rows))
    return 0


async def _parked(
    url: str, limit: int, workflow: str | None, schema: str | None, as_json: bool
) -> int:
    async with _pool(url) as pool:
        providers = pg_workflow_providers(pool, schema=schema)
        found = await providers.instance_store.find_parked_timeouts(
            limit=limit, workflow_name=workflow
        )
    if as_json:
        _print_json([instance_json(i) for i in found])
        return 0
    if not found:
        print("no parked timeouts")
        return 0
    rows = [
        [
            str(i.uuid),
            i.workflow_name,
            i.current_state,
            str(i.timeout_retry.attempts if i.timeout_retry else 0),
            _when(i.timeout_retry.parked_at if i.timeout_retry else None),
            _one_line(i.timeout_retry.last_error if i.timeout_retry else None, 50),
        ]
        for i in found
    ]
    print(_table(["uuid", "workflow", "state", "attempts", "parked at", "last error"], rows))
    return 0


async def _rearm(url: str, key: UUID, schema: str | None, as_json: bool) -> int:
    async with _pool(url) as pool:
        providers = pg_workflow_providers(pool, schema=schema)
        store = providers.instance_store
        changed = False
        async with providers.transaction_runner.transaction():
            instance = await store.lock_by_uuid(key)
            if instance is None:
                raise CliError(f"no workflow instance {key}")
            previous = _retry_text(instance)
            if instance.timeout_retry is not None:
                instance.timeout_retry = None
                instance.version += 1
                instance.updated_at = datetime.now(UTC)
                await store.update(instance)
                changed = True
    if as_json:
        _print_json({"rearmed": changed, "instance": instance_json(instance)})
    elif changed:
        print(
            f"rearmed {key} (was: {previous}); state={instance.current_state} "
            f"version={instance.version} expires_at={_when(instance.expires_at)}"
        )
    else:
        print(f"{key} has no timeout retry or parked state: nothing to rearm")
    return 0


def _load_app(spec: str) -> object:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"APP must be module:attr, got {spec!r}", 2)
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:
        raise CliError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}", 2) from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise CliError(f"{module_name!r} has no attribute {attr!r}", 2) from exc
    return target


async def _build_runtime(app: object, spec: str, providers: WorkflowPersistenceProvider) -> Any:
    if isinstance(app, WorkflowRuntime):
        return app
    if not callable(app):
        raise CliError(f"{spec} is neither a WorkflowRuntime nor a callable", 2)
    factory: Callable[[WorkflowPersistenceProvider], Any] = app
    runtime = factory(providers)
    if pyinspect.isawaitable(runtime):
        runtime = await runtime
    if not isinstance(runtime, WorkflowRuntime):
        raise CliError(f"{spec} returned {type(runtime).__name__}, not a WorkflowRuntime", 2)
    return runtime


async def _worker(url: str, args: argparse.Namespace) -> int:
    from ._worker import TimeoutWorker

    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}", 2)
    level = logging.getLevelName(str(args.log_level).upper())
    if not isinstance(level, int):
        raise CliError(f"--log-level must be a logging level name, got {args.log_level!r}", 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = _load_app(args.app)
    async with _pool(url, max_size=args.workers + 2) as pool:
        providers = pg_workflow_providers(pool, schema=args.schema)
        runtime: WorkflowRuntime = await _build_runtime(app, args.app, providers)
        await runtime.initialize()
        # Fail now, with a clear message, rather than in every sweep's log line.
        await runtime.persistence.instance_store.find_parked_timeouts(limit=1)
        workers = [
            TimeoutWorker(runtime, batch_size=args.batch_size, poll_interval=args.poll_interval)
            for _ in range(args.workers)
        ]
        tasks = [
            asyncio.create_task(w.run(), name=f"duraflows-worker-{n}")
            for n, w in enumerate(workers)
        ]
        loop = asyncio.get_running_loop()
        signals = 0

        def on_signal(signum: int) -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                print(
                    f"{PROG} worker: {signal.Signals(signum).name}: stopping after the instances "
                    "in hand (send again to abort them)",
                    file=sys.stderr,
                    flush=True,
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
        print(
            f"{PROG} worker: {args.workers} worker(s) running "
            f"(batch size {args.batch_size}, poll interval {args.poll_interval}s); "
            "stop with SIGINT or SIGTERM",
            flush=True,
        )
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
        processed = sum(w.stats.processed for w in workers)
        failed = sum(w.stats.failed for w in workers)
        parked = sum(w.stats.parked for w in workers)
        # A second signal cancels the instances in hand (rolled back, retried by a later sweep);
        # the exit status tells a supervisor that the stop was not clean.
        how = "aborted" if signals > 1 else "stopped"
        print(
            f"{PROG} worker: {how}; {processed} timeouts processed, {failed} failed, "
            f"{parked} parked",
            flush=True,
        )
    return 1 if signals > 1 else 0


# --- entry point -----------------------------------------------------------------------------


def _run(coro: Awaitable[int]) -> int:
    async def wrapped() -> int:
        return await coro

    return asyncio.run(wrapped())


def _fail(error: CliError) -> int:
    print(f"{PROG}: {error}", file=sys.stderr)
    return error.code


def _dispatch(args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "demo":
        from ._demo import run_demo

        return _run(run_demo(args.database_url or os.environ.get("DATABASE_URL")))
    if command == "sql":
        generated = migrations.generate_migration_sql(
            uuid_strategy=args.uuid_strategy, schema=args.schema
        )
        print(generated.down if args.down else generated.up)
        return 0
    key: UUID | None = None
    if command in ("inspect", "rearm"):
        key = coerce_uuid(args.uuid, "uuid")
    if command in ("inspect", "parked") and args.limit < 1:
        raise CliError(f"--limit must be at least 1, got {args.limit}", 2)
    if command == "worker":
        return _run(_worker(_database_url(args), args))
    url = _database_url(args)
    if command == "migrate":
        return _run(_migrate(url, args.action, args.json))
    if command == "inspect":
        assert key is not None
        return _run(_inspect(url, key, args.limit, args.schema, args.json))
    if command == "parked":
        return _run(_parked(url, args.limit, args.workflow, args.schema, args.json))
    if command == "rearm":
        assert key is not None
        return _run(_rearm(url, key, args.schema, args.json))
    raise CliError(f"unknown command {command!r}", 2)  # pragma: no cover - argparse checks


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except CliError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        return _fail(CliError("interrupted", 130))
    except Exception as exc:
        return _fail(_classify(exc))
