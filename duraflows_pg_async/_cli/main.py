"""The ``duraflows-pg`` command line: migrations, the schema generator, inspection, workers.

Exit codes: 0 success, 1 an operational failure (the database cannot be reached, the tables are
missing, an unknown instance, the output cannot be written), 2 a usage error (no database URL, a
malformed argument), 130 interrupted (SIGINT), 143 stopped (SIGTERM), 141 standard output closed
early (a broken pipe, reported like a tool killed by SIGPIPE, and quietly). Errors go to stderr
as one ``duraflows-pg: ...`` line, or with ``--json`` as one JSON object ``{"error": ...,
"exit_code": ...}``, never as a traceback.

Text read from the database (states, event names, errors, context) can hold terminal control
sequences; every human-readable line shows them as visible escapes (``\\x1b``), and JSON output
escapes them as ``\\uXXXX``.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import inspect as pyinspect
import json
import logging
import math
import os
import re
import signal
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import asyncpg

from duraflows_pg_async import __version__, migrations
from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.model import HistoryRecord, WorkflowInstance
from duraflows_pg_async._core.validate import coerce_uuid, require_identifier
from duraflows_pg_async._pg.codecs import create_pool
from duraflows_pg_async._pg.providers import pg_workflow_providers
from duraflows_pg_async._runtime.runtime import WorkflowRuntime
from duraflows_pg_async.errors import (
    ConnectionLostError,
    InvalidArgumentError,
    WorkflowError,
    WorkflowInstanceNotFoundError,
)

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

__all__ = ["main"]

PROG = "duraflows-pg"
NO_URL = "give --database-url or set DATABASE_URL"
DEFAULT_CONNECT_TIMEOUT = 10.0
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what the shell reports for a writer whose reader left


def missing_tables(schema: str | None) -> str:
    """The advice for a database (or schema) without the tables; it names the schema asked for."""
    if schema is None:
        return "the duraflows tables are missing: run `duraflows-pg migrate up`"
    return (
        f'the duraflows tables are missing in schema "{schema}": '
        f"run `duraflows-pg migrate up --schema {schema}`"
    )


class CliError(Exception):
    """A failure reported as one stderr line and an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _UsageError(CliError):
    """argparse refused the command line; ``parser`` is the (sub)parser that did."""

    def __init__(self, message: str, parser: argparse.ArgumentParser) -> None:
        super().__init__(message, 2)
        self.parser = parser


class _OutputError(Exception):
    """Standard output could not be written. Not an OSError: never taken for a database error."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


# --- terminal safety -------------------------------------------------------------------------

# C0 controls, DEL, C1 controls, and the bidi marks, embeddings, overrides and isolates (and the
# line/paragraph separators) that can reorder or hide text on a terminal.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# What json.dumps(ensure_ascii=False) leaves raw: it escapes C0 itself.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control or bidi character shown as a visible escape (``\\x1b``)."""
    if keep_newlines:
        return "\n".join(_UNSAFE.sub(_escape, line) for line in text.split("\n"))
    return _UNSAFE.sub(_escape, text)


def _json_default(value: object) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def json_text(data: object, *, indent: int | None = 2) -> str:
    """JSON for a terminal: readable non-ASCII text, but no raw control or bidi character."""
    text = json.dumps(data, default=_json_default, indent=indent, ensure_ascii=False)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# --- output ----------------------------------------------------------------------------------


def emit(text: str = "", *, flush: bool = False) -> None:
    """Write one line to stdout; a failing stdout raises _OutputError."""
    try:
        sys.stdout.write(text + "\n")
        if flush:
            sys.stdout.flush()
    except OSError as exc:
        raise _OutputError(exc) from exc


def _emit_json(data: object) -> None:
    emit(json_text(data))


def _stderr(text: str) -> None:
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except OSError:  # nowhere left to report to
        pass


