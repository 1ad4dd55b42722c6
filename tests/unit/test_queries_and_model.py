"""SQL rendering and the model's JSON shapes."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from duraflows_pg_async import CommandResult
from duraflows_pg_async._pg.queries import Queries, render_queries
from duraflows_pg_async.errors import InvalidArgumentError

PACKAGE = Path(__file__).parents[2] / "duraflows_pg_async"


def test_unqualified_and_qualified_rendering() -> None:
    plain = render_queries(None)
    tenant = render_queries("tenant_a")
    for field in fields(Queries):
        assert '"tenant_a".' in getattr(tenant, field.name), field.name
        assert '"' not in getattr(plain, field.name).replace('\\"', ""), field.name


def test_rendering_happens_once_per_schema() -> None:
    assert render_queries("tenant_b") is render_queries("tenant_b")


def test_bad_schema_is_refused() -> None:
    with pytest.raises(InvalidArgumentError):
        render_queries('x"; drop table workflow_instances; --')


def test_parameters_are_numbered_without_gaps() -> None:
    for field in fields(Queries):
        sql = getattr(render_queries(None), field.name)
        numbers = sorted({int(n) for n in re.findall(r"\$(\d+)", sql)})
        assert numbers == list(range(1, len(numbers) + 1)), field.name


def test_every_query_is_used_by_a_store() -> None:
    # The stores, and the wake-ups' nearest-due queries.
    paths = [*(PACKAGE / "_pg").glob("*store*.py"), PACKAGE / "_pg" / "wakeups.py"]
    sources = "".join(p.read_text() for p in paths)
    for field in fields(Queries):
        assert f"self._q.{field.name}" in sources, f"query {field.name} is never used"


def test_find_expired_shape() -> None:
    sql = render_queries(None).find_expired
    assert "FOR UPDATE SKIP LOCKED" in sql
    assert "ORDER BY coalesce(timeout_retry_at, expires_at)" in sql
    assert sql.index("LIMIT $1") < sql.index("FOR UPDATE")


def test_update_never_writes_metadata() -> None:
    assert "metadata_json" not in render_queries(None).update_instance


def test_command_result_json_shape_leaves_out_unset_fields() -> None:
    assert CommandResult(ok=True).to_json() == {"ok": True}
    full = CommandResult(ok=False, code="E", message="m", metadata={"a": 1}, error={"name": "X"})
    assert full.to_json() == {
        "ok": False,
        "code": "E",
        "message": "m",
        "metadata": {"a": 1},
        "error": {"name": "X"},
    }
    assert CommandResult.from_json(full.to_json()) == full
