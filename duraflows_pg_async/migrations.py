"""The schema: the packaged dbmate migrations, a runner for them, and the fresh-install generator.

The files under ``migrations/`` (shipped in the wheel as ``duraflows_pg_async/_migrations``) are
the source of truth. [`apply()`][duraflows_pg_async.migrations.apply],
[`rollback()`][duraflows_pg_async.migrations.rollback] and
[`status()`][duraflows_pg_async.migrations.status] record what is applied in dbmate's own
``schema_migrations`` table, so this module and the ``dbmate`` tool can take turns on one database.
[`generate_migration_sql()`][duraflows_pg_async.migrations.generate_migration_sql] renders the
same end state as one script, for tools that want a single fresh-install migration (Alembic, a
hand-written dbmate file); the two optional migrations, 007 and 008, have standalone generators
too.

Every function taking ``conn`` uses the asyncpg connection (or pool connection) it is given and
never closes it. Run them outside a transaction: each migration then commits on its own. Inside a
caller's transaction they become savepoints and nothing is committed until the caller commits.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from duraflows_pg_async._core.echo import echo
from duraflows_pg_async._pg.error_mapping import map_db_errors

from ._core.validate import require_bool, require_identifier
from .errors import ConfigurationError, InvalidArgumentError

__all__ = [
    "Migration",
    "MigrationStatus",
    "MigrationSql",
    "list_migrations",
    "apply",
    "rollback",
    "status",
    "generate_migration_sql",
    "generate_idempotency_migration_sql",
    "generate_durable_execution_migration_sql",
    "UUID_STRATEGIES",
]

_Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

UUID_STRATEGIES = ("gen_random_uuid", "uuidv7")
"""The values ``generate_migration_sql(uuid_strategy=...)`` accepts (``uuidv7``: PostgreSQL 18+)."""

# pg_advisory_xact_lock key shared by every migrator of this package: the bytes of "duraflow".
_LOCK_KEY = int.from_bytes(b"duraflow", "big")

_PACKAGED_DIR = "_migrations"
# dbmate takes every file whose name starts with a digit and ends in .sql; its version is the
# leading run of digits. Ours are also named NNN_name.sql.
_DBMATE_FILE = re.compile(r"\d.*\.sql")
_OUR_FILE = re.compile(r"(?P<version>\d+)_(?P<name>[A-Za-z0-9_]+)\.sql")
_DIRECTIVE = re.compile(r"^--[ \t]*migrate:(?P<kind>up|down)\b(?P<options>[^\n]*)$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    """One packaged dbmate file; ``version`` is its numeric prefix, e.g. ``"001"``."""

    version: str
    name: str
    filename: str
    up: str
    down: str


@dataclass(frozen=True)
class MigrationStatus:
    """Whether one packaged migration is recorded in ``schema_migrations``."""

    version: str
    name: str
    applied: bool


class MigrationSql(NamedTuple):
    """The generator's output: ``up`` creates the schema, ``down`` drops it."""

    up: str
    down: str


# --- the packaged files ----------------------------------------------------------------------


def list_migrations() -> list[Migration]:
    """The migrations this release ships, in version order (a new list on every call)."""
    return list(_packaged_migrations())


@functools.cache
def _packaged_migrations() -> tuple[Migration, ...]:
    return _load_directory(_migrations_directory())


def _migrations_directory() -> Traversable:
    packaged = importlib.resources.files("duraflows_pg_async") / _PACKAGED_DIR
    if packaged.is_dir():
        return packaged
    # Editable install or a source checkout: the wheel's copy does not exist, the original does.
    source = Path(__file__).resolve().parent.parent / "migrations"
    if source.is_dir():
        return source
    raise ConfigurationError(
        f"the packaged migrations are missing: neither {packaged} nor {source} is a directory"
    )


