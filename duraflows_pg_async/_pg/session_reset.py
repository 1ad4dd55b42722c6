"""asyncpg's session reset folded into the runner's COMMIT, or left out, on ``create_pool``'s pools.

asyncpg resets a connection's session when the pool gets it back, in a round trip of its own.
On a ``PooledConnection`` the runner sends those statements ahead of its COMMIT instead, and the
pool's ``reset`` hook then has nothing left to do: one round trip fewer per transaction.

The rule kept: a connection goes back to the pool without session state. The reset undoes what
SQL other than the package's may leave behind (a session ``SET``, a cursor, ``LISTEN``, a
session advisory lock). When no other SQL ran, there is nothing to undo: the package's own
statements in a runner's transaction are BEGIN with ``SET LOCAL``, row locks, reads, writes,
savepoints and COMMIT, all of which end with the transaction. So the runner asks for the reset
only when the transaction's connection was handed out (``runner.connection()``); otherwise its
COMMIT goes alone, four statements fewer, and the pool's hook still skips the reset.
"""

from __future__ import annotations

from typing import Any, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy

__all__ = ["PooledConnection", "commit", "reset_session"]


class PooledConnection(asyncpg.Connection):
    """The connection class of pools made by ``create_pool``."""

    __slots__ = ("_session_reset_done",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._session_reset_done = False

    def duraflows_commit_sql(self) -> str:
        """The session reset statements followed by COMMIT (the last status tag is COMMIT's)."""
        reset = self.get_reset_query()
        return f"{reset}\nCOMMIT" if reset else "COMMIT"

    def duraflows_mark_session_reset(self) -> None:
        self._session_reset_done = True


async def reset_session(conn: asyncpg.Connection) -> None:
    """The pool's ``reset`` hook: asyncpg's reset query, unless the COMMIT already ran it."""
    if isinstance(conn, PooledConnection) and conn._session_reset_done:
        conn._session_reset_done = False
        return
    query = conn.get_reset_query()
    if query:
        await conn.execute(query)


async def commit(conn: PoolConnectionProxy[Any], *, reset: bool = True) -> str:
    """Send COMMIT on a pooled connection; its status tag.

    On a ``PooledConnection`` the session reset goes ahead of COMMIT when ``reset`` (SQL other
    than the package's may have run), and is skipped otherwise; either way the pool does not
    send it again at release. Statements ahead of COMMIT in an aborted transaction fail with
    InFailedSQLTransactionError instead of COMMIT answering ROLLBACK.
    """
    # The pool hands out a proxy, which isinstance does not see through but which forwards the
    # connection class's attributes.
    if getattr(conn, "duraflows_commit_sql", None) is None:
        status: str = await conn.execute("COMMIT")
        return status
    pooled = cast(PooledConnection, conn)
    status = await conn.execute(pooled.duraflows_commit_sql() if reset else "COMMIT")
    if status != "ROLLBACK":
        pooled.duraflows_mark_session_reset()
    return status
