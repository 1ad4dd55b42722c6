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

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from uuid import UUID, uuid4

from duraflows_pg_async._core.contract import WorkflowExecutionStore
from duraflows_pg_async._core.executions import (
    DUE_STATUSES,
    CommandCheckpoint,
    DurableExecutionPolicy,
    WorkflowExecution,
)
from duraflows_pg_async._core.idempotency import require_idempotency_text
from duraflows_pg_async._core.model import (
    CommandResult,
    ExecutionResult,
    HistoryRecord,
    WorkflowInstance,
)
from duraflows_pg_async._core.text import storable_text
from duraflows_pg_async._core.validate import check_json, coerce_uuid, require_int, require_str
from duraflows_pg_async._definitions.model import WorkflowDefinition
from duraflows_pg_async.errors import (
    DurableExecutionNotSupportedError,
    ExecutionLeaseLostError,
    IdempotencyConflictError,
    InvalidArgumentError,
    InvalidEventError,
    WorkflowError,
    WorkflowInstanceBusyError,
    WorkflowInstanceNotFoundError,
)

from .durable_plan import NextCommand, Plan, plan_execution, transition_uuid
from .execution import DurableContext, ExecutionContext, freeze, json_clone, maybe_await
from .instance_updates import deadline, next_version, utc_now
from .observers import EnteredStates
from .transitions import Transition, error_text, failure_message, storable_result

if TYPE_CHECKING:
    from .runtime import WorkflowRuntime

__all__ = ["DurableExecutions", "ProcessPendingResult"]

T = TypeVar("T")

_ON_ENTER_TRIGGER: Mapping[str, Any] = {"source": "onEnter"}
# How much of an error a record keeps (upstream's bound, in UTF-16 units there).
_ERROR_LIMIT = 2000


@dataclass(slots=True)
class ProcessPendingResult:
    """What one ``process_pending_executions`` call did, by execution uuid.

    ``processed`` counts the executions it claimed. ``progressed``: a command finished and more
    remain; ``completed``: the execution finished (or was already decided); ``retrying``: a
    command failed and will be tried again later; ``parked``: it needs an operator
    (``retry_execution`` or ``cancel_execution``); ``skipped``: another worker holds it or it
    changed since it was listed; ``failed``: errors the worker could not record.
    """

    processed: int = 0
    progressed: list[UUID] = field(default_factory=list)
    completed: list[UUID] = field(default_factory=list)
    retrying: list[UUID] = field(default_factory=list)
    parked: list[UUID] = field(default_factory=list)
    skipped: list[UUID] = field(default_factory=list)
    failed: list[tuple[UUID, str]] = field(default_factory=list)


def _diagnostic(exc: BaseException) -> str:
    text = error_text(exc)
    return text if len(text) <= _ERROR_LIMIT else text[:_ERROR_LIMIT]


