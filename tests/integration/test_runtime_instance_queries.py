"""WorkflowRuntime.list_instances and stats on both providers (``any_persistence``): filters,
statuses at the runtime's clock, pages while instances are created, cursors and their misuse,
argument checks before any SQL, and the figures of stats."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

import pytest
from helpers import ManualClock

from duraflows_pg_async import (
    CommandRegistry,
    DefinitionRegistry,
    TimeoutRetry,
    WorkflowInstance,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
)
from duraflows_pg_async.errors import InvalidArgumentError
from duraflows_pg_async.stores import WorkflowInstanceStore
from duraflows_pg_async.testing import make_instance
from duraflows_pg_async.types import InstancePage, StateStats

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


class CountingStore:
    """An instance store that records the calls of list_instances and stats."""

    def __init__(self, inner: WorkflowInstanceStore) -> None:
        self.inner = inner
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def list_instances(self, **arguments: Any) -> list[WorkflowInstance]:
        self.calls.append(("list_instances", arguments))
        return await self.inner.list_instances(**arguments)

    async def stats(self, **arguments: Any) -> list[StateStats]:
        self.calls.append(("stats", arguments))
        return await self.inner.stats(**arguments)


@dataclasses.dataclass
class Setup:
    runtime: WorkflowRuntime
    store: CountingStore
    persistence: WorkflowPersistenceProvider
    clock: ManualClock

    async def create(self, *instances: WorkflowInstance) -> list[UUID]:
        async with self.persistence.transaction_runner.transaction():
            for instance in instances:
                await self.persistence.instance_store.create(instance)
        return [i.uuid for i in instances]


@pytest.fixture
def setup(any_persistence: WorkflowPersistenceProvider) -> Setup:
    store = CountingStore(any_persistence.instance_store)
    persistence = dataclasses.replace(
        any_persistence, instance_store=cast(WorkflowInstanceStore, store)
    )
    clock = ManualClock(NOW)
    runtime = WorkflowRuntime(
        definitions=DefinitionRegistry(),
        commands=CommandRegistry(),
        persistence=persistence,
        clock=clock,
    )
    return Setup(runtime, store, persistence, clock)


async def all_pages(runtime: WorkflowRuntime, limit: int, **filters: Any) -> list[InstancePage]:
    pages = [await runtime.list_instances(limit=limit, **filters)]
    while pages[-1].next_cursor is not None:
        pages.append(
            await runtime.list_instances(limit=limit, after=pages[-1].next_cursor, **filters)
        )
        assert len(pages) < 100
    return pages


# --- filters and statuses --------------------------------------------------------------------


async def test_each_filter_and_status(setup: Setup) -> None:
    (plain, due, retrying, parked) = await setup.create(
        make_instance(workflow_name="orders", current_state="new", definition_version=1),
        make_instance(workflow_name="orders", current_state="new", definition_version=2,
                      expires_at=NOW - HOUR),
        make_instance(workflow_name="orders", current_state="paid", definition_version=2,
                      expires_at=NOW - 2 * HOUR,
                      timeout_retry=_retry(retry_at=NOW + HOUR)),
        make_instance(workflow_name="billing", current_state="paid",
                      expires_at=NOW - 3 * HOUR,
                      timeout_retry=_retry(parked_at=NOW - HOUR)),
    )  # fmt: skip

    async def listed(**filters: Any) -> list[UUID]:
        page = await setup.runtime.list_instances(**filters)
        assert page.next_cursor is None
        return [i.uuid for i in page.items]

    assert await listed() == sorted([plain, due, retrying, parked])
    assert await listed(workflow_name="orders") == sorted([plain, due, retrying])
    assert await listed(workflow_name="orders", state="new") == sorted([plain, due])
    assert await listed(workflow_name="orders", definition_version=2) == sorted([due, retrying])
    assert await listed(workflow_name="orders", state="new", definition_version=1) == [plain]
    assert await listed(status="due") == [due]
    assert await listed(status="retrying") == [retrying]
    assert await listed(status="parked") == [parked]
    assert await listed(status="claimed") == []
    assert await listed(workflow_name="billing", status="retrying") == []
    # "due" is at the runtime's clock: two hours on, the retry time has passed too.
    setup.clock.advance(hours=2)
    assert await listed(status="due") == sorted([due, retrying])
    assert setup.store.calls[-1][1]["now"] == NOW + 2 * HOUR


def _retry(*, retry_at: datetime | None = None, parked_at: datetime | None = None) -> TimeoutRetry:
    return TimeoutRetry(attempts=2, last_error="boom", retry_at=retry_at, parked_at=parked_at)


# --- pages -----------------------------------------------------------------------------------


async def test_pages_cover_every_instance_once(setup: Setup) -> None:
    created = await setup.create(*(make_instance(workflow_name="orders") for _ in range(53)))
    await setup.create(*(make_instance(workflow_name="other") for _ in range(5)))
    pages = await all_pages(setup.runtime, 10, workflow_name="orders")
    assert [len(p.items) for p in pages] == [10, 10, 10, 10, 10, 3]
    assert [i.uuid for p in pages for i in p.items] == sorted(created)
    # One row more than the page is asked for, so a full last page has no cursor.
    exact = await all_pages(setup.runtime, 53, workflow_name="orders")
    assert len(exact) == 1
    assert [c[1]["limit"] for c in setup.store.calls[-1:]] == [54]


async def test_pages_while_instances_are_created(setup: Setup) -> None:
    """Keyset pages: no instance twice, none that existed throughout missed, whatever is created
    between and during the pages."""
    existing = set(await setup.create(*(make_instance(workflow_name="orders") for _ in range(60))))
    created: set[UUID] = set()
    seen: list[UUID] = []
    page = await setup.runtime.list_instances(workflow_name="orders", limit=7)

    async def create_more() -> None:
        for _ in range(4):
            created.update(await setup.create(make_instance(workflow_name="orders")))
            await asyncio.sleep(0)

    while True:
        seen += [i.uuid for i in page.items]
        if page.next_cursor is None:
            break
        # Instances created between two pages, and while the next one is read.
        created.update(await setup.create(make_instance(workflow_name="orders")))
        page, _ = await asyncio.gather(
            setup.runtime.list_instances(workflow_name="orders", limit=7, after=page.next_cursor),
            create_more(),
        )
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen)
    assert existing <= set(seen)
    assert set(seen) <= existing | created


async def test_the_limit_may_change_between_pages(setup: Setup) -> None:
    created = sorted(await setup.create(*(make_instance() for _ in range(12))))
    first = await setup.runtime.list_instances(limit=5)
    assert first.next_cursor is not None
    second = await setup.runtime.list_instances(limit=100, after=first.next_cursor)
    assert [i.uuid for i in first.items + second.items] == created
    assert second.next_cursor is None


async def test_no_instances_is_one_empty_page(setup: Setup) -> None:
    assert await setup.runtime.list_instances() == InstancePage(items=[], next_cursor=None)
    assert await setup.runtime.stats() == []


# --- cursors -----------------------------------------------------------------------------------


async def _a_cursor(setup: Setup, **filters: Any) -> str:
    await setup.create(*(make_instance(workflow_name="orders") for _ in range(3)))
    page = await setup.runtime.list_instances(limit=1, **filters)
    assert page.next_cursor is not None
    return page.next_cursor


@pytest.mark.parametrize(
    "other",
    [
        {},
        {"workflow_name": "other"},
        {"workflow_name": "orders", "state": "start"},
        {"workflow_name": "orders", "definition_version": 1},
        {"workflow_name": "orders", "status": "due"},
    ],
)
async def test_a_cursor_of_other_filters_is_refused(setup: Setup, other: dict[str, Any]) -> None:
    cursor = await _a_cursor(setup, workflow_name="orders")
    setup.store.calls.clear()
    with pytest.raises(InvalidArgumentError, match="other filters"):
        await setup.runtime.list_instances(after=cursor, **other)
    assert setup.store.calls == []


def _decoded(cursor: str) -> list[Any]:
    return cast(list[Any], json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))))


def _encoded(body: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


async def test_an_altered_or_foreign_cursor_is_refused(setup: Setup) -> None:
    cursor = await _a_cursor(setup, workflow_name="orders")
    body = _decoded(cursor)
    moved = [*body[:2], str(UUID(int=0)), body[3]]  # another position, the old checksum
    widened = [body[0], [None, None, None, None], *body[2:]]  # the filters dropped
    bad: list[object] = [
        "",
        "not a cursor",
        "%%%%",
        cursor[:-3],
        cursor + "AAAA",
        _encoded(moved),
        _encoded(widened),
        _encoded([2, *body[1:]]),
        _encoded({"after": body[2]}),  # type: ignore[arg-type]
        "A" * 5000,
        7,
        b"bytes",
        UUID(body[2]),
    ]
    setup.store.calls.clear()
    for after in bad:
        with pytest.raises(InvalidArgumentError, match="after"):
            await setup.runtime.list_instances(workflow_name="orders", after=after)  # type: ignore[arg-type]
    assert setup.store.calls == []
    # The cursor itself still works.
    page = await setup.runtime.list_instances(workflow_name="orders", after=cursor)
    assert len(page.items) == 2


@pytest.mark.parametrize(
    "arguments",
    [
        {"limit": 0},
        {"limit": 1001},
        {"limit": "10"},
        {"limit": None},
        {"state": "start"},
        {"definition_version": 1},
        {"workflow_name": ""},
        {"workflow_name": "orders", "definition_version": -1},
        {"status": "stuck"},
        {"status": "DUE"},
    ],
)
async def test_bad_arguments_are_refused_before_any_sql(
    setup: Setup, arguments: dict[str, Any]
) -> None:
    with pytest.raises(InvalidArgumentError):
        await setup.runtime.list_instances(**arguments)
    assert setup.store.calls == []


async def test_stats_refuses_a_bad_workflow_name_before_any_sql(setup: Setup) -> None:
    for bad in ("", 7):
        with pytest.raises(InvalidArgumentError):
            await setup.runtime.stats(workflow_name=bad)  # type: ignore[arg-type]
    assert setup.store.calls == []


# --- stats ---------------------------------------------------------------------------------------


async def test_stats_on_a_known_population(setup: Setup) -> None:
    await setup.create(
        *(make_instance(workflow_name="orders", current_state="new") for _ in range(5)),
        *(make_instance(workflow_name="orders", current_state="new", expires_at=NOW - k * HOUR)
          for k in (1, 3)),
        make_instance(workflow_name="orders", current_state="new", expires_at=NOW + HOUR),
        make_instance(workflow_name="orders", current_state="paid", expires_at=NOW - 9 * HOUR,
                      timeout_retry=_retry(retry_at=NOW - 2 * HOUR)),
        make_instance(workflow_name="orders", current_state="paid", expires_at=NOW - 9 * HOUR,
                      timeout_retry=_retry(retry_at=NOW + 2 * HOUR)),
        make_instance(workflow_name="orders", current_state="paid", expires_at=NOW - 9 * HOUR,
                      timeout_retry=_retry(parked_at=NOW - HOUR)),
        make_instance(workflow_name="billing", current_state="open"),
    )  # fmt: skip
    # A sweep takes the three due instances; it claims the two without retry state until
    # NOW + 5 min (the retrying one keeps its retry time).
    async with setup.persistence.transaction_runner.transaction():
        claimed = await setup.persistence.instance_store.find_expired(
            10, NOW - timedelta(minutes=1), claim_until=NOW + timedelta(minutes=5)
        )
    assert len(claimed) == 3

    assert await setup.runtime.stats() == [
        StateStats("billing", "open", 1, 0, 0, 0, 0, None),
        StateStats("orders", "new", 8, 0, 0, 0, 2, None),
        StateStats("orders", "paid", 3, 1, 2, 1, 0, NOW - 2 * HOUR),
    ]
    # Ten minutes on, the claims have ended: due again, since the claim's end.
    setup.clock.advance(minutes=10)
    claim_end = NOW + timedelta(minutes=5)
    assert await setup.runtime.stats(workflow_name="orders") == [
        StateStats("orders", "new", 8, 2, 0, 0, 2, claim_end),
        StateStats("orders", "paid", 3, 1, 2, 1, 0, NOW - 2 * HOUR),
    ]
    # Three hours on: the "new" deadline at NOW + 1h and the retry at NOW + 2h are due too.
    setup.clock.advance(hours=3)
    assert await setup.runtime.stats(workflow_name="orders") == [
        StateStats("orders", "new", 8, 3, 0, 0, 2, claim_end),
        StateStats("orders", "paid", 3, 2, 2, 1, 0, NOW - 2 * HOUR),
    ]
    assert setup.store.calls[-1] == ("stats", {"now": setup.clock.now(), "workflow_name": "orders"})
