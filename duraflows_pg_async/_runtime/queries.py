"""What runs, read with no lock and no transaction: ``WorkflowRuntime.get_instance``,
``get_history``, ``get_available_events``, ``list_instances`` (keyset pages, opaque cursors),
``stats`` and ``find_parked_timeouts``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from duraflows_pg_async._core.model import HistoryRecord, StateStats, WorkflowInstance
from duraflows_pg_async._core.store_checks import checked_instance_query
from duraflows_pg_async._core.validate import coerce_uuid, require_int, require_str
from duraflows_pg_async.errors import InvalidArgumentError, WorkflowInstanceNotFoundError

from .execution import AvailableEvent, freeze
from .instance_updates import utc_now

if TYPE_CHECKING:
    from .runtime import WorkflowRuntime

__all__ = [
    "MAX_PAGE_SIZE",
    "InstancePage",
    "get_instance",
    "get_history",
    "get_available_events",
    "list_instances",
    "stats",
    "find_parked_timeouts",
]

MAX_PAGE_SIZE = 1000
"""The largest ``limit`` of ``list_instances``."""

_CURSOR_VERSION = 1
# A cursor is base64url (unpadded) of a JSON array; anything longer is not one of ours.
_MAX_CURSOR_LENGTH = 2000


@dataclass(frozen=True, slots=True)
class InstancePage:
    """One page of [`list_instances()`][duraflows_pg_async.WorkflowRuntime.list_instances]."""

    items: list[WorkflowInstance]
    """The instances of this page, in ascending uuid order."""
    next_cursor: str | None
    """Pass it as ``after`` (with the same filters) for the next page; ``None``: this page is
    the last."""


async def get_instance(
    runtime: WorkflowRuntime, instance_uuid: UUID | str
) -> WorkflowInstance | None:
    return await runtime.persistence.instance_store.find_by_uuid(
        coerce_uuid(instance_uuid, "instance_uuid")
    )


async def get_history(
    runtime: WorkflowRuntime, instance_uuid: UUID | str, *, limit: int, offset: int
) -> list[HistoryRecord]:
    key = coerce_uuid(instance_uuid, "instance_uuid")
    require_int(limit, "limit", minimum=1)
    require_int(offset, "offset", minimum=0)
    return await runtime.persistence.history_store.find_by_instance_uuid(key, limit, offset)


async def get_available_events(
    runtime: WorkflowRuntime, instance_uuid: UUID | str
) -> list[AvailableEvent]:
    key = coerce_uuid(instance_uuid, "instance_uuid")
    instance = await runtime.persistence.instance_store.find_by_uuid(key)
    if instance is None:
        raise WorkflowInstanceNotFoundError(key)
    definition = await runtime._governing(instance, stamp=False)
    return [
        AvailableEvent(
            event_name=name,
            target_state=event.target_state,
            error_state=event.error_state,
            has_commands=bool(event.commands),
            has_timeout=event.timeout is not None,
            metadata=freeze(event.metadata),
        )
        for name, event in definition.states[instance.current_state].events.items()
    ]


async def list_instances(
    runtime: WorkflowRuntime,
    *,
    workflow_name: str | None,
    state: str | None,
    definition_version: int | None,
    status: str | None,
    limit: int,
    after: str | None,
) -> InstancePage:
    checked_instance_query(workflow_name, state, definition_version, status)
    require_int(limit, "limit", minimum=1, maximum=MAX_PAGE_SIZE)
    filters = [workflow_name, state, definition_version, status]
    after_uuid = None if after is None else _read_cursor(after, filters)
    # One row more than the page tells whether another page follows.
    found = await runtime.persistence.instance_store.list_instances(
        limit=limit + 1,
        now=utc_now(runtime.clock),
        workflow_name=workflow_name,
        state=state,
        definition_version=definition_version,
        status=status,
        after_uuid=after_uuid,
    )
    items = found[:limit]
    more = len(found) > limit
    return InstancePage(items=items, next_cursor=_cursor(filters, items[-1].uuid) if more else None)


async def stats(runtime: WorkflowRuntime, *, workflow_name: str | None) -> list[StateStats]:
    if workflow_name is not None:
        require_str(workflow_name, "workflow_name")
    return await runtime.persistence.instance_store.stats(
        now=utc_now(runtime.clock), workflow_name=workflow_name
    )


async def find_parked_timeouts(
    runtime: WorkflowRuntime, *, limit: int, workflow_name: str | None
) -> list[WorkflowInstance]:
    require_int(limit, "limit", minimum=1)
    return await runtime.persistence.instance_store.find_parked_timeouts(
        limit=limit, workflow_name=workflow_name
    )


def _checksum(body: list[Any]) -> str:
    """Detects a cursor edited by hand or cut short; not a signature (anyone can recompute it):
    a cursor only says where a listing the caller may make anyway goes on."""
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cursor(filters: list[Any], last: UUID) -> str:
    body = [_CURSOR_VERSION, filters, str(last)]
    text = json.dumps([*body, _checksum(body)], separators=(",", ":"), ensure_ascii=True)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _read_cursor(cursor: object, filters: list[Any], listing: str = "list_instances") -> UUID:
    """The last uuid of the page before; InvalidArgumentError for anything that is not a cursor
    of this listing (another filter, edited, truncated, not a cursor at all)."""
    if not isinstance(cursor, str):
        raise InvalidArgumentError(
            f"after must be a cursor (str) or None, got {type(cursor).__name__}"
        )
    if not cursor or len(cursor) > _MAX_CURSOR_LENGTH:
        raise InvalidArgumentError(f"after is not a cursor of {listing}")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = json.loads(text)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgumentError(f"after is not a cursor of {listing}") from exc
    if not (
        isinstance(decoded, list)
        and len(decoded) == 4
        and decoded[0] == _CURSOR_VERSION
        and isinstance(decoded[2], str)
        and isinstance(decoded[3], str)
        and decoded[3] == _checksum(decoded[:3])
    ):
        raise InvalidArgumentError(f"after is not a cursor of {listing} (or was altered)")
    if decoded[1] != filters:
        raise InvalidArgumentError(
            "after is a cursor of a listing with other filters: pass the filters it was made with"
        )
    try:
        return UUID(decoded[2])
    except ValueError as exc:
        raise InvalidArgumentError(f"after is not a cursor of {listing}") from exc
