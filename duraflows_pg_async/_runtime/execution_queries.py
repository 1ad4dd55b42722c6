"""What is queued: ``WorkflowRuntime.list_executions`` (keyset pages, opaque cursors) and
``execution_stats``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from duraflows_pg_async._core.executions import ExecutionStats, WorkflowExecution
from duraflows_pg_async._core.store_checks import checked_execution_listing
from duraflows_pg_async._core.validate import require_int
from duraflows_pg_async.errors import DurableExecutionNotSupportedError

from .instance_updates import utc_now
from .queries import MAX_PAGE_SIZE, _cursor, _read_cursor

if TYPE_CHECKING:
    from .runtime import WorkflowRuntime

__all__ = ["ExecutionPage", "list_executions", "execution_stats"]


@dataclass(frozen=True, slots=True)
class ExecutionPage:
    """One page of [`list_executions()`][duraflows_pg_async.WorkflowRuntime.list_executions]."""

    items: list[WorkflowExecution]
    """The executions of this page, in ascending uuid order."""
    next_cursor: str | None
    """Pass it as ``after`` (with the same filters) for the next page; ``None``: this page is
    the last."""


async def list_executions(
    runtime: WorkflowRuntime,
    *,
    status: str | None,
    workflow_name: str | None,
    limit: int,
    after: str | None,
) -> ExecutionPage:
    store = runtime.persistence.execution_store
    if store is None:
        raise DurableExecutionNotSupportedError()
    checked_execution_listing(1, status, workflow_name, None)
    require_int(limit, "limit", minimum=1, maximum=MAX_PAGE_SIZE)
    filters = ["executions", status, workflow_name]
    after_uuid = None if after is None else _read_cursor(after, filters, "list_executions")
    # One row more than the page tells whether another page follows.
    found = await store.list_executions(
        limit=limit + 1, status=status, workflow_name=workflow_name, after_uuid=after_uuid
    )
    items = found[:limit]
    more = len(found) > limit
    return ExecutionPage(
        items=items, next_cursor=_cursor(filters, items[-1].uuid) if more else None
    )


async def execution_stats(runtime: WorkflowRuntime) -> list[ExecutionStats]:
    return await runtime._durable.store.stats(now=utc_now(runtime.clock))
