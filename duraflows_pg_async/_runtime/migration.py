"""Instance migration: moving instances from one definition version to another, and the
versions of a workflow the definition store holds.

A migration relabels: no command, guard or onEnter runs. Each instance moves in a transaction of
its own, under its row lock, after checking again that it still qualifies; the candidates are
listed with the instance store's ``find_instance_uuids``, a page at a time.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from duraflows_pg_async._core import tracing as _tracing
from duraflows_pg_async._core.echo import echo
from duraflows_pg_async._core.model import HistoryRecord, WorkflowInstance
from duraflows_pg_async._core.validate import check_json, require_str
from duraflows_pg_async._definitions.model import WorkflowDefinition
from duraflows_pg_async._definitions.problems import quoted
from duraflows_pg_async._definitions.validation import validate_definition
from duraflows_pg_async.errors import (
    InvalidArgumentError,
    MigrationInterruptedError,
    WorkflowDefinitionError,
    WorkflowError,
)

from .execution import json_clone, maybe_await
from .governing import active_instances
from .instance_updates import deadline, next_version, utc_now
from .migration_model import (
    DefinitionVersionInfo,
    MigratedInstance,
    MigrationFailure,
    MigrationRequest,
    MigrationResult,
    SkippedInstance,
)
from .observers import EnteredStates
from .transitions import error_text

if TYPE_CHECKING:
    from .runtime import WorkflowRuntime

__all__ = ["MIGRATED_EVENT", "PAGE_SIZE", "list_definition_versions", "migrate_instances"]

# Candidates asked of find_instance_uuids at a time.
PAGE_SIZE = 100

# The event name of the history row and observer event of a migration ("$" names are reserved:
# no definition may declare one).
MIGRATED_EVENT = "$migrated"


@dataclass(frozen=True, slots=True)
class _Move:
    """The plan for one instance: from and to which state, with which context."""

    from_state: str
    to_state: str
    context: dict[str, Any]


def _referenced(definition: WorkflowDefinition) -> tuple[list[str], list[str]]:
    """The commands and the guards ``definition`` names, each once, in definition order."""
    commands: dict[str, None] = {}
    guards: dict[str, None] = {}
    for state in definition.states.values():
        for event in state.events.values():
            if event.guard is not None:
                guards[event.guard.name] = None
            commands.update(dict.fromkeys(ref.name for ref in event.commands))
        if state.on_enter is not None:
            commands.update(dict.fromkeys(ref.name for ref in state.on_enter.commands))
    return list(commands), list(guards)


async def _stored_definition(
    runtime: WorkflowRuntime, workflow_name: str, version: int
) -> WorkflowDefinition | None:
    """Version ``version`` of the workflow: registered, else its stored snapshot, else None.

    A snapshot that does not read as a valid definition raises WorkflowDefinitionError.
    """
    registered = runtime.definitions.find(workflow_name, version)
    if registered is not None:
        return registered
    stored = await runtime.persistence.definition_store.find_by_name_and_version(
        workflow_name, version
    )
    if stored is None:
        return None
    definition = WorkflowDefinition.from_dict(stored.definition_json)
    validate_definition(definition)
    return definition


async def list_definition_versions(
    runtime: WorkflowRuntime, workflow_name: object
) -> list[DefinitionVersionInfo]:
    """Every stored version of ``workflow_name``, ascending, with its running instances."""
    name = require_str(workflow_name, "workflow_name")
    infos = []
    for stored in await runtime.persistence.definition_store.list_versions(name):
        definition = runtime.definitions.find(name, stored.version)
        if definition is None:
            try:
                definition = WorkflowDefinition.from_dict(stored.definition_json)
            except WorkflowError:
                definition = None  # unreadable: every instance of it counts as running
        active = await active_instances(runtime, name, stored.version, definition)
        infos.append(
            DefinitionVersionInfo(stored.version, stored.content_hash, stored.registered_at, active)
        )
    return infos


def migrate_instances(
    runtime: WorkflowRuntime, request: MigrationRequest
) -> Awaitable[MigrationResult]:
    """Run ``request`` (already checked) in a "duraflows.migrate_instances" span."""
    migrator = _Migrator(runtime, request)
    return _tracing.traced(
        _tracing.MIGRATE_INSTANCES,
        lambda _span: migrator.run(),
        lambda: {
            "duraflows.workflow.name": request.workflow_name,
            "duraflows.migration.from_version": request.from_version,
            "duraflows.migration.to_version": request.to_version,
            "duraflows.migration.dry_run": request.dry_run,
        },
        lambda result: {
            "duraflows.migration.migrated": len(result.migrated),
            "duraflows.migration.skipped": len(result.skipped),
            "duraflows.migration.failed": len(result.failed),
        },
    )


class _Migrator:
    """One ``migrate_instances`` call: the target definition, the candidates examined so far
    (for the cursor) and what happened to each."""

    def __init__(self, runtime: WorkflowRuntime, request: MigrationRequest) -> None:
        self._runtime = runtime
        self._request = request
        self._target: WorkflowDefinition | None = None
        self._examined = 0
        self._after = request.cursor  # the last candidate examined, or the caller's cursor
        self._stopped_at_limit = False
        self._migrated: list[MigratedInstance] = []
        self._skipped: list[SkippedInstance] = []
        self._failed: list[MigrationFailure] = []
        self._warnings: list[str] = []

    async def run(self) -> MigrationResult:
        request = self._request
        target = await self._checked_target()
        self._target = target
        self._warnings = self._unregistered(target)
        # The checks are done: from here on, writes may happen.
        if not request.dry_run:
            await self._store_snapshots()
        while True:
            try:
                page = await self._next_page()
            except Exception as exc:
                result = self._result(self._after)
                raise MigrationInterruptedError(
                    request.workflow_name, result, self._examined, error_text(exc)
                ) from exc
            if not page:
                break
            for instance_uuid in page:
                self._examined += 1
                self._after = instance_uuid
                await self._migrate_or_report(instance_uuid)
        stopped = request.instance_uuids is None and self._stopped_at_limit
        return self._result(self._after if stopped else None)

    def _result(self, next_cursor: UUID | None) -> MigrationResult:
        return MigrationResult(
            dry_run=self._request.dry_run,
            migrated=list(self._migrated),
            skipped=list(self._skipped),
            failed=list(self._failed),
            next_cursor=next_cursor,
            warnings=list(self._warnings),
        )

    # -- before any instance --------------------------------------------------------------------

    async def _checked_target(self) -> WorkflowDefinition:
        """The target definition, with the state mapping checked against it and the source.

        Raises WorkflowDefinitionError (unknown workflow, target neither registered nor stored,
        unreadable snapshot), InvalidArgumentError (a bad mapping) or WorkflowError (listing
        needed and the store cannot list).
        """
        request, runtime = self._request, self._runtime
        name = request.workflow_name
        runtime.definitions.get(name)  # an unknown workflow: WorkflowDefinitionError
        target = await _stored_definition(runtime, name, request.to_version)
        if target is None:
            raise WorkflowDefinitionError(
                name,
                f"version {request.to_version} is neither registered nor in the definition store",
            )
        # The source is only needed to check the mapping's keys. It may be gone from both
        # registry and store, or unreadable: migrating is then the way to rescue its instances.
        try:
            source = await _stored_definition(runtime, name, request.from_version)
        except WorkflowDefinitionError:
            source = None
        for from_state, to_state in request.state_mapping.items():
            if source is not None and from_state not in source.states:
                raise InvalidArgumentError(
                    f"state_mapping maps {quoted(from_state)}, which is not a state of version "
                    f"{request.from_version}"
                )
            if to_state not in target.states:
                raise InvalidArgumentError(
                    f"state_mapping maps {quoted(from_state)} to {quoted(to_state)}, which is "
                    f"not a state of version {request.to_version}"
                )
            if target.states[to_state].on_enter is not None:
                raise InvalidArgumentError(
                    f"state_mapping maps {quoted(from_state)} to {quoted(to_state)}, which has "
                    f"an onEnter in version {request.to_version}; a migration never runs onEnter"
                )
        store = runtime.persistence.instance_store
        if request.instance_uuids is None and not callable(
            getattr(store, "find_instance_uuids", None)
        ):
            raise WorkflowError(
                "migrate_instances without instance_uuids needs an instance store with "
                f"find_instance_uuids; {type(store).__name__} has none"
            )
        if request.dry_run and runtime.definitions.find(name, request.to_version) is not None:
            await self._check_stored_hash(target)
        return target

    async def _check_stored_hash(self, target: WorkflowDefinition) -> None:
        """A dry run reads what a real run writes: a registered target whose stored snapshot
        has other content would be refused."""
        stored = await self._runtime.persistence.definition_store.find_by_name_and_version(
            target.name, target.version
        )
        registered = target.content_hash()
        if stored is not None and stored.content_hash != registered:
            raise WorkflowDefinitionError(
                target.name,
                f"Definition content changed but version {target.version} was not bumped "
                f"(stored {stored.content_hash}, registered {registered})",
            )

    def _unregistered(self, target: WorkflowDefinition) -> list[str]:
        """A warning naming the commands and guards of the target this runtime lacks."""
        commands, guards = _referenced(target)
        runtime = self._runtime
        missing_commands = [c for c in commands if c not in runtime.commands]
        missing_guards = [g for g in guards if runtime.guards is None or g not in runtime.guards]
        parts = []
        if missing_commands:
            parts.append(f"commands [{', '.join(missing_commands)}]")
        if missing_guards:
            parts.append(f"guards [{', '.join(missing_guards)}]")
        if not parts:
            return []
        return [f"version {target.version} references unregistered {', '.join(parts)}"]

    async def _store_snapshots(self) -> None:
        """Store every registered version's snapshot, as ``initialize()`` first does (a drifted
        one raises WorkflowDefinitionError). Its check that pinned instances can run is left
        out: moving them to a version that can is what a migration is for."""
        runtime = self._runtime
        if runtime._synced:
            return
        for definition in runtime.definitions:
            await runtime._ensure_snapshot(definition)

    # -- the candidates -------------------------------------------------------------------------

    async def _next_page(self) -> list[UUID]:
        """The next candidates: the given uuids (once, capped by ``limit``), or the next page of
        ``find_instance_uuids`` after the last one examined. Empty when done."""
        request = self._request
        limit = request.limit
        if request.instance_uuids is not None:
            if self._examined:
                return []
            return request.instance_uuids[:limit]
        if limit is not None and self._examined >= limit:
            self._stopped_at_limit = True
            return []
        wanted = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - self._examined)
        page = await self._runtime.persistence.instance_store.find_instance_uuids(
            workflow_name=request.workflow_name,
            definition_version=request.from_version,
            limit=wanted,
            after_uuid=self._after,
            states=request.states,
            exclude_states=request.exclude_states,
        )
        # A store that returns more than asked is cut back; one whose page does not move past
        # the cursor would make this loop run forever, and is refused.
        page = list(page)[:wanted]
        previous = self._after
        for entry in page:
            if not isinstance(entry, UUID):
                raise WorkflowError(
                    f"find_instance_uuids returned {echo(entry)}, which is not a UUID"
                )
            if previous is not None and not entry > previous:
                raise WorkflowError(
                    "find_instance_uuids returned a page that does not advance past "
                    f"{self._after if self._after is not None else 'the start'}"
                )
            previous = entry
        return page

    # -- one instance ---------------------------------------------------------------------------

    async def _migrate_or_report(self, instance_uuid: UUID) -> None:
        """Plan (dry run) or migrate one candidate; a failure is reported, never raised."""
        runtime = self._runtime
        try:
            if self._request.dry_run:
                instance = await runtime.persistence.instance_store.find_by_uuid(instance_uuid)
                outcome = await self._plan(instance)
            else:
                outcome = await runtime._in_transaction(
                    functools.partial(self._migrate_one, instance_uuid)
                )
        except Exception as exc:
            self._failed.append(MigrationFailure(instance_uuid, error_text(exc)))
            return
        if isinstance(outcome, _Move):
            self._migrated.append(
                MigratedInstance(instance_uuid, outcome.from_state, outcome.to_state)
            )
        else:
            self._skipped.append(SkippedInstance(instance_uuid, outcome))

    async def _migrate_one(self, instance_uuid: UUID, entered: EnteredStates) -> _Move | str:
        """In the instance's transaction: lock it, check it again, move it. A str is the reason
        it was skipped."""
        instance = await self._runtime.persistence.instance_store.lock_by_uuid(instance_uuid)
        plan = await self._plan(instance)
        if isinstance(plan, _Move):
            assert instance is not None
            await self._check_not_busy(instance)
            await self._apply(instance, plan, entered)
        return plan

    async def _check_not_busy(self, instance: WorkflowInstance) -> None:
        """WorkflowInstanceBusyError when a queued execution (pending, running or parked)
        occupies the instance: it captured the old version, so the instance is reported as
        failed, untouched."""
        await self._runtime._refuse_if_busy(instance)

    async def _plan(self, instance: WorkflowInstance | None) -> _Move | str:
        """Whether ``instance`` (as read now) is moved, and how; a str says why not."""
        request, target = self._request, self._target
        assert target is not None
        if instance is None:
            return "not found"
        if instance.workflow_name != request.workflow_name:
            return f"belongs to workflow {quoted(instance.workflow_name)}"
        if instance.definition_version is None:
            return "unstamped (no definition version recorded)"
        if instance.definition_version != request.from_version:
            return f"on version {instance.definition_version}, not {request.from_version}"
        state = instance.current_state
        # Checked here too: a store may ignore the hints, and explicit uuids bypass them.
        if (request.states is not None and state not in request.states) or (
            request.exclude_states is not None and state in request.exclude_states
        ):
            return f"state {quoted(state)} is excluded by the state filter"
        to_state = request.state_mapping.get(state)
        if to_state is None:
            if state not in target.states:
                return (
                    f"state {quoted(state)} has no mapping and does not exist in version "
                    f"{request.to_version}"
                )
            if target.states[state].on_enter is not None:
                return f"state {quoted(state)} has an onEnter in version {request.to_version}"
            to_state = state
        return _Move(state, to_state, await self._context(instance))

    async def _context(self, instance: WorkflowInstance) -> dict[str, Any]:
        """The context the instance takes along: transform_context's, checked, or its own."""
        transform = self._request.transform_context
        if transform is None:
            return instance.context
        returned = await maybe_await(
            transform(json_clone(instance.context), copy.deepcopy(instance))
        )
        if not isinstance(returned, Mapping):
            raise InvalidArgumentError(
                f"transform_context must return a dict (a JSON object), got "
                f"{type(returned).__name__}"
            )
        context = dict(returned)
        check_json(context, "transform_context's result")
        cloned: dict[str, Any] = json_clone(context)
        return cloned

    async def _apply(self, instance: WorkflowInstance, move: _Move, entered: EnteredStates) -> None:
        """Write the move: the instance, its ``$migrated`` history row, the observers' event."""
        request, target, runtime = self._request, self._target, self._runtime
        assert target is not None
        if runtime.definitions.find(request.workflow_name, request.to_version) is not None:
            # The snapshot of the version the instance is stamped with commits with it.
            await runtime._ensure_snapshot(target)
        now = utc_now(runtime.clock)
        instance.current_state = move.to_state
        instance.context = move.context
        instance.definition_version = request.to_version
        # The time spent in the state counts: the deadline runs from the last real transition.
        instance.expires_at = deadline(target.states[move.to_state], instance.last_transition_at)
        instance.timeout_retry = None
        next_version(instance, now)
        await runtime.persistence.instance_store.update(instance)
        trigger = {
            "source": "migration",
            "fromVersion": request.from_version,
            "toVersion": request.to_version,
        }
        await runtime.persistence.history_store.append(
            HistoryRecord(
                workflow_instance_uuid=instance.uuid,
                from_state=move.from_state,
                event_name=MIGRATED_EVENT,
                to_state=move.to_state,
                outcome="success",
                trigger_metadata=dict(trigger),
                definition_version=request.to_version,
            )
        )
        entered.record(instance, move.from_state, uuid4(), MIGRATED_EVENT, trigger, now)
