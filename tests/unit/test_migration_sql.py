"""The packaged dbmate files and the fresh-install generator, without a database."""

from __future__ import annotations

import importlib.resources
import re
import tomllib
from pathlib import Path
from typing import Any, TypedDict

import pytest

from duraflows_pg_async.errors import ConfigurationError, InvalidArgumentError
from duraflows_pg_async.migrations import (
    Migration,
    MigrationSql,
    _load_directory,
    _migrations_directory,
    _parse_migration,
    generate_durable_execution_migration_sql,
    generate_idempotency_migration_sql,
    generate_migration_sql,
    list_migrations,
)

REPO = Path(__file__).resolve().parents[2]
EXPECTED = [
    ("001", "workflow_core"),
    ("002", "replace_trigger_with_metadata"),
    ("003", "event_guards"),
    ("004", "definition_versions"),
    ("005", "timeout_retries"),
    ("006", "definition_version_index"),
    ("007", "event_idempotency"),
    ("008", "durable_execution"),
    ("100", "sweep_workflow_index"),
    ("101", "instance_listing"),
]
OPTIONAL_TABLES = ("workflow_event_idempotency", "workflow_executions")


class OptionalTables(TypedDict, total=False):
    include_idempotency: bool
    include_durable_execution: bool


def _normalise(sql: str) -> str:
    return re.sub(r"\s+", " ", sql)


# --- generator: uuid strategy ------------------------------------------------------------------


def test_default_strategy_is_gen_random_uuid_and_never_mentions_uuidv7() -> None:
    sql = generate_migration_sql()
    assert isinstance(sql, MigrationSql)
    assert "DEFAULT gen_random_uuid()" in sql.up
    assert "uuidv7" not in sql.up
    assert "uuidv7" not in sql.down
    assert sql == generate_migration_sql(uuid_strategy="gen_random_uuid")


def test_uuidv7_strategy_uses_only_uuidv7() -> None:
    up = generate_migration_sql(uuid_strategy="uuidv7").up
    assert "DEFAULT uuidv7()" in up
    assert "gen_random_uuid" not in up


@pytest.mark.parametrize("strategy", ["UUIDV7", "uuid_generate_v4", "", "uuidv7()", None, 7])
def test_unknown_strategy_is_rejected_naming_the_allowed_values(strategy: object) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        generate_migration_sql(uuid_strategy=strategy)  # type: ignore[arg-type]
    assert "gen_random_uuid" in str(info.value)
    assert "uuidv7" in str(info.value)


# --- generator: content ------------------------------------------------------------------------


def test_up_creates_the_three_tables_and_ten_indexes() -> None:
    up = _normalise(generate_migration_sql().up)
    for table in ("workflow_instances", "workflow_history", "workflow_definitions"):
        assert f"CREATE TABLE {table} (" in up
    assert "CREATE SCHEMA" not in up
    assert "IF NOT EXISTS" not in up
    assert "UNIQUE INDEX" not in up
    for table in OPTIONAL_TABLES:
        assert table not in up
    indexes = re.findall(r"CREATE INDEX (\w+) ON (\w+)", up)
    assert indexes == [
        ("workflow_instances_workflow_name_idx", "workflow_instances"),
        ("workflow_instances_expires_at_idx", "workflow_instances"),
        ("workflow_instances_timeout_due_idx", "workflow_instances"),
        ("workflow_instances_timeout_parked_idx", "workflow_instances"),
        ("workflow_instances_definition_version_idx", "workflow_instances"),
        ("workflow_instances_workflow_due_idx", "workflow_instances"),
        ("workflow_instances_workflow_uuid_idx", "workflow_instances"),
        ("workflow_instances_workflow_state_idx", "workflow_instances"),
        ("workflow_instances_timeout_state_idx", "workflow_instances"),
        ("workflow_history_instance_created_idx", "workflow_history"),
    ]


