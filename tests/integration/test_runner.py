"""PgTransactionRunner against a real PostgreSQL: SQL issued, isolation, faults, tasks, bind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from helpers import row_locked

from duraflows_pg_async import PgTransactionRunner, create_pool, pg_workflow_providers
from duraflows_pg_async.errors import (
    CommitRolledBackError,
    DatabaseError,
    InvalidArgumentError,
    LockTimeoutError,
    NoActiveTransactionError,
    TransactionTaskError,
)
from duraflows_pg_async.testing import make_instance


class Recorder:
    """Collects the statements a pool's connections send, through asyncpg's query logger."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, record: Any) -> None:
        self.statements.append(record.query)

    def control(self) -> list[str]:
        """Transaction-control statements only (BEGIN, SAVEPOINT, COMMIT, ...); a session reset
        sent together with COMMIT shows as "COMMIT"."""
        words = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")
        out = []
        for statement in self.statements:
            last = statement.strip().splitlines()[-1]
            if "\n" in statement.strip() and last == "COMMIT":
                out.append("COMMIT")
            elif statement.split(" ", 1)[0].rstrip(";").upper() in words:
                out.append(statement)
        return out


@pytest.fixture
async def recorded(database: str) -> AsyncIterator[tuple[asyncpg.Pool, Recorder]]:
    recorder = Recorder()

    async def init(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(recorder)

    pool = await create_pool(database, min_size=1, max_size=4, init=init)
    try:
        yield pool, recorder
    finally:
        await pool.close()


async def count_rows(pool: asyncpg.Pool, table: str = "workflow_instances") -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {table}"))


async def idle_in_transaction(pool: asyncpg.Pool) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state LIKE 'idle in transaction%'"
        )
    )


async def test_commit_returns_value_and_sends_begin_commit(recorded: Any) -> None:
    pool, recorder = recorded
    runner = PgTransactionRunner(pool)

    async def work() -> int:
        return int(await runner.connection().fetchval("SELECT 41 + 1"))

    assert await runner.run_in_transaction(work) == 42
    assert recorder.control() == ["BEGIN", "COMMIT"]
    # asyncpg's release-time session reset rides along with COMMIT: nothing is sent at release.
    assert recorder.statements[0] == "BEGIN"
    assert recorder.statements[1] == "SELECT 41 + 1"
    commit = recorder.statements[2].splitlines()
    assert commit[0] == "SELECT pg_advisory_unlock_all();"
    assert commit[-1] == "COMMIT"
    assert "RESET ALL;" in commit
    assert len(recorder.statements) == 3


async def test_session_reset_still_happens_when_the_commit_did_not_carry_it(
    recorded: Any,
) -> None:
    pool, recorder = recorded
    runner = PgTransactionRunner(pool)
    async with runner.transaction():
        await runner.connection().execute("SET application_name = 'leaky'")
    async with pool.acquire() as conn:  # used outside the runner: the pool resets it
        assert await conn.fetchval("SHOW application_name") == ""
        await conn.execute("SET application_name = 'leaky again'")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SHOW application_name") == ""
    resets = [s for s in recorder.statements if s.startswith("SELECT pg_advisory_unlock_all()")]
    assert len(resets) == 3  # with the COMMIT, and at each of the two plain releases


async def test_error_rolls_back_and_propagates_the_same_exception(pool: asyncpg.Pool) -> None:
    p = pg_workflow_providers(pool)
    boom = RuntimeError("boom")
    with pytest.raises(RuntimeError) as caught:
        async with p.transaction_runner.transaction():
            await p.instance_store.create(make_instance())
            raise boom
    assert caught.value is boom
    assert await count_rows(pool) == 0
    assert pool.get_idle_size() == pool.get_size()


