"""Conformance data of the execution store's suite: ``make_execution()``, a full execution to
store; ``assert_same_execution()``, that one read back whole; the steps the checks share to
write executions and read them back."""

from __future__ import annotations

import copy
import dataclasses
from datetime import timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

from duraflows_pg_async._core.contract import WorkflowExecutionStore, WorkflowPersistenceProvider
from duraflows_pg_async._core.executions import (
    CommandCheckpoint,
    DurableExecutionPolicy,
    WorkflowExecution,
)
from duraflows_pg_async._core.model import CommandResult, WorkflowInstance

from ._helpers import NOW, assert_aware, create_committed
from .data import make_instance

__all__ = ["assert_same_execution", "make_execution"]

_TIMES = ("available_at", "lease_until", "created_at", "updated_at")
# Two hours ahead of UTC: a store must read every time back as the same instant, in UTC.
_PLUS_TWO = timezone(timedelta(hours=2))


def make_execution(instance: WorkflowInstance, **overrides: Any) -> WorkflowExecution:
    """A pending execution of ``instance`` with every optional part set (fingerprint, subject,
    a journal of one checkpoint, a non-default policy); keyword arguments override any field.

    Its times all differ and carry microseconds, so that a store that mixes them up or rounds
    them fails the round trips.
    """
    fields: dict[str, Any] = {
        "uuid": uuid4(),
        "workflow_instance_uuid": instance.uuid,
        "workflow_name": instance.workflow_name,
        "event_name": "pay",
        "idempotency_key": "pay-1",
        "idempotency_fingerprint": "f:2500",
        "status": "pending",
        "revision": 0,
        "definition": {
            "name": instance.workflow_name,
            "version": 2,
            "initialState": "start",
            "states": {
                "start": {
                    "events": {"pay": {"targetState": "paid", "commands": [{"name": "charge"}]}}
                },
                "paid": {"onEnter": {"commands": [{"name": "notify"}]}},
            },
        },
        "best_effort_commands": ["notify"],
        "instance_version": 3,
        "from_state": "start",
        "initial_context": {"order": {"id": 7, "lines": [1, 2.5, "x", None, True]}, "note": "é"},
        "metadata": {"tenant": "acme"},
        "subject": {"user": "u-1", "roles": ["payer"]},
        "trigger_metadata": {"source": "api", "requestId": "r-9"},
        "journal": [
            CommandCheckpoint(
                id="0",
                name="charge",
                result=CommandResult(ok=True, code="charged", metadata={"amount": 2500}),
                context={"order": {"id": 7}, "charged": 2500},
                attempts=2,
                completed_at=NOW - timedelta(minutes=50, microseconds=7),
            )
        ],
        "result": None,
        "attempts": 1,
        "last_error": "gateway timeout",
        "available_at": NOW - timedelta(minutes=30, microseconds=11),
        "lease_token": None,
        "lease_until": None,
        "created_at": NOW - timedelta(hours=2, microseconds=13),
        "updated_at": NOW - timedelta(hours=1, microseconds=17),
        "policy": DurableExecutionPolicy(
            lease_duration=timedelta(seconds=45),
            initial_delay=timedelta(milliseconds=250),
            max_delay=timedelta(minutes=5),
            max_attempts=7,
        ),
        "max_on_enter_depth": 12,
    }
    unknown = set(overrides) - {f.name for f in dataclasses.fields(WorkflowExecution)}
    if unknown:
        raise TypeError(f"make_execution() got unknown fields: {', '.join(sorted(unknown))}")
    fields.update(overrides)
    return WorkflowExecution(**fields)


def _store(provider: WorkflowPersistenceProvider) -> WorkflowExecutionStore:
    store = provider.execution_store
    assert store is not None, (
        "conformance_provider has no execution_store: build it with durable_execution=True"
    )
    return store


def _next(execution: WorkflowExecution, **changes: Any) -> WorkflowExecution:
    """A copy of the execution at its next revision (unless ``changes`` name one), with
    ``changes``."""
    changes.setdefault("revision", execution.revision + 1)
    return dataclasses.replace(copy.deepcopy(execution), **changes)


async def _instances(provider: WorkflowPersistenceProvider, count: int) -> list[WorkflowInstance]:
    instances = [make_instance() for _ in range(count)]
    await create_committed(provider, *instances)
    return instances


async def _create(provider: WorkflowPersistenceProvider, *executions: WorkflowExecution) -> None:
    """Create the executions in one committed transaction."""
    async with provider.transaction_runner.transaction():
        for execution in executions:
            await _store(provider).create(execution)


async def _update(provider: WorkflowPersistenceProvider, execution: WorkflowExecution) -> None:
    async with provider.transaction_runner.transaction():
        await _store(provider).update(execution)


async def _stored(provider: WorkflowPersistenceProvider, uuid: UUID) -> WorkflowExecution:
    found = await _store(provider).find_by_uuid(uuid)
    assert found is not None, f"execution {uuid} was not found"
    return found


def assert_same_execution(found: WorkflowExecution | None, expected: WorkflowExecution) -> None:
    """Every field equal (the first that differs named), every time aware and in UTC."""
    assert found is not None, f"execution {expected.uuid} was not found"
    for field in dataclasses.fields(WorkflowExecution):
        got, wanted = getattr(found, field.name), getattr(expected, field.name)
        assert got == wanted, f"{field.name}: wrote {wanted!r}, read back {got!r}"
    times = [(name, getattr(found, name)) for name in _TIMES]
    times += [(f"journal[{n}].completed_at", c.completed_at) for n, c in enumerate(found.journal)]
    for name, value in times:
        if value is not None:
            assert_aware(value, name)
            assert value.utcoffset() == timedelta(0), f"{name} should be in UTC, got {value!r}"


def _uuids(executions: list[WorkflowExecution]) -> list[UUID]:
    return [execution.uuid for execution in executions]
