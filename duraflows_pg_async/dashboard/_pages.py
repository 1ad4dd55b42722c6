"""The dashboard's pages (GET): workflows, instances, one instance, timeouts, executions."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from uuid import UUID

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from duraflows_pg_async._core.executions import ACTIVE_STATUSES, EXECUTION_STATUSES
from duraflows_pg_async._core.model import INSTANCE_STATUSES, StateStats, WorkflowInstance
from duraflows_pg_async._definitions.model import WorkflowDefinition
from duraflows_pg_async._runtime.execution import AvailableEvent
from duraflows_pg_async._runtime.instance_updates import utc_now
from duraflows_pg_async._runtime.queries import MAX_PAGE_SIZE
from duraflows_pg_async._runtime.runtime import WorkflowRuntime
from duraflows_pg_async.errors import InvalidArgumentError, WorkflowError

from . import _params
from ._diagram import STATUSES, counted_diagram, number
from ._render import Renderer

__all__ = ["Pages"]

_log = logging.getLogger("duraflows_pg_async.dashboard")
PAGE_SIZE = 50
HISTORY_SIZE = 100
TIMEOUT_STATUSES = ("parked", "retrying")


@dataclass
class WorkflowCard:
    """One workflow on the workflows page."""

    name: str
    definition: WorkflowDefinition | None
    diagram: str | None
    rows: list[StateStats] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    rough: set[str] = field(default_factory=set)
    """The totals that add up estimates."""


def parse_uuid(value: str, what: str) -> UUID:
    """A uuid from the path; anything else names no page (404)."""
    try:
        return UUID(value)
    except ValueError:
        raise HTTPException(404, f"no {what} {value[:64]!r}: not a uuid") from None


def _cursor_error(exc: InvalidArgumentError) -> _params.BadParameterError:
    return _params.BadParameterError("after", str(exc).split(", got ", 1)[0])


class Pages:
    """The GET handlers, bound to one runtime."""

    def __init__(self, runtime: WorkflowRuntime, renderer: Renderer) -> None:
        self.runtime = runtime
        self.render = renderer

    async def _definition(self, name: str) -> WorkflowDefinition | None:
        """The registered definition (what this process runs), else the newest stored
        snapshot (what the runtimes that share the database registered)."""
        if name in self.runtime.definitions.names():
            return self.runtime.definitions.get(name)
        versions = await self.runtime.persistence.definition_store.list_versions(name)
        if not versions:
            return None
        try:
            return WorkflowDefinition.from_dict(versions[-1].definition_json)
        except WorkflowError as exc:
            _log.warning("duraflows dashboard: cannot read the snapshot of %r: %s", name, exc)
            return None

    async def _stats(self) -> tuple[list[StateStats], frozenset[tuple[str, str, str]]]:
        """Every workflow's stats; on a large PostgreSQL table, with the counts of large states
        estimated (``estimate_stats``: counting a million instances exactly takes longer than a
        page may)."""
        estimate = getattr(self.runtime.persistence.instance_store, "estimate_stats", None)
        if estimate is not None:
            found = await estimate(now=utc_now(self.runtime.clock))
            if found is not None:
                stats, estimated = found
                return stats, estimated
        return await self.runtime.stats(), frozenset()

    async def workflows(self, request: Request) -> Response:
        stats, estimated = await self._stats()
        names = sorted({s.workflow_name for s in stats} | set(self.runtime.definitions.names()))
        cards: list[WorkflowCard] = []
        for name in names:
            rows = [s for s in stats if s.workflow_name == name]
            definition = await self._definition(name)
            counts = {s.state: s for s in rows}
            if definition is not None:
                # The definition's states in its order, then states only instances still hold.
                ordered = [counts.get(state) or StateStats(name, state, 0, 0, 0, 0, 0, None)
                           for state in definition.states]  # fmt: skip
                rows = ordered + [s for s in rows if s.state not in definition.states]
            fields = ("instances", *STATUSES)
            totals = {key: sum(getattr(s, key) for s in rows) for key in fields}
            rough = {key for key in fields if any((name, s.state, key) in estimated for s in rows)}
            diagram = None if definition is None else counted_diagram(definition, counts, estimated)
            cards.append(WorkflowCard(name, definition, diagram, rows, totals, rough))
        return self.render.page(
            request,
            "workflows.html",
            cards=cards,
            statuses=STATUSES,
            estimated=estimated,
            count=number,
        )

    async def _snapshot_events(self, instance: WorkflowInstance) -> list[AvailableEvent] | None:
        """The events of the instance's state in the stored snapshot of its definition version
        (the newest stored one when it has none), as ``get_available_events`` lists them."""
        store = self.runtime.persistence.definition_store
        name, version = instance.workflow_name, instance.definition_version
        if version is not None:
            stored = await store.find_by_name_and_version(name, version)
        else:
            versions = await store.list_versions(name)
            stored = versions[-1] if versions else None
        if stored is None:
            return None
        try:
            definition = WorkflowDefinition.from_dict(stored.definition_json)
        except WorkflowError:
            return None
        state = definition.states.get(instance.current_state)
        if state is None:
            return None
        return [
            AvailableEvent(
                event_name=event_name,
                target_state=event.target_state,
                error_state=event.error_state,
                has_commands=bool(event.commands),
                has_timeout=event.timeout is not None,
                metadata=dict(event.metadata),
            )
            for event_name, event in state.events.items()
        ]

    async def instances(self, request: Request) -> Response:
        workflow = _params.text(request, "workflow")
        state = _params.text(request, "state")
        version = _params.integer(request, "version", minimum=1, maximum=2**31 - 1)
        status = _params.choice(request, "status", INSTANCE_STATUSES)
        limit = _params.integer(request, "limit", minimum=1, maximum=MAX_PAGE_SIZE) or PAGE_SIZE
        after = _params.cursor(request)
        if workflow is None:
            for name, value in (("state", state), ("version", version)):
                if value is not None:
                    raise _params.BadParameterError(name, "needs a workflow")
        try:
            page = await self.runtime.list_instances(
                workflow_name=workflow,
                state=state,
                definition_version=version,
                status=status,  # type: ignore[arg-type]
                limit=limit,
                after=after,
            )
        except InvalidArgumentError as exc:
            raise _cursor_error(exc) from exc
        filters = {"workflow": workflow, "state": state, "version": version, "status": status}
        return self.render.page(
            request,
            "instances.html",
            page=page,
            filters=filters,
            after=after,
            limit=None if limit == PAGE_SIZE else limit,
            statuses=INSTANCE_STATUSES,
            workflow_names=self.runtime.definitions.names(),
        )

    async def instance(self, request: Request) -> Response:
        key = parse_uuid(request.path_params["uuid"], "instance")
        instance = await self.runtime.get_instance(key)
        if instance is None:
            raise HTTPException(404, f"no workflow instance {key}")
        history = await self.runtime.get_history(key, limit=HISTORY_SIZE)
        events: list[AvailableEvent] | None
        try:
            events = await self.runtime.get_available_events(key)
        except WorkflowError as exc:
            # Not registered here (duraflows-pg dashboard registers nothing): read the stored
            # snapshot of its version; with none, its events are unknown.
            _log.debug("duraflows dashboard: events of %s from the snapshot: %s", key, exc)
            events = await self._snapshot_events(instance)
        store = self.runtime.persistence.execution_store
        active = None if store is None else await store.find_active(key)
        return self.render.page(
            request,
            "instance.html",
            instance=instance,
            history=history,
            history_size=HISTORY_SIZE,
            events=events,
            active=active,
        )

    async def timeouts(self, request: Request) -> Response:
        status = _params.choice(request, "status", TIMEOUT_STATUSES) or "parked"
        workflow = _params.text(request, "workflow")
        after = _params.cursor(request)
        try:
            page = await self.runtime.list_instances(
                workflow_name=workflow,
                status=status,  # type: ignore[arg-type]
                limit=PAGE_SIZE,
                after=after,
            )
        except InvalidArgumentError as exc:
            raise _cursor_error(exc) from exc
        return self.render.page(
            request,
            "timeouts.html",
            page=page,
            status=status,
            workflow=workflow,
            after=after,
            statuses=TIMEOUT_STATUSES,
        )

    async def executions(self, request: Request) -> Response:
        status = _params.choice(request, "status", EXECUTION_STATUSES)
        workflow = _params.text(request, "workflow")
        after = _params.cursor(request)
        page = None
        if self.runtime.persistence.execution_store is not None:
            try:
                page = await self.runtime.list_executions(
                    status=status,  # type: ignore[arg-type]
                    workflow_name=workflow,
                    limit=PAGE_SIZE,
                    after=after,
                )
            except InvalidArgumentError as exc:
                raise _cursor_error(exc) from exc
        return self.render.page(
            request,
            "executions.html",
            page=page,
            status=status,
            workflow=workflow,
            after=after,
            statuses=EXECUTION_STATUSES,
            active_statuses=ACTIVE_STATUSES,
        )

    async def execution(self, request: Request) -> Response:
        key = parse_uuid(request.path_params["uuid"], "execution")
        execution = None
        if self.runtime.persistence.execution_store is not None:
            execution = await self.runtime.get_execution(key)
        if execution is None:
            raise HTTPException(404, f"no queued execution {key}")
        return self.render.page(
            request, "execution.html", execution=execution, active_statuses=ACTIVE_STATUSES
        )
