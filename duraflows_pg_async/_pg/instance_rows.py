"""Instance rows as the model's records: what ``workflow_instances`` holds, checked as read.

A row is read by column name; a JSON column that does not hold a JSON object makes the row
unreadable (``UnreadableRowError``), never a half-built instance.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from duraflows_pg_async._core.model import TimeoutRetry, WorkflowInstance
from duraflows_pg_async.errors import UnreadableRowError, WorkflowError

from .codecs import decoded
from .json_numbers import UnreadableJsonError

__all__ = ["CONTEXT_COLUMN", "METADATA_COLUMN", "instance_from_row", "is_decode_error"]


def instance_from_row(row: asyncpg.Record) -> WorkflowInstance:
    # By column name: the SELECT list (queries.INSTANCE_COLUMNS) may change order freely.
    key = row["uuid"]
    attempts = row["timeout_attempts"]
    retry_at = row["timeout_retry_at"]
    return WorkflowInstance(
        uuid=key,
        workflow_name=row["workflow_name"],
        current_state=row["current_state"],
        version=row["version"],
        expires_at=row["expires_at"],
        last_transition_at=row["last_transition_at"],
        context=_json_object(row["context_json"], key, CONTEXT_COLUMN),
        metadata=_json_object(row["metadata_json"], key, METADATA_COLUMN),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        definition_version=row["definition_version"],
        timeout_retry=(
            TimeoutRetry(
                attempts=attempts,
                last_error=row["timeout_last_error"] or "",
                retry_at=retry_at,
                parked_at=row["timeout_parked_at"],
            )
            if attempts
            else None
        ),
        # Without retry state, timeout_retry_at is a sweep's claim (see claim_expired).
        claimed_until=None if attempts else retry_at,
    )


CONTEXT_COLUMN = "workflow_instances.context_json"
METADATA_COLUMN = "workflow_instances.metadata_json"


def _json_object(value: object, instance_uuid: UUID, column: str) -> dict[str, Any]:
    if type(value) is dict:
        return value
    if isinstance(value, str) and value.startswith("{"):
        decoded(value, column)  # an object's text: the connection has no JSON codecs
    kind = "a JSON string" if isinstance(value, str) else f"JSON {_json_kind(value)}"
    raise UnreadableRowError(instance_uuid, column, f"holds {kind}, not a JSON object")


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return f"of Python type {type(value).__name__}"


def is_decode_error(exc: BaseException) -> bool:
    """Whether ``exc``, raised while asyncpg read rows, came from the JSON decoder.

    The server sent the rows, so such an error leaves the connection and transaction usable.
    A decoder of the user's own may raise anything; ours raises UnreadableJsonError.
    """
    if isinstance(exc, UnreadableJsonError):
        return True
    return not isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | WorkflowError)