def _load_directory(directory: Traversable) -> tuple[Migration, ...]:
    found: dict[str, Migration] = {}
    for entry in directory.iterdir():
        if not entry.is_file() or not _DBMATE_FILE.fullmatch(entry.name):
            continue
        migration = _parse_migration(entry.name, entry.read_text(encoding="utf-8"))
        if migration.version in found:
            raise ConfigurationError(
                f"migrations {found[migration.version].filename} and {entry.name} share version "
                f"{migration.version}"
            )
        found[migration.version] = migration
    # dbmate applies files in file name order; so do we.
    return tuple(sorted(found.values(), key=lambda m: m.filename))


def _parse_migration(filename: str, text: str) -> Migration:
    """Split a dbmate file into its sections; the rules are dbmate's own."""
    match = _OUR_FILE.fullmatch(filename)
    if match is None:
        raise ConfigurationError(f"migration file name {filename!r} is not NNN_name.sql")
    directives = list(_DIRECTIVE.finditer(text))
    kinds = [d["kind"] for d in directives]
    if "up" not in kinds:
        raise ConfigurationError(f"{filename}: no '-- migrate:up' section")
    if len(kinds) != len(set(kinds)):
        raise ConfigurationError(f"{filename}: a '-- migrate:' section appears twice")
    if kinds[0] != "up":
        raise ConfigurationError(f"{filename}: '-- migrate:down' comes before '-- migrate:up'")
    for directive in directives:
        if directive["options"].strip():
            raise ConfigurationError(
                f"{filename}: section options are not supported: {directive.group(0)!r}"
            )
    preamble = text[: directives[0].start()]
    if any(line.strip() and not line.lstrip().startswith("--") for line in preamble.splitlines()):
        raise ConfigurationError(f"{filename}: statements before '-- migrate:up'")
    up_end = directives[1].start() if len(directives) > 1 else len(text)
    up = text[directives[0].end() : up_end]
    down = text[directives[1].end() :] if len(directives) > 1 else ""
    return Migration(
        version=match["version"],
        name=match["name"],
        filename=filename,
        up=_section(up),
        down=_section(down),
    )


def _section(body: str) -> str:
    body = body.strip()
    return body + "\n" if body else ""


# --- applying them ---------------------------------------------------------------------------


async def apply(conn: _Connection, *, target: str | None = None) -> list[Migration]:
    """Apply the pending packaged migrations in version order; return those applied now.

    ``target`` (a version such as ``"003"``) stops after that migration; it never rolls anything
    back. Each migration runs in its own transaction together with its ``schema_migrations`` row,
    under a transaction-level advisory lock, so concurrent migrators apply each file exactly once.
    If one fails, its transaction rolls back, the error is raised (a
    [`DatabaseError`][duraflows_pg_async.errors.DatabaseError]) and those applied before it stay
    applied. Calling it again when everything is applied does nothing.
    """
    migrations = _packaged_migrations()
    if target is not None:
        limit = _index_of(migrations, target, "target")
        migrations = migrations[: limit + 1]
    table = await _ensure_version_table(conn)
    with map_db_errors("read schema_migrations"):
        already = {row["version"] for row in await conn.fetch(f"SELECT version FROM {table}")}
    done: list[Migration] = []
    for migration in migrations:
        if migration.version in already:
            continue
        with map_db_errors(f"apply migration {migration.filename}"):
            async with conn.transaction():
                applied = await _locked_applied_versions(conn, table)
                if migration.version in applied:
                    continue
                await conn.execute(migration.up)
                await conn.execute(
                    f"INSERT INTO {table} (version) VALUES ($1)",
                    migration.version,
                )
        done.append(migration)
    return done


