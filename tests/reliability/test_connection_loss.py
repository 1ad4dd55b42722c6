"""Connection loss in the middle of a transaction, against a real PostgreSQL.

Faults, injected at several points of a transaction (after BEGIN, between writes, just before
COMMIT, during a statement), on the runner and stores and through the runtime (create with an
onEnter chain, trigger_event, the timeout sweep):

- the transaction's backend is terminated with ``pg_terminate_backend`` from another connection;
- the same through a small in-process TCP proxy that delivers the server's FATAL message at once
  but the end of the connection a little later (the driver then holds a connection it knows is
  failing but has not seen close);
- the TCP connection is cut (both sockets reset) by the proxy;
- the proxy stops forwarding (a black hole) and the pool's ``command_timeout`` gives up.

Every time: the call raises a ``DatabaseError`` (``ConnectionLostError`` for a lost connection,
``StatementTimeoutError`` for the black hole) whose ``__cause__`` is the driver's error, nothing
partial is written (checked on a separate connection), no backend is left behind, every pool
slot is usable again, and the next call succeeds on a fresh connection of the same pool. A sweep
that loses the database mid-batch hands the rest of its batch back at its next sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import asyncpg
import pytest
from helpers import ManualClock, lock_row, reminder, wait_until

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
    WorkflowDefinition,
    WorkflowRuntime,
    create_pool,
    pg_workflow_providers,
)
from duraflows_pg_async.errors import (
    ConnectionLostError,
    DatabaseError,
    StatementTimeoutError,
    WorkflowError,
)
from duraflows_pg_async.testing import make_instance

if TYPE_CHECKING:
    from conftest import PgServer

# The pools under test tag their backends, so that the server side can be checked too.
APP = "duraflows-connection-loss"
MIN_SIZE = 2
MAX_SIZE = 4
# How long the black-hole tests let the driver wait for an answer.
COMMAND_TIMEOUT = 0.5

# The driver-level errors a lost connection may surface as, depending on when asyncpg notices it.
DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


# --- the TCP proxy ---------------------------------------------------------------------------


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close the socket at once with a TCP RST (SO_LINGER 0), as a broken network would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


_Link = tuple[asyncio.StreamWriter, asyncio.StreamWriter]


class TcpProxy:
    """A TCP proxy in the test's event loop between the pool and PostgreSQL.

    ``cut()`` resets every client and server socket at once. ``stall()`` makes it a black hole:
    whatever either side sends is dropped and nothing is closed, so a client waits until its own
    timeout gives up (closing either end still closes the pair). ``heal()`` forwards again; like
    TCP giving up on a connection whose data never arrived, it resets the connections that lost
    data meanwhile, and those that carried nothing (idle pool connections) work on. With
    ``eof_delay``, the server closing a connection reaches the client that much later than the
    server's last message. ``refusing`` resets new connections at once.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.black_hole = False
        # While set, new connections are reset at once (the server is unreachable).
        self.refusing = False
        # How long the server's end of a connection takes to reach the client (its last
        # message, such as a FATAL error, arrives at once).
        self.eof_delay = 0.0
        # How many times the server's end of a connection has been held back so far: each
        # time, everything the server sent before has been passed on to the client.
        self.eofs_held = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._lost_data: set[_Link] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    @property
    def open_links(self) -> int:
        return len(self._links)

    def stall(self) -> None:
        self.black_hole = True

    def heal(self) -> None:
        self.black_hole = False
        for client, upstream in list(self._lost_data):
            _reset(client)
            _reset(upstream)
        self._lost_data.clear()

    def cut(self) -> int:
        """Reset every proxied connection (both sides); returns how many were cut."""
        links = list(self._links)
        for client, upstream in links:
            _reset(client)
            _reset(upstream)
        self.cuts += len(links)
        return len(links)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await self._server.wait_closed()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            if self.refusing:
                _reset(client)
                return
            try:
                up_reader, upstream = await asyncio.open_connection(*self.target)
            except OSError:
                _reset(client)
                return
            link = (client, upstream)
            self._links.add(link)
            try:
                await asyncio.gather(
                    self._pump(reader, upstream, link),
                    self._pump(up_reader, client, link, delay_eof=True),
                )
            finally:
                self._links.discard(link)
                self._lost_data.discard(link)
        finally:
            self._handlers.discard(task)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: _Link,
        *,
        delay_eof: bool = False,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if self.black_hole:
                    self._lost_data.add(link)
                    continue
                writer.write(data)
                await writer.drain()
            if delay_eof and self.eof_delay:
                self.eofs_held += 1
                # The fault itself: the end of the connection arrives this much later.
                await asyncio.sleep(self.eof_delay)
        except OSError:  # ConnectionResetError and friends: the link is gone
            pass
        finally:
            for side in link:
                side.transport.abort()


