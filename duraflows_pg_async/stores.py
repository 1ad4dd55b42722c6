"""The persistence contract and the PostgreSQL stores, for code below the runtime.

The runtime needs only a provider (`pg_workflow_providers()` or `memory_workflow_providers()`).
Import from here to write another provider (the Protocols; `duraflows_pg_async.testing` checks
it), to call a store directly, or to type one. Store methods that lock or write need an open
transaction of the provider's runner; the reference says which.
"""

from __future__ import annotations

from ._core.contract import (
    WorkflowDefinitionStore,
    WorkflowExecutionStore,
    WorkflowHistoryStore,
    WorkflowIdempotencyStore,
    WorkflowInstanceStore,
    WorkflowTransactionRunner,
)
from ._core.idempotency import IdempotencyRecord
from ._core.model import HistoryOutcome, StoredWorkflowDefinition
from ._pg.definition_store import PgWorkflowDefinitionStore
from ._pg.execution_store import PgWorkflowExecutionStore
from ._pg.history_store import PgWorkflowHistoryStore
from ._pg.idempotency_store import PgWorkflowIdempotencyStore
from ._pg.instance_store import PgWorkflowInstanceStore

__all__ = [
    "WorkflowInstanceStore",
    "WorkflowHistoryStore",
    "WorkflowTransactionRunner",
    "WorkflowDefinitionStore",
    "WorkflowIdempotencyStore",
    "WorkflowExecutionStore",
    "PgWorkflowInstanceStore",
    "PgWorkflowHistoryStore",
    "PgWorkflowDefinitionStore",
    "PgWorkflowIdempotencyStore",
    "PgWorkflowExecutionStore",
    "StoredWorkflowDefinition",
    "HistoryOutcome",
    "IdempotencyRecord",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
