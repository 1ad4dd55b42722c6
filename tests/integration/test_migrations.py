"""The dbmate files, the migration runner and the generator against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import unquote, urlsplit

import asyncpg
import pytest

from duraflows_pg_async.errors import DatabaseError, InvalidArgumentError
from duraflows_pg_async.migrations import (
    Migration,
    apply,
    generate_durable_execution_migration_sql,
    generate_idempotency_migration_sql,
    generate_migration_sql,
    list_migrations,
    rollback,
    status,
)

if TYPE_CHECKING:
    from conftest import MakeDatabase, PgServer

REPO = Path(__file__).resolve().parents[2]
ALL_VERSIONS = ["001", "002", "003", "004", "005", "006", "007", "008", "100", "101"]
# The release before 007 and 008 shipped these.
PREVIOUS_RELEASE = ["001", "002", "003", "004", "005", "006", "100"]
MIGRATION = {m.version: m for m in list_migrations()}
OPTIONAL_TABLES = ("workflow_event_idempotency", "workflow_executions")


class OptionalTables(TypedDict, total=False):
    include_idempotency: bool
    include_durable_execution: bool


BOTH: OptionalTables = {"include_idempotency": True, "include_durable_execution": True}


@pytest.fixture
async def conn(empty_database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a fresh database with no schema at all."""
    connection = await asyncpg.connect(empty_database)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def other_empty_database(make_database: MakeDatabase) -> str:
    """A second empty database (``empty_database`` gives one per test)."""
    return await make_database()


def versions(migrations: list[Migration]) -> list[str]:
    return [m.version for m in migrations]


async def applied_versions(conn: asyncpg.Connection) -> list[str]:
    return [s.version for s in await status(conn) if s.applied]


async def recorded_versions(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    return [r["version"] for r in rows]


async def table_exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name))


async def columns(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        """
        SELECT attname FROM pg_attribute
        WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
        ORDER BY attnum
        """,
        table,
    )
    return [r["attname"] for r in rows]


