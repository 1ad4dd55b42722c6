"""aiohttp integration: a ``cleanup_ctx`` that runs the workflow runtime, and typed app keys.

```python
app = web.Application()
app.cleanup_ctx.append(workflow_cleanup_ctx(dsn=DATABASE_URL, build_runtime=build_runtime))

async def show(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    ...
```

Needs the ``aiohttp`` extra: ``pip install 'duraflows-pg-async[aiohttp]'``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - exercised by a test that hides aiohttp
    raise ImportError(
        "duraflows_pg_async.contrib.aiohttp needs aiohttp; install the extra: "
        "pip install 'duraflows-pg-async[aiohttp]'"
    ) from exc

import asyncpg

from duraflows_pg_async import TimeoutWorker, WorkflowRuntime
from duraflows_pg_async.contrib import BuildRuntime, workflow_service

__all__ = ["POOL_KEY", "RUNTIME_KEY", "WORKER_KEY", "workflow_cleanup_ctx"]

RUNTIME_KEY: web.AppKey[WorkflowRuntime] = web.AppKey("duraflows_runtime", WorkflowRuntime)
"""``app[RUNTIME_KEY]``: the runtime built by
[`workflow_cleanup_ctx()`][duraflows_pg_async.contrib.aiohttp.workflow_cleanup_ctx]."""
POOL_KEY: web.AppKey[asyncpg.Pool] = web.AppKey("duraflows_pool", asyncpg.Pool)
"""``app[POOL_KEY]``: the pool opened by
[`workflow_cleanup_ctx()`][duraflows_pg_async.contrib.aiohttp.workflow_cleanup_ctx] (closed by it
too)."""
WORKER_KEY: web.AppKey[TimeoutWorker | None] = web.AppKey("duraflows_worker")
"""``app[WORKER_KEY]``: the background [`TimeoutWorker`][duraflows_pg_async.TimeoutWorker], or
``None``."""


def workflow_cleanup_ctx(
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
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A generator for ``app.cleanup_ctx`` that runs the workflow runtime.

    On start-up it opens the pool with [`create_pool()`][duraflows_pg_async.create_pool] (``dsn``,
    ``pool_options``), applies the migrations if ``migrate``, builds the runtime with
    ``build_runtime(persistence)``, calls ``initialize()`` and, if ``worker``, starts a
    [`TimeoutWorker`][duraflows_pg_async.TimeoutWorker] (``worker_options``) in a background task,
    with an [`ExecutionWorker`][duraflows_pg_async.ExecutionWorker] when the provider has an
    execution store (``execution_worker``: None follows ``worker``; ``execution_worker_options``).
    They are stored as ``app[RUNTIME_KEY]``, ``app[POOL_KEY]`` and ``app[WORKER_KEY]``. On cleanup
    the worker is stopped and awaited (at most ``shutdown_timeout`` seconds) and the pool is closed.
    See
    [`duraflows_pg_async.contrib.workflow_service()`][duraflows_pg_async.contrib.workflow_service]
    for every argument.
    """

    async def cleanup_ctx(app: web.Application) -> AsyncIterator[None]:
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
            app[RUNTIME_KEY] = service.runtime
            app[POOL_KEY] = service.pool
            app[WORKER_KEY] = service.worker
            yield

    return cleanup_ctx
