"""Running a command's coroutine so that SIGINT and SIGTERM cancel it and its clean-up runs,
on uvloop's event loop when it is installed."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Interrupted", "LOOP_ENV", "loop_factory", "run"]

# DURAFLOWS_PG_EVENT_LOOP=asyncio keeps asyncio's own loop even when uvloop is installed.
LOOP_ENV = "DURAFLOWS_PG_EVENT_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's ``new_event_loop`` when uvloop is installed (the ``[speed]`` extra) and not
    turned off with ``DURAFLOWS_PG_EVENT_LOOP=asyncio``; None (asyncio's loop) otherwise.

    uvloop runs the same asyncio code with less CPU per socket read and write, which is most of
    a transition's client CPU besides the package's own work (docs/performance.md).
    """
    if os.environ.get(LOOP_ENV, "").strip().lower() == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: the command was cancelled and its clean-up has run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run(coro: Awaitable[Any]) -> Any:
    """Run ``coro`` on the loop of ``loop_factory()``; SIGINT and SIGTERM cancel it, so that its
    ``finally`` blocks (the demo's schema, the pool) run, whatever signal disposition the process
    inherited: a process started in the background inherits SIGINT ignored, and a container stop
    sends SIGTERM. A command that installs handlers of its own (the worker) replaces these."""

    async def wrapped() -> Any:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        received: list[int] = []

        def on_signal(signum: int) -> None:
            received.append(signum)
            task.cancel()

        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal, int(sig))
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Windows
                pass
        try:
            return await coro
        except asyncio.CancelledError:
            if received:
                raise Interrupted(received[0]) from None
            raise
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(wrapped())
