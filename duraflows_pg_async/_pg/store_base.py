"""What the three PostgreSQL stores share: the pool, the rendered SQL and the ambient connection."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
from asyncpg.pgproto import pgproto

from duraflows_pg_async._core.validate import require_identifier, trust_uuid_type
from duraflows_pg_async.errors import InvalidArgumentError, NoActiveTransactionError

from .queries import Queries, render_queries
from .runner import AnyConnection, ambient_connection

# The uuid columns of rows come back as asyncpg's UUID (a C subclass of uuid.UUID with its value
# semantics): the stores take them back as they are, instead of copying each into a uuid.UUID.
trust_uuid_type(pgproto.UUID)


class PgStore:
    """Base of the stores: runs a statement on the current transaction's connection, else on the
    pool as one autocommit statement. The pool is never closed by a store."""

    __slots__ = ("_notify_within", "_pool", "_q", "_schema")

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        schema: str | None = None,
        notify_within: timedelta | None = None,
    ) -> None:
        if not isinstance(pool, asyncpg.Pool):
            raise InvalidArgumentError(f"pool must be an asyncpg.Pool, got {type(pool).__name__}")
        self._pool = pool
        if schema is not None:
            # Checked before render_queries: its lru_cache needs a hashable key, and any bad
            # schema must be an InvalidArgumentError.
            require_identifier(schema, "schema")
        self._schema = schema
        self._q: Queries = render_queries(schema)
        # A write whose due time is within this of its own time wakes the workers (NOTIFY);
        # None: no write notifies (wake-ups off).
        self._notify_within = notify_within

    def _notifies(self, due: datetime | None, now: datetime) -> bool:
        """Whether a write giving ``due`` at ``now`` (the application's clock) notifies."""
        within = self._notify_within
        return within is not None and due is not None and due - now <= within

    def _executor(self) -> AnyConnection | asyncpg.Pool:
        conn = ambient_connection(self._pool)
        return self._pool if conn is None else conn

    def _transaction_connection(self, method: str) -> AnyConnection:
        conn = ambient_connection(self._pool)
        if conn is None:
            raise NoActiveTransactionError(f"{method} requires an active transaction")
        return conn
