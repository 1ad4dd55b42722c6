"""pytest fixtures for testing your own workflows on a real PostgreSQL.

Not loaded by merely installing the package: enable it in your `conftest.py`,

```python
pytest_plugins = ["duraflows_pg_async.pytest_plugin"]
```

or on the command line with `pytest -p duraflows_pg_async.pytest_plugin`. Install it with the
`pytest` extra, `pip install 'duraflows-pg-async[pytest]'`: pytest, pytest-asyncio and the
embedded PostgreSQL.

- [`duraflows_dsn`][duraflows_pg_async.pytest_plugin.duraflows_dsn]: the URL of a fresh database
  per test, with the package's migrations applied, dropped after the test.
- [`duraflows_pool`][duraflows_pg_async.pytest_plugin.duraflows_pool]: a
  [`create_pool()`][duraflows_pg_async.create_pool] pool on that database.
- [`duraflows_clock`][duraflows_pg_async.pytest_plugin.duraflows_clock]: a
  [`ManualClock`][duraflows_pg_async.testing.ManualClock], whose time moves only when the test
  calls `advance()`.
- [`duraflows_template_setup`][duraflows_pg_async.pytest_plugin.duraflows_template_setup]:
  override it to add your own tables to every test's database.

The server is the one of `DURAFLOWS_TEST_DSN` when it is set (its role must be allowed to
`CREATE DATABASE`), else an embedded PostgreSQL started once per session (once per xdist worker)
and stopped at its end. Either way, a template database is migrated once per session and each
test gets a copy of it (`CREATE DATABASE ... TEMPLATE`), made before the test asks for it.

`duraflows_dsn` and `duraflows_clock` are plain fixtures, tied to no event loop: they work in
sync tests, under pytest-asyncio whatever its loop scopes, and under anyio. `duraflows_pool` is
an async fixture of pytest-asyncio's (in `auto` and `strict` mode alike); it runs in the loop of
your async fixtures (`asyncio_default_fixture_loop_scope`), which must be the loop of your tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar, cast

import asyncpg
import pytest

from duraflows_pg_async._pg.codecs import create_pool
from duraflows_pg_async.testing._databases import (
    DatabaseServer,
    ServerUnavailableError,
    TemplateDatabases,
    TemplateSetup,
    start_server,
)
from duraflows_pg_async.testing.clock import ManualClock

__all__ = [
    "duraflows_dsn",
    "duraflows_pool",
    "duraflows_clock",
    "duraflows_template_setup",
    "TemplateSetup",
]

F = TypeVar("F", bound=Callable[..., Any])

# pytest-asyncio's own decorator, so that the pool fixture works in its `strict` mode too; without
# pytest-asyncio, a plain async fixture (which anyio's plugin runs, and pytest refuses clearly).
_async_fixture: Callable[[F], F]
try:
    from pytest_asyncio import fixture as _asyncio_fixture
except ImportError:  # pragma: no cover - the `pytest` extra brings pytest-asyncio
    _async_fixture = cast("Callable[[F], F]", pytest.fixture)
else:
    _async_fixture = cast("Callable[[F], F]", _asyncio_fixture)

# How long closing the pool may wait for connections a test did not give back.
_POOL_CLOSE_TIMEOUT = 10.0


@pytest.fixture(scope="session")
def duraflows_template_setup() -> TemplateSetup | None:
    """Your own schema for every test's database: override this session fixture in your
    `conftest.py` to return an async callable that receives an `asyncpg.Connection` to the
    template, once per session, after the package's migrations. The default adds nothing.

    ```python
    @pytest.fixture(scope="session")
    def duraflows_template_setup():
        async def setup(conn):
            await conn.execute("CREATE TABLE payouts (claim uuid PRIMARY KEY, amount int)")

        return setup
    ```
    """
    return None


@pytest.fixture(scope="session")
def _duraflows_server() -> Iterator[DatabaseServer]:
    try:
        server = start_server()
    except ServerUnavailableError as exc:
        failure = str(exc)
    else:
        failure = ""
    if failure:  # outside the except block: the message alone, with no chained traceback
        pytest.fail(failure, pytrace=False)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def _duraflows_databases(
    _duraflows_server: DatabaseServer, duraflows_template_setup: TemplateSetup | None
) -> Iterator[TemplateDatabases]:
    setup = duraflows_template_setup
    if setup is not None and not callable(setup):
        pytest.fail(
            f"duraflows_template_setup must return an async callable or None, got {setup!r}",
            pytrace=False,
        )
    try:
        databases = TemplateDatabases(_duraflows_server, setup=setup)
    except ServerUnavailableError as exc:
        failure = str(exc)
    else:
        failure = ""
    if failure:  # outside the except block, as above
        pytest.fail(failure, pytrace=False)
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture
def duraflows_dsn(_duraflows_databases: TemplateDatabases) -> Iterator[str]:
    """The URL of a fresh database for this test, with the package's migrations (and your
    `duraflows_template_setup`) applied; dropped after the test, its connections closed."""
    name = _duraflows_databases.take()
    try:
        yield _duraflows_databases.dsn(name)
    finally:
        _duraflows_databases.drop_later(name)


@_async_fixture
async def duraflows_pool(duraflows_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A [`create_pool()`][duraflows_pg_async.create_pool] pool (JSON codecs registered) on
    `duraflows_dsn`'s database, closed after the test."""
    pool = await create_pool(duraflows_dsn, min_size=1, max_size=10)
    try:
        yield pool
    finally:
        # A connection the test kept would make close() wait for ever; the database is
        # dropped after the test anyway.
        try:
            await asyncio.wait_for(pool.close(), _POOL_CLOSE_TIMEOUT)
        except TimeoutError:
            pool.terminate()


@pytest.fixture
def duraflows_clock() -> ManualClock:
    """A [`ManualClock`][duraflows_pg_async.testing.ManualClock] at the time the test starts:
    pass it to `WorkflowRuntime(clock=...)` and move it with `advance()`."""
    return ManualClock()
