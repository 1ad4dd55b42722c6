"""``migrate up|down|status`` (the packaged dbmate files) and ``sql`` (the schema generator)."""

from __future__ import annotations

import argparse
import sys

import asyncpg

from duraflows_pg_async import migrations

from .database import Target, connect, schema_option, target_from, where
from .exits import EXIT_USAGE, CliError
from .output import PROG, confirm, emit, emit_json
from .signals import run

__all__ = ["migrate_command", "sql_command"]


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


async def _migrate_up(target: Target, schema: str | None, as_json: bool) -> int:
    conn = await connect(target)
    try:
        await _use_schema(conn, schema, create=True)
        done = await migrations.apply(conn)
    finally:
        await conn.close()
    if as_json:
        emit_json({"schema": schema, "applied": [_migration_json(m) for m in done]})
    else:
        emit("\n".join(f"applied {m.version}_{m.name}" for m in done) or "up to date")
    return 0


async def _migrate_status(target: Target, schema: str | None, as_json: bool) -> int:
    conn = await connect(target)
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
        emit_json([{"version": e.version, "name": e.name, "applied": e.applied} for e in entries])
    else:
        for entry in entries:
            emit(f"[{'X' if entry.applied else ' '}] {entry.version}_{entry.name}")
    return 0


async def _newest_applied(target: Target, schema: str | None) -> str | None:
    """``NNN_name`` of the migration ``migrate down`` would roll back, or None."""
    conn = await connect(target)
    try:
        if not await _use_schema(conn, schema, create=False):
            return None
        entries = await migrations.status(conn)
    finally:
        await conn.close()
    applied = [f"{e.version}_{e.name}" for e in entries if e.applied]
    return applied[-1] if applied else None


async def _migrate_down(
    target: Target, schema: str | None, confirmed: str | None, as_json: bool
) -> int:
    done: list[migrations.Migration] = []
    if confirmed is not None:
        conn = await connect(target)
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
        emit_json({"schema": schema, "rolled_back": [_migration_json(m) for m in done]})
    else:
        emit("\n".join(f"rolled back {m.version}_{m.name}" for m in done) or "nothing applied")
    return 0


def migrate_command(args: argparse.Namespace) -> int:
    """``migrate ACTION``; ``down`` asks first unless --yes (and refuses without a terminal)."""
    db = target_from(args)
    schema = schema_option(args.schema)
    if args.action == "up":
        return int(run(_migrate_up(db, schema, args.json)))
    if args.action == "status":
        return int(run(_migrate_status(db, schema, args.json)))
    newest: str | None = run(_newest_applied(db, schema))
    if newest is not None and not args.yes:
        place = f"the database at {where(db.url)}"
        if schema:
            place = f'schema "{schema}" of {place}'
        if not sys.stdin.isatty():
            raise CliError(
                f"migrate down rolls back {newest} in {place}, dropping what it created, data "
                "included: pass --yes to confirm (standard input is not a terminal)",
                EXIT_USAGE,
            )
        if not confirm(f"{PROG}: roll back {newest} in {place}? What it created is dropped."):
            raise CliError("not confirmed: nothing rolled back")
    return int(run(_migrate_down(db, schema, newest, args.json)))


def sql_command(args: argparse.Namespace) -> int:
    """``sql``: print the fresh-install schema (or its down script); no database needed."""
    generated = migrations.generate_migration_sql(
        uuid_strategy=args.uuid_strategy, schema=args.schema
    )
    script = generated.down if args.down else generated.up
    if args.json:
        emit_json(
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
