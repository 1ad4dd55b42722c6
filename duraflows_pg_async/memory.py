"""The in-memory provider: the PostgreSQL provider's semantics in one process, for tests.

[`memory_workflow_providers()`][duraflows_pg_async.memory.memory_workflow_providers] (also
importable from the top level) builds a runner and three stores over one
[`MemoryDatabase`][duraflows_pg_async.memory.MemoryDatabase]; the classes are here for tests that
type or share them. Use one provider from one event loop at a time.
"""

from __future__ import annotations

from ._memory.provider import (
    MemoryDatabase,
    MemoryTransactionRunner,
    MemoryWorkflowDefinitionStore,
    MemoryWorkflowExecutionStore,
    MemoryWorkflowHistoryStore,
    MemoryWorkflowIdempotencyStore,
    MemoryWorkflowInstanceStore,
    memory_workflow_providers,
)

__all__ = [
    "memory_workflow_providers",
    "MemoryDatabase",
    "MemoryTransactionRunner",
    "MemoryWorkflowInstanceStore",
    "MemoryWorkflowHistoryStore",
    "MemoryWorkflowDefinitionStore",
    "MemoryWorkflowIdempotencyStore",
    "MemoryWorkflowExecutionStore",
]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