def test_instance_columns_in_order() -> None:
    up = generate_migration_sql().up
    body = up.split("CREATE TABLE workflow_instances (", 1)[1].split(");", 1)[0]
    columns = [line.split()[0] for line in body.strip().splitlines()]
    assert columns == [
        "uuid",
        "workflow_name",
        "current_state",
        "version",
        "definition_version",
        "expires_at",
        "last_transition_at",
        "context_json",
        "metadata_json",
        "created_at",
        "updated_at",
        "timeout_attempts",
        "timeout_retry_at",
        "timeout_last_error",
        "timeout_parked_at",
    ]


def test_timeout_columns_and_their_partial_indexes() -> None:
    up = _normalise(generate_migration_sql().up)
    assert "timeout_attempts integer NOT NULL DEFAULT 0," in up
    assert "timeout_retry_at timestamptz NULL," in up
    assert "timeout_last_error text NULL," in up
    assert "timeout_parked_at timestamptz NULL );" in up
    assert (
        "workflow_instances_timeout_due_idx ON workflow_instances "
        "((coalesce(timeout_retry_at, expires_at))) "
        "WHERE expires_at IS NOT NULL AND timeout_parked_at IS NULL;"
    ) in up
    assert (
        "workflow_instances_timeout_parked_idx ON workflow_instances (timeout_parked_at) "
        "WHERE timeout_parked_at IS NOT NULL;"
    ) in up
    assert (
        "workflow_instances_definition_version_idx ON workflow_instances "
        "(workflow_name, definition_version);"
    ) in up


def test_history_has_the_three_value_check_and_later_columns() -> None:
    up = _normalise(generate_migration_sql().up)
    assert (
        "CONSTRAINT workflow_history_outcome_check "
        "CHECK (outcome IN ('success', 'failure', 'guard-rejected'))"
    ) in up
    assert "rejected_by text NULL," in up
    assert "trigger_metadata_json jsonb NOT NULL DEFAULT '{}'::jsonb," in up
    assert "REFERENCES workflow_instances (uuid)" in up
    assert "ON DELETE" not in up
    assert up.count("definition_version integer NULL") == 2
    assert "triggered_by" not in up


def test_definitions_table() -> None:
    up = _normalise(generate_migration_sql().up)
    assert "workflow_name text NOT NULL, version integer NOT NULL," in up
    assert "content_hash text NOT NULL," in up
    assert "definition_json jsonb NOT NULL," in up
    assert "registered_at timestamptz NOT NULL DEFAULT now()," in up
    assert "PRIMARY KEY (workflow_name, version)" in up


def test_down_drops_dependents_first() -> None:
    assert generate_migration_sql().down.splitlines() == [
        "DROP TABLE IF EXISTS workflow_definitions;",
        "DROP TABLE IF EXISTS workflow_history;",
        "DROP TABLE IF EXISTS workflow_instances;",
    ]


def test_output_is_built_once_per_option_set() -> None:
    assert generate_migration_sql() is generate_migration_sql()
    assert generate_migration_sql(schema="a") is generate_migration_sql(schema="a")
    assert generate_migration_sql(schema="a") != generate_migration_sql(schema="b")
    both: OptionalTables = {"include_idempotency": True, "include_durable_execution": True}
    assert generate_migration_sql(**both) is generate_migration_sql(**both)


def test_a_str_subclass_schema_reaches_the_sql_as_a_plain_str() -> None:
    class Loud(str):
        def __str__(self) -> str:
            return "LOUD"

        def __format__(self, spec: str) -> str:
            return "LOUD"

    sql = generate_durable_execution_migration_sql(schema=Loud("quiet"))
    assert '"quiet".workflow_executions' in sql.up
    assert "LOUD" not in sql.up
    assert "LOUD" not in generate_migration_sql(schema=Loud("quiet"), include_idempotency=True).up


# --- generator: the optional tables ------------------------------------------------------------


