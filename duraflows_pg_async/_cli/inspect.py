"""``inspect`` (one instance and its history), ``parked`` (exhausted timeouts) and ``rearm``."""

from __future__ import annotations

import argparse
import sys
from uuid import UUID

from duraflows_pg_async._core.validate import coerce_uuid
from duraflows_pg_async._definitions.registries import CommandRegistry, DefinitionRegistry
from duraflows_pg_async._pg.providers import pg_workflow_providers
from duraflows_pg_async._runtime.runtime import WorkflowRuntime
from duraflows_pg_async.errors import WorkflowInstanceBusyError

from .database import Target, pool, schema_option, target_from, workflow_providers
from .exits import EXIT_USAGE, CliError
from .output import PROG, confirm, emit, emit_json, one_line, safe_text, table
from .records import instance_text, retry_text, when
from .signals import run

__all__ = ["inspect_command", "parked_command", "rearm_command"]


def _limit(args: argparse.Namespace) -> int:
    limit: int = args.limit
    if limit < 1:
        raise CliError(f"--limit must be at least 1, got {limit}", EXIT_USAGE)
    return limit


async def _inspect(db: Target, key: UUID, limit: int, schema: str | None, as_json: bool) -> int:
    async with pool(db) as opened:
        # With migration 008 applied, the instance's queued execution (if any) is shown too.
        providers = await workflow_providers(opened, schema)
        instance = await providers.instance_store.find_by_uuid(key)
        if instance is None:
            raise CliError(f"no workflow instance {key}")
        history = await providers.history_store.find_by_instance_uuid(key, limit, 0)
        store = providers.execution_store
        active = None if store is None else await store.find_active(key)
    history.reverse()  # the store gives newest first; a table reads best oldest first
    if as_json:
        emit_json(
            {
                "instance": instance.to_json(),
                "history": [r.to_json() for r in history],
                "activeExecution": None if active is None else active.to_json(),
            }
        )
        return 0
    queued = None
    if store is not None:
        queued = (
            "none"
            if active is None
            else f"{active.uuid} ({active.status}, event {active.event_name}; "
            f"{PROG} execution show {active.uuid})"
        )
    emit(instance_text(instance, queued))
    emit()
    emit(f"history ({len(history)} rows, oldest first):")
    rows = []
    for record in history:
        detail = record.error_message or (
            f"rejected by {record.rejected_by}" if record.rejected_by else ""
        )
        codes = ",".join(r.code or ("ok" if r.ok else "failed") for r in record.command_results)
        rows.append(
            [
                when(record.created_at),
                record.event_name,
                f"{record.from_state or '∅'} -> {record.to_state}",
                record.outcome,
                codes,
                one_line(detail, 50),
            ]
        )
    emit(table(["at", "event", "transition", "outcome", "commands", "detail"], rows))
    return 0


async def _parked(
    db: Target, limit: int, workflow: str | None, schema: str | None, as_json: bool
) -> int:
    async with pool(db) as opened:
        providers = pg_workflow_providers(opened, schema=schema)
        found = await providers.instance_store.find_parked_timeouts(
            limit=limit, workflow_name=workflow
        )
    if as_json:
        emit_json([i.to_json() for i in found])
        return 0
    if not found:
        emit("no parked timeouts")
        return 0
    rows = [
        [
            str(i.uuid),
            i.workflow_name,
            i.current_state,
            str(i.timeout_retry.attempts if i.timeout_retry else 0),
            when(i.timeout_retry.parked_at if i.timeout_retry else None),
            one_line(i.timeout_retry.last_error if i.timeout_retry else None, 50),
        ]
        for i in found
    ]
    emit(table(["uuid", "workflow", "state", "attempts", "parked at", "last error"], rows))
    return 0


async def _rearm(db: Target, key: UUID, schema: str | None, as_json: bool) -> int:
    async with pool(db) as opened:
        providers = await workflow_providers(opened, schema)
        # rearm_timeout reads no definition, and with empty registries initialize() stores and
        # checks nothing: the rule of what a rearm clears stays in the runtime alone.
        runtime = WorkflowRuntime(
            definitions=DefinitionRegistry(), commands=CommandRegistry(), persistence=providers
        )
        # The lock taken here holds until COMMIT (the runtime's transaction is a savepoint inside
        # this one), so the state reported as "was" is the one the runtime cleared.
        async with providers.transaction_runner.transaction():
            before = await providers.instance_store.lock_by_uuid(key)
            if before is None:
                raise CliError(f"no workflow instance {key}")
            previous, previous_version = retry_text(before), before.version
            instance = await runtime.rearm_timeout(key)
    changed = instance.version != previous_version
    if as_json:
        emit_json({"rearmed": changed, "instance": instance.to_json()})
    elif changed:
        emit(
            safe_text(
                f"rearmed {key} (was: {previous}); state={instance.current_state} "
                f"version={instance.version} expires_at={when(instance.expires_at)}"
            )
        )
    else:
        emit(f"{key} has no timeout retry, parked state or sweep claim: nothing to rearm")
    return 0


