"""The ``find_instance_uuids`` part of the instance store's conformance suite."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async.errors import InvalidArgumentError

from ._helpers import MALFORMED_UUIDS, create_committed, find_stored, update_locked
from .data import make_instance

__all__ = ["InstanceListingChecks"]


async def _all_pages(
    provider: WorkflowPersistenceProvider, page_size: int, **filters: object
) -> list[list[UUID]]:
    """Every page of ``orders`` version 1, ``page_size`` at a time, following the cursor."""
    pages: list[list[UUID]] = []
    after: UUID | None = None
    while True:
        page = await provider.instance_store.find_instance_uuids(
            workflow_name="orders",
            definition_version=1,
            limit=page_size,
            after_uuid=after,
            **filters,  # type: ignore[arg-type]
        )
        assert len(pages) < 100, "find_instance_uuids does not advance past its cursor"
        if not page:
            return pages
        pages.append(page)
        after = page[-1]


class InstanceListingChecks:
    """``find_instance_uuids``: keyset paging by uuid, the version filter and the state hints;
    part of ``InstanceStoreConformance``."""

    async def test_find_instance_uuids_pages_by_uuid(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        wanted = [make_instance(workflow_name="orders", definition_version=1) for _ in range(7)]
        await create_committed(
            conformance_provider,
            *wanted,
            # Noise: another version, another workflow, and an unstamped (legacy) row.
            make_instance(workflow_name="orders", definition_version=2),
            make_instance(workflow_name="invoices", definition_version=1),
            make_instance(workflow_name="orders", definition_version=None),
        )
        expected = sorted(i.uuid for i in wanted)

        pages = await _all_pages(conformance_provider, 3)
        assert [len(page) for page in pages] == [3, 3, 1]
        assert [u for page in pages for u in page] == expected
        assert all(isinstance(u, UUID) for page in pages for u in page)

        # The cursor is exclusive and may be given as a string, in either case.
        after_third = await store.find_instance_uuids(
            workflow_name="orders", definition_version=1, limit=100, after_uuid=str(expected[2])
        )
        assert after_third == expected[3:]
        upper = await store.find_instance_uuids(
            workflow_name="orders",
            definition_version=1,
            limit=2,
            after_uuid=str(expected[0]).upper(),
        )
        assert upper == expected[1:3]
        # A cursor need not be one of the rows.
        cursor = uuid4()
        assert await store.find_instance_uuids(
            workflow_name="orders", definition_version=1, limit=100, after_uuid=cursor
        ) == [u for u in expected if u > cursor]
        none_left = await store.find_instance_uuids(
            workflow_name="orders", definition_version=1, limit=5, after_uuid=expected[-1]
        )
        assert none_left == []
        assert (
            await store.find_instance_uuids(workflow_name="orders", definition_version=3, limit=5)
            == []
        )

    async def test_find_instance_uuids_follows_uuid_byte_order(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        # PostgreSQL orders uuid values byte by byte: the order of their lowercase text and of
        # Python's UUID. These differ in the first byte, the last byte and in between.
        texts = [
            "ffffffff-0000-4000-8000-000000000000",
            "00000000-0000-4000-8000-0000000000ff",
            "00000000-0000-4000-8000-000000000001",
            "0fffffff-ffff-4fff-bfff-ffffffffffff",
            "10000000-0000-4000-8000-000000000000",
            "00000000-0000-4000-8000-000000000a00",
        ]
        await create_committed(
            conformance_provider,
            *(
                make_instance(uuid=UUID(t), workflow_name="orders", definition_version=1)
                for t in texts
            ),
        )
        pages = await _all_pages(conformance_provider, 2)
        listed = [u for page in pages for u in page]
        assert [str(u) for u in listed] == sorted(texts)
        assert listed == sorted(UUID(t) for t in texts)

    async def test_find_instance_uuids_state_filters(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        by_state: dict[str, list[UUID]] = {"open": [], "closed": [], "review": []}
        instances = []
        for state, count in (("open", 4), ("closed", 3), ("review", 2)):
            for _ in range(count):
                instance = make_instance(
                    workflow_name="orders", definition_version=1, current_state=state
                )
                instances.append(instance)
                by_state[state].append(instance.uuid)
        await create_committed(conformance_provider, *instances)

        async def listed(**filters: object) -> list[UUID]:
            return [
                u for page in await _all_pages(conformance_provider, 2, **filters) for u in page
            ]

        everything = sorted(u for uuids in by_state.values() for u in uuids)
        assert await listed() == everything
        assert await listed(states=["open"]) == sorted(by_state["open"])
        assert await listed(states=("open", "review")) == sorted(
            by_state["open"] + by_state["review"]
        )
        assert await listed(exclude_states=["open"]) == sorted(
            by_state["closed"] + by_state["review"]
        )
        assert await listed(states=["open", "closed"], exclude_states=["closed"]) == sorted(
            by_state["open"]
        )
        # An empty list: states matches nothing, exclude_states excludes nothing.
        assert await listed(states=[]) == []
        assert await listed(exclude_states=[]) == everything
        assert await listed(states=["unknown"]) == []
        # The filters apply before the limit: a page is full of matching rows.
        first = await store.find_instance_uuids(
            workflow_name="orders", definition_version=1, limit=3, exclude_states=["open"]
        )
        assert first == sorted(by_state["closed"] + by_state["review"])[:3]

    async def test_find_instance_uuids_sees_the_current_state_and_version(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        instance = make_instance(workflow_name="orders", definition_version=1, current_state="open")
        await create_committed(conformance_provider, instance)

        moved = await find_stored(conformance_provider, instance.uuid)
        moved.version += 1
        moved.current_state = "closed"
        await update_locked(conformance_provider, moved)
        assert (
            await store.find_instance_uuids(
                workflow_name="orders", definition_version=1, limit=5, states=["open"]
            )
            == []
        )
        assert await store.find_instance_uuids(
            workflow_name="orders", definition_version=1, limit=5, states=["closed"]
        ) == [instance.uuid]

        moved.version += 1
        moved.definition_version = 2
        await update_locked(conformance_provider, moved)
        assert (
            await store.find_instance_uuids(workflow_name="orders", definition_version=1, limit=5)
            == []
        )
        assert await store.find_instance_uuids(
            workflow_name="orders", definition_version=2, limit=5
        ) == [instance.uuid]

    async def test_find_instance_uuids_rejects_bad_arguments_before_any_sql(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        store = conformance_provider.instance_store
        instance = make_instance(workflow_name="orders", definition_version=1)
        await create_committed(conformance_provider, instance)
        good: dict[str, object] = {"workflow_name": "orders", "definition_version": 1, "limit": 5}
        malformed: list[dict[str, object]] = [{"after_uuid": bad} for bad in MALFORMED_UUIDS]
        bad_arguments: list[dict[str, object]] = [
            {"limit": 0},
            {"limit": -1},
            {"limit": True},
            {"limit": 2**63},
            {"definition_version": 0},
            {"definition_version": 2**31},
            {"definition_version": "1"},
            {"workflow_name": ""},
            {"workflow_name": None},
            {"workflow_name": "nul\x00"},
            {"states": "open"},
            {"states": [1]},
            {"exclude_states": "open"},
            {"exclude_states": [None]},
            *malformed,
        ]
        # Inside a transaction: had a statement failed in the database, the transaction would be
        # aborted and the listing after the caught errors would fail.
        async with conformance_provider.transaction_runner.transaction():
            for bad in bad_arguments:
                with pytest.raises(InvalidArgumentError):
                    await store.find_instance_uuids(**{**good, **bad})  # type: ignore[arg-type]
            assert await store.find_instance_uuids(**good) == [instance.uuid]  # type: ignore[arg-type]
