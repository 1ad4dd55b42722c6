"""PgTransactionRunner.lazy_savepoint: SAVEPOINT only before the block's first statement.

The batched sweep fires each instance in one; an instance whose commands send no SQL must cost
no round trip, one that sends some must be rolled back alone when it fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from duraflows_pg_async import PgTransactionRunner, create_pool
from duraflows_pg_async.errors import NoActiveTransactionError


@pytest.fixture
async def logged(database: str) -> AsyncIterator[tuple[asyncpg.Pool, list[str]]]:
    statements: list[str] = []

    async def init(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda record: statements.append(record.query))

    pool = await create_pool(database, min_size=1, max_size=2, init=init)
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS lazy_t (n int)")
        statements.clear()
        yield pool, statements
    finally:
        await pool.close()


async def test_a_block_that_sends_nothing_costs_nothing(logged: Any) -> None:
    pool, statements = logged
    runner = PgTransactionRunner(pool)
    called: list[str] = []
    async with runner.transaction():
        async with runner.lazy_savepoint():
            runner.after_commit(lambda: called.append("kept"))
        with pytest.raises(RuntimeError):
            async with runner.lazy_savepoint():
                runner.after_commit(lambda: called.append("dropped"))
                raise RuntimeError("boom")
    assert statements == ["BEGIN", statements[-1]]  # BEGIN, then COMMIT with the reset
    assert called == ["kept"]


async def test_the_first_statement_sends_the_savepoint_and_a_failure_rolls_back_to_it(
    logged: Any,
) -> None:
    pool, statements = logged
    runner = PgTransactionRunner(pool)
    async with runner.transaction():
        await runner.connection().execute("INSERT INTO lazy_t VALUES (1)")
        with pytest.raises(RuntimeError):
            async with runner.lazy_savepoint():
                assert runner.connection().get_server_pid() > 0  # sends nothing
                await runner.connection().execute("INSERT INTO lazy_t VALUES (2)")
                raise RuntimeError("boom")
        async with runner.lazy_savepoint():
            await runner.connection().execute("INSERT INTO lazy_t VALUES (3)")
    assert sorted(await pool.fetchval("SELECT array_agg(n) FROM lazy_t")) == [1, 3]
    control = [s for s in statements if s.split(" ", 1)[0] in ("SAVEPOINT", "RELEASE", "ROLLBACK")]
    assert control[:2] == [
        "SAVEPOINT duraflows_sp_1",
        "ROLLBACK TO SAVEPOINT duraflows_sp_1; RELEASE SAVEPOINT duraflows_sp_1",
    ]
    assert control[2] == "SAVEPOINT duraflows_sp_2"
    assert control[-1] == "RELEASE SAVEPOINT duraflows_sp_2"


async def test_a_cursor_marks_the_block_unguarded(logged: Any) -> None:
    pool, _statements = logged
    runner = PgTransactionRunner(pool)
    async with runner.transaction():
        savepoint = runner.lazy_savepoint()
        async with savepoint:
            cursor = await runner.connection().cursor("SELECT 1")
            assert await cursor.fetchrow() is not None
        assert savepoint.unguarded
        used = runner.lazy_savepoint()
        async with used:
            await runner.connection().fetchval("SELECT 1")
            await (await runner.connection().cursor("SELECT 1")).fetchrow()
        assert not used.unguarded  # inside the savepoint: a failure rolls it back


async def test_outside_a_transaction_it_is_refused(logged: Any) -> None:
    pool, _statements = logged
    with pytest.raises(NoActiveTransactionError):
        async with PgTransactionRunner(pool).lazy_savepoint():
            pass