def inspect_command(args: argparse.Namespace) -> int:
    """``inspect UUID``: the instance's fields and its newest ``--limit`` history rows."""
    key = coerce_uuid(args.uuid, "uuid")
    limit = _limit(args)
    db = target_from(args)
    schema = schema_option(args.schema)
    return int(run(_inspect(db, key, limit, schema, args.json)))


def parked_command(args: argparse.Namespace) -> int:
    """``parked``: instances whose timeout retries are exhausted."""
    limit = _limit(args)
    db = target_from(args)
    schema = schema_option(args.schema)
    return int(run(_parked(db, limit, args.workflow, schema, args.json)))


# How many parked instances one listing of ``rearm --all`` reads at a time.
_REARM_PAGE = 500


async def _parked_uuids(db: Target, workflow: str, schema: str | None) -> list[UUID]:
    async with pool(db) as opened:
        store = pg_workflow_providers(opened, schema=schema).instance_store
        found = await store.find_parked_timeouts(limit=_REARM_PAGE, workflow_name=workflow)
    return [instance.uuid for instance in found]


async def _rearm_all(db: Target, workflow: str, schema: str | None, as_json: bool) -> int:
    """Rearm the parked timeouts of ``workflow``, page by page, each in its own transaction;
    an instance that parks again meanwhile is not rearmed twice."""
    done: list[UUID] = []
    busy: list[UUID] = []
    seen: set[UUID] = set()
    async with pool(db) as opened:
        providers = await workflow_providers(opened, schema)
        runtime = WorkflowRuntime(
            definitions=DefinitionRegistry(), commands=CommandRegistry(), persistence=providers
        )
        while True:
            page = await providers.instance_store.find_parked_timeouts(
                limit=_REARM_PAGE, workflow_name=workflow
            )
            fresh = [instance.uuid for instance in page if instance.uuid not in seen]
            if not fresh:
                break
            for key in fresh:
                seen.add(key)
                try:
                    await runtime.rearm_timeout(key)
                except WorkflowInstanceBusyError:
                    busy.append(key)  # a queued execution holds it: left for after it
                else:
                    done.append(key)
    if as_json:
        emit_json(
            {
                "workflow": workflow,
                "rearmed": len(done),
                "uuids": [str(k) for k in done],
                "busy": [str(k) for k in busy],
            }
        )
    else:
        skipped = f"; {len(busy)} busy with a queued execution, left alone" if busy else ""
        emit(safe_text(f"rearmed {len(done)} parked timeout(s) of workflow {workflow!r}{skipped}"))
    return 0


def rearm_command(args: argparse.Namespace) -> int:
    """``rearm UUID``: clear a timeout retry, parked state or sweep claim. ``rearm --all
    --workflow NAME``: every parked timeout of the workflow, after a confirmation."""
    db = target_from(args)
    schema = schema_option(args.schema)
    if not args.all:
        if args.uuid is None or args.workflow is not None or args.yes:
            raise CliError(
                "give the instance's UUID, or --all --workflow NAME for every parked timeout "
                "of a workflow",
                EXIT_USAGE,
            )
        key = coerce_uuid(args.uuid, "uuid")
        return int(run(_rearm(db, key, schema, args.json)))
    if args.uuid is not None or not args.workflow:
        raise CliError("--all takes no UUID and needs --workflow NAME", EXIT_USAGE)
    workflow: str = args.workflow
    if not args.yes:
        first = run(_parked_uuids(db, workflow, schema))
        if not first:
            return int(run(_rearm_all(db, workflow, schema, args.json)))
        count = f"at least {len(first)}" if len(first) >= _REARM_PAGE else str(len(first))
        question = f"{PROG}: rearm {count} parked timeout(s) of workflow {workflow!r}?"
        if not sys.stdin.isatty():
            raise CliError(
                f"rearm --all would rearm {count} parked timeout(s) of workflow {workflow!r}: "
                "pass --yes to confirm (standard input is not a terminal)",
                EXIT_USAGE,
            )
        if not confirm(safe_text(question)):
            raise CliError("not confirmed: nothing rearmed")
    return int(run(_rearm_all(db, workflow, schema, args.json)))
