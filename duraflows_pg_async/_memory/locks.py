"""Row (and key) locks of the in-memory database, with PostgreSQL's modes, waits and deadlocks.

A lock is held by a transaction until it commits or rolls back; a rolled-back savepoint gives
back the locks it took. A wait is bounded by the transaction's ``lock_timeout``
(LockTimeoutError); a wait that would close a cycle of waiting transactions raises
TransactionConflictError at once, in the transaction that would close it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import TypeAlias

from duraflows_pg_async.errors import LockTimeoutError, TransactionConflictError

from .transaction import Level, Transaction

__all__ = ["FOR_UPDATE", "KEY_SHARE", "NO_KEY_UPDATE", "LockTable", "LockUndo"]

# Row lock modes, weakest first, with PostgreSQL's conflict table.
KEY_SHARE = 1  # the foreign key check of a history insert
NO_KEY_UPDATE = 2  # UPDATE of non-key columns
FOR_UPDATE = 3  # SELECT ... FOR UPDATE; also held on a row (or key) this transaction inserted

# What ``LockTable.undo`` needs: the key, the transaction's mode and the level's mode before.
LockUndo: TypeAlias = tuple[Hashable, int, int]


def _conflicts(requested: int, held: int) -> bool:
    if requested == FOR_UPDATE:
        return True
    if requested == NO_KEY_UPDATE:
        return held >= NO_KEY_UPDATE
    return held == FOR_UPDATE


class _RowLock:
    """Holders of one row (or key) lock; waiters sleep on ``released`` until a holder lets go."""

    __slots__ = ("holders", "released")

    def __init__(self) -> None:
        self.holders: dict[Transaction, int] = {}
        self.released: asyncio.Event | None = None


class LockTable:
    """Every lock held or waited for in one database, by key."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[Hashable, _RowLock] = {}

    def __len__(self) -> int:
        """How many keys are locked or waited for."""
        return len(self._entries)

    def blockers(self, txn: Transaction, key: Hashable, mode: int) -> list[Transaction]:
        """The other transactions whose lock on ``key`` conflicts with ``mode``."""
        entry = self._entries.get(key)
        if entry is None:
            return []
        return [
            other
            for other, held in entry.holders.items()
            if other is not txn and _conflicts(mode, held)
        ]

    async def acquire(self, level: Level, key: Hashable, mode: int, what: str) -> LockUndo | None:
        """Take ``mode`` on ``key`` for the level's transaction, waiting for conflicting holders.

        Returns what ``undo`` needs, or None if the transaction already held it.
        """
        txn = level.root
        held = txn.held.get(key, 0)
        if held >= mode:
            return None
        deadline: float | None = None
        while blockers := self.blockers(txn, key, mode):
            if self._closes_cycle(txn, blockers):
                raise TransactionConflictError(f"{what}: deadlock detected (SQLSTATE 40P01)")
            if deadline is None and txn.lock_timeout is not None:
                deadline = asyncio.get_running_loop().time() + txn.lock_timeout
            entry = self._entries[key]
            if entry.released is None:
                entry.released = asyncio.Event()
            released = entry.released
            txn.waiting = (key, mode)
            try:
                async with asyncio.timeout_at(deadline):
                    await released.wait()
            except TimeoutError:
                raise LockTimeoutError(f"{what}: lock not available (lock_timeout)") from None
            finally:
                txn.waiting = None
        before = level.locks.get(key, 0)
        level.locks[key] = mode
        self._set_mode(txn, key, mode)
        return key, held, before

    def undo(self, level: Level, undo: LockUndo | None) -> None:
        """Undo one ``acquire`` of this level (a statement that changed nothing after all)."""
        if undo is None:
            return
        key, held, before = undo
        if before:
            level.locks[key] = before
        else:
            level.locks.pop(key, None)
        self._set_mode(level.root, key, held)

    def roll_back_savepoint(self, level: Level) -> None:
        """Give back what the savepoint ``level`` took beyond the locks of its enclosing levels."""
        parent = level.parent
        assert parent is not None
        outer = parent.chain()
        for key in level.locks:
            self._set_mode(level.root, key, max(each.locks.get(key, 0) for each in outer))

    def release_all(self, txn: Transaction) -> None:
        """Free every lock of a transaction that ended."""
        for key in list(txn.held):
            self._set_mode(txn, key, 0)

    def _closes_cycle(self, txn: Transaction, blockers: list[Transaction]) -> bool:
        """Whether waiting for ``blockers`` would make ``txn`` wait for itself (a deadlock)."""
        seen: set[Transaction] = set()
        stack = list(blockers)
        while stack:
            other = stack.pop()
            if other is txn:
                return True
            if other in seen:
                continue
            seen.add(other)
            if other.waiting is not None:
                stack.extend(self.blockers(other, *other.waiting))
        return False

    def _set_mode(self, txn: Transaction, key: Hashable, mode: int) -> None:
        """Record ``txn``'s effective lock mode on ``key`` (0: none) and wake waiters if lower."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _RowLock()
        before = entry.holders.get(txn, 0)
        if mode:
            entry.holders[txn] = mode
            txn.held[key] = mode
        else:
            entry.holders.pop(txn, None)
            txn.held.pop(key, None)
        if mode < before and entry.released is not None:
            entry.released.set()
            entry.released = None
        if not entry.holders and entry.released is None:
            del self._entries[key]
