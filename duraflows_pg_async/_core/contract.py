"""The persistence contract the runtime relies on: store, runner and clock Protocols."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, runtime_checkable
from uuid import UUID

from typing_extensions import TypeVar

from .executions import ExecutionStats, WorkflowExecution
from .idempotency import IdempotencyRecord
from .model import HistoryRecord, StateStats, StoredWorkflowDefinition, WorkflowInstance

__all__ = [
    "Clock",
    "SystemClock",
    "WorkflowDefinitionStore",
    "WorkflowExecutionStore",
    "WorkflowHistoryStore",
    "WorkflowIdempotencyStore",
    "WorkflowInstanceStore",
    "WorkflowPersistenceProvider",
    "WorkflowTransactionRunner",
    "WorkflowWakeups",
]

T = TypeVar("T")


@runtime_checkable
class WorkflowInstanceStore(Protocol):
    """Stores workflow instances. ``lock_by_uuid`` and ``find_expired`` need a transaction.

    ``persist_transition`` is ``update`` and the history ``append`` of the same instance as one
    write (OptimisticLockError, and neither written, when the stored version is not the
    expected one); it returns the history row's uuid.
    """

    async def create(self, instance: WorkflowInstance) -> None: ...

    async def find_by_uuid(self, instance_uuid: UUID | str) -> WorkflowInstance | None: ...

    async def lock_by_uuid(
        self, instance_uuid: UUID | str, *, skip_locked: bool = False
    ) -> WorkflowInstance | None: ...

    async def update(self, instance: WorkflowInstance) -> None: ...

    async def persist_transition(
        self, instance: WorkflowInstance, record: HistoryRecord
    ) -> UUID: ...

    async def find_expired(
        self,
        limit: int,
        now: datetime,
        *,
        claim_until: datetime | None = None,
        workflow_names: Sequence[str] | None = None,
    ) -> list[WorkflowInstance]: ...

    async def release_claims(
        self, instance_uuids: Sequence[UUID | str], claim_until: datetime
    ) -> list[UUID]: ...

    async def postpone_timeout(self, instance_uuid: UUID | str, until: datetime) -> bool: ...

    async def find_parked_timeouts(
        self, *, limit: int = 100, workflow_name: str | None = None
    ) -> list[WorkflowInstance]: ...

    async def count_instances(
        self,
        *,
        workflow_name: str,
        definition_version: int,
        exclude_states: Sequence[str] = (),
    ) -> int: ...

    async def find_instance_uuids(
        self,
        *,
        workflow_name: str,
        definition_version: int,
        limit: int,
        after_uuid: UUID | str | None = None,
        states: Sequence[str] | None = None,
        exclude_states: Sequence[str] | None = None,
    ) -> list[UUID]: ...

    async def list_instances(
        self,
        *,
        limit: int,
        now: datetime,
        workflow_name: str | None = None,
        state: str | None = None,
        definition_version: int | None = None,
        status: str | None = None,
        after_uuid: UUID | str | None = None,
    ) -> list[WorkflowInstance]: ...

    async def stats(
        self, *, now: datetime, workflow_name: str | None = None
    ) -> list[StateStats]: ...


@runtime_checkable
class WorkflowHistoryStore(Protocol):
    """Append-only transition history, read newest first."""

    async def append(self, record: HistoryRecord) -> UUID: ...

    async def find_by_instance_uuid(
        self, instance_uuid: UUID | str, limit: int = 50, offset: int = 0
    ) -> list[HistoryRecord]: ...


@runtime_checkable
class WorkflowTransactionRunner(Protocol):
    """Runs work in one database transaction; nested calls are savepoints."""

    async def run_in_transaction(self, fn: Callable[[], Awaitable[T]]) -> T: ...

    def transaction(self) -> AbstractAsyncContextManager[None]: ...

    def after_commit(self, callback: Callable[[], Any]) -> None: ...

    def is_transaction_active(self) -> bool: ...


@runtime_checkable
class WorkflowDefinitionStore(Protocol):
    """Definition snapshots by (name, version); ``ensure`` never overwrites a stored one."""

    async def ensure(
        self,
        *,
        workflow_name: str,
        version: int,
        content_hash: str,
        definition_json: dict[str, Any],
    ) -> StoredWorkflowDefinition: ...

    async def find_by_name_and_version(
        self, workflow_name: str, version: int
    ) -> StoredWorkflowDefinition | None: ...

    async def list_versions(self, workflow_name: str) -> list[StoredWorkflowDefinition]: ...


@runtime_checkable
class WorkflowIdempotencyStore(Protocol):
    """Receipts of keyed events, by (instance, key).

    Every method runs in the transaction that holds the instance's row lock, so a receipt commits
    or rolls back (savepoints included) with the transition it records. ``reserve`` never
    overwrites a receipt; ``complete`` records the result of a reservation exactly once.
    """

    async def find(self, instance_uuid: UUID | str, key: str) -> IdempotencyRecord | None: ...

    async def reserve(
        self,
        instance_uuid: UUID | str,
        key: str,
        *,
        event_name: str,
        fingerprint: str | None = None,
    ) -> None: ...

    async def complete(
        self, instance_uuid: UUID | str, key: str, result: dict[str, Any]
    ) -> None: ...


@runtime_checkable
class WorkflowExecutionStore(Protocol):
    """Queued executions (``enqueue_event``), stored whole as upstream's JSON.

    ``create`` and ``update`` run in the transaction that holds the instance's row lock
    (NoActiveTransactionError otherwise); reads join it when there is one. At most one active
    (pending, running or parked) execution per instance and one per (instance, key); ``update``
    matches ``revision - 1`` (optimistic lock). Reads return independent copies. ``stats`` counts
    the active executions only, one row per active status in the order pending, running, parked.
    """

    async def create(self, execution: WorkflowExecution) -> None: ...

    async def update(self, execution: WorkflowExecution) -> None: ...

    async def find_by_uuid(self, execution_uuid: UUID | str) -> WorkflowExecution | None: ...

    async def find_by_key(
        self, instance_uuid: UUID | str, key: str
    ) -> WorkflowExecution | None: ...

    async def find_active(self, instance_uuid: UUID | str) -> WorkflowExecution | None: ...

    async def find_due(self, limit: int, now: datetime) -> list[WorkflowExecution]: ...

    async def list_executions(
        self,
        *,
        limit: int,
        status: str | None = None,
        workflow_name: str | None = None,
        after_uuid: UUID | str | None = None,
    ) -> list[WorkflowExecution]: ...

    async def stats(self, *, now: datetime) -> list[ExecutionStats]: ...


# A subscriber of wake-ups: called with the kind ("timeout" or "execution"), the workflow name
# (None when not known) and the due time (None when not known) of a write that committed.
WakeupCallback = Callable[[str, str | None, datetime | None], None]


@runtime_checkable
class WorkflowWakeups(Protocol):
    """What lets workers sleep until the nearest due time and be woken by writes that commit
    (not public; PostgreSQL's LISTEN/NOTIFY in ``_pg/wakeups.py``).

    ``next_timeout_due`` and ``next_execution_due`` give the earliest due time strictly after
    ``now`` (None: nothing is due later). ``subscribe`` calls ``callback`` for each wake-up until
    ``unsubscribe``; a callback must only set flags (it runs on the event loop). A subscriber
    must never depend on a wake-up: they are hints, and polling stays the rule.
    """

    async def next_timeout_due(
        self, workflow_names: Sequence[str], now: datetime
    ) -> datetime | None: ...

    async def next_execution_due(self, now: datetime) -> datetime | None: ...

    def subscribe(self, callback: WakeupCallback) -> None: ...

    async def unsubscribe(self, callback: WakeupCallback) -> None: ...


@runtime_checkable
class Clock(Protocol):
    """A source of the current time; ``now()`` returns a timezone-aware datetime."""

    def now(self) -> datetime: ...


class SystemClock:
    """The wall clock, in UTC."""

    __slots__ = ()

    def now(self) -> datetime:
        return datetime.now(UTC)


# A default (PEP 696, typing_extensions until Python 3.13) keeps a bare annotation valid
# under mypy --strict.
RunnerT = TypeVar(
    "RunnerT", bound=WorkflowTransactionRunner, covariant=True, default=WorkflowTransactionRunner
)


@dataclass(frozen=True, slots=True)
class WorkflowPersistenceProvider(Generic[RunnerT]):
    """The persistence parts a runtime needs, built together over one database.

    ``idempotency_store`` is None unless the provider was built with ``idempotency=True``, and
    ``execution_store`` unless it was built with ``durable_execution=True``. ``wakeups`` is
    None where workers only poll (the in-memory provider, or ``wakeups=False``).

    Generic in its runner, so that ``pg_workflow_providers(pool).transaction_runner`` is typed
    as a ``PgTransactionRunner`` (``connection()`` and ``bind()`` need no cast); a bare
    ``WorkflowPersistenceProvider`` annotation accepts any provider.
    """

    instance_store: WorkflowInstanceStore
    history_store: WorkflowHistoryStore
    transaction_runner: RunnerT
    definition_store: WorkflowDefinitionStore
    idempotency_store: WorkflowIdempotencyStore | None = None
    execution_store: WorkflowExecutionStore | None = None
    wakeups: WorkflowWakeups | None = None
