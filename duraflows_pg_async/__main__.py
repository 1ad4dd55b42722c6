"""The ``duraflows-pg`` command (also ``python -m duraflows_pg_async``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from . import migrations
from .errors import WorkflowError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duraflows-pg", description="duraflows-pg-async: PostgreSQL workflow persistence"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="PostgreSQL URL (default: $DATABASE_URL; the demo starts an embedded server if unset)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run the demo end to end and print what it stored")
    sql = commands.add_parser("sql", help="print the fresh-install schema (generator output)")
    sql.add_argument("--uuid-strategy", default="gen_random_uuid", help="gen_random_uuid|uuidv7")
    sql.add_argument("--schema", default=None, help="schema to create the tables in")
    sql.add_argument("--down", action="store_true", help="print the down (drop) script instead")
    migrate = commands.add_parser("migrate", help="apply, roll back or list the dbmate migrations")
    migrate.add_argument("action", choices=["up", "down", "status"])
    return parser


async def _migrate(url: str, action: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        if action == "up":
            done = await migrations.apply(conn)
            print("\n".join(f"applied {m.version}_{m.name}" for m in done) or "up to date")
        elif action == "down":
            done = await migrations.rollback(conn)
            print("\n".join(f"rolled back {m.version}_{m.name}" for m in done) or "nothing applied")
        else:
            for entry in await migrations.status(conn):
                print(f"[{'X' if entry.applied else ' '}] {entry.version}_{entry.name}")
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from ._demo import run_demo

            return asyncio.run(run_demo(args.database_url))
        if args.command == "sql":
            generated = migrations.generate_migration_sql(
                uuid_strategy=args.uuid_strategy, schema=args.schema
            )
            print(generated.down if args.down else generated.up)
            return 0
        if args.command == "migrate":
            if not args.database_url:
                print("duraflows-pg: give --database-url or set DATABASE_URL", file=sys.stderr)
                return 2
            asyncio.run(_migrate(args.database_url, args.action))
            return 0
    except WorkflowError as exc:
        print(f"duraflows-pg: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"duraflows-pg: cannot reach the database: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
