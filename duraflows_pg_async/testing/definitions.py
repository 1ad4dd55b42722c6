"""The conformance suite of the definition store."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.model import StoredWorkflowDefinition

from ._helpers import Rollback, assert_aware

__all__ = ["DefinitionStoreConformance"]


def _hash(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _definition_json(name: str, version: int, marker: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "initialState": "draft",
        "states": {
            "draft": {"events": {"submit": {"targetState": "done", "metadata": {"m": marker}}}},
            "done": {},
        },
    }


class DefinitionStoreConformance:
    """The ``WorkflowDefinitionStore`` contract (first content wins, lookups, version lists).

    Subclass in a test module as ``class TestX(DefinitionStoreConformance)`` and provide a
    ``conformance_provider`` fixture returning a fresh, empty ``WorkflowPersistenceProvider``.
    """

    async def _ensure(
        self, provider: WorkflowPersistenceProvider, name: str, version: int, marker: str = ""
    ) -> StoredWorkflowDefinition:
        return await provider.definition_store.ensure(
            workflow_name=name,
            version=version,
            content_hash=_hash(f"{name}/{version}/{marker}"),
            definition_json=_definition_json(name, version, marker),
        )

    async def test_ensure_inserts_and_returns_the_row(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        before = datetime.now(UTC) - timedelta(hours=1)
        stored = await self._ensure(conformance_provider, "orders", 1)
        assert stored.workflow_name == "orders"
        assert stored.version == 1
        assert stored.content_hash == _hash("orders/1/")
        assert stored.definition_json == _definition_json("orders", 1)
        assert_aware(stored.registered_at, "registered_at")
        assert stored.registered_at > before
        found = await conformance_provider.definition_store.find_by_name_and_version("orders", 1)
        assert found == stored

    async def test_ensure_keeps_the_existing_row(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        first = await self._ensure(conformance_provider, "orders", 1, "first")
        second = await self._ensure(conformance_provider, "orders", 1, "second")
        assert second == first
        assert second.content_hash == _hash("orders/1/first")
        assert second.definition_json == _definition_json("orders", 1, "first")
        found = await conformance_provider.definition_store.find_by_name_and_version("orders", 1)
        assert found == first
        assert len(await conformance_provider.definition_store.list_versions("orders")) == 1

    async def test_ensure_joins_the_current_transaction(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.definition_store

        async def rolled_back() -> None:
            async with conformance_provider.transaction_runner.transaction():
                await self._ensure(conformance_provider, "orders", 1, "rolled-back")
                raise Rollback

        with pytest.raises(Rollback):
            await rolled_back()
        assert await store.find_by_name_and_version("orders", 1) is None
        kept = await self._ensure(conformance_provider, "orders", 1, "kept")
        assert kept.content_hash == _hash("orders/1/kept")

    async def test_find_by_name_and_version_returns_equal_content(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        stored = await self._ensure(conformance_provider, "orders", 2, "content")
        found = await conformance_provider.definition_store.find_by_name_and_version("orders", 2)
        assert found is not None
        assert found == stored
        assert found.definition_json == _definition_json("orders", 2, "content")
        assert found.registered_at == stored.registered_at

    async def test_find_unknown_returns_none(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.definition_store
        await self._ensure(conformance_provider, "orders", 1)
        assert await store.find_by_name_and_version("orders", 2) is None
        assert await store.find_by_name_and_version("invoices", 1) is None

    async def test_versions_are_independent_rows(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.definition_store
        one = await self._ensure(conformance_provider, "orders", 1, "v1")
        two = await self._ensure(conformance_provider, "orders", 2, "v2")
        assert one.content_hash != two.content_hash
        assert await store.find_by_name_and_version("orders", 1) == one
        assert await store.find_by_name_and_version("orders", 2) == two
        assert (await store.find_by_name_and_version("orders", 2)) != one

    async def test_list_versions(self, conformance_provider: WorkflowPersistenceProvider) -> None:
        store = conformance_provider.definition_store
        for version in (3, 1, 2):
            await self._ensure(conformance_provider, "orders", version)
        await self._ensure(conformance_provider, "invoices", 1)
        await self._ensure(conformance_provider, "invoices", 7)

        orders = await store.list_versions("orders")
        assert [d.version for d in orders] == [1, 2, 3]
        assert all(d.workflow_name == "orders" for d in orders)
        assert orders[0] == await store.find_by_name_and_version("orders", 1)
        assert [d.version for d in await store.list_versions("invoices")] == [1, 7]
        assert await store.list_versions("unknown") == []
