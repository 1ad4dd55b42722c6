"""The checks of writes the runtime built itself (``checked_built_instance``,
``checked_built_record``): what commands hand back is refused exactly as ``update`` and
``append`` refuse it, naming the instance and the key path; the rest is trusted."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from duraflows_pg_async._core.model import CommandResult, HistoryRecord
from duraflows_pg_async._core.store_checks import (
    checked_built_instance,
    checked_built_record,
    checked_record,
    checked_update,
)
from duraflows_pg_async.errors import InvalidArgumentError
from duraflows_pg_async.testing import make_instance

INT4_MAX = 2**31 - 1


def record(results: list[CommandResult]) -> HistoryRecord:
    instance = make_instance()
    return HistoryRecord(
        workflow_instance_uuid=instance.uuid,
        from_state="a",
        event_name="go",
        to_state="b",
        outcome="success",
        command_results=results,
        trigger_metadata={"source": "api"},
        definition_version=1,
    )


def test_a_sound_write_gives_its_uuid_expected_version_and_rows() -> None:
    instance = make_instance(version=3, context={"n": 1})
    assert checked_built_instance(instance, "update", js_safe_integers=False) == (
        instance.uuid,
        2,
    )
    written = record([CommandResult(ok=True, code="OK", metadata={"k": [1, {"x": None}]})])
    assert checked_built_record(written, "append") == checked_record(written)[1:]


@pytest.mark.parametrize(
    ("context", "fragment"),
    [
        ({"bad": {1, 2}}, "context['bad']: set value"),
        ({"s": "a\x00b"}, "context['s']: strings stored as jsonb cannot contain NUL"),
        ({"n": 2**60}, "context['n']: "),
        (["not", "a", "dict"], "context must be a dict"),
    ],
)
def test_a_context_commands_spoiled_is_refused_as_update_refuses_it(
    context: Any, fragment: str
) -> None:
    instance = make_instance(version=1)
    instance.context = context
    safe = fragment != "context['n']: "
    with pytest.raises(InvalidArgumentError) as built:
        checked_built_instance(instance, "update", js_safe_integers=not safe)
    with pytest.raises(InvalidArgumentError) as full:
        checked_update(instance, "update", js_safe_integers=not safe)
    assert fragment in str(built.value)
    assert str(built.value) == str(full.value)
    assert str(instance.uuid) in str(built.value)


@pytest.mark.parametrize("version", [0, INT4_MAX + 1, True, 1.0])
def test_a_version_out_of_range_is_refused(version: Any) -> None:
    instance = make_instance()
    instance.version = version
    with pytest.raises(InvalidArgumentError, match=f"instance {instance.uuid}: version"):
        checked_built_instance(instance, "update", js_safe_integers=False)


@pytest.mark.parametrize(
    ("results", "fragment"),
    [
        ([CommandResult(ok=True, metadata={"lock": threading.Lock()})], "[0]['metadata']['lock']"),
        ([CommandResult(ok=True), CommandResult(ok=False, error={"e": float("nan")})], "[1]"),
        ([CommandResult(ok=True), "not a result"], "command_results[1] must be a CommandResult"),
    ],
)
def test_results_commands_returned_are_refused_as_append_refuses_them(
    results: list[Any], fragment: str
) -> None:
    written = record(results)
    with pytest.raises(InvalidArgumentError) as built:
        checked_built_record(written, "append")
    with pytest.raises(InvalidArgumentError) as full:
        checked_record(written)
    assert fragment in str(built.value)
    assert str(built.value) == str(full.value)