def _notice(message: str, as_json: bool, **fields: object) -> None:
    """A line on stderr for a human or, with --json, a JSON object with the same message."""
    if as_json:
        _stderr(json_text({"message": message, **fields}, indent=None))
    else:
        _stderr(safe_text(f"{PROG} {message}"))


def _fail(error: CliError, as_json: bool) -> int:
    if as_json:
        _stderr(json_text({"error": str(error), "exit_code": error.code}, indent=None))
    else:
        _stderr(safe_text(f"{PROG}: {error}"))
    return error.code


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null, so that the interpreter's last flush at exit cannot fail too."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (an embedding host)
        pass


def _output_failed(error: OSError, as_json: bool) -> int:
    _silence_stdout()
    if isinstance(error, BrokenPipeError) or error.errno == errno.EPIPE:
        return EXIT_BROKEN_PIPE  # the reader has all it wanted: nothing to report
    return _fail(CliError(f"cannot write to standard output: {error}"), as_json)


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


# --- the parser ------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors come back to main(), which reports them as text or JSON."""

    json_mode = False

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message, self)

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        # argparse drops write errors; --help into a closed pipe must end like any other output.
        if not message:
            return
        if file is None or file is sys.stdout:
            emit(message.removesuffix("\n"))
        else:
            _stderr(message.removesuffix("\n"))


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        if isinstance(parser, _Parser) and parser.json_mode:
            emit(json_text({"version": __version__}))
        else:
            emit(f"{PROG} {__version__}")
        parser.exit()


# Options every command takes, before or after the command name. The copies on the subcommands
# default to SUPPRESS so that they do not overwrite a value given before the command.
def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    default: Any = argparse.SUPPRESS
    parser.add_argument(
        "--database-url",
        default=None if top else default,
        help="PostgreSQL URL (default: $DATABASE_URL; the demo starts an embedded server if unset)",
    )
    parser.add_argument(
        "--connect-timeout",
        default=None if top else default,
        metavar="SECONDS",
        help="give up connecting after this long (default: $DURAFLOWS_CONNECT_TIMEOUT, else "
        f"{DEFAULT_CONNECT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top else default,
        help="print JSON: results on stdout, errors as one object on stderr",
    )


def _parser(json_mode: bool = False) -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    _global_options(common, top=False)
    parser = _Parser(prog=PROG, description="duraflows-pg-async: PostgreSQL workflow persistence")
    parser.json_mode = json_mode
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    _global_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser(
        "demo",
        parents=[common],
        help="run the demo end to end and print what it stored (on $DATABASE_URL it uses a "
        "temporary schema of its own, dropped afterwards)",
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
    migrate.add_argument(
        "--schema",
        default=None,
        help="schema of the tables and of schema_migrations (created by `up` if missing)",
    )
    migrate.add_argument(
        "--yes", action="store_true", help="`down`: roll back without asking for confirmation"
    )

    insp = commands.add_parser(
        "inspect", parents=[common], help="show one instance and its history"
    )
    insp.add_argument("uuid", help="the instance's uuid")
    insp.add_argument("--limit", type=int, default=50, help="history rows to show (default 50)")
    insp.add_argument("--schema", default=None, help="schema of the tables")

    parked = commands.add_parser(
        "parked", parents=[common], help="list instances whose timeout retries are exhausted"
    )
    parked.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    parked.add_argument("--workflow", default=None, help="only this workflow name")
    parked.add_argument("--schema", default=None, help="schema of the tables")

    rearm = commands.add_parser(
        "rearm",
        parents=[common],
        help="clear an instance's timeout retry, parked state or sweep claim",
    )
    rearm.add_argument("uuid", help="the instance's uuid")
    rearm.add_argument("--schema", default=None, help="schema of the tables")

    worker = commands.add_parser(
        "worker", parents=[common], help="run timeout workers until SIGINT/SIGTERM"
    )
    worker.add_argument(
        "app",
        metavar="APP",
        help="module:attr of a runtime factory (called with the persistence provider, "
        "sync or async) or of a WorkflowRuntime",
    )
    worker.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="look for APP's module in DIR first (default: the current directory)",
    )
    worker.add_argument("--workers", type=int, default=1, help="concurrent workers (default 1)")
    worker.add_argument("--batch-size", type=int, default=100, help="per sweep (default 100)")
    worker.add_argument(
        "--poll-interval", type=float, default=1.0, help="seconds between sweeps (default 1)"
    )
    worker.add_argument(
        "--lease",
        default=None,
        metavar="SECONDS",
        help="how long a sweep claims its batch (default: $DURAFLOWS_WORKER_LEASE, else the "
        "runtime's sweep lease)",
    )
    worker.add_argument(
        "--workflow",
        action="append",
        default=None,
        metavar="NAME",
        help="sweep only this workflow's timeouts (repeatable; must be registered in the runtime)",
    )
    worker.add_argument(
        "--lock-timeout",
        default=None,
        metavar="SECONDS",
        help="lock_timeout of the worker's transactions (default: $DURAFLOWS_LOCK_TIMEOUT, else "
        "none); only for a factory APP: a ready WorkflowRuntime keeps its own persistence",
    )
    worker.add_argument(
        "--statement-timeout",
        default=None,
        metavar="SECONDS",
        help="statement_timeout of the worker's transactions (default: "
        "$DURAFLOWS_STATEMENT_TIMEOUT, else none); only for a factory APP",
    )
    worker.add_argument("--schema", default=None, help="schema of the tables")
    worker.add_argument(
        "--log-level", default="INFO", help="logging level of the worker (default INFO)"
    )
    return parser


