"""The provider and the runtime behind pgbouncer (Debian's package), in transaction mode.

One pgbouncer per module runs in front of the session's PostgreSQL server, started from a
temporary directory as an unprivileged user (pgbouncer refuses to run as root). Its
configuration holds the server's password: the directory is 0700 and the files in it 0600, all
owned by the user pgbouncer runs as, and the password is on no command line. Every database
gets a pool of ``POOL_SIZE`` server connections, fewer than the clients the tests open, so clients
really do share server connections between transactions. The pools are created the documented
way, ``create_pool(dsn, statement_cache_size=0)`` (docs/operations-pgbouncer.md).

Two extra databases are served in session mode and in statement mode, to show that the first
works with asyncpg's defaults and that the second cannot run transactions at all.

The module is skipped only when no pgbouncer binary is installed; ``.ci/run`` installs it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit
from uuid import UUID

import asyncpg
import pytest
from helpers import ManualClock, PgDatabaseError, wait_until

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    HistoryRecord,
    OnEnter,
    PgTransactionRunner,
    State,
    Timeout,
    TimeoutWorker,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
    create_pool,
    migrations,
    pg_workflow_providers,
)
from duraflows_pg_async.errors import ConnectionLostError, DatabaseError, LockTimeoutError
from duraflows_pg_async.testing import (
    DefinitionStoreConformance,
    HistoryStoreConformance,
    InstanceStoreConformance,
    TransactionRunnerConformance,
    make_instance,
)

if TYPE_CHECKING:
    from conftest import PgServer

# One pgbouncer (the `bouncer` fixture) serves the whole module: with xdist, one worker runs it.
pytestmark = pytest.mark.xdist_group("pgbouncer")

# Server connections pgbouncer keeps per database: fewer than the clients of most tests here.
POOL_SIZE = 3
NOW = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)
NON_ASCII = "Zürich ✓ 東京"


# --- pgbouncer ---------------------------------------------------------------------------------


@dataclass
class Bouncer:
    """The module's pgbouncer: transaction mode for every database but the two named ones."""

    version: tuple[int, ...]
    port: int
    session_db: str
    statement_db: str
    pid: int
    workdir: Path  # pgbouncer.ini (with the server's password) and pgbouncer.log

    def dsn(self, database: str) -> str:
        # auth_type = any: the user name is ignored; pgbouncer logs in as the server's user.
        return f"postgresql://app@127.0.0.1:{self.port}/{database}"


