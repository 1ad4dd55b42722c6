"""Placeholder: replaced by the migrations work (issue 2, item 6)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["MigrationSql", "generate_migration_sql"]


class MigrationSql(NamedTuple):
    up: str
    down: str


def generate_migration_sql(
    *, uuid_strategy: str = "gen_random_uuid", schema: str | None = None
) -> MigrationSql:
    raise NotImplementedError