def _netloc(user: str | None, password: str | None, host: str, port: int) -> str:
    auth = ""
    if user:
        auth = user + (f":{password}" if password else "") + "@"
    return f"{auth}{host}:{port}"


def _via_proxy(database_dsn: str, admin_dsn: str, proxy_port: int) -> str:
    """The test database's DSN with the server's address replaced by the proxy's."""
    admin = urlsplit(admin_dsn)
    db = urlsplit(database_dsn)
    netloc = _netloc(admin.username, admin.password, "127.0.0.1", proxy_port)
    return urlunsplit((db.scheme, netloc, db.path, db.query, db.fragment))


def _server_address(admin_dsn: str) -> tuple[str, int]:
    parts = urlsplit(admin_dsn)
    return parts.hostname or "127.0.0.1", parts.port or 5432


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def admin(raw_connection: asyncpg.Connection) -> asyncpg.Connection:
    """A connection outside the pools under test: it kills backends and checks what was written."""
    return raw_connection


@pytest.fixture
async def proxy(pg_server: PgServer) -> AsyncIterator[TcpProxy]:
    p = await TcpProxy(*_server_address(pg_server.admin_dsn)).start()
    try:
        yield p
    finally:
        await p.close()


async def _make_pool(dsn: str, **kwargs: Any) -> asyncpg.Pool:
    return await create_pool(
        dsn,
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
        server_settings={"application_name": APP},
        **kwargs,
    )


@pytest.fixture
async def direct_pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await _make_pool(database)
    try:
        yield pool
    finally:
        await pool.close()


async def _proxied_pool(
    database: str, pg_server: PgServer, proxy: TcpProxy, command_timeout: float
) -> AsyncIterator[asyncpg.Pool]:
    pool = await _make_pool(
        _via_proxy(database, pg_server.admin_dsn, proxy.port), command_timeout=command_timeout
    )
    try:
        yield pool
    finally:
        proxy.heal()
        proxy.eof_delay = 0.0
        await asyncio.wait_for(pool.close(), 10)


@pytest.fixture
async def proxied_pool(
    database: str, pg_server: PgServer, proxy: TcpProxy
) -> AsyncIterator[asyncpg.Pool]:
    """Through the proxy; the command timeout is only a safety net here."""
    async for pool in _proxied_pool(database, pg_server, proxy, 5.0):
        yield pool


@pytest.fixture
async def stalling_pool(
    database: str, pg_server: PgServer, proxy: TcpProxy
) -> AsyncIterator[asyncpg.Pool]:
    """Through the proxy, with the short command timeout the black-hole tests rely on."""
    async for pool in _proxied_pool(database, pg_server, proxy, COMMAND_TIMEOUT):
        yield pool


@dataclass
class Fault:
    """One way to lose the transaction's connection, with the pool it applies to."""

    kind: str
    pool: asyncpg.Pool
    admin: asyncpg.Connection
    database: str
    proxy: TcpProxy | None = None
    injected: int = 0
    last_uuid: UUID | None = None

    async def inject(self, pid: int) -> None:
        """Lose the connection whose backend is ``pid``."""
        self.injected += 1
        if self.kind == "terminate":
            await terminate_and_wait(self.admin, pid)
        elif self.kind == "fatal_first":
            proxy = self.proxy
            assert proxy is not None
            held = proxy.eofs_held
            await terminate_and_wait(self.admin, pid)

            # Until the server's FATAL message has reached the client and the end of the
            # connection has not: the driver holds a connection it already knows is failing.
            async def end_held_back() -> bool:
                return proxy.eofs_held > held

            await wait_until(
                end_held_back,
                within=5,
                what="the proxy holding back the end of the terminated connection",
            )
        else:
            # No waiting for the backend here: one blocked on a lock notices a dead client only
            # when it next talks to it. Nothing the client sent after the cut can arrive.
            assert self.proxy is not None
            assert self.proxy.cut() >= 1


