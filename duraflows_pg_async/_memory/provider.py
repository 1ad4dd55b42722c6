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

from datetime import timedelta

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.validate import require_bool

from .database import MemoryDatabase
from .definition_store import MemoryWorkflowDefinitionStore
from .execution_store import MemoryWorkflowExecutionStore
from .history_store import MemoryWorkflowHistoryStore
from .idempotency_store import MemoryWorkflowIdempotencyStore
from .instance_store import MemoryWorkflowInstanceStore
from .runner import MemoryTransactionRunner

# duraflows_pg_async imports the public names of the in-memory provider from here.
__all__ = [
    "MemoryDatabase",
    "MemoryTransactionRunner",
    "MemoryWorkflowDefinitionStore",
    "MemoryWorkflowExecutionStore",
    "MemoryWorkflowHistoryStore",
    "MemoryWorkflowIdempotencyStore",
    "MemoryWorkflowInstanceStore",
    "memory_workflow_providers",
]


def memory_workflow_providers(
    *,
    lock_timeout: timedelta | float | None = None,
    idempotency: bool = False,
    durable_execution: bool = False,
    js_safe_integers: bool = False,
) -> WorkflowPersistenceProvider[MemoryTransactionRunner]:
    """A runner and three stores over a new, empty in-memory database (one per call).

    Same semantics and errors as ``pg_workflow_providers``; see this module's docstring.
    ``lock_timeout`` (a ``timedelta`` or seconds) bounds lock waits inside the runner's
    transactions with LockTimeoutError; ``idempotency=True`` adds the idempotency store that
    keyed ``trigger_event`` calls need; ``js_safe_integers=True`` refuses integers beyond
    ±(2**53 - 1) in contexts and metadata, as ``pg_workflow_providers`` does. Bad values raise
    InvalidArgumentError here.
    """
    require_bool(idempotency, "idempotency")
    require_bool(durable_execution, "durable_execution")
    database = MemoryDatabase()
    return WorkflowPersistenceProvider(
        instance_store=MemoryWorkflowInstanceStore(
            database, js_safe_integers=js_safe_integers, skip_busy=durable_execution
        ),
        history_store=MemoryWorkflowHistoryStore(database),
        transaction_runner=MemoryTransactionRunner(database, lock_timeout=lock_timeout),
        definition_store=MemoryWorkflowDefinitionStore(database),
        idempotency_store=MemoryWorkflowIdempotencyStore(database) if idempotency else None,
        execution_store=MemoryWorkflowExecutionStore(database) if durable_execution else None,
    )