def _pgbouncer_binary() -> str | None:
    # Debian installs it in /usr/sbin, which is not on an unprivileged user's PATH.
    found = shutil.which("pgbouncer")
    if found:
        return found
    for candidate in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _pgbouncer_user() -> tuple[int, int]:
    """(uid, gid) pgbouncer runs as: an unprivileged user when root (pgbouncer refuses to run
    as root), the current user otherwise."""
    if not _as_root():
        return os.geteuid(), os.getegid()
    import pwd

    # duraflows-pg is the user the embedded server runs as; nobody exists everywhere else.
    for name in ("duraflows-pg", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    pytest.fail("running as root, and neither a duraflows-pg nor a nobody user exists")


def _unprivileged_user() -> dict[str, Any]:
    """Popen arguments that drop root (pgbouncer refuses to run as root); none otherwise."""
    if not _as_root():
        return {}
    uid, gid = _pgbouncer_user()
    return {"user": uid, "group": gid, "extra_groups": []}


def _private_file(path: Path) -> int:
    """Open ``path`` for writing (truncated), 0600 and owned by the user pgbouncer runs as."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    if _as_root():
        os.fchown(fd, *_pgbouncer_user())
    return fd


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _upstream(admin_dsn: str) -> str:
    """The [databases] connection string of the test server (its address and login)."""
    parts = urlsplit(admin_dsn)
    fields = {
        "host": parts.hostname or "127.0.0.1",
        "port": str(parts.port or 5432),
        "user": unquote(parts.username or "postgres"),
    }
    if parts.password:
        fields["password"] = unquote(parts.password)
    return " ".join(f"{key}={value}" for key, value in fields.items())


def _version(binary: str) -> tuple[int, ...]:
    """pgbouncer's version, from ``pgbouncer --version`` ("PgBouncer 1.18.0")."""
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    words = output.stdout.split()
    if len(words) < 2 or words[0] != "PgBouncer":
        pytest.fail(f"unexpected `pgbouncer --version` output: {output.stdout!r}")
    return tuple(int(part) for part in words[1].split(".") if part.isdigit())


def _config(
    port: int, upstream: str, session_db: str, statement_db: str, version: tuple[int, ...]
) -> str:
    # pgbouncer 1.21+ can track prepared statements (on by default since 1.24). Turned off, so
    # that every version runs the documented configuration: statement_cache_size=0 in asyncpg.
    tracking = "max_prepared_statements = 0\n" if version >= (1, 21) else ""
    return f"""\
[databases]
{session_db} = {upstream} pool_mode=session
{statement_db} = {upstream} pool_mode=statement
* = {upstream}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = {POOL_SIZE}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 500
; tests drop their databases while pgbouncer still holds server connections to them
server_login_retry = 1
query_wait_timeout = 60
log_connections = 0
log_disconnections = 0
{tracking}"""


def _start(
    binary: str,
    version: tuple[int, ...],
    upstream: str,
    workdir: Path,
    session_db: str,
    statement_db: str,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start pgbouncer on a free port (its log goes to workdir); returns (process, port)."""
    log_file = workdir / "pgbouncer.log"
    os.close(_private_file(log_file))
    for _attempt in range(3):  # another process may take the free port before pgbouncer binds
        port = _free_port()
        ini = workdir / "pgbouncer.ini"
        # The [databases] lines hold the server's password: 0600, pgbouncer's user's.
        with os.fdopen(_private_file(ini), "w", encoding="utf-8") as config:
            config.write(_config(port, upstream, session_db, statement_db, version))
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                [binary, str(ini)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                **_unprivileged_user(),
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                time.sleep(0.05)  # the interval of a bounded poll (the deadline above)
                continue
            return process, port
        _stop(process)
    pytest.fail(f"pgbouncer did not start:\n{log_file.read_text(errors='replace')[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()  # SIGTERM: immediate shutdown
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


async def _create_databases(admin_dsn: str, template: str, names: list[str]) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        for name in names:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()


async def _drop_databases(admin_dsn: str, names: list[str]) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def bouncer(pg_server: PgServer, pg_template: str) -> Iterator[Bouncer]:
    """pgbouncer in front of the session's server, for this module."""
    binary = _pgbouncer_binary()
    if binary is None:
        pytest.skip(
            "pgbouncer is not installed (Debian/Ubuntu: apt-get install pgbouncer; .ci/run "
            "installs it in CI)"
        )
    version = _version(binary)
    suffix = uuid.uuid4().hex[:8]
    session_db, statement_db = f"duraflows_pgb_session_{suffix}", f"duraflows_pgb_stmt_{suffix}"
    asyncio.run(_create_databases(pg_server.admin_dsn, pg_template, [session_db, statement_db]))
    workdir = Path(tempfile.mkdtemp(prefix="duraflows-pgbouncer-"))  # 0700
    workdir.chmod(0o700)
    if _as_root():  # pgbouncer, run as another user, reads its configuration from here
        os.chown(workdir, *_pgbouncer_user())
    process = None
    try:
        process, port = _start(
            binary, version, _upstream(pg_server.admin_dsn), workdir, session_db, statement_db
        )
        yield Bouncer(version, port, session_db, statement_db, process.pid, workdir)
    finally:
        if process is not None:
            _stop(process)
        asyncio.run(_drop_databases(pg_server.admin_dsn, [session_db, statement_db]))
        shutil.rmtree(workdir, ignore_errors=True)


def _name_of(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


def test_the_server_password_stays_private(bouncer: Bouncer, pg_server: PgServer) -> None:
    """Only the user pgbouncer runs as (and root) can read its configuration, which holds the
    server's password; the password is on no command line, in no log and in no repr()."""
    uid, _gid = _pgbouncer_user()
    ini, log = bouncer.workdir / "pgbouncer.ini", bouncer.workdir / "pgbouncer.log"
    for path, mode in ((bouncer.workdir, 0o700), (ini, 0o600), (log, 0o600)):
        info = path.stat()
        assert (path.name, oct(stat.S_IMODE(info.st_mode)), info.st_uid) == (
            path.name,
            oct(mode),
            uid,
        )
    proc = Path(f"/proc/{bouncer.pid}")
    if proc.is_dir():
        status = (proc / "status").read_text()
        assert f"\nUid:\t{uid}\t" in status  # runs as the files' owner
    password = unquote(urlsplit(pg_server.admin_dsn).password or "")
    if not password:
        return  # a DURAFLOWS_TEST_DSN without one: nothing more to hide
    # Booleans only: an assertion on the texts themselves would print the password.
    in_config = password in ini.read_text(encoding="utf-8")
    assert in_config  # what makes the modes above matter
    on_command_line = proc.is_dir() and password.encode() in (proc / "cmdline").read_bytes()
    assert not on_command_line
    in_log = password in log.read_text(errors="replace")
    assert not in_log
    in_repr = password in repr(pg_server) or password in repr(bouncer)
    assert not in_repr


@pytest.fixture
def bouncer_dsn(database: str, bouncer: Bouncer) -> str:
    """The test's fresh migrated database (conftest's ``database``), reached through pgbouncer."""
    return bouncer.dsn(_name_of(database))


@pytest.fixture
async def bouncer_pool(bouncer_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A create_pool() pool through pgbouncer with the documented setting."""
    pool = await create_pool(bouncer_dsn, statement_cache_size=0, min_size=1, max_size=8)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def bouncer_providers(bouncer_pool: asyncpg.Pool) -> WorkflowPersistenceProvider:
    return pg_workflow_providers(bouncer_pool)


async def _server_backends(admin_dsn: str, database: str, *, but: int = 0) -> int:
    """How many server connections (client backends) the database has right now, leaving out
    the backend ``but`` (a direct connection of the test)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = $1 AND backend_type = 'client backend' AND pid <> $2",
            database,
            but,
        )
    finally:
        await conn.close()
    return int(count)


async def _settings_on_every_server(dsn: str, *names: str) -> dict[int, tuple[str, ...]]:
    """``current_setting(name)`` on each server connection of the database, by backend pid.

    POOL_SIZE clients hold a transaction open at the same time, so pgbouncer must give each its
    own server connection: together they cover every server connection the pool has.
    """
    clients = [await asyncpg.connect(dsn, statement_cache_size=0) for _ in range(POOL_SIZE)]
    barrier = asyncio.Barrier(POOL_SIZE)

    async def read(conn: asyncpg.Connection) -> tuple[int, tuple[str, ...]]:
        async with conn.transaction():
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            values = tuple([await conn.fetchval("SELECT current_setting($1)", n) for n in names])
            await asyncio.wait_for(barrier.wait(), 30)
        return int(pid), values

    try:
        found = dict(await asyncio.gather(*(read(c) for c in clients)))
    finally:
        for conn in clients:
            await conn.close()
    assert len(found) == POOL_SIZE, found
    return found


# --- a workflow for the runtime tests ----------------------------------------------------------

PARCEL = WorkflowDefinition(
    name="parcel",
    initial_state="received",
    states={
        # create_instance runs this onEnter: a hop to "sorting" in the creating transaction.
        "received": State(on_enter=OnEnter(target_state="sorting", commands=(CommandRef("scan"),))),
        "sorting": State(
            context={"status": "sorting"},
            events={
                "bump": Event(commands=(CommandRef("bump"),)),
                "dispatch": Event(target_state="in_transit", commands=(CommandRef("scan"),)),
            },
        ),
        "in_transit": State(
            context={"status": "in transit"},
            events={
                "give_up": Event(
                    target_state="lost", commands=(CommandRef("scan"),), timeout=Timeout(minutes=10)
                )
            },
        ),
        "lost": State(context={"status": "lost"}),
    },
)


class Parcels:
    """A runtime for PARCEL whose commands record what ran."""

    def __init__(self, persistence: WorkflowPersistenceProvider, clock: ManualClock) -> None:
        self.scans: list[tuple[str | None, str, UUID]] = []
        self.on_scan: Callable[[], None] | None = None
        self.commands = CommandRegistry()
        self.commands.register("scan", self.scan)
        self.commands.register("bump", self.bump)
        definitions = DefinitionRegistry()
        definitions.register(PARCEL)
        self.runtime = WorkflowRuntime(
            definitions=definitions, commands=self.commands, persistence=persistence, clock=clock
        )

    def scan(self, subject: Any, ctx: ExecutionContext) -> None:
        self.scans.append((ctx.from_state, ctx.to_state, ctx.transition_uuid))
        ctx.context.setdefault("scans", []).append(ctx.to_state)
        if self.on_scan is not None:
            self.on_scan()

    async def bump(self, subject: Any, ctx: ExecutionContext) -> None:
        # The log is the serial order of the transitions: each one sees every earlier write.
        await asyncio.sleep(0.005)  # hold the row lock a little, so the others queue up
        ctx.context["log"] = [*ctx.context.get("log", []), ctx.trigger_metadata["task"]]


# --- transaction mode: the basics --------------------------------------------------------------


async def test_clients_share_server_connections_between_transactions(
    bouncer: Bouncer, bouncer_dsn: str, pg_server: PgServer
) -> None:
    a, b = [await asyncpg.connect(bouncer_dsn, statement_cache_size=0) for _ in range(2)]
    try:
        async with a.transaction():
            pid_a = await a.fetchval("SELECT pg_backend_pid()")
            async with b.transaction():
                pid_b = await b.fetchval("SELECT pg_backend_pid()")
        # Two open transactions need two server connections...
        assert pid_a != pid_b
        # ...but none belongs to a client: pgbouncer hands b the one a released last (LIFO).
        async with b.transaction():
            assert await b.fetchval("SELECT pg_backend_pid()") == pid_a
        many = [await asyncpg.connect(bouncer_dsn, statement_cache_size=0) for _ in range(10)]
        try:
            for conn in many:
                assert await conn.fetchval("SELECT 1") == 1
            assert await _server_backends(pg_server.admin_dsn, _name_of(bouncer_dsn)) <= POOL_SIZE
        finally:
            for conn in many:
                await conn.close()
    finally:
        await a.close()
        await b.close()


async def test_stores_savepoints_after_commit_connection_and_bind(
    bouncer_providers: WorkflowPersistenceProvider,
    bouncer_pool: asyncpg.Pool,
    raw_connection: asyncpg.Connection,
) -> None:
    runner = bouncer_providers.transaction_runner
    assert isinstance(runner, PgTransactionRunner)
    store = bouncer_providers.instance_store
    instance = make_instance(context={"to": NON_ASCII})
    await store.create(instance)
    ghost, kept = make_instance(), make_instance()
    after_commit: list[tuple[str, bool]] = []

    async def check_committed() -> None:
        # A direct connection (not through pgbouncer) already sees the committed update.
        state = await raw_connection.fetchval(
            "SELECT current_state FROM workflow_instances WHERE uuid = $1", instance.uuid
        )
        after_commit.append((state, runner.is_transaction_active()))

    async with runner.transaction():
        pid_first = await runner.connection().fetchval("SELECT pg_backend_pid()")
        locked = await store.lock_by_uuid(instance.uuid)
        assert locked is not None
        locked.current_state, locked.version = "approved", locked.version + 1
        locked.context = {**locked.context, "approved": True}
        await store.update(locked)
        await bouncer_providers.history_store.append(
            HistoryRecord(
                workflow_instance_uuid=instance.uuid,
                from_state="start",
                event_name="approve",
                to_state="approved",
                outcome="success",
            )
        )
        with pytest.raises(ValueError, match="ghost"):
            async with runner.transaction():  # a savepoint: only its own write is undone
                await store.create(ghost)
                raise ValueError("ghost")
        async with runner.transaction():
            await store.create(kept)
        runner.after_commit(check_committed)
        # The whole transaction ran on one server connection.
        assert await runner.connection().fetchval("SELECT pg_backend_pid()") == pid_first
        assert after_commit == []
    assert after_commit == [("approved", False)]

    stored = await store.find_by_uuid(instance.uuid)
    assert stored is not None
    assert (stored.current_state, stored.version) == ("approved", 1)
    assert stored.context == {"to": NON_ASCII, "approved": True}
    assert await store.find_by_uuid(ghost.uuid) is None
    assert await store.find_by_uuid(kept.uuid) is not None
    history = await bouncer_providers.history_store.find_by_instance_uuid(instance.uuid)
    assert [r.event_name for r in history] == ["approve"]

    # bind(): workflow calls join the caller's own asyncpg transaction, and its rollback.
    async def ship(conn: Any) -> None:
        async with runner.bind(conn):
            row = await store.lock_by_uuid(instance.uuid)
            assert row is not None
            row.current_state, row.version = "shipped", row.version + 1
            await store.update(row)

    async with bouncer_pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="caller"):
            async with conn.transaction():
                await ship(conn)
                state = await conn.fetchval(
                    "SELECT current_state FROM workflow_instances WHERE uuid = $1", instance.uuid
                )
                assert state == "shipped"
                raise RuntimeError("the caller rolls back")
        rolled_back = await store.find_by_uuid(instance.uuid)
        assert rolled_back is not None
        assert rolled_back.current_state == "approved"
        async with conn.transaction():
            await ship(conn)
    stored = await store.find_by_uuid(instance.uuid)
    assert stored is not None
    assert (stored.current_state, stored.version) == ("shipped", 2)


async def test_set_local_timeouts_apply_per_transaction_and_do_not_leak(
    bouncer_pool: asyncpg.Pool, bouncer_dsn: str
) -> None:
    plain = pg_workflow_providers(bouncer_pool)
    fast = pg_workflow_providers(bouncer_pool, lock_timeout=0.2, statement_timeout=1)
    instance = make_instance()
    await plain.instance_store.create(instance)
    held, release = asyncio.Event(), asyncio.Event()

    async def hold_the_row() -> None:
        async with plain.transaction_runner.transaction():
            assert await plain.instance_store.lock_by_uuid(instance.uuid) is not None
            held.set()
            await release.wait()

    holder = asyncio.create_task(hold_the_row())
    try:
        await asyncio.wait_for(held.wait(), 10)
        started = time.monotonic()
        with pytest.raises(LockTimeoutError):
            async with fast.transaction_runner.transaction():
                await fast.instance_store.lock_by_uuid(instance.uuid)
        assert time.monotonic() - started < 5
        runner = fast.transaction_runner
        assert isinstance(runner, PgTransactionRunner)
        started = time.monotonic()
        with pytest.raises(asyncpg.QueryCanceledError, match="statement timeout"):
            async with runner.transaction():
                await runner.connection().execute("SELECT pg_sleep(10)")
        assert time.monotonic() - started < 5
    finally:
        release.set()
        await holder
    # SET LOCAL ended with its transaction: no server connection kept either value.
    found = await _settings_on_every_server(bouncer_dsn, "lock_timeout", "statement_timeout")
    assert set(found.values()) == {("0", "0")}, found


async def test_session_state_left_in_a_transaction_is_reset_before_commit(
    bouncer_providers: WorkflowPersistenceProvider,
    bouncer_dsn: str,
    raw_connection: asyncpg.Connection,
) -> None:
    # create_pool() folds asyncpg's session reset (advisory unlock, CLOSE ALL, UNLISTEN, RESET
    # ALL) into the COMMIT: it runs on the server connection the transaction used, before
    # pgbouncer gives that connection to another client.
    runner = bouncer_providers.transaction_runner
    assert isinstance(runner, PgTransactionRunner)
    async with runner.transaction():
        conn = runner.connection()
        await conn.execute("SET lock_timeout = '4321ms'")  # session level, not SET LOCAL
        await conn.execute("SELECT pg_advisory_lock(4242)")  # a session advisory lock
        pid = await conn.fetchval("SELECT pg_backend_pid()")
    found = await _settings_on_every_server(bouncer_dsn, "lock_timeout")
    assert pid in found
    assert set(found.values()) == {("0",)}, found
    assert (
        await raw_connection.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242"
        )
        == 0
    )


async def test_a_cancelled_transaction_leaves_nothing_behind(
    bouncer_providers: WorkflowPersistenceProvider,
    bouncer_pool: asyncpg.Pool,
    raw_connection: asyncpg.Connection,
) -> None:
    runner = bouncer_providers.transaction_runner
    assert isinstance(runner, PgTransactionRunner)
    instance = make_instance()
    inside = asyncio.Event()

    async def work() -> None:
        async with runner.transaction():
            await bouncer_providers.instance_store.create(instance)
            inside.set()
            await runner.connection().execute("SELECT pg_sleep(30)")

    task = asyncio.create_task(work())
    await asyncio.wait_for(inside.wait(), 10)

    # Cancel only once the server is running the sleep, so the cancel request has a query to
    # stop.
    async def sleeping() -> bool:
        if await raw_connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'active' AND query = 'SELECT pg_sleep(30)'"
        ):
            return True
        assert not task.done(), task
        return False

    await wait_until(sleeping, within=30, what="the server running the transaction's sleep")
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # asyncpg's cancel request went through pgbouncer to the right server connection: the
    # sleep ended at once and the ROLLBACK ran.
    assert time.monotonic() - started < 5
    assert await bouncer_providers.instance_store.find_by_uuid(instance.uuid) is None
    busy = await raw_connection.fetch(
        "SELECT pid, state, query FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND state <> 'idle'"
    )
    assert busy == []
    assert bouncer_pool.get_idle_size() == bouncer_pool.get_size()


