"""``inspect`` (one instance and its history), ``parked`` (exhausted timeouts) and ``rearm``."""

from __future__ import annotations

import argparse
from uuid import UUID

from duraflows_pg_async._core.validate import coerce_uuid
from duraflows_pg_async._definitions.registries import CommandRegistry, DefinitionRegistry
from duraflows_pg_async._pg.providers import pg_workflow_providers
from duraflows_pg_async._runtime.runtime import WorkflowRuntime

from .database import Target, pool, schema_option, target_from
from .exits import EXIT_USAGE, CliError
from .output import emit, emit_json, one_line, safe_text, table
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
        providers = pg_workflow_providers(opened, schema=schema)
        instance = await providers.instance_store.find_by_uuid(key)
        if instance is None:
            raise CliError(f"no workflow instance {key}")
        history = await providers.history_store.find_by_instance_uuid(key, limit, 0)
    history.reverse()  # the store gives newest first; a table reads best oldest first
    if as_json:
        emit_json({"instance": instance.to_json(), "history": [r.to_json() for r in history]})
        return 0
    emit(instance_text(instance))
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
        providers = pg_workflow_providers(opened, schema=schema)
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


def rearm_command(args: argparse.Namespace) -> int:
    """``rearm UUID``: clear a timeout retry, parked state or sweep claim."""
    key = coerce_uuid(args.uuid, "uuid")
    db = target_from(args)
    schema = schema_option(args.schema)
    return int(run(_rearm(db, key, schema, args.json)))
