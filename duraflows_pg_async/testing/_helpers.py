"""Steps and checks the conformance suites share."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from uuid import UUID

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.model import WorkflowInstance

# A fixed application clock for the due-timeout tests: "now" is passed to find_expired, so the
# database's own clock never matters.
NOW = datetime(2025, 12, 1, 12, 0, tzinfo=UTC)
MALFORMED_UUIDS = ("not-a-uuid", "1234", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz", "")


class Rollback(Exception):
    """Raised by a test body to roll its transaction back."""


def copy_instance(instance: WorkflowInstance) -> WorkflowInstance:
    """An independent copy (the stores must not share mutable state with the caller)."""
    return dataclasses.replace(
        instance, context=dict(instance.context), metadata=dict(instance.metadata)
    )


async def create_committed(
    provider: WorkflowPersistenceProvider, *instances: WorkflowInstance
) -> None:
    """Create the instances in one committed transaction."""
    async with provider.transaction_runner.transaction():
        for instance in instances:
            await provider.instance_store.create(instance)


async def update_locked(provider: WorkflowPersistenceProvider, instance: WorkflowInstance) -> None:
    """Lock the row, then update it, in one committed transaction (the runtime's pattern)."""
    async with provider.transaction_runner.transaction():
        locked = await provider.instance_store.lock_by_uuid(instance.uuid)
        assert locked is not None, f"lock_by_uuid({instance.uuid}) found no row"
        await provider.instance_store.update(instance)


async def find_stored(
    provider: WorkflowPersistenceProvider, instance_uuid: UUID
) -> WorkflowInstance:
    """The stored instance, which must exist."""
    found = await provider.instance_store.find_by_uuid(instance_uuid)
    assert found is not None, f"instance {instance_uuid} was not found"
    return found


def assert_same_fields(found: WorkflowInstance, expected: WorkflowInstance) -> None:
    """Every field equal, the first that differs named (a column read into another's field)."""
    for field in dataclasses.fields(WorkflowInstance):
        got, wanted = getattr(found, field.name), getattr(expected, field.name)
        assert got == wanted, f"{field.name}: wrote {wanted!r}, read back {got!r}"


def assert_aware(value: object, what: str) -> None:
    """``value`` is a timezone-aware datetime."""
    assert isinstance(value, datetime), f"{what} should be a datetime, got {value!r}"
    assert value.tzinfo is not None, f"{what} should be timezone-aware, got {value!r}"
    assert value.utcoffset() is not None, f"{what} should be timezone-aware, got {value!r}"


def uuids_of(instances: list[WorkflowInstance]) -> list[UUID]:
    return [instance.uuid for instance in instances]