def test_both_optional_tables_follow_the_core_schema_in_order() -> None:
    core = generate_migration_sql()
    sql = generate_migration_sql(include_idempotency=True, include_durable_execution=True)
    by_version = {m.version: m for m in list_migrations()}
    # The files' own text after the core schema, idempotency first, each after a blank line.
    assert sql.up == "\n".join([core.up, by_version["007"].up, by_version["008"].up])
    tables = re.findall(r"CREATE TABLE (\w+) \(", sql.up)
    assert tables == [
        "workflow_instances",
        "workflow_history",
        "workflow_definitions",
        "workflow_event_idempotency",
        "workflow_executions",
    ]
    assert re.findall(r"CREATE (?:UNIQUE )?INDEX (\w+) ON (\w+)", _normalise(sql.up))[-2:] == [
        ("workflow_executions_active_idx", "workflow_executions"),
        ("workflow_executions_due_idx", "workflow_executions"),
    ]
    assert "IF NOT EXISTS" not in sql.up
    # Dependents first: the optional tables reference workflow_instances.
    assert sql.down.splitlines() == [
        "DROP TABLE IF EXISTS workflow_executions;",
        "DROP TABLE IF EXISTS workflow_event_idempotency;",
        "DROP TABLE IF EXISTS workflow_definitions;",
        "DROP TABLE IF EXISTS workflow_history;",
        "DROP TABLE IF EXISTS workflow_instances;",
    ]


@pytest.mark.parametrize(
    ("flags", "table"),
    [
        ({"include_idempotency": True}, "workflow_event_idempotency"),
        ({"include_durable_execution": True}, "workflow_executions"),
    ],
)
def test_each_optional_table_alone(flags: OptionalTables, table: str) -> None:
    core = generate_migration_sql(uuid_strategy="uuidv7")
    sql = generate_migration_sql(uuid_strategy="uuidv7", **flags)
    assert sql.up.startswith(core.up + "\n")
    assert re.findall(r"CREATE TABLE (\w+) \(", sql.up)[3:] == [table]
    assert sql.down == f"DROP TABLE IF EXISTS {table};\n" + core.down


def test_the_flags_default_to_off() -> None:
    assert generate_migration_sql() == generate_migration_sql(
        include_idempotency=False, include_durable_execution=False
    )


@pytest.mark.parametrize("flag", ["include_idempotency", "include_durable_execution"])
@pytest.mark.parametrize("value", [0, 1, None, "yes", "False", 1.0])
def test_flags_take_only_a_bool(flag: str, value: object) -> None:
    with pytest.raises(InvalidArgumentError, match=f"^{flag} must be True or False"):
        generate_migration_sql(**{flag: value})  # type: ignore[arg-type]


def test_standalone_generators_are_the_files() -> None:
    by_version = {m.version: m for m in list_migrations()}
    idempotency = generate_idempotency_migration_sql()
    durable = generate_durable_execution_migration_sql()
    assert isinstance(idempotency, MigrationSql)
    assert idempotency == (by_version["007"].up, by_version["007"].down)
    assert durable == (by_version["008"].up, by_version["008"].down)
    assert idempotency.down == "DROP TABLE IF EXISTS workflow_event_idempotency;\n"
    assert durable.down == "DROP TABLE IF EXISTS workflow_executions;\n"
    assert generate_idempotency_migration_sql() is idempotency


def test_standalone_generators_with_a_schema() -> None:
    for generate, table in (
        (generate_idempotency_migration_sql, "workflow_event_idempotency"),
        (generate_durable_execution_migration_sql, "workflow_executions"),
    ):
        sql = generate(schema="tenant_a")
        assert "CREATE SCHEMA" not in sql.up
        assert f'CREATE TABLE "tenant_a".{table} (' in sql.up
        assert 'REFERENCES "tenant_a".workflow_instances (uuid) ON DELETE CASCADE' in sql.up
        assert sql.down == f'DROP TABLE IF EXISTS "tenant_a".{table};\n'
        _assert_fully_qualified(sql.up, "tenant_a")


@pytest.mark.parametrize(
    "generate", [generate_idempotency_migration_sql, generate_durable_execution_migration_sql]
)
@pytest.mark.parametrize("schema", ["a;drop", "", 'quo"te', 3])
def test_standalone_generators_reject_bad_schema_names(generate: Any, schema: object) -> None:
    with pytest.raises(InvalidArgumentError, match="schema"):
        generate(schema=schema)


