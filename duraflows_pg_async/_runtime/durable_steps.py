"""A worker's poll of queued executions: claim, run one command, checkpoint, finish.

The rules kept: a worker runs outside any transaction and claims a due execution under the
instance's row lock (a lease with a fresh token); it replays the journal to find the next
command and runs that one command, outside a transaction unless the command is transactional;
it checkpoints the result under the lock only while its lease is still its own (fencing), so a
worker that lost its lease writes nothing. The last checkpoint writes every hop (instance,
history rows, observer events after COMMIT) with the completed execution, in one transaction.
A command that raises is retried with backoff, and parks the execution at ``max_attempts``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID, uuid4

from duraflows_pg_async._core import metrics as _metrics
from duraflows_pg_async._core.executions import DUE_STATUSES, CommandCheckpoint, WorkflowExecution
from duraflows_pg_async._core.model import (
    CommandResult,
    ExecutionResult,
    HistoryRecord,
    WorkflowInstance,
)
from duraflows_pg_async._core.text import storable_text
from duraflows_pg_async._core.validate import check_json, require_int
from duraflows_pg_async._definitions.model import WorkflowDefinition
from duraflows_pg_async.errors import (
    ExecutionLeaseLostError,
    InvalidArgumentError,
    WorkflowError,
)

from .durable_plan import NextCommand, Plan, plan_execution
from .execution import MAX_ERROR_LENGTH, DurableContext, ExecutionContext, json_clone, maybe_await
from .instance_updates import deadline, next_version
from .observers import EnteredStates
from .transitions import error_text, failure_message, storable_result

if TYPE_CHECKING:
    from .durable import DurableExecutions

__all__ = ["ExecutionSteps", "ProcessPendingResult", "diagnostic", "json_snapshot"]

T = TypeVar("T")

_ON_ENTER_TRIGGER: Mapping[str, Any] = {"source": "onEnter"}


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


def diagnostic(exc: BaseException) -> str:
    """The error as a record keeps it: storable text, at most MAX_ERROR_LENGTH characters (the
    bound of a timeout's last error too)."""
    return error_text(exc)[:MAX_ERROR_LENGTH]


def json_snapshot(value: Any, name: str) -> Any:
    """A JSON copy of ``value`` (InvalidArgumentError naming the key path when it is not JSON)."""
    check_json(value, name)
    return json.loads(json.dumps(value, allow_nan=False))


class ExecutionSteps:
    """One poll of one worker over the due executions of its runtime."""

    __slots__ = ("durable",)

    def __init__(self, durable: DurableExecutions) -> None:
        self.durable = durable

    async def process(
        self, limit: int, should_stop: Callable[[], bool] | None = None
    ) -> ProcessPendingResult:
        """Claim up to ``limit`` due executions and move each one command further; stop early
        once ``should_stop()`` is true."""
        require_int(limit, "limit", minimum=1)
        runner = self.durable.runtime.persistence.transaction_runner
        if runner.is_transaction_active():
            raise WorkflowError(
                "process_pending_executions must run outside a transaction: each checkpoint "
                "commits on its own"
            )
        store = self.durable.store
        result = ProcessPendingResult()
        for candidate in await store.find_due(limit, self.durable._now()):
            if should_stop is not None and should_stop():
                break
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
                _metrics.lease_lost(self.durable.runtime)
                result.skipped.append(candidate.uuid)
            except Exception as exc:
                if claimed is None:
                    result.failed.append((candidate.uuid, diagnostic(exc)))
                    continue
                try:
                    status = await self._record_failure(claimed, exc)
                except Exception as failure:
                    if isinstance(failure, ExecutionLeaseLostError):
                        _metrics.lease_lost(self.durable.runtime)
                    result.failed.append((candidate.uuid, diagnostic(failure)))
                else:
                    (result.parked if status == "parked" else result.retrying).append(claimed.uuid)
        return result

    async def _claim(self, hint: WorkflowExecution) -> WorkflowExecution | None:
        """Lease the execution to this worker (a new token), or None when it is not due any
        more. At the attempt limit (leases that kept expiring), park it instead."""
        runtime = self.durable.runtime
        async with runtime.persistence.transaction_runner.transaction():
            instance = await runtime.persistence.instance_store.lock_by_uuid(
                hint.workflow_instance_uuid
            )
            current = await self.durable.store.find_by_uuid(hint.uuid)
            now = self.durable._now()
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
                await self.durable._save(current)
                return current
            if instance.version != current.instance_version:
                raise WorkflowError(
                    f"Instance {instance.uuid} changed during durable execution {current.uuid}"
                )
            current.status = "running"
            current.lease_token = str(uuid4())
            current.lease_until = now + current.policy.lease_duration
            current.attempts += 1
            await self.durable._save(current)
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
                latest = await self.durable.store.find_by_uuid(current.uuid)
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
        runtime = self.durable.runtime

        async def owned(entered: EnteredStates) -> T:
            instance = await runtime.persistence.instance_store.lock_by_uuid(
                claim.workflow_instance_uuid
            )
            current = await self.durable.store.find_by_uuid(claim.uuid)
            if (
                instance is None
                or current is None
                or current.status != "running"
                or current.lease_token != claim.lease_token
                or current.lease_until is None
                or current.lease_until <= self.durable._now()
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
        registered = self.durable.runtime.commands.get(pending.ref.name)

        async def heartbeat() -> None:
            async def extend(
                current: WorkflowExecution, instance: WorkflowInstance, entered: EnteredStates
            ) -> None:
                current.lease_until = self.durable._now() + current.policy.lease_duration
                await self.durable._save(current)

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
        # A copy per attempt: the record's subject stays as accepted whatever a command does.
        subject = json_clone(claim.subject) if claim.has_subject else None
        try:
            returned = await maybe_await(registered.fn(subject, ctx))
        except Exception as exc:
            if pending.ref.name not in claim.best_effort_commands:
                raise
            return CommandResult(
                ok=False,
                code="BEST_EFFORT_THROWN",
                message=storable_text(diagnostic(exc)),
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
        now = self.durable._now()
        if current.lease_until is None or current.lease_until <= now:
            raise ExecutionLeaseLostError(current.uuid)
        try:
            context = json_snapshot(pending.ctx.context, "context")
            recorded = CommandResult.from_json(json_snapshot(result.to_json(), "result"))
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
            current.last_error = diagnostic(exc)
        else:
            await self._finish(current, instance, plan, entered)
            return "completed"
        current.available_at = now
        current.lease_token = None
        current.lease_until = None
        await self.durable._save(current)
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
        runtime = self.durable.runtime
        definition = WorkflowDefinition.from_dict(current.definition)
        history_uuid: UUID | None = None
        for hop in plan.hops:
            now = self.durable._now()
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
        await self.durable._save(current)
        _metrics.execution_finished(runtime, current)

    async def _record_failure(self, claim: WorkflowExecution, exc: BaseException) -> str:
        """A command (or the step around it) raised: retry later with backoff, or park at the
        attempt limit. Returns the new status."""

        async def record(
            current: WorkflowExecution, instance: WorkflowInstance, entered: EnteredStates
        ) -> str:
            current.last_error = diagnostic(exc)
            parked = current.attempts >= current.policy.max_attempts
            current.status = "parked" if parked else "pending"
            current.available_at = self.durable._now() + current.policy.backoff(current.attempts)
            current.lease_token = None
            current.lease_until = None
            await self.durable._save(current)
            return current.status

        return await self._owned(claim, record)
