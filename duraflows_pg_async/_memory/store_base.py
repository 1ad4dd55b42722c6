"""What the three in-memory stores share: the database, and running a statement in this task's
transaction or as one of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from duraflows_pg_async.errors import (
    DatabaseError,
    InstanceAlreadyExistsError,
    InvalidArgumentError,
    NoActiveTransactionError,
    WorkflowInstanceNotFoundError,
)

from .database import MemoryDatabase
from .runner import ambient_level
from .transaction import ABORTED, Level

__all__ = ["MemoryStore", "reading_level", "statement"]

T = TypeVar("T")

# Errors PostgreSQL raises from a failed statement, which abort the transaction.
_ABORTING = (
    DatabaseError,
    InstanceAlreadyExistsError,
    WorkflowInstanceNotFoundError,
    asyncio.CancelledError,
)


class MemoryStore:
    """Base of the stores: the database they share with the runner."""

    __slots__ = ("_database",)

    def __init__(self, database: MemoryDatabase) -> None:
        if not isinstance(database, MemoryDatabase):
            raise InvalidArgumentError(
                f"database must be a MemoryDatabase, got {type(database).__name__}"
            )
        self._database = database


async def statement(
    database: MemoryDatabase,
    what: str,
    op: Callable[[Level], Awaitable[T]],
    *,
    requires_transaction: str | None = None,
) -> T:
    """Run ``op`` in this task's transaction on ``database``, else as its own transaction."""
    level = ambient_level(database)
    if level is None:
        if requires_transaction is not None:
            raise NoActiveTransactionError(f"{requires_transaction} requires an active transaction")
        return await database._autocommit(op)
    if level.aborted:
        raise DatabaseError(f"{what}: {ABORTED}")
    try:
        return await op(level)
    except _ABORTING:
        level.aborted = True
        raise


def reading_level(database: MemoryDatabase, what: str) -> Level | None:
    """The level a read sees (None: committed rows only)."""
    level = ambient_level(database)
    if level is not None and level.aborted:
        raise DatabaseError(f"{what}: {ABORTED}")
    return level
