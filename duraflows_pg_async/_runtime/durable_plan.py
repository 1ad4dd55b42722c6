"""The path of a queued execution, rebuilt from its journal without running any command.

A queued event runs one command per step; between steps, only the journal (each finished
command's result and the context after it) is kept. Walking the captured definition with those
results gives the transitions the event makes so far, and either the whole path (every command
has a checkpoint) or the next command to run. The rules are the synchronous runtime's: guards are
not asked again (the guard ran at acceptance), a mandatory failure routes to the error state, a
stay-in-place onEnter hop keeps its state's own writes over the declared context.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from duraflows_pg_async._core.executions import WorkflowExecution
from duraflows_pg_async._core.model import CommandResult, ExecutionOutcome
from duraflows_pg_async._definitions.model import CommandRef, WorkflowDefinition
from duraflows_pg_async.errors import (
    CommandFailureError,
    InvalidEventError,
    OnEnterDepthExceededError,
)

from .execution import ExecutionContext, freeze, json_clone

__all__ = ["Hop", "NextCommand", "Plan", "plan_execution", "transition_uuid"]


def transition_uuid(execution_uuid: UUID, hop: int) -> UUID:
    """The transition uuid of hop ``hop`` (0: the event) of an execution: the same on every
    attempt and in both runtimes (upstream derives it the same way)."""
    digest = hashlib.sha256(f"{execution_uuid}:{hop}".encode()).hexdigest()
    return UUID(f"{digest[0:8]}-{digest[8:12]}-5{digest[13:16]}-a{digest[17:20]}-{digest[20:32]}")


class NextCommand(Exception):
    """Raised by the replay at the first command that has no checkpoint yet."""

    def __init__(self, ref: CommandRef, ctx: ExecutionContext, command_id: str) -> None:
        super().__init__(f"command {ref.name!r} ({command_id}) needs to run")
        self.ref = ref
        self.ctx = ctx
        self.command_id = command_id


@dataclass(slots=True)
class Hop:
    """One transition of the path: written with its history row when the execution finishes."""

    from_state: str
    to_state: str
    transition_uuid: UUID
    event_name: str
    outcome: ExecutionOutcome
    results: list[CommandResult]
    context: dict[str, Any]


@dataclass(slots=True)
class Plan:
    """The whole path of an execution whose every command has finished."""

    hops: list[Hop] = field(default_factory=list)
    outcome: ExecutionOutcome = "success"
    to_state: str = ""


class _Replay:
    __slots__ = ("best_effort", "cursor", "definition", "execution")

    def __init__(self, execution: WorkflowExecution, definition: WorkflowDefinition) -> None:
        self.execution = execution
        self.definition = definition
        self.best_effort = frozenset(execution.best_effort_commands)
        self.cursor = 0

    def commands(
        self,
        refs: Iterable[CommandRef],
        ctx: ExecutionContext,
        event_name: str,
        error_state: str | None,
    ) -> tuple[bool, list[CommandResult]]:
        """The recorded results of ``refs``, in order, as the synchronous runtime would have
        produced them; NextCommand at the first one not recorded."""
        journal = self.execution.journal
        results: list[CommandResult] = []
        for ref in refs:
            if self.cursor >= len(journal):
                raise NextCommand(
                    ref,
                    ctx.derive(
                        context=json_clone(ctx.context),
                        command_metadata=freeze(ref.metadata) if ref.metadata else None,
                    ),
                    str(self.cursor),
                )
            checkpoint = journal[self.cursor]
            self.cursor += 1
            ctx.context.clear()
            ctx.context.update(copy.deepcopy(checkpoint.context))
            results.append(checkpoint.result)
            if not checkpoint.result.ok and ref.name not in self.best_effort:
                if error_state is None:
                    raise CommandFailureError(
                        self.execution.workflow_instance_uuid,
                        event_name,
                        ref.name,
                        checkpoint.result,
                    )
                return False, results
        return True, results

    def declared(self, state: str) -> dict[str, Any]:
        declared: dict[str, Any] = json_clone(dict(self.definition.states[state].context))
        return declared


def plan_execution(execution: WorkflowExecution) -> Plan:
    """The execution's whole path, or NextCommand for the command to run next.

    Raises CommandFailureError (a mandatory command failed and nothing routes the failure) or
    OnEnterDepthExceededError: outcomes a retry cannot change, so the execution parks.
    """
    definition = WorkflowDefinition.from_dict(execution.definition)
    replay = _Replay(execution, definition)
    from_state = execution.from_state
    event = definition.states[from_state].events.get(execution.event_name)
    if event is None:
        raise InvalidEventError(execution.workflow_instance_uuid, from_state, execution.event_name)
    uuid = execution.uuid
    ctx = ExecutionContext(
        context=json_clone(execution.initial_context),
        metadata=freeze(execution.metadata),
        trigger_metadata=freeze(execution.trigger_metadata),
        now=execution.created_at,
        from_state=from_state,
        to_state=event.target_state or from_state,
        transition_uuid=transition_uuid(uuid, 0),
    )
    plan = Plan()
    succeeded, results = replay.commands(
        event.commands, ctx, execution.event_name, event.error_state
    )
    to_state = (event.target_state or from_state) if succeeded else event.error_state
    assert to_state is not None
    context = {**ctx.context, **replay.declared(to_state)}
    plan.hops.append(
        Hop(
            from_state,
            to_state,
            ctx.transition_uuid,
            execution.event_name,
            "success" if succeeded else "failure",
            results,
            json_clone(context),
        )
    )
    if not succeeded:
        plan.outcome = "failure"
    # The onEnter chain of the state entered, as the synchronous runtime runs it.
    state, predecessor, entry_uuid = to_state, from_state, ctx.transition_uuid
    hops, depth = 1, 0
    while True:
        on_enter = definition.states[state].on_enter
        if on_enter is None:
            break
        depth += 1
        if depth > execution.max_on_enter_depth:
            raise OnEnterDepthExceededError(
                execution.workflow_instance_uuid, state, execution.max_on_enter_depth
            )
        hop_ctx = ExecutionContext(
            context=json_clone(context),
            metadata=ctx.metadata,
            trigger_metadata=ctx.trigger_metadata,
            now=execution.created_at,
            from_state=predecessor,
            to_state=state,
            transition_uuid=entry_uuid,
        )
        succeeded, results = replay.commands(
            on_enter.commands, hop_ctx, "onEnter", on_enter.error_state
        )
        stay = False
        if not succeeded:
            assert on_enter.error_state is not None
            hop_to, hop_uuid = on_enter.error_state, transition_uuid(uuid, hops)
            hops += 1
        elif on_enter.target_state is not None:
            hop_to, hop_uuid = on_enter.target_state, transition_uuid(uuid, hops)
            hops += 1
        elif on_enter.commands:
            hop_to, hop_uuid, stay = state, entry_uuid, True
        else:
            break
        # A stay-in-place hop keeps the state's own onEnter writes over its declared context.
        context = hop_ctx.context if stay else {**hop_ctx.context, **replay.declared(hop_to)}
        plan.hops.append(
            Hop(
                state,
                hop_to,
                hop_uuid,
                "onEnter",
                "success" if succeeded else "failure",
                results,
                json_clone(context),
            )
        )
        if not succeeded:
            plan.outcome = "failure"
        if stay:
            break
        predecessor, state, entry_uuid = state, hop_to, hop_uuid
    plan.to_state = plan.hops[-1].to_state
    return plan