def _wants_json(argv: Sequence[str]) -> bool:
    """Whether --json was asked for, before the command line is parsed (for its own errors)."""
    end = argv.index("--") if "--" in argv else len(argv)
    return "--json" in argv[:end]


# --- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """Where to connect, and how long to wait for an answer."""

    url: str
    connect_timeout: float


def _database_url(args: argparse.Namespace) -> str:
    url: str | None = args.database_url or os.environ.get("DATABASE_URL")
    if not url:
        raise CliError(NO_URL, 2)
    return url


def _seconds(
    value: str | None, option: str, env: str, *, zero_ok: bool, default: float | None = None
) -> float | None:
    """An option in seconds, else its environment variable, else ``default``."""
    source = option
    if value is None:
        value = os.environ.get(env) or None
        source = env
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero_ok):
        kind = "non-negative" if zero_ok else "positive"
        raise CliError(f"{source} must be a {kind} number of seconds, got {value!r}", 2)
    return seconds


def _connect_timeout(args: argparse.Namespace) -> float:
    timeout = _seconds(
        args.connect_timeout,
        "--connect-timeout",
        "DURAFLOWS_CONNECT_TIMEOUT",
        zero_ok=False,
        default=DEFAULT_CONNECT_TIMEOUT,
    )
    assert timeout is not None
    return timeout


def _target(args: argparse.Namespace) -> _Target:
    return _Target(_database_url(args), _connect_timeout(args))


def _schema(value: str | None) -> str | None:
    return None if value is None else require_identifier(value, "--schema")


