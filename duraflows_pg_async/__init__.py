"""duraflows-pg-async: asyncio-native PostgreSQL persistence for duraflows-style workflows.

Build a pool with [`create_pool()`][duraflows_pg_async.create_pool], the stores and transaction
runner with [`pg_workflow_providers()`][duraflows_pg_async.pg_workflow_providers], and apply the
schema with [`duraflows_pg_async.migrations`][duraflows_pg_async.migrations].

The top level holds what an application uses every day. The rest lives in public modules:
[`errors`][duraflows_pg_async.errors] (every error), [`types`][duraflows_pg_async.types] (values
the runtime hands back), [`stores`][duraflows_pg_async.stores] (the persistence contract and the
PostgreSQL stores), [`memory`][duraflows_pg_async.memory] (the in-memory provider),
[`migrations`][duraflows_pg_async.migrations], [`testing`][duraflows_pg_async.testing],
[`embedded`][duraflows_pg_async.embedded] and [`contrib`][duraflows_pg_async.contrib].
"""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from ._core.contract import Clock, SystemClock, WorkflowPersistenceProvider
from ._core.executions import DurableExecutionPolicy
from ._core.model import CommandResult, HistoryRecord, TimeoutRetry, WorkflowInstance
from ._definitions.model import (
    CommandRef,
    Event,
    GuardRef,
    OnEnter,
    State,
    Timeout,
    VersionPolicy,
    WorkflowDefinition,
)
from ._definitions.registries import (
    CommandFunction,
    CommandRegistry,
    DefinitionRegistry,
    GuardFunction,
    GuardRegistry,
)
from ._definitions.validation import validate_definition
from ._memory.provider import memory_workflow_providers
from ._pg.codecs import create_pool, register_codecs
from ._pg.providers import pg_workflow_providers
from ._pg.runner import PgTransactionRunner
from ._runtime.execution import (
    ExecutionContext,
    ExecutionResult,
    StateEnterEvent,
    TimeoutRetryPolicy,
)
from ._runtime.execution_worker import ExecutionWorker
from ._runtime.runtime import Observer, WorkflowHandle, WorkflowRuntime
from ._runtime.worker import TimeoutWorker

try:
    __version__ = version("duraflows-pg-async")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    # runtime
    "WorkflowRuntime",
    "WorkflowHandle",
    "TimeoutWorker",
    "ExecutionWorker",
    "TimeoutRetryPolicy",
    "DurableExecutionPolicy",
    "Observer",
    "ExecutionContext",
    "ExecutionResult",
    "StateEnterEvent",
    # definitions and registries
    "WorkflowDefinition",
    "State",
    "Event",
    "OnEnter",
    "CommandRef",
    "GuardRef",
    "Timeout",
    "VersionPolicy",
    "validate_definition",
    "DefinitionRegistry",
    "CommandRegistry",
    "GuardRegistry",
    "CommandFunction",
    "GuardFunction",
    # records
    "WorkflowInstance",
    "TimeoutRetry",
    "HistoryRecord",
    "CommandResult",
    # providers
    "create_pool",
    "register_codecs",
    "pg_workflow_providers",
    "PgTransactionRunner",
    "memory_workflow_providers",
    "WorkflowPersistenceProvider",
    "Clock",
    "SystemClock",
    "__version__",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("duraflows_pg_async._"):
        _obj.__module__ = "duraflows_pg_async"
del _name, _obj

# Names that development builds before 0.1.0 exported from the top level and that now live in a
# public module. They still import from here, with a DeprecationWarning, until 1.0; type checkers
# see only the names imported above, so they point at the new path.
_MOVED: dict[str, str] = {
    **dict.fromkeys(
        [
            "WorkflowError",
            "InvalidArgumentError",
            "ConfigurationError",
            "NoActiveTransactionError",
            "TransactionTaskError",
            "CommitRolledBackError",
            "OptimisticLockError",
            "WorkflowInstanceNotFoundError",
            "InstanceAlreadyExistsError",
            "DatabaseError",
            "LockTimeoutError",
            "StatementTimeoutError",
            "TransactionConflictError",
            "ConnectionLostError",
            "WorkflowDefinitionError",
            "IncompatibleDefinitionError",
            "InvalidEventError",
            "CommandFailureError",
            "OnEnterDepthExceededError",
            "UnreadableRowError",
        ],
        "duraflows_pg_async.errors",
    ),
    **dict.fromkeys(
        [
            "ExecutionOutcome",
            "AvailableEvent",
            "ProcessExpiredResult",
            "BusinessFailure",
            "TimeoutFailure",
            "ParkedTimeout",
            "WorkerStats",
            "RegisteredCommand",
            "RegisteredGuard",
        ],
        "duraflows_pg_async.types",
    ),
    **dict.fromkeys(
        [
            "WorkflowInstanceStore",
            "WorkflowHistoryStore",
            "WorkflowTransactionRunner",
            "WorkflowDefinitionStore",
            "PgWorkflowInstanceStore",
            "PgWorkflowHistoryStore",
            "PgWorkflowDefinitionStore",
            "StoredWorkflowDefinition",
            "HistoryOutcome",
        ],
        "duraflows_pg_async.stores",
    ),
    **dict.fromkeys(
        [
            "MemoryDatabase",
            "MemoryTransactionRunner",
            "MemoryWorkflowInstanceStore",
            "MemoryWorkflowHistoryStore",
            "MemoryWorkflowDefinitionStore",
        ],
        "duraflows_pg_async.memory",
    ),
    **dict.fromkeys(("generate_migration_sql", "MigrationSql"), "duraflows_pg_async.migrations"),
}

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        module = _MOVED.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        warnings.warn(
            f"duraflows_pg_async.{name} moved to {module}.{name}; import it from there "
            "(the old path goes away in 1.0)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), name)
