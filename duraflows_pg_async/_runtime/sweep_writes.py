"""The writes of a batched sweep: buffered while each instance fires, sent in two statements at
the end of the batch.

An instance's transition checks its rows as ``update`` and ``append`` would (the same errors,
raised while it fires, so they fail that instance alone) and keeps them; once it has fired, they
join the batch's; a failed instance's are dropped. At the end of the batch one statement writes
every instance's last state and one inserts every history row, in the order they were appended.
Stores without row writers (the in-memory ones) get the plain writes at once instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from uuid import UUID, uuid4

from duraflows_pg_async._core import tracing as _tracing
from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.model import HistoryRecord, WorkflowInstance
from duraflows_pg_async._definitions.model import WorkflowDefinition

from .observers import EnteredStates
from .transitions import Transition

if TYPE_CHECKING:
    from .runtime import WorkflowRuntime

__all__ = ["BatchWrites", "BufferedTransition", "InstanceWrites", "batch_writes"]


@runtime_checkable
class _InstanceRows(Protocol):
    def built_update_row(self, instance: WorkflowInstance) -> tuple[Any, ...]: ...

    async def update_rows(self, rows: Sequence[tuple[Any, ...]]) -> None: ...


@runtime_checkable
class _HistoryRows(Protocol):
    def built_append_row(
        self, record: HistoryRecord, row_uuid: UUID, rank: int
    ) -> tuple[Any, ...]: ...

    async def append_rows(self, rows: Sequence[tuple[Any, ...]]) -> None: ...


class InstanceWrites:
    """One instance's rows while it fires: its last state, its history rows in order."""

    __slots__ = ("history", "instance")

    def __init__(self) -> None:
        self.instance: tuple[Any, ...] | None = None
        self.history: list[tuple[Any, ...]] = []


class BatchWrites:
    """The rows of the instances a batch fired, and the two statements that write them."""

    __slots__ = ("_history", "_history_store", "_instance_store", "_instances")

    def __init__(self, instance_store: _InstanceRows, history_store: _HistoryRows) -> None:
        self._instance_store = instance_store
        self._history_store = history_store
        self._instances: list[tuple[Any, ...]] = []
        self._history: list[tuple[Any, ...]] = []

    def instance_writes(self) -> InstanceWrites:
        return InstanceWrites()

    def keep(self, writes: InstanceWrites) -> None:
        """Add the rows of an instance that fired (each instance fires once per batch)."""
        if writes.instance is not None:
            self._instances.append(writes.instance)
        self._history.extend(writes.history)

    def update_row(self, instance: WorkflowInstance) -> tuple[Any, ...]:
        return self._instance_store.built_update_row(instance)

    def append_row(self, record: HistoryRecord, row_uuid: UUID, rank: int) -> tuple[Any, ...]:
        return self._history_store.built_append_row(record, row_uuid, rank)

    async def write(self, writes: InstanceWrites) -> None:
        """Write one instance's rows now (inside its savepoint)."""
        if writes.instance is not None:
            await self._instance_store.update_rows([writes.instance])
        await self._history_store.append_rows(writes.history)

    async def flush(self) -> None:
        """Write the batch's rows, instances first (history rows reference them)."""
        instances, history = self._instances, self._history
        self._instances, self._history = [], []
        await self._instance_store.update_rows(instances)
        await self._history_store.append_rows(history)


def batch_writes(persistence: WorkflowPersistenceProvider) -> BatchWrites | None:
    """A batch's buffer when both stores write rows in batches, else None (write at once)."""
    instances, history = persistence.instance_store, persistence.history_store
    if isinstance(instances, _InstanceRows) and isinstance(history, _HistoryRows):
        return BatchWrites(instances, history)
    return None


class BufferedTransition(Transition):
    """A transition whose writes are checked and kept in ``writes`` instead of sent."""

    __slots__ = ("batch", "writes")

    def __init__(
        self,
        runtime: WorkflowRuntime,
        instance: WorkflowInstance,
        definition: WorkflowDefinition,
        entered: EnteredStates,
        span: _tracing.Span | None,
        batch: BatchWrites,
        writes: InstanceWrites,
    ) -> None:
        super().__init__(runtime, instance, definition, entered, span)
        self.batch = batch
        self.writes = writes

    async def write_instance(self) -> None:
        # The last state wins: one UPDATE per instance, whatever the number of hops, expecting
        # the version the row had before the first (a row's last element).
        row = self.batch.update_row(self.instance)
        first = self.writes.instance
        self.writes.instance = row if first is None else (*row[:-1], first[-1])

    async def write_transition(self, record: HistoryRecord) -> UUID:
        # Buffered as its two rows: the batch writes them in its two statements.
        await self.write_instance()
        return await self.write_history(record)

    async def write_history(self, record: HistoryRecord) -> UUID:
        row_uuid = uuid4()
        history = self.writes.history
        history.append(self.batch.append_row(record, row_uuid, len(history)))
        return row_uuid
