"""``execution show|list|retry|cancel``: queued executions (``enqueue_event``), no APP needed.

``show`` and ``list`` only read ``workflow_executions``; ``retry`` and ``cancel`` go through a
runtime with empty registries over a provider with an execution store, so the rules of what
they may change stay in the runtime alone (as ``rearm`` does).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from uuid import UUID

from duraflows_pg_async._core.executions import WorkflowExecution
from duraflows_pg_async._core.validate import coerce_uuid
from duraflows_pg_async._definitions.registries import CommandRegistry, DefinitionRegistry
from duraflows_pg_async._pg.codecs import decoded
from duraflows_pg_async._pg.providers import pg_workflow_providers
from duraflows_pg_async._pg.queries import list_active_executions
from duraflows_pg_async._runtime.durable_plan import NextCommand, plan_execution
from duraflows_pg_async._runtime.runtime import WorkflowRuntime
from duraflows_pg_async.errors import InvalidArgumentError

from .database import Target, pool, schema_option, target_from
from .exits import EXIT_USAGE, CliError
from .output import emit, emit_json, json_text, one_line, safe_text, table
from .records import when
from .signals import run

__all__ = ["execution_command"]

ACTIVE = ("pending", "running", "parked")


def _not_found(key: UUID) -> CliError:
    return CliError(f"no queued execution {key}")


def _lease_text(execution: WorkflowExecution) -> str:
    if execution.lease_until is None:
        return "none"
    if execution.lease_until <= datetime.now(UTC):
        # The worker that held it stopped or hung: any worker takes it again (a new attempt).
        return f"held until {when(execution.lease_until)} (lapsed: due again)"
    return f"held by a worker until {when(execution.lease_until)}"


def _next_command(execution: WorkflowExecution) -> str:
    """The command a worker runs next, from the journal (replayed, nothing run)."""
    if not execution.is_active:
        return "-"
    try:
        plan_execution(execution)
    except NextCommand as pending:
        return f"{pending.ref.name} (#{pending.command_id})"
    except Exception:  # a recorded outcome that parked it: last error says which
        return "-"
    return "none: every command finished"


def _result_text(execution: WorkflowExecution) -> str:
    result = execution.result
    if result is None:
        return "-"
    if result.rejected_by is not None:
        return f"guard-rejected by {result.rejected_by} (stays in {result.from_state})"
    return (
        f"{result.outcome}: {result.from_state} -> {result.to_state} "
        f"(history row {result.history_uuid})"
    )


def execution_text(execution: WorkflowExecution) -> str:
    """An execution as aligned ``name  value`` lines and its journal as a table, escaped."""
    attempts = f"{execution.attempts} (parks at {execution.policy.max_attempts})"
    fields = [
        ("uuid", str(execution.uuid)),
        ("instance", str(execution.workflow_instance_uuid)),
        ("workflow", execution.workflow_name),
        ("event", execution.event_name),
        ("idempotency key", execution.idempotency_key),
        ("status", execution.status),
        ("attempts", attempts),
        ("last error", one_line(execution.last_error, 200) or "-"),
        ("available at", when(execution.available_at)),
        ("lease", _lease_text(execution)),
        ("from state", execution.from_state),
        ("next command", _next_command(execution)),
        ("result", _result_text(execution)),
        ("created at", when(execution.created_at)),
        ("updated at", when(execution.updated_at)),
        ("subject", json_text(execution.subject, indent=None) if execution.has_subject else "-"),
        ("trigger metadata", json_text(execution.trigger_metadata, indent=None)),
    ]
    width = max(len(name) for name, _ in fields)
    lines = [f"{name.ljust(width)}  {safe_text(value)}" for name, value in fields]
    lines += ["", f"journal ({len(execution.journal)} finished, in order):"]
    rows = [
        [
            checkpoint.id,
            checkpoint.name,
            checkpoint.result.code or ("ok" if checkpoint.result.ok else "failed"),
            str(checkpoint.attempts),
            when(checkpoint.completed_at),
            one_line(checkpoint.result.message, 40),
            one_line(json_text(checkpoint.context, indent=None), 40),
        ]
        for checkpoint in execution.journal
    ]
    headers = ["#", "command", "result", "attempts", "completed at", "message", "context after"]
    lines.append(table(headers, rows))
    return "\n".join(lines)


async def _show(db: Target, key: UUID, schema: str | None, as_json: bool) -> int:
    async with pool(db) as opened:
        providers = pg_workflow_providers(opened, schema=schema, durable_execution=True)
        assert providers.execution_store is not None
        execution = await providers.execution_store.find_by_uuid(key)
    if execution is None:
        raise _not_found(key)
    if as_json:
        emit_json(execution.to_json())
    else:
        emit(execution_text(execution))
    return 0


async def _list(
    db: Target,
    statuses: list[str],
    workflow: str | None,
    limit: int,
    schema: str | None,
    as_json: bool,
) -> int:
    async with pool(db) as opened:
        rows = await opened.fetch(list_active_executions(schema), statuses, workflow, limit)
    found = [_read(row["uuid"], row["execution_json"]) for row in rows]
    if as_json:
        emit_json([e.to_json() for e in found])
        return 0
    if not found:
        emit(f"no {' or '.join(statuses)} executions")
        return 0
    out = [
        [
            str(e.uuid),
            str(e.workflow_instance_uuid),
            e.workflow_name,
            e.event_name,
            e.status + (" (lease lapsed)" if _lapsed(e) else ""),
            f"{len(e.journal)}",
            str(e.attempts),
            when(e.available_at),
            one_line(e.last_error, 50),
        ]
        for e in found
    ]
    headers = [
        "uuid",
        "instance",
        "workflow",
        "event",
        "status",
        "finished",
        "attempts",
        "available at",
        "last error",
    ]
    emit(table(headers, out))
    return 0


def _read(key: UUID, data: object) -> WorkflowExecution:
    try:
        return WorkflowExecution.from_json(decoded(data, "workflow_executions.execution_json"))
    except InvalidArgumentError as exc:
        raise CliError(f"execution {key}: unreadable execution_json: {exc}") from exc


def _lapsed(execution: WorkflowExecution) -> bool:
    return (
        execution.status == "running"
        and execution.lease_until is not None
        and execution.lease_until <= datetime.now(UTC)
    )


async def _control(db: Target, key: UUID, action: str, schema: str | None, as_json: bool) -> int:
    async with pool(db) as opened:
        providers = pg_workflow_providers(opened, schema=schema, durable_execution=True)
        assert providers.execution_store is not None
        before = await providers.execution_store.find_by_uuid(key)
        if before is None:
            raise _not_found(key)
        # The runtime reads no definition here, and initialize() is not called.
        runtime = WorkflowRuntime(
            definitions=DefinitionRegistry(), commands=CommandRegistry(), persistence=providers
        )
        if action == "retry":
            execution = await runtime.retry_execution(key)
        else:
            execution = await runtime.cancel_execution(key)
    if as_json:
        emit_json({"was": before.status, "execution": execution.to_json()})
    elif action == "retry":
        emit(
            safe_text(
                f"retried {key} (was: parked after {before.attempts} attempts: "
                f"{one_line(before.last_error, 100) or '-'}); pending again, "
                f"{len(execution.journal)} finished commands kept"
            )
        )
    else:
        emit(
            f"cancelled {key} (was: {before.status}); instance "
            f"{execution.workflow_instance_uuid} is free again, in the state it was in; its "
            f"{len(execution.journal)} finished command(s) are not undone"
        )
    return 0


def _limit(args: argparse.Namespace) -> int:
    limit: int = args.limit
    if limit < 1:
        raise CliError(f"--limit must be at least 1, got {limit}", EXIT_USAGE)
    return limit


def execution_command(args: argparse.Namespace) -> int:
    """``execution show|list|retry|cancel``."""
    action: str = args.action
    schema = schema_option(args.schema)
    if action == "list":
        limit = _limit(args)
        statuses = list(dict.fromkeys(args.status or ACTIVE))
        db = target_from(args)
        return int(run(_list(db, statuses, args.workflow, limit, schema, args.json)))
    key = coerce_uuid(args.uuid, "uuid")
    db = target_from(args)
    if action == "show":
        return int(run(_show(db, key, schema, args.json)))
    return int(run(_control(db, key, action, schema, args.json)))