async def rollback(conn: _Connection, *, steps: int = 1) -> list[Migration]:
    """Run the ``down`` section of the last ``steps`` applied migrations, newest first.

    Returns those rolled back; fewer (or none) when fewer are applied. Each step is its own
    transaction under the same advisory lock as [`apply()`][duraflows_pg_async.migrations.apply]; on
    an error that step rolls back and the steps before it stay rolled back. Versions in
    ``schema_migrations`` that this package does not ship (your own dbmate files) are never touched.
    """
    if type(steps) is not int or steps < 1:
        raise InvalidArgumentError(f"steps must be a positive integer, got {echo(steps)}")
    table, exists = await _version_table(conn)
    if not exists:
        return []
    migrations = _packaged_migrations()
    done: list[Migration] = []
    for _ in range(steps):
        migration: Migration | None = None
        with map_db_errors("roll back a migration"):
            async with conn.transaction():
                applied = await _locked_applied_versions(conn, table)
                migration = next((m for m in reversed(migrations) if m.version in applied), None)
                if migration is not None:
                    with map_db_errors(f"roll back migration {migration.filename}"):
                        if migration.down:
                            await conn.execute(migration.down)
                        await conn.execute(
                            f"DELETE FROM {table} WHERE version = $1",
                            migration.version,
                        )
        if migration is None:
            break
        done.append(migration)
    return done


async def status(conn: _Connection) -> list[MigrationStatus]:
    """One entry per packaged migration, in order, saying whether it is applied (read-only)."""
    table, exists = await _version_table(conn)
    applied: set[str] = set()
    if exists:
        with map_db_errors("read schema_migrations"):
            rows = await conn.fetch(f"SELECT version FROM {table}")
        applied = {row["version"] for row in rows}
    return [
        MigrationStatus(version=m.version, name=m.name, applied=m.version in applied)
        for m in _packaged_migrations()
    ]


def _index_of(migrations: tuple[Migration, ...], version: object, argument: str) -> int:
    for index, migration in enumerate(migrations):
        if migration.version == version:
            return index
    known = ", ".join(repr(m.version) for m in migrations)
    raise InvalidArgumentError(f"{argument} must be one of {known}, got {echo(version)}")


async def _version_table(conn: _Connection) -> tuple[str, bool]:
    """The qualified schema_migrations name, and whether that table exists yet."""
    # Where dbmate puts it when the URL names no search_path: current_schema(), else public.
    with map_db_errors("look for schema_migrations"):
        schema = await conn.fetchval("SELECT current_schema()")
        table = f"{_quote_ident(schema or 'public')}.schema_migrations"
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
    return table, bool(exists)


async def _ensure_version_table(conn: _Connection) -> str:
    table, exists = await _version_table(conn)
    if not exists:
        with map_db_errors("create schema_migrations"):
            async with conn.transaction():
                # Under the lock: two concurrent CREATE TABLE IF NOT EXISTS can still collide.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {table} (version varchar(128) PRIMARY KEY)"
                )
    return table


