"""Executing one event on a locked instance, and the onEnter chain it sets off.

Guards, commands, and each transition written with its history row, all in the caller's
transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from duraflows_pg_async._core import tracing as _tracing
from duraflows_pg_async._core.model import CommandResult, HistoryRecord, WorkflowInstance
from duraflows_pg_async._core.text import storable_json, storable_text
from duraflows_pg_async._definitions.model import Event, OnEnter, WorkflowDefinition
from duraflows_pg_async.errors import (
    CommandFailureError,
    InvalidEventError,
    OnEnterDepthExceededError,
    WorkflowError,
)

from .execution import (
    ExecutionContext,
    ExecutionOutcome,
    ExecutionResult,
    freeze,
    is_awaitable,
    json_clone,
)
from .instance_updates import deadline, next_version, utc_now
from .observers import EnteredStates

if TYPE_CHECKING:
    from .runtime import WorkflowRuntime

__all__ = [
    "Transition",
    "error_text",
    "failure_message",
    "result_attributes",
    "storable_result",
]

_ON_ENTER_TRIGGER: Mapping[str, Any] = {"source": "onEnter"}


def error_text(exc: BaseException) -> str:
    """The message of ``exc`` as it is stored; its type's name when it has none."""
    text = str(exc)
    return storable_text(text) if text else type(exc).__name__


def storable_result(result: CommandResult) -> CommandResult:
    """``result`` with its text made storable (see ``_core/text.py``); itself when nothing
    changed."""
    code = result.code if result.code is None else storable_text(result.code)
    message = result.message if result.message is None else storable_text(result.message)
    metadata = result.metadata if result.metadata is None else storable_json(result.metadata)
    error = storable_json(result.error)
    if (
        code is result.code
        and message is result.message
        and metadata is result.metadata
        and error is result.error
    ):
        return result
    return CommandResult(result.ok, code, message, metadata, error)


def failure_message(succeeded: bool, results: list[CommandResult]) -> str | None:
    """The history row's error message: the last result's message or code."""
    if succeeded:
        return None
    last = results[-1] if results else None
    return ((last.message or last.code) if last else None) or "Command failed"


def result_attributes(result: ExecutionResult) -> dict[str, _tracing.Value]:
    """How an event ended, for its span."""
    attributes: dict[str, _tracing.Value] = {
        "duraflows.event.outcome": result.outcome,
        "duraflows.state.to": result.to_state,
    }
    if result.rejected_by is not None:
        attributes["duraflows.guard.name"] = result.rejected_by
    return attributes


@dataclass(slots=True)
class _ChainSteps:
    """What an onEnter chain did: its outcome, its command results, its last history row."""

    outcome: ExecutionOutcome
    results: list[CommandResult]
    history_uuid: UUID