async def test_two_sweepers_take_disjoint_batches(bouncer_dsn: str) -> None:
    pools = [
        await create_pool(bouncer_dsn, statement_cache_size=0, min_size=1, max_size=2)
        for _ in range(2)
    ]
    try:
        sweepers = [pg_workflow_providers(p) for p in pools]
        created = [make_instance(expires_at=NOW - timedelta(minutes=i + 1)) for i in range(120)]
        async with sweepers[0].transaction_runner.transaction():
            for instance in created:
                await sweepers[0].instance_store.create(instance)
        everything = {i.uuid for i in created}

        # FOR UPDATE SKIP LOCKED: two sweeps holding their locks at once never share a row.
        both = asyncio.Barrier(2)

        async def sweep(p: WorkflowPersistenceProvider) -> set[UUID]:
            async with p.transaction_runner.transaction():
                rows = await p.instance_store.find_expired(80, NOW)
                await asyncio.wait_for(both.wait(), 10)
            return {r.uuid for r in rows}

        first, second = await asyncio.gather(*(sweep(p) for p in sweepers))
        assert first.isdisjoint(second)
        assert first | second == everything

        # Claims outlive the transaction (and the server connection it ran on).
        claim_until = NOW + timedelta(minutes=2)
        claimed: list[set[UUID]] = []
        for sweeper, limit in zip(sweepers, (50, 500), strict=True):
            async with sweeper.transaction_runner.transaction():
                rows = await sweeper.instance_store.find_expired(
                    limit, NOW, claim_until=claim_until
                )
            claimed.append({r.uuid for r in rows})
        assert [len(c) for c in claimed] == [50, 70]
        assert claimed[0] | claimed[1] == everything
        async with sweepers[1].transaction_runner.transaction():
            assert await sweepers[1].instance_store.find_expired(500, NOW) == []
    finally:
        for p in pools:
            await p.close()


