"""Which definition rules an instance, and the stored snapshots that make that answer durable.

The rules kept: every registered version is stored once, and a version's content never changes
under the same number; an instance is ruled by the version it is pinned to (registered, or read
back from its snapshot) unless its workflow follows the latest; moving an instance to another
version stores that version's snapshot in the same transaction.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from duraflows_pg_async._core.model import StoredWorkflowDefinition, WorkflowInstance
from duraflows_pg_async._definitions.model import WorkflowDefinition
from duraflows_pg_async._definitions.validation import validate_definition
from duraflows_pg_async.errors import (
    IncompatibleDefinitionError,
    WorkflowDefinitionError,
    WorkflowError,
)

if TYPE_CHECKING:
    from .runtime import WorkflowRuntime

__all__ = ["active_instances", "check_executable", "ensure_snapshot", "governing"]

logger = logging.getLogger("duraflows_pg_async")


async def ensure_snapshot(runtime: WorkflowRuntime, definition: WorkflowDefinition) -> None:
    """Store ``definition``'s snapshot unless stored; WorkflowDefinitionError when the stored
    one of that version has another content hash (changed without a version bump)."""
    content_hash = definition.content_hash()
    stored = await runtime.persistence.definition_store.ensure(
        workflow_name=definition.name,
        version=definition.version,
        content_hash=content_hash,
        definition_json=definition.to_dict(),
    )
    if stored.content_hash == content_hash:
        return
    if runtime.allow_unbumped_edits:
        await _replace_snapshot(runtime, definition, stored, content_hash)
        return
    version = definition.version
    raise WorkflowDefinitionError(
        definition.name,
        f"Definition content changed but version {version} was not bumped "
        f"(stored {stored.content_hash}, registered {content_hash}). To deploy the change, "
        f"register it as version={version + 1} and keep version {version} registered while "
        f"instances use it (instances in flight keep the stored version). While developing, "
        "WorkflowRuntime(allow_unbumped_edits=True) replaces the stored snapshot instead, when "
        "no active instance is pinned to it.",
    )


async def _replace_snapshot(
    runtime: WorkflowRuntime,
    definition: WorkflowDefinition,
    stored: StoredWorkflowDefinition,
    content_hash: str,
) -> None:
    """Development only: overwrite the stored snapshot of ``definition``'s version, refused
    while an instance that the stored rules govern is active (not in one of its terminal
    states), since rewriting its rules under it would change what it may do next."""
    store = runtime.persistence.definition_store
    replace = getattr(store, "replace", None)
    if replace is None:
        raise WorkflowDefinitionError(
            definition.name,
            f"allow_unbumped_edits needs a definition store with replace(); "
            f"{type(store).__name__} has none",
        )
    try:
        old: WorkflowDefinition | None = WorkflowDefinition.from_dict(stored.definition_json)
    except WorkflowError:
        old = None
    active = await active_instances(runtime, definition.name, definition.version, old)
    if active:
        raise WorkflowDefinitionError(
            definition.name,
            f"Definition content changed but version {definition.version} was not bumped, and "
            f"allow_unbumped_edits cannot replace it: {active} active instance(s) are pinned to "
            f"version {definition.version}. Register the change as version="
            f"{definition.version + 1}, or finish or delete those instances first.",
        )
    await replace(
        workflow_name=definition.name,
        version=definition.version,
        content_hash=content_hash,
        definition_json=definition.to_dict(),
    )
    logger.warning(
        "duraflows: DEVELOPMENT ONLY: replaced the stored snapshot of workflow %r version %d "
        "(%s -> %s) without a version bump (allow_unbumped_edits=True); never use this in "
        "production",
        definition.name,
        definition.version,
        stored.content_hash,
        content_hash,
    )


async def active_instances(
    runtime: WorkflowRuntime, name: str, version: int, definition: WorkflowDefinition | None
) -> int:
    """The instances pinned to ``version`` of workflow ``name`` that are not in a terminal
    state of ``definition`` (the rules they run under); with None (rules that cannot be read),
    every instance of the version counts."""
    terminal = (
        []
        if definition is None
        else [state_name for state_name, state in definition.states.items() if state.is_terminal]
    )
    return await runtime.persistence.instance_store.count_instances(
        workflow_name=name, definition_version=version, exclude_states=terminal
    )


async def check_executable(runtime: WorkflowRuntime) -> None:
    """WorkflowDefinitionError naming every stored version whose active instances could not
    run: a snapshot that cannot be read, or commands and guards no longer registered."""
    problems: list[str] = []
    first: str | None = None
    for latest in runtime.definitions.latest():
        if latest.version_policy == "latest":
            continue
        for stored in await runtime.persistence.definition_store.list_versions(latest.name):
            definition = runtime.definitions.find(latest.name, stored.version)
            if definition is None:
                try:
                    definition = WorkflowDefinition.from_dict(stored.definition_json)
                except WorkflowError as exc:
                    problems.append(f"{latest.name} v{stored.version}: {exc}")
                    first = first or latest.name
                    continue
            active = await active_instances(runtime, latest.name, stored.version, definition)
            if not active:
                continue
            try:
                validate_definition(
                    definition,
                    command_names=runtime.commands.names(),
                    guard_names=runtime.guards.names() if runtime.guards is not None else (),
                )
            except WorkflowDefinitionError as exc:
                problems.append(
                    f"{latest.name} v{stored.version} has {active} active instance(s) that "
                    f"cannot run: {exc}"
                )
                first = first or latest.name
    if problems:
        raise WorkflowDefinitionError(first or "?", "\n".join(problems))


async def governing(
    runtime: WorkflowRuntime, instance: WorkflowInstance, *, stamp: bool = True
) -> WorkflowDefinition:
    """The definition that rules ``instance``: the version it is pinned to, or the latest.

    With ``stamp``, moving the instance to another version stores that version's snapshot in
    the current transaction, so the two commit together.
    """
    latest = runtime.definitions.get(instance.workflow_name)
    pinned = instance.definition_version
    if latest.version_policy == "latest" or pinned is None or pinned == latest.version:
        definition = latest
        if stamp and pinned != latest.version:
            await ensure_snapshot(runtime, latest)
    else:
        found = runtime.definitions.find(instance.workflow_name, pinned)
        if found is None:
            stored = await runtime.persistence.definition_store.find_by_name_and_version(
                instance.workflow_name, pinned
            )
            if stored is None:
                raise WorkflowDefinitionError(
                    instance.workflow_name,
                    f"instance {instance.uuid} is pinned to version {pinned}, which is neither "
                    "registered nor stored",
                )
            found = WorkflowDefinition.from_dict(stored.definition_json)
            validate_definition(found)
        definition = found
    if instance.current_state not in definition.states:
        raise IncompatibleDefinitionError(
            instance.workflow_name,
            f'instance {instance.uuid} is in state "{instance.current_state}", which version '
            f"{definition.version} does not define",
        )
    return definition
