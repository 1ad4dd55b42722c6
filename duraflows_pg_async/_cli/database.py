"""Which database a command uses, connecting to it, and what its errors mean to a user.

Messages name the host and port of a URL, never its user name or password.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import asyncpg

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.validate import require_identifier
from duraflows_pg_async._pg.codecs import create_pool
from duraflows_pg_async._pg.providers import pg_workflow_providers
from duraflows_pg_async._pg.runner import PgTransactionRunner
from duraflows_pg_async.errors import (
    ConfigurationError,
    ConnectionLostError,
    InvalidArgumentError,
    WorkflowError,
    WorkflowInstanceNotFoundError,
)

from .exits import EXIT_USAGE, CliError

__all__ = [
    "has_execution_table",
    "workflow_providers",
    "DEFAULT_CONNECT_TIMEOUT",
    "Target",
    "target_from",
    "connect_timeout",
    "seconds",
    "schema_option",
    "where",
    "connect_error",
    "classify",
    "connect",
    "pool",
]

NO_URL = "give --database-url or set DATABASE_URL"
DEFAULT_CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Target:
    """Where to connect, and how long to wait for an answer."""

    url: str
    connect_timeout: float


def _database_url(args: argparse.Namespace) -> str:
    url: str | None = args.database_url or os.environ.get("DATABASE_URL")
    if not url:
        raise CliError(NO_URL, EXIT_USAGE)
    return url


def seconds(
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
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero_ok):
        kind = "non-negative" if zero_ok else "positive"
        raise CliError(f"{source} must be a {kind} number of seconds, got {value!r}", EXIT_USAGE)
    return number


def connect_timeout(args: argparse.Namespace) -> float:
    """--connect-timeout, else $DURAFLOWS_CONNECT_TIMEOUT, else the default."""
    timeout = seconds(
        args.connect_timeout,
        "--connect-timeout",
        "DURAFLOWS_CONNECT_TIMEOUT",
        zero_ok=False,
        default=DEFAULT_CONNECT_TIMEOUT,
    )
    assert timeout is not None
    return timeout


def target_from(args: argparse.Namespace) -> Target:
    """The database URL (a usage error without one) and the connect timeout."""
    return Target(_database_url(args), connect_timeout(args))


def schema_option(value: str | None) -> str | None:
    """--schema, checked as an identifier."""
    return None if value is None else require_identifier(value, "--schema")


def missing_tables(schema: str | None) -> str:
    """The advice for a database (or schema) without the tables; it names the schema asked for."""
    if schema is None:
        return "the duraflows tables are missing: run `duraflows-pg migrate up`"
    return (
        f'the duraflows tables are missing in schema "{schema}": '
        f"run `duraflows-pg migrate up --schema {schema}`"
    )


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
        return CliError(f"invalid database URL: {_root_message(exc)}", EXIT_USAGE)
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return CliError(f"cannot connect to the database at {at}: connection refused")
    if any(isinstance(e, TimeoutError | asyncio.CancelledError) for e in chain):
        return CliError(f"cannot connect to the database at {at} (no answer within {timeout:g} s)")
    return CliError(f"cannot connect to the database at {at}: {_root_message(exc)}")


def classify(exc: BaseException, schema: str | None, url: str | None) -> CliError:
    """The exit code and message for an exception raised while a command ran."""
    chain = _chain(exc)
    if any(isinstance(e, asyncpg.UndefinedTableError) for e in chain):
        return CliError(missing_tables(schema))
    if isinstance(exc, InvalidArgumentError):
        return CliError(str(exc), EXIT_USAGE)
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


async def connect(target: Target) -> asyncpg.Connection:
    """One connection (the migrations need a plain one); a failure is a CliError."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(target.url, timeout=target.connect_timeout)
    except Exception as exc:
        raise connect_error(exc, target.url, target.connect_timeout) from exc
    return conn


@asynccontextmanager
async def pool(target: Target, max_size: int = 4) -> AsyncIterator[asyncpg.Pool]:
    """A pool with the package's codecs, closed on exit; a failure to open it is a CliError."""
    try:
        opened = await create_pool(
            target.url, min_size=1, max_size=max_size, timeout=target.connect_timeout
        )
    except Exception as exc:
        raise connect_error(exc, target.url, target.connect_timeout) from exc
    try:
        yield opened
    finally:
        await opened.close()


async def has_execution_table(pool: asyncpg.Pool, schema: str | None) -> bool:
    """Whether the database has migration 008's ``workflow_executions`` (one index read)."""
    providers = pg_workflow_providers(pool, schema=schema, durable_execution=True)
    assert providers.execution_store is not None
    try:
        await providers.execution_store.find_due(1, datetime.now(UTC))
    except ConfigurationError as exc:
        if isinstance(exc.__cause__, asyncpg.UndefinedTableError):
            return False
        raise
    return True


async def workflow_providers(
    pool: asyncpg.Pool, schema: str | None
) -> WorkflowPersistenceProvider[PgTransactionRunner]:
    """Providers as the application's runtimes see this database: with the execution store
    when migration 008 is applied, so that an instance a queued execution occupies is refused
    here too (WorkflowInstanceBusyError)."""
    durable = await has_execution_table(pool, schema)
    return pg_workflow_providers(pool, schema=schema, durable_execution=durable)