def where(url: str) -> str:
    """host:port of a database URL, for messages: never its user name or password."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "the given URL"
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts:
        query = parse_qs(parts.query)
        host, port = query.get("host", [""])[0], query.get("port", [""])[0]
        hosts = f"{host}:{port}" if host and port else host
    if not hosts:
        return "the default host ($PGHOST or the local socket)"
    last = hosts.rsplit("]", 1)[-1]
    if "," not in hosts and ":" not in last:
        hosts += ":5432"
    return hosts


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


def connect_error(exc: BaseException, url: str, timeout: float) -> CliError:
    """What went wrong while opening a connection, said plainly and without the password."""
    chain = _chain(exc)
    at = where(url)
    if any(isinstance(e, asyncpg.ClientConfigurationError) for e in chain):
        return CliError(f"invalid database URL: {_root_message(exc)}", 2)
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return CliError(f"cannot connect to the database at {at}: connection refused")
    if any(isinstance(e, TimeoutError | asyncio.CancelledError) for e in chain):
        return CliError(f"cannot connect to the database at {at} (no answer within {timeout:g} s)")
    return CliError(f"cannot connect to the database at {at}: {_root_message(exc)}")


def _classify(exc: BaseException, schema: str | None, url: str | None) -> CliError:
    """The exit code and message for an exception raised while a command ran."""
    chain = _chain(exc)
    if any(isinstance(e, asyncpg.UndefinedTableError) for e in chain):
        return CliError(missing_tables(schema))
    if isinstance(exc, InvalidArgumentError):
        return CliError(str(exc), 2)
    if isinstance(exc, WorkflowInstanceNotFoundError):
        return CliError(str(exc))
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return CliError(f"cannot connect to the database at {where(url or '')}: connection refused")
    if any(isinstance(e, TimeoutError) for e in chain):
        return CliError(f"the database did not answer in time: {_root_message(exc)}")
    # Only errors of a connection: a FileNotFoundError from an APP is not a database problem.
    lost = ConnectionLostError | asyncpg.PostgresConnectionError | ConnectionError
    if any(isinstance(e, lost | asyncpg.ConnectionDoesNotExistError) for e in chain):
        return CliError(f"lost the connection to the database: {_root_message(exc)}")
    if isinstance(exc, WorkflowError | asyncpg.PostgresError | asyncpg.InterfaceError):
        return CliError(str(exc))
    return CliError(f"{type(exc).__name__}: {exc}")


async def _connect(target: _Target) -> asyncpg.Connection:
    try:
        conn: asyncpg.Connection = await asyncpg.connect(target.url, timeout=target.connect_timeout)
    except Exception as exc:
        raise connect_error(exc, target.url, target.connect_timeout) from exc
    return conn


@asynccontextmanager
async def _pool(target: _Target, max_size: int = 4) -> AsyncIterator[asyncpg.Pool]:
    try:
        pool = await create_pool(
            target.url, min_size=1, max_size=max_size, timeout=target.connect_timeout
        )
    except Exception as exc:
        raise connect_error(exc, target.url, target.connect_timeout) from exc
    try:
        yield pool
    finally:
        await pool.close()


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = [[safe_text(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def _one_line(text: str | None, width: int = 60) -> str:
    """``text`` on one line, escaped, cut to ``width`` characters."""
    if not text:
        return ""
    flat = safe_text(" ".join(text.split()))
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
        "claimed_until": instance.claimed_until,
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


def _claim_text(instance: WorkflowInstance) -> str:
    claimed = instance.claimed_until
    if claimed is None:
        return "none"
    if claimed <= datetime.now(UTC):
        # A lapsed claim: the sweep that took the instance never finished it (a worker died or
        # stalled); any sweep takes it again.
        return f"claimed by a sweep until {_when(claimed)} (lapsed: due again)"
    return f"claimed by a sweep until {_when(claimed)}"


def _retry_text(instance: WorkflowInstance) -> str:
    retry = instance.timeout_retry
    if retry is None:
        return "none" if instance.claimed_until is None else _claim_text(instance)
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
        ("timeout retry", _retry_text(instance) if instance.timeout_retry else "none"),
        ("sweep claim", _claim_text(instance)),
        ("last error", _one_line(retry.last_error if retry else None, 200) or "-"),
        ("last transition", _when(instance.last_transition_at)),
        ("created at", _when(instance.created_at)),
        ("updated at", _when(instance.updated_at)),
        ("context", json_text(instance.context, indent=None)),
        ("metadata", json_text(instance.metadata, indent=None)),
    ]
    width = max(len(name) for name, _ in fields)
    return "\n".join(f"{name.ljust(width)}  {safe_text(value)}" for name, value in fields)


# --- the commands ----------------------------------------------------------------------------


def _migration_json(migration: migrations.Migration) -> dict[str, str]:
    return {"version": migration.version, "name": migration.name}


async def _use_schema(conn: asyncpg.Connection, schema: str | None, *, create: bool) -> bool:
    """Point ``conn``'s search_path at ``schema``, as dbmate's ``?search_path=`` does.

    The migrations name their tables unqualified and keep ``schema_migrations`` in the current
    schema, so both land in ``schema``. Returns False when the schema does not exist (and was not
    to be created): nothing can be applied there.
    """
    if schema is None:
        return True
    if create:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    elif not await conn.fetchval("SELECT to_regnamespace($1) IS NOT NULL", f'"{schema}"'):
        return False
    await conn.execute(f'SET search_path TO "{schema}"')
    return True


async def _migrate_up(target: _Target, schema: str | None, as_json: bool) -> int:
    conn = await _connect(target)
    try:
        await _use_schema(conn, schema, create=True)
        done = await migrations.apply(conn)
    finally:
        await conn.close()
    if as_json:
        _emit_json({"schema": schema, "applied": [_migration_json(m) for m in done]})
    else:
        emit("\n".join(f"applied {m.version}_{m.name}" for m in done) or "up to date")
    return 0


async def _migrate_status(target: _Target, schema: str | None, as_json: bool) -> int:
    conn = await _connect(target)
    try:
        if await _use_schema(conn, schema, create=False):
            entries = await migrations.status(conn)
        else:
            entries = [
                migrations.MigrationStatus(m.version, m.name, False)
                for m in migrations.list_migrations()
            ]
    finally:
        await conn.close()
    if as_json:
        _emit_json([{"version": e.version, "name": e.name, "applied": e.applied} for e in entries])
    else:
        for entry in entries:
            emit(f"[{'X' if entry.applied else ' '}] {entry.version}_{entry.name}")
    return 0


async def _newest_applied(target: _Target, schema: str | None) -> str | None:
    """``NNN_name`` of the migration ``migrate down`` would roll back, or None."""
    conn = await _connect(target)
    try:
        if not await _use_schema(conn, schema, create=False):
            return None
        entries = await migrations.status(conn)
    finally:
        await conn.close()
    applied = [f"{e.version}_{e.name}" for e in entries if e.applied]
    return applied[-1] if applied else None


async def _migrate_down(
    target: _Target, schema: str | None, confirmed: str | None, as_json: bool
) -> int:
    done: list[migrations.Migration] = []
    if confirmed is not None:
        conn = await _connect(target)
        try:
            await _use_schema(conn, schema, create=False)
            entries = [f"{e.version}_{e.name}" for e in await migrations.status(conn) if e.applied]
            if not entries or entries[-1] != confirmed:
                raise CliError(
                    f"the applied migrations changed while waiting for confirmation "
                    f"(was {confirmed}, now {entries[-1] if entries else 'none'}): nothing rolled "
                    "back; run the command again"
                )
            done = await migrations.rollback(conn)
        finally:
            await conn.close()
    if as_json:
        _emit_json({"schema": schema, "rolled_back": [_migration_json(m) for m in done]})
    else:
        emit("\n".join(f"rolled back {m.version}_{m.name}" for m in done) or "nothing applied")
    return 0


def _confirm(question: str) -> bool:
    """Ask on the terminal; anything but y/yes (or end of input) is a no."""
    try:
        sys.stderr.write(f"{question} [y/N] ")
        sys.stderr.flush()
    except OSError:
        return False
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _migrate(args: argparse.Namespace) -> int:
    target = _target(args)
    schema = _schema(args.schema)
    if args.action == "up":
        return int(_run(_migrate_up(target, schema, args.json)))
    if args.action == "status":
        return int(_run(_migrate_status(target, schema, args.json)))
    newest: str | None = _run(_newest_applied(target, schema))
    if newest is not None and not args.yes:
        place = f"the database at {where(target.url)}"
        if schema:
            place = f'schema "{schema}" of {place}'
        if not sys.stdin.isatty():
            raise CliError(
                f"migrate down rolls back {newest} in {place}, dropping what it created, data "
                "included: pass --yes to confirm (standard input is not a terminal)",
                2,
            )
        if not _confirm(f"{PROG}: roll back {newest} in {place}? What it created is dropped."):
            raise CliError("not confirmed: nothing rolled back")
    return int(_run(_migrate_down(target, schema, newest, args.json)))


async def _inspect(
    target: _Target, key: UUID, limit: int, schema: str | None, as_json: bool
) -> int:
    async with _pool(target) as pool:
        providers = pg_workflow_providers(pool, schema=schema)
        instance = await providers.instance_store.find_by_uuid(key)
        if instance is None:
            raise CliError(f"no workflow instance {key}")
        history = await providers.history_store.find_by_instance_uuid(key, limit, 0)
    history.reverse()  # the store gives newest first; a table reads best oldest first
    if as_json:
        _emit_json(
            {"instance": instance_json(instance), "history": [_history_json(r) for r in history]}
        )
        return 0
    emit(_instance_text(instance))
    emit()
    emit(f"history ({len(history)} rows, oldest first):")
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
    emit(_table(["at", "event", "transition", "outcome", "commands", "detail"], rows))
    return 0


async def _parked(
    target: _Target, limit: int, workflow: str | None, schema: str | None, as_json: bool
) -> int:
    async with _pool(target) as pool:
        providers = pg_workflow_providers(pool, schema=schema)
        found = await providers.instance_store.find_parked_timeouts(
            limit=limit, workflow_name=workflow
        )
    if as_json:
        _emit_json([instance_json(i) for i in found])
        return 0
    if not found:
        emit("no parked timeouts")
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
    emit(_table(["uuid", "workflow", "state", "attempts", "parked at", "last error"], rows))
    return 0


async def _rearm(target: _Target, key: UUID, schema: str | None, as_json: bool) -> int:
    async with _pool(target) as pool:
        providers = pg_workflow_providers(pool, schema=schema)
        store = providers.instance_store
        changed = False
        async with providers.transaction_runner.transaction():
            instance = await store.lock_by_uuid(key)
            if instance is None:
                raise CliError(f"no workflow instance {key}")
            previous = _retry_text(instance)
            if instance.timeout_retry is not None or instance.claimed_until is not None:
                # update() writes the retry columns from the model, which ends a claim too.
                instance.timeout_retry = None
                instance.claimed_until = None
                instance.version += 1
                instance.updated_at = datetime.now(UTC)
                await store.update(instance)
                changed = True
    if as_json:
        _emit_json({"rearmed": changed, "instance": instance_json(instance)})
    elif changed:
        emit(
            safe_text(
                f"rearmed {key} (was: {previous}); state={instance.current_state} "
                f"version={instance.version} expires_at={_when(instance.expires_at)}"
            )
        )
    else:
        emit(f"{key} has no timeout retry, parked state or sweep claim: nothing to rearm")
    return 0


def _use_app_dir(app_dir: str) -> None:
    """Put ``app_dir`` first on sys.path, as uvicorn does: an installed console script starts
    with its own bin directory there, not the directory it was run from."""
    path = os.path.abspath(app_dir)
    if not os.path.isdir(path):
        raise CliError(f"--app-dir {app_dir!r} is not a directory", 2)
    if path not in (os.path.abspath(p or ".") for p in sys.path):
        sys.path.insert(0, path)


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


@dataclass(frozen=True)
class _WorkerOptions:
    lock_timeout: float | None
    statement_timeout: float | None
    lease: float | None
    workflows: tuple[str, ...] | None


def _worker_options(args: argparse.Namespace) -> _WorkerOptions:
    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}", 2)
    workflows = None
    if args.workflow is not None:
        empty = [name for name in args.workflow if not name]
        if empty:
            raise CliError("--workflow needs a workflow name", 2)
        workflows = tuple(dict.fromkeys(args.workflow))
    return _WorkerOptions(
        lock_timeout=_seconds(
            args.lock_timeout, "--lock-timeout", "DURAFLOWS_LOCK_TIMEOUT", zero_ok=True
        ),
        statement_timeout=_seconds(
            args.statement_timeout,
            "--statement-timeout",
            "DURAFLOWS_STATEMENT_TIMEOUT",
            zero_ok=True,
        ),
        lease=_seconds(args.lease, "--lease", "DURAFLOWS_WORKER_LEASE", zero_ok=False),
        workflows=workflows,
    )


def _setup_logging(level_name: str, as_json: bool) -> None:
    level = logging.getLevelName(level_name.upper())
    if not isinstance(level, int):
        raise CliError(f"--log-level must be a logging level name, got {level_name!r}", 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonLogFormatter()
        if as_json
        else _SafeLogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler])


async def _worker(target: _Target, args: argparse.Namespace) -> int:
    from duraflows_pg_async._runtime.worker import TimeoutWorker

    options = _worker_options(args)
    schema = _schema(args.schema)
    as_json: bool = args.json
    _setup_logging(str(args.log_level), as_json)
    _use_app_dir(args.app_dir)
    app = _load_app(args.app)
    async with _pool(target, max_size=args.workers + 2) as pool:
        providers = pg_workflow_providers(
            pool,
            schema=schema,
            lock_timeout=options.lock_timeout,
            statement_timeout=options.statement_timeout,
        )
        if isinstance(app, WorkflowRuntime):
            for given, option in (
                (options.lock_timeout, "--lock-timeout"),
                (options.statement_timeout, "--statement-timeout"),
            ):
                if given is not None:
                    _notice(
                        f"worker: {option} has no effect: {args.app} is a ready WorkflowRuntime "
                        "that uses its own persistence",
                        as_json,
                        level="warning",
                    )
        runtime: WorkflowRuntime = await _build_runtime(app, args.app, providers)
        if options.workflows is not None:
            unknown = [name for name in options.workflows if name not in runtime.definitions]
            if unknown:
                known = ", ".join(sorted(runtime.definitions.names())) or "none"
                raise CliError(
                    f"--workflow {', '.join(unknown)}: not registered in {args.app} "
                    f"(registered: {known})",
                    2,
                )
        await runtime.initialize()
        # Fail now, with a clear message, rather than in every sweep's log line.
        await runtime.persistence.instance_store.find_parked_timeouts(limit=1)
        workers = [
            TimeoutWorker(
                runtime,
                batch_size=args.batch_size,
                poll_interval=args.poll_interval,
                workflow_names=options.workflows,
                lease=options.lease,
            )
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
                name = signal.Signals(signum).name
                _notice(
                    f"worker: {name}: stopping after the instances in hand (send again to abort "
                    "them)",
                    as_json,
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
            if as_json:
                emit(
                    json_text(
                        {
                            "event": "started",
                            "workers": args.workers,
                            "batch_size": args.batch_size,
                            "poll_interval": args.poll_interval,
                            "lease": options.lease,
                            "workflows": options.workflows,
                        },
                        indent=None,
                    ),
                    flush=True,
                )
            else:
                scope = f"; workflows {', '.join(options.workflows)}" if options.workflows else ""
                emit(
                    f"{PROG} worker: {args.workers} worker(s) running "
                    f"(batch size {args.batch_size}, poll interval {args.poll_interval}s{scope}); "
                    "stop with SIGINT or SIGTERM",
                    flush=True,
                )
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for t in tasks:
                t.cancel()
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
        code = 1 if signals > 1 else 0
        if as_json:
            stats = {"processed": processed, "failed": failed, "parked": parked}
            emit(json_text({"event": how, **stats, "exit_code": code}, indent=None), flush=True)
        else:
            emit(
                f"{PROG} worker: {how}; {processed} timeouts processed, {failed} failed, "
                f"{parked} parked",
                flush=True,
            )
    return code


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConnectError, run_demo

    url = args.database_url or os.environ.get("DATABASE_URL") or None
    timeout = _connect_timeout(args)
    as_json: bool = args.json
    try:
        report = _run(
            run_demo(url, out=(lambda line: None) if as_json else emit, connect_timeout=timeout)
        )
    except DemoConnectError as exc:
        raise connect_error(exc, url or "", timeout) from exc
    if as_json:
        _emit_json(report)
    return 0


def _sql(args: argparse.Namespace) -> int:
    generated = migrations.generate_migration_sql(
        uuid_strategy=args.uuid_strategy, schema=args.schema
    )
    script = generated.down if args.down else generated.up
    if args.json:
        _emit_json(
            {
                "uuid_strategy": args.uuid_strategy,
                "schema": args.schema,
                "direction": "down" if args.down else "up",
                "sql": script,
            }
        )
    else:
        emit(script)
    return 0


# --- entry point -----------------------------------------------------------------------------


class _Interrupted(Exception):
    """SIGINT or SIGTERM arrived: the command was cancelled and its clean-up has run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _run(coro: Awaitable[Any]) -> Any:
    """Run ``coro``; SIGINT and SIGTERM cancel it, so that its ``finally`` blocks (the demo's
    schema, the pool) run, whatever signal disposition the process inherited: a process started
    in the background inherits SIGINT ignored, and a container stop sends SIGTERM. A command
    that installs handlers of its own (the worker) replaces these."""

    async def wrapped() -> Any:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        received: list[int] = []

        def on_signal(signum: int) -> None:
            received.append(signum)
            task.cancel()

        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal, int(sig))
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Windows
                pass
        try:
            return await coro
        except asyncio.CancelledError:
            if received:
                raise _Interrupted(received[0]) from None
            raise
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    return asyncio.run(wrapped())