class Transition:
    """One call's work on one locked instance: the event (or the creation) and the onEnter chain
    it sets off.

    It holds what every step needs: the instance, the definition that rules it, the states
    entered so far (for the observers) and the span describing the call, if any. The runtime's
    registries, store and clock are read at each step, as the runtime holds them then.
    """

    __slots__ = ("definition", "entered", "instance", "runtime", "span")

    def __init__(
        self,
        runtime: WorkflowRuntime,
        instance: WorkflowInstance,
        definition: WorkflowDefinition,
        entered: EnteredStates,
        span: _tracing.Span | None = None,
    ) -> None:
        self.runtime = runtime
        self.instance = instance
        self.definition = definition
        self.entered = entered
        self.span = span

    async def fire(
        self, event_name: str, subject: Any, trigger_metadata: dict[str, Any]
    ) -> ExecutionResult:
        """Run ``event_name`` from the current state: guard, commands, transition, onEnter."""
        instance, definition = self.instance, self.definition
        from_state = instance.current_state
        if self.span is not None and self.span.recording:
            self.span.update(
                {
                    "duraflows.workflow.name": instance.workflow_name,
                    "duraflows.workflow.version": definition.version,
                    "duraflows.instance.uuid": str(instance.uuid),
                    "duraflows.event.name": event_name,
                    "duraflows.state.from": from_state,
                }
            )
        event = definition.states[from_state].events.get(event_name)
        if event is None:
            raise InvalidEventError(instance.uuid, from_state, event_name)
        ctx = ExecutionContext(
            context=dict(instance.context),
            metadata=freeze(instance.metadata),
            trigger_metadata=freeze(trigger_metadata),
            now=utc_now(self.runtime.clock),
            from_state=from_state,
            to_state=event.target_state or from_state,
            transition_uuid=uuid4(),
        )
        if event.guard is not None and not await self.guard_allows(event_name, event, subject, ctx):
            history_uuid = await self.write_history(
                HistoryRecord(
                    workflow_instance_uuid=instance.uuid,
                    from_state=from_state,
                    event_name=event_name,
                    to_state=from_state,
                    outcome="guard-rejected",
                    rejected_by=event.guard.name,
                    trigger_metadata=trigger_metadata,
                    definition_version=definition.version,
                )
            )
            return ExecutionResult(
                "guard-rejected", from_state, from_state, [], history_uuid, event.guard.name
            )
        succeeded, results = await self._run_commands(
            event.commands, subject, ctx, event_name, error_state=event.error_state
        )
        if succeeded:
            to_state = event.target_state or from_state
        else:
            assert event.error_state is not None
            to_state = event.error_state
        now, history_uuid = await self._persist_transition(
            to_state, ctx.context, from_state, event_name, succeeded, results, trigger_metadata
        )
        self.entered.record(
            instance, from_state, ctx.transition_uuid, event_name, trigger_metadata, now
        )
        chain = await self.run_on_enter_chain(subject, ctx)
        outcome: ExecutionOutcome = "success" if succeeded else "failure"
        if chain is not None and chain.outcome == "failure":
            outcome = "failure"
        return ExecutionResult(
            outcome=outcome,
            from_state=from_state,
            to_state=instance.current_state,
            command_results=results + (chain.results if chain is not None else []),
            history_uuid=chain.history_uuid if chain is not None else history_uuid,
        )

    async def enter_initial_state(self, trigger_metadata: Mapping[str, Any], now: datetime) -> None:
        """For an instance just created: record its entry, then run the onEnter chain."""
        instance = self.instance
        transition_uuid = uuid4()
        self.entered.record(instance, None, transition_uuid, None, trigger_metadata, now)
        ctx = ExecutionContext(
            context=dict(instance.context),
            metadata=freeze(instance.metadata),
            trigger_metadata=freeze(trigger_metadata),
            now=now,
            from_state=None,
            to_state=instance.current_state,
            transition_uuid=transition_uuid,
        )
        await self.run_on_enter_chain(None, ctx)

    async def run_on_enter_chain(self, subject: Any, ctx: ExecutionContext) -> _ChainSteps | None:
        """Run the onEnter of the state just entered, and of each state it leads to.

        Each hop is written (instance update, history row, observer event) before the next
        state's commands run. Returns None when no hop was recorded.
        """
        instance, definition = self.instance, self.definition
        state_name = instance.current_state
        predecessor = ctx.from_state
        entry_uuid = ctx.transition_uuid
        depth = 0
        steps: _ChainSteps | None = None
        while True:
            on_enter: OnEnter | None = definition.states[state_name].on_enter
            if on_enter is None:
                return steps
            depth += 1
            max_depth = self.runtime.max_on_enter_depth
            if depth > max_depth:
                raise OnEnterDepthExceededError(instance.uuid, state_name, max_depth)
            hop_ctx = ExecutionContext(
                context=dict(instance.context),
                metadata=ctx.metadata,
                trigger_metadata=ctx.trigger_metadata,
                now=utc_now(self.runtime.clock),
                from_state=predecessor,
                to_state=state_name,
                transition_uuid=entry_uuid,
            )
            succeeded, results = await self._run_commands(
                on_enter.commands, subject, hop_ctx, "onEnter", error_state=on_enter.error_state
            )
            stay = False
            if not succeeded:
                assert on_enter.error_state is not None
                hop_to, hop_uuid = on_enter.error_state, uuid4()
            elif on_enter.target_state is not None:
                hop_to, hop_uuid = on_enter.target_state, uuid4()
            elif on_enter.commands:
                hop_to, hop_uuid, stay = state_name, entry_uuid, True
            else:
                return steps
            # A stay-in-place hop keeps the state's own onEnter writes over its declared context.
            now, history_uuid = await self._persist_transition(
                hop_to,
                hop_ctx.context,
                state_name,
                "onEnter",
                succeeded,
                results,
                dict(_ON_ENTER_TRIGGER),
                apply_declared_context=not stay,
            )
            self.entered.record(instance, state_name, hop_uuid, "onEnter", _ON_ENTER_TRIGGER, now)
            if steps is None:
                steps = _ChainSteps("success", [], history_uuid)
            steps.results.extend(results)
            steps.history_uuid = history_uuid
            if not succeeded:
                steps.outcome = "failure"
            if stay:
                return steps
            predecessor, state_name, entry_uuid = state_name, hop_to, hop_uuid

    # -- the writes (a batched sweep buffers them: see sweep_batches.py) ------------------------

    async def write_transition(self, record: HistoryRecord) -> UUID:
        """Write the instance (its version already incremented) and its history row ``record``
        in one store call, one statement on PostgreSQL; returns the row's uuid."""
        store = self.runtime.persistence.instance_store
        # A store may check less of what the runtime built itself (see checked_built_instance).
        persist = getattr(store, "persist_built_transition", store.persist_transition)
        uuid: UUID = await persist(self.instance, record)
        return uuid

    async def write_instance(self) -> None:
        """Write the instance alone (its version already incremented)."""
        await self.runtime.persistence.instance_store.update(self.instance)

    async def write_history(self, record: HistoryRecord) -> UUID:
        """Append one history row of this instance (no state change); returns its uuid."""
        return await self.runtime.persistence.history_store.append(record)

    # -- the steps ------------------------------------------------------------------------------

    async def guard_allows(
        self, event_name: str, event: Event, subject: Any, ctx: ExecutionContext
    ) -> bool:
        guard_ref = event.guard
        assert guard_ref is not None
        guards = self.runtime.guards
        if guards is None:
            raise WorkflowError(
                f'Event "{event_name}" declares guard "{guard_ref.name}" but no guard registry '
                "is configured"
            )
        registered = guards.get(guard_ref.name)
        # A private deep copy: whatever a guard writes is discarded.
        guard_ctx = ctx.derive(
            context=json_clone(ctx.context),
            command_metadata=freeze(guard_ref.metadata) if guard_ref.metadata else None,
        )
        verdict = registered.fn(subject, guard_ctx)
        # Sync or async: awaited here rather than through maybe_await, one coroutine less.
        if is_awaitable(verdict):
            verdict = await verdict
        if not isinstance(verdict, bool):
            raise WorkflowError(
                f'Guard "{guard_ref.name}" returned {type(verdict).__name__}; expected a bool'
            )
        return verdict

    async def _run_commands(
        self,
        commands: Iterable[Any],
        subject: Any,
        ctx: ExecutionContext,
        event_name: str,
        *,
        error_state: str | None,
    ) -> tuple[bool, list[CommandResult]]:
        """Run commands in order; returns (succeeded, results).

        A mandatory command that fails stops the list; without an error state to route to, that
        is a CommandFailureError. A best-effort command never fails the list: a raise becomes a
        BEST_EFFORT_THROWN result. A mandatory command that raises propagates (rolling back).
        """
        results: list[CommandResult] = []
        for ref in commands:
            registered = self.runtime.commands.get(ref.name)
            call_ctx = ctx.derive(command_metadata=freeze(ref.metadata) if ref.metadata else None)
            try:
                returned = registered.fn(subject, call_ctx)
                if is_awaitable(returned):
                    returned = await returned
            except Exception as exc:
                if not registered.best_effort:
                    raise
                results.append(
                    CommandResult(
                        ok=False,
                        code="BEST_EFFORT_THROWN",
                        message=error_text(exc),
                        error={"name": type(exc).__name__, "message": storable_text(str(exc))},
                    )
                )
                continue
            if returned is None:
                result = CommandResult(ok=True)
            elif isinstance(returned, CommandResult):
                result = storable_result(returned)
            else:
                raise WorkflowError(
                    f'Command "{ref.name}" returned {type(returned).__name__}; expected a '
                    "CommandResult or None"
                )
            results.append(result)
            if not result.ok and not registered.best_effort:
                if error_state is None:
                    raise CommandFailureError(self.instance.uuid, event_name, ref.name, result)
                return False, results
        return True, results

    async def _persist_transition(
        self,
        to_state: str,
        context: dict[str, Any],
        from_state: str,
        event_name: str,
        succeeded: bool,
        results: list[CommandResult],
        trigger_metadata: dict[str, Any],
        *,
        apply_declared_context: bool = True,
    ) -> tuple[datetime, UUID]:
        """Move the instance to ``to_state`` and write it with its history row, in one store
        call (one statement on PostgreSQL); returns the time used and the row's uuid."""
        instance, definition = self.instance, self.definition
        now = utc_now(self.runtime.clock)
        state = definition.states[to_state]
        if apply_declared_context and state.context:
            context = {**context, **json_clone(dict(state.context))}
        instance.current_state = to_state
        next_version(instance, now, definition=definition, transition=True)
        instance.context = context
        instance.expires_at = deadline(state, now)
        instance.timeout_retry = None
        history_uuid = await self.write_transition(
            HistoryRecord(
                workflow_instance_uuid=instance.uuid,
                from_state=from_state,
                event_name=event_name,
                to_state=to_state,
                outcome="success" if succeeded else "failure",
                command_results=results,
                error_message=failure_message(succeeded, results),
                trigger_metadata=trigger_metadata,
                definition_version=definition.version,
            ),
        )
        return now, history_uuid
