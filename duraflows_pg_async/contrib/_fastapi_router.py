"""``workflow_router()``: the runtime's calls as REST endpoints on a FastAPI ``APIRouter``.

Re-exported by [`duraflows_pg_async.contrib.fastapi`][duraflows_pg_async.contrib.fastapi]; the
routes follow upstream's NestJS controllers (``POST /workflows``, ``POST
/workflows/:uuid/events/:eventName``, ``GET /workflows/:uuid/history``, ...) and its durable
execution routes. Bodies and responses are upstream's camelCase JSON: responses are the records'
``to_json()``.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations, which use
# aliases local to workflow_router().

from collections.abc import Callable, Coroutine, Sequence
from enum import Enum
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.types import Message

from duraflows_pg_async import WorkflowRuntime
from duraflows_pg_async._core.validate import INT4_MAX, require_str
from duraflows_pg_async.errors import (
    CommandFailureError,
    ConnectionLostError,
    DurableExecutionNotSupportedError,
    ExecutionLeaseLostError,
    IdempotencyConflictError,
    IdempotencyInProgressError,
    IdempotencyNotSupportedError,
    InvalidArgumentError,
    InvalidEventError,
    LockTimeoutError,
    OptimisticLockError,
    StatementTimeoutError,
    WorkflowDefinitionError,
    WorkflowInstanceBusyError,
    WorkflowInstanceNotFoundError,
)

from ._fastapi_bodies import (
    DEFAULT_MAX_BODY_BYTES,
    MAX_CURSOR,
    MAX_ERRORS,
    MAX_HISTORY_LIMIT,
    MAX_LIST_LIMIT,
    MAX_NAME,
    MAX_OFFSET,
    MAX_PARKED_LIMIT,
    AvailableEventResponse,
    CreateInstanceRequest,
    EnqueueEventRequest,
    ErrorResponse,
    ExecutionResultResponse,
    HistoryRecordResponse,
    InstancePageResponse,
    StateStatsResponse,
    TriggerEventRequest,
    WorkflowExecutionResponse,
    WorkflowInstanceResponse,
    available_event_json,
    clip,
    state_stats_json,
)

# --- errors ----------------------------------------------------------------------------------


def _bounded_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic's errors without ``input`` and ``ctx`` (they hold what the client sent)."""
    return [
        {
            "loc": [clip(part, 40) if isinstance(part, str) else part for part in error["loc"]],
            "msg": clip(str(error["msg"])),
            "type": error["type"],
        }
        for error in errors[:MAX_ERRORS]
    ]


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": clip(detail), **extra}, status_code=status)


class _BodyTooLargeError(Exception):
    pass


def _argument_problem(exc: InvalidArgumentError) -> str:
    """The runtime's message without the value it quotes (``..., got 'x'...``)."""
    return str(exc).split(", got ", 1)[0]


def _mapped(exc: Exception) -> JSONResponse | None:
    """The response for a workflow error the routes expect, or None (a 500).

    The messages are the router's own, made of what the server knows (uuids it parsed, states):
    the runtime's would quote event names and idempotency keys from the request.
    """
    if isinstance(exc, WorkflowInstanceNotFoundError):
        return _error(404, f'workflow instance "{exc.instance_uuid}" not found')
    if isinstance(exc, InvalidEventError):
        return _error(409, "the event is not available in the current state", state=exc.state)
    if isinstance(exc, IdempotencyConflictError):
        return _error(
            409, "the idempotency key was used for another event or with another fingerprint"
        )
    if isinstance(exc, IdempotencyInProgressError):
        return _error(409, "an event with this idempotency key is still in progress")
    if isinstance(exc, WorkflowInstanceBusyError):
        return _error(409, "the instance is busy with a queued execution")
    if isinstance(exc, ExecutionLeaseLostError):
        return _error(409, "the execution's lease was lost to another worker")
    if isinstance(exc, OptimisticLockError):
        return _error(409, "the instance was changed concurrently; try again")
    if isinstance(exc, CommandFailureError):
        # A business failure with nowhere to route it: the request was fine, the state refuses.
        return _error(
            409, "a mandatory command failed and the event has no error state; nothing changed"
        )
    if isinstance(exc, LockTimeoutError | StatementTimeoutError | ConnectionLostError):
        return _error(503, "the database did not answer in time; try again")
    if isinstance(exc, InvalidArgumentError):
        return _error(422, _argument_problem(exc))
    if isinstance(exc, DurableExecutionNotSupportedError | IdempotencyNotSupportedError):
        return _error(501, str(exc))
    return None