async def test_migrations_apply_through_pgbouncer(empty_database: str, bouncer: Bouncer) -> None:
    # Two concurrent migrators: each migration runs in a transaction under a transaction-level
    # advisory lock, which transaction mode supports.
    dsn = bouncer.dsn(_name_of(empty_database))
    conns = [await asyncpg.connect(dsn, statement_cache_size=0) for _ in range(2)]
    try:
        applied = await asyncio.gather(*(migrations.apply(c) for c in conns))
        versions = sorted(m.version for batch in applied for m in batch)
        status = await migrations.status(conns[0])
        assert versions == [s.version for s in status]  # each applied once, by one of them
        assert all(s.applied for s in status)
    finally:
        for conn in conns:
            await conn.close()


# --- the runtime -------------------------------------------------------------------------------


async def test_runtime_create_trigger_and_sweep(
    bouncer_providers: WorkflowPersistenceProvider,
) -> None:
    clock = ManualClock(NOW)
    parcels = Parcels(bouncer_providers, clock)
    runtime = parcels.runtime
    parcel = await runtime.create_instance("parcel", context={"to": NON_ASCII})
    assert (parcel.current_state, parcel.version) == ("sorting", 1)  # the onEnter hop ran
    result = await runtime.trigger_event(parcel.uuid, "dispatch")
    assert (result.outcome, result.to_state) == ("success", "in_transit")
    stored = await runtime.get_instance(parcel.uuid)
    assert stored is not None
    assert stored.expires_at == NOW + timedelta(minutes=10)

    assert (await runtime.process_expired_workflows()).processed == 0  # not due yet
    clock.advance(minutes=11)
    swept = await runtime.process_expired_workflows()
    assert (swept.processed, swept.failed, swept.parked) == (1, [], [])
    stored = await runtime.get_instance(parcel.uuid)
    assert stored is not None
    assert (stored.current_state, stored.version, stored.expires_at) == ("lost", 3, None)
    assert stored.context == {
        "to": NON_ASCII,
        "status": "lost",
        "scans": ["received", "in_transit", "lost"],
    }
    history = await runtime.get_history(parcel.uuid)
    assert [(h.event_name, h.to_state) for h in reversed(history)] == [
        ("onEnter", "sorting"),
        ("dispatch", "in_transit"),
        ("give_up", "lost"),
    ]