async def terminate_and_wait(admin: asyncpg.Connection, pid: int) -> None:
    """Terminate backend ``pid`` and return once it has exited."""
    if admin.get_server_version() >= (14, 0):
        # From PostgreSQL 14, pg_terminate_backend can wait for the exit itself.
        assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
        return
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    await wait_backend_gone(admin, pid)


@pytest.fixture(params=["terminate", "fatal_first", "cut"])
def fault(request: pytest.FixtureRequest, admin: asyncpg.Connection, database: str) -> Fault:
    """``terminate``: pg_terminate_backend on a direct connection. ``fatal_first``: the same
    through the proxy, which delivers the server's FATAL message at once and the closed socket
    0.3 s later. ``cut``: the proxy resets the TCP connections."""
    # A plain fixture: it picks the pool (an async fixture) by name for each kind of fault.
    if request.param == "terminate":
        return Fault("terminate", request.getfixturevalue("direct_pool"), admin, database)
    proxy: TcpProxy = request.getfixturevalue("proxy")
    if request.param == "fatal_first":
        proxy.eof_delay = 0.3
    pool = request.getfixturevalue("proxied_pool")
    return Fault(request.param, pool, admin, database, proxy)


# --- checks ----------------------------------------------------------------------------------
# The server and the driver notice a loss asynchronously: these checks poll (wait_until).


async def wait_backend_gone(admin: asyncpg.Connection, pid: int) -> None:
    async def gone() -> bool:
        return not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)

    await wait_until(gone, within=5, what=f"backend {pid} gone")