async def test_nested_calls_are_numbered_savepoints(recorded: Any) -> None:
    pool, recorder = recorded
    p = pg_workflow_providers(pool)
    runner = p.transaction_runner
    async with runner.transaction():
        async with runner.transaction():
            await p.instance_store.create(make_instance())
        with pytest.raises(ValueError, match="inner"):
            async with runner.transaction():
                await p.instance_store.create(make_instance())
                raise ValueError("inner")
        async with runner.transaction(), runner.transaction():
            pass
    assert recorder.control() == [
        "BEGIN",
        "SAVEPOINT duraflows_sp_1",
        "RELEASE SAVEPOINT duraflows_sp_1",
        "SAVEPOINT duraflows_sp_2",
        "ROLLBACK TO SAVEPOINT duraflows_sp_2; RELEASE SAVEPOINT duraflows_sp_2",
        "SAVEPOINT duraflows_sp_3",
        "SAVEPOINT duraflows_sp_4",
        "RELEASE SAVEPOINT duraflows_sp_4",
        "RELEASE SAVEPOINT duraflows_sp_3",
        "COMMIT",
    ]
    assert await count_rows(pool) == 1


async def test_timeouts_are_set_local_once_per_transaction(recorded: Any) -> None:
    pool, recorder = recorded
    bounded = PgTransactionRunner(pool, lock_timeout=3, statement_timeout=timedelta(seconds=30))
    plain = PgTransactionRunner(pool)
    async with bounded.transaction():
        conn = bounded.connection()
        assert await conn.fetchval("SHOW lock_timeout") == "3s"
        assert await conn.fetchval("SHOW statement_timeout") == "30s"
        async with bounded.transaction():
            pass
    assert recorder.control()[0] == (
        "BEGIN; SET LOCAL lock_timeout = 3000; SET LOCAL statement_timeout = 30000"
    )
    assert "SAVEPOINT duraflows_sp_1" in recorder.control()
    async with plain.transaction():
        assert await plain.connection().fetchval("SHOW lock_timeout") == "0"


async def test_zero_timeout_is_accepted_and_fractions_round_up(database: str) -> None:
    # The session defaults are non-zero, so reading back "0" shows that 0 was applied, not
    # left out. Read-backs use timeouts no statement can reach on a loaded machine; a tiny
    # positive timeout is checked as the milliseconds the runner will SET.
    pool = await create_pool(
        database,
        min_size=1,
        max_size=1,
        server_settings={"lock_timeout": "40s", "statement_timeout": "50s"},
    )
    try:
        zero = PgTransactionRunner(pool, lock_timeout=0, statement_timeout=timedelta(0))
        assert (zero.lock_timeout_ms, zero.statement_timeout_ms) == (0, 0)
        async with zero.transaction():
            conn = zero.connection()
            assert await conn.fetchval("SHOW lock_timeout") == "0"
            assert await conn.fetchval("SHOW statement_timeout") == "0"
        fraction = PgTransactionRunner(pool, lock_timeout=60.0005, statement_timeout=30.0001)
        assert (fraction.lock_timeout_ms, fraction.statement_timeout_ms) == (60001, 30001)
        async with fraction.transaction():
            conn = fraction.connection()
            assert await conn.fetchval("SHOW lock_timeout") == "60001ms"
            assert await conn.fetchval("SHOW statement_timeout") == "30001ms"
        # Below a millisecond still rounds up: never to 0, which would mean "no timeout".
        tiny = PgTransactionRunner(pool, lock_timeout=0.0015, statement_timeout=1e-9)
        assert (tiny.lock_timeout_ms, tiny.statement_timeout_ms) == (2, 1)
        # Outside any transaction the session's own settings are back.
        assert await pool.fetchval("SHOW statement_timeout") == "50s"
    finally:
        await pool.close()


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "3s", True, timedelta(-1)])
def test_invalid_timeouts_are_refused_at_construction(pool: asyncpg.Pool, bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="lock_timeout"):
        PgTransactionRunner(pool, lock_timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="statement_timeout"):
        pg_workflow_providers(pool, statement_timeout=bad)  # type: ignore[arg-type]


async def test_lock_timeout_fails_fast_and_leaves_nothing(
    pool: asyncpg.Pool, database: str
) -> None:
    p = pg_workflow_providers(pool, lock_timeout=0.2)
    instance = make_instance()
    await p.instance_store.create(instance)
    async with row_locked(database, instance.uuid):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(LockTimeoutError) as caught:
            async with p.transaction_runner.transaction():
                await p.instance_store.create(make_instance())
                await p.instance_store.lock_by_uuid(instance.uuid)
        assert loop.time() - started < 5
        assert isinstance(caught.value.__cause__, asyncpg.LockNotAvailableError)
    assert await count_rows(pool) == 1
    assert pool.get_idle_size() == pool.get_size()


