"""FastAPI integration: a lifespan that runs the workflow runtime, and request dependencies.

```python
app = FastAPI(lifespan=workflow_lifespan(dsn=DATABASE_URL, build_runtime=build_runtime))

@app.get("/orders/{uuid}")
async def show(uuid: str, runtime: WorkflowRuntime = Depends(get_runtime)): ...

app.include_router(workflow_router(prefix="/workflows", dependencies=[Depends(require_api_key)]))
```

Needs the ``fastapi`` extra: ``pip install 'duraflows-pg-async[fastapi]'``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

try:
    from fastapi import FastAPI, Request
except ImportError as exc:  # pragma: no cover - exercised by a test that hides fastapi
    raise ImportError(
        "duraflows_pg_async.contrib.fastapi needs FastAPI; install the extra: "
        "pip install 'duraflows-pg-async[fastapi]'"
    ) from exc

import asyncpg

from duraflows_pg_async import TimeoutWorker, WorkflowRuntime
from duraflows_pg_async.contrib import BuildRuntime, workflow_service
from duraflows_pg_async.errors import ConfigurationError

__all__ = ["get_pool", "get_runtime", "get_worker", "workflow_lifespan", "workflow_router"]

RUNTIME_ATTR = "duraflows_runtime"
POOL_ATTR = "duraflows_pool"
WORKER_ATTR = "duraflows_worker"


def workflow_lifespan(
    *,
    dsn: str | None,
    build_runtime: BuildRuntime,
    migrate: bool = False,
    worker: bool = True,
    worker_options: Mapping[str, Any] | None = None,
    execution_worker: bool | None = None,
    execution_worker_options: Mapping[str, Any] | None = None,
    pool_options: Mapping[str, Any] | None = None,
    persistence_options: Mapping[str, Any] | None = None,
    shutdown_timeout: float = 10.0,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A ``lifespan=`` for `fastapi.FastAPI` that runs the workflow runtime.

    On start-up it opens the pool with [`create_pool()`][duraflows_pg_async.create_pool] (``dsn``,
    ``pool_options``), applies the migrations if ``migrate``, builds the runtime with
    ``build_runtime(persistence)``, calls ``initialize()`` and, if ``worker``, starts a
    [`TimeoutWorker`][duraflows_pg_async.TimeoutWorker] (``worker_options``) in a background task,
    with an [`ExecutionWorker`][duraflows_pg_async.ExecutionWorker] when the provider has an
    execution store (``execution_worker``: None follows ``worker``; ``execution_worker_options``).
    The runtime, pool and worker land on ``app.state.duraflows_runtime``, ``.duraflows_pool`` and
    ``.duraflows_worker`` (``None`` without a worker); read them with
    [`get_runtime()`][duraflows_pg_async.contrib.fastapi.get_runtime] and
    [`get_pool()`][duraflows_pg_async.contrib.fastapi.get_pool]. On shutdown the worker is stopped
    and awaited (at most ``shutdown_timeout`` seconds) and the pool is closed. See
    [`duraflows_pg_async.contrib.workflow_service()`][duraflows_pg_async.contrib.workflow_service]
    for every argument.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with workflow_service(
            dsn=dsn,
            build_runtime=build_runtime,
            migrate=migrate,
            worker=worker,
            worker_options=worker_options,
            execution_worker=execution_worker,
            execution_worker_options=execution_worker_options,
            pool_options=pool_options,
            persistence_options=persistence_options,
            shutdown_timeout=shutdown_timeout,
        ) as service:
            setattr(app.state, RUNTIME_ATTR, service.runtime)
            setattr(app.state, POOL_ATTR, service.pool)
            setattr(app.state, WORKER_ATTR, service.worker)
            try:
                yield
            finally:
                for name in (RUNTIME_ATTR, POOL_ATTR, WORKER_ATTR):
                    setattr(app.state, name, None)

    return lifespan


def _state(request: Request, name: str) -> Any:
    value = getattr(request.app.state, name, None)
    if value is None:
        raise ConfigurationError(
            "no workflow runtime on app.state: create the app with "
            "FastAPI(lifespan=workflow_lifespan(...)) and run it with its lifespan enabled"
        )
    return value


def get_runtime(request: Request) -> WorkflowRuntime:
    """Dependency: the [`WorkflowRuntime`][duraflows_pg_async.WorkflowRuntime] the lifespan
    built."""
    runtime: WorkflowRuntime = _state(request, RUNTIME_ATTR)
    return runtime


def get_pool(request: Request) -> asyncpg.Pool:
    """Dependency: the ``asyncpg.Pool`` the lifespan opened (closed by the lifespan)."""
    pool: asyncpg.Pool = _state(request, POOL_ATTR)
    return pool


def get_worker(request: Request) -> TimeoutWorker | None:
    """Dependency: the lifespan's [`TimeoutWorker`][duraflows_pg_async.TimeoutWorker], or
    ``None``."""
    _state(request, RUNTIME_ATTR)  # the lifespan ran
    worker: TimeoutWorker | None = getattr(request.app.state, WORKER_ATTR, None)
    return worker


# At the end: the router module reads get_runtime from this one.
from duraflows_pg_async.contrib._fastapi_router import workflow_router  # noqa: E402