async def index_count(conn: asyncpg.Connection, name: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM pg_indexes WHERE indexname = $1", name))


async def insert_instance(conn: asyncpg.Connection, schema: str = "") -> uuid.UUID:
    instance = uuid.uuid4()
    await conn.execute(
        f"INSERT INTO {schema}workflow_instances (uuid, workflow_name, current_state) "
        "VALUES ($1, 'order', 'new')",
        instance,
    )
    return instance


# --- catalog snapshot ------------------------------------------------------------------------


async def catalog(conn: asyncpg.Connection, schema: str) -> dict[str, Any]:
    """Tables, columns, constraints and indexes of ``schema``, with the schema name removed.

    Columns carry type, nullability, default and collation; constraints and indexes their
    definitions as PostgreSQL prints them (checks, FK actions, partial index predicates).
    Column order is left out: the generator orders the columns of 004 and 005 differently.
    """

    def strip(text: str) -> str:
        return text.replace(f"{schema}.", "")

    tables = await conn.fetch(
        """
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relname <> 'schema_migrations'
        ORDER BY 1
        """,
        schema,
    )
    cols = await conn.fetch(
        """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type,
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid) AS default,
               coll.collname AS collation
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation coll ON coll.oid = a.attcollation
        WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname <> 'schema_migrations'
          AND a.attnum > 0 AND NOT a.attisdropped
        """,
        schema,
    )
    constraints = await conn.fetch(
        """
        SELECT c.relname, con.conname, con.contype::text AS contype,
               pg_get_constraintdef(con.oid) AS def
        FROM pg_constraint con
        JOIN pg_class c ON c.oid = con.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relname <> 'schema_migrations'
        """,
        schema,
    )
    indexes = await conn.fetch(
        """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = $1 AND tablename <> 'schema_migrations'
        """,
        schema,
    )
    return {
        "tables": [r["relname"] for r in tables],
        "columns": sorted(
            (r["relname"], r["attname"], r["type"], r["attnotnull"], r["default"], r["collation"])
            for r in cols
        ),
        "constraints": sorted(
            (r["relname"], r["conname"], r["contype"], strip(r["def"])) for r in constraints
        ),
        "indexes": sorted((r["tablename"], r["indexname"], strip(r["indexdef"])) for r in indexes),
    }


def without_optional_tables(snapshot: dict[str, Any]) -> dict[str, Any]:
    """``snapshot`` less the tables of 007 and 008 and everything on them."""
    return {
        key: [e for e in entries if (e if key == "tables" else e[0]) not in OPTIONAL_TABLES]
        for key, entries in snapshot.items()
    }


# --- the catalog of upstream's 007 and 008 ----------------------------------------------------
# What upstream's files (duraflows, packages/duraflows-pg/sql/dbmate) build, as PostgreSQL 13 to
# 18 print it. Ours must build exactly this, names included, so that this package and the
# TypeScript one can share a database: a drift in a column, collation, check, constraint name or
# index fails here.

UPSTREAM_OPTIONAL_COLUMNS = [
    # table, column (in order), type, NOT NULL, default, collation
    ("workflow_event_idempotency", "workflow_instance_uuid", "uuid", True, None, None),
    ("workflow_event_idempotency", "idempotency_key", "text", True, None, "C"),
    ("workflow_event_idempotency", "event_name", "text", True, None, "default"),
    ("workflow_event_idempotency", "fingerprint", "text", False, None, "C"),
    ("workflow_event_idempotency", "result_json", "jsonb", False, None, None),
    ("workflow_event_idempotency", "created_at", "timestamp with time zone", True, "now()", None),
    ("workflow_executions", "uuid", "uuid", True, None, None),
    ("workflow_executions", "workflow_instance_uuid", "uuid", True, None, None),
    ("workflow_executions", "idempotency_key", "text", True, None, "C"),
    ("workflow_executions", "status", "text", True, None, "default"),
    ("workflow_executions", "available_at", "timestamp with time zone", True, None, None),
    ("workflow_executions", "lease_until", "timestamp with time zone", False, None, None),
    ("workflow_executions", "revision", "integer", True, None, None),
    ("workflow_executions", "execution_json", "jsonb", True, None, None),
]
_KEY_LENGTH = "((octet_length(idempotency_key) >= 1) AND (octet_length(idempotency_key) <= 256))"
UPSTREAM_OPTIONAL_CONSTRAINTS = sorted(
    [
        # table, name, type, definition (NOT NULL constraints of PostgreSQL 18 left out)
        (
            "workflow_event_idempotency",
            "workflow_event_idempotency_pkey",
            "p",
            "PRIMARY KEY (workflow_instance_uuid, idempotency_key)",
        ),
        (
            "workflow_event_idempotency",
            "workflow_event_idempotency_workflow_instance_uuid_fkey",
            "f",
            "FOREIGN KEY (workflow_instance_uuid) REFERENCES workflow_instances(uuid) "
            "ON DELETE CASCADE",
        ),
        (
            "workflow_event_idempotency",
            "workflow_event_idempotency_idempotency_key_check",
            "c",
            f"CHECK ({_KEY_LENGTH})",
        ),
        (
            "workflow_event_idempotency",
            "workflow_event_idempotency_fingerprint_check",
            "c",
            "CHECK (((fingerprint IS NULL) OR ((octet_length(fingerprint) >= 1) AND "
            "(octet_length(fingerprint) <= 256))))",
        ),
        (
            "workflow_event_idempotency",
            "workflow_event_idempotency_result_json_check",
            "c",
            "CHECK (((result_json IS NULL) OR (jsonb_typeof(result_json) = 'object'::text)))",
        ),
        ("workflow_executions", "workflow_executions_pkey", "p", "PRIMARY KEY (uuid)"),
        (
            "workflow_executions",
            "workflow_executions_workflow_instance_uuid_fkey",
            "f",
            "FOREIGN KEY (workflow_instance_uuid) REFERENCES workflow_instances(uuid) "
            "ON DELETE CASCADE",
        ),
        (
            "workflow_executions",
            "workflow_executions_workflow_instance_uuid_idempotency_key_key",
            "u",
            "UNIQUE (workflow_instance_uuid, idempotency_key)",
        ),
        (
            "workflow_executions",
            "workflow_executions_idempotency_key_check",
            "c",
            f"CHECK ({_KEY_LENGTH})",
        ),
        (
            "workflow_executions",
            "workflow_executions_status_check",
            "c",
            "CHECK ((status = ANY (ARRAY['pending'::text, 'running'::text, 'parked'::text, "
            "'completed'::text, 'cancelled'::text])))",
        ),
        (
            "workflow_executions",
            "workflow_executions_revision_check",
            "c",
            "CHECK ((revision >= 0))",
        ),
        (
            "workflow_executions",
            "workflow_executions_execution_json_check",
            "c",
            "CHECK ((jsonb_typeof(execution_json) = 'object'::text))",
        ),
    ]
)
UPSTREAM_OPTIONAL_INDEXES = sorted(
    [
        (
            "workflow_event_idempotency",
            "workflow_event_idempotency_pkey",
            "CREATE UNIQUE INDEX workflow_event_idempotency_pkey ON workflow_event_idempotency "
            "USING btree (workflow_instance_uuid, idempotency_key)",
        ),
        (
            "workflow_executions",
            "workflow_executions_pkey",
            "CREATE UNIQUE INDEX workflow_executions_pkey ON workflow_executions "
            "USING btree (uuid)",
        ),
        (
            "workflow_executions",
            "workflow_executions_workflow_instance_uuid_idempotency_key_key",
            "CREATE UNIQUE INDEX workflow_executions_workflow_instance_uuid_idempotency_key_key "
            "ON workflow_executions USING btree (workflow_instance_uuid, idempotency_key)",
        ),
        (
            "workflow_executions",
            "workflow_executions_active_idx",
            "CREATE UNIQUE INDEX workflow_executions_active_idx ON workflow_executions "
            "USING btree (workflow_instance_uuid) "
            "WHERE (status = ANY (ARRAY['pending'::text, 'running'::text, 'parked'::text]))",
        ),
        (
            "workflow_executions",
            "workflow_executions_due_idx",
            "CREATE INDEX workflow_executions_due_idx ON workflow_executions "
            "USING btree (available_at, uuid) "
            "WHERE (status = ANY (ARRAY['pending'::text, 'running'::text]))",
        ),
    ]
)


async def assert_upstream_optional_tables(conn: asyncpg.Connection, schema: str = "public") -> None:
    """The tables of 007 and 008 in ``schema`` are exactly upstream's, column order included."""
    snapshot = await catalog(conn, schema)
    ordered = await conn.fetch(
        """
        SELECT c.relname, a.attname FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relname = ANY($2::text[])
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY c.relname, a.attnum
        """,
        schema,
        list(OPTIONAL_TABLES),
    )
    assert [(r["relname"], r["attname"]) for r in ordered] == [
        (c[0], c[1]) for c in UPSTREAM_OPTIONAL_COLUMNS
    ]
    optional = [e for e in snapshot["columns"] if e[0] in OPTIONAL_TABLES]
    assert optional == sorted(UPSTREAM_OPTIONAL_COLUMNS)
    constraints = [c for c in snapshot["constraints"] if c[0] in OPTIONAL_TABLES and c[2] != "n"]
    assert constraints == UPSTREAM_OPTIONAL_CONSTRAINTS
    assert [i for i in snapshot["indexes"] if i[0] in OPTIONAL_TABLES] == UPSTREAM_OPTIONAL_INDEXES


# --- apply / status --------------------------------------------------------------------------


async def test_status_on_an_empty_database_creates_nothing(conn: asyncpg.Connection) -> None:
    result = await status(conn)
    assert [(s.version, s.name, s.applied) for s in result] == [
        (m.version, m.name, False) for m in list_migrations()
    ]
    assert not await table_exists(conn, "schema_migrations")
    assert await rollback(conn) == []
    assert not await table_exists(conn, "schema_migrations")


async def test_apply_on_an_empty_database_applies_every_migration(
    conn: asyncpg.Connection,
) -> None:
    applied = await apply(conn)
    assert versions(applied) == ALL_VERSIONS
    assert applied == list_migrations()
    assert await applied_versions(conn) == ALL_VERSIONS
    assert await recorded_versions(conn) == ALL_VERSIONS
    # dbmate's own table shape.
    column = await conn.fetchrow(
        """
        SELECT format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull
        FROM pg_attribute a WHERE a.attrelid = 'public.schema_migrations'::regclass
          AND a.attname = 'version'
        """
    )
    assert column is not None
    assert column["type"] == "character varying(128)"
    assert column["attnotnull"]
    assert await columns(conn, "schema_migrations") == ["version"]
    for table in ("workflow_instances", "workflow_history", "workflow_definitions"):
        assert await table_exists(conn, table)
    await assert_upstream_optional_tables(conn)


async def test_apply_twice_applies_nothing_the_second_time(conn: asyncpg.Connection) -> None:
    await apply(conn)
    assert await apply(conn) == []
    assert await recorded_versions(conn) == ALL_VERSIONS


async def test_apply_up_to_a_target(conn: asyncpg.Connection) -> None:
    assert versions(await apply(conn, target="003")) == ["001", "002", "003"]
    assert [(s.version, s.applied) for s in await status(conn)] == [
        ("001", True),
        ("002", True),
        ("003", True),
        ("004", False),
        ("005", False),
        ("006", False),
        ("007", False),
        ("008", False),
        ("100", False),
        ("101", False),
    ]
    assert not await table_exists(conn, "workflow_definitions")
    assert "rejected_by" in await columns(conn, "workflow_history")
    assert await apply(conn, target="002") == []  # a target never rolls back
    assert versions(await apply(conn)) == ["004", "005", "006", "007", "008", "100", "101"]


async def test_target_006_stops_before_the_optional_tables(conn: asyncpg.Connection) -> None:
    assert versions(await apply(conn, target="006")) == ALL_VERSIONS[:6]
    assert [s.version for s in await status(conn) if not s.applied] == ["007", "008", "100", "101"]
    for table in OPTIONAL_TABLES:
        assert not await table_exists(conn, table)
    assert versions(await apply(conn, target="007")) == ["007"]
    assert await table_exists(conn, "workflow_event_idempotency")
    assert not await table_exists(conn, "workflow_executions")


async def test_a_database_of_the_previous_release_gets_007_and_008(
    conn: asyncpg.Connection, other_empty_database: str
) -> None:
    """001-006 and 100 applied, as the release before 007 and 008 left it: they go in between."""
    await apply(conn, target="006")
    await conn.execute(MIGRATION["100"].up)
    await conn.execute("INSERT INTO schema_migrations (version) VALUES ('100')")
    assert await applied_versions(conn) == PREVIOUS_RELEASE
    assert [(s.version, s.name) for s in await status(conn) if not s.applied] == [
        ("007", "event_idempotency"),
        ("008", "durable_execution"),
        ("101", "instance_listing"),
    ]

    assert versions(await apply(conn)) == ["007", "008", "101"]
    assert await applied_versions(conn) == ALL_VERSIONS
    await assert_upstream_optional_tables(conn)
    fresh = await asyncpg.connect(other_empty_database)
    try:
        await apply(fresh)
        assert await catalog(conn, "public") == await catalog(fresh, "public")
    finally:
        await fresh.close()

    # Rolled back in version order: 101 and 100 first, then 008 and 007.
    assert versions(await rollback(conn, steps=4)) == ["101", "100", "008", "007"]
    assert await applied_versions(conn) == ALL_VERSIONS[:6]
    for table in OPTIONAL_TABLES:
        assert not await table_exists(conn, table)


@pytest.mark.parametrize("target", ["009", "3", "000", "", "workflow_core", 3])
async def test_unknown_target_is_rejected_before_any_sql(
    conn: asyncpg.Connection, target: object
) -> None:
    with pytest.raises(InvalidArgumentError, match="target"):
        await apply(conn, target=target)  # type: ignore[arg-type]
    assert not await table_exists(conn, "schema_migrations")


async def test_apply_in_the_current_schema(empty_database: str) -> None:
    setup = await asyncpg.connect(empty_database)
    try:
        await setup.execute("CREATE SCHEMA app")
    finally:
        await setup.close()
    conn = await asyncpg.connect(empty_database, server_settings={"search_path": "app"})
    try:
        await apply(conn)
        assert await table_exists(conn, "app.schema_migrations")
        assert await table_exists(conn, "app.workflow_instances")
        assert not await table_exists(conn, "public.schema_migrations")
        assert not await table_exists(conn, "public.workflow_instances")
        assert await applied_versions(conn) == ALL_VERSIONS
    finally:
        await conn.close()


async def test_versions_of_other_tools_are_left_alone(conn: asyncpg.Connection) -> None:
    """schema_migrations may be shared with the user's own dbmate files."""
    await conn.execute("CREATE TABLE schema_migrations (version varchar(128) PRIMARY KEY)")
    await conn.execute("INSERT INTO schema_migrations VALUES ('20240101120000')")
    await apply(conn)
    assert versions(await rollback(conn, steps=100)) == ALL_VERSIONS[::-1]
    assert await recorded_versions(conn) == ["20240101120000"]


# --- rollback --------------------------------------------------------------------------------


async def test_rollback_steps(conn: asyncpg.Connection) -> None:
    await apply(conn)
    assert versions(await rollback(conn)) == ["101"]
    assert await index_count(conn, "workflow_instances_workflow_state_idx") == 0
    assert await index_count(conn, "workflow_instances_timeout_state_idx") == 0
    assert versions(await rollback(conn)) == ["100"]
    assert await index_count(conn, "workflow_instances_workflow_due_idx") == 0
    assert versions(await rollback(conn)) == ["008"]
    assert not await table_exists(conn, "workflow_executions")
    assert await index_count(conn, "workflow_executions_due_idx") == 0
    assert await table_exists(conn, "workflow_event_idempotency")
    assert versions(await rollback(conn)) == ["007"]
    assert not await table_exists(conn, "workflow_event_idempotency")
    assert versions(await rollback(conn)) == ["006"]
    assert await index_count(conn, "workflow_instances_definition_version_idx") == 0
    assert versions(await rollback(conn, steps=2)) == ["005", "004"]
    assert await applied_versions(conn) == ["001", "002", "003"]
    instance_columns = await columns(conn, "workflow_instances")
    assert "definition_version" not in instance_columns
    assert not any(c.startswith("timeout_") for c in instance_columns)
    assert not await table_exists(conn, "workflow_definitions")
    assert versions(await apply(conn)) == ["004", "005", "006", "007", "008", "100", "101"]


@pytest.mark.parametrize("steps", [0, -1, True, 1.5, "1", None])
async def test_rollback_rejects_bad_steps(conn: asyncpg.Connection, steps: object) -> None:
    await apply(conn)
    with pytest.raises(InvalidArgumentError, match="steps"):
        await rollback(conn, steps=steps)  # type: ignore[arg-type]
    assert await applied_versions(conn) == ALL_VERSIONS


async def test_rollback_everything_then_apply_again(conn: asyncpg.Connection) -> None:
    await apply(conn)
    before = await catalog(conn, "public")
    assert versions(await rollback(conn, steps=10)) == ALL_VERSIONS[::-1]
    assert await recorded_versions(conn) == []
    assert (await catalog(conn, "public"))["tables"] == []
    assert await rollback(conn) == []  # nothing applied: a no-op
    assert versions(await apply(conn)) == ALL_VERSIONS
    assert await catalog(conn, "public") == before


# --- individual files ------------------------------------------------------------------------


async def test_005_and_006_up_are_idempotent(conn: asyncpg.Connection) -> None:
    await apply(conn)
    await conn.execute(MIGRATION["005"].up)
    await conn.execute(MIGRATION["006"].up)
    for name in (
        "workflow_instances_timeout_due_idx",
        "workflow_instances_timeout_parked_idx",
        "workflow_instances_definition_version_idx",
    ):
        assert await index_count(conn, name) == 1, name
    timeout_columns = [c for c in await columns(conn, "workflow_instances") if "timeout" in c]
    assert timeout_columns == [
        "timeout_attempts",
        "timeout_retry_at",
        "timeout_last_error",
        "timeout_parked_at",
    ]


async def test_005_down_removes_its_columns_and_indexes(conn: asyncpg.Connection) -> None:
    await apply(conn)
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(MIGRATION["005"].down)
        assert not any("timeout" in c for c in await columns(conn, "workflow_instances"))
        assert await index_count(conn, "workflow_instances_timeout_due_idx") == 0
        assert await index_count(conn, "workflow_instances_timeout_parked_idx") == 0
    finally:
        await tx.rollback()
    assert await index_count(conn, "workflow_instances_timeout_due_idx") == 1


async def test_002_converts_the_legacy_trigger_columns(conn: asyncpg.Connection) -> None:
    # The history table as the first published 001 created it.
    await conn.execute(
        """
        CREATE TABLE workflow_instances (
            uuid uuid PRIMARY KEY,
            workflow_name text NOT NULL,
            current_state text NOT NULL,
            version integer NOT NULL DEFAULT 0,
            expires_at timestamptz NULL,
            last_transition_at timestamptz NOT NULL DEFAULT now(),
            context_json jsonb NOT NULL DEFAULT '{}'::jsonb,
            metadata_json jsonb NOT NULL DEFAULT '{}'::jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE workflow_history (
            uuid uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            workflow_instance_uuid uuid NOT NULL REFERENCES workflow_instances (uuid),
            from_state text,
            event_name text NOT NULL,
            to_state text NOT NULL,
            outcome text NOT NULL CHECK (outcome IN ('success', 'failure')),
            error_message text,
            command_results_json jsonb NOT NULL DEFAULT '[]'::jsonb,
            triggered_by_type text,
            triggered_by_uuid uuid NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE schema_migrations (version varchar(128) PRIMARY KEY);
        INSERT INTO schema_migrations (version) VALUES ('001');
        """
    )
    instance = await insert_instance(conn)
    actor = uuid.uuid4()
    insert = (
        "INSERT INTO workflow_history (workflow_instance_uuid, event_name, to_state, outcome, "
        "triggered_by_type, triggered_by_uuid) VALUES ($1, $2, 'b', 'success', $3, $4)"
    )
    await conn.execute(insert, instance, "by_user", "user", actor)
    await conn.execute(insert, instance, "by_system", "system", None)
    await conn.execute(insert, instance, "untriggered", None, None)

    assert versions(await apply(conn, target="002")) == ["002"]
    history_columns = await columns(conn, "workflow_history")
    assert "trigger_metadata_json" in history_columns
    assert "triggered_by_type" not in history_columns
    assert "triggered_by_uuid" not in history_columns
    rows = await conn.fetch(
        "SELECT event_name, trigger_metadata_json::text AS j FROM workflow_history"
    )
    metadata = {r["event_name"]: json.loads(r["j"]) for r in rows}
    assert metadata == {
        "by_user": {"type": "user", "actorUuid": str(actor)},
        "by_system": {"type": "system", "actorUuid": None},
        "untriggered": {},
    }
    # Running the DO block again on the converted table changes nothing.
    await conn.execute(MIGRATION["002"].up)
    assert await columns(conn, "workflow_history") == history_columns

    assert versions(await rollback(conn)) == ["002"]
    history_columns = await columns(conn, "workflow_history")
    assert "trigger_metadata_json" not in history_columns
    rows = await conn.fetch(
        "SELECT event_name, triggered_by_type, triggered_by_uuid FROM workflow_history"
    )
    assert {r["event_name"]: (r["triggered_by_type"], r["triggered_by_uuid"]) for r in rows} == {
        "by_user": ("user", actor),
        "by_system": ("system", None),
        "untriggered": (None, None),
    }


async def test_002_is_a_no_op_on_a_fresh_schema(conn: asyncpg.Connection) -> None:
    await apply(conn, target="001")
    before = await catalog(conn, "public")
    await apply(conn, target="002")
    assert await catalog(conn, "public") == before


async def test_003_down_fails_while_guard_rejected_rows_exist(conn: asyncpg.Connection) -> None:
    await apply(conn)
    instance = await insert_instance(conn)
    await conn.execute(
        "INSERT INTO workflow_history (workflow_instance_uuid, event_name, to_state, outcome, "
        "rejected_by) VALUES ($1, 'approve', 'new', 'guard-rejected', 'is_manager')",
        instance,
    )
    assert versions(await rollback(conn, steps=7)) == [
        "101",
        "100",
        "008",
        "007",
        "006",
        "005",
        "004",
    ]
    before = await catalog(conn, "public")
    with pytest.raises(DatabaseError, match="003_event_guards") as info:
        await rollback(conn)
    assert isinstance(info.value.__cause__, asyncpg.CheckViolationError)
    # The failed step's transaction rolled back: the schema and the record are as they were.
    assert await catalog(conn, "public") == before
    assert await applied_versions(conn) == ["001", "002", "003"]
    assert await conn.fetchval("SELECT rejected_by FROM workflow_history") == "is_manager"

    await conn.execute("DELETE FROM workflow_history WHERE outcome = 'guard-rejected'")
    assert versions(await rollback(conn)) == ["003"]
    assert "rejected_by" not in await columns(conn, "workflow_history")


async def test_a_failing_migration_is_not_recorded(conn: asyncpg.Connection) -> None:
    await apply(conn, target="003")
    # Something in the way of 004: its CREATE TABLE fails, nothing of it stays.
    await conn.execute("CREATE TABLE workflow_definitions (x int)")
    with pytest.raises(DatabaseError, match="004_definition_versions") as info:
        await apply(conn)
    assert isinstance(info.value.__cause__, asyncpg.DuplicateTableError)
    assert await applied_versions(conn) == ["001", "002", "003"]
    assert "definition_version" not in await columns(conn, "workflow_instances")


async def test_concurrent_apply_applies_each_migration_once(
    empty_database: str,
) -> None:
    first = await asyncpg.connect(empty_database)
    second = await asyncpg.connect(empty_database)
    try:
        a, b = await asyncio.gather(apply(first), apply(second))
        assert sorted(versions(a) + versions(b)) == ALL_VERSIONS
        assert await recorded_versions(first) == ALL_VERSIONS
        assert await apply(first) == []
        assert await apply(second) == []
    finally:
        await first.close()
        await second.close()


async def test_raw_insert_gets_the_timeout_defaults(raw_connection: asyncpg.Connection) -> None:
    instance = await insert_instance(raw_connection)
    row = await raw_connection.fetchrow(
        "SELECT timeout_attempts, timeout_retry_at, timeout_last_error, timeout_parked_at, "
        "definition_version, version FROM workflow_instances WHERE uuid = $1",
        instance,
    )
    assert row is not None
    assert tuple(row) == (0, None, None, None, None, 0)


async def test_history_uuid_defaults_and_outcome_check(raw_connection: asyncpg.Connection) -> None:
    instance = await insert_instance(raw_connection)
    history = await raw_connection.fetchval(
        "INSERT INTO workflow_history (workflow_instance_uuid, event_name, to_state, outcome) "
        "VALUES ($1, 'go', 'done', 'success') RETURNING uuid",
        instance,
    )
    assert isinstance(history, uuid.UUID)
    with pytest.raises(asyncpg.CheckViolationError, match="workflow_history_outcome_check"):
        await raw_connection.execute(
            "INSERT INTO workflow_history (workflow_instance_uuid, event_name, to_state, outcome) "
            "VALUES ($1, 'go', 'done', 'maybe')",
            instance,
        )


# --- the optional tables' rules --------------------------------------------------------------


async def insert_receipt(
    conn: asyncpg.Connection,
    instance: uuid.UUID,
    key: str,
    *,
    fingerprint: str | None = None,
    result_json: str | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO workflow_event_idempotency "
        "(workflow_instance_uuid, idempotency_key, event_name, fingerprint, result_json) "
        "VALUES ($1, $2, 'pay', $3, $4::jsonb)",
        instance,
        key,
        fingerprint,
        result_json,
    )


async def insert_execution(
    conn: asyncpg.Connection,
    instance: uuid.UUID,
    key: str,
    *,
    status: str = "pending",
    revision: int = 0,
    execution_json: str = "{}",
) -> uuid.UUID:
    execution = uuid.uuid4()
    await conn.execute(
        "INSERT INTO workflow_executions (uuid, workflow_instance_uuid, idempotency_key, status, "
        "available_at, revision, execution_json) VALUES ($1, $2, $3, $4, now(), $5, $6::jsonb)",
        execution,
        instance,
        key,
        status,
        revision,
        execution_json,
    )
    return execution


async def test_deleting_an_instance_deletes_its_receipts_and_executions(
    raw_connection: asyncpg.Connection,
) -> None:
    doomed, kept = await insert_instance(raw_connection), await insert_instance(raw_connection)
    for instance in (doomed, kept):
        await insert_receipt(raw_connection, instance, "k-1", result_json='{"ok": true}')
        await insert_receipt(raw_connection, instance, "k-2")
        await insert_execution(raw_connection, instance, "k-1", status="completed")
        await insert_execution(raw_connection, instance, "k-2")
    await raw_connection.execute("DELETE FROM workflow_instances WHERE uuid = $1", doomed)
    for table in OPTIONAL_TABLES:
        rows = await raw_connection.fetch(f"SELECT workflow_instance_uuid FROM {table}")
        assert [r[0] for r in rows] == [kept, kept], table


# A row of each optional table breaking one check: the row kind, what differs from a valid row,
# the constraint that refuses it.
REJECTED = [
    pytest.param(
        "receipt",
        {"key": ""},
        "workflow_event_idempotency_idempotency_key_check",
        id="receipt-empty-key",
    ),
    pytest.param(
        "receipt",
        {"key": "k" * 257},
        "workflow_event_idempotency_idempotency_key_check",
        id="receipt-257-byte-key",
    ),
    pytest.param(
        "receipt",
        {"key": "é" * 128 + "k"},
        "workflow_event_idempotency_idempotency_key_check",
        id="receipt-129-char-257-byte-key",
    ),
    pytest.param(
        "receipt",
        {"fingerprint": ""},
        "workflow_event_idempotency_fingerprint_check",
        id="receipt-empty-fingerprint",
    ),
    pytest.param(
        "receipt",
        {"fingerprint": "f" * 257},
        "workflow_event_idempotency_fingerprint_check",
        id="receipt-257-byte-fingerprint",
    ),
    pytest.param(
        "receipt",
        {"result_json": "[]"},
        "workflow_event_idempotency_result_json_check",
        id="receipt-array-result",
    ),
    pytest.param(
        "receipt",
        {"result_json": '"done"'},
        "workflow_event_idempotency_result_json_check",
        id="receipt-string-result",
    ),
    pytest.param(
        "receipt",
        {"result_json": "null"},
        "workflow_event_idempotency_result_json_check",
        id="receipt-json-null-result",
    ),
    pytest.param(
        "execution",
        {"key": ""},
        "workflow_executions_idempotency_key_check",
        id="execution-empty-key",
    ),
    pytest.param(
        "execution",
        {"key": "k" * 257},
        "workflow_executions_idempotency_key_check",
        id="execution-257-byte-key",
    ),
    pytest.param(
        "execution",
        {"status": "done"},
        "workflow_executions_status_check",
        id="execution-unknown-status",
    ),
    pytest.param(
        "execution",
        {"status": "Pending"},
        "workflow_executions_status_check",
        id="execution-status-case",
    ),
    pytest.param(
        "execution",
        {"revision": -1},
        "workflow_executions_revision_check",
        id="execution-negative-revision",
    ),
    pytest.param(
        "execution",
        {"execution_json": "[1]"},
        "workflow_executions_execution_json_check",
        id="execution-array-json",
    ),
    pytest.param(
        "execution",
        {"execution_json": "null"},
        "workflow_executions_execution_json_check",
        id="execution-json-null",
    ),
]


@pytest.mark.parametrize(("kind", "values", "constraint"), REJECTED)
async def test_the_checks_reject(
    raw_connection: asyncpg.Connection, kind: str, values: dict[str, Any], constraint: str
) -> None:
    instance = await insert_instance(raw_connection)
    fields = dict(values)
    key = fields.pop("key", "k")
    with pytest.raises(asyncpg.CheckViolationError) as info:
        if kind == "receipt":
            await insert_receipt(raw_connection, instance, key, **fields)
        else:
            await insert_execution(raw_connection, instance, key, **fields)
    assert info.value.constraint_name == constraint


async def test_the_checks_accept_the_limits(raw_connection: asyncpg.Connection) -> None:
    instance = await insert_instance(raw_connection)
    longest = "é" * 128  # 128 characters, 256 bytes in UTF-8
    assert len(longest.encode()) == 256
    await insert_receipt(raw_connection, instance, longest, fingerprint=longest, result_json="{}")
    await insert_receipt(raw_connection, instance, "k")  # fingerprint and result may be NULL
    await insert_execution(raw_connection, instance, longest, status="completed", revision=0)
    for state in ("pending", "running", "parked", "completed", "cancelled"):
        other = await insert_instance(raw_connection)
        await insert_execution(raw_connection, other, "k", status=state, revision=2**31 - 1)
    keys = await raw_connection.fetch(
        "SELECT idempotency_key FROM workflow_event_idempotency WHERE workflow_instance_uuid = $1",
        instance,
    )
    assert {r[0] for r in keys} == {longest, "k"}


async def test_keys_are_unique_per_instance_and_one_execution_is_active(
    raw_connection: asyncpg.Connection,
) -> None:
    instance = await insert_instance(raw_connection)
    await insert_receipt(raw_connection, instance, "k")
    with pytest.raises(asyncpg.UniqueViolationError) as receipt:
        await insert_receipt(raw_connection, instance, "k")
    assert receipt.value.constraint_name == "workflow_event_idempotency_pkey"
    await insert_receipt(raw_connection, await insert_instance(raw_connection), "k")

    await insert_execution(raw_connection, instance, "a", status="completed")
    with pytest.raises(asyncpg.UniqueViolationError) as execution:
        await insert_execution(raw_connection, instance, "a", status="cancelled")
    assert execution.value.constraint_name == (
        "workflow_executions_workflow_instance_uuid_idempotency_key_key"
    )
    await insert_execution(raw_connection, instance, "b", status="parked")
    for key, state in (("c", "pending"), ("d", "running"), ("e", "parked")):
        with pytest.raises(asyncpg.UniqueViolationError) as active:
            await insert_execution(raw_connection, instance, key, status=state)
        assert active.value.constraint_name == "workflow_executions_active_idx"
    await insert_execution(raw_connection, instance, "f", status="cancelled")
    await raw_connection.execute(
        "UPDATE workflow_executions SET status = 'completed' WHERE idempotency_key = 'b'"
    )
    await insert_execution(raw_connection, instance, "g", status="pending")


async def test_007_and_008_down_drop_their_tables(conn: asyncpg.Connection) -> None:
    await apply(conn, target="006")
    before = await catalog(conn, "public")
    await apply(conn, target="008")
    await conn.execute(MIGRATION["008"].down)
    await conn.execute(MIGRATION["007"].down)
    assert await catalog(conn, "public") == before


# --- generator vs files ----------------------------------------------------------------------


async def test_generator_and_files_build_the_same_catalog(
    empty_database: str, other_empty_database: str, make_database: MakeDatabase
) -> None:
    files = await asyncpg.connect(empty_database)
    generated = await asyncpg.connect(other_empty_database)
    core_only = await asyncpg.connect(await make_database())
    try:
        await apply(files)
        await generated.execute(generate_migration_sql(**BOTH).up)
        await core_only.execute(generate_migration_sql().up)
        expected = await catalog(files, "public")
        assert await catalog(generated, "public") == expected
        # Without the flags: everything but the optional tables.
        assert await catalog(core_only, "public") == without_optional_tables(expected)
        await assert_upstream_optional_tables(generated)
    finally:
        await files.close()
        await generated.close()
        await core_only.close()

    # Both sides equal is only worth something if they are right.
    assert expected["tables"] == [
        "workflow_definitions",
        "workflow_event_idempotency",
        "workflow_executions",
        "workflow_history",
        "workflow_instances",
    ]
    # PostgreSQL 18 also lists NOT NULL constraints (contype 'n'); nullability is checked above.
    core = without_optional_tables(expected)
    assert {c[1] for c in core["constraints"] if c[2] != "n"} == {
        "workflow_definitions_pkey",
        "workflow_history_pkey",
        "workflow_history_workflow_instance_uuid_fkey",
        "workflow_history_outcome_check",
        "workflow_instances_pkey",
    }
    check = next(c for c in expected["constraints"] if c[1] == "workflow_history_outcome_check")
    assert "'guard-rejected'::text" in check[3]
    assert {i[1] for i in core["indexes"]} == {
        "workflow_definitions_pkey",
        "workflow_history_pkey",
        "workflow_history_instance_created_idx",
        "workflow_instances_pkey",
        "workflow_instances_workflow_name_idx",
        "workflow_instances_expires_at_idx",
        "workflow_instances_timeout_due_idx",
        "workflow_instances_timeout_parked_idx",
        "workflow_instances_definition_version_idx",
        "workflow_instances_workflow_due_idx",
        "workflow_instances_workflow_uuid_idx",
        "workflow_instances_workflow_state_idx",
        "workflow_instances_timeout_state_idx",
    }
    column_counts = {
        t: sum(1 for c in expected["columns"] if c[0] == t) for t in expected["tables"]
    }
    assert column_counts == {
        "workflow_instances": 15,
        "workflow_history": 12,
        "workflow_definitions": 5,
        "workflow_event_idempotency": 6,
        "workflow_executions": 8,
    }
    defaults = {(c[0], c[1]): c[4] for c in expected["columns"]}
    assert defaults[("workflow_history", "uuid")] == "gen_random_uuid()"
    assert defaults[("workflow_instances", "timeout_attempts")] == "0"
    assert defaults[("workflow_instances", "context_json")] == "'{}'::jsonb"
    # Only the keys and fingerprints of the optional tables have a collation of their own.
    assert sorted((c[0], c[1]) for c in expected["columns"] if c[5] == "C") == [
        ("workflow_event_idempotency", "fingerprint"),
        ("workflow_event_idempotency", "idempotency_key"),
        ("workflow_executions", "idempotency_key"),
    ]


async def test_standalone_generators_build_what_007_and_008_build(
    empty_database: str, other_empty_database: str
) -> None:
    files = await asyncpg.connect(empty_database)
    generated = await asyncpg.connect(other_empty_database)
    try:
        await apply(files, target="008")
        await apply(generated, target="006")
        before = await catalog(generated, "public")
        idempotency = generate_idempotency_migration_sql()
        durable = generate_durable_execution_migration_sql()
        await generated.execute(idempotency.up)
        await generated.execute(durable.up)
        assert await catalog(generated, "public") == await catalog(files, "public")
        await assert_upstream_optional_tables(generated)
        instance = await insert_instance(generated)
        await insert_receipt(generated, instance, "k")
        await insert_execution(generated, instance, "k")
        await generated.execute(durable.down)
        await generated.execute(idempotency.down)
        assert await catalog(generated, "public") == before
    finally:
        await files.close()
        await generated.close()


@pytest.mark.parametrize("flags", [{}, BOTH], ids=["core", "with-optional-tables"])
async def test_generator_down_drops_everything(
    conn: asyncpg.Connection, flags: OptionalTables
) -> None:
    sql = generate_migration_sql(**flags)
    await conn.execute(sql.up)
    instance = await insert_instance(conn)
    if flags:
        await insert_receipt(conn, instance, "k")
        await insert_execution(conn, instance, "k")
    await conn.execute(sql.down)
    assert await catalog(conn, "public") == {
        "tables": [], "columns": [], "constraints": [], "indexes": []
    }  # fmt: skip


async def test_generator_with_a_schema(empty_database: str, other_empty_database: str) -> None:
    plain = await asyncpg.connect(empty_database)
    qualified = await asyncpg.connect(other_empty_database)
    try:
        await plain.execute(generate_migration_sql(**BOTH).up)
        sql = generate_migration_sql(schema="duraflows_it", **BOTH)
        await qualified.execute(sql.up)
        assert (await catalog(qualified, "public"))["tables"] == []
        assert await catalog(qualified, "duraflows_it") == await catalog(plain, "public")
        await assert_upstream_optional_tables(qualified, "duraflows_it")
        instance = await insert_instance(qualified, '"duraflows_it".')
        await qualified.execute(
            'INSERT INTO "duraflows_it".workflow_event_idempotency '
            "(workflow_instance_uuid, idempotency_key, event_name) VALUES ($1, 'k', 'e')",
            instance,
        )
        await qualified.execute(sql.down)
        assert (await catalog(qualified, "duraflows_it"))["tables"] == []
        # CREATE SCHEMA IF NOT EXISTS: a schema that already exists is fine.
        await qualified.execute(generate_migration_sql(schema="duraflows_it").up)
        # The standalone generators add the optional tables to it.
        await qualified.execute(generate_idempotency_migration_sql(schema="duraflows_it").up)
        await qualified.execute(generate_durable_execution_migration_sql(schema="duraflows_it").up)
        assert (await catalog(qualified, "public"))["tables"] == []
        assert await catalog(qualified, "duraflows_it") == await catalog(plain, "public")
        await assert_upstream_optional_tables(qualified, "duraflows_it")
    finally:
        await plain.close()
        await qualified.close()


async def test_uuidv7_generator_output(pg_server: PgServer, conn: asyncpg.Connection) -> None:
    # Gated on the server itself: uuidv7() is there exactly from PostgreSQL 18 on, so this runs
    # on every 18 and skips (saying why) on older ones only.
    has_uuidv7 = await conn.fetchval("SELECT to_regprocedure('uuidv7()') IS NOT NULL")
    assert has_uuidv7 == (pg_server.version_num >= 180000), pg_server.version
    if not has_uuidv7:
        pytest.skip(f"uuidv7() needs PostgreSQL 18, the server is {pg_server.version}")
    await conn.execute(generate_migration_sql(uuid_strategy="uuidv7").up)
    instance = await insert_instance(conn)
    inserted = [
        await conn.fetchval(
            "INSERT INTO workflow_history (workflow_instance_uuid, event_name, to_state, outcome) "
            "VALUES ($1, $2, 'x', 'success') RETURNING uuid",
            instance,
            f"e{i}",
        )
        for i in range(5)
    ]
    assert all(u.version == 7 for u in inserted)
    assert inserted == sorted(inserted)
    default = await conn.fetchval(
        "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a "
        "ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
        "WHERE d.adrelid = 'workflow_history'::regclass AND a.attname = 'uuid'"
    )
    assert default == "uuidv7()"


# --- the real dbmate tool --------------------------------------------------------------------
# dbmate's binary from its npm package (@dbmate/<platform>), fetched once by
# scripts/pg_binaries.py into its cache: later sessions need no network. When it cannot be had,
# the test fails (with the fetcher's message) rather than skipping.


@pytest.fixture(scope="session")
def dbmate_binary() -> str:
    fetcher = REPO / "scripts" / "pg_binaries.py"
    try:
        result = subprocess.run(
            [sys.executable, str(fetcher), "dbmate"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"cannot run {fetcher}: {exc}", pytrace=False)
    binary = result.stdout.strip()
    if result.returncode != 0 or not binary or not Path(binary).is_file():
        pytest.fail(
            f"the dbmate binary of the npm package could not be fetched "
            f"(`{fetcher.name} dbmate` exit {result.returncode}):\n{result.stderr.strip()}",
            pytrace=False,
        )
    return binary


# A URL's password: what lies between "scheme://user:" and the "@" before the host.
_URL_PASSWORD = re.compile(r"(://[^:/?#@\s]*:)[^@/?#\s]*@")


def _redact(text: str, *secrets: str) -> str:
    """``text`` with the password of every URL in it, and each of ``secrets``, shown as ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _URL_PASSWORD.sub(r"\1***@", text)


async def _run(argv: list[str], cwd: Path, *, database_url: str | None = None) -> str:
    """Run a command with DBMATE_* unset and DATABASE_URL set to ``database_url`` (unset when
    None); its output, once it exited 0.

    The URL, password and all, goes to the command in its environment only: a command line is
    readable by every user of the machine (``ps``). A failure's message redacts the password.
    """
    password = unquote(urlsplit(database_url).password or "") if database_url else ""
    if password and any(password in arg for arg in argv):
        pytest.fail("a password in argv", pytrace=False)  # not an assert: it would show argv
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("DBMATE_") and k != "DATABASE_URL"
    }
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,  # an empty directory: no stray .env for dbmate to load
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        # pytrace=False: no traceback, so no local variable (the URL) in the report, even with -l.
        report = f"{argv[1:]} exited with {process.returncode}\n{out.decode()}\n{err.decode()}"
        pytest.fail(_redact(report, password), pytrace=False)
    return out.decode()


class Tools:
    """dbmate and ``duraflows-pg`` on one database, each reporting what it sees as applied."""

    def __init__(self, dbmate: str, dsn: str, cwd: Path) -> None:
        self.dbmate_binary, self.dsn, self.cwd = dbmate, dsn, cwd

    def __repr__(self) -> str:
        return f"Tools(dsn={_redact(self.dsn)!r})"

    async def dbmate(self, *args: str) -> str:
        # dbmate reads its URL from DATABASE_URL (its --env default) when --url is not given.
        url = self.dsn + ("&" if "?" in self.dsn else "?") + "sslmode=disable"
        migrations_dir = str(REPO / "migrations")
        return await _run(
            [self.dbmate_binary, "--migrations-dir", migrations_dir, "--no-dump-schema", *args],
            self.cwd,
            database_url=url,
        )

    async def cli(self, *args: str) -> str:
        # duraflows-pg reads DATABASE_URL when --database-url is not given.
        script = Path(sys.executable).with_name("duraflows-pg")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "duraflows_pg_async"]
        return await _run([*command, "migrate", *args], self.cwd, database_url=self.dsn)

    async def dbmate_status(self) -> dict[str, bool]:
        """``dbmate status``: file name -> applied."""
        report = await self.dbmate("status")
        found = re.findall(r"^\[([ X])\] (\S+)$", report, re.MULTILINE)
        assert found, report
        return {name: mark == "X" for mark, name in found}

    async def cli_status(self) -> dict[str, bool]:
        """``duraflows-pg migrate status --json``: file name -> applied."""
        entries = json.loads(await self.cli("status", "--json"))
        return {f"{e['version']}_{e['name']}.sql": e["applied"] for e in entries}

    async def agree(self, applied: list[str]) -> None:
        """Both tools list every shipped file, and see exactly ``applied`` as applied."""
        expected = {
            path.name: path.name[:3] in applied
            for path in sorted((REPO / "migrations").glob("*.sql"))
        }
        assert len(expected) == len(ALL_VERSIONS)
        assert await self.dbmate_status() == expected
        assert await self.cli_status() == expected


@pytest.fixture
def tools(dbmate_binary: str, empty_database: str, tmp_path: Path) -> Tools:
    return Tools(dbmate_binary, empty_database, tmp_path)


async def test_a_failing_dbmate_or_cli_run_shows_no_password(tmp_path: Path) -> None:
    url = "postgresql://postgres:Pw-0f_the-server@127.0.0.1:1/db?sslmode=disable"
    echo = "import os, sys; print(os.environ['DATABASE_URL']); sys.exit(os.environ['DATABASE_URL'])"
    with pytest.raises(pytest.fail.Exception) as failed:
        await _run([sys.executable, "-c", echo], tmp_path, database_url=url)
    message = str(failed.value)
    assert "Pw-0f_the-server" not in message
    assert message.count("postgresql://postgres:***@127.0.0.1:1/db") == 2  # stdout and stderr
    # The URL reaches the command in its environment, never on its command line.
    with pytest.raises(pytest.fail.Exception, match="a password in argv"):
        await _run([sys.executable, "-c", "pass", url], tmp_path, database_url=url)
    assert _redact("postgresql://u:p:w@h/d and postgres://v:x@h") == (
        "postgresql://u:***@h/d and postgres://v:***@h"
    )
    assert "Pw-0f" not in repr(Tools("dbmate", url, tmp_path))


async def test_dbmate_applies_and_duraflows_pg_agrees(
    tools: Tools, conn: asyncpg.Connection, other_empty_database: str
) -> None:
    await tools.agree([])
    report = await tools.dbmate("up")
    assert all(f"Applying: {path.name}" in report for path in (REPO / "migrations").glob("*.sql"))
    await tools.agree(ALL_VERSIONS)
    assert "up to date" in await tools.cli("up")
    assert await recorded_versions(conn) == ALL_VERSIONS
    await assert_upstream_optional_tables(conn)

    # dbmate built the schema that this package's runner builds.
    ours = await asyncpg.connect(other_empty_database)
    try:
        await apply(ours)
        assert await catalog(conn, "public") == await catalog(ours, "public")
    finally:
        await ours.close()

    await tools.dbmate("rollback")
    await tools.agree(ALL_VERSIONS[:-1])
    await tools.dbmate("rollback")
    await tools.agree(ALL_VERSIONS[:-2])
    # What dbmate left half-done, this package finishes.
    up = await tools.cli("up")
    assert up.splitlines() == [f"applied {m.version}_{m.name}" for m in list_migrations()[-2:]]
    await tools.agree(ALL_VERSIONS)


async def test_duraflows_pg_applies_and_dbmate_agrees(
    tools: Tools, conn: asyncpg.Connection
) -> None:
    assert versions(await apply(conn, target="004")) == ["001", "002", "003", "004"]
    await tools.agree(ALL_VERSIONS[:4])
    up = await tools.cli("up")
    assert up.splitlines() == [f"applied {m.version}_{m.name}" for m in list_migrations()[4:]]
    await tools.agree(ALL_VERSIONS)
    assert "Applying" not in await tools.dbmate("up")  # nothing left for dbmate to do
    await tools.agree(ALL_VERSIONS)

    assert "rolled back 101_" in await tools.cli("down", "--yes")
    await tools.agree(ALL_VERSIONS[:-1])
    report = await tools.dbmate("up")
    assert "Applying: 101_" in report
    assert "Applying: 006_" not in report
    await tools.agree(ALL_VERSIONS)

    # dbmate rolls back, in turn, what this package applied: down to nothing, then up again.
    for step in range(len(ALL_VERSIONS)):
        report = await tools.dbmate("rollback")
        assert f"Rolling back: {ALL_VERSIONS[-1 - step]}_" in report
    await tools.agree([])
    assert await catalog(conn, "public") == {
        "tables": [], "columns": [], "constraints": [], "indexes": []
    }  # fmt: skip
    up = await tools.cli("up")
    assert len(up.splitlines()) == len(ALL_VERSIONS)
    await tools.agree(ALL_VERSIONS)


async def test_dbmate_adds_007_and_008_to_a_database_of_the_previous_release(
    tools: Tools, conn: asyncpg.Connection, other_empty_database: str
) -> None:
    await apply(conn, target="006")
    await conn.execute(MIGRATION["100"].up)
    await conn.execute("INSERT INTO schema_migrations (version) VALUES ('100')")
    await tools.agree(PREVIOUS_RELEASE)

    # dbmate applies pending files older than the newest applied one, in file order.
    report = await tools.dbmate("up")
    assert re.findall(r"^Applying: (\S+)$", report, re.MULTILINE) == [
        "007_event_idempotency.sql",
        "008_durable_execution.sql",
        "101_instance_listing.sql",
    ]
    await tools.agree(ALL_VERSIONS)
    await assert_upstream_optional_tables(conn)
    ours = await asyncpg.connect(other_empty_database)
    try:
        await apply(ours)
        assert await catalog(conn, "public") == await catalog(ours, "public")
    finally:
        await ours.close()

    # Both tools roll back the newest version first: 101, 100, then 008; each finishes the
    # other's.
    assert "Rolling back: 101_" in await tools.dbmate("rollback")
    assert "Rolling back: 100_" in await tools.dbmate("rollback")
    assert "rolled back 008_durable_execution" in await tools.cli("down", "--yes")
    await tools.agree(ALL_VERSIONS[:7])
    assert not await table_exists(conn, "workflow_executions")
    assert (await tools.cli("up")).splitlines() == [
        "applied 008_durable_execution",
        "applied 100_sweep_workflow_index",
        "applied 101_instance_listing",
    ]
    await tools.agree(ALL_VERSIONS)
