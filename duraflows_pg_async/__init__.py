"""duraflows-pg-async: asyncio-native PostgreSQL persistence for duraflows-style workflows.

Build a pool with [`create_pool()`][duraflows_pg_async.create_pool], the stores and transaction
runner with [`pg_workflow_providers()`][duraflows_pg_async.pg_workflow_providers], and apply the
schema with [`duraflows_pg_async.migrations`][duraflows_pg_async.migrations].
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._core.contract import (
    Clock,
    SystemClock,
    WorkflowDefinitionStore,
    WorkflowHistoryStore,
    WorkflowInstanceStore,
    WorkflowPersistenceProvider,
    WorkflowTransactionRunner,
)
from ._core.model import (
    CommandResult,
    HistoryOutcome,
    HistoryRecord,
    StoredWorkflowDefinition,
    TimeoutRetry,
    WorkflowInstance,
)
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
    RegisteredCommand,
    RegisteredGuard,
)
from ._definitions.validation import validate_definition
from ._memory.provider import (
    MemoryDatabase,
    MemoryTransactionRunner,
    MemoryWorkflowDefinitionStore,
    MemoryWorkflowHistoryStore,
    MemoryWorkflowInstanceStore,
    memory_workflow_providers,
)
from ._pg.codecs import create_pool, register_codecs
from ._pg.definition_store import PgWorkflowDefinitionStore
from ._pg.history_store import PgWorkflowHistoryStore
from ._pg.instance_store import PgWorkflowInstanceStore
from ._pg.providers import pg_workflow_providers
from ._pg.runner import PgTransactionRunner
from ._runtime.execution import (
    AvailableEvent,
    BusinessFailure,
    ExecutionContext,
    ExecutionOutcome,
    ExecutionResult,
    ParkedTimeout,
    ProcessExpiredResult,
    StateEnterEvent,
    TimeoutFailure,
    TimeoutRetryPolicy,
)
from ._runtime.runtime import Observer, WorkflowHandle, WorkflowRuntime
from ._runtime.worker import TimeoutWorker, WorkerStats
from .errors import (
    CommandFailureError,
    CommitRolledBackError,
    ConfigurationError,
    ConnectionLostError,
    DatabaseError,
    IncompatibleDefinitionError,
    InstanceAlreadyExistsError,
    InvalidArgumentError,
    InvalidEventError,
    LockTimeoutError,
    NoActiveTransactionError,
    OnEnterDepthExceededError,
    OptimisticLockError,
    StatementTimeoutError,
    TransactionConflictError,
    TransactionTaskError,
    UnreadableRowError,
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowInstanceNotFoundError,
)
from .migrations import MigrationSql, generate_migration_sql

try:
    __version__ = version("duraflows-pg-async")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    # runtime
    "WorkflowRuntime",
    "WorkflowHandle",
    "TimeoutWorker",
    "WorkerStats",
    "TimeoutRetryPolicy",
    "Observer",
    "ExecutionContext",
    "ExecutionResult",
    "ExecutionOutcome",
    "StateEnterEvent",
    "AvailableEvent",
    "ProcessExpiredResult",
    "BusinessFailure",
    "TimeoutFailure",
    "ParkedTimeout",
    # in-memory provider
    "memory_workflow_providers",
    "MemoryDatabase",
    "MemoryTransactionRunner",
    "MemoryWorkflowInstanceStore",
    "MemoryWorkflowHistoryStore",
    "MemoryWorkflowDefinitionStore",
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
    "RegisteredCommand",
    "RegisteredGuard",
    "CommandFunction",
    "GuardFunction",
    # pool and codecs
    "create_pool",
    "register_codecs",
    # PostgreSQL adapter
    "pg_workflow_providers",
    "PgTransactionRunner",
    "PgWorkflowInstanceStore",
    "PgWorkflowHistoryStore",
    "PgWorkflowDefinitionStore",
    "generate_migration_sql",
    "MigrationSql",
    # model
    "WorkflowInstance",
    "TimeoutRetry",
    "HistoryRecord",
    "HistoryOutcome",
    "CommandResult",
    "StoredWorkflowDefinition",
    # contract
    "WorkflowInstanceStore",
    "WorkflowHistoryStore",
    "WorkflowTransactionRunner",
    "WorkflowDefinitionStore",
    "WorkflowPersistenceProvider",
    "Clock",
    "SystemClock",
    # errors
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
    "__version__",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("duraflows_pg_async._"):
        _obj.__module__ = "duraflows_pg_async"
del _name, _obj
