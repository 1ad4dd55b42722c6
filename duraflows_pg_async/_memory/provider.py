"""An in-memory persistence provider with the PostgreSQL provider's semantics, for tests.

``memory_workflow_providers()`` builds a runner and three stores over one in-process database.
It behaves like the PostgreSQL provider at READ COMMITTED with row locks:

- a transaction's writes are visible to other transactions only once it commits;
- ``lock_by_uuid`` (FOR UPDATE) waits while another transaction holds the row; ``update`` waits
  like PostgreSQL's UPDATE; ``find_expired`` skips rows locked by others (SKIP LOCKED);
  ``history_store.append`` takes the foreign key's KEY SHARE lock on the instance, so it waits for
  a FOR UPDATE holder and blocks FOR UPDATE by others until it ends; ``create`` and
  ``definition_store.ensure`` wait for another transaction's uncommitted row with the same key;
- a failure the database would report (duplicate uuid, unknown instance, lock timeout, deadlock)
  aborts the current transaction or savepoint, as in PostgreSQL; a deadlock raises
  TransactionConflictError at once in the transaction whose wait would close the cycle;
- ``lock_timeout`` bounds lock waits in the runner's transactions only; a store call made
  outside a transaction waits without limit, as a statement on the pool does;
- values are copied on write and on read, with jsonb's round trip (tuples become lists, object
  keys come back in jsonb's order, floats of 1e16 and more come back as ints).

Locks are held until commit or rollback; a rolled-back savepoint releases the locks it took.
Use one provider from one event loop at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Hashable, Sequence
from contextvars import Token
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any, TypeVar, cast
from uuid import UUID, uuid4

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.model import (
    CommandResult,
    HistoryOutcome,
    HistoryRecord,
    StoredWorkflowDefinition,
    TimeoutRetry,
    WorkflowInstance,
)
from duraflows_pg_async._core.scope import TaskOwned, TaskScopes, run_callbacks
from duraflows_pg_async._core.store_checks import (
    check_ensure_arguments,
    checked_count_arguments,
    checked_instance,
    checked_record,
    checked_workflow_names,
)
from duraflows_pg_async._core.validate import (
    INT4_MAX,
    coerce_uuid,
    require_aware,
    require_int,
    require_str,
    timeout_ms,
)
from duraflows_pg_async.errors import (
    CommitRolledBackError,
    DatabaseError,
    InstanceAlreadyExistsError,
    InvalidArgumentError,
    LockTimeoutError,
    NoActiveTransactionError,
    OptimisticLockError,
    TransactionConflictError,
    WorkflowInstanceNotFoundError,
)

__all__ = [
    "MemoryDatabase",
    "MemoryTransactionRunner",
    "MemoryWorkflowDefinitionStore",
    "MemoryWorkflowHistoryStore",
    "MemoryWorkflowInstanceStore",
    "memory_workflow_providers",
]

T = TypeVar("T")

# Row lock modes, weakest first, with PostgreSQL's conflict table.
_KEY_SHARE = 1  # the foreign key check of a history insert
_NO_KEY_UPDATE = 2  # UPDATE of non-key columns
_FOR_UPDATE = 3  # SELECT ... FOR UPDATE; also held on a row (or key) this transaction inserted

_ABORTED = (
    "current transaction is aborted, commands ignored until end of transaction block "
    "(SQLSTATE 25P02)"
)
_ONE_MICROSECOND = timedelta(microseconds=1)


def _conflicts(requested: int, held: int) -> bool:
    if requested == _FOR_UPDATE:
        return True
    if requested == _NO_KEY_UPDATE:
        return held >= _NO_KEY_UPDATE
    return held == _FOR_UPDATE


# --------------------------------------------------------------------------------------------
# jsonb and timestamptz round trips
# --------------------------------------------------------------------------------------------


def _jsonb(value: Any) -> Any:
    """``value`` as PostgreSQL's jsonb gives it back (``check_json`` has accepted it)."""
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        text = float.__repr__(value)
        if "e+" in text:
            # jsonb keeps numbers as numeric, which prints 1e+16 as 10000000000000000.
            return int(Decimal(text))
        return 0.0 if value == 0 else float(text)
    if isinstance(value, dict):
        # jsonb orders object keys by their length in bytes, then bytewise.
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return {key: _jsonb(value[key]) for key in keys}
    return [_jsonb(item) for item in value]