async def test_timeout_workers_process_each_due_instance_once(
    bouncer_dsn: str, raw_connection: asyncpg.Connection
) -> None:
    clock = ManualClock(NOW)
    pools = [
        await create_pool(bouncer_dsn, statement_cache_size=0, min_size=1, max_size=4)
        for _ in range(2)
    ]
    try:
        fleets = [Parcels(pg_workflow_providers(p), clock) for p in pools]
        uuids = []
        for i in range(40):
            runtime = fleets[i % 2].runtime
            parcel = await runtime.create_instance("parcel")
            await runtime.trigger_event(parcel.uuid, "dispatch")
            uuids.append(parcel.uuid)
        all_scanned = asyncio.Event()

        def count() -> None:
            if sum(len(f.scans) for f in fleets) >= 40:
                all_scanned.set()

        for fleet in fleets:
            fleet.scans.clear()
            fleet.on_scan = count
        clock.advance(minutes=11)
        workers = [TimeoutWorker(f.runtime, batch_size=5, poll_interval=0.02) for f in fleets]
        tasks = [asyncio.create_task(w.run()) for w in workers]
        try:
            await asyncio.wait_for(all_scanned.wait(), 60)
        finally:
            for worker in workers:
                worker.stop()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        transitions = [scan[2] for f in fleets for scan in f.scans]
        assert len(transitions) == len(set(transitions)) == 40
        assert sum(w.stats.processed for w in workers) == 40
        assert sum(w.stats.errors for w in workers) == 0
        rows = await raw_connection.fetch(
            "SELECT workflow_instance_uuid, count(*) AS n FROM workflow_history "
            "WHERE event_name = 'give_up' GROUP BY 1"
        )
        assert {r["workflow_instance_uuid"]: r["n"] for r in rows} == dict.fromkeys(uuids, 1)
        assert (
            await raw_connection.fetchval(
                "SELECT count(*) FROM workflow_instances WHERE current_state = 'lost' "
                "AND expires_at IS NULL"
            )
            == 40
        )
    finally:
        for p in pools:
            await p.close()


