"""``duraflows-pg diagram``: finding the definition in APP, and the output; no database."""

from __future__ import annotations

import json
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from duraflows_pg_async._cli.demo import ORDER
from duraflows_pg_async._cli.main import main

APP = textwrap.dedent(
    """
    import dataclasses

    from duraflows_pg_async import (
        CommandRegistry, DefinitionRegistry, GuardRegistry, WorkflowRuntime,
    )
    from duraflows_pg_async._cli.demo import ORDER
    from duraflows_pg_async.memory import memory_workflow_providers

    V2 = dataclasses.replace(ORDER, version=2)
    ONE = DefinitionRegistry()
    ONE.register(ORDER)
    TWO = DefinitionRegistry()
    TWO.register(ORDER)
    TWO.register(V2)
    TWO.register(dataclasses.replace(ORDER, name="refund"))
    calls = []


    def factory(providers):
        calls.append(providers)
        return WorkflowRuntime(
            definitions=TWO,
            commands=CommandRegistry(),
            guards=GuardRegistry(),
            persistence=providers,
        )


    async def async_factory(providers):
        return factory(providers)


    RUNTIME = WorkflowRuntime(
        definitions=ONE,
        commands=CommandRegistry(),
        guards=GuardRegistry(),
        persistence=memory_workflow_providers(),
    )
    """
)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module with definitions, registries and factories in the current directory; its name."""
    name = f"diagram_app_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(APP)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.chdir(tmp_path)
    return name


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["diagram", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "target",
    ["ORDER", "ONE", "ONE order", "RUNTIME", "TWO order --version 1", "factory order --version 1"],
)
def test_prints_the_diagram(app: str, capsys: pytest.CaptureFixture[str], target: str) -> None:
    spec, *rest = target.split()
    assert run(capsys, f"{app}:{spec}", *rest) == (0, ORDER.to_mermaid(), "")


def test_latest_version_by_default_and_async_factory(
    app: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, f"{app}:async_factory", "order")
    assert code == 0
    assert out == ORDER.to_mermaid()  # version 2 has the same content
    # The factory got in-memory providers: no database is opened.
    (providers,) = sys.modules[app].calls
    assert type(providers.transaction_runner).__name__ == "MemoryTransactionRunner"


def test_options_and_json(app: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "--json", f"{app}:TWO", "order", "--show-commands", "--direction", "LR"
    )
    assert code == 0
    assert json.loads(out) == {
        "workflow": "order",
        "version": 2,
        "mermaid": ORDER.to_mermaid(show_commands=True, direction="LR"),
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["TWO"], "give the workflow NAME (registered: order, refund)"),
        (["TWO", "nope"], 'Workflow "nope": Workflow not found in registry'),
        (["TWO", "order", "--version", "7"], "version 7 is not registered"),
        (["ORDER", "refund"], "is version 1 of workflow 'order'"),
        (["ORDER", "--version", "2"], "is version 1 of workflow 'order'"),
    ],
)
def test_usage_errors(
    app: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    spec, *rest = args
    code, out, err = run(capsys, f"{app}:{spec}", *rest)
    assert (code, out) == (2, "")
    assert err.startswith("duraflows-pg: ")
    assert message in err


def test_bad_app(app: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, f"{app}:calls")
    assert code == 2
    assert "is neither a WorkflowRuntime nor a callable" in err


def test_graph_with_app_draws_the_application_definition_without_a_database(
    app: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No database URL: with --app, graph must not need one.
    monkeypatch.delenv("DATABASE_URL", raising=False)
    code = main(["graph", "order", "--app", f"{app}:TWO", "--version", "1", "--direction", "LR"])
    out, err = capsys.readouterr()
    assert (code, out, err) == (0, ORDER.to_mermaid(direction="LR"), "")
    code = main(["graph", "nope", "--app", f"{app}:TWO"])
    out, err = capsys.readouterr()
    assert code == 2
    assert 'Workflow "nope": Workflow not found in registry' in err
