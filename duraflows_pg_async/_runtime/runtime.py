"""WorkflowRuntime: drives instances through their definitions on any persistence provider."""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID, uuid4

from duraflows_pg_async._core import tracing as _tracing
from duraflows_pg_async._core.contract import Clock, SystemClock, WorkflowPersistenceProvider
from duraflows_pg_async._core.model import CommandResult, HistoryRecord, WorkflowInstance
from duraflows_pg_async._core.text import storable_json, storable_text
from duraflows_pg_async._core.validate import (
    check_json,
    coerce_uuid,
    require_aware,
    require_duration,
    require_int,
    require_str,
)
from duraflows_pg_async._definitions.model import (
    Event,
    OnEnter,
    State,
    WorkflowDefinition,
)
from duraflows_pg_async._definitions.registries import (
    CommandRegistry,
    DefinitionRegistry,
    GuardRegistry,
)
from duraflows_pg_async._definitions.validation import validate_definition
from duraflows_pg_async.errors import (
    CommandFailureError,
    DatabaseError,
    IncompatibleDefinitionError,
    InvalidArgumentError,
    InvalidEventError,
    OnEnterDepthExceededError,
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowInstanceNotFoundError,
    echo,
)

from .execution import (
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
    freeze,
    json_clone,
)

__all__ = ["Observer", "WorkflowHandle", "WorkflowRuntime"]

logger = logging.getLogger("duraflows_pg_async")
T = TypeVar("T")

Observer = Callable[[StateEnterEvent], Any]
"""``fn(event)``, sync or async, called after COMMIT for each state entered; errors are logged."""

_TIMEOUT_TRIGGER: Mapping[str, Any] = {"source": "timeout"}

# How long a sweep's claim on its batch lasts by default: the longest a killed worker's batch
# waits before other sweeps take it. A sweep hands back what it has not reached once half of its
# lease is spent, so a slow batch never outlives its claim.
DEFAULT_SWEEP_LEASE = timedelta(seconds=20)
_ON_ENTER_TRIGGER: Mapping[str, Any] = {"source": "onEnter"}