def _json_snapshot(value: Any, name: str) -> Any:
    """A JSON copy of ``value`` (InvalidArgumentError naming the key path when it is not JSON)."""
    check_json(value, name)
    return json.loads(json.dumps(value, allow_nan=False))


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
        subject_copy = _json_snapshot(subject, "subject") if has_subject else None
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

    async def process(self, limit: int) -> ProcessPendingResult:
        require_int(limit, "limit", minimum=1)
        runner = self.runtime.persistence.transaction_runner
        if runner.is_transaction_active():
            raise WorkflowError(
                "process_pending_executions must run outside a transaction: each checkpoint "
                "commits on its own"
            )
        store = self.store
        result = ProcessPendingResult()
        for candidate in await store.find_due(limit, self._now()):
            claimed: WorkflowExecution | None = None
            try:
                claimed = await self._claim(candidate)
                if claimed is None:
                    result.skipped.append(candidate.uuid)
                    continue
                result.processed += 1
                if claimed.status == "parked":
                    result.parked.append(claimed.uuid)
                    continue
                status = await self._step(claimed)
                {
                    "completed": result.completed,
                    "parked": result.parked,
                }.get(status, result.progressed).append(claimed.uuid)
            except ExecutionLeaseLostError:
                result.skipped.append(candidate.uuid)
            except Exception as exc:
                if claimed is None:
                    result.failed.append((candidate.uuid, _diagnostic(exc)))
                    continue
                try:
                    status = await self._record_failure(claimed, exc)
                except Exception as failure:
                    result.failed.append((candidate.uuid, _diagnostic(failure)))
                else:
                    (result.parked if status == "parked" else result.retrying).append(claimed.uuid)
        return result

    async def _claim(self, hint: WorkflowExecution) -> WorkflowExecution | None:
        """Lease the execution to this worker (a new token), or None when it is not due any
        more. At the attempt limit (leases that kept expiring), park it instead."""
        runtime = self.runtime
        async with runtime.persistence.transaction_runner.transaction():
            instance = await runtime.persistence.instance_store.lock_by_uuid(
                hint.workflow_instance_uuid
            )
            current = await self.store.find_by_uuid(hint.uuid)
            now = self._now()
            if (
                instance is None
                or current is None
                or current.status not in DUE_STATUSES
                or current.available_at > now
                or (current.lease_until is not None and current.lease_until > now)
            ):
                return None
            if current.attempts >= current.policy.max_attempts:
                current.status = "parked"
                current.last_error = "Command lease expired at the attempt limit"
                current.lease_token = None
                current.lease_until = None
                await self._save(current)
                return current
            if instance.version != current.instance_version:
                raise WorkflowError(
                    f"Instance {instance.uuid} changed during durable execution {current.uuid}"
                )
            current.status = "running"
            current.lease_token = str(uuid4())
            current.lease_until = now + current.policy.lease_duration
            current.attempts += 1
            await self._save(current)
            return current

    async def _step(self, claimed: WorkflowExecution) -> str:
        """Run the next command of a claimed execution and checkpoint it (or finish the
        execution when nothing is left); returns the execution's status after it."""
        try:
            plan = plan_execution(claimed)
        except NextCommand as next_command:
            pending = next_command
        else:
            await self._owned(
                claimed,
                lambda current, instance, entered: self._finish(current, instance, plan, entered),
            )
            return "completed"
        if pending.ref.transactional:

            async def in_checkpoint(
                current: WorkflowExecution, instance: WorkflowInstance, entered: EnteredStates
            ) -> str:
                result = await self._invoke(claimed, pending)
                # A heartbeat inside the command saved the record: check it against the latest.
                latest = await self.store.find_by_uuid(current.uuid)
                assert latest is not None
                return await self._checkpoint(latest, instance, result, pending, entered)

            return await self._owned(claimed, in_checkpoint)
        result = await self._invoke(claimed, pending)
        return await self._owned(
            claimed,
            lambda current, instance, entered: self._checkpoint(
                current, instance, result, pending, entered
            ),
        )

    async def _owned(
        self,
        claim: WorkflowExecution,
        work: Callable[[WorkflowExecution, WorkflowInstance, EnteredStates], Awaitable[T]],
    ) -> T:
        """Run ``work`` under the instance's lock, if this worker's lease still holds
        (ExecutionLeaseLostError otherwise: nothing is written)."""
        runtime = self.runtime

        async def owned(entered: EnteredStates) -> T:
            instance = await runtime.persistence.instance_store.lock_by_uuid(
                claim.workflow_instance_uuid
            )
            current = await self.store.find_by_uuid(claim.uuid)
            if (
                instance is None
                or current is None
                or current.status != "running"
                or current.lease_token != claim.lease_token
                or current.lease_until is None
                or current.lease_until <= self._now()
            ):
                raise ExecutionLeaseLostError(claim.uuid)
            if instance.version != current.instance_version:
                raise WorkflowError(
                    f"Instance {instance.uuid} changed during durable execution {current.uuid}"
                )
            return await work(current, instance, entered)

        return await runtime._in_transaction(owned)

    async def _invoke(self, claim: WorkflowExecution, pending: NextCommand) -> CommandResult:
        """Run the pending command once, with ``ctx.durable``; a best-effort command's raise
        becomes its failed result, a mandatory one's propagates (retried by the worker)."""
        registered = self.runtime.commands.get(pending.ref.name)

        async def heartbeat() -> None:
            async def extend(
                current: WorkflowExecution, instance: WorkflowInstance, entered: EnteredStates
            ) -> None:
                current.lease_until = self._now() + current.policy.lease_duration
                await self._save(current)

            await self._owned(claim, extend)

        ctx = ExecutionContext(
            pending.ctx.context,
            pending.ctx.metadata,
            pending.ctx.trigger_metadata,
            pending.ctx.now,
            pending.ctx.from_state,
            pending.ctx.to_state,
            pending.ctx.transition_uuid,
            pending.ctx.command_metadata,
            DurableContext(claim.uuid, pending.command_id, claim.attempts, heartbeat),
        )
        subject = freeze(claim.subject) if claim.has_subject else None
        try:
            returned = await maybe_await(registered.fn(subject, ctx))
        except Exception as exc:
            if pending.ref.name not in claim.best_effort_commands:
                raise
            return CommandResult(
                ok=False,
                code="BEST_EFFORT_THROWN",
                message=storable_text(_diagnostic(exc)),
                error={"name": type(exc).__name__, "message": storable_text(str(exc))},
            )
        if returned is None:
            return CommandResult(ok=True)
        if not isinstance(returned, CommandResult):
            raise WorkflowError(
                f'Command "{pending.ref.name}" returned {type(returned).__name__}; expected a '
                "CommandResult or None"
            )
        return storable_result(returned)

    async def _checkpoint(
        self,
        current: WorkflowExecution,
        instance: WorkflowInstance,
        result: CommandResult,
        pending: NextCommand,
        entered: EnteredStates,
    ) -> str:
        """Record the command's result and the context after it; then finish the execution if
        that was its last command, or leave it pending for the next one."""
        now = self._now()
        if current.lease_until is None or current.lease_until <= now:
            raise ExecutionLeaseLostError(current.uuid)
        try:
            context = _json_snapshot(pending.ctx.context, "context")
            recorded = CommandResult.from_json(_json_snapshot(result.to_json(), "result"))
        except InvalidArgumentError as exc:
            raise WorkflowError(f"Durable execution values must be JSON: {exc}") from exc
        current.journal.append(
            CommandCheckpoint(
                id=str(len(current.journal)),
                name=pending.ref.name,
                result=recorded,
                context=context,
                attempts=current.attempts,
                completed_at=now,
            )
        )
        current.attempts = 0
        current.last_error = None
        try:
            plan = plan_execution(current)
        except NextCommand:
            current.status = "pending"
        except Exception as exc:
            # A recorded outcome no retry changes (a mandatory failure with no error route, an
            # onEnter chain too deep): it waits for an operator.
            current.status = "parked"
            current.last_error = _diagnostic(exc)
        else:
            await self._finish(current, instance, plan, entered)
            return "completed"
        current.available_at = now
        current.lease_token = None
        current.lease_until = None
        await self._save(current)
        return current.status

    async def _finish(
        self,
        current: WorkflowExecution,
        instance: WorkflowInstance,
        plan: Plan,
        entered: EnteredStates,
    ) -> None:
        """Write every hop (instance, history row, observer event) and complete the execution,
        in the caller's transaction."""
        runtime = self.runtime
        definition = WorkflowDefinition.from_dict(current.definition)
        history_uuid: UUID | None = None
        for hop in plan.hops:
            now = self._now()
            state = definition.states[hop.to_state]
            instance.current_state = hop.to_state
            instance.context = json_clone(hop.context)
            next_version(instance, now, definition=definition, transition=True)
            instance.expires_at = deadline(state, now)
            instance.timeout_retry = None
            await runtime.persistence.instance_store.update(instance)
            trigger = (
                dict(_ON_ENTER_TRIGGER) if hop.event_name == "onEnter" else current.trigger_metadata
            )
            succeeded = hop.outcome == "success"
            history_uuid = await runtime.persistence.history_store.append(
                HistoryRecord(
                    workflow_instance_uuid=instance.uuid,
                    from_state=hop.from_state,
                    event_name=hop.event_name,
                    to_state=hop.to_state,
                    outcome=hop.outcome,
                    command_results=hop.results,
                    error_message=failure_message(succeeded, hop.results),
                    trigger_metadata=trigger,
                    definition_version=definition.version,
                )
            )
            entered.record(
                instance, hop.from_state, hop.transition_uuid, hop.event_name, trigger, now
            )
        assert history_uuid is not None
        current.status = "completed"
        current.lease_token = None
        current.lease_until = None
        current.result = ExecutionResult(
            outcome=plan.outcome,
            from_state=current.from_state,
            to_state=plan.to_state,
            command_results=[checkpoint.result for checkpoint in current.journal],
            history_uuid=history_uuid,
        )
        await self._save(current)

    async def _record_failure(self, claim: WorkflowExecution, exc: BaseException) -> str:
        """A command (or the step around it) raised: retry later with backoff, or park at the
        attempt limit. Returns the new status."""

        async def record(
            current: WorkflowExecution, instance: WorkflowInstance, entered: EnteredStates
        ) -> str:
            current.last_error = _diagnostic(exc)
            parked = current.attempts >= current.policy.max_attempts
            current.status = "parked" if parked else "pending"
            current.available_at = self._now() + current.policy.backoff(current.attempts)
            current.lease_token = None
            current.lease_until = None
            await self._save(current)
            return current.status

        return await self._owned(claim, record)


def _command_names(definition: WorkflowDefinition) -> set[str]:
    names: set[str] = set()
    for state in definition.states.values():
        for event in state.events.values():
            names.update(ref.name for ref in event.commands)
        if state.on_enter is not None:
            names.update(ref.name for ref in state.on_enter.commands)
    return names