def test_optional_files_say_what_needs_them() -> None:
    first_lines = {
        path.name[:3]: path.read_text(encoding="utf-8").splitlines()[0]
        for path in (REPO / "migrations").glob("00[78]_*.sql")
    }
    assert "optional" in first_lines["007"]
    assert "idempotency=True" in first_lines["007"]
    assert "optional" in first_lines["008"]
    assert "durable_execution=True" in first_lines["008"]


# --- generator: schema -------------------------------------------------------------------------


def _assert_fully_qualified(sql: str, schema: str) -> None:
    """Every table name in the code lines of ``sql`` is qualified, no index name is."""
    code = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    for name, table in re.findall(r"CREATE (?:UNIQUE )?INDEX (\S+)\s+ON (\S+)", code):
        assert not name.startswith('"'), "index names are never qualified"
        assert table.startswith(f'"{schema}".workflow_')
    code = code.replace(f'"{schema}".workflow_', f'"{schema}".')
    assert not re.search(
        r"\bworkflow_(instances|history|definitions|event_idempotency|executions)\b", code
    )


def test_schema_qualifies_every_table_reference() -> None:
    sql = generate_migration_sql(schema="duraflows_app", uuid_strategy="uuidv7")
    up = _normalise(sql.up)
    code = "\n".join(line for line in sql.up.splitlines() if not line.startswith("--"))
    assert code.lstrip().startswith('CREATE SCHEMA IF NOT EXISTS "duraflows_app";\n')
    for table in ("workflow_instances", "workflow_history", "workflow_definitions"):
        assert f'CREATE TABLE "duraflows_app".{table} (' in up
    assert 'REFERENCES "duraflows_app".workflow_instances (uuid)' in up
    indexes = re.findall(r"CREATE INDEX (\S+) ON (\S+)", up)
    assert len(indexes) == 10
    for name, table in indexes:
        assert not name.startswith('"'), "index names are never qualified"
        assert table.startswith('"duraflows_app".workflow_')
    # No table name is left unqualified.
    code = code.replace('"duraflows_app".workflow_', '"duraflows_app".')
    assert not re.search(r"\bworkflow_(instances|history|definitions)\b", code)
    assert sql.down.splitlines() == [
        'DROP TABLE IF EXISTS "duraflows_app".workflow_definitions;',
        'DROP TABLE IF EXISTS "duraflows_app".workflow_history;',
        'DROP TABLE IF EXISTS "duraflows_app".workflow_instances;',
    ]


def test_schema_qualifies_the_optional_tables_too() -> None:
    sql = generate_migration_sql(
        schema="duraflows_app", include_idempotency=True, include_durable_execution=True
    )
    assert sql.up.count('CREATE SCHEMA IF NOT EXISTS "duraflows_app";') == 1
    for table in OPTIONAL_TABLES:
        assert f'CREATE TABLE "duraflows_app".{table} (' in sql.up
    assert sql.up.count('REFERENCES "duraflows_app".workflow_instances (uuid)') == 3
    _assert_fully_qualified(sql.up, "duraflows_app")
    assert sql.down.splitlines()[:2] == [
        'DROP TABLE IF EXISTS "duraflows_app".workflow_executions;',
        'DROP TABLE IF EXISTS "duraflows_app".workflow_event_idempotency;',
    ]
    # Comments are left as written; only SQL is qualified.
    assert '(COLLATE "C")' in sql.up


@pytest.mark.parametrize(
    "schema",
    ["a;drop", "1abc", "a" * 64, "", "has space", 'quo"te', "dash-ed", "é", 3, b"abc"],
)
def test_bad_schema_names_are_rejected(schema: object) -> None:
    with pytest.raises(InvalidArgumentError, match="schema"):
        generate_migration_sql(schema=schema)  # type: ignore[arg-type]


def test_longest_allowed_schema_name() -> None:
    name = "s" * 63
    assert f'CREATE TABLE "{name}".workflow_instances' in generate_migration_sql(schema=name).up


# --- the packaged dbmate files -----------------------------------------------------------------


def test_list_migrations_in_version_order() -> None:
    migrations = list_migrations()
    assert [(m.version, m.name) for m in migrations] == EXPECTED
    for m in migrations:
        assert isinstance(m, Migration)
        assert m.filename == f"{m.version}_{m.name}.sql"