async def test_concurrent_events_on_one_instance_through_fewer_server_connections(
    bouncer_dsn: str, pg_server: PgServer, raw_connection: asyncpg.Connection
) -> None:
    # An audit of every version change, written by the server itself in each transaction.
    await raw_connection.execute(
        """
        CREATE TABLE version_audit (
            seq bigserial PRIMARY KEY, old_version int NOT NULL, new_version int NOT NULL);
        CREATE FUNCTION audit_version() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO version_audit (old_version, new_version) VALUES (OLD.version, NEW.version);
            RETURN NEW;
        END $$;
        CREATE TRIGGER audit_version AFTER UPDATE ON workflow_instances
            FOR EACH ROW EXECUTE FUNCTION audit_version();
        """
    )
    tasks = 12
    pool = await create_pool(bouncer_dsn, statement_cache_size=0, min_size=8, max_size=8)
    database = _name_of(bouncer_dsn)
    direct = raw_connection.get_server_pid()
    peak = 0
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, await _server_backends(pg_server.admin_dsn, database, but=direct))
            await asyncio.sleep(0.005)  # the sampling rate: not a wait for anything

    try:
        runtime = Parcels(pg_workflow_providers(pool), ManualClock(NOW)).runtime
        parcel = await runtime.create_instance("parcel")
        start_version = parcel.version
        sampler = asyncio.create_task(sample())
        try:
            results = await asyncio.gather(
                *(
                    runtime.trigger_event(parcel.uuid, "bump", trigger_metadata={"task": i})
                    for i in range(tasks)
                )
            )
        finally:
            sampling = False
            await sampler
        assert pool.get_size() == 8  # eight clients...
        assert 0 < peak <= POOL_SIZE  # ...served by at most three server connections
        assert all(r.outcome == "success" for r in results)
        assert len({r.history_uuid for r in results}) == tasks

        stored = await runtime.get_instance(parcel.uuid)
        assert stored is not None
        assert stored.version == start_version + tasks
        log = stored.context["log"]
        assert sorted(log) == list(range(tasks))  # every transition saw all earlier ones
        changes = await raw_connection.fetch(
            "SELECT old_version, new_version FROM version_audit ORDER BY seq"
        )
        bumps = [(r["old_version"], r["new_version"]) for r in changes][-tasks:]
        assert bumps == [(start_version + i, start_version + i + 1) for i in range(tasks)]
        history = await runtime.get_history(parcel.uuid, limit=100)
        bumped = [h.trigger_metadata["task"] for h in history if h.event_name == "bump"]
        assert sorted(bumped) == list(range(tasks))  # one history row per transition
    finally:
        await pool.close()


