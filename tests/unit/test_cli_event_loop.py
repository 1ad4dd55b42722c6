"""The CLI (its worker included) runs on uvloop when it is installed, and on asyncio's loop when
told to or when uvloop is absent."""

from __future__ import annotations

import asyncio
import sys

import pytest

from duraflows_pg_async._cli import signals


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_commands_run_on_uvloop_when_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    uvloop = pytest.importorskip("uvloop")
    monkeypatch.delenv(signals.LOOP_ENV, raising=False)
    assert signals.loop_factory() is uvloop.new_event_loop
    assert signals.run(_loop_module()).startswith("uvloop")


def test_the_environment_variable_keeps_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(signals.LOOP_ENV, "asyncio")
    assert signals.loop_factory() is None
    assert signals.run(_loop_module()).startswith("asyncio")


def test_without_uvloop_commands_run_on_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(signals.LOOP_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what an absent module imports as
    assert signals.loop_factory() is None
    assert signals.run(_loop_module()).startswith("asyncio")
