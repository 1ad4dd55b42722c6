"""Every error duraflows-pg-async raises.

```text
WorkflowError
├── InvalidArgumentError               (also a ValueError)
├── ConfigurationError
├── NoActiveTransactionError
├── TransactionTaskError
├── CommitRolledBackError
├── OptimisticLockError
├── WorkflowInstanceNotFoundError
├── InstanceAlreadyExistsError
├── DatabaseError                      (asyncpg's error is in __cause__)
│   ├── LockTimeoutError
│   ├── StatementTimeoutError
│   ├── TransactionConflictError
│   └── ConnectionLostError
├── WorkflowDefinitionError
│   └── IncompatibleDefinitionError
├── InvalidEventError
├── CommandFailureError
├── OnEnterDepthExceededError
├── UnreadableRowError
├── IdempotencyConflictError
├── IdempotencyInProgressError
├── IdempotencyNotSupportedError
├── DurableExecutionNotSupportedError
├── WorkflowInstanceBusyError
├── ExecutionLeaseLostError
└── MigrationInterruptedError
```

Errors raised by the package's own SQL are wrapped (original in ``__cause__``); errors raised by a
caller's own code or SQL inside a transaction propagate unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

from duraflows_pg_async._core.echo import echo

if TYPE_CHECKING:
    from duraflows_pg_async._runtime.migration_model import MigrationResult

__all__ = [
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
    "IdempotencyConflictError",
    "IdempotencyInProgressError",
    "IdempotencyNotSupportedError",
    "DurableExecutionNotSupportedError",
    "WorkflowInstanceBusyError",
    "ExecutionLeaseLostError",
    "MigrationInterruptedError",
]


class WorkflowError(Exception):
    """Base class of every error this package raises."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message if message is not None else (type(self).__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidArgumentError(WorkflowError, ValueError):
    """An argument given to a public entry point is not acceptable; nothing was written."""


class ConfigurationError(WorkflowError):
    """The pool or provider is set up in a way this package cannot work with."""


class NoActiveTransactionError(WorkflowError):
    """The call requires an active transaction on this pool and there is none."""


class TransactionTaskError(WorkflowError):
    """A transaction's connection was used from a task other than the one that opened it."""


class CommitRolledBackError(WorkflowError):
    """PostgreSQL answered COMMIT with ROLLBACK because an earlier statement failed."""

    def __init__(self) -> None:
        super().__init__(
            "COMMIT was rolled back by PostgreSQL because an earlier statement in the transaction "
            "failed"
        )


class OptimisticLockError(WorkflowError):
    """An instance update found a different version than expected (modified concurrently)."""

    def __init__(self, instance_uuid: UUID, expected_version: int) -> None:
        self.instance_uuid = instance_uuid
        self.expected_version = expected_version
        super().__init__(
            f'Optimistic locking failure: workflow instance "{instance_uuid}" was modified '
            f"concurrently (expected version {expected_version})"
        )


class WorkflowInstanceNotFoundError(WorkflowError):
    """No workflow instance has the given uuid."""

    def __init__(self, instance_uuid: UUID | str) -> None:
        self.instance_uuid = instance_uuid
        super().__init__(f'Workflow instance "{echo(instance_uuid, raw=True)}" not found')


class InstanceAlreadyExistsError(WorkflowError):
    """A workflow instance with this uuid already exists."""

    def __init__(self, instance_uuid: UUID) -> None:
        self.instance_uuid = instance_uuid
        super().__init__(f'Workflow instance "{instance_uuid}" already exists')


class DatabaseError(WorkflowError):
    """A statement issued by this package failed in the database or the driver."""


class LockTimeoutError(DatabaseError):
    """A row lock was not granted within lock_timeout (SQLSTATE 55P03)."""


class StatementTimeoutError(DatabaseError):
    """A statement was cancelled by statement_timeout or a cancel request (SQLSTATE 57014)."""


class TransactionConflictError(DatabaseError):
    """PostgreSQL aborted the transaction for a deadlock or serialization failure; retry it."""


class ConnectionLostError(DatabaseError):
    """The connection to PostgreSQL was lost or closed during the call."""


class WorkflowDefinitionError(WorkflowError):
    """A workflow definition is invalid, unknown, duplicated or drifted from its stored version."""

    def __init__(self, workflow_name: str, message: str) -> None:
        self.workflow_name = workflow_name
        super().__init__(f'Workflow "{echo(workflow_name, raw=True)}": {message}')


class IncompatibleDefinitionError(WorkflowDefinitionError):
    """The instance's state no longer exists in the definition that governs it."""


class InvalidEventError(WorkflowError):
    """The event is not defined on the instance's current state."""

    def __init__(self, instance_uuid: UUID, state: str, event_name: str) -> None:
        self.instance_uuid = instance_uuid
        self.state = state
        self.event_name = event_name
        super().__init__(
            f'Event "{echo(event_name, raw=True)}" is not available on state '
            f'"{echo(state, raw=True)}" for instance "{echo(instance_uuid, raw=True)}"'
        )


