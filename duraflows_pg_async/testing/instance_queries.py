"""The ``list_instances`` and ``stats`` part of the instance store's conformance suite."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.model import StateStats, TimeoutRetry, WorkflowInstance
from duraflows_pg_async.errors import InvalidArgumentError

from ._helpers import MALFORMED_UUIDS, NOW, create_committed
from .data import make_instance

__all__ = ["InstanceQueryChecks"]

HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)


async def _population(provider: WorkflowPersistenceProvider) -> dict[str, WorkflowInstance]:
    """Instances of every timeout status at ``NOW``, by letter.

    a: orders/new v1, no deadline. b: orders/new v1, due since NOW-1h. c: orders/review v2,
    retrying, due since its retry time NOW-30m. d: orders/review v2, retrying at NOW+1h (not
    due). e: orders/review v1, parked. f: orders/new v1, claimed until NOW+10m (not due).
    h: orders/new v1, claimed until NOW-1m (an ended claim: due since then). g: invoices/open,
    deadline NOW+1h.
    """
    store = provider.instance_store
    made = {
        "f": make_instance(workflow_name="orders", current_state="new", definition_version=1,
                           expires_at=NOW - 5 * HOUR),
        "h": make_instance(workflow_name="orders", current_state="new", definition_version=1,
                           expires_at=NOW - 4 * HOUR),
    }  # fmt: skip
    await create_committed(provider, *made.values())
    # Claims, as a sweep takes them: f (the oldest due) until NOW+10m, then h until NOW-1m.
    for claim_until in (NOW + 10 * MINUTE, NOW - MINUTE):
        async with provider.transaction_runner.transaction():
            found = await store.find_expired(1, NOW - 10 * MINUTE, claim_until=claim_until)
            assert len(found) == 1
    retry = TimeoutRetry(attempts=1, last_error="boom", retry_at=NOW - 30 * MINUTE)
    made |= {
        "a": make_instance(workflow_name="orders", current_state="new", definition_version=1),
        "b": make_instance(workflow_name="orders", current_state="new", definition_version=1,
                           expires_at=NOW - HOUR),
        "c": make_instance(workflow_name="orders", current_state="review", definition_version=2,
                           expires_at=NOW - 2 * HOUR, timeout_retry=retry),
        "d": make_instance(workflow_name="orders", current_state="review", definition_version=2,
                           expires_at=NOW - 3 * HOUR,
                           timeout_retry=TimeoutRetry(attempts=2, last_error="boom",
                                                      retry_at=NOW + HOUR)),
        "e": make_instance(workflow_name="orders", current_state="review", definition_version=1,
                           expires_at=NOW - 24 * HOUR,
                           timeout_retry=TimeoutRetry(attempts=3, last_error="boom",
                                                      parked_at=NOW - HOUR)),
        "g": make_instance(workflow_name="invoices", current_state="open",
                           expires_at=NOW + HOUR),
    }  # fmt: skip
    await create_committed(provider, *(made[k] for k in "abcdeg"))
    return made


async def _listed(provider: WorkflowPersistenceProvider, **filters: Any) -> list[UUID]:
    found = await provider.instance_store.list_instances(limit=100, now=NOW, **filters)
    uuids = [i.uuid for i in found]
    assert uuids == sorted(uuids), "list_instances must return instances in uuid order"
    return uuids


class InstanceQueryChecks:
    """``list_instances`` (filters, statuses, keyset pages by uuid) and ``stats``; part of
    ``InstanceStoreConformance``."""

    async def test_list_instances_filters(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        made = await _population(conformance_provider)

        def of(letters: str) -> list[UUID]:
            return sorted(made[k].uuid for k in letters)

        cases: list[tuple[dict[str, Any], str]] = [
            ({}, "abcdefgh"),
            ({"workflow_name": "orders"}, "abcdefh"),
            ({"workflow_name": "invoices"}, "g"),
            ({"workflow_name": "nothing"}, ""),
            ({"workflow_name": "orders", "state": "review"}, "cde"),
            ({"workflow_name": "orders", "definition_version": 2}, "cd"),
            ({"workflow_name": "orders", "state": "review", "definition_version": 1}, "e"),
            ({"status": "due"}, "bch"),
            ({"status": "retrying"}, "cd"),
            ({"status": "parked"}, "e"),
            ({"status": "claimed"}, "fh"),
            ({"workflow_name": "orders", "state": "new", "status": "due"}, "bh"),
            ({"workflow_name": "orders", "definition_version": 2, "status": "due"}, "c"),
            ({"workflow_name": "invoices", "status": "due"}, ""),
        ]
        for filters, letters in cases:
            assert await _listed(conformance_provider, **filters) == of(letters), filters

    async def test_list_instances_due_follows_now(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        made = await _population(conformance_provider)
        store = conformance_provider.instance_store
        later = await store.list_instances(limit=100, now=NOW + 2 * HOUR, status="due")
        # Two hours on: d's retry time and g's deadline have passed, f's claim has ended.
        assert [i.uuid for i in later] == sorted(made[k].uuid for k in "bcdfgh")
        earlier = await store.list_instances(limit=100, now=NOW - 6 * HOUR, status="due")
        assert earlier == []

    async def test_list_instances_returns_whole_instances(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        made = await _population(conformance_provider)
        store = conformance_provider.instance_store
        (claimed, _) = sorted(
            await store.list_instances(limit=10, now=NOW, status="claimed"),
            key=lambda i: i.uuid != made["f"].uuid,
        )
        assert claimed.uuid == made["f"].uuid
        assert claimed.claimed_until == NOW + 10 * MINUTE
        assert claimed.timeout_retry is None
        (parked,) = await store.list_instances(limit=10, now=NOW, status="parked")
        assert parked.timeout_retry == made["e"].timeout_retry
        assert parked.workflow_name == "orders"
        assert parked.definition_version == 1

    async def test_list_instances_pages_by_uuid(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        wanted = [make_instance(workflow_name="orders") for _ in range(7)]
        await create_committed(conformance_provider, *wanted, make_instance(workflow_name="x"))
        store = conformance_provider.instance_store
        pages: list[list[UUID]] = []
        after: UUID | None = None
        while True:
            page = await store.list_instances(
                limit=3, now=NOW, workflow_name="orders", after_uuid=after
            )
            if not page:
                break
            pages.append([i.uuid for i in page])
            after = page[-1].uuid
            assert len(pages) < 10, "list_instances does not advance past its cursor"
        assert [len(p) for p in pages] == [3, 3, 1]
        assert [u for p in pages for u in p] == sorted(i.uuid for i in wanted)
        # A cursor is a bound, not a row: an uuid that is no instance's works too (as text).
        middle = sorted(i.uuid for i in wanted)[3]
        rest = await store.list_instances(
            limit=10, now=NOW, workflow_name="orders", after_uuid=str(UUID(int=middle.int - 1))
        )
        assert [i.uuid for i in rest] == sorted(i.uuid for i in wanted)[3:]

    async def test_stats_counts_each_state(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        await _population(conformance_provider)
        store = conformance_provider.instance_store
        invoices = StateStats("invoices", "open", 1, 0, 0, 0, 0, None)
        new = StateStats("orders", "new", 4, 2, 0, 0, 2, NOW - HOUR)
        review = StateStats("orders", "review", 3, 1, 2, 1, 0, NOW - 30 * MINUTE)
        assert await store.stats(now=NOW) == [invoices, new, review]
        assert await store.stats(now=NOW, workflow_name="orders") == [new, review]
        assert await store.stats(now=NOW, workflow_name="nothing") == []
        # Later, the claim of f has ended: it is due since then, and still counts as claimed.
        later = await store.stats(now=NOW + 20 * MINUTE, workflow_name="orders")
        assert later[0] == StateStats("orders", "new", 4, 3, 0, 0, 2, NOW - HOUR)

    async def test_stats_of_an_empty_store(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        assert await conformance_provider.instance_store.stats(now=NOW) == []

    @pytest.mark.parametrize(
        "arguments",
        [
            {"limit": 0},
            {"limit": -1},
            {"limit": 1.5},
            {"limit": True},
            {"limit": 2**31},
            {"now": None},
            {"now": NOW.replace(tzinfo=None)},
            {"workflow_name": ""},
            {"workflow_name": 7},
            {"state": "new"},  # needs workflow_name
            {"definition_version": 1},  # needs workflow_name
            {"workflow_name": "orders", "state": ""},
            {"workflow_name": "orders", "definition_version": 0},
            {"workflow_name": "orders", "definition_version": "1"},
            {"status": "late"},
            {"status": ""},
            {"status": ["due"]},
            *({"after_uuid": bad} for bad in MALFORMED_UUIDS),
        ],
    )
    async def test_list_instances_rejects_bad_arguments(
        self, conformance_provider: WorkflowPersistenceProvider, arguments: dict[str, Any]
    ) -> None:
        merged: dict[str, Any] = {"limit": 10, "now": NOW, **arguments}
        with pytest.raises(InvalidArgumentError):
            await conformance_provider.instance_store.list_instances(**merged)

    @pytest.mark.parametrize(
        "arguments",
        [{"now": None}, {"now": NOW.replace(tzinfo=None)}, {"workflow_name": ""},
         {"workflow_name": 3}],
    )  # fmt: skip
    async def test_stats_rejects_bad_arguments(
        self, conformance_provider: WorkflowPersistenceProvider, arguments: dict[str, Any]
    ) -> None:
        merged: dict[str, Any] = {"now": NOW, **arguments}
        with pytest.raises(InvalidArgumentError):
            await conformance_provider.instance_store.stats(**merged)
