"""Running a command's coroutine so that SIGINT and SIGTERM cancel it and its clean-up runs."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable
from typing import Any

__all__ = ["Interrupted", "run"]


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: the command was cancelled and its clean-up has run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run(coro: Awaitable[Any]) -> Any:
    """Run ``coro``; SIGINT and SIGTERM cancel it, so that its ``finally`` blocks (the demo's
    schema, the pool) run, whatever signal disposition the process inherited: a process started
    in the background inherits SIGINT ignored, and a container stop sends SIGTERM. A command
    that installs handlers of its own (the worker) replaces these."""

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

    return asyncio.run(wrapped())