def _route_class(max_body_bytes: int) -> type[APIRoute]:
    class WorkflowRoute(APIRoute):
        """Bounds the body, maps the runtime's errors and keeps the request out of 422s."""

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def bounded(request: Request) -> Response:
                too_large = f"the request body is larger than {max_body_bytes} bytes"
                declared = request.headers.get("content-length")
                if declared is not None and (
                    not (declared.isascii() and declared.isdigit())
                    or int(declared) > max_body_bytes
                ):
                    return _error(413, too_large)
                chunks: list[bytes] = []
                size = 0
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_body_bytes:
                        return _error(413, too_large)
                    chunks.append(chunk)
                body = b"".join(chunks)
                sent = False

                async def replay() -> Message:
                    nonlocal sent
                    if sent:
                        return {"type": "http.disconnect"}
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}

                try:
                    return await handler(Request(request.scope, replay))
                except RequestValidationError as exc:
                    return JSONResponse({"detail": _bounded_errors(exc.errors())}, status_code=422)
                except Exception as exc:
                    response = _mapped(exc)
                    if response is None:
                        raise
                    return response

            return bounded

    return WorkflowRoute


# --- the router ------------------------------------------------------------------------------

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown instance or execution"},
    409: {
        "model": ErrorResponse,
        "description": "Not available now: event not in the current state, idempotency key "
        "reused or in progress, instance busy with a queued execution, a mandatory command "
        "failed with no error state",
    },
    413: {"model": ErrorResponse, "description": "Body larger than the router's limit"},
    422: {"model": ErrorResponse, "description": "Invalid request"},
    503: {
        "model": ErrorResponse,
        "description": "Lock or statement timeout, or the database connection was lost",
    },
}
_NOT_SUPPORTED: dict[int | str, dict[str, Any]] = {
    501: {
        "model": ErrorResponse,
        "description": "The provider was built without idempotency or durable execution",
    }
}


