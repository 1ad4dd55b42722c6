"""The ``list_executions`` part of the execution store's conformance suite."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.executions import WorkflowExecution
from duraflows_pg_async.errors import InvalidArgumentError

from ._helpers import MALFORMED_UUIDS, create_committed
from .data import make_instance
from .execution_data import make_execution

__all__ = ["ExecutionListingChecks"]


async def _population(provider: WorkflowPersistenceProvider) -> dict[str, WorkflowExecution]:
    """Executions by letter. a, b: orders, pending and parked (one instance each); c, d: orders,
    completed and cancelled (on a's instance); e: invoices, running."""
    orders = [make_instance(workflow_name="orders") for _ in range(2)]
    invoices = make_instance(workflow_name="invoices")
    await create_committed(provider, *orders, invoices)
    made = {
        "a": make_execution(orders[0], idempotency_key="a", status="pending"),
        "b": make_execution(orders[1], idempotency_key="b", status="parked"),
        "c": make_execution(orders[0], idempotency_key="c", status="completed"),
        "d": make_execution(orders[0], idempotency_key="d", status="cancelled"),
        "e": make_execution(invoices, idempotency_key="e", status="running"),
    }
    store = provider.execution_store
    assert store is not None, "conformance_provider has no execution_store"
    async with provider.transaction_runner.transaction():
        for execution in made.values():
            await store.create(execution)
    return made


async def _listed(provider: WorkflowPersistenceProvider, **filters: Any) -> list[UUID]:
    store = provider.execution_store
    assert store is not None
    found = await store.list_executions(limit=100, **filters)
    uuids = [e.uuid for e in found]
    assert uuids == sorted(uuids), "list_executions must return executions in uuid order"
    return uuids


class ExecutionListingChecks:
    """``list_executions`` (status and workflow filters, keyset pages by uuid); part of
    ``ExecutionStoreConformance``."""

    async def test_list_executions_filters(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        made = await _population(conformance_provider)

        def of(letters: str) -> list[UUID]:
            return sorted(made[k].uuid for k in letters)

        cases: list[tuple[dict[str, Any], str]] = [
            ({}, "abcde"),
            ({"status": "pending"}, "a"),
            ({"status": "parked"}, "b"),
            ({"status": "running"}, "e"),
            ({"status": "completed"}, "c"),
            ({"status": "cancelled"}, "d"),
            ({"workflow_name": "orders"}, "abcd"),
            ({"workflow_name": "invoices"}, "e"),
            ({"workflow_name": "nothing"}, ""),
            ({"workflow_name": "orders", "status": "parked"}, "b"),
            ({"workflow_name": "invoices", "status": "parked"}, ""),
        ]
        for filters, letters in cases:
            assert await _listed(conformance_provider, **filters) == of(letters), filters

    async def test_list_executions_returns_whole_records(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        made = await _population(conformance_provider)
        store = conformance_provider.execution_store
        assert store is not None
        (parked,) = await store.list_executions(limit=10, status="parked")
        assert parked == made["b"]

    async def test_list_executions_pages_by_uuid(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        made = await _population(conformance_provider)
        store = conformance_provider.execution_store
        assert store is not None
        pages: list[list[UUID]] = []
        after: UUID | None = None
        while True:
            page = await store.list_executions(limit=2, after_uuid=after)
            if not page:
                break
            pages.append([e.uuid for e in page])
            after = page[-1].uuid
            assert len(pages) < 10, "list_executions does not advance past its cursor"
        assert [len(p) for p in pages] == [2, 2, 1]
        assert [u for p in pages for u in p] == sorted(e.uuid for e in made.values())
        # A cursor is a bound, not a row: a uuid that is no execution's works too (as text).
        middle = sorted(e.uuid for e in made.values())[2]
        rest = await store.list_executions(limit=10, after_uuid=str(UUID(int=middle.int - 1)))
        assert [e.uuid for e in rest] == sorted(e.uuid for e in made.values())[2:]

    @pytest.mark.parametrize(
        "arguments",
        [
            {"limit": 0},
            {"limit": -1},
            {"limit": 1.5},
            {"limit": True},
            {"limit": 2**31},
            {"status": "late"},
            {"status": ""},
            {"status": ["parked"]},
            {"workflow_name": ""},
            {"workflow_name": 7},
            *({"after_uuid": bad} for bad in MALFORMED_UUIDS),
        ],
    )
    async def test_list_executions_rejects_bad_arguments(
        self, conformance_provider: WorkflowPersistenceProvider, arguments: dict[str, Any]
    ) -> None:
        store = conformance_provider.execution_store
        assert store is not None
        merged: dict[str, Any] = {"limit": 10, **arguments}
        with pytest.raises(InvalidArgumentError):
            await store.list_executions(**merged)