class CommandFailureError(WorkflowError):
    """A mandatory command failed and the event or onEnter has no error state to route to."""

    def __init__(
        self, instance_uuid: UUID, event_name: str, command_name: str, result: Any
    ) -> None:
        self.instance_uuid = instance_uuid
        self.event_name = event_name
        self.command_name = command_name
        self.result = result
        detail = getattr(result, "message", None) or getattr(result, "code", None) or "unknown"
        super().__init__(
            f'Command "{echo(command_name, raw=True)}" failed during event '
            f'"{echo(event_name, raw=True)}" of workflow instance '
            f'"{echo(instance_uuid, raw=True)}": {echo(detail, raw=True)}'
        )


class OnEnterDepthExceededError(WorkflowError):
    """An onEnter chain went deeper than max_on_enter_depth."""

    def __init__(self, instance_uuid: UUID, state: str, max_depth: int) -> None:
        self.instance_uuid = instance_uuid
        self.state = state
        self.max_depth = max_depth
        super().__init__(
            f'onEnter chain of workflow instance "{instance_uuid}" exceeded the maximum depth '
            f'of {max_depth} at state "{echo(state, raw=True)}"'
        )


class UnreadableRowError(WorkflowError):
    """A stored row holds a value this package cannot decode; the row was left as it is."""

    def __init__(self, instance_uuid: UUID, column: str, reason: str) -> None:
        self.instance_uuid = instance_uuid
        self.column = column
        self.reason = reason
        super().__init__(f'Workflow instance "{instance_uuid}" cannot be read: {column} {reason}')


class IdempotencyConflictError(WorkflowError):
    """An idempotency key was reused for another event or with another fingerprint."""

    def __init__(
        self, instance_uuid: UUID, key: str, event_name: str, recorded_event_name: str, why: str
    ) -> None:
        self.instance_uuid = instance_uuid
        self.key = key
        self.event_name = event_name
        self.recorded_event_name = recorded_event_name
        super().__init__(
            f'Idempotency key "{echo(key, raw=True)}" of workflow instance "{instance_uuid}" '
            f'was first used for event "{echo(recorded_event_name, raw=True)}" {why}; '
            f'event "{echo(event_name, raw=True)}" cannot reuse it (a new request needs a new key)'
        )


class IdempotencyInProgressError(WorkflowError):
    """The same idempotency key is being executed by an unfinished call in this transaction."""

    def __init__(self, instance_uuid: UUID, key: str) -> None:
        self.instance_uuid = instance_uuid
        self.key = key
        super().__init__(
            f'Idempotency key "{echo(key, raw=True)}" of workflow instance "{instance_uuid}" is '
            "reserved by a call that has not finished in this transaction"
        )


class IdempotencyNotSupportedError(WorkflowError):
    """An idempotency key was given to a runtime whose provider has no idempotency store."""

    def __init__(self) -> None:
        super().__init__(
            "idempotency_key needs a provider built with idempotency=True "
            "(pg_workflow_providers(pool, idempotency=True) and migration 007)"
        )


class DurableExecutionNotSupportedError(WorkflowError):
    """A queued-execution call was made on a runtime whose provider has no execution store."""

    def __init__(self) -> None:
        super().__init__(
            "queued executions need a provider built with durable_execution=True "
            "(pg_workflow_providers(pool, durable_execution=True) and migration 008)"
        )


class WorkflowInstanceBusyError(WorkflowError):
    """The instance has an active queued execution, which must finish or be cancelled first."""

    def __init__(self, instance_uuid: UUID, execution_uuid: UUID | None = None) -> None:
        self.instance_uuid = instance_uuid
        self.execution_uuid = execution_uuid
        which = "" if execution_uuid is None else f" ({execution_uuid})"
        super().__init__(
            f'Workflow instance "{instance_uuid}" is busy: a queued execution{which} is pending, '
            "running or parked on it"
        )


class ExecutionLeaseLostError(WorkflowError):
    """This worker's lease on a queued execution expired or was taken; its work was not saved."""

    def __init__(self, execution_uuid: UUID) -> None:
        self.execution_uuid = execution_uuid
        super().__init__(
            f'The lease on execution "{execution_uuid}" was lost (expired or taken by another '
            "worker); nothing was saved"
        )


class MigrationInterruptedError(WorkflowError):
    """Listing the candidates of ``migrate_instances`` failed; ``result`` holds what was done."""

    def __init__(
        self, workflow_name: str, result: MigrationResult, examined: int, reason: str
    ) -> None:
        self.workflow_name = workflow_name
        self.result = result
        self.examined = examined
        resume = (
            f"; resume with cursor={result.next_cursor}" if result.next_cursor is not None else ""
        )
        super().__init__(
            f'migrate_instances of workflow "{echo(workflow_name, raw=True)}" was '
            f"interrupted after examining {examined} candidate(s): {reason}{resume}"
        )


for _name in __all__:
    globals()[_name].__module__ = "duraflows_pg_async.errors"
del _name
