"""Keyed events: replay a committed result, or reserve the key and record the result.

The rules kept: the receipt is read under the instance's row lock, before the definition or the
event is looked at, so a request that once committed replays whatever the instance became since;
the reservation, the transition and the result commit or roll back together.
"""

from __future__ import annotations

import json
from uuid import UUID

from duraflows_pg_async._core.contract import WorkflowIdempotencyStore, WorkflowPersistenceProvider
from duraflows_pg_async._core.idempotency import require_idempotency_text
from duraflows_pg_async.errors import (
    IdempotencyConflictError,
    IdempotencyInProgressError,
    IdempotencyNotSupportedError,
    InvalidArgumentError,
    WorkflowError,
)

from .execution import ExecutionResult

__all__ = ["EventKey", "checked_event_key"]


class EventKey:
    """The idempotency key and fingerprint of one keyed ``trigger_event`` call."""

    __slots__ = ("fingerprint", "key", "store")

    def __init__(self, store: WorkflowIdempotencyStore, key: str, fingerprint: str | None) -> None:
        self.store = store
        self.key = key
        self.fingerprint = fingerprint

    async def replay_or_reserve(
        self, instance_uuid: UUID, event_name: str
    ) -> ExecutionResult | None:
        """The recorded result of this key on the instance, or None after reserving the key.

        Raises IdempotencyConflictError when the key was used for another event or with another
        fingerprint, and IdempotencyInProgressError when a call of this transaction holds it.
        """
        record = await self.store.find(instance_uuid, self.key)
        if record is None:
            await self.store.reserve(
                instance_uuid, self.key, event_name=event_name, fingerprint=self.fingerprint
            )
            return None
        if record.event_name != event_name:
            raise IdempotencyConflictError(
                instance_uuid, self.key, event_name, record.event_name, "(another event)"
            )
        if record.fingerprint != self.fingerprint:
            why = (
                "without a fingerprint"
                if record.fingerprint is None
                else "with another fingerprint"
                if self.fingerprint is not None
                else "with a fingerprint"
            )
            raise IdempotencyConflictError(
                instance_uuid, self.key, event_name, record.event_name, why
            )
        if record.result is None:
            raise IdempotencyInProgressError(instance_uuid, self.key)
        try:
            return ExecutionResult.from_json(record.result)
        except InvalidArgumentError as exc:
            raise WorkflowError(
                f"the recorded result of idempotency key {self.key!r} of workflow instance "
                f"{instance_uuid} cannot be read: {exc}"
            ) from exc

    async def record(self, instance_uuid: UUID, result: ExecutionResult) -> ExecutionResult:
        """Store ``result`` on the reservation; return it as a replay will (a JSON snapshot)."""
        snapshot = result.to_json()
        try:
            # The receipt holds JSON; what a replay returns, the first call returns too.
            snapshot = json.loads(json.dumps(snapshot, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise WorkflowError("Idempotent event result must be JSON-serializable") from exc
        await self.store.complete(instance_uuid, self.key, snapshot)
        return ExecutionResult.from_json(snapshot)


def checked_event_key(
    persistence: WorkflowPersistenceProvider, key: object, fingerprint: object
) -> EventKey | None:
    """The checked key of a ``trigger_event`` call, or None for an unkeyed call.

    Checked before any SQL: InvalidArgumentError for a bad key or fingerprint (or a fingerprint
    without a key), IdempotencyNotSupportedError when the provider has no idempotency store.
    """
    if key is None:
        if fingerprint is not None:
            raise InvalidArgumentError("idempotency_fingerprint needs an idempotency_key")
        return None
    text = require_idempotency_text(key, "idempotency_key")
    print_ = (
        None
        if fingerprint is None
        else require_idempotency_text(fingerprint, "idempotency_fingerprint")
    )
    store = persistence.idempotency_store
    if store is None:
        raise IdempotencyNotSupportedError()
    return EventKey(store, text, print_)