# --- the public conformance suites, through pgbouncer ------------------------------------------


@pytest.fixture
def conformance_provider(
    bouncer_providers: WorkflowPersistenceProvider,
) -> WorkflowPersistenceProvider:
    """A provider through pgbouncer over a fresh, migrated database."""
    return bouncer_providers


class TestInstanceStoreThroughPgbouncer(InstanceStoreConformance):
    pass


class TestHistoryStoreThroughPgbouncer(HistoryStoreConformance):
    pass


class TestDefinitionStoreThroughPgbouncer(DefinitionStoreConformance):
    pass


class TestTransactionRunnerThroughPgbouncer(PgDatabaseError, TransactionRunnerConformance):
    pass


# --- what goes wrong without the setting, and in the other pool modes --------------------------


@pytest.mark.parametrize("statement_cache_size", [None, 0], ids=["asyncpg-default", "zero"])
async def test_statement_cache_breaks_once_the_server_connection_changes(
    bouncer_dsn: str, statement_cache_size: int | None
) -> None:
    options: dict[str, Any] = {} if statement_cache_size is None else {"statement_cache_size": 0}
    pool = await create_pool(bouncer_dsn, min_size=1, max_size=1, **options)
    other = await asyncpg.connect(bouncer_dsn, statement_cache_size=0)
    try:
        store = pg_workflow_providers(pool).instance_store
        # The fresh database's only server connection prepares the INSERT...
        await store.create(make_instance())
        # ...then another client holds that server connection in a transaction, so the pool's
        # next statement runs on a new one, where asyncpg's cached statement does not exist.
        async with other.transaction():
            if statement_cache_size == 0:
                await store.create(make_instance())
                return
            with pytest.raises(
                DatabaseError, match=r'prepared statement "__asyncpg_stmt_\w+__" does not exist'
            ) as caught:
                await store.create(make_instance())
        cause = caught.value.__cause__
        assert isinstance(cause, asyncpg.InvalidSQLStatementNameError)
        assert "statement_cache_size to 0" in (cause.hint or "")
    finally:
        await other.close()
        await pool.close()


