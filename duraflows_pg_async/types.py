"""Types of the values the runtime, the worker and the registries hand back.

Import them to annotate: code rarely builds one. The everyday ones
([`ExecutionResult`][duraflows_pg_async.ExecutionResult],
[`StateEnterEvent`][duraflows_pg_async.StateEnterEvent]) are at the top level.
"""

from __future__ import annotations

from ._core.executions import (
    CommandCheckpoint,
    ExecutionStats,
    ExecutionStatus,
    WorkflowExecution,
)
from ._core.model import InstanceStatus, StateStats
from ._definitions.registries import RegisteredCommand, RegisteredGuard
from ._runtime.durable import ProcessPendingResult
from ._runtime.execution import (
    AvailableEvent,
    BusinessFailure,
    DurableContext,
    ExecutionOutcome,
    ParkedTimeout,
    ProcessExpiredResult,
    TimeoutFailure,
)
from ._runtime.execution_queries import ExecutionPage
from ._runtime.execution_worker import ExecutionWorkerStats
from ._runtime.migration_model import (
    ContextTransform,
    DefinitionVersionInfo,
    MigratedInstance,
    MigrationFailure,
    MigrationResult,
    SkippedInstance,
)
from ._runtime.queries import InstancePage
from ._runtime.worker import WorkerStats

__all__ = [
    "ExecutionOutcome",
    "AvailableEvent",
    "ProcessExpiredResult",
    "BusinessFailure",
    "TimeoutFailure",
    "ParkedTimeout",
    "WorkerStats",
    "ExecutionWorkerStats",
    "RegisteredCommand",
    "RegisteredGuard",
    "WorkflowExecution",
    "CommandCheckpoint",
    "ExecutionStatus",
    "ProcessPendingResult",
    "DurableContext",
    "DefinitionVersionInfo",
    "MigrationResult",
    "MigratedInstance",
    "SkippedInstance",
    "MigrationFailure",
    "ContextTransform",
    "InstancePage",
    "ExecutionPage",
    "InstanceStatus",
    "StateStats",
    "ExecutionStats",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
