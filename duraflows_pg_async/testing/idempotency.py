"""The conformance suite of the idempotency store."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest

from duraflows_pg_async._core.contract import (
    WorkflowIdempotencyStore,
    WorkflowPersistenceProvider,
)
from duraflows_pg_async.errors import (
    DatabaseError,
    InvalidArgumentError,
    NoActiveTransactionError,
    WorkflowError,
    WorkflowInstanceNotFoundError,
)

from ._helpers import Rollback, assert_aware, create_committed
from .data import make_instance

__all__ = ["IdempotencyStoreConformance"]

RESULT: dict[str, Any] = {
    "outcome": "success",
    "fromState": "new",
    "toState": "paid",
    "commandResults": [{"ok": True, "code": "charged", "metadata": {"amount": 2500, "note": "é"}}],
    "historyUuid": "0b7d3c8e-4f3a-4d55-9a55-3f2d9f0c1e2a",
}

# Each is refused as a key or fingerprint before any SQL: not a str, blank, NUL, an unpaired
# surrogate, one byte over 256 in UTF-8.
BAD_TEXTS: tuple[object, ...] = (None, 7, b"key", "", "   ", "a\x00b", "\ud800", "é" * 128 + "x")


def _store(provider: WorkflowPersistenceProvider) -> WorkflowIdempotencyStore:
    store = provider.idempotency_store
    assert store is not None, (
        "conformance_provider has no idempotency_store: build it with idempotency=True"
    )
    return store


class IdempotencyStoreConformance:
    """The ``WorkflowIdempotencyStore`` contract: receipts by (instance, key), reserved once,
    completed once, committed and rolled back (savepoints included) with their transaction.

    Subclass as ``class TestX(IdempotencyStoreConformance)`` and provide a
    ``conformance_provider`` fixture returning a fresh provider with an ``idempotency_store``.
    """

    async def test_reserve_then_complete_then_find(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        instance = make_instance()
        await create_committed(conformance_provider, instance)
        store = _store(conformance_provider)
        async with conformance_provider.transaction_runner.transaction():
            assert await store.find(instance.uuid, "pay-1") is None
            await store.reserve(instance.uuid, "pay-1", event_name="pay", fingerprint="f:2500")
            reserved = await store.find(instance.uuid, "pay-1")
            assert reserved is not None
            assert (reserved.workflow_instance_uuid, reserved.key) == (instance.uuid, "pay-1")
            assert (reserved.event_name, reserved.fingerprint, reserved.result) == (
                "pay",
                "f:2500",
                None,
            )
            assert_aware(reserved.created_at, "created_at")
            await store.complete(instance.uuid, "pay-1", RESULT)
        async with conformance_provider.transaction_runner.transaction():
            found = await store.find(str(instance.uuid), "pay-1")
        assert found is not None
        assert found.result == RESULT
        assert found.created_at == reserved.created_at

    async def test_a_reservation_without_fingerprint_reads_back_none(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        instance = make_instance()
        await create_committed(conformance_provider, instance)
        store = _store(conformance_provider)
        async with conformance_provider.transaction_runner.transaction():
            await store.reserve(instance.uuid, "k", event_name="pay")
            found = await store.find(instance.uuid, "k")
        assert found is not None
        assert found.fingerprint is None

    async def test_a_found_result_is_a_copy(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        instance = make_instance()
        await create_committed(conformance_provider, instance)
        store = _store(conformance_provider)
        async with conformance_provider.transaction_runner.transaction():
            await store.reserve(instance.uuid, "k", event_name="pay")
            await store.complete(instance.uuid, "k", RESULT)
            first = await store.find(instance.uuid, "k")
            assert first is not None
            assert first.result is not None
            first.result["outcome"] = "changed"
            again = await store.find(instance.uuid, "k")
        assert again is not None
        assert again.result == RESULT

    async def test_complete_needs_an_open_reservation(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        instance = make_instance()
        await create_committed(conformance_provider, instance)
        store = _store(conformance_provider)
        async with conformance_provider.transaction_runner.transaction():
            with pytest.raises(WorkflowError, match="missing or already completed"):
                await store.complete(instance.uuid, "never-reserved", RESULT)
            await store.reserve(instance.uuid, "k", event_name="pay")
            await store.complete(instance.uuid, "k", RESULT)
            with pytest.raises(WorkflowError, match="missing or already completed"):
                await store.complete(instance.uuid, "k", {**RESULT, "outcome": "failure"})
        async with conformance_provider.transaction_runner.transaction():
            found = await store.find(instance.uuid, "k")
        assert found is not None
        assert found.result == RESULT

    async def test_a_second_reservation_fails_and_leaves_the_first(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        instance = make_instance()
        await create_committed(conformance_provider, instance)
        store = _store(conformance_provider)
        async with conformance_provider.transaction_runner.transaction():
            await store.reserve(instance.uuid, "k", event_name="pay", fingerprint="a")
            await store.complete(instance.uuid, "k", RESULT)
        with pytest.raises(DatabaseError):
            async with conformance_provider.transaction_runner.transaction():
                await store.reserve(instance.uuid, "k", event_name="ship", fingerprint="b")
        async with conformance_provider.transaction_runner.transaction():
            found = await store.find(instance.uuid, "k")
        assert found is not None
        assert (found.event_name, found.fingerprint, found.result) == ("pay", "a", RESULT)

    async def test_every_method_needs_a_transaction(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        instance = make_instance()
        await create_committed(conformance_provider, instance)
        store = _store(conformance_provider)
        with pytest.raises(NoActiveTransactionError):
            await store.find(instance.uuid, "k")
        with pytest.raises(NoActiveTransactionError):
            await store.reserve(instance.uuid, "k", event_name="pay")
        with pytest.raises(NoActiveTransactionError):
            await store.complete(instance.uuid, "k", RESULT)
        async with conformance_provider.transaction_runner.transaction():
            assert await store.find(instance.uuid, "k") is None

    async def test_a_rolled_back_transaction_leaves_no_receipt(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        instance = make_instance()
        await create_committed(conformance_provider, instance)
        store = _store(conformance_provider)

        async def rolled_back() -> None:
            async with conformance_provider.transaction_runner.transaction():
                await store.reserve(instance.uuid, "k", event_name="pay")
                await store.complete(instance.uuid, "k", RESULT)
                raise Rollback

        with pytest.raises(Rollback):
            await rolled_back()
        async with conformance_provider.transaction_runner.transaction():
            assert await store.find(instance.uuid, "k") is None

    async def test_a_rolled_back_savepoint_removes_only_its_receipts(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        instance = make_instance()
        await create_committed(conformance_provider, instance)
        store = _store(conformance_provider)
        runner = conformance_provider.transaction_runner

        async def failing_nested() -> None:
            async with runner.transaction():
                await store.reserve(instance.uuid, "inner", event_name="pay")
                raise Rollback

        async with runner.transaction():
            await store.reserve(instance.uuid, "outer", event_name="pay")
            with pytest.raises(Rollback):
                await failing_nested()
            assert await store.find(instance.uuid, "inner") is None
            # The key is free again inside the same transaction.
            await store.reserve(instance.uuid, "inner", event_name="ship")
        async with runner.transaction():
            outer = await store.find(instance.uuid, "outer")
            inner = await store.find(instance.uuid, "inner")
        assert outer is not None
        assert outer.event_name == "pay"
        assert inner is not None
        assert inner.event_name == "ship"

    async def test_keys_are_per_instance_and_compared_exactly(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        first, second = make_instance(), make_instance()
        await create_committed(conformance_provider, first, second)
        store = _store(conformance_provider)
        # Case, trailing spaces and Unicode normalisation (é precomposed vs e + accent) count.
        keys = ["Key", "key", "key ", "\u00e9", "e\u0301", "é" * 128]
        async with conformance_provider.transaction_runner.transaction():
            for n, key in enumerate(keys):
                await store.reserve(first.uuid, key, event_name=f"e{n}")
            await store.reserve(second.uuid, "key", event_name="other")
        async with conformance_provider.transaction_runner.transaction():
            for n, key in enumerate(keys):
                found = await store.find(first.uuid, key)
                assert found is not None
                assert (found.key, found.event_name) == (key, f"e{n}")
            other = await store.find(second.uuid, "key")
            assert other is not None
            assert other.event_name == "other"
            assert await store.find(second.uuid, "Key") is None

    async def test_bad_keys_and_fingerprints_are_refused_before_any_sql(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        instance = make_instance()
        await create_committed(conformance_provider, instance)
        store = _store(conformance_provider)
        async with conformance_provider.transaction_runner.transaction():
            for bad in BAD_TEXTS:
                with pytest.raises(InvalidArgumentError, match="key"):
                    await store.find(instance.uuid, bad)  # type: ignore[arg-type]
                with pytest.raises(InvalidArgumentError, match="key"):
                    await store.reserve(instance.uuid, bad, event_name="pay")  # type: ignore[arg-type]
                if bad is not None:
                    with pytest.raises(InvalidArgumentError, match="fingerprint"):
                        await store.reserve(instance.uuid, "k", event_name="pay", fingerprint=bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgumentError, match="instance_uuid"):
                await store.find("not-a-uuid", "k")
            with pytest.raises(InvalidArgumentError, match="result"):
                await store.complete(instance.uuid, "k", ["not", "an", "object"])  # type: ignore[arg-type]
            # The transaction is still usable: nothing reached the database.
            await store.reserve(instance.uuid, "k", event_name="pay")
            assert await store.find(instance.uuid, "k") is not None

    async def test_reserving_on_an_unknown_instance_fails(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        with pytest.raises(WorkflowInstanceNotFoundError):
            async with conformance_provider.transaction_runner.transaction():
                await _store(conformance_provider).reserve(uuid4(), "k", event_name="pay")