async def test_session_mode_works_with_asyncpg_defaults(bouncer: Bouncer) -> None:
    # A client keeps its server connection until it disconnects, so asyncpg's statement cache is
    # fine; the asyncpg pool must not be larger than pgbouncer's, or the extra clients wait.
    pool = await create_pool(bouncer.dsn(bouncer.session_db), min_size=1, max_size=POOL_SIZE)
    try:
        runtime = Parcels(pg_workflow_providers(pool), ManualClock(NOW)).runtime
        parcel = await runtime.create_instance("parcel")
        results = await asyncio.gather(
            *(
                runtime.trigger_event(parcel.uuid, "bump", trigger_metadata={"task": i})
                for i in range(6)
            )
        )
        assert all(r.outcome == "success" for r in results)
        stored = await runtime.get_instance(parcel.uuid)
        assert stored is not None
        assert (stored.version, sorted(stored.context["log"])) == (7, list(range(6)))
    finally:
        await pool.close()


async def test_statement_mode_cannot_run_transactions(bouncer: Bouncer) -> None:
    pool = await create_pool(
        bouncer.dsn(bouncer.statement_db), statement_cache_size=0, min_size=1, max_size=2
    )
    try:
        providers = pg_workflow_providers(pool)
        await providers.instance_store.create(make_instance())  # one autocommit statement: fine
        with pytest.raises(ConnectionLostError, match="BEGIN") as caught:
            async with providers.transaction_runner.transaction():
                await providers.instance_store.create(make_instance())
        assert "transaction blocks not allowed in statement pooling mode" in str(
            caught.value.__cause__
        )
    finally:
        await pool.close()