async def _locked_applied_versions(conn: _Connection, table: str) -> set[str]:
    """Take the migration lock for the current transaction, then read what is applied."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
    rows = await conn.fetch(f"SELECT version FROM {table}")
    return {row["version"] for row in rows}


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- the fresh-install generator -------------------------------------------------------------


def generate_migration_sql(
    *,
    uuid_strategy: str = "gen_random_uuid",
    schema: str | None = None,
    include_idempotency: bool = False,
    include_durable_execution: bool = False,
) -> MigrationSql:
    """The whole schema of the packaged migrations (001-006, 100 and 101, and with the flags the
    optional 007 and 008) as one fresh-install script, and its drop script.

    ``uuid_strategy`` picks the history uuid default: ``"gen_random_uuid"`` (PostgreSQL 13+) or
    ``"uuidv7"`` (PostgreSQL 18+, time-ordered); anything else is an ``InvalidArgumentError``.
    ``schema`` (an identifier) creates the schema if needed and qualifies every table with it;
    without it the tables go where ``search_path`` says. ``include_idempotency`` adds the table
    of 007 and ``include_durable_execution`` that of 008 (each ``True`` or ``False``, anything
    else is an ``InvalidArgumentError``). The ``up`` script is not idempotent: run it once, on a
    database without these tables. It records nothing in ``schema_migrations``.
    """
    if uuid_strategy not in UUID_STRATEGIES:
        allowed = " or ".join(repr(s) for s in UUID_STRATEGIES)
        raise InvalidArgumentError(f"uuid_strategy must be {allowed}, got {echo(uuid_strategy)}")
    checked_schema = _checked_schema(schema)
    idempotency = require_bool(include_idempotency, "include_idempotency")
    durable_execution = require_bool(include_durable_execution, "include_durable_execution")
    # The tuple's own string, so a str subclass never reaches the SQL or the cache key.
    strategy = UUID_STRATEGIES[UUID_STRATEGIES.index(uuid_strategy)]
    return _render(strategy, checked_schema, idempotency, durable_execution)


def generate_idempotency_migration_sql(*, schema: str | None = None) -> MigrationSql:
    """Migration 007 (``workflow_event_idempotency``, needed only with ``idempotency=True``) as a
    script and its drop script, for a database that has the tables of 001-006.

    ``schema`` (an identifier) qualifies every table with it, as in
    [`generate_migration_sql()`][duraflows_pg_async.migrations.generate_migration_sql]. It
    records nothing in ``schema_migrations``.
    """
    return _optional_migration(_IDEMPOTENCY, _checked_schema(schema))


def generate_durable_execution_migration_sql(*, schema: str | None = None) -> MigrationSql:
    """Migration 008 (``workflow_executions``, needed only with ``durable_execution=True``) as a
    script and its drop script, for a database that has the tables of 001-006.

    ``schema`` (an identifier) qualifies every table with it, as in
    [`generate_migration_sql()`][duraflows_pg_async.migrations.generate_migration_sql]. It
    records nothing in ``schema_migrations``.
    """
    return _optional_migration(_DURABLE_EXECUTION, _checked_schema(schema))


# The generator's DDL of the optional tables is their packaged files' text, with the table names
# qualified when a schema is given: one source for the files and the generator.
_IDEMPOTENCY = "007"
_DURABLE_EXECUTION = "008"
# A table name of this package, not yet qualified and not the start of a longer name (an index
# such as workflow_executions_due_idx).
_TABLE_NAME = re.compile(
    r"(?<![\w.\"])workflow_(?:instances|history|definitions|event_idempotency|executions)\b"
)


def _checked_schema(schema: object) -> str | None:
    if schema is None:
        return None
    # A plain str, so a str subclass never reaches the SQL or a cache key.
    return str.__str__(require_identifier(schema, "schema"))


@functools.lru_cache(maxsize=32)
def _render(
    uuid_strategy: str, schema: str | None, idempotency: bool, durable_execution: bool
) -> MigrationSql:
    core = _core_schema(uuid_strategy, schema)
    optional = [
        _optional_migration(version, schema)
        for version, wanted in (
            (_IDEMPOTENCY, idempotency),
            (_DURABLE_EXECUTION, durable_execution),
        )
        if wanted
    ]
    # The optional tables reference workflow_instances: created after it, dropped before it.
    return MigrationSql(
        up="\n".join([core.up, *(o.up for o in optional)]),
        down="".join([*(o.down for o in reversed(optional)), core.down]),
    )


@functools.lru_cache(maxsize=32)
def _optional_migration(version: str, schema: str | None) -> MigrationSql:
    migration = {m.version: m for m in _packaged_migrations()}[version]
    return MigrationSql(up=_qualify(migration.up, schema), down=_qualify(migration.down, schema))


def _qualify(sql: str, schema: str | None) -> str:
    """``sql`` with every table name qualified by ``schema``; comment lines stay as written."""
    if schema is None:
        return sql
    return "".join(
        line
        if line.lstrip().startswith("--")
        else _TABLE_NAME.sub(lambda name: f'"{schema}".{name.group(0)}', line)
        for line in sql.splitlines(keepends=True)
    )


def _core_schema(uuid_strategy: str, schema: str | None) -> MigrationSql:
    prefix = f'"{schema}".' if schema is not None else ""
    instances = f"{prefix}workflow_instances"
    history = f"{prefix}workflow_history"
    definitions = f"{prefix}workflow_definitions"
    uuid_default = f"{uuid_strategy}()"
    create_schema = f'CREATE SCHEMA IF NOT EXISTS "{schema}";\n\n' if schema is not None else ""
    up = f"""\