def _dispatch(args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "demo":
        return _demo(args)
    if command == "sql":
        return _sql(args)
    if command == "migrate":
        return _migrate(args)
    key: UUID | None = None
    if command in ("inspect", "rearm"):
        key = coerce_uuid(args.uuid, "uuid")
    if command in ("inspect", "parked") and args.limit < 1:
        raise CliError(f"--limit must be at least 1, got {args.limit}", 2)
    if command == "worker":
        _worker_options(args)  # usage errors before a connection is attempted
        return int(_run(_worker(_target(args), args)))
    target = _target(args)
    schema = _schema(args.schema)
    if command == "inspect":
        assert key is not None
        return int(_run(_inspect(target, key, args.limit, schema, args.json)))
    if command == "parked":
        return int(_run(_parked(target, args.limit, args.workflow, schema, args.json)))
    if command == "rearm":
        assert key is not None
        return int(_run(_rearm(target, key, schema, args.json)))
    raise CliError(f"unknown command {command!r}", 2)  # pragma: no cover - argparse checks


def _main(argv: list[str], as_json: bool) -> int:
    try:
        args = _parser(as_json).parse_args(argv)
    except _UsageError as exc:
        if as_json:
            return _fail(exc, as_json=True)
        exc.parser.print_usage(sys.stderr)
        _stderr(safe_text(f"{exc.parser.prog}: error: {exc}"))
        return exc.code
    as_json = bool(args.json)
    try:
        return _dispatch(args)
    except _OutputError:
        raise
    except CliError as exc:
        return _fail(exc, as_json)
    except KeyboardInterrupt:
        return _fail(CliError("interrupted", EXIT_INTERRUPTED), as_json)
    except _Interrupted as exc:
        return _fail(CliError(f"interrupted ({exc})", 128 + exc.signum), as_json)
    except Exception as exc:
        url = args.database_url or os.environ.get("DATABASE_URL")
        return _fail(_classify(exc, getattr(args, "schema", None), url), as_json)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(arguments)
    try:
        try:
            code = _main(arguments, as_json)
        except SystemExit as exc:  # --help, --version
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        try:
            sys.stdout.flush()
        except OSError as exc:
            raise _OutputError(exc) from exc
    except _OutputError as exc:
        return _output_failed(exc.error, as_json)
    return code