async def test_commit_answered_with_rollback_is_an_error(pool: asyncpg.Pool) -> None:
    p = pg_workflow_providers(pool)
    ran: list[str] = []
    with pytest.raises(CommitRolledBackError, match="COMMIT was rolled back"):
        async with p.transaction_runner.transaction():
            p.transaction_runner.after_commit(lambda: ran.append("callback"))
            await p.instance_store.create(make_instance())
            with pytest.raises(asyncpg.DivisionByZeroError):
                await p.transaction_runner.connection().execute("SELECT 1/0")
    assert ran == []
    assert await count_rows(pool) == 0


async def test_nested_call_that_swallowed_a_sql_error_fails_loudly(pool: asyncpg.Pool) -> None:
    p = pg_workflow_providers(pool)
    runner = p.transaction_runner
    with pytest.raises(DatabaseError, match="current transaction is aborted"):
        async with runner.transaction():
            await p.instance_store.create(make_instance())
            async with runner.transaction():
                with contextlib.suppress(asyncpg.DivisionByZeroError):
                    await runner.connection().execute("SELECT 1/0")
    assert await count_rows(pool) == 0


async def test_caught_nested_database_error_keeps_the_outer_transaction(pool: asyncpg.Pool) -> None:
    p = pg_workflow_providers(pool)
    runner = p.transaction_runner
    async with runner.transaction():
        await p.instance_store.create(make_instance())
        with pytest.raises(asyncpg.DivisionByZeroError):
            async with runner.transaction():
                await p.instance_store.create(make_instance())
                await runner.connection().execute("SELECT 1/0")
        await p.instance_store.create(make_instance())
    assert await count_rows(pool) == 2


async def test_lost_connection_is_terminated_and_original_error_kept(
    pool: asyncpg.Pool, raw_connection: asyncpg.Connection
) -> None:
    p = pg_workflow_providers(pool)
    runner = p.transaction_runner
    boom = RuntimeError("body failed after the backend died")
    with pytest.raises(RuntimeError) as caught:
        async with runner.transaction():
            await p.instance_store.create(make_instance())
            pid = runner.connection().get_server_pid()
            await raw_connection.execute("SELECT pg_terminate_backend($1)", pid)
            raise boom
    # The ROLLBACK failed; the body's error is what the caller sees, not the ROLLBACK's.
    assert caught.value is boom
    assert await count_rows(pool) == 0
    async with runner.transaction():
        assert runner.connection().get_server_pid() != pid
        await p.instance_store.create(make_instance())
    assert await count_rows(pool) == 1