def test_list_migrations_returns_a_fresh_list() -> None:
    first = list_migrations()
    first.clear()
    assert len(list_migrations()) == len(EXPECTED)


def test_every_file_has_an_up_and_a_down_section() -> None:
    for m in list_migrations():
        assert m.up.strip(), m.filename
        assert m.down.strip(), m.filename
        assert "migrate:" not in m.up
        assert "migrate:" not in m.down


def test_every_repository_file_is_dbmate_shaped() -> None:
    for path in sorted((REPO / "migrations").glob("*.sql")):
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("-- "), path.name
        assert "migrate:" not in lines[0], path.name
        assert lines[1] == "-- migrate:up", path.name
        assert lines.count("-- migrate:down") == 1, path.name


def test_idempotent_migrations_say_so() -> None:
    by_version = {m.version: m for m in list_migrations()}
    assert "IF EXISTS" in by_version["002"].up  # the DO block only acts on the legacy columns
    up_005 = _normalise(by_version["005"].up)
    assert up_005.count("ADD COLUMN IF NOT EXISTS") == 4
    assert up_005.count("CREATE INDEX IF NOT EXISTS") == 2
    assert "CREATE INDEX IF NOT EXISTS" in by_version["006"].up
    assert "DROP INDEX IF EXISTS" in by_version["006"].down
    assert "CREATE INDEX IF NOT EXISTS" in by_version["100"].up
    assert "DROP INDEX IF EXISTS" in by_version["100"].down
    assert _normalise(by_version["101"].up).count("CREATE INDEX IF NOT EXISTS") == 3
    assert by_version["101"].down.count("DROP INDEX IF EXISTS") == 3


def test_wheel_config_ships_the_directory_the_loader_reads() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    force_include = config["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert force_include["migrations"] == "duraflows_pg_async/_migrations"


# --- the dbmate parser -------------------------------------------------------------------------


def test_parser_splits_sections() -> None:
    m = _parse_migration(
        "042_thing.sql",
        "-- what it does\n-- migrate:up\nCREATE TABLE t (x int);\n\n"
        "-- migrate:down\nDROP TABLE t;\n",
    )
    assert m == Migration(
        "042", "thing", "042_thing.sql", "CREATE TABLE t (x int);\n", "DROP TABLE t;\n"
    )


def test_parser_accepts_a_file_without_down() -> None:
    m = _parse_migration("001_x.sql", "-- migrate:up\nSELECT 1;\n")
    assert m.down == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("CREATE TABLE t (x int);\n", "no '-- migrate:up'"),
        ("-- migrate:down\nDROP TABLE t;\n", "no '-- migrate:up'"),
        ("SELECT 1;\n-- migrate:up\nSELECT 2;\n", "before '-- migrate:up'"),
        ("-- migrate:down\nSELECT 1;\n-- migrate:up\nSELECT 2;\n", "comes before"),
        ("-- migrate:up\nSELECT 1;\n-- migrate:up\nSELECT 2;\n", "twice"),
        ("-- migrate:up transaction:false\nSELECT 1;\n", "options"),
    ],
)
def test_parser_rejects_malformed_files(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        _parse_migration("001_x.sql", text)


def test_loader_ignores_other_files_and_rejects_duplicate_versions(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("not a migration")
    (tmp_path / "notes.sql").write_text("ignored: dbmate only takes files starting with a digit")
    (tmp_path / "010_b.sql").write_text("-- migrate:up\nSELECT 10;\n")
    (tmp_path / "009_a.sql").write_text("-- migrate:up\nSELECT 9;\n")
    assert [m.version for m in _load_directory(tmp_path)] == ["009", "010"]
    (tmp_path / "009_c.sql").write_text("-- migrate:up\nSELECT 9;\n")
    with pytest.raises(ConfigurationError, match="share version 009"):
        _load_directory(tmp_path)


def test_loader_prefers_the_packaged_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.resources, "files", lambda package: tmp_path)
    assert Path(str(_migrations_directory())) == REPO / "migrations"
    (tmp_path / "_migrations").mkdir()
    assert Path(str(_migrations_directory())) == tmp_path / "_migrations"