-- workflow_instances.uuid is generated by the application.
-- workflow_history.uuid defaults to {uuid_default}.

{create_schema}CREATE TABLE {instances} (
    uuid               uuid        PRIMARY KEY,
    workflow_name      text        NOT NULL,
    current_state      text        NOT NULL,
    version            integer     NOT NULL DEFAULT 0,
    definition_version integer     NULL,
    expires_at         timestamptz NULL,
    last_transition_at timestamptz NOT NULL DEFAULT now(),
    context_json       jsonb       NOT NULL DEFAULT '{{}}'::jsonb,
    metadata_json      jsonb       NOT NULL DEFAULT '{{}}'::jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    timeout_attempts   integer     NOT NULL DEFAULT 0,
    timeout_retry_at   timestamptz NULL,
    timeout_last_error text        NULL,
    timeout_parked_at  timestamptz NULL
);

CREATE INDEX workflow_instances_workflow_name_idx
    ON {instances} (workflow_name);

CREATE INDEX workflow_instances_expires_at_idx
    ON {instances} (expires_at)
    WHERE expires_at IS NOT NULL;

CREATE INDEX workflow_instances_timeout_due_idx
    ON {instances} ((coalesce(timeout_retry_at, expires_at)))
    WHERE expires_at IS NOT NULL AND timeout_parked_at IS NULL;

CREATE INDEX workflow_instances_timeout_parked_idx
    ON {instances} (timeout_parked_at)
    WHERE timeout_parked_at IS NOT NULL;

CREATE INDEX workflow_instances_definition_version_idx
    ON {instances} (workflow_name, definition_version);

CREATE INDEX workflow_instances_workflow_due_idx
    ON {instances}
    (workflow_name, (coalesce(timeout_retry_at, expires_at, 'infinity'::timestamptz)))
    WHERE expires_at IS NOT NULL AND timeout_parked_at IS NULL;

CREATE INDEX workflow_instances_workflow_uuid_idx
    ON {instances} (workflow_name, uuid);

CREATE INDEX workflow_instances_workflow_state_idx
    ON {instances} (workflow_name, current_state, uuid);

CREATE INDEX workflow_instances_timeout_state_idx
    ON {instances} (workflow_name, uuid)
    INCLUDE (current_state, timeout_attempts, timeout_retry_at, timeout_parked_at)
    WHERE timeout_attempts > 0 OR timeout_retry_at IS NOT NULL OR timeout_parked_at IS NOT NULL;

CREATE TABLE {history} (
    uuid                   uuid        PRIMARY KEY DEFAULT {uuid_default},
    workflow_instance_uuid uuid        NOT NULL REFERENCES {instances} (uuid),
    from_state             text        NULL,
    event_name             text        NOT NULL,
    to_state               text        NOT NULL,
    outcome                text        NOT NULL
        CONSTRAINT workflow_history_outcome_check
        CHECK (outcome IN ('success', 'failure', 'guard-rejected')),
    rejected_by            text        NULL,
    error_message          text        NULL,
    command_results_json   jsonb       NOT NULL DEFAULT '[]'::jsonb,
    trigger_metadata_json  jsonb       NOT NULL DEFAULT '{{}}'::jsonb,
    definition_version     integer     NULL,
    created_at             timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX workflow_history_instance_created_idx
    ON {history} (workflow_instance_uuid, created_at DESC);

CREATE TABLE {definitions} (
    workflow_name   text        NOT NULL,
    version         integer     NOT NULL,
    content_hash    text        NOT NULL,
    definition_json jsonb       NOT NULL,
    registered_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_name, version)
);
"""
    down = (
        f"DROP TABLE IF EXISTS {definitions};\n"
        f"DROP TABLE IF EXISTS {history};\n"
        f"DROP TABLE IF EXISTS {instances};\n"
    )
    return MigrationSql(up=up, down=down)