async def test_failed_rollback_logs_a_warning(
    pool: asyncpg.Pool, raw_connection: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    runner = PgTransactionRunner(pool)
    with caplog.at_level(logging.WARNING, logger="duraflows_pg_async"), pytest.raises(KeyError):
        async with runner.transaction():
            pid = runner.connection().get_server_pid()
            await raw_connection.execute("SELECT pg_terminate_backend($1)", pid)
            raise KeyError("x")
    assert any("ROLLBACK failed" in r.getMessage() for r in caplog.records)


async def test_store_error_on_a_lost_connection_is_wrapped(
    pool: asyncpg.Pool, raw_connection: asyncpg.Connection
) -> None:
    p = pg_workflow_providers(pool)
    runner = p.transaction_runner
    with pytest.raises(DatabaseError) as caught:
        async with runner.transaction():
            pid = runner.connection().get_server_pid()
            await raw_connection.execute("SELECT pg_terminate_backend($1)", pid)
            await p.instance_store.create(make_instance())
    assert caught.value.__cause__ is not None
    assert await count_rows(pool) == 0
    await p.instance_store.create(make_instance())
    assert await count_rows(pool) == 1


@pytest.mark.parametrize("delay", [0.0, 0.001, 0.005, 0.02, 0.05])
async def test_cancellation_inside_a_transaction_leaves_nothing(
    pool: asyncpg.Pool, delay: float
) -> None:
    p = pg_workflow_providers(pool)
    runner = p.transaction_runner
    entered = asyncio.Event()

    async def work() -> None:
        async with runner.transaction():
            await p.instance_store.create(make_instance())
            async with runner.transaction():
                await p.instance_store.create(make_instance())
                entered.set()
                await runner.connection().execute("SELECT pg_sleep(10)")

    task = asyncio.create_task(work())
    await asyncio.wait_for(entered.wait(), 5)
    await asyncio.sleep(delay)  # what is tested: a cancellation this long into the statement
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await count_rows(pool) == 0
    assert await idle_in_transaction(pool) == 0
    assert pool.get_idle_size() == pool.get_size()
    # The connection went back clean: the next transaction works on it.
    async with runner.transaction():
        await p.instance_store.create(make_instance())
    assert await count_rows(pool) == 1


async def test_cancellation_at_many_points_of_a_transaction(pool: asyncpg.Pool) -> None:
    """Cancel after 0..N event-loop steps, so every await of the transaction gets hit.

    Before COMMIT is sent, a cancellation leaves nothing. While COMMIT is in flight the outcome
    is the server's, but always whole: a row is either absent or fully written.
    """
    p = pg_workflow_providers(pool)
    runner = p.transaction_runner
    completed: set[object] = set()
    cancelled: set[object] = set()

    async def work(instance_uuid: object) -> None:
        async with runner.transaction():
            instance = make_instance(uuid=instance_uuid)
            await p.instance_store.create(instance)
            async with runner.transaction():
                locked = await p.instance_store.lock_by_uuid(instance.uuid)
                assert locked is not None
                locked.version += 1
                locked.current_state = "done"
                await p.instance_store.update(locked)
            runner.after_commit(lambda: None)

    for steps in range(60):
        instance_uuid = uuid4()
        task = asyncio.create_task(work(instance_uuid))
        for _ in range(steps):  # yields: the cancellation lands after `steps` loop steps
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
            completed.add(instance_uuid)
        except asyncio.CancelledError:
            cancelled.add(instance_uuid)
        rows = await pool.fetch("SELECT uuid, current_state, version FROM workflow_instances")
        stored = {r["uuid"] for r in rows}
        # Every task that returned normally committed; nothing half-written ever exists.
        assert completed <= stored
        assert stored <= completed | cancelled
        assert all(r["current_state"] == "done" and r["version"] == 1 for r in rows)
        assert await idle_in_transaction(pool) == 0
        assert pool.get_idle_size() == pool.get_size()
    # Early cancellations (before COMMIT was sent) left nothing behind.
    assert len(cancelled - {r["uuid"] for r in rows}) >= 10


async def test_another_task_cannot_use_the_transaction(pool: asyncpg.Pool) -> None:
    p = pg_workflow_providers(pool)
    runner = p.transaction_runner
    instance = make_instance()
    async with runner.transaction():
        await p.instance_store.create(instance)
        with pytest.raises(TransactionTaskError, match="inherited"):
            await asyncio.gather(p.instance_store.find_by_uuid(instance.uuid))
        with pytest.raises(TransactionTaskError):
            await asyncio.create_task(_connection_of(runner))
        assert runner.is_transaction_active()


async def _connection_of(runner: PgTransactionRunner) -> object:
    return runner.connection()


async def test_child_task_may_open_its_own_transaction(pool: asyncpg.Pool) -> None:
    p = pg_workflow_providers(pool)
    runner = p.transaction_runner
    outer_instance = make_instance()

    async def child() -> tuple[int, object]:
        assert not runner.is_transaction_active()
        async with runner.transaction():
            pid = runner.connection().get_server_pid()
            # The parent's uncommitted row is invisible to this separate transaction.
            return pid, await p.instance_store.find_by_uuid(outer_instance.uuid)

    async with runner.transaction():
        await p.instance_store.create(outer_instance)
        parent_pid = runner.connection().get_server_pid()
        child_pid, seen = await asyncio.create_task(child())
    assert child_pid != parent_pid
    assert seen is None


async def test_task_outliving_its_transaction_gets_a_clear_error(pool: asyncpg.Pool) -> None:
    p = pg_workflow_providers(pool)
    release = asyncio.Event()

    async def late() -> object:
        await release.wait()
        return await p.instance_store.find_by_uuid(make_instance().uuid)

    async with p.transaction_runner.transaction():
        leaked = asyncio.create_task(late())
    release.set()
    with pytest.raises(TransactionTaskError):
        await leaked


async def test_outside_a_transaction(pool: asyncpg.Pool) -> None:
    runner = PgTransactionRunner(pool)
    assert not runner.is_transaction_active()
    with pytest.raises(NoActiveTransactionError):
        runner.connection()
    with pytest.raises(NoActiveTransactionError, match="after_commit requires an active"):
        runner.after_commit(lambda: None)
    with pytest.raises(InvalidArgumentError):
        await runner.run_in_transaction("not callable")  # type: ignore[arg-type]


async def test_a_transaction_context_cannot_be_entered_twice(pool: asyncpg.Pool) -> None:
    runner = PgTransactionRunner(pool)
    tx = runner.transaction()
    async with tx:
        with pytest.raises(InvalidArgumentError, match="entered twice"):
            async with tx:
                pass


async def test_pools_never_see_each_others_transactions(database: str) -> None:
    pool_a = await create_pool(database, min_size=1, max_size=2)
    pool_b = await create_pool(database, min_size=1, max_size=2)
    try:
        a = pg_workflow_providers(pool_a)
        b = pg_workflow_providers(pool_b)
        instance = make_instance()
        async with a.transaction_runner.transaction():
            await a.instance_store.create(instance)
            assert await b.instance_store.find_by_uuid(instance.uuid) is None
            assert not b.transaction_runner.is_transaction_active()
            async with b.transaction_runner.transaction():
                assert (
                    b.transaction_runner.connection().get_server_pid()
                    != a.transaction_runner.connection().get_server_pid()
                )
        assert await b.instance_store.find_by_uuid(instance.uuid) is not None
    finally:
        await pool_a.close()
        await pool_b.close()


async def test_after_commit_runs_after_release_in_order(pool: asyncpg.Pool) -> None:
    runner = PgTransactionRunner(pool)
    seen: list[tuple[str, int, bool]] = []

    async def async_cb() -> None:
        seen.append(("async", pool.get_idle_size(), runner.is_transaction_active()))

    def sync_cb() -> None:
        seen.append(("sync", pool.get_idle_size(), runner.is_transaction_active()))

    async with runner.transaction():
        runner.after_commit(async_cb)
        async with runner.transaction():
            runner.after_commit(sync_cb)
        runner.after_commit(lambda: async_cb())
    size = pool.get_size()
    assert seen == [("async", size, False), ("sync", size, False), ("async", size, False)]


async def test_bind_joins_a_transaction_the_caller_owns(pool: asyncpg.Pool) -> None:
    p = pg_workflow_providers(pool)
    runner = p.transaction_runner
    ran: list[int] = []
    async with pool.acquire() as conn:
        with pytest.raises(InvalidArgumentError, match="inside a transaction"):
            async with runner.bind(conn):
                pass
        tx = conn.transaction()
        await tx.start()
        async with runner.bind(conn):
            assert runner.connection() is conn
            await p.instance_store.create(make_instance())
            with pytest.raises(ValueError, match="nested"):
                async with runner.transaction():
                    await p.instance_store.create(make_instance())
                    raise ValueError("nested")
            runner.after_commit(lambda: ran.append(int(runner.is_transaction_active())))
            assert ran == []
        # Callbacks ran at the end of the bound block, still inside the caller's transaction.
        assert ran == [1]
        assert await conn.fetchval("SELECT count(*) FROM workflow_instances") == 1
        await tx.rollback()
    assert await count_rows(pool) == 0


async def test_bind_inside_an_active_transaction_is_refused(pool: asyncpg.Pool) -> None:
    runner = PgTransactionRunner(pool)
    async with runner.transaction():
        with pytest.raises(InvalidArgumentError, match="bind"):
            async with runner.bind(runner.connection()):
                pass
