"""Event idempotency's stored receipt and the rule every key and fingerprint keeps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from duraflows_pg_async._core.echo import echo
from duraflows_pg_async._core.validate import check_json, coerce_uuid, require_str
from duraflows_pg_async.errors import InvalidArgumentError

__all__ = [
    "MAX_KEY_BYTES",
    "IdempotencyRecord",
    "checked_receipt_key",
    "checked_reservation",
    "checked_result",
    "require_idempotency_text",
]

# The bound of the table's CHECK (octet_length between 1 and 256), shared with upstream.
MAX_KEY_BYTES = 256


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """One receipt of ``workflow_event_idempotency``: a key reserved for an event on an instance.

    ``result`` is the recorded ``ExecutionResult`` in upstream's JSON shape (camelCase keys), or
    ``None`` while the transaction that reserved the key has not finished.
    """

    workflow_instance_uuid: UUID
    key: str
    event_name: str
    fingerprint: str | None
    result: dict[str, Any] | None
    created_at: datetime


def require_idempotency_text(value: object, name: str) -> str:
    """A key or fingerprint: a non-blank str of at most 256 UTF-8 bytes, no NUL, valid Unicode.

    Compared exactly (case, spaces and Unicode normalisation count), so it is kept as given.
    """
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{name} must be a string, got {echo(value)}")
    text = str.__str__(value)
    if not text.strip():
        raise InvalidArgumentError(f"{name} must not be blank, got {echo(text)}")
    require_str(text, name)
    size = len(text.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        raise InvalidArgumentError(
            f"{name} must be at most {MAX_KEY_BYTES} bytes in UTF-8, got {size} bytes: {echo(text)}"
        )
    return text


def checked_receipt_key(instance_uuid: object, key: object) -> tuple[UUID, str]:
    """The arguments every idempotency store method starts with, checked before any SQL."""
    return coerce_uuid(instance_uuid, "instance_uuid"), require_idempotency_text(key, "key")


def checked_reservation(
    instance_uuid: object, key: object, event_name: object, fingerprint: object
) -> tuple[UUID, str, str, str | None]:
    """``reserve``'s arguments, checked before any SQL."""
    uuid, text = checked_receipt_key(instance_uuid, key)
    name = require_str(event_name, "event_name")
    return (
        uuid,
        text,
        str.__str__(name),
        None if fingerprint is None else require_idempotency_text(fingerprint, "fingerprint"),
    )


def checked_result(result: object) -> dict[str, Any]:
    """``complete``'s result: a JSON object (upstream's ``ExecutionResult`` shape)."""
    if not isinstance(result, Mapping):
        raise InvalidArgumentError(
            f"result must be a dict (a JSON object), got {type(result).__name__}"
        )
    out = dict(result)
    check_json(out, "result")
    return out