def _json_object(value: object, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(
            f"{name} must be a dict (a JSON object), got {type(value).__name__}"
        )
    out: dict[str, Any] = dict(value)
    # Checked before json_clone, which recurses (RecursionError past ~1000 levels) and deep-copies
    # what it does not know (TypeError for a lock or a mappingproxy): hostile input escaped as
    # those instead of InvalidArgumentError (reliability suite, test_hostile_input.py).
    check_json(out, name)
    cloned: dict[str, Any] = json_clone(out)
    return cloned


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return storable_text(text) if text else type(exc).__name__


def _storable_result(result: CommandResult) -> CommandResult:
    """``result`` with its text made storable (see ``_text``); itself when nothing changed."""
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


def checked_lease(value: object, name: str) -> timedelta:
    """A sweep lease: a positive timedelta or number of seconds."""
    return timedelta(seconds=require_duration(value, name, positive=True))


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _trace_event(
    span: _tracing.Span, instance: WorkflowInstance, definition: WorkflowDefinition, event: str
) -> None:
    if span.recording:
        span.update(
            {
                "duraflows.workflow.name": instance.workflow_name,
                "duraflows.workflow.version": definition.version,
                "duraflows.instance.uuid": str(instance.uuid),
                "duraflows.event.name": event,
                "duraflows.state.from": instance.current_state,
            }
        )


def _trace_result(span: _tracing.Span, result: ExecutionResult) -> None:
    if span.recording:
        span.update(
            {"duraflows.event.outcome": result.outcome, "duraflows.state.to": result.to_state}
        )
        if result.rejected_by is not None:
            span.update({"duraflows.guard.name": result.rejected_by})


@dataclass(slots=True)
class _Steps:
    """What one event (and its onEnter chain) did inside the transaction."""

    outcome: ExecutionOutcome
    results: list[CommandResult]
    history_uuid: UUID


class WorkflowRuntime:
    """Runs workflow instances: create them, trigger events, sweep due timeouts.

    Every mutating call runs in one transaction of ``persistence.transaction_runner`` (joining
    the caller's transaction as a savepoint if there is one); observers fire after the outermost
    COMMIT. The runtime holds no per-instance state, so any number of runtimes in any number of
    processes can share one database.
    """

    def __init__(
        self,
        *,
        definitions: DefinitionRegistry,
        commands: CommandRegistry,
        guards: GuardRegistry | None = None,
        persistence: WorkflowPersistenceProvider,
        clock: Clock | None = None,
        observers: Iterable[Observer] = (),
        timeout_retry: TimeoutRetryPolicy | None = None,
        max_on_enter_depth: int = 10,
        sweep_lease: timedelta | float = DEFAULT_SWEEP_LEASE,
    ) -> None:
        if not isinstance(definitions, DefinitionRegistry):
            raise InvalidArgumentError("definitions must be a DefinitionRegistry")
        if not isinstance(commands, CommandRegistry):
            raise InvalidArgumentError("commands must be a CommandRegistry")
        if guards is not None and not isinstance(guards, GuardRegistry):
            raise InvalidArgumentError("guards must be a GuardRegistry or None")
        if not isinstance(persistence, WorkflowPersistenceProvider):
            raise InvalidArgumentError("persistence must be a WorkflowPersistenceProvider")
        if clock is not None and not callable(getattr(clock, "now", None)):
            raise InvalidArgumentError("clock must have a now() method returning an aware datetime")
        if timeout_retry is not None and not isinstance(timeout_retry, TimeoutRetryPolicy):
            raise InvalidArgumentError("timeout_retry must be a TimeoutRetryPolicy")
        self.definitions = definitions
        self.commands = commands
        self.guards = guards
        self.persistence = persistence
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.timeout_retry = timeout_retry if timeout_retry is not None else TimeoutRetryPolicy()
        self.max_on_enter_depth = require_int(max_on_enter_depth, "max_on_enter_depth", minimum=1)
        self.sweep_lease = checked_lease(sweep_lease, "sweep_lease")
        self._observers: list[Observer] = []
        for observer in observers:
            self.add_observer(observer)
        self._synced = False
        self._checked = False
        self._init_lock: asyncio.Lock | None = None
        # Sweep claims on instances whose failure could not be recorded: see
        # _release_unreleased_claims.
        self._unreleased_claims: list[tuple[UUID, datetime]] = []

    # -- set-up ---------------------------------------------------------------------------------

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(event)`` (sync or async) for every state entered, after COMMIT."""
        if not callable(observer):
            raise InvalidArgumentError(f"observer must be callable, got {echo(observer)}")
        self._observers.append(observer)

    async def initialize(self) -> None:
        """Store a snapshot of every registered definition version and check that instances
        in flight can still run.

        Idempotent and called lazily by the mutating methods. Raises WorkflowDefinitionError when
        a definition's content changed without a version bump, or when instances are pinned to a
        version whose commands or guards are no longer registered. A failed call is retried by
        the next one.
        """
        if self._synced and self._checked:
            return
        if self._init_lock is None:
            self._init_lock = asyncio.Lock()
        async with self._init_lock:
            if not self._synced:
                for definition in self.definitions:
                    await self._ensure_snapshot(definition)
                self._synced = True
            if not self._checked:
                await self._check_executable()
                self._checked = True

    async def _ensure_snapshot(self, definition: WorkflowDefinition) -> None:
        content_hash = definition.content_hash()
        stored = await self.persistence.definition_store.ensure(
            workflow_name=definition.name,
            version=definition.version,
            content_hash=content_hash,
            definition_json=definition.to_dict(),
        )
        if stored.content_hash != content_hash:
            raise WorkflowDefinitionError(
                definition.name,
                f"Definition content changed but version {definition.version} was not bumped "
                f"(stored {stored.content_hash}, registered {content_hash}). Bump the version to "
                "deploy the change; instances in flight keep the stored version.",
            )

    async def _check_executable(self) -> None:
        problems: list[str] = []
        first: str | None = None
        for latest in self.definitions.latest():
            if latest.version_policy == "latest":
                continue
            for stored in await self.persistence.definition_store.list_versions(latest.name):
                definition = self.definitions.find(latest.name, stored.version)
                if definition is None:
                    try:
                        definition = WorkflowDefinition.from_dict(stored.definition_json)
                    except WorkflowError as exc:
                        problems.append(f"{latest.name} v{stored.version}: {exc}")
                        first = first or latest.name
                        continue
                terminal = [name for name, state in definition.states.items() if state.is_terminal]
                active = await self.persistence.instance_store.count_instances(
                    workflow_name=latest.name,
                    definition_version=stored.version,
                    exclude_states=terminal,
                )
                if not active:
                    continue
                try:
                    validate_definition(
                        definition,
                        command_names=self.commands.names(),
                        guard_names=self.guards.names() if self.guards is not None else (),
                    )
                except WorkflowDefinitionError as exc:
                    problems.append(
                        f"{latest.name} v{stored.version} has {active} active instance(s) that "
                        f"cannot run: {exc}"
                    )
                    first = first or latest.name
        if problems:
            raise WorkflowDefinitionError(first or "?", "\n".join(problems))

    # -- helpers --------------------------------------------------------------------------------

    def _now(self) -> datetime:
        # In UTC: deadlines are now + a duration, and adding a timedelta to a zone-aware local
        # time is wall-clock arithmetic, an hour off across a daylight-saving change.
        now = require_aware(self.clock.now(), "clock.now()")
        return now if now.tzinfo is UTC else now.astimezone(UTC)

    async def _in_transaction(self, work: Callable[[list[StateEnterEvent]], Awaitable[T]]) -> T:
        """Run ``work`` in a transaction; the state-enter events it collects go to the observers
        after the outermost COMMIT, and are dropped on rollback."""
        events: list[StateEnterEvent] = []
        runner = self.persistence.transaction_runner
        async with runner.transaction():
            result = await work(events)
            if events and self._observers:
                runner.after_commit(lambda: self._notify(events))
        return result

    async def _notify(self, events: list[StateEnterEvent]) -> None:
        for event in events:
            for observer in list(self._observers):
                try:
                    await _maybe_await(observer(event))
                except Exception:
                    logger.warning(
                        "duraflows: observer %r failed for instance %s entering %r",
                        observer,
                        event.instance_uuid,
                        event.state,
                        exc_info=True,
                    )

    async def _governing(
        self, instance: WorkflowInstance, *, stamp: bool = True
    ) -> WorkflowDefinition:
        """The definition that rules ``instance``: the version it is pinned to, or the latest.

        With ``stamp``, moving the instance to another version stores that version's snapshot in
        the current transaction, so the two commit together.
        """
        latest = self.definitions.get(instance.workflow_name)
        pinned = instance.definition_version
        if latest.version_policy == "latest" or pinned is None or pinned == latest.version:
            definition = latest
            if stamp and pinned != latest.version:
                await self._ensure_snapshot(latest)
        else:
            found = self.definitions.find(instance.workflow_name, pinned)
            if found is None:
                stored = await self.persistence.definition_store.find_by_name_and_version(
                    instance.workflow_name, pinned
                )
                if stored is None:
                    raise WorkflowDefinitionError(
                        instance.workflow_name,
                        f"instance {instance.uuid} is pinned to version {pinned}, which is neither "
                        "registered nor stored",
                    )
                found = WorkflowDefinition.from_dict(stored.definition_json)
                validate_definition(found)
            definition = found
        if instance.current_state not in definition.states:
            raise IncompatibleDefinitionError(
                instance.workflow_name,
                f'instance {instance.uuid} is in state "{instance.current_state}", which version '
                f"{definition.version} does not define",
            )
        return definition

    def _record_entry(
        self,
        events: list[StateEnterEvent],
        instance: WorkflowInstance,
        from_state: str | None,
        transition_uuid: UUID,
        trigger_event: str | None,
        trigger_metadata: Mapping[str, Any],
        now: datetime,
    ) -> None:
        """Queue a state-enter event for the observers; snapshots are taken only if any listen."""
        if self._observers:
            events.append(
                self._state_enter(
                    instance, from_state, transition_uuid, trigger_event, trigger_metadata, now
                )
            )

    def _state_enter(
        self,
        instance: WorkflowInstance,
        from_state: str | None,
        transition_uuid: UUID,
        trigger_event: str | None,
        trigger_metadata: Mapping[str, Any],
        now: datetime,
    ) -> StateEnterEvent:
        return StateEnterEvent(
            workflow_name=instance.workflow_name,
            instance_uuid=instance.uuid,
            state=instance.current_state,
            from_state=from_state,
            to_state=instance.current_state,
            transition_uuid=transition_uuid,
            trigger_event=trigger_event,
            context=freeze(instance.context),
            metadata=freeze(instance.metadata),
            trigger_metadata=freeze(trigger_metadata),
            occurred_at=now,
        )

    @staticmethod
    def _deadline(state: State, now: datetime) -> datetime | None:
        for event in state.events.values():
            if event.timeout is not None:
                return now + event.timeout.to_timedelta()
        return None

    # -- commands and guards --------------------------------------------------------------------

    async def _run_commands(
        self,
        commands: Iterable[Any],
        subject: Any,
        ctx: ExecutionContext,
        instance: WorkflowInstance,
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
            registered = self.commands.get(ref.name)
            call_ctx = ctx.derive(command_metadata=freeze(ref.metadata) if ref.metadata else None)
            try:
                returned = await _maybe_await(registered.fn(subject, call_ctx))
            except Exception as exc:
                if not registered.best_effort:
                    raise
                results.append(
                    CommandResult(
                        ok=False,
                        code="BEST_EFFORT_THROWN",
                        message=_error_text(exc),
                        error={"name": type(exc).__name__, "message": storable_text(str(exc))},
                    )
                )
                continue
            if returned is None:
                result = CommandResult(ok=True)
            elif isinstance(returned, CommandResult):
                result = _storable_result(returned)
            else:
                raise WorkflowError(
                    f'Command "{ref.name}" returned {type(returned).__name__}; expected a '
                    "CommandResult or None"
                )
            results.append(result)
            if not result.ok and not registered.best_effort:
                if error_state is None:
                    raise CommandFailureError(instance.uuid, event_name, ref.name, result)
                return False, results
        return True, results

    async def _guard_allows(
        self, event_name: str, event: Event, subject: Any, ctx: ExecutionContext
    ) -> bool:
        guard_ref = event.guard
        assert guard_ref is not None
        if self.guards is None:
            raise WorkflowError(
                f'Event "{event_name}" declares guard "{guard_ref.name}" but no guard registry '
                "is configured"
            )
        registered = self.guards.get(guard_ref.name)
        # A private deep copy: whatever a guard writes is discarded.
        guard_ctx = ctx.derive(
            context=json_clone(ctx.context),
            command_metadata=freeze(guard_ref.metadata) if guard_ref.metadata else None,
        )
        verdict = await _maybe_await(registered.fn(subject, guard_ctx))
        if not isinstance(verdict, bool):
            raise WorkflowError(
                f'Guard "{guard_ref.name}" returned {type(verdict).__name__}; expected a bool'
            )
        return verdict

    # -- transitions ----------------------------------------------------------------------------

    async def _persist_transition(
        self,
        instance: WorkflowInstance,
        definition: WorkflowDefinition,
        to_state: str,
        context: dict[str, Any],
        *,
        apply_declared_context: bool = True,
    ) -> datetime:
        """Move the instance to ``to_state`` and write it (version + 1); returns the time used."""
        now = self._now()
        state = definition.states[to_state]
        if apply_declared_context and state.context:
            context = {**context, **json_clone(dict(state.context))}
        instance.current_state = to_state
        instance.version += 1
        instance.last_transition_at = instance.updated_at = now
        instance.definition_version = definition.version
        instance.context = context
        instance.expires_at = self._deadline(state, now)
        instance.timeout_retry = None
        await self.persistence.instance_store.update(instance)
        return now

    async def _execute_event(
        self,
        instance: WorkflowInstance,
        definition: WorkflowDefinition,
        event_name: str,
        subject: Any,
        trigger_metadata: dict[str, Any],
        events: list[StateEnterEvent],
        span: _tracing.Span | None = None,
    ) -> ExecutionResult:
        if span is not None:
            _trace_event(span, instance, definition, event_name)
        from_state = instance.current_state
        event = definition.states[from_state].events.get(event_name)
        if event is None:
            raise InvalidEventError(instance.uuid, from_state, event_name)
        ctx = ExecutionContext(
            context=dict(instance.context),
            metadata=freeze(instance.metadata),
            trigger_metadata=freeze(trigger_metadata),
            now=self._now(),
            from_state=from_state,
            to_state=event.target_state or from_state,
            transition_uuid=uuid4(),
        )
        history = self.persistence.history_store
        if event.guard is not None and not await self._guard_allows(
            event_name, event, subject, ctx
        ):
            history_uuid = await history.append(
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
            event.commands, subject, ctx, instance, event_name, error_state=event.error_state
        )
        if succeeded:
            to_state = event.target_state or from_state
        else:
            assert event.error_state is not None
            to_state = event.error_state
        now = await self._persist_transition(instance, definition, to_state, ctx.context)
        last = results[-1] if results else None
        history_uuid = await history.append(
            HistoryRecord(
                workflow_instance_uuid=instance.uuid,
                from_state=from_state,
                event_name=event_name,
                to_state=to_state,
                outcome="success" if succeeded else "failure",
                command_results=results,
                error_message=None
                if succeeded
                else ((last.message or last.code) if last else None) or "Command failed",
                trigger_metadata=trigger_metadata,
                definition_version=definition.version,
            )
        )
        self._record_entry(
            events, instance, from_state, ctx.transition_uuid, event_name, trigger_metadata, now
        )
        chain = await self._run_on_enter_chain(instance, definition, subject, ctx, events)
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

    async def _run_on_enter_chain(
        self,
        instance: WorkflowInstance,
        definition: WorkflowDefinition,
        subject: Any,
        ctx: ExecutionContext,
        events: list[StateEnterEvent],
    ) -> _Steps | None:
        """Run the onEnter of the state just entered, and of each state it leads to.

        Each hop is written (instance update, history row, observer event) before the next
        state's commands run. Returns None when no hop was recorded.
        """
        state_name = instance.current_state
        predecessor = ctx.from_state
        entry_uuid = ctx.transition_uuid
        depth = 0
        steps: _Steps | None = None
        while True:
            on_enter: OnEnter | None = definition.states[state_name].on_enter
            if on_enter is None:
                return steps
            depth += 1
            if depth > self.max_on_enter_depth:
                raise OnEnterDepthExceededError(instance.uuid, state_name, self.max_on_enter_depth)
            hop_ctx = ExecutionContext(
                context=dict(instance.context),
                metadata=ctx.metadata,
                trigger_metadata=ctx.trigger_metadata,
                now=self._now(),
                from_state=predecessor,
                to_state=state_name,
                transition_uuid=entry_uuid,
            )
            succeeded, results = await self._run_commands(
                on_enter.commands,
                subject,
                hop_ctx,
                instance,
                "onEnter",
                error_state=on_enter.error_state,
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
            now = await self._persist_transition(
                instance, definition, hop_to, hop_ctx.context, apply_declared_context=not stay
            )
            last = results[-1] if results else None
            history_uuid = await self.persistence.history_store.append(
                HistoryRecord(
                    workflow_instance_uuid=instance.uuid,
                    from_state=state_name,
                    event_name="onEnter",
                    to_state=hop_to,
                    outcome="success" if succeeded else "failure",
                    command_results=results,
                    error_message=None
                    if succeeded
                    else ((last.message or last.code) if last else None) or "Command failed",
                    trigger_metadata=dict(_ON_ENTER_TRIGGER),
                    definition_version=definition.version,
                )
            )
            self._record_entry(
                events, instance, state_name, hop_uuid, "onEnter", _ON_ENTER_TRIGGER, now
            )
            if steps is None:
                steps = _Steps("success", [], history_uuid)
            steps.results.extend(results)
            steps.history_uuid = history_uuid
            if not succeeded:
                steps.outcome = "failure"
            if stay:
                return steps
            predecessor, state_name, entry_uuid = state_name, hop_to, hop_uuid

    # -- public operations ----------------------------------------------------------------------

    async def create_instance(
        self,
        workflow_name: str,
        *,
        context: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        trigger_metadata: Mapping[str, Any] | None = None,
    ) -> WorkflowInstance:
        """Create an instance of the latest version of ``workflow_name`` in its initial state and
        run the initial state's onEnter chain, in one transaction.

        ``context`` is laid over the initial state's declared context (yours wins). No history row
        is written for the creation itself; onEnter hops write theirs.
        """
        require_str(workflow_name, "workflow_name")
        user_context = _json_object(context, "context")
        user_metadata = _json_object(metadata, "metadata")
        trigger = _json_object(trigger_metadata, "trigger_metadata")
        # Looked up before initialize(): an unknown workflow is refused before the lazy
        # initialisation stores any snapshot (reliability suite, test_hostile_input.py).
        definition = self.definitions.get(workflow_name)
        await self.initialize()
        initial = definition.states[definition.initial_state]
        now = self._now()
        instance = WorkflowInstance(
            uuid=uuid4(),
            workflow_name=definition.name,
            current_state=definition.initial_state,
            version=0,
            context={**json_clone(dict(initial.context)), **user_context},
            metadata=user_metadata,
            expires_at=self._deadline(initial, now),
            last_transition_at=now,
            created_at=now,
            updated_at=now,
            definition_version=definition.version,
        )

        async def work(events: list[StateEnterEvent]) -> WorkflowInstance:
            # The snapshot commits (or rolls back) together with the instance that needs it.
            await self._ensure_snapshot(definition)
            await self.persistence.instance_store.create(instance)
            transition_uuid = uuid4()
            self._record_entry(events, instance, None, transition_uuid, None, trigger, now)
            ctx = ExecutionContext(
                context=dict(instance.context),
                metadata=freeze(instance.metadata),
                trigger_metadata=freeze(trigger),
                now=now,
                from_state=None,
                to_state=instance.current_state,
                transition_uuid=transition_uuid,
            )
            await self._run_on_enter_chain(instance, definition, None, ctx, events)
            return copy.deepcopy(instance)

        span = _tracing.start(_tracing.CREATE_INSTANCE) if _tracing.ENABLED else None
        if span is None:
            return await self._in_transaction(work)
        if span.recording:
            span.update(
                {
                    "duraflows.workflow.name": definition.name,
                    "duraflows.workflow.version": definition.version,
                    "duraflows.instance.uuid": str(instance.uuid),
                }
            )
        created = await span.watch(self._in_transaction(work))
        if span.recording:
            span.update({"duraflows.state.to": created.current_state})
        span.end()
        return created

    async def trigger_event(
        self,
        instance_uuid: UUID | str,
        event_name: str,
        *,
        subject: Any = None,
        trigger_metadata: Mapping[str, Any] | None = None,
    ) -> ExecutionResult:
        """Fire ``event_name`` on the instance, under its row lock, in one transaction.

        A guard that says no gives outcome "guard-rejected" (a history row, no state change).
        Raises WorkflowInstanceNotFoundError, InvalidEventError, CommandFailureError (a mandatory
        command failed with no error state), or what a mandatory command raised; in every error
        case nothing is written.
        """
        key = coerce_uuid(instance_uuid, "instance_uuid")
        require_str(event_name, "event_name")
        trigger = _json_object(trigger_metadata, "trigger_metadata")
        await self.initialize()
        # Started before the transaction, so that the transaction span is its child.
        span = _tracing.start(_tracing.TRIGGER_EVENT) if _tracing.ENABLED else None

        async def work(events: list[StateEnterEvent]) -> ExecutionResult:
            instance = await self.persistence.instance_store.lock_by_uuid(key)
            if instance is None:
                raise WorkflowInstanceNotFoundError(key)
            definition = await self._governing(instance)
            return await self._execute_event(
                instance, definition, event_name, subject, trigger, events, span
            )

        if span is None:
            return await self._in_transaction(work)
        if span.recording:
            span.update({"duraflows.instance.uuid": str(key), "duraflows.event.name": event_name})
        result = await span.watch(self._in_transaction(work))
        _trace_result(span, result)
        span.end()
        return result

    async def process_expired_workflows(
        self, limit: int = 100, *, workflow_names: Iterable[str] | None = None
    ) -> ProcessExpiredResult:
        """Run the timeout event of up to ``limit`` due instances, each in its own transaction.

        Only instances of workflows this runtime registers are taken (``workflow_names``, a
        subset of them, narrows it further), so runtimes of other services sharing the database
        never touch each other's instances. A failing instance is rolled back, scheduled for a
        retry with backoff (parked after ``timeout_retry.max_attempts`` failures) and never stops
        the batch. Safe to run from many workers at once: each instance is processed under its
        row lock after re-checking that it is still due; a row someone else holds is passed
        over, not waited for, and left to a later sweep.
        """
        return await self.sweep(limit, workflow_names=workflow_names)

    async def sweep(
        self,
        limit: int = 100,
        *,
        should_stop: Callable[[], bool] | None = None,
        workflow_names: Iterable[str] | None = None,
        lease: timedelta | float | None = None,
    ) -> ProcessExpiredResult:
        """``process_expired_workflows`` that checks ``should_stop()`` before each instance.

        ``lease`` (default ``sweep_lease``) is how long the batch stays claimed: the longest
        the batch of a killed worker waits before other sweeps take it.
        """
        require_int(limit, "limit", minimum=1)
        names = self._sweep_names(workflow_names)
        claim = self.sweep_lease if lease is None else checked_lease(lease, "lease")
        await self.initialize()
        span = _tracing.start(_tracing.SWEEP) if _tracing.ENABLED else None
        if span is None:
            return await self._sweep(limit, should_stop, names, claim, None)
        if span.recording:
            span.update({"duraflows.sweep.limit": limit})
        result = await span.watch(self._sweep(limit, should_stop, names, claim, span))
        if span.recording:
            span.update(
                {
                    "duraflows.sweep.processed": result.processed,
                    "duraflows.sweep.rejected": result.rejected,
                    "duraflows.sweep.business_failed": len(result.business_failed),
                    "duraflows.sweep.failed": len(result.failed),
                    "duraflows.sweep.parked": len(result.parked),
                }
            )
        span.end()
        return result

    def _sweep_names(self, workflow_names: Iterable[str] | None) -> list[str]:
        """The workflows a sweep takes: the registered ones, or the given subset of them."""
        registered = [definition.name for definition in self.definitions.latest()]
        if workflow_names is None:
            return registered
        if isinstance(workflow_names, str) or not isinstance(workflow_names, Iterable):
            raise InvalidArgumentError(
                "workflow_names must be a collection of workflow names, got "
                f"{type(workflow_names).__name__}"
            )
        names = [require_str(name, "workflow_names[]") for name in workflow_names]
        unknown = sorted(set(names).difference(registered))
        if unknown:
            raise InvalidArgumentError(
                f"workflow_names: {', '.join(echo(n) for n in unknown[:5])} "
                f"{'is' if len(unknown) == 1 else 'are'} not registered in this runtime"
            )
        return list(dict.fromkeys(names))

    async def _sweep(
        self,
        limit: int,
        should_stop: Callable[[], bool] | None,
        names: list[str],
        lease: timedelta,
        span: _tracing.Span | None,
    ) -> ProcessExpiredResult:
        now = self._now()
        store = self.persistence.instance_store
        # The scan claims its batch for the lease, so that concurrent sweeps take disjoint
        # batches; exclusivity itself comes from the per-instance lock and due re-check below.
        claim_until = now + lease
        # Past this point the rest of the batch is handed back: its claims must not run out
        # while this sweep still counts on them.
        hand_back_at = now + lease / 2
        await self._release_unreleased_claims(now)
        if not names:
            return ProcessExpiredResult()
        async with self.persistence.transaction_runner.transaction():
            due = await store.find_expired(
                limit, now, claim_until=claim_until, workflow_names=names
            )
        if span is not None and span.recording:
            span.update({"duraflows.sweep.found": len(due)})
        processed = rejected = 0
        business_failed: list[BusinessFailure] = []
        failed: list[TimeoutFailure] = []
        parked: list[ParkedTimeout] = []
        # Claims to hand back are queued at once, so that a cancellation later in the batch
        # leaves them to the next sweep rather than to the end of the lease.
        hand_back = self._unreleased_claims
        for index, scanned in enumerate(due):
            if (should_stop is not None and should_stop()) or self._now() >= hand_back_at:
                # Other sweepers take the rest at once instead of waiting out the claims.
                hand_back.extend((i.uuid, claim_until) for i in due[index:])
                break
            if span is None:
                outcome = await self._sweep_one(scanned, claim_until, None)
            else:
                outcome = await self._traced_sweep_one(scanned, claim_until)
            if isinstance(outcome, TimeoutFailure):
                failed.append(outcome)
                if outcome.attempts is not None and outcome.retry_at is None:
                    parked.append(ParkedTimeout(scanned.uuid, outcome.error))
            elif outcome == "rejected":
                rejected += 1
            elif outcome is None:
                # Held by someone else, or no longer due: a later sweep takes it if it still
                # needs it, without waiting for this claim to run out.
                hand_back.append((scanned.uuid, claim_until))
            else:
                processed += 1
                if isinstance(outcome, BusinessFailure):
                    business_failed.append(outcome)
        if self._unreleased_claims:
            await self._release_unreleased_claims(self._now())
        return ProcessExpiredResult(processed, rejected, business_failed, failed, parked)

    async def _sweep_one(
        self, scanned: WorkflowInstance, claim_until: datetime, span: _tracing.Span | None
    ) -> str | BusinessFailure | TimeoutFailure | None:
        """Process one scanned instance in a transaction of its own. A failure is rolled back,
        recorded (retry or parking) and returned, never raised. None: passed over (held by
        another transaction, gone, or no longer due)."""
        try:
            # SKIP LOCKED even for the rows this sweep claimed: whoever holds one (a request,
            # a peer's scan) may hold it for any time, and no sweep waits on it.
            return await self._in_transaction(
                functools.partial(self._process_timeout, scanned.uuid, span=span)
            )
        except Exception as exc:
            if span is not None:
                span.fail(exc)
            return await self._record_timeout_failure(scanned, _error_text(exc), claim_until)

    async def _traced_sweep_one(
        self, scanned: WorkflowInstance, claim_until: datetime
    ) -> str | BusinessFailure | TimeoutFailure | None:
        """``_sweep_one`` in a "duraflows.timeout" span, a child of the sweep's."""
        span = _tracing.start(_tracing.TIMEOUT)
        if span is None:
            return await self._sweep_one(scanned, claim_until, None)
        if span.recording:
            span.update(
                {
                    "duraflows.workflow.name": scanned.workflow_name,
                    "duraflows.instance.uuid": str(scanned.uuid),
                    "duraflows.state.from": scanned.current_state,
                }
            )
        outcome = await span.watch(self._sweep_one(scanned, claim_until, span))
        if span.recording:
            if not isinstance(outcome, TimeoutFailure):
                what = (
                    "skipped"
                    if outcome is None
                    else "rejected"
                    if outcome == "rejected"
                    else "processed"
                )
            elif outcome.attempts is None:  # not even the failure could be recorded
                what = "failed"
            else:
                what = "failed" if outcome.retry_at is not None else "parked"
                span.update({"duraflows.timeout.attempts": outcome.attempts})
            span.update({"duraflows.timeout.outcome": what})
        span.end()
        return outcome

    async def _release_unreleased_claims(self, now: datetime) -> None:
        """Hand back the queued claims this runtime's sweeps did not use.

        Queued: the rest of a batch a sweep stopped early, rows it passed over, and instances
        whose failure could not be recorded because the database went away (a restart, a network
        cut), which would otherwise stay due only once their lease ran out. release_claims
        touches only claims still unused and never waits for a row, so a row processed,
        recorded or held since is left alone. When the database cannot be reached, they are
        tried again by the next sweep.
        """
        pending, self._unreleased_claims = self._unreleased_claims, []
        batches: dict[datetime, list[UUID]] = {}
        for instance_uuid, claim_until in pending:
            if claim_until > now:  # a claim past its time has run out by itself
                batches.setdefault(claim_until, []).append(instance_uuid)
        for claim_until, uuids in list(batches.items()):
            try:
                held = await self.persistence.instance_store.release_claims(uuids, claim_until)
            except BaseException as exc:
                # Kept for the next sweep, also when cancelled here (releasing twice is harmless).
                self._unreleased_claims.extend(
                    (u, until) for until, group in batches.items() for u in group
                )
                if isinstance(exc, Exception):
                    return
                raise
            del batches[claim_until]
            # Held by another transaction: tried again by the next sweep, until it is let go
            # (then due at once) or written (which ends the claim), or the claim runs out.
            self._unreleased_claims.extend((u, claim_until) for u in held)

    def _still_due(self, instance: WorkflowInstance, now: datetime) -> bool:
        retry = instance.timeout_retry
        return (
            instance.expires_at is not None
            and instance.expires_at <= now
            and (
                retry is None
                or (retry.parked_at is None and (retry.retry_at is None or retry.retry_at <= now))
            )
        )

    async def _process_timeout(
        self,
        instance_uuid: UUID,
        events: list[StateEnterEvent],
        *,
        span: _tracing.Span | None = None,
    ) -> str | BusinessFailure | None:
        instance = await self.persistence.instance_store.lock_by_uuid(
            instance_uuid, skip_locked=True
        )
        if instance is None or not self._still_due(instance, self._now()):
            return None  # gone, taken by another worker, or handled since the scan
        definition = await self._governing(instance)
        timeout = definition.timeout_event(instance.current_state)
        if timeout is None:
            # The state has no timeout (any more): clear the deadline quietly.
            instance.expires_at = None
            instance.timeout_retry = None
            instance.version += 1
            instance.updated_at = self._now()
            instance.definition_version = definition.version
            await self.persistence.instance_store.update(instance)
            return None
        event_name, _event = timeout
        trigger = dict(_TIMEOUT_TRIGGER)
        result = await self._execute_event(
            instance, definition, event_name, None, trigger, events, span
        )
        if span is not None:
            _trace_result(span, result)
        if result.outcome == "guard-rejected":
            # Rejected timeouts do not fire again: the deadline is cleared.
            now = self._now()
            instance.expires_at = None
            instance.timeout_retry = None
            instance.version += 1
            instance.last_transition_at = instance.updated_at = now
            instance.definition_version = definition.version
            await self.persistence.instance_store.update(instance)
            return "rejected"
        if result.outcome == "failure":
            return BusinessFailure(instance.uuid, result.to_state)
        return "processed"

    async def _record_timeout_failure(
        self, scanned: WorkflowInstance, message: str, claim_until: datetime
    ) -> TimeoutFailure:
        """Schedule the retry (or park) in a transaction of its own; never raises.

        ``attempts`` is None in the result when nothing was recorded: the row changed or is held
        by someone else (its claim is handed back), or recording failed. A failure that could
        not be recorded is never retried at once: the instance is postponed by the retry delay,
        or, when the database is unreachable, its claim is handed back by a later sweep.
        """
        store = self.persistence.instance_store
        try:
            async with self.persistence.transaction_runner.transaction():
                instance = await store.lock_by_uuid(scanned.uuid, skip_locked=True)
                now = self._now()
                if (
                    instance is None
                    or instance.version != scanned.version
                    or instance.current_state != scanned.current_state
                    or instance.expires_at != scanned.expires_at
                    or not self._still_due(instance, now)
                ):
                    self._unreleased_claims.append((scanned.uuid, claim_until))
                    return TimeoutFailure(scanned.uuid, message)
                retry = self.timeout_retry.next(instance.timeout_retry, message, now)
                instance.timeout_retry = retry
                instance.version += 1
                instance.updated_at = now
                await store.update(instance)
        except Exception as exc:
            await self._postpone_unrecorded(scanned, message, claim_until, exc)
            return TimeoutFailure(scanned.uuid, message)
        if retry.parked_at is not None:
            logger.warning(
                "duraflows: timeout of instance %s (workflow %r) parked after %d failed "
                "attempts: %s",
                scanned.uuid,
                scanned.workflow_name,
                retry.attempts,
                retry.last_error,
            )
        else:
            logger.warning(
                "duraflows: timeout of instance %s (workflow %r) failed, attempt %d; next "
                "attempt at %s: %s",
                scanned.uuid,
                scanned.workflow_name,
                retry.attempts,
                retry.retry_at.isoformat() if retry.retry_at is not None else "?",
                retry.last_error,
            )
        return TimeoutFailure(scanned.uuid, retry.last_error, retry.attempts, retry.retry_at)

    async def _postpone_unrecorded(
        self, scanned: WorkflowInstance, message: str, claim_until: datetime, exc: Exception
    ) -> None:
        """After a failure that could not be recorded: keep the instance from running again at
        once. A database error (connection lost, timeouts) hands the claim back to a later sweep,
        as the database may be back by then; anything else postpones it by the delay its next
        retry would have had."""
        if isinstance(exc, DatabaseError):
            self._unreleased_claims.append((scanned.uuid, claim_until))
            logger.warning(
                "duraflows: could not record the failed timeout of instance %s (workflow %r): %s",
                scanned.uuid,
                scanned.workflow_name,
                message,
                exc_info=True,
            )
            return
        until: datetime | None = None
        try:
            now = self._now()
            until = self.timeout_retry.next(scanned.timeout_retry, message, now).retry_at
            until = max(until or now, claim_until, now + self.timeout_retry.initial_delay)
            await self.persistence.instance_store.postpone_timeout(scanned.uuid, until)
        except Exception:
            until = None
        logger.error(
            "duraflows: could not record the failed timeout of instance %s (workflow %r); %s: %s",
            scanned.uuid,
            scanned.workflow_name,
            f"next attempt not before {until.isoformat()}"
            if until is not None
            else "it stays claimed until its lease ends",
            message,
            exc_info=exc,
        )

    async def get_instance(self, instance_uuid: UUID | str) -> WorkflowInstance | None:
        """The instance, or None (no lock, no transaction)."""
        return await self.persistence.instance_store.find_by_uuid(
            coerce_uuid(instance_uuid, "instance_uuid")
        )

    async def get_history(
        self, instance_uuid: UUID | str, *, limit: int = 50, offset: int = 0
    ) -> list[HistoryRecord]:
        """The instance's history, newest first."""
        key = coerce_uuid(instance_uuid, "instance_uuid")
        require_int(limit, "limit", minimum=1)
        require_int(offset, "offset", minimum=0)
        return await self.persistence.history_store.find_by_instance_uuid(key, limit, offset)

    async def get_available_events(self, instance_uuid: UUID | str) -> list[AvailableEvent]:
        """The events of the instance's current state, in definition order (guards are not
        evaluated). Unknown instance: WorkflowInstanceNotFoundError."""
        key = coerce_uuid(instance_uuid, "instance_uuid")
        instance = await self.persistence.instance_store.find_by_uuid(key)
        if instance is None:
            raise WorkflowInstanceNotFoundError(key)
        definition = await self._governing(instance, stamp=False)
        return [
            AvailableEvent(
                event_name=name,
                target_state=event.target_state,
                error_state=event.error_state,
                has_commands=bool(event.commands),
                has_timeout=event.timeout is not None,
                metadata=freeze(event.metadata),
            )
            for name, event in definition.states[instance.current_state].events.items()
        ]

    async def find_parked_timeouts(
        self, *, limit: int = 100, workflow_name: str | None = None
    ) -> list[WorkflowInstance]:
        """Instances whose timeout exhausted its retries, oldest parked first."""
        require_int(limit, "limit", minimum=1)
        return await self.persistence.instance_store.find_parked_timeouts(
            limit=limit, workflow_name=workflow_name
        )

    async def rearm_timeout(self, instance_uuid: UUID | str) -> WorkflowInstance:
        """Clear the instance's retry or parked state, or a sweep's claim on it, so that its
        timeout fires again when due.

        No history row, no observer event. Unknown instance: WorkflowInstanceNotFoundError.
        """
        key = coerce_uuid(instance_uuid, "instance_uuid")
        await self.initialize()
        async with self.persistence.transaction_runner.transaction():
            instance = await self.persistence.instance_store.lock_by_uuid(key)
            if instance is None:
                raise WorkflowInstanceNotFoundError(key)
            if instance.timeout_retry is None and instance.claimed_until is None:
                return instance
            # update() writes the retry columns, which ends a claim too.
            instance.timeout_retry = None
            instance.claimed_until = None
            instance.version += 1
            instance.updated_at = self._now()
            await self.persistence.instance_store.update(instance)
        return instance

    def handle(self, instance_uuid: UUID | str) -> WorkflowHandle:
        """A small object bound to one instance; it caches nothing."""
        return WorkflowHandle(self, coerce_uuid(instance_uuid, "instance_uuid"))


class WorkflowHandle:
    """``runtime.handle(uuid)``: the runtime's per-instance calls without repeating the uuid."""

    __slots__ = ("runtime", "uuid")

    def __init__(self, runtime: WorkflowRuntime, instance_uuid: UUID) -> None:
        self.runtime = runtime
        self.uuid = instance_uuid

    async def get_instance(self) -> WorkflowInstance | None:
        return await self.runtime.get_instance(self.uuid)

    async def trigger_event(
        self,
        event_name: str,
        *,
        subject: Any = None,
        trigger_metadata: Mapping[str, Any] | None = None,
    ) -> ExecutionResult:
        return await self.runtime.trigger_event(
            self.uuid, event_name, subject=subject, trigger_metadata=trigger_metadata
        )

    async def get_available_events(self) -> list[AvailableEvent]:
        return await self.runtime.get_available_events(self.uuid)

    async def get_history(self, *, limit: int = 50, offset: int = 0) -> list[HistoryRecord]:
        return await self.runtime.get_history(self.uuid, limit=limit, offset=offset)
