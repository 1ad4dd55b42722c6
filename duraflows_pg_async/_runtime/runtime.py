"""WorkflowRuntime: drives instances through their definitions on any persistence provider.

Its public operations live here; executing an event is ``transitions.py``, the sweep of due
timeouts ``sweeper.py``, the observers' side ``observers.py``, the reads of instances
``queries.py`` and of queued executions ``execution_queries.py``.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, TypeVar
from uuid import UUID, uuid4

from duraflows_pg_async._core import metrics as _metrics
from duraflows_pg_async._core import tracing as _tracing
from duraflows_pg_async._core.contract import Clock, SystemClock, WorkflowPersistenceProvider
from duraflows_pg_async._core.echo import echo
from duraflows_pg_async._core.executions import (
    DurableExecutionPolicy,
    ExecutionStats,
    ExecutionStatus,
    WorkflowExecution,
)
from duraflows_pg_async._core.model import (
    HistoryRecord,
    InstanceStatus,
    StateStats,
    WorkflowInstance,
)
from duraflows_pg_async._core.validate import (
    check_json,
    coerce_uuid,
    require_bool,
    require_int,
    require_str,
)
from duraflows_pg_async._definitions.model import WorkflowDefinition
from duraflows_pg_async._definitions.registries import (
    CommandRegistry,
    DefinitionRegistry,
    GuardRegistry,
)
from duraflows_pg_async.errors import (
    InvalidArgumentError,
    WorkflowInstanceBusyError,
    WorkflowInstanceNotFoundError,
)

from .durable import DurableExecutions, ProcessPendingResult
from .execution import (
    AvailableEvent,
    ExecutionResult,
    ProcessExpiredResult,
    TimeoutRetryPolicy,
    json_clone,
)
from .execution_queries import ExecutionPage, execution_stats, list_executions
from .governing import check_executable, ensure_snapshot, governing
from .handle import WorkflowHandle
from .idempotency import checked_event_key
from .instance_updates import deadline, next_version, utc_now
from .migration import list_definition_versions, migrate_instances
from .migration_model import (
    ContextTransform,
    DefinitionVersionInfo,
    MigrationResult,
    checked_migration,
)
from .observers import EnteredStates, Observer
from .queries import (
    InstancePage,
    find_parked_timeouts,
    get_available_events,
    get_history,
    get_instance,
    list_instances,
    stats,
)
from .sweeper import DEFAULT_SWEEP_LEASE, Sweeper, checked_lease, sweep_names
from .transitions import Transition, result_attributes

__all__ = ["Observer", "WorkflowHandle", "WorkflowRuntime"]

T = TypeVar("T")

logger = logging.getLogger("duraflows_pg_async")


def _json_object(value: object, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(
            f"{name} must be a dict (a JSON object), got {type(value).__name__}"
        )
    out: dict[str, Any] = dict(value)
    # Checked before json_clone, which recurses and deep-copies what it does not know: input
    # nested past the recursion limit, or holding a lock or a mappingproxy, is refused as
    # InvalidArgumentError instead of escaping as RecursionError or TypeError.
    check_json(out, name)
    cloned: dict[str, Any] = json_clone(out)
    return cloned


class WorkflowRuntime:
    """Runs workflow instances: create them, trigger events, sweep due timeouts.

    Every mutating call runs in one transaction of ``persistence.transaction_runner`` (joining
    the caller's transaction as a savepoint if there is one); observers fire after the outermost
    COMMIT. The state of the workflows is in the database only: any number of runtimes in any
    number of processes can share one. A runtime holds its configuration, its observers, whether
    the definition snapshots are stored and checked yet, and the sweep claims it has still to
    hand back (see ``Sweeper``).
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
        durable_execution: DurableExecutionPolicy | None = None,
        allow_unbumped_edits: bool = False,
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
        if durable_execution is not None and not isinstance(
            durable_execution, DurableExecutionPolicy
        ):
            raise InvalidArgumentError("durable_execution must be a DurableExecutionPolicy")
        self.definitions = definitions
        self.commands = commands
        self.guards = guards
        self.persistence = persistence
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.timeout_retry = timeout_retry if timeout_retry is not None else TimeoutRetryPolicy()
        self.max_on_enter_depth = require_int(max_on_enter_depth, "max_on_enter_depth", minimum=1)
        self.sweep_lease = checked_lease(sweep_lease, "sweep_lease")
        self.allow_unbumped_edits = require_bool(allow_unbumped_edits, "allow_unbumped_edits")
        if self.allow_unbumped_edits:
            logger.warning(
                "duraflows: DEVELOPMENT ONLY: allow_unbumped_edits=True lets an edited definition "
                "replace its stored snapshot without a version bump; never use it in production"
            )
        self._observers: list[Observer] = []
        for observer in observers:
            self.add_observer(observer)
        self._synced = False
        self._checked = False
        self._init_lock: asyncio.Lock | None = None
        self._sweeper = Sweeper(self)
        self._durable = DurableExecutions(self, durable_execution or DurableExecutionPolicy())

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
                await check_executable(self)
                self._checked = True

    async def _ensure_snapshot(self, definition: WorkflowDefinition) -> None:
        await ensure_snapshot(self, definition)

    # -- helpers --------------------------------------------------------------------------------

    async def _in_transaction(self, work: Callable[[EnteredStates], Awaitable[T]]) -> T:
        """Run ``work`` in a transaction; the states it enters go to the observers after the
        outermost COMMIT, and are dropped on rollback."""
        entered = EnteredStates(self._observers)
        runner = self.persistence.transaction_runner
        async with runner.transaction():
            result = await work(entered)
            if entered.events and self._observers:
                runner.after_commit(entered.notify)
        return result

    async def _active_execution(self, instance: WorkflowInstance) -> WorkflowExecution | None:
        """The queued execution occupying the (locked) instance, if any (None without a store)."""
        store = self.persistence.execution_store
        return None if store is None else await store.find_active(instance.uuid)

    async def _refuse_if_busy(self, instance: WorkflowInstance) -> None:
        """WorkflowInstanceBusyError when a queued execution occupies the (locked) instance."""
        active = await self._active_execution(instance)
        if active is not None:
            raise WorkflowInstanceBusyError(instance.uuid, active.uuid)

    async def _governing(
        self, instance: WorkflowInstance, *, stamp: bool = True
    ) -> WorkflowDefinition:
        """The definition that rules ``instance`` (see ``governing``)."""
        return await governing(self, instance, stamp=stamp)

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
        # initialisation stores any snapshot.
        definition = self.definitions.get(workflow_name)
        await self.initialize()
        initial = definition.states[definition.initial_state]
        now = utc_now(self.clock)
        instance = WorkflowInstance(
            uuid=uuid4(),
            workflow_name=definition.name,
            current_state=definition.initial_state,
            version=0,
            context={**json_clone(dict(initial.context)), **user_context},
            metadata=user_metadata,
            expires_at=deadline(initial, now),
            last_transition_at=now,
            created_at=now,
            updated_at=now,
            definition_version=definition.version,
        )

        async def work(entered: EnteredStates) -> WorkflowInstance:
            # The snapshot commits (or rolls back) together with the instance that needs it.
            await self._ensure_snapshot(definition)
            await self.persistence.instance_store.create(instance)
            await Transition(self, instance, definition, entered).enter_initial_state(trigger, now)
            return copy.deepcopy(instance)

        return await _tracing.traced(
            _tracing.CREATE_INSTANCE,
            lambda _span: self._in_transaction(work),
            lambda: {
                "duraflows.workflow.name": definition.name,
                "duraflows.workflow.version": definition.version,
                "duraflows.instance.uuid": str(instance.uuid),
            },
            lambda created: {"duraflows.state.to": created.current_state},
        )

    async def trigger_event(
        self,
        instance_uuid: UUID | str,
        event_name: str,
        *,
        subject: Any = None,
        trigger_metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        idempotency_fingerprint: str | None = None,
    ) -> ExecutionResult:
        """Fire ``event_name`` on the instance, under its row lock, in one transaction.

        A guard that says no gives outcome "guard-rejected" (a history row, no state change).
        Raises WorkflowInstanceNotFoundError, InvalidEventError, CommandFailureError (a mandatory
        command failed with no error state), or what a mandatory command raised; in every error
        case nothing is written.

        With ``idempotency_key`` (needs a provider built with ``idempotency=True``), a key whose
        call committed returns that call's result again and runs nothing; the result, first or
        replayed, is a JSON snapshot. ``idempotency_fingerprint`` (optional) must then match too.
        Raises IdempotencyConflictError, IdempotencyInProgressError or
        IdempotencyNotSupportedError; see docs/idempotency.md.
        """
        key = coerce_uuid(instance_uuid, "instance_uuid")
        require_str(event_name, "event_name")
        trigger = _json_object(trigger_metadata, "trigger_metadata")
        keyed = checked_event_key(self.persistence, idempotency_key, idempotency_fingerprint)
        await self.initialize()
        probe = _metrics.probe(self, "event")

        async def work(span: _tracing.Span | None, entered: EnteredStates) -> ExecutionResult:
            instance = await self.persistence.instance_store.lock_by_uuid(key)
            if instance is None:
                raise WorkflowInstanceNotFoundError(key)
            if probe is not None:
                probe.workflow = instance.workflow_name
            if keyed is not None:
                replayed = await keyed.replay_or_reserve(key, event_name)
                if replayed is not None:
                    if span is not None and span.recording:
                        span.update({"duraflows.idempotency.replayed": True})
                    if probe is not None:
                        probe.outcome = "replayed"
                    return replayed
            await self._refuse_if_busy(instance)
            definition = await self._governing(instance)
            transition = Transition(self, instance, definition, entered, span)
            result = await transition.fire(event_name, subject, trigger)
            return result if keyed is None else await keyed.record(key, result)

        # The span starts before the transaction, so that the transaction span is its child.
        traced = _tracing.traced(
            _tracing.TRIGGER_EVENT,
            lambda span: self._in_transaction(functools.partial(work, span)),
            lambda: {"duraflows.instance.uuid": str(key), "duraflows.event.name": event_name},
            result_attributes,
        )
        return await _metrics.observed(probe, traced)

    async def process_expired_workflows(
        self,
        limit: int = 100,
        *,
        workflow_names: Iterable[str] | None = None,
        batched: bool = False,
    ) -> ProcessExpiredResult:
        """Run the timeout event of up to ``limit`` due instances, each in its own transaction.

        Only instances of workflows this runtime registers are taken (``workflow_names``, a
        subset of them, narrows it further), so runtimes of other services sharing the database
        never touch each other's instances. A failing instance is rolled back, scheduled for a
        retry with backoff (parked after ``timeout_retry.max_attempts`` failures) and never stops
        the batch. Safe to run from many workers at once: each instance is processed under its
        row lock after re-checking that it is still due; a row someone else holds is passed
        over, not waited for, and left to a later sweep.

        ``batched=True`` runs the instances in one transaction per batch instead, each under a
        savepoint (see docs/timeouts-and-workers.md, "Batched sweeps").
        """
        return await self.sweep(limit, workflow_names=workflow_names, batched=batched)

    async def sweep(
        self,
        limit: int = 100,
        *,
        should_stop: Callable[[], bool] | None = None,
        workflow_names: Iterable[str] | None = None,
        lease: timedelta | float | None = None,
        batched: bool = False,
    ) -> ProcessExpiredResult:
        """``process_expired_workflows`` that checks ``should_stop()`` before each instance.

        ``lease`` (default ``sweep_lease``) is how long the batch stays claimed: the longest
        the batch of a killed worker waits before other sweeps take it. ``batched``: one
        transaction per batch, each instance under a savepoint (no claims: the batch's rows
        stay locked until its COMMIT).
        """
        require_int(limit, "limit", minimum=1)
        require_bool(batched, "batched")
        names = sweep_names(self.definitions, workflow_names)
        claim = self.sweep_lease if lease is None else checked_lease(lease, "lease")
        await self.initialize()
        return await self._sweeper.sweep(limit, should_stop, names, claim, batched)

    async def get_instance(self, instance_uuid: UUID | str) -> WorkflowInstance | None:
        """The instance, or None (no lock, no transaction)."""
        return await get_instance(self, instance_uuid)

    async def get_history(
        self, instance_uuid: UUID | str, *, limit: int = 50, offset: int = 0
    ) -> list[HistoryRecord]:
        """The instance's history, newest first."""
        return await get_history(self, instance_uuid, limit=limit, offset=offset)

    async def get_available_events(self, instance_uuid: UUID | str) -> list[AvailableEvent]:
        """The events of the instance's current state, in definition order (guards are not
        evaluated). Unknown instance: WorkflowInstanceNotFoundError."""
        return await get_available_events(self, instance_uuid)

    async def list_definition_versions(self, workflow_name: str) -> list[DefinitionVersionInfo]:
        """Every version of ``workflow_name`` in the definition store, ascending, each with its
        number of running instances (stamped with it, not in one of its terminal states).

        Reads only; does not initialize the runtime. An unknown name gives an empty list.
        """
        return await list_definition_versions(self, workflow_name)

    async def migrate_instances(
        self,
        workflow_name: str,
        *,
        from_version: int,
        to_version: int,
        state_mapping: Mapping[str, str] | None = None,
        transform_context: ContextTransform | None = None,
        instance_uuids: Iterable[UUID | str] | None = None,
        states: Iterable[str] | None = None,
        exclude_states: Iterable[str] | None = None,
        limit: int | None = None,
        cursor: UUID | str | None = None,
        dry_run: bool = False,
    ) -> MigrationResult:
        """Move instances from ``from_version`` to ``to_version`` without running anything;
        see docs/instance-migration.md.

        Each instance moves in a transaction of its own (a savepoint inside yours) under its row
        lock, after checking again that it qualifies; one that no longer does is skipped, one
        whose move raises is rolled back and reported as failed. ``dry_run`` writes nothing.
        Raises, before anything is written, InvalidArgumentError (bad arguments or mapping) or
        WorkflowDefinitionError (unknown workflow or ``to_version``); MigrationInterruptedError
        when listing the candidates fails (its ``result`` holds what was done).
        """
        request = checked_migration(
            workflow_name,
            from_version=from_version,
            to_version=to_version,
            state_mapping=state_mapping,
            transform_context=transform_context,
            instance_uuids=instance_uuids,
            states=states,
            exclude_states=exclude_states,
            limit=limit,
            cursor=cursor,
            dry_run=dry_run,
        )
        return await migrate_instances(self, request)

    async def list_instances(
        self,
        *,
        workflow_name: str | None = None,
        state: str | None = None,
        definition_version: int | None = None,
        status: InstanceStatus | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> InstancePage:
        """One page (``limit``: 1 to 1,000) of the instances matching every filter, by uuid;
        ``next_cursor`` is the ``after`` of the next page. ``state`` and ``definition_version``
        need ``workflow_name``; ``status``: see
        [`InstanceStatus`][duraflows_pg_async.types.InstanceStatus] (due at the runtime's clock).
        See docs/operations.md; a bad argument or cursor raises InvalidArgumentError."""
        return await list_instances(
            self,
            workflow_name=workflow_name,
            state=state,
            definition_version=definition_version,
            status=status,
            limit=limit,
            after=after,
        )

    async def stats(self, *, workflow_name: str | None = None) -> list[StateStats]:
        """Instance and timeout-status counts per workflow and state, sorted; due at the
        runtime's clock. See [`StateStats`][duraflows_pg_async.types.StateStats]."""
        return await stats(self, workflow_name=workflow_name)

    async def execution_stats(self) -> list[ExecutionStats]:
        """The active queued executions per status (pending, running, parked), due at the
        runtime's clock. See [`ExecutionStats`][duraflows_pg_async.types.ExecutionStats];
        DurableExecutionNotSupportedError without an execution store."""
        return await execution_stats(self)

    async def find_parked_timeouts(
        self, *, limit: int = 100, workflow_name: str | None = None
    ) -> list[WorkflowInstance]:
        """Instances whose timeout exhausted its retries, oldest parked first."""
        return await find_parked_timeouts(self, limit=limit, workflow_name=workflow_name)

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
            await self._refuse_if_busy(instance)
            if instance.timeout_retry is None and instance.claimed_until is None:
                return instance
            # update() writes the retry columns, which ends a claim too.
            instance.timeout_retry = None
            instance.claimed_until = None
            next_version(instance, utc_now(self.clock))
            await self.persistence.instance_store.update(instance)
        return instance

    # -- queued executions (durable command execution; docs/durable-execution.md) ---------------

    async def enqueue_event(
        self,
        instance_uuid: UUID | str,
        event_name: str,
        *,
        idempotency_key: str,
        idempotency_fingerprint: str | None = None,
        subject: Any = None,
        trigger_metadata: Mapping[str, Any] | None = None,
    ) -> WorkflowExecution:
        """Accept ``event_name`` for later, command by command, and return the execution.

        Runs the guard now; runs no command (``process_pending_executions`` does). The same
        key again returns the same execution; another event or fingerprint under it raises
        IdempotencyConflictError. ``subject`` and ``trigger_metadata`` must be JSON; they are
        copied. Raises WorkflowInstanceBusyError while another execution occupies the
        instance, DurableExecutionNotSupportedError without ``durable_execution=True``.
        """
        return await self._durable.enqueue(
            instance_uuid,
            event_name,
            idempotency_key=idempotency_key,
            idempotency_fingerprint=idempotency_fingerprint,
            subject=subject,
            trigger_metadata=_json_object(trigger_metadata, "trigger_metadata"),
        )

    async def process_pending_executions(
        self, limit: int = 100, *, should_stop: Callable[[], bool] | None = None
    ) -> ProcessPendingResult:
        """Run the next command of up to ``limit`` due executions, each checkpointed in its own
        transaction. Call it outside any transaction (a worker's loop: ``ExecutionWorker``).

        ``should_stop()`` is asked before each execution: once it is true, the call returns
        after the execution in hand.
        """
        return await self._durable.process(limit, should_stop)

    async def get_execution(self, execution_uuid: UUID | str) -> WorkflowExecution | None:
        """The execution and its journal, or None."""
        return await self._durable.get(execution_uuid)

    async def retry_execution(self, execution_uuid: UUID | str) -> WorkflowExecution:
        """Make a parked execution pending again (attempts reset, finished commands kept)."""
        return await self._durable.control(execution_uuid, "retry")

    async def cancel_execution(self, execution_uuid: UUID | str) -> WorkflowExecution:
        """Cancel an execution no worker holds; it frees the instance and undoes nothing."""
        return await self._durable.control(execution_uuid, "cancel")

    def handle(self, instance_uuid: UUID | str) -> WorkflowHandle:
        """A small object bound to one instance; it caches nothing."""
        return WorkflowHandle(self, coerce_uuid(instance_uuid, "instance_uuid"))

    async def list_executions(
        self,
        *,
        status: ExecutionStatus | None = None,
        workflow_name: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> ExecutionPage:
        """One page (``limit``: 1 to 1,000) of the queued executions matching every filter, by
        uuid; ``next_cursor`` is the ``after`` of the next page. An active ``status``
        (pending, running, parked) is read from the index of active executions. A bad argument
        or cursor raises InvalidArgumentError; DurableExecutionNotSupportedError without an
        execution store."""
        return await list_executions(
            self, status=status, workflow_name=workflow_name, limit=limit, after=after
        )
