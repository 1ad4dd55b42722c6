"""PgWakeups: LISTEN/NOTIFY wake-ups for the workers of one schema, and the nearest-due queries.

The stores send a NOTIFY in the writing statement when a write gives a due time within
``notify_within`` (so only on commit); one listener connection per provider, opened when the
first worker subscribes and closed when the last one leaves, hands each notification to the
subscribed workers. The listener reconnects on its own with back-off; while it is down the
workers poll, as they do for the writes of the TypeScript runtime, which never notify.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from duraflows_pg_async._core.contract import WakeupCallback
from duraflows_pg_async._core.validate import require_aware

from .error_mapping import raise_mapped
from .queries import render_queries, wakeup_channel

__all__ = ["PgWakeups", "execution_payload", "timeout_payload"]

logger = logging.getLogger("duraflows_pg_async")

# Reconnecting waits this long after a failure, doubling up to the cap.
_RECONNECT_FIRST = 0.1
_RECONNECT_CAP = 5.0
# An idle listener checks its connection this often: a half-open TCP connection (a host gone
# away) raises no termination callback, and notifications would stop silently.
_KEEPALIVE = 30.0


def timeout_payload(workflow_name: str, due: datetime) -> str:
    """A timeout's NOTIFY payload: small (a NOTIFY payload is at most 8000 bytes)."""
    return f"timeout {due.isoformat()} {workflow_name}"


def execution_payload(due: datetime) -> str:
    return f"execution {due.isoformat()}"


def _parse(payload: str) -> tuple[str, str | None, datetime | None]:
    """(kind, workflow name, due) of a payload; what is unreadable is None (it still wakes)."""
    kind, _, rest = payload.partition(" ")
    when, _, name = rest.partition(" ")
    try:
        due: datetime | None = datetime.fromisoformat(when)
    except ValueError:
        due = None
    if due is not None and due.tzinfo is None:
        due = None
    return kind, name or None, due


class PgWakeups:
    """Wake-ups and nearest-due queries over ``pool`` for one schema (not public: built by
    ``pg_workflow_providers``). The listener's connection is made as the pool makes its own,
    outside the pool (not counted in its size), or to ``listen_dsn`` (a direct connection, past a
    pgbouncer in transaction mode); it is open while workers are subscribed."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        schema: str | None,
        listen_dsn: str | None,
        notify_within: timedelta,
    ) -> None:
        self._pool = pool
        self._q = render_queries(schema)
        self.channel = wakeup_channel(schema)
        self.listen_dsn = listen_dsn
        self.notify_within = notify_within
        self._subscribers: list[WakeupCallback] = []
        self._task: asyncio.Task[None] | None = None
        self._connection: Any = None
        self._from_pool = False
        # Times the listener has (re)connected: for tests and logs.
        self.connects = 0

    @property
    def listening(self) -> bool:
        """Whether the listener is connected now."""
        conn = self._connection
        return conn is not None and not conn.is_closed()

    @property
    def listener_pid(self) -> int | None:
        """The listener's backend pid while it is connected."""
        conn = self._connection
        return None if conn is None or conn.is_closed() else int(conn.get_server_pid())

    async def next_timeout_due(
        self, workflow_names: Sequence[str], now: datetime
    ) -> datetime | None:
        require_aware(now, "now")
        try:
            due = await self._pool.fetchval(self._q.next_timeout_due, list(workflow_names), now)
        except Exception as exc:
            raise_mapped(exc, "next timeout due", self._pool)
        return due  # type: ignore[no-any-return]

    async def next_execution_due(self, now: datetime) -> datetime | None:
        require_aware(now, "now")
        try:
            due = await self._pool.fetchval(self._q.next_execution_due, now)
        except Exception as exc:
            raise_mapped(exc, "next execution due", self._pool)
        return due  # type: ignore[no-any-return]

    def subscribe(self, callback: WakeupCallback) -> None:
        self._subscribers.append(callback)
        loop = asyncio.get_running_loop()
        # A listener of an event loop since closed (a test's, say) never ends: start anew.
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._listen(), name=f"duraflows listener {self.channel}")

    async def unsubscribe(self, callback: WakeupCallback) -> None:
        """Remove ``callback``; the last subscriber leaving closes the listener."""
        if callback in self._subscribers:
            self._subscribers.remove(callback)
        if self._subscribers or self._task is None:
            return
        task, self._task = self._task, None
        if task.get_loop() is not asyncio.get_running_loop():
            return  # a listener of another event loop: not ours to await
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            # Our cancel of the listener; a cancel of the caller itself goes on.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    def _wake_all(self) -> None:
        for callback in list(self._subscribers):
            callback("any", None, None)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        kind, name, due = _parse(str(payload))
        for callback in list(self._subscribers):
            callback(kind, name, due)

    async def _listen(self) -> None:
        delay = _RECONNECT_FIRST
        while True:
            lost = asyncio.Event()
            try:
                self._connection = await self._connect()
                self._connection.add_termination_listener(lambda _conn, event=lost: event.set())
                await self._connection.add_listener(self.channel, self._on_notify)
                self.connects += 1
                delay = _RECONNECT_FIRST
                # Notifications sent while nobody listened are lost: every worker polls now.
                self._wake_all()
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), _KEEPALIVE)
                    except TimeoutError:
                        await asyncio.wait_for(self._connection.fetchval("SELECT 1"), _KEEPALIVE)
            except asyncio.CancelledError:
                await self._disconnect()
                raise
            except Exception as exc:
                logger.warning(
                    "duraflows: wake-up listener on %s lost (%s); reconnecting in %.1fs, "
                    "workers poll meanwhile",
                    self.channel,
                    exc,
                    delay,
                )
            else:
                logger.warning(
                    "duraflows: wake-up listener on %s lost; reconnecting in %.1fs, workers "
                    "poll meanwhile",
                    self.channel,
                    delay,
                )
            await self._disconnect()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_CAP)

    async def _connect(self) -> Any:
        if self.listen_dsn is not None:
            return await asyncpg.connect(self.listen_dsn)
        # A connection made as the pool makes its own (its DSN, options and init), outside it: a
        # listener held from the pool for good would take a pool of one connection whole.
        connect = getattr(self._pool, "_get_new_connection", None)
        if connect is None:  # an asyncpg without it: one of the pool's, held while listening
            self._from_pool = True
            return await self._pool.acquire()
        return await connect()

    async def _disconnect(self) -> None:
        conn, self._connection = self._connection, None
        if conn is None:
            return
        try:
            if self._from_pool:
                # Released, the pool's reset (UNLISTEN *) cleans it; a closed one is replaced.
                await asyncio.wait_for(self._pool.release(conn), 5)
            else:
                await asyncio.wait_for(conn.close(), 5)
        except (Exception, asyncio.CancelledError):
            conn.terminate()
        finally:
            self._from_pool = False