def _clone(value: Any) -> Any:
    """A deep copy of a value ``_jsonb`` produced."""
    if isinstance(value, dict):
        return {key: _clone(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clone(item) for item in value]
    return value


def _utc(value: datetime) -> datetime:
    """An aware datetime as timestamptz gives it back: a plain datetime in UTC."""
    d = value.astimezone(UTC)
    return datetime(d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond, tzinfo=UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


def _stored_retry(retry: TimeoutRetry | None) -> TimeoutRetry | None:
    if retry is None:
        return None
    return TimeoutRetry(
        attempts=int.__index__(retry.attempts),
        last_error=str.__str__(retry.last_error),
        retry_at=_utc_or_none(retry.retry_at),
        parked_at=_utc_or_none(retry.parked_at),
    )


def _export_instance(row: WorkflowInstance, claims: dict[UUID, datetime]) -> WorkflowInstance:
    return dataclasses.replace(
        row,
        context=_clone(row.context),
        metadata=_clone(row.metadata),
        claimed_until=claims.get(row.uuid) if row.timeout_retry is None else None,
    )


@dataclass(frozen=True, slots=True)
class _HistoryRow:
    uuid: UUID
    workflow_instance_uuid: UUID
    from_state: str | None
    event_name: str
    to_state: str
    outcome: HistoryOutcome
    command_results: list[dict[str, Any]]
    error_message: str | None
    rejected_by: str | None
    trigger_metadata: dict[str, Any]
    definition_version: int | None
    created_at: datetime

    def export(self) -> HistoryRecord:
        return HistoryRecord(
            uuid=self.uuid,
            workflow_instance_uuid=self.workflow_instance_uuid,
            from_state=self.from_state,
            event_name=self.event_name,
            to_state=self.to_state,
            outcome=self.outcome,
            command_results=[CommandResult.from_json(_clone(r)) for r in self.command_results],
            error_message=self.error_message,
            rejected_by=self.rejected_by,
            trigger_metadata=_clone(self.trigger_metadata),
            definition_version=self.definition_version,
            created_at=self.created_at,
        )


def _export_definition(row: StoredWorkflowDefinition) -> StoredWorkflowDefinition:
    return StoredWorkflowDefinition(
        workflow_name=row.workflow_name,
        version=row.version,
        content_hash=row.content_hash,
        definition_json=_clone(row.definition_json),
        registered_at=row.registered_at,
    )


# --------------------------------------------------------------------------------------------
# The database: committed rows, row locks, transactions
# --------------------------------------------------------------------------------------------


class _RowLock:
    """Holders of one row (or key) lock; waiters sleep on ``released`` until a holder lets go."""

    __slots__ = ("holders", "released")

    def __init__(self) -> None:
        self.holders: dict[_Root, int] = {}
        self.released: asyncio.Event | None = None


class _Root(TaskOwned):
    """One transaction: opened by a runner, or a single statement run outside one."""

    __slots__ = ("held", "lock_timeout", "savepoints", "started_at", "waiting")

    def __init__(self, lock_timeout: float | None) -> None:
        super().__init__()
        self.lock_timeout = lock_timeout
        self.started_at = datetime.now(UTC)
        self.held: dict[Hashable, int] = {}
        self.waiting: tuple[Hashable, int] | None = None
        self.savepoints = 0


class _Level:
    """The transaction or one savepoint in it: its writes, the locks it took, its callbacks."""

    __slots__ = (
        "aborted",
        "callbacks",
        "definitions",
        "history",
        "instances",
        "locks",
        "parent",
        "root",
        "savepoint",
    )

    def __init__(self, root: _Root, parent: _Level | None, savepoint: str | None) -> None:
        self.root = root
        self.parent = parent
        self.savepoint = savepoint
        self.instances: dict[UUID, WorkflowInstance] = {}
        self.history: list[_HistoryRow] = []
        self.definitions: dict[tuple[str, int], StoredWorkflowDefinition] = {}
        self.locks: dict[Hashable, int] = {}
        self.callbacks: list[Callable[[], Any]] = []
        self.aborted = False

    def chain(self) -> list[_Level]:
        """This level and its parents, outermost first."""
        levels: list[_Level] = []
        level: _Level | None = self
        while level is not None:
            levels.append(level)
            level = level.parent
        levels.reverse()
        return levels


class MemoryDatabase:
    """The shared state of one in-memory provider; build it with ``memory_workflow_providers()``.

    Every call builds a new, independent database.
    """

    __slots__ = (
        "_claims",
        "_definitions",
        "_history",
        "_instances",
        "_last_history_at",
        "_locks",
    )

    def __init__(self) -> None:
        self._instances: dict[UUID, WorkflowInstance] = {}
        self._history: dict[UUID, list[_HistoryRow]] = {}
        self._definitions: dict[tuple[str, int], StoredWorkflowDefinition] = {}
        self._locks: dict[Hashable, _RowLock] = {}
        # Sweep claims (find_expired(claim_until=...)), kept outside the transactional state.
        self._claims: dict[UUID, datetime] = {}
        self._last_history_at = datetime.min.replace(tzinfo=UTC)

    def __repr__(self) -> str:
        return f"<MemoryDatabase instances={len(self._instances)} at {id(self):#x}>"

    # --- reads as one transaction sees them ------------------------------------------------

    def _instance(self, level: _Level | None, key: UUID) -> WorkflowInstance | None:
        while level is not None:
            row = level.instances.get(key)
            if row is not None:
                return row
            level = level.parent
        return self._instances.get(key)

    def _all_instances(self, level: _Level | None) -> dict[UUID, WorkflowInstance]:
        if level is None:
            return self._instances
        view = self._instances
        for each in level.chain():
            if each.instances:
                if view is self._instances:
                    view = dict(view)
                view.update(each.instances)
        return view

    def _history_of(self, level: _Level | None, key: UUID) -> list[_HistoryRow]:
        rows = list(self._history.get(key, ()))
        if level is not None:
            for each in level.chain():
                rows.extend(row for row in each.history if row.workflow_instance_uuid == key)
        return rows

    def _definition(
        self, level: _Level | None, key: tuple[str, int]
    ) -> StoredWorkflowDefinition | None:
        while level is not None:
            row = level.definitions.get(key)
            if row is not None:
                return row
            level = level.parent
        return self._definitions.get(key)

    def _all_definitions(
        self, level: _Level | None
    ) -> dict[tuple[str, int], StoredWorkflowDefinition]:
        view = dict(self._definitions)
        if level is not None:
            for each in level.chain():
                view.update(each.definitions)
        return view

    def _next_history_at(self) -> datetime:
        # Strictly increasing, so rows read back in the order they were written.
        now = max(datetime.now(UTC), self._last_history_at + _ONE_MICROSECOND)
        self._last_history_at = now
        return now

    # --- row locks ---------------------------------------------------------------------------

    def _blockers(self, root: _Root, key: Hashable, mode: int) -> list[_Root]:
        entry = self._locks.get(key)
        if entry is None:
            return []
        return [
            other
            for other, held in entry.holders.items()
            if other is not root and _conflicts(mode, held)
        ]

    def _closes_cycle(self, root: _Root, blockers: list[_Root]) -> bool:
        """Whether waiting for ``blockers`` would make ``root`` wait for itself (a deadlock)."""
        seen: set[_Root] = set()
        stack = list(blockers)
        while stack:
            other = stack.pop()
            if other is root:
                return True
            if other in seen:
                continue
            seen.add(other)
            if other.waiting is not None:
                stack.extend(self._blockers(other, *other.waiting))
        return False

    def _set_mode(self, root: _Root, key: Hashable, mode: int) -> None:
        """Record ``root``'s effective lock mode on ``key`` (0: none) and wake waiters if lower."""
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = _RowLock()
        before = entry.holders.get(root, 0)
        if mode:
            entry.holders[root] = mode
            root.held[key] = mode
        else:
            entry.holders.pop(root, None)
            root.held.pop(key, None)
        if mode < before and entry.released is not None:
            entry.released.set()
            entry.released = None
        if not entry.holders and entry.released is None:
            del self._locks[key]

    async def _lock(
        self, level: _Level, key: Hashable, mode: int, what: str
    ) -> tuple[Hashable, int, int] | None:
        """Take ``mode`` on ``key`` for the level's transaction, waiting for conflicting holders.

        Returns what ``_unlock`` needs to undo it, or None if the transaction already held it.
        """
        root = level.root
        held = root.held.get(key, 0)
        if held >= mode:
            return None
        deadline: float | None = None
        while blockers := self._blockers(root, key, mode):
            if self._closes_cycle(root, blockers):
                raise TransactionConflictError(f"{what}: deadlock detected (SQLSTATE 40P01)")
            if deadline is None and root.lock_timeout is not None:
                deadline = asyncio.get_running_loop().time() + root.lock_timeout
            entry = self._locks[key]
            if entry.released is None:
                entry.released = asyncio.Event()
            released = entry.released
            root.waiting = (key, mode)
            try:
                async with asyncio.timeout_at(deadline):
                    await released.wait()
            except TimeoutError:
                raise LockTimeoutError(f"{what}: lock not available (lock_timeout)") from None
            finally:
                root.waiting = None
        before = level.locks.get(key, 0)
        level.locks[key] = mode
        self._set_mode(root, key, mode)
        return key, held, before

    def _unlock(self, level: _Level, undo: tuple[Hashable, int, int] | None) -> None:
        """Undo one ``_lock`` of this level (a statement that changed nothing after all)."""
        if undo is None:
            return
        key, held, before = undo
        if before:
            level.locks[key] = before
        else:
            level.locks.pop(key, None)
        self._set_mode(level.root, key, held)

    # --- ends of savepoints and transactions -------------------------------------------------

    def _release_savepoint(self, level: _Level) -> None:
        parent = level.parent
        assert parent is not None
        parent.instances.update(level.instances)
        parent.history.extend(level.history)
        parent.definitions.update(level.definitions)
        for key, mode in level.locks.items():
            if mode > parent.locks.get(key, 0):
                parent.locks[key] = mode
        parent.callbacks.extend(level.callbacks)

    def _rollback_savepoint(self, level: _Level) -> None:
        parent = level.parent
        assert parent is not None
        outer = parent.chain()
        for key in level.locks:
            self._set_mode(level.root, key, max(each.locks.get(key, 0) for each in outer))

    def _end(self, level: _Level, *, commit: bool) -> None:
        """Commit or roll back a whole transaction (its outermost level) and free its locks."""
        if commit:
            self._instances.update(level.instances)
            for row in level.history:
                self._history.setdefault(row.workflow_instance_uuid, []).append(row)
            self._definitions.update(level.definitions)
        root = level.root
        for key in list(root.held):
            self._set_mode(root, key, 0)

    async def _autocommit(self, op: Callable[[_Level], Awaitable[T]]) -> T:
        """Run one statement outside a transaction (no lock_timeout, as on the pool)."""
        level = _Level(_Root(None), None, None)
        try:
            result = await op(level)
        except BaseException:
            self._end(level, commit=False)
            raise
        self._end(level, commit=True)
        return result


# --------------------------------------------------------------------------------------------
# Transaction scopes
# --------------------------------------------------------------------------------------------

_SCOPES: TaskScopes[MemoryDatabase, _Level] = TaskScopes("duraflows_pg_async_memory_scopes")


# Errors PostgreSQL raises from a failed statement, which abort the transaction.
_ABORTING = (
    DatabaseError,
    InstanceAlreadyExistsError,
    WorkflowInstanceNotFoundError,
    asyncio.CancelledError,
)


async def _statement(
    database: MemoryDatabase,
    what: str,
    op: Callable[[_Level], Awaitable[T]],
    *,
    requires_transaction: str | None = None,
) -> T:
    """Run ``op`` in this task's transaction on ``database``, else as its own transaction."""
    level = _SCOPES.current(database)
    if level is None:
        if requires_transaction is not None:
            raise NoActiveTransactionError(f"{requires_transaction} requires an active transaction")
        return await database._autocommit(op)
    if level.aborted:
        raise DatabaseError(f"{what}: {_ABORTED}")
    try:
        return await op(level)
    except _ABORTING:
        level.aborted = True
        raise


def _reading_level(database: MemoryDatabase, what: str) -> _Level | None:
    """The level a read sees (None: committed rows only)."""
    level = _SCOPES.current(database)
    if level is not None and level.aborted:
        raise DatabaseError(f"{what}: {_ABORTED}")
    return level


class _MemoryTransaction:
    """``async with runner.transaction():`` — a transaction, or a savepoint inside one."""

    __slots__ = ("_level", "_runner", "_token")

    def __init__(self, runner: MemoryTransactionRunner) -> None:
        self._runner = runner
        self._level: _Level | None = None
        self._token: Token[dict[MemoryDatabase, _Level] | None] | None = None

    async def __aenter__(self) -> None:
        if self._level is not None:
            raise InvalidArgumentError("a transaction() context cannot be entered twice")
        database = self._runner._database
        parent = _SCOPES.owned(database)
        if parent is not None:
            root = parent.root
            root.savepoints += 1
            name = f"duraflows_sp_{root.savepoints}"
            if parent.aborted:
                raise DatabaseError(f"SAVEPOINT {name}: {_ABORTED}")
            level = _Level(root, parent, name)
        else:
            level = _Level(_Root(self._runner._lock_timeout), None, None)
        self._level = level
        self._token = _SCOPES.push(database, level)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        level = self._level
        token = self._token
        assert level is not None
        assert token is not None
        _SCOPES.reset(token)
        database = self._runner._database
        parent = level.parent
        if parent is not None:
            if exc is not None:
                database._rollback_savepoint(level)
                return
            database._release_savepoint(level)
            if level.aborted:
                # As PostgreSQL's RELEASE SAVEPOINT: the error was swallowed inside the block, so
                # the transaction stays aborted.
                parent.aborted = True
                raise DatabaseError(f"RELEASE SAVEPOINT {level.savepoint}: {_ABORTED}")
            return
        level.root.closed = True
        if exc is not None:
            database._end(level, commit=False)
            return
        if level.aborted:
            database._end(level, commit=False)
            raise CommitRolledBackError()
        database._end(level, commit=True)
        if level.callbacks:
            await run_callbacks(level.callbacks)


class MemoryTransactionRunner:
    """The in-memory counterpart of ``PgTransactionRunner`` (without ``connection``/``bind``).

    A transaction belongs to the task that opened it; nested calls are savepoints; after-commit
    callbacks run after the outermost commit. ``lock_timeout`` (a ``timedelta`` or seconds; 0
    disables it) bounds every lock wait of the transactions this runner opens.
    """

    __slots__ = ("_database", "_lock_timeout", "lock_timeout_ms")

    def __init__(self, database: MemoryDatabase, *, lock_timeout: object = None) -> None:
        if not isinstance(database, MemoryDatabase):
            raise InvalidArgumentError(
                f"database must be a MemoryDatabase, got {type(database).__name__}"
            )
        self._database = database
        self.lock_timeout_ms = timeout_ms(lock_timeout, "lock_timeout")
        self._lock_timeout = self.lock_timeout_ms / 1000 if self.lock_timeout_ms else None

    @property
    def database(self) -> MemoryDatabase:
        return self._database

    def transaction(self) -> _MemoryTransaction:
        """An async context manager: the outermost one commits, nested ones are savepoints."""
        return _MemoryTransaction(self)

    async def run_in_transaction(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()`` inside ``transaction()`` and return its result."""
        if not callable(fn):
            raise InvalidArgumentError(f"fn must be an async callable, got {fn!r}")
        async with _MemoryTransaction(self):
            return await fn()

    def after_commit(self, callback: Callable[[], Any]) -> None:
        """Run ``callback()`` (awaited if it returns an awaitable) after the outermost commit.

        Dropped on rollback of the transaction or enclosing savepoint; one that raises is logged
        on the ``duraflows_pg_async`` logger. Outside a transaction: NoActiveTransactionError.
        """
        if not callable(callback):
            raise InvalidArgumentError(f"callback must be callable, got {callback!r}")
        level = _SCOPES.current(self._database)
        if level is None:
            raise NoActiveTransactionError("after_commit requires an active transaction")
        level.callbacks.append(callback)

    def is_transaction_active(self) -> bool:
        """Whether the current task is inside a transaction of this runner's database."""
        return _SCOPES.owned(self._database) is not None


# --------------------------------------------------------------------------------------------
# Stores
# --------------------------------------------------------------------------------------------


class _MemoryStore:
    __slots__ = ("_database",)

    def __init__(self, database: MemoryDatabase) -> None:
        if not isinstance(database, MemoryDatabase):
            raise InvalidArgumentError(
                f"database must be a MemoryDatabase, got {type(database).__name__}"
            )
        self._database = database


class MemoryWorkflowInstanceStore(_MemoryStore):
    """Workflow instances in memory, with the PostgreSQL store's locking and errors.

    ``lock_by_uuid`` and ``find_expired`` need an active transaction; the other methods join one
    if present, else run as their own small transaction.
    """

    __slots__ = ()

    async def create(self, instance: WorkflowInstance) -> None:
        """Insert a new instance. A uuid in use raises InstanceAlreadyExistsError (after waiting
        for another transaction's uncommitted instance with that uuid)."""
        inst = checked_instance(instance, "create")
        key = coerce_uuid(inst.uuid, "instance.uuid")
        row = WorkflowInstance(
            uuid=key,
            workflow_name=str.__str__(inst.workflow_name),
            current_state=str.__str__(inst.current_state),
            version=int.__index__(inst.version),
            context=_jsonb(inst.context),
            metadata=_jsonb(inst.metadata),
            expires_at=_utc_or_none(inst.expires_at),
            last_transition_at=_utc(inst.last_transition_at),
            created_at=_utc(inst.created_at),
            updated_at=_utc(inst.updated_at),
            definition_version=(
                None if inst.definition_version is None else int.__index__(inst.definition_version)
            ),
            timeout_retry=_stored_retry(inst.timeout_retry),
        )
        database = self._database
        what = f"create instance {key}"

        async def op(level: _Level) -> None:
            if database._instance(level, key) is not None:
                raise InstanceAlreadyExistsError(key)
            # Only an uncommitted insert of this uuid can hold its lock: wait for it to end.
            undo = await database._lock(level, key, _FOR_UPDATE, what)
            if database._instance(level, key) is not None:
                database._unlock(level, undo)
                raise InstanceAlreadyExistsError(key)
            level.instances[key] = row

        await _statement(database, what, op)

    async def find_by_uuid(self, instance_uuid: UUID | str) -> WorkflowInstance | None:
        """The instance, or None. Does not lock."""
        key = coerce_uuid(instance_uuid, "instance_uuid")
        level = _reading_level(self._database, f"find_by_uuid {key}")
        row = self._database._instance(level, key)
        return None if row is None else _export_instance(row, self._database._claims)

    async def lock_by_uuid(
        self, instance_uuid: UUID | str, *, skip_locked: bool = False
    ) -> WorkflowInstance | None:
        """The instance locked until the transaction ends, or None. Requires a transaction.

        Waits while another transaction holds the row, bounded by the runner's lock_timeout
        (LockTimeoutError), and then returns the committed value; with ``skip_locked`` it
        returns None at once instead of waiting.
        """
        key = coerce_uuid(instance_uuid, "instance_uuid")
        database = self._database
        what = f"lock_by_uuid {key}"

        async def op(level: _Level) -> WorkflowInstance | None:
            if database._instance(level, key) is None:
                return None
            if skip_locked and database._blockers(level.root, key, _FOR_UPDATE):
                return None
            await database._lock(level, key, _FOR_UPDATE, what)
            row = database._instance(level, key)
            return None if row is None else _export_instance(row, database._claims)

        return await _statement(database, what, op, requires_transaction="lock_by_uuid")

    async def update(self, instance: WorkflowInstance) -> None:
        """Write the instance's mutable fields if the stored version is ``instance.version - 1``.

        The caller increments ``version`` first; another version (or no visible row) raises
        OptimisticLockError. Waits for another transaction's lock on the row, like UPDATE.
        ``metadata``, ``workflow_name`` and ``created_at`` are never written.
        """
        inst = checked_instance(instance, "update", create=False)
        require_int(
            inst.version, f"update: instance {inst.uuid}: version", minimum=1, maximum=INT4_MAX
        )
        key = coerce_uuid(inst.uuid, "instance.uuid")
        expected = inst.version - 1
        context = _jsonb(inst.context)
        database = self._database
        what = f"update instance {key}"

        async def op(level: _Level) -> None:
            current = database._instance(level, key)
            if current is None or current.version != expected:
                raise OptimisticLockError(key, expected)
            undo = await database._lock(level, key, _NO_KEY_UPDATE, what)
            current = database._instance(level, key)
            if current is None or current.version != expected:
                database._unlock(level, undo)
                raise OptimisticLockError(key, expected)
            database._claims.pop(key, None)  # writing the retry columns ends a sweep claim
            level.instances[key] = WorkflowInstance(
                uuid=key,
                workflow_name=current.workflow_name,
                current_state=str.__str__(inst.current_state),
                version=int.__index__(inst.version),
                context=context,
                metadata=current.metadata,
                expires_at=_utc_or_none(inst.expires_at),
                last_transition_at=_utc(inst.last_transition_at),
                created_at=current.created_at,
                updated_at=_utc(inst.updated_at),
                definition_version=(
                    None
                    if inst.definition_version is None
                    else int.__index__(inst.definition_version)
                ),
                timeout_retry=_stored_retry(inst.timeout_retry),
            )

        await _statement(database, what, op)

    async def find_expired(
        self,
        limit: int,
        now: datetime,
        *,
        claim_until: datetime | None = None,
        workflow_names: Sequence[str] | None = None,
    ) -> list[WorkflowInstance]:
        """Due instances (deadline or retry time before ``now``, not parked), oldest due first,
        locked until the transaction ends; rows locked by other transactions are skipped (SKIP
        LOCKED). Requires a transaction. ``workflow_names`` limits the search (None: all).

        With ``claim_until``, returned instances without retry state are claimed until then, as
        in PostgreSQL; here claims take effect at once (not at commit) and ``update`` ends them.
        """
        require_int(limit, "limit", minimum=1)
        require_aware(now, "now")
        names = None if workflow_names is None else set(checked_workflow_names(workflow_names))
        if claim_until is not None and require_aware(claim_until, "claim_until") <= now:
            raise InvalidArgumentError("claim_until must be later than now")
        database = self._database

        async def op(level: _Level) -> list[WorkflowInstance]:
            due: list[tuple[datetime, WorkflowInstance]] = []
            for row in database._all_instances(level).values():
                if names is not None and row.workflow_name not in names:
                    continue
                expires_at = row.expires_at
                if expires_at is None or not expires_at < now:
                    continue
                retry = row.timeout_retry
                claim = database._claims.get(row.uuid)
                if retry is None and claim is not None:
                    if not claim < now:
                        continue
                    due.append((claim, row))
                    continue
                if retry is not None:
                    if retry.parked_at is not None:
                        continue
                    if retry.retry_at is not None:
                        if not retry.retry_at < now:
                            continue
                        due.append((retry.retry_at, row))
                        continue
                due.append((expires_at, row))
            due.sort(key=lambda item: item[0])
            found: list[WorkflowInstance] = []
            root = level.root
            for _, row in due:
                if len(found) >= limit:
                    break
                if database._blockers(root, row.uuid, _FOR_UPDATE):
                    continue
                await database._lock(level, row.uuid, _FOR_UPDATE, "find_expired")
                if claim_until is not None and row.timeout_retry is None:
                    database._claims[row.uuid] = claim_until
                found.append(_export_instance(row, database._claims))
            return found

        return await _statement(database, "find_expired", op, requires_transaction="find_expired")

    async def release_claims(
        self, instance_uuids: Sequence[UUID | str], claim_until: datetime
    ) -> list[UUID]:
        """End unused sweep claims taken with ``find_expired(claim_until=...)``. Claims live
        outside transactions here, so a row's lock never keeps one: returns an empty list."""
        keys = [coerce_uuid(u, "instance_uuids[]") for u in instance_uuids]
        require_aware(claim_until, "claim_until")
        for key in keys:
            if self._database._claims.get(key) == claim_until:
                del self._database._claims[key]
        return []

    async def postpone_timeout(self, instance_uuid: UUID | str, until: datetime) -> bool:
        """Make the instance's timeout due no earlier than ``until`` without recording anything
        (see the PostgreSQL store). Never waits for a row lock."""
        key = coerce_uuid(instance_uuid, "instance_uuid")
        until = _utc(require_aware(until, "until"))
        database = self._database
        what = f"postpone_timeout {key}"

        async def op(level: _Level) -> bool:
            row = database._instance(level, key)
            if row is None or database._blockers(level.root, key, _FOR_UPDATE):
                return False
            retry = row.timeout_retry
            if retry is None:
                claim = database._claims.get(key)
                if claim is not None and claim >= until:
                    return False
                database._claims[key] = until
                return True
            if retry.parked_at is not None or (
                retry.retry_at is not None and retry.retry_at >= until
            ):
                return False
            await database._lock(level, key, _NO_KEY_UPDATE, what)
            level.instances[key] = dataclasses.replace(
                row, timeout_retry=dataclasses.replace(retry, retry_at=until)
            )
            return True

        return await _statement(database, what, op)

    async def find_parked_timeouts(
        self, *, limit: int = 100, workflow_name: str | None = None
    ) -> list[WorkflowInstance]:
        """Instances whose timeout retries were exhausted, oldest parked first."""
        require_int(limit, "limit", minimum=1)
        if workflow_name is not None:
            require_str(workflow_name, "workflow_name")
        level = _reading_level(self._database, "find_parked_timeouts")
        parked: list[tuple[datetime, UUID, WorkflowInstance]] = []
        for row in self._database._all_instances(level).values():
            retry = row.timeout_retry
            if retry is None or retry.parked_at is None:
                continue
            if workflow_name is not None and row.workflow_name != workflow_name:
                continue
            parked.append((retry.parked_at, row.uuid, row))
        parked.sort(key=lambda item: (item[0], item[1]))
        claims = self._database._claims
        return [_export_instance(row, claims) for _, _, row in parked[:limit]]

    async def count_instances(
        self,
        *,
        workflow_name: str,
        definition_version: int,
        exclude_states: Sequence[str] = (),
    ) -> int:
        """How many instances of this workflow are stamped with ``definition_version`` and are
        not in one of ``exclude_states``."""
        excluded = set(checked_count_arguments(workflow_name, definition_version, exclude_states))
        level = _reading_level(self._database, "count_instances")
        return sum(
            1
            for row in self._database._all_instances(level).values()
            if row.workflow_name == workflow_name
            and row.definition_version == definition_version
            and row.current_state not in excluded
        )


class MemoryWorkflowHistoryStore(_MemoryStore):
    """The transition history in memory. Joins the current transaction if there is one.

    Rows read back newest first, in the order they were written.
    """

    __slots__ = ()

    async def append(self, record: HistoryRecord) -> UUID:
        """Store one history row and return its new uuid.

        An instance this transaction cannot see raises WorkflowInstanceNotFoundError. Like the
        foreign key check, waits while another transaction holds the instance FOR UPDATE.
        """
        instance_uuid, results, trigger_metadata = checked_record(record)
        assert isinstance(record, HistoryRecord)

        def text(value: str | None) -> str | None:
            return None if value is None else str.__str__(value)

        database = self._database
        what = f"append history of instance {instance_uuid}"

        async def op(level: _Level) -> UUID:
            if database._instance(level, instance_uuid) is None:
                raise WorkflowInstanceNotFoundError(instance_uuid)
            await database._lock(level, instance_uuid, _KEY_SHARE, what)
            row_uuid = uuid4()
            level.history.append(
                _HistoryRow(
                    uuid=row_uuid,
                    workflow_instance_uuid=instance_uuid,
                    from_state=text(record.from_state),
                    event_name=str.__str__(record.event_name),
                    to_state=str.__str__(record.to_state),
                    outcome=cast(HistoryOutcome, str.__str__(record.outcome)),
                    command_results=_jsonb(results),
                    error_message=text(record.error_message),
                    rejected_by=text(record.rejected_by),
                    trigger_metadata=_jsonb(trigger_metadata),
                    definition_version=(
                        None
                        if record.definition_version is None
                        else int.__index__(record.definition_version)
                    ),
                    created_at=database._next_history_at(),
                )
            )
            return row_uuid

        return await _statement(database, what, op)

    async def find_by_instance_uuid(
        self, instance_uuid: UUID | str, limit: int = 50, offset: int = 0
    ) -> list[HistoryRecord]:
        """The instance's history, newest first (``[]`` for an unknown instance)."""
        key = coerce_uuid(instance_uuid, "instance_uuid")
        require_int(limit, "limit", minimum=1)
        require_int(offset, "offset", minimum=0)
        level = _reading_level(self._database, f"find history of instance {key}")
        rows = self._database._history_of(level, key)
        rows.sort(key=lambda row: (row.created_at, row.uuid), reverse=True)
        return [row.export() for row in rows[offset : offset + limit]]


class MemoryWorkflowDefinitionStore(_MemoryStore):
    """Definition snapshots keyed by (workflow name, version). Joins the current transaction if
    there is one; ``registered_at`` is the transaction's start time, as PostgreSQL's now()."""

    __slots__ = ()

    async def ensure(
        self,
        *,
        workflow_name: str,
        version: int,
        content_hash: str,
        definition_json: dict[str, Any],
    ) -> StoredWorkflowDefinition:
        """Store the snapshot unless one exists, and return the stored row (the first one wins;
        compare its ``content_hash`` to detect drift)."""
        check_ensure_arguments(workflow_name, version, content_hash, definition_json)
        name = str.__str__(workflow_name)
        key = (name, int.__index__(version))
        database = self._database
        what = f'ensure workflow definition "{workflow_name}" version {version}'

        async def op(level: _Level) -> StoredWorkflowDefinition:
            row = database._definition(level, key)
            if row is None:
                # Wait for another transaction's uncommitted row with this key, as ON CONFLICT.
                undo = await database._lock(level, ("definition", *key), _FOR_UPDATE, what)
                row = database._definition(level, key)
                if row is not None:
                    database._unlock(level, undo)
                else:
                    row = StoredWorkflowDefinition(
                        workflow_name=name,
                        version=key[1],
                        content_hash=str.__str__(content_hash),
                        definition_json=_jsonb(definition_json),
                        registered_at=level.root.started_at,
                    )
                    level.definitions[key] = row
            return _export_definition(row)

        return await _statement(database, what, op)

    async def find_by_name_and_version(
        self, workflow_name: str, version: int
    ) -> StoredWorkflowDefinition | None:
        require_str(workflow_name, "workflow_name")
        require_int(version, "version", minimum=1, maximum=INT4_MAX)  # as PostgreSQL's integer
        level = _reading_level(
            self._database, f'find workflow definition "{workflow_name}" version {version}'
        )
        row = self._database._definition(level, (workflow_name, version))
        return None if row is None else _export_definition(row)

    async def list_versions(self, workflow_name: str) -> list[StoredWorkflowDefinition]:
        """Every stored version of the workflow, oldest first."""
        require_str(workflow_name, "workflow_name")
        level = _reading_level(
            self._database, f'list versions of workflow definition "{workflow_name}"'
        )
        rows = [
            row
            for (name, _), row in self._database._all_definitions(level).items()
            if name == workflow_name
        ]
        rows.sort(key=lambda row: row.version)
        return [_export_definition(row) for row in rows]


def memory_workflow_providers(*, lock_timeout: object = None) -> WorkflowPersistenceProvider:
    """A runner and three stores over a new, empty in-memory database (one per call).

    Same semantics and errors as ``pg_workflow_providers``; see this module's docstring.
    ``lock_timeout`` (a ``timedelta`` or seconds) bounds lock waits inside the runner's
    transactions with LockTimeoutError; bad values raise InvalidArgumentError here.
    """
    database = MemoryDatabase()
    return WorkflowPersistenceProvider(
        instance_store=MemoryWorkflowInstanceStore(database),
        history_store=MemoryWorkflowHistoryStore(database),
        transaction_runner=MemoryTransactionRunner(database, lock_timeout=lock_timeout),
        definition_store=MemoryWorkflowDefinitionStore(database),
    )