def workflow_router(
    *,
    prefix: str = "/workflows",
    dependencies: Sequence[DependsParam] = (),
    read_only: bool = False,
    tags: Sequence[str | Enum] | None = ("workflows",),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> APIRouter:
    """A ``fastapi.APIRouter`` serving the app's runtime as REST endpoints.

    The runtime comes from [`get_runtime()`][duraflows_pg_async.contrib.fastapi.get_runtime]
    (so the app needs [`workflow_lifespan()`][duraflows_pg_async.contrib.fastapi.workflow_lifespan],
    or ``app.dependency_overrides[get_runtime]``). Mount it with ``app.include_router(...)``.

    Routes (``{uuid}`` is a UUID, so ``/executions/...``, ``/parked`` and ``/stats`` never reach
    it):

    - ``POST {prefix}`` create an instance (201), ``GET {prefix}/{uuid}`` read it;
    - ``GET {prefix}?workflow=&state=&version=&status=&limit=&after=`` a page of instances
      (``{"items", "nextCursor"}``), ``GET {prefix}/stats?workflow=`` counts per workflow and state;
    - ``POST {prefix}/{uuid}/events/{event}`` trigger an event, ``GET {prefix}/{uuid}/events``
      the events of the current state, ``GET {prefix}/{uuid}/history?limit=&offset=``;
    - ``GET {prefix}/parked?workflow=&limit=`` parked timeouts, ``POST {prefix}/{uuid}/rearm``;
    - ``POST {prefix}/{uuid}/executions/{event}`` enqueue (202), ``GET
      {prefix}/executions/{uuid}``, ``POST {prefix}/executions/{uuid}/retry`` and ``.../cancel``.

    Bodies and responses are camelCase JSON (the records' ``to_json()``). Errors answer
    ``{"detail": ...}``, clipped and never echoing the request: unknown instance or execution
    404; event not available, idempotency conflict or in progress, instance busy, lease lost, an
    execution whose status does not allow the retry or cancel 409;
    body over ``max_body_bytes`` 413; invalid input or unknown workflow name 422; idempotency or
    durable execution not enabled 501; a lock or statement timeout or a lost connection 503.
    Other errors propagate (a 500).

    Args:
        prefix: the path every route starts with.
        dependencies: run before every route, e.g. ``[Depends(require_api_key)]``: this is where
            authentication goes; the router checks none.
        read_only: leave out every route that changes something (create, trigger, enqueue,
            rearm, retry, cancel).
        tags: OpenAPI tags of the routes.
        max_body_bytes: a larger request body is answered 413 before it is parsed.
    """
    # Imported here: contrib.fastapi re-exports this function.
    from duraflows_pg_async.contrib.fastapi import get_runtime

    if type(max_body_bytes) is not int or max_body_bytes < 1:
        raise InvalidArgumentError("max_body_bytes must be a positive integer")
    router = APIRouter(
        prefix=prefix,
        dependencies=list(dependencies),
        tags=list(tags) if tags is not None else None,
        route_class=_route_class(max_body_bytes),
        responses={413: _ERRORS[413], 422: _ERRORS[422]},
    )
    runtime_dep = Annotated[WorkflowRuntime, Depends(get_runtime)]
    event_path = Annotated[str, Path(min_length=1, max_length=MAX_NAME)]
    not_found: dict[int | str, dict[str, Any]] = {404: _ERRORS[404]}
    conflict: dict[int | str, dict[str, Any]] = {409: _ERRORS[409]}

    async def control(
        runtime: WorkflowRuntime, execution_uuid: UUID, action: Literal["retry", "cancel"]
    ) -> Response:
        if await runtime.get_execution(execution_uuid) is None:
            raise HTTPException(404, f'durable execution "{execution_uuid}" not found')
        try:
            if action == "retry":
                execution = await runtime.retry_execution(execution_uuid)
            else:
                execution = await runtime.cancel_execution(execution_uuid)
        except InvalidArgumentError:
            # The execution exists (the uuid is valid): its status does not allow the action.
            current = await runtime.get_execution(execution_uuid)
            status = "gone" if current is None else current.status
            done = "retried (only a parked one can)" if action == "retry" else "cancelled"
            return _error(
                409, f"the execution is {status}: it cannot be {done}", executionStatus=status
            )
        return JSONResponse(execution.to_json())

    # Fixed paths first: /parked, /stats and /executions/... before /{instance_uuid} (whose
    # path matches any segment; only its validation refuses what is not a UUID).
    @router.get(
        "",
        response_model=InstancePageResponse,
        summary="A page of instances, in uuid order (keyset paging: pass nextCursor as after)",
    )
    async def list_instances(
        runtime: runtime_dep,
        workflow: Annotated[str | None, Query(min_length=1, max_length=MAX_NAME)] = None,
        state: Annotated[str | None, Query(min_length=1, max_length=MAX_NAME)] = None,
        version: Annotated[int | None, Query(ge=1, le=INT4_MAX)] = None,
        status: Literal["due", "retrying", "parked", "claimed"] | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 50,
        after: Annotated[str | None, Query(min_length=1, max_length=MAX_CURSOR)] = None,
    ) -> Response:
        # The runtime would name its own arguments (workflow_name, definition_version).
        if workflow is not None:
            require_str(workflow, "workflow")
        if state is not None:
            require_str(state, "state")
        if workflow is None and (state is not None or version is not None):
            raise InvalidArgumentError(
                f"{'state' if state is not None else 'version'} needs workflow"
            )
        page = await runtime.list_instances(
            workflow_name=workflow,
            state=state,
            definition_version=version,
            status=status,
            limit=limit,
            after=after,
        )
        return JSONResponse(
            {
                "items": [instance.to_json() for instance in page.items],
                "nextCursor": page.next_cursor,
            }
        )

    @router.get(
        "/stats",
        response_model=list[StateStatsResponse],
        summary="Instance and timeout-status counts per workflow and state",
    )
    async def stats(
        runtime: runtime_dep,
        workflow: Annotated[str | None, Query(min_length=1, max_length=MAX_NAME)] = None,
    ) -> Response:
        if workflow is not None:
            require_str(workflow, "workflow")
        rows = await runtime.stats(workflow_name=workflow)
        return JSONResponse([state_stats_json(row) for row in rows])

    @router.get(
        "/parked",
        response_model=list[WorkflowInstanceResponse],
        summary="Instances whose timeout is parked",
    )
    async def parked_timeouts(
        runtime: runtime_dep,
        workflow: Annotated[str | None, Query(min_length=1, max_length=MAX_NAME)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PARKED_LIMIT)] = 100,
    ) -> Response:
        if workflow is not None:
            require_str(workflow, "workflow")  # no NUL: a 422, not the database's error
        found = await runtime.find_parked_timeouts(limit=limit, workflow_name=workflow)
        return JSONResponse([instance.to_json() for instance in found])

    @router.get(
        "/executions/{execution_uuid}",
        response_model=WorkflowExecutionResponse,
        responses={**not_found, **_NOT_SUPPORTED},
        summary="A queued execution and its journal",
    )
    async def get_execution(execution_uuid: UUID, runtime: runtime_dep) -> Response:
        execution = await runtime.get_execution(execution_uuid)
        if execution is None:
            raise HTTPException(404, f'durable execution "{execution_uuid}" not found')
        return JSONResponse(execution.to_json())

    if not read_only:

        @router.post(
            "/executions/{execution_uuid}/retry",
            response_model=WorkflowExecutionResponse,
            responses={**not_found, **conflict, **_NOT_SUPPORTED},
            summary="Make a parked execution pending again",
        )
        async def retry_execution(execution_uuid: UUID, runtime: runtime_dep) -> Response:
            return await control(runtime, execution_uuid, "retry")

        @router.post(
            "/executions/{execution_uuid}/cancel",
            response_model=WorkflowExecutionResponse,
            responses={**not_found, **conflict, **_NOT_SUPPORTED},
            summary="Cancel an execution no worker holds",
        )
        async def cancel_execution(execution_uuid: UUID, runtime: runtime_dep) -> Response:
            return await control(runtime, execution_uuid, "cancel")

        @router.post(
            "",
            status_code=201,
            response_model=WorkflowInstanceResponse,
            summary="Create an instance",
        )
        async def create_instance(body: CreateInstanceRequest, runtime: runtime_dep) -> Response:
            try:
                runtime.definitions.get(body.workflow_name)
            except WorkflowDefinitionError:
                return _error(422, "workflowName: no workflow of this name is registered")
            instance = await runtime.create_instance(
                body.workflow_name,
                context=body.context,
                metadata=body.metadata,
                trigger_metadata=body.trigger_metadata,
            )
            return JSONResponse(instance.to_json(), status_code=201)

    @router.get(
        "/{instance_uuid}",
        response_model=WorkflowInstanceResponse,
        responses=not_found,
        summary="An instance",
    )
    async def get_instance(instance_uuid: UUID, runtime: runtime_dep) -> Response:
        instance = await runtime.get_instance(instance_uuid)
        if instance is None:
            raise WorkflowInstanceNotFoundError(instance_uuid)
        return JSONResponse(instance.to_json())

    @router.get(
        "/{instance_uuid}/history",
        response_model=list[HistoryRecordResponse],
        summary="An instance's history, newest first",
    )
    async def get_history(
        instance_uuid: UUID,
        runtime: runtime_dep,
        limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_LIMIT)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> Response:
        history = await runtime.get_history(instance_uuid, limit=limit, offset=offset)
        return JSONResponse([record.to_json() for record in history])

    @router.get(
        "/{instance_uuid}/events",
        response_model=list[AvailableEventResponse],
        responses=not_found,
        summary="The events of the instance's current state (guards not evaluated)",
    )
    async def get_available_events(instance_uuid: UUID, runtime: runtime_dep) -> Response:
        events = await runtime.get_available_events(instance_uuid)
        return JSONResponse([available_event_json(event) for event in events])

    if not read_only:

        @router.post(
            "/{instance_uuid}/events/{event_name}",
            response_model=ExecutionResultResponse,
            responses={**not_found, **conflict, **_NOT_SUPPORTED},
            summary="Trigger an event",
        )
        async def trigger_event(
            instance_uuid: UUID,
            event_name: event_path,
            runtime: runtime_dep,
            body: TriggerEventRequest | None = None,
        ) -> Response:
            body = body or TriggerEventRequest()
            result = await runtime.trigger_event(
                instance_uuid,
                event_name,
                subject=body.subject,
                trigger_metadata=body.trigger_metadata,
                idempotency_key=body.idempotency_key,
                idempotency_fingerprint=body.idempotency_fingerprint,
            )
            return JSONResponse(result.to_json())

        @router.post(
            "/{instance_uuid}/executions/{event_name}",
            status_code=202,
            response_model=WorkflowExecutionResponse,
            responses={**not_found, **conflict, **_NOT_SUPPORTED},
            summary="Queue an event for the execution worker",
        )
        async def enqueue_event(
            instance_uuid: UUID,
            event_name: event_path,
            body: EnqueueEventRequest,
            runtime: runtime_dep,
        ) -> Response:
            execution = await runtime.enqueue_event(
                instance_uuid,
                event_name,
                idempotency_key=body.idempotency_key,
                idempotency_fingerprint=body.idempotency_fingerprint,
                subject=body.subject,
                trigger_metadata=body.trigger_metadata,
            )
            return JSONResponse(execution.to_json(), status_code=202)

        @router.post(
            "/{instance_uuid}/rearm",
            response_model=WorkflowInstanceResponse,
            responses={**not_found, **conflict},
            summary="Clear a timeout's retry or parked state so it fires again when due",
        )
        async def rearm_timeout(instance_uuid: UUID, runtime: runtime_dep) -> Response:
            return JSONResponse((await runtime.rearm_timeout(instance_uuid)).to_json())

    return router
