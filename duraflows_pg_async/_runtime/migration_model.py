"""What ``migrate_instances`` takes and returns, and the check of its arguments."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from duraflows_pg_async._core.echo import echo
from duraflows_pg_async._core.model import WorkflowInstance
from duraflows_pg_async._core.validate import (
    INT4_MAX,
    coerce_uuid,
    require_bool,
    require_int,
    require_str,
)
from duraflows_pg_async.errors import InvalidArgumentError

__all__ = [
    "ContextTransform",
    "DefinitionVersionInfo",
    "MigratedInstance",
    "MigrationFailure",
    "MigrationRequest",
    "MigrationResult",
    "SkippedInstance",
    "checked_migration",
]

ContextTransform = Callable[
    [dict[str, Any], WorkflowInstance], Mapping[str, Any] | Awaitable[Mapping[str, Any]]
]
"""``fn(context, instance)``, sync or async: the context an instance takes to its new version.

``context`` is a copy of the instance's context, ``instance`` a copy of the instance as locked;
changing either changes nothing. Must return a dict of JSON values.
"""


@dataclass(frozen=True, slots=True)
class DefinitionVersionInfo:
    """A version of a workflow in the definition store, and its instances still running."""

    version: int
    content_hash: str
    registered_at: datetime
    active_instances: int
    """Instances stamped with this version that are not in one of its terminal states."""


@dataclass(frozen=True, slots=True)
class MigratedInstance:
    """An instance moved to the target version (in a dry run: that would be moved)."""

    uuid: UUID
    from_state: str
    to_state: str


@dataclass(frozen=True, slots=True)
class SkippedInstance:
    """A candidate left as it is, and why (for example ``on version 2, not 1``)."""

    uuid: UUID
    reason: str


@dataclass(frozen=True, slots=True)
class MigrationFailure:
    """A candidate whose move raised: its transaction was rolled back, nothing of it written."""

    uuid: UUID
    error: str


@dataclass(frozen=True, slots=True)
class MigrationResult:
    """What one ``migrate_instances`` call did, candidate by candidate.

    ``next_cursor`` is set when listing stopped at ``limit``: pass it as ``cursor`` to go on.
    ``warnings`` name the commands and guards the target version uses that this runtime has not
    registered (the instances are moved all the same).
    """

    dry_run: bool
    migrated: list[MigratedInstance] = field(default_factory=list)
    skipped: list[SkippedInstance] = field(default_factory=list)
    failed: list[MigrationFailure] = field(default_factory=list)
    next_cursor: UUID | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MigrationRequest:
    """The checked arguments of one ``migrate_instances`` call."""

    workflow_name: str
    from_version: int
    to_version: int
    state_mapping: dict[str, str]
    transform_context: ContextTransform | None
    instance_uuids: list[UUID] | None
    states: list[str] | None
    exclude_states: list[str] | None
    limit: int | None
    cursor: UUID | None
    dry_run: bool


def _state_names(value: object, name: str, *, non_empty: bool) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidArgumentError(f"{name} must be a collection of state names, got {echo(value)}")
    names = [require_str(state, f"{name}[]") for state in value]
    if non_empty and not names:
        raise InvalidArgumentError(f"{name} must not be empty (None selects every state)")
    return names


def checked_migration(
    workflow_name: object,
    *,
    from_version: object,
    to_version: object,
    state_mapping: object,
    transform_context: object,
    instance_uuids: object,
    states: object,
    exclude_states: object,
    limit: object,
    cursor: object,
    dry_run: object,
) -> MigrationRequest:
    """Check every argument of ``migrate_instances`` (InvalidArgumentError) before anything runs."""
    name = require_str(workflow_name, "workflow_name")
    source = require_int(from_version, "from_version", minimum=1, maximum=INT4_MAX)
    target = require_int(to_version, "to_version", minimum=1, maximum=INT4_MAX)
    if source == target:
        raise InvalidArgumentError(f"from_version and to_version must differ, both are {source}")
    mapping: dict[str, str] = {}
    if state_mapping is not None:
        if not isinstance(state_mapping, Mapping):
            raise InvalidArgumentError(
                f"state_mapping must be a dict of state names, got {echo(state_mapping)}"
            )
        for key, value in state_mapping.items():
            mapping[require_str(key, "state_mapping key")] = require_str(
                value, f"state_mapping[{echo(key)}]"
            )
    if transform_context is not None and not callable(transform_context):
        raise InvalidArgumentError(
            f"transform_context must be callable or None, got {echo(transform_context)}"
        )
    uuids: list[UUID] | None = None
    if instance_uuids is not None:
        if isinstance(instance_uuids, str | bytes | UUID) or not isinstance(
            instance_uuids, Iterable
        ):
            raise InvalidArgumentError(
                f"instance_uuids must be a collection of UUIDs, got {echo(instance_uuids)}"
            )
        # Each candidate once, in the order given.
        uuids = list(dict.fromkeys(coerce_uuid(u, "instance_uuids[]") for u in instance_uuids))
    after = None if cursor is None else coerce_uuid(cursor, "cursor")
    if after is not None and uuids is not None:
        raise InvalidArgumentError("cursor cannot be combined with instance_uuids")
    return MigrationRequest(
        workflow_name=name,
        from_version=source,
        to_version=target,
        state_mapping=mapping,
        transform_context=transform_context,
        instance_uuids=uuids,
        states=_state_names(states, "states", non_empty=True),
        exclude_states=_state_names(exclude_states, "exclude_states", non_empty=False),
        limit=None if limit is None else require_int(limit, "limit", minimum=1),
        cursor=after,
        dry_run=require_bool(dry_run, "dry_run"),
    )
