"""Web framework integrations: [`.fastapi`][duraflows_pg_async.contrib.fastapi] (a lifespan) and
[`.aiohttp`][duraflows_pg_async.contrib.aiohttp] (a cleanup_ctx).

Both share [`workflow_service()`][duraflows_pg_async.contrib.workflow_service], an async context
manager that owns everything a service needs around a
[`WorkflowRuntime`][duraflows_pg_async.WorkflowRuntime]: the pool, the optional migrations,
``initialize()``, a [`TimeoutWorker`][duraflows_pg_async.TimeoutWorker] and, for queued executions,
an [`ExecutionWorker`][duraflows_pg_async.ExecutionWorker] running in background tasks. Importing
this package needs no web framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from duraflows_pg_async import (
    ExecutionWorker,
    TimeoutWorker,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
    create_pool,
    migrations,
    pg_workflow_providers,
)
from duraflows_pg_async._core.validate import require_duration
from duraflows_pg_async.errors import InvalidArgumentError

__all__ = ["BuildRuntime", "WorkflowService", "workflow_service"]

logger = logging.getLogger("duraflows_pg_async")

BuildRuntime = Callable[[WorkflowPersistenceProvider], WorkflowRuntime | Awaitable[WorkflowRuntime]]
"""``build_runtime(persistence)``: returns (or, if async, resolves to) your WorkflowRuntime."""


@dataclass(slots=True)
class WorkflowService:
    """What [`workflow_service()`][duraflows_pg_async.contrib.workflow_service] started: the pool,
    the runtime and the workers, if any (``worker``: the timeout worker, ``execution_worker``:
    the worker of queued executions)."""

    pool: asyncpg.Pool
    runtime: WorkflowRuntime
    worker: TimeoutWorker | None = None
    worker_task: asyncio.Task[None] | None = None
    execution_worker: ExecutionWorker | None = None
    execution_worker_task: asyncio.Task[None] | None = None


def _check_options(value: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(f"{name} must be a mapping of keyword arguments or None")
    return dict(value)


async def _stop_workers(service: WorkflowService, shutdown_timeout: float) -> None:
    """Stop both workers at once, each awaited for at most ``shutdown_timeout`` seconds."""
    await asyncio.gather(
        _stop_worker(service.worker, service.worker_task, "timeout", shutdown_timeout),
        _stop_worker(
            service.execution_worker, service.execution_worker_task, "execution", shutdown_timeout
        ),
    )


async def _stop_worker(
    worker: TimeoutWorker | ExecutionWorker | None,
    task: asyncio.Task[None] | None,
    kind: str,
    shutdown_timeout: float,
) -> None:
    if worker is None or task is None:
        return
    worker.stop()
    try:
        # shield: a timeout here must not cancel the task before we decide to.
        await asyncio.wait_for(asyncio.shield(task), shutdown_timeout)
    except TimeoutError:
        logger.warning(
            "duraflows: %s worker did not stop within %.1fs; cancelling it", kind, shutdown_timeout
        )
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    except Exception:
        logger.exception("duraflows: %s worker failed", kind)


async def _close_pool(pool: asyncpg.Pool, shutdown_timeout: float) -> None:
    try:
        await asyncio.wait_for(pool.close(), shutdown_timeout)
    except TimeoutError:
        logger.warning(
            "duraflows: pool did not close within %.1fs; terminating its connections",
            shutdown_timeout,
        )
        pool.terminate()


@contextlib.asynccontextmanager
async def workflow_service(
    *,
    dsn: str | None,
    build_runtime: BuildRuntime,
    migrate: bool = False,
    worker: bool = True,
    worker_options: Mapping[str, Any] | None = None,
    pool_options: Mapping[str, Any] | None = None,
    persistence_options: Mapping[str, Any] | None = None,
    shutdown_timeout: float = 10.0,
    execution_worker: bool | None = None,
    execution_worker_options: Mapping[str, Any] | None = None,
) -> AsyncIterator[WorkflowService]:
    """Open the pool, migrate if asked, build and initialize the runtime, start the workers.

    - ``dsn``: passed to [`create_pool()`][duraflows_pg_async.create_pool] with ``pool_options``
      (``min_size``, ``max_size``, ``server_settings``, ``json_dumps``, …);
    - ``migrate``: apply the packaged migrations
      ([`duraflows_pg_async.migrations.apply()`][duraflows_pg_async.migrations.apply], idempotent
      and safe with several processes starting at once);
    - ``build_runtime(persistence)``: your factory; ``persistence`` is
      [`pg_workflow_providers()`][duraflows_pg_async.pg_workflow_providers] of the pool with
      ``persistence_options`` (``lock_timeout``, ``statement_timeout``, ``schema``);
    - ``worker``: run a [`TimeoutWorker`][duraflows_pg_async.TimeoutWorker] (``worker_options``:
      ``batch_size``, ``poll_interval``, ``workflow_names``, ``lease``) in a background task;
    - ``execution_worker``: run an [`ExecutionWorker`][duraflows_pg_async.ExecutionWorker]
      (``execution_worker_options``: ``batch_size``, ``poll_interval``) in another one. ``None``
      (the default) runs it when ``worker`` is true and the runtime's provider has an execution
      store (``persistence_options={"durable_execution": True}``); ``False`` never;
      ``True`` always (DurableExecutionNotSupportedError without an execution store).

    On exit the workers are asked to stop and awaited for up to ``shutdown_timeout`` seconds
    (then cancelled: the timeout in hand rolls back, the command of a queued execution in hand
    runs again once its lease ends), and the pool is closed (its connections terminated if they
    are not released within ``shutdown_timeout``). If start-up fails, whatever was started is
    stopped again and the error propagates.
    """
    if not callable(build_runtime):
        raise InvalidArgumentError("build_runtime must be callable: build_runtime(persistence)")
    w_options = _check_options(worker_options, "worker_options")
    e_options = _check_options(execution_worker_options, "execution_worker_options")
    if execution_worker is not None and type(execution_worker) is not bool:
        raise InvalidArgumentError("execution_worker must be True, False or None")
    p_options = _check_options(pool_options, "pool_options")
    s_options = _check_options(persistence_options, "persistence_options")
    timeout = require_duration(
        shutdown_timeout, "shutdown_timeout", timedelta_ok=False, positive=True
    )

    pool = await create_pool(dsn, **p_options)
    service: WorkflowService | None = None
    try:
        if migrate:
            async with pool.acquire() as conn:
                await migrations.apply(conn)
        built = build_runtime(pg_workflow_providers(pool, **s_options))
        runtime = await built if inspect.isawaitable(built) else built
        if not isinstance(runtime, WorkflowRuntime):
            raise InvalidArgumentError(
                f"build_runtime must return a WorkflowRuntime, got {type(runtime).__name__}"
            )
        await runtime.initialize()
        service = WorkflowService(pool=pool, runtime=runtime)
        run_executions = (
            worker and runtime.persistence.execution_store is not None
            if execution_worker is None
            else execution_worker
        )
        # Both are built before either starts: a bad option starts neither.
        timeouts = TimeoutWorker(runtime, **w_options) if worker else None
        executions = ExecutionWorker(runtime, **e_options) if run_executions else None
        if timeouts is not None:
            service.worker = timeouts
            service.worker_task = asyncio.create_task(
                timeouts.run(), name="duraflows-timeout-worker"
            )
        if executions is not None:
            service.execution_worker = executions
            service.execution_worker_task = asyncio.create_task(
                executions.run(), name="duraflows-execution-worker"
            )
        yield service
    finally:
        if service is not None:
            await _stop_workers(service, timeout)
        await _close_pool(pool, timeout)
