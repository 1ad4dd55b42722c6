"""``list`` (instances by workflow, state, definition version and timeout status, page by page)
and ``stats`` (counts per workflow and state, once or redrawn with ``--watch``).

Both read through ``WorkflowRuntime.list_instances`` and ``stats`` of a runtime with empty
registries: these queries read no definition, and the filters, cursors and the meaning of "due"
stay in the runtime alone.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import sys
from datetime import UTC, datetime
from typing import cast

import asyncpg

from duraflows_pg_async._core.json_form import optional_utc_text
from duraflows_pg_async._core.model import InstanceStatus, StateStats, WorkflowInstance
from duraflows_pg_async._definitions.registries import CommandRegistry, DefinitionRegistry
from duraflows_pg_async._pg.providers import pg_workflow_providers
from duraflows_pg_async._runtime.queries import MAX_PAGE_SIZE
from duraflows_pg_async._runtime.runtime import WorkflowRuntime

from .database import Target, pool, schema_option, target_from
from .exits import EXIT_USAGE, CliError
from .output import PROG, emit, emit_json, json_text, one_line, table
from .records import when
from .signals import Interrupted, run

__all__ = ["list_command", "stats_command", "DEFAULT_WATCH_INTERVAL"]

DEFAULT_WATCH_INTERVAL = 2.0
"""Seconds between two frames of ``stats --watch`` without a value."""

# The terminal's "cursor home, erase the screen": only written to a terminal.
_CLEAR = "\x1b[H\x1b[2J"
# Widest a workflow or state name is shown when stdout is not a terminal (or a wide one).
_NAME_WIDTH = 40
_MIN_NAME_WIDTH = 8


def _runtime(opened: asyncpg.Pool, schema: str | None) -> WorkflowRuntime:
    providers = pg_workflow_providers(opened, schema=schema)
    return WorkflowRuntime(
        definitions=DefinitionRegistry(), commands=CommandRegistry(), persistence=providers
    )


# --- list ------------------------------------------------------------------------------------


def _timeout(instance: WorkflowInstance, now: datetime) -> tuple[datetime | None, str]:
    """When a sweep takes the instance (``None``: never, as things are) and its timeout status
    in a word or two."""
    retry = instance.timeout_retry
    if retry is not None and retry.parked_at is not None:
        return None, f"parked after {retry.attempts}"
    if instance.claimed_until is not None:
        lapsed = instance.claimed_until <= now
        return instance.claimed_until, "claim lapsed: due" if lapsed else "claimed"
    if retry is not None:
        due = retry.retry_at is not None and retry.retry_at <= now
        return retry.retry_at, f"retry {retry.attempts}" + (": due" if due else "")
    if instance.expires_at is not None and instance.expires_at <= now:
        return instance.expires_at, "due"
    return instance.expires_at, ""


def _name_width() -> int:
    """How wide a workflow or state name may be for the table to fit the terminal."""
    if not sys.stdout.isatty():
        return _NAME_WIDTH
    columns = shutil.get_terminal_size().columns
    # uuid (36), version (7), deadline (19), timeout (~17) and five gaps of two.
    fixed = 36 + 7 + 19 + 17 + 10
    return max(_MIN_NAME_WIDTH, min(_NAME_WIDTH, (columns - fixed) // 2))


async def _list(db: Target, schema: str | None, args: argparse.Namespace) -> int:
    as_json: bool = args.json
    async with pool(db, max_size=1) as opened:
        page = await _runtime(opened, schema).list_instances(
            workflow_name=args.workflow,
            state=args.state,
            definition_version=args.version,
            status=cast(InstanceStatus | None, args.status),
            limit=args.limit,
            after=args.after,
        )
    if as_json:
        emit_json({"items": [i.to_json() for i in page.items], "nextCursor": page.next_cursor})
        return 0
    if not page.items:
        emit("no instances")
    else:
        now = datetime.now(UTC)
        width = _name_width()
        rows = []
        for instance in page.items:
            deadline, status = _timeout(instance, now)
            rows.append(
                [
                    str(instance.uuid),
                    one_line(instance.workflow_name, width),
                    one_line(instance.current_state, width),
                    str(instance.definition_version or "-"),
                    when(deadline)[:19],
                    status,
                ]
            )
        emit(table(["uuid", "workflow", "state", "version", "deadline", "timeout"], rows))
    if page.next_cursor is not None:
        emit(f"more: --after {page.next_cursor}")
    return 0


def list_command(args: argparse.Namespace) -> int:
    """``list``: one page of instances, filtered; the cursor of the next page if any."""
    limit: int = args.limit
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise CliError(f"--limit must be 1 to {MAX_PAGE_SIZE}, got {limit}", EXIT_USAGE)
    db = target_from(args)
    schema = schema_option(args.schema)
    return int(run(_list(db, schema, args)))


# --- stats -----------------------------------------------------------------------------------


def _late(oldest: datetime | None, now: datetime) -> str:
    """How long ago ``oldest`` fell due: ``3s``, ``4m 05s``, ``2h 01m``, ``3d 04h``."""
    if oldest is None:
        return ""
    total = max(0, int((now - oldest).total_seconds()))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _stats_json(found: list[StateStats]) -> list[dict[str, object]]:
    return [
        {
            "workflowName": s.workflow_name,
            "state": s.state,
            "instances": s.instances,
            "due": s.due,
            "retrying": s.retrying,
            "parked": s.parked,
            "claimed": s.claimed,
            "oldestDueAt": optional_utc_text(s.oldest_due_at, "StateStats.oldest_due_at"),
        }
        for s in found
    ]


def _stats_text(found: list[StateStats], now: datetime) -> str:
    if not found:
        return "no instances"
    rows = [
        [
            one_line(s.workflow_name, _NAME_WIDTH),
            one_line(s.state, _NAME_WIDTH),
            str(s.instances),
            str(s.due),
            str(s.retrying),
            str(s.parked),
            str(s.claimed),
            when(s.oldest_due_at)[:19],
            _late(s.oldest_due_at, now),
        ]
        for s in found
    ]
    headers = [
        "workflow",
        "state",
        "instances",
        "due",
        "retrying",
        "parked",
        "claimed",
        "oldest due",
        "late",
    ]
    return table(headers, rows)


async def _stats(
    db: Target, schema: str | None, workflow: str | None, watch: float | None, as_json: bool
) -> int:
    clear = watch is not None and not as_json and sys.stdout.isatty()
    async with pool(db, max_size=1) as opened:
        runtime = _runtime(opened, schema)
        while True:
            found = await runtime.stats(workflow_name=workflow)
            now = datetime.now(UTC)
            if as_json:
                if watch is None:
                    emit_json(_stats_json(found))
                else:
                    emit(json_text(_stats_json(found), indent=None), flush=True)
            elif watch is None:
                emit(_stats_text(found, now))
            else:
                header = f"{PROG} stats at {when(now)[:19]} UTC, every {watch:g} s (stop: Ctrl-C)"
                frame = f"{header}\n\n{_stats_text(found, now)}"
                emit(_CLEAR + frame if clear else frame + "\n", flush=True)
            if watch is None:
                return 0
            await asyncio.sleep(watch)


def _watch_interval(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise CliError(f"--watch must be a positive number of seconds, got {value!r}", EXIT_USAGE)
    return number


def stats_command(args: argparse.Namespace) -> int:
    """``stats``: counts per workflow and state; ``--watch`` redraws them until SIGINT or
    SIGTERM, which ends the watch with exit 0 (its normal end, as the worker's first signal)."""
    watch = _watch_interval(args.watch)
    db = target_from(args)
    schema = schema_option(args.schema)
    if watch is None:
        return int(run(_stats(db, schema, args.workflow, None, args.json)))
    try:
        return int(run(_stats(db, schema, args.workflow, watch, args.json)))
    except Interrupted:
        return 0