async def app_backends(admin: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(
        await admin.fetch(
            "SELECT pid, state FROM pg_stat_activity WHERE application_name = $1 "
            "AND datname = current_database()",
            APP,
        )
    )


async def assert_pool_recovered(pool: asyncpg.Pool, admin: asyncpg.Connection) -> None:
    """Every connection is back in the pool, and the server holds exactly the pool's backends,
    none of them inside a transaction (the lost one is gone, not left idle in transaction)."""
    assert pool.get_idle_size() == pool.get_size() <= MAX_SIZE

    async def settled() -> bool:
        backends = await app_backends(admin)
        return len(backends) == pool.get_size() and all(row["state"] == "idle" for row in backends)

    await wait_until(
        settled, within=5, what="the server holds exactly the pool's backends, all idle"
    )


async def assert_back_to_normal(pool: asyncpg.Pool, admin: asyncpg.Connection) -> None:
    """After a successful call: the pool refills to its minimum size, all idle and healthy."""

    async def refilled() -> bool:
        return pool.get_size() >= MIN_SIZE

    await wait_until(refilled, within=5, what="the pool back to its minimum size")
    await assert_pool_recovered(pool, admin)
    # Every slot of the pool can be used at once (none leaked), and every connection answers
    # (none is a broken leftover).
    async with asyncio.timeout(5):
        connections = [await pool.acquire() for _ in range(MAX_SIZE)]
        try:
            for conn in connections:
                assert await conn.fetchval("SELECT 1") == 1
        finally:
            for conn in connections:
                await pool.release(conn)


def assert_wrapped(error: BaseException) -> None:
    """A package error with the driver's error as its cause."""
    assert isinstance(error, DatabaseError), repr(error)
    assert isinstance(error.__cause__, DRIVER_ERRORS), repr(error.__cause__)
    assert not isinstance(error.__cause__, WorkflowError)


async def count(admin: asyncpg.Connection, table: str, uuid: UUID | None = None) -> int:
    column = "uuid" if table == "workflow_instances" else "workflow_instance_uuid"
    if uuid is None:
        return int(await admin.fetchval(f"SELECT count(*) FROM {table}"))
    return int(await admin.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", uuid))


def history(instance_uuid: UUID) -> HistoryRecord:
    return HistoryRecord(
        workflow_instance_uuid=instance_uuid,
        from_state="start",
        event_name="go",
        to_state="start",
        outcome="success",
    )


# --- the transaction runner and the stores ---------------------------------------------------

POINTS = ["after_begin", "between_writes", "before_commit", "during_statement"]


async def _lose_connection_at(fault: Fault, point: str) -> None:
    """Two writes in one transaction; the connection is lost at ``point`` (the call raises).
    The uuid of the instance it tried to write is left in ``fault.last_uuid``."""
    p = pg_workflow_providers(fault.pool)
    runner = p.transaction_runner
    assert isinstance(runner, PgTransactionRunner)
    held = make_instance()
    await p.instance_store.create(held)
    instance = make_instance()
    fault.last_uuid = instance.uuid
    lock_holder = await asyncpg.connect(fault.database) if point == "during_statement" else None
    if lock_holder is not None:
        await lock_holder.execute("BEGIN")
        await lock_row(lock_holder, held.uuid)
    try:
        async with runner.transaction():
            pid = runner.connection().get_server_pid()
            if point == "after_begin":
                await fault.inject(pid)
            await p.instance_store.create(instance)
            if point == "between_writes":
                await fault.inject(pid)
            await p.history_store.append(history(instance.uuid))
            if point == "during_statement":
                # lock_by_uuid waits for the row lock held above; the fault hits it in flight.
                async def waiting() -> bool:
                    return bool(
                        await fault.admin.fetchval(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE pid = $1 AND wait_event_type = 'Lock'",
                            pid,
                        )
                    )

                async def inject_when_waiting() -> None:
                    await wait_until(
                        waiting, within=5, what="lock_by_uuid waiting for the row lock"
                    )
                    await fault.inject(pid)

                injector = asyncio.create_task(inject_when_waiting())
                try:
                    await p.instance_store.lock_by_uuid(held.uuid)
                finally:
                    await injector
            if point == "before_commit":
                await fault.inject(pid)
    finally:
        if lock_holder is not None:
            await lock_holder.close()


@pytest.mark.parametrize("point", POINTS)
async def test_lost_connection_mid_transaction_leaves_nothing(fault: Fault, point: str) -> None:
    pool, admin = fault.pool, fault.admin
    with pytest.raises(WorkflowError) as caught:
        await _lose_connection_at(fault, point)
    assert_wrapped(caught.value)
    assert fault.injected == 1
    await assert_pool_recovered(pool, admin)
    # Nothing partial: neither the instance nor its history row.
    assert fault.last_uuid is not None
    assert await count(admin, "workflow_instances", fault.last_uuid) == 0
    assert await count(admin, "workflow_history") == 0
    # The next call, on the same pool, gets a fresh connection and succeeds.
    p = pg_workflow_providers(pool)
    instance = make_instance()
    async with p.transaction_runner.transaction():
        await p.instance_store.create(instance)
        await p.history_store.append(history(instance.uuid))
    assert await count(admin, "workflow_instances", instance.uuid) == 1
    assert await count(admin, "workflow_history", instance.uuid) == 1
    await assert_back_to_normal(pool, admin)


async def test_each_kind_of_loss_is_a_connection_lost_error(fault: Fault) -> None:
    """Whatever the driver noticed first (the server's FATAL message, the closed socket, or a
    connection it already handed back), the caller can tell a lost connection apart."""
    for point in POINTS:
        with pytest.raises(ConnectionLostError) as caught:
            await _lose_connection_at(fault, point)
        assert_wrapped(caught.value)
        await assert_pool_recovered(fault.pool, fault.admin)
    assert fault.injected == len(POINTS)


async def test_autocommit_store_call_on_a_lost_connection(fault: Fault) -> None:
    """Outside a transaction, a store call on a pooled connection the server dropped fails
    once with ConnectionLostError; the pool discards it and the next call reconnects."""
    pool, admin = fault.pool, fault.admin
    p = pg_workflow_providers(pool)
    # Make every pooled connection a dead one.
    pids = [row["pid"] for row in await app_backends(admin)]
    assert pids
    if fault.kind == "cut":
        await fault.inject(pids[0])
        for pid in pids:
            await wait_backend_gone(admin, pid)
    else:
        for pid in pids:
            await fault.inject(pid)
    instance = make_instance()
    outcomes: list[str] = []
    for _ in range(MAX_SIZE + 1):
        try:
            await p.instance_store.create(instance)
        except ConnectionLostError as exc:
            assert_wrapped(exc)
            outcomes.append("lost")
        else:
            outcomes.append("ok")
            break
    assert outcomes[-1] == "ok", outcomes
    assert await count(admin, "workflow_instances", instance.uuid) == 1
    await assert_back_to_normal(pool, admin)


# --- through the runtime ---------------------------------------------------------------------

PIPELINE = WorkflowDefinition(
    name="pipeline",
    initial_state="new",
    states={
        # create: step 1 (after the insert), update + history, step 2, update + history
        "new": State(on_enter=OnEnter(target_state="checked", commands=(CommandRef("step"),))),
        "checked": State(on_enter=OnEnter(target_state="ready", commands=(CommandRef("step"),))),
        # trigger "go": step 1 (before any write), update + history, step 2, update + history
        "ready": State(
            events={"go": Event(target_state="working", commands=(CommandRef("step"),))}
        ),
        "working": State(on_enter=OnEnter(target_state="done", commands=(CommandRef("step"),))),
        "done": State(),
    },
)


@dataclass
class Plan:
    """The ``step`` command: counts its calls and loses the connection at call ``fail_at``."""

    fault: Fault
    runtime: WorkflowRuntime | None = None
    fail_at: int | None = None
    calls: int = 0
    injected_at: list[int] = field(default_factory=list)

    async def step(self, subject: Any, ctx: ExecutionContext) -> None:
        self.calls += 1
        ctx.context[f"step{self.calls}"] = True
        if self.calls == self.fail_at:
            assert self.runtime is not None
            runner = self.runtime.persistence.transaction_runner
            assert isinstance(runner, PgTransactionRunner)
            pid = runner.connection().get_server_pid()
            await self.fault.inject(pid)
            self.injected_at.append(self.calls)

    def arm(self, fail_at: int | None) -> None:
        self.calls = 0
        self.fail_at = fail_at


async def _runtime(fault: Fault) -> tuple[WorkflowRuntime, Plan, ManualClock]:
    plan = Plan(fault)
    definitions = DefinitionRegistry()
    definitions.register(PIPELINE)
    definitions.register(reminder(command="step"))
    commands = CommandRegistry()
    commands.register("step", plan.step)
    clock = ManualClock()
    runtime = WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        persistence=pg_workflow_providers(fault.pool),
        clock=clock,
    )
    plan.runtime = runtime
    await runtime.initialize()
    return runtime, plan, clock


@pytest.mark.parametrize("fail_at", [1, 2], ids=["after_insert", "between_hops"])
async def test_create_instance_with_on_enter_chain(fault: Fault, fail_at: int) -> None:
    runtime, plan, _clock = await _runtime(fault)
    admin = fault.admin
    plan.arm(fail_at)
    with pytest.raises(WorkflowError) as caught:
        await runtime.create_instance("pipeline")
    assert_wrapped(caught.value)
    assert plan.injected_at == [fail_at]
    assert await count(admin, "workflow_instances") == 0
    assert await count(admin, "workflow_history") == 0
    await assert_pool_recovered(fault.pool, admin)

    plan.arm(None)
    created = await runtime.create_instance("pipeline")
    assert created.current_state == "ready"
    assert await count(admin, "workflow_instances") == 1
    assert await count(admin, "workflow_history", created.uuid) == 2
    await assert_back_to_normal(fault.pool, admin)


@pytest.mark.parametrize("fail_at", [1, 2], ids=["before_first_write", "between_writes"])
async def test_trigger_event_with_on_enter_chain(fault: Fault, fail_at: int) -> None:
    runtime, plan, _clock = await _runtime(fault)
    admin = fault.admin
    plan.arm(None)
    created = await runtime.create_instance("pipeline")
    row_before = await admin.fetchrow(
        "SELECT current_state, version, context_json FROM workflow_instances WHERE uuid = $1",
        created.uuid,
    )
    plan.arm(fail_at)
    with pytest.raises(WorkflowError) as caught:
        await runtime.trigger_event(created.uuid, "go")
    assert_wrapped(caught.value)
    assert plan.injected_at == [fail_at]
    row_after = await admin.fetchrow(
        "SELECT current_state, version, context_json FROM workflow_instances WHERE uuid = $1",
        created.uuid,
    )
    assert row_after == row_before
    assert await count(admin, "workflow_history", created.uuid) == 2  # the create's two hops
    await assert_pool_recovered(fault.pool, admin)

    plan.arm(None)
    result = await runtime.trigger_event(created.uuid, "go")
    assert result.to_state == "done"
    assert await count(admin, "workflow_history", created.uuid) == 4
    instance = await runtime.get_instance(created.uuid)
    assert instance is not None
    assert instance.version == created.version + 2
    await assert_back_to_normal(fault.pool, admin)


async def test_timeout_command_loses_the_connection_and_is_retried(fault: Fault) -> None:
    runtime, plan, clock = await _runtime(fault)
    admin = fault.admin
    plan.arm(None)
    created = await runtime.create_instance("reminder")
    clock.advance(minutes=6)

    plan.arm(1)
    result = await runtime.process_expired_workflows()
    assert plan.injected_at == [1]
    assert (result.processed, result.rejected, len(result.parked)) == (0, 0, 0)
    assert len(result.failed) == 1
    failure = result.failed[0]
    assert failure.uuid == created.uuid
    # The failure was recorded on a fresh connection: a retry is scheduled.
    assert failure.attempts == 1
    assert failure.retry_at is not None
    assert await count(admin, "workflow_history", created.uuid) == 0
    instance = await runtime.get_instance(created.uuid)
    assert instance is not None
    assert instance.current_state == "waiting"
    assert instance.timeout_retry is not None
    assert instance.timeout_retry.attempts == 1
    await assert_pool_recovered(fault.pool, admin)

    # Not due again before its retry time; due (and processed once) after it.
    plan.arm(None)
    early = await runtime.process_expired_workflows()
    assert (early.processed, len(early.failed)) == (0, 0)
    clock.set(failure.retry_at + timedelta(seconds=1))
    retried = await runtime.process_expired_workflows()
    assert (retried.processed, len(retried.failed)) == (1, 0)
    instance = await runtime.get_instance(created.uuid)
    assert instance is not None
    assert instance.current_state == "reminded"
    assert instance.expires_at is None
    assert instance.timeout_retry is None
    assert await count(admin, "workflow_history", created.uuid) == 1
    await assert_back_to_normal(fault.pool, admin)


async def test_sweep_hands_back_the_claims_it_could_not_use(
    proxied_pool: asyncpg.Pool, proxy: TcpProxy, admin: asyncpg.Connection, database: str
) -> None:
    """The database becomes unreachable in the middle of a sweep's batch: the rest of the batch
    fails and not even the failures can be recorded. The next sweep, once the database is back,
    takes those instances at once instead of leaving them claimed for SWEEP_CLAIM (2 minutes)."""
    fault = Fault("cut", proxied_pool, admin, database, proxy)
    runtime, plan, clock = await _runtime(fault)

    async def unreachable(pid: int) -> None:
        proxy.refusing = True
        proxy.cut()

    fault.inject = unreachable  # type: ignore[method-assign]
    plan.arm(None)
    created = [(await runtime.create_instance("reminder")).uuid for _ in range(5)]
    clock.advance(minutes=6)

    plan.arm(2)  # the second instance's command loses the database
    first = await runtime.process_expired_workflows()
    assert first.processed == 1
    assert len(first.failed) == 4
    assert all(f.attempts is None for f in first.failed)  # nothing could be recorded

    proxy.refusing = False
    plan.arm(None)
    clock.advance(seconds=1)  # far less than the sweep's claim
    second = await runtime.process_expired_workflows()
    assert (second.processed, len(second.failed)) == (4, 0)
    rows = await admin.fetch(
        "SELECT workflow_instance_uuid, count(*) AS n FROM workflow_history GROUP BY 1"
    )
    assert {row["workflow_instance_uuid"]: row["n"] for row in rows} == dict.fromkeys(created, 1)
    assert await count_due(admin) == 0
    await assert_back_to_normal(proxied_pool, admin)


async def count_due(admin: asyncpg.Connection) -> int:
    return int(
        await admin.fetchval("SELECT count(*) FROM workflow_instances WHERE expires_at IS NOT NULL")
    )


# --- a network that stops answering ----------------------------------------------------------


async def _wait_no_transaction(admin: asyncpg.Connection) -> None:
    """The stalled backend is closed once the driver gives up on its connection."""

    async def none_in_transaction() -> bool:
        return all(row["state"] == "idle" for row in await app_backends(admin))

    await wait_until(none_in_transaction, within=10, what="no backend left in a transaction")


@pytest.mark.parametrize("point", ["between_writes", "before_commit"])
async def test_black_hole_times_out_with_a_clear_error(
    stalling_pool: asyncpg.Pool, proxy: TcpProxy, admin: asyncpg.Connection, point: str
) -> None:
    p = pg_workflow_providers(stalling_pool)
    runner = p.transaction_runner
    instance = make_instance()
    loop = asyncio.get_running_loop()
    with pytest.raises(StatementTimeoutError) as caught:
        async with runner.transaction():
            await p.instance_store.create(instance)
            if point == "between_writes":
                proxy.stall()
            started = loop.time()
            await p.history_store.append(history(instance.uuid))
            if point == "before_commit":
                proxy.stall()
                started = loop.time()
    elapsed = loop.time() - started
    assert_wrapped(caught.value)
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert "timed out" in str(caught.value)
    # The driver's timeout, the cancel request it then tries, and the ROLLBACK that cannot get
    # through: bounded by a few command timeouts, not by the runner's 10 s cleanup limit.
    assert elapsed < 5 * COMMAND_TIMEOUT + 1, elapsed
    await _wait_no_transaction(admin)
    assert await count(admin, "workflow_instances", instance.uuid) == 0
    assert await count(admin, "workflow_history") == 0
    assert stalling_pool.get_idle_size() == stalling_pool.get_size()

    # The network is back: the same pool recovers.
    proxy.heal()
    again = make_instance()
    async with runner.transaction():
        await p.instance_store.create(again)
        await p.history_store.append(history(again.uuid))
    assert await count(admin, "workflow_instances", again.uuid) == 1
    await assert_back_to_normal(stalling_pool, admin)


async def test_black_hole_through_the_runtime(
    stalling_pool: asyncpg.Pool, proxy: TcpProxy, admin: asyncpg.Connection, database: str
) -> None:
    fault = Fault("black_hole", stalling_pool, admin, database, proxy)
    runtime, plan, _clock = await _runtime(fault)

    async def stall(pid: int) -> None:
        proxy.stall()

    fault.inject = stall  # type: ignore[method-assign]
    plan.arm(None)
    created = await runtime.create_instance("pipeline")
    plan.arm(1)
    with pytest.raises(StatementTimeoutError) as caught:
        await runtime.trigger_event(created.uuid, "go")
    assert_wrapped(caught.value)
    await _wait_no_transaction(admin)
    assert await count(admin, "workflow_history", created.uuid) == 2
    proxy.heal()
    plan.arm(None)
    assert (await runtime.trigger_event(created.uuid, "go")).to_state == "done"
    assert await count(admin, "workflow_history", created.uuid) == 4
    await assert_back_to_normal(stalling_pool, admin)
