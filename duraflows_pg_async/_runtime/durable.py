"""Queued executions: accept an event now, run its commands one by one, checkpoint each.

The rules kept (upstream 7.4's):

- Acceptance (``enqueue``) runs under the instance's row lock in one transaction: the key is
  looked up (a repeat returns the execution, another event or fingerprint is a conflict), an
  instance with an active execution is busy, the guard runs once, and the record is stored.
- A worker (``process``) runs outside any transaction. It claims a due execution under the
  instance's lock (a lease with a fresh token), replays the journal to find the next command,
  runs that one command (outside a transaction unless the command is ``transactional``), and
  checkpoints it under the lock, but only while its lease is still its own (fencing).
- The instance keeps its state, context and history until every command of the event and its
  onEnter chain has finished; then every hop is written, with the completed execution, in one
  transaction. Observers fire after that commit.
- A command that raises is retried with backoff; after ``max_attempts`` attempts the execution
  parks. A mandatory failure without an error route parks it too, with the result recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from uuid import UUID, uuid4

from duraflows_pg_async._core import metrics as _metrics
from duraflows_pg_async._core.contract import WorkflowExecutionStore
from duraflows_pg_async._core.executions import (
    DurableExecutionPolicy,
    WorkflowExecution,
)
from duraflows_pg_async._core.idempotency import require_idempotency_text
from duraflows_pg_async._core.model import (
    ExecutionResult,
    HistoryRecord,
    WorkflowInstance,
)
from duraflows_pg_async._core.validate import coerce_uuid, require_str
from duraflows_pg_async._definitions.model import WorkflowDefinition
from duraflows_pg_async.errors import (
    DurableExecutionNotSupportedError,
    IdempotencyConflictError,
    InvalidArgumentError,
    InvalidEventError,
    WorkflowInstanceBusyError,
    WorkflowInstanceNotFoundError,
)

from .durable_plan import transition_uuid
from .durable_steps import ExecutionSteps, ProcessPendingResult, json_snapshot
from .execution import ExecutionContext, freeze, json_clone
from .instance_updates import utc_now
from .observers import EnteredStates
from .transitions import Transition

if TYPE_CHECKING:
    from .runtime import WorkflowRuntime

__all__ = ["DurableExecutions", "ProcessPendingResult"]

T = TypeVar("T")


class DurableExecutions:
    """The queued-execution engine of one runtime. It holds no per-execution state: every
    decision is taken under the instance's row lock, from the stored record."""

    __slots__ = ("policy", "runtime")

    def __init__(self, runtime: WorkflowRuntime, policy: DurableExecutionPolicy) -> None:
        self.runtime = runtime
        self.policy = policy

    @property
    def store(self) -> WorkflowExecutionStore:
        store = self.runtime.persistence.execution_store
        if store is None:
            raise DurableExecutionNotSupportedError()
        return store

    def _now(self) -> datetime:
        return utc_now(self.runtime.clock)

    async def _save(self, execution: WorkflowExecution) -> None:
        execution.revision += 1
        execution.updated_at = self._now()
        await self.store.update(execution)

    # -- acceptance -----------------------------------------------------------------------------

    async def enqueue(
        self,
        instance_uuid: UUID | str,
        event_name: str,
        *,
        idempotency_key: object,
        idempotency_fingerprint: object,
        subject: Any,
        trigger_metadata: dict[str, Any],
    ) -> WorkflowExecution:
        key = coerce_uuid(instance_uuid, "instance_uuid")
        require_str(event_name, "event_name")
        text = require_idempotency_text(idempotency_key, "idempotency_key")
        fingerprint = (
            None
            if idempotency_fingerprint is None
            else require_idempotency_text(idempotency_fingerprint, "idempotency_fingerprint")
        )
        has_subject = subject is not None
        subject_copy = json_snapshot(subject, "subject") if has_subject else None
        store = self.store
        runtime = self.runtime
        await runtime.initialize()

        async def work(entered: EnteredStates) -> WorkflowExecution:
            instance = await runtime.persistence.instance_store.lock_by_uuid(key)
            if instance is None:
                raise WorkflowInstanceNotFoundError(key)
            existing = await store.find_by_key(key, text)
            if existing is not None:
                if existing.event_name != event_name:
                    raise IdempotencyConflictError(
                        key, text, event_name, existing.event_name, "(another event)"
                    )
                if existing.idempotency_fingerprint != fingerprint:
                    raise IdempotencyConflictError(
                        key, text, event_name, existing.event_name, "with another fingerprint"
                    )
                return existing
            active = await store.find_active(key)
            if active is not None:
                raise WorkflowInstanceBusyError(key, active.uuid)
            definition = await runtime._governing(instance)
            event = definition.states[instance.current_state].events.get(event_name)
            if event is None:
                raise InvalidEventError(key, instance.current_state, event_name)
            execution = self._new_execution(
                instance, definition, event_name, text, fingerprint, trigger_metadata
            )
            execution.subject, execution.has_subject = subject_copy, has_subject
            if event.guard is not None:
                ctx = ExecutionContext(
                    context=json_clone(instance.context),
                    metadata=freeze(instance.metadata),
                    trigger_metadata=freeze(trigger_metadata),
                    now=execution.created_at,
                    from_state=instance.current_state,
                    to_state=event.target_state or instance.current_state,
                    transition_uuid=transition_uuid(execution.uuid, 0),
                )
                guard = Transition(runtime, instance, definition, entered)
                allowed = await guard.guard_allows(event_name, event, freeze(subject_copy), ctx)
                if not allowed:
                    await self._reject(execution, instance, definition, event.guard.name)
            await store.create(execution)
            return WorkflowExecution.from_json(execution.to_json())

        return await runtime._in_transaction(work)

    def _new_execution(
        self,
        instance: WorkflowInstance,
        definition: WorkflowDefinition,
        event_name: str,
        key: str,
        fingerprint: str | None,
        trigger_metadata: dict[str, Any],
    ) -> WorkflowExecution:
        now = self._now()
        commands = self.runtime.commands
        best_effort = sorted(
            name for name in _command_names(definition) if commands.get(name).best_effort
        )
        return WorkflowExecution(
            uuid=uuid4(),
            workflow_instance_uuid=instance.uuid,
            workflow_name=instance.workflow_name,
            event_name=event_name,
            idempotency_key=key,
            idempotency_fingerprint=fingerprint,
            status="pending",
            revision=0,
            definition=definition.to_dict(),
            best_effort_commands=best_effort,
            instance_version=instance.version,
            from_state=instance.current_state,
            initial_context=json_clone(instance.context),
            metadata=json_clone(instance.metadata),
            subject=None,
            trigger_metadata=trigger_metadata,
            journal=[],
            result=None,
            attempts=0,
            last_error=None,
            available_at=now,
            lease_token=None,
            lease_until=None,
            created_at=now,
            updated_at=now,
            policy=self.policy,
            max_on_enter_depth=self.runtime.max_on_enter_depth,
        )

    async def _reject(
        self,
        execution: WorkflowExecution,
        instance: WorkflowInstance,
        definition: WorkflowDefinition,
        guard: str,
    ) -> None:
        """A guard said no at acceptance: the execution is completed as a rejection, with its
        history row, and the instance stays free."""
        history_uuid = await self.runtime.persistence.history_store.append(
            HistoryRecord(
                workflow_instance_uuid=instance.uuid,
                from_state=instance.current_state,
                event_name=execution.event_name,
                to_state=instance.current_state,
                outcome="guard-rejected",
                rejected_by=guard,
                trigger_metadata=execution.trigger_metadata,
                definition_version=definition.version,
            )
        )
        execution.status = "completed"
        execution.rejected_by = guard
        execution.result = ExecutionResult(
            "guard-rejected",
            instance.current_state,
            instance.current_state,
            [],
            history_uuid,
            guard,
        )
        _metrics.execution_finished(self.runtime, execution)

    # -- operators ------------------------------------------------------------------------------

    async def get(self, execution_uuid: UUID | str) -> WorkflowExecution | None:
        return await self.store.find_by_uuid(coerce_uuid(execution_uuid, "execution_uuid"))

    async def control(
        self, execution_uuid: UUID | str, action: Literal["retry", "cancel"]
    ) -> WorkflowExecution:
        """Retry a parked execution (attempts reset, journal kept) or cancel one that no worker
        holds (pending, parked, or with an expired lease)."""
        key = coerce_uuid(execution_uuid, "execution_uuid")
        store = self.store
        hint = await store.find_by_uuid(key)
        if hint is None:
            raise InvalidArgumentError(f'Durable execution "{key}" not found')
        runner = self.runtime.persistence.transaction_runner
        async with runner.transaction():
            await self.runtime.persistence.instance_store.lock_by_uuid(hint.workflow_instance_uuid)
            current = await store.find_by_uuid(key)
            if current is None:
                raise InvalidArgumentError(f'Durable execution "{key}" not found')
            now = self._now()
            if action == "retry":
                if current.status != "parked":
                    raise InvalidArgumentError(
                        f'Only parked executions can be retried; execution "{key}" is '
                        f"{current.status}"
                    )
                current.status = "pending"
                current.attempts = 0
                current.available_at = now
            else:
                leased = current.lease_until is not None and current.lease_until > now
                if current.status in ("completed", "cancelled") or leased:
                    state = "held by a worker" if leased else current.status
                    raise InvalidArgumentError(
                        f'Execution "{key}" cannot be cancelled: it is {state}'
                    )
                current.status = "cancelled"
            current.lease_token = None
            current.lease_until = None
            await self._save(current)
        return current

    # -- the worker -----------------------------------------------------------------------------

    async def process(
        self, limit: int, should_stop: Callable[[], bool] | None = None
    ) -> ProcessPendingResult:
        """One worker poll: see ``durable_steps``."""
        polled = ExecutionSteps(self).process(limit, should_stop)
        return await _metrics.swept(self.runtime, "execution", polled, _poll_counts)


def _poll_counts(result: ProcessPendingResult) -> dict[str, int]:
    return {
        "progressed": len(result.progressed),
        "completed": len(result.completed),
        "retrying": len(result.retrying),
        "parked": len(result.parked),
        "skipped": len(result.skipped),
        "failed": len(result.failed),
    }


def _command_names(definition: WorkflowDefinition) -> set[str]:
    names: set[str] = set()
    for state in definition.states.values():
        for event in state.events.values():
            names.update(ref.name for ref in event.commands)
        if state.on_enter is not None:
            names.update(ref.name for ref in state.on_enter.commands)
    return names
