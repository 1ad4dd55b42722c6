"""``dashboard_app()``: the routes, the static files and the error pages, as one Starlette app."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from duraflows_pg_async._runtime.runtime import WorkflowRuntime
from duraflows_pg_async.errors import InvalidArgumentError, WorkflowInstanceNotFoundError
from duraflows_pg_async.metrics import PrometheusMetrics, render_prometheus

from ._actions import Actions
from ._pages import Pages
from ._params import BadParameterError
from ._render import Renderer

__all__ = ["dashboard_app"]

_log = logging.getLogger("duraflows_pg_async.dashboard")
_STATIC = Path(__file__).with_name("static")
_TITLES = {
    400: "Bad request",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Too large",
    415: "Unsupported form",
    500: "Server error",
}


def dashboard_app(
    runtime: WorkflowRuntime,
    *,
    read_only: bool = False,
    metrics: PrometheusMetrics | None = None,
) -> Starlette:
    """The dashboard of ``runtime``'s database, as an ASGI app to mount anywhere
    (``app.mount("/ops", dashboard_app(runtime))``); links follow the mount point.

    It has no authentication: put it behind the host application's. ``read_only=True`` renders
    no action and answers every POST with 403. Needs the ``dashboard`` extra.

    ``GET /metrics`` serves ``metrics`` (a [`PrometheusMetrics`][duraflows_pg_async.metrics.
    PrometheusMetrics] of the application's, which counts from its start); without one, and
    with the ``prometheus`` extra installed, the dashboard makes its own on a private registry
    (its counters start with the dashboard); without the extra, ``/metrics`` answers 404.
    """
    if not isinstance(runtime, WorkflowRuntime):
        raise InvalidArgumentError(
            f"runtime must be a WorkflowRuntime, got {type(runtime).__name__}"
        )
    if not isinstance(read_only, bool):
        raise InvalidArgumentError(f"read_only must be True or False, got {read_only!r}")
    if metrics is not None and not isinstance(metrics, PrometheusMetrics):
        raise InvalidArgumentError(
            f"metrics must be a PrometheusMetrics or None, got {type(metrics).__name__}"
        )
    if metrics is None and importlib.util.find_spec("prometheus_client") is not None:
        from prometheus_client import CollectorRegistry

        metrics = PrometheusMetrics(runtime, registry=CollectorRegistry())
    scraped = metrics
    renderer = Renderer(read_only=read_only, now=runtime.clock.now)
    pages = Pages(runtime, renderer)
    actions = Actions(runtime)

    async def refuse(request: Request) -> Response:
        raise HTTPException(403, "this dashboard is read-only: it takes no action")

    async def metrics_page(request: Request) -> Response:
        if scraped is None:
            raise HTTPException(
                404,
                "no metrics: install the prometheus extra "
                "(pip install 'duraflows-pg-async[prometheus]')",
            )
        body, content_type = await render_prometheus(scraped, accept=request.headers.get("accept"))
        return Response(body, media_type=content_type)

    def post(path: str, endpoint: object, name: str) -> Route:
        return Route(path, refuse if read_only else endpoint, methods=["POST"], name=name)  # type: ignore[arg-type]

    routes = [
        Route("/", pages.workflows, name="workflows"),
        Route("/instances", pages.instances, name="instances"),
        Route("/instances/{uuid}", pages.instance, name="instance"),
        Route("/timeouts", pages.timeouts, name="timeouts"),
        Route("/executions", pages.executions, name="executions"),
        Route("/executions/{uuid}", pages.execution, name="execution"),
        post("/instances/{uuid}/rearm", actions.rearm, "rearm"),
        post("/executions/{uuid}/retry", actions.retry, "retry"),
        post("/executions/{uuid}/cancel", actions.cancel, "cancel"),
        Route("/metrics", metrics_page, name="metrics"),
        Mount("/static", app=StaticFiles(directory=_STATIC), name="static"),
    ]

    def error_page(request: Request, status: int, message: str) -> Response:
        title = _TITLES.get(status, "Error")
        return renderer.page(
            request, "error.html", status_code=status, title=title, message=message, code=status
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        response = error_page(request, exc.status_code, exc.detail)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def bad_parameter(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadParameterError)
        return error_page(request, 400, f"Bad parameter {exc.name!r}: {exc.problem}")

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, WorkflowInstanceNotFoundError)
        return error_page(request, 404, str(exc))

    async def server_error(request: Request, exc: Exception) -> Response:
        _log.exception("duraflows dashboard: %s %s failed", request.method, request.url.path)
        return error_page(request, 500, "The page failed; the server's log says why.")

    return Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: http_error,
            BadParameterError: bad_parameter,
            WorkflowInstanceNotFoundError: not_found,
            Exception: server_error,
        },
    )
