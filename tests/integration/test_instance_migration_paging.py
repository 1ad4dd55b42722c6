"""migrate_instances over many candidates: pages of find_instance_uuids, limit and cursor, state
filters, a listing that fails or misbehaves; on both providers (``any_persistence``). Also the
plans PostgreSQL uses for find_instance_uuids, and the migration's span."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import asyncpg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from duraflows_pg_async import (
    CommandRegistry,
    DefinitionRegistry,
    Event,
    State,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
    __version__,
    memory_workflow_providers,
)
from duraflows_pg_async._core import tracing as _tracing
from duraflows_pg_async._pg.queries import render_queries
from duraflows_pg_async.errors import MigrationInterruptedError, WorkflowError
from duraflows_pg_async.stores import WorkflowInstanceStore
from duraflows_pg_async.testing import make_instance
from duraflows_pg_async.types import MigratedInstance, MigrationResult, SkippedInstance

NOW = datetime(2026, 6, 1, tzinfo=UTC)
TO_V2: dict[str, Any] = {"from_version": 1, "to_version": 2}

TICKET_V1 = WorkflowDefinition(
    name="ticket",
    initial_state="new",
    states={
        "new": State(events={"Submit": Event(target_state="review")}),
        "review": State(events={"Close": Event(target_state="closed")}),
        "closed": State(),
    },
)
# Version 2 has no "review": instances there are skipped unless mapped.
TICKET_V2 = WorkflowDefinition(
    name="ticket",
    version=2,
    initial_state="new",
    states={
        "new": State(events={"Submit": Event(target_state="checking")}),
        "checking": State(events={"Close": Event(target_state="closed")}),
        "closed": State(),
    },
)

# A cursor below every uuid the tests create.
FIRST_UUID = UUID("00000000-0000-4000-8000-000000000000")

Lister = Callable[[int, dict[str, Any]], Awaitable[list[Any]]]


class FixedClock:
    def now(self) -> datetime:
        return NOW


class ListingStore:
    """An instance store whose find_instance_uuids is recorded, and replaced when asked:
    ``lister(call_number, arguments)`` answers instead (``self.inner`` is the real store)."""

    def __init__(self, inner: WorkflowInstanceStore) -> None:
        self.inner = inner
        self.calls: list[dict[str, Any]] = []
        self.lister: Lister | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def find_instance_uuids(self, **arguments: Any) -> list[Any]:
        self.calls.append(arguments)
        if self.lister is not None:
            return await self.lister(len(self.calls), arguments)
        return await self.inner.find_instance_uuids(**arguments)


class Deploys:
    """The version 2 deploy of ``ticket`` over a store that lists as ``ListingStore`` does."""

    def __init__(self, persistence: WorkflowPersistenceProvider) -> None:
        self.store = ListingStore(persistence.instance_store)
        self.persistence = dataclasses.replace(
            persistence, instance_store=cast(WorkflowInstanceStore, self.store)
        )
        self.v1 = self.runtime(TICKET_V1)
        self.v2 = self.runtime(TICKET_V2)

    def runtime(self, definition: WorkflowDefinition) -> WorkflowRuntime:
        definitions = DefinitionRegistry()
        definitions.register(definition)
        return WorkflowRuntime(
            definitions=definitions,
            commands=CommandRegistry(),
            persistence=self.persistence,
            clock=FixedClock(),
        )

    async def seed(self, count: int, state: str = "new") -> list[UUID]:
        """``count`` version 1 instances in ``state``, in one transaction; their uuids, sorted."""
        await self.v1.initialize()
        created = [
            make_instance(workflow_name="ticket", current_state=state, definition_version=1)
            for _ in range(count)
        ]
        async with self.persistence.transaction_runner.transaction():
            for instance in created:
                await self.persistence.instance_store.create(instance)
        return sorted(instance.uuid for instance in created)

    async def version_of(self, instance_uuid: UUID) -> int | None:
        found = await self.persistence.instance_store.find_by_uuid(instance_uuid)
        assert found is not None
        return found.definition_version


@pytest.fixture
def deploys(any_persistence: WorkflowPersistenceProvider) -> Deploys:
    return Deploys(any_persistence)


def uuids(result: MigrationResult) -> list[UUID]:
    return [m.uuid for m in result.migrated]


# --- pages ---------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_large_run_pages_through_every_candidate(deploys: Deploys) -> None:
    seeded = await deploys.seed(205)
    result = await deploys.v2.migrate_instances("ticket", **TO_V2)

    assert uuids(result) == seeded  # ascending uuid order, each once
    assert (result.skipped, result.failed, result.next_cursor) == ([], [], None)
    # Pages of 100, each after the last uuid of the one before, until an empty one.
    assert [(c["limit"], c["after_uuid"]) for c in deploys.store.calls] == [
        (100, None),
        (100, seeded[99]),
        (100, seeded[199]),
        (100, seeded[204]),
    ]
    versions = await deploys.v2.list_definition_versions("ticket")
    assert [(v.version, v.active_instances) for v in versions] == [(1, 0), (2, 205)]


async def test_limit_stops_early_and_a_later_call_goes_on(deploys: Deploys) -> None:
    seeded = await deploys.seed(120)
    first = await deploys.v2.migrate_instances("ticket", **TO_V2, limit=50)
    assert uuids(first) == seeded[:50]
    assert first.next_cursor == seeded[49]
    second = await deploys.v2.migrate_instances("ticket", **TO_V2, limit=100)
    assert uuids(second) == seeded[50:]
    assert second.next_cursor is None


async def test_a_cursor_loop_examines_each_instance_once(deploys: Deploys) -> None:
    reviewing = await deploys.seed(60, "review")  # no mapping: skipped, and stay on version 1
    fresh = await deploys.seed(70)
    seen: list[UUID] = []
    calls = 0
    cursor: UUID | None = None
    while True:
        batch = await deploys.v2.migrate_instances("ticket", **TO_V2, limit=25, cursor=cursor)
        seen += uuids(batch) + [s.uuid for s in batch.skipped]
        calls += 1
        cursor = batch.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted(reviewing + fresh)
    assert len(set(seen)) == len(seen) == 130
    assert calls == 6  # 25 x 5, then the 5 left


async def test_the_cursor_is_set_when_the_limit_falls_on_the_last_candidate(
    deploys: Deploys,
) -> None:
    seeded = await deploys.seed(5)
    first = await deploys.v2.migrate_instances("ticket", **TO_V2, limit=5)
    assert first.next_cursor == seeded[-1]
    second = await deploys.v2.migrate_instances(
        "ticket", **TO_V2, limit=5, cursor=str(first.next_cursor)
    )
    assert second == MigrationResult(dry_run=False)


async def test_a_dry_run_follows_the_cursor(deploys: Deploys) -> None:
    seeded = await deploys.seed(30)
    first = await deploys.v2.migrate_instances("ticket", **TO_V2, dry_run=True, limit=10)
    second = await deploys.v2.migrate_instances(
        "ticket", **TO_V2, dry_run=True, limit=10, cursor=first.next_cursor
    )
    assert uuids(first) == seeded[:10]
    assert uuids(second) == seeded[10:20]
    assert await deploys.version_of(seeded[0]) == 1


async def test_explicit_uuids_are_taken_once_and_capped_by_limit(deploys: Deploys) -> None:
    a, b = await deploys.seed(2)
    result = await deploys.v2.migrate_instances(
        "ticket", **TO_V2, instance_uuids=[b, b, a], limit=1
    )
    assert uuids(result) == [b]
    assert result.next_cursor is None  # a cursor is for listing only
    assert deploys.store.calls == []  # explicit uuids are not listed


# --- state filters -----------------------------------------------------------------------------


async def test_filtered_out_instances_are_not_even_candidates(deploys: Deploys) -> None:
    reviewing = await deploys.seed(5, "review")
    fresh = await deploys.seed(5)
    result = await deploys.v2.migrate_instances("ticket", **TO_V2, exclude_states=["review"])
    assert uuids(result) == fresh
    assert result.skipped == []
    assert deploys.store.calls[0]["exclude_states"] == ["review"]
    for instance_uuid in reviewing:
        assert await deploys.version_of(instance_uuid) == 1


async def test_filtered_out_instances_do_not_count_against_limit(deploys: Deploys) -> None:
    await deploys.seed(150, "review")
    fresh = await deploys.seed(3)
    result = await deploys.v2.migrate_instances("ticket", **TO_V2, states=["new"], limit=3)
    assert uuids(result) == fresh
    assert result.skipped == []


async def test_explicit_uuids_in_a_filtered_out_state_are_skipped(deploys: Deploys) -> None:
    (reviewing,) = await deploys.seed(1, "review")
    (fresh,) = await deploys.seed(1)
    result = await deploys.v2.migrate_instances(
        "ticket", **TO_V2, instance_uuids=[reviewing, fresh], exclude_states=["review"]
    )
    assert result.skipped == [
        SkippedInstance(reviewing, 'state "review" is excluded by the state filter')
    ]
    assert uuids(result) == [fresh]


async def test_a_store_that_ignores_the_state_hints(deploys: Deploys) -> None:
    (reviewing,) = await deploys.seed(1, "review")
    (fresh,) = await deploys.seed(1)

    async def no_hints(call: int, arguments: dict[str, Any]) -> list[Any]:
        return await deploys.store.inner.find_instance_uuids(
            **{**arguments, "states": None, "exclude_states": None}
        )

    deploys.store.lister = no_hints
    result = await deploys.v2.migrate_instances("ticket", **TO_V2, states=["new", "closed"])
    assert uuids(result) == [fresh]
    assert result.skipped == [
        SkippedInstance(reviewing, 'state "review" is excluded by the state filter')
    ]


# --- a listing that fails or misbehaves --------------------------------------------------------


async def test_a_failed_listing_interrupts_with_what_was_done(deploys: Deploys) -> None:
    seeded = await deploys.seed(150)

    async def lose_connection(call: int, arguments: dict[str, Any]) -> list[Any]:
        if call == 2:
            raise ConnectionResetError("connection lost")
        return await deploys.store.inner.find_instance_uuids(**arguments)

    deploys.store.lister = lose_connection
    with pytest.raises(MigrationInterruptedError) as caught:
        await deploys.v2.migrate_instances("ticket", **TO_V2)

    error = caught.value
    assert str(error) == (
        'migrate_instances of workflow "ticket" was interrupted after examining 100 '
        f"candidate(s): connection lost; resume with cursor={seeded[99]}"
    )
    assert isinstance(error.__cause__, ConnectionResetError)
    assert (error.workflow_name, error.examined) == ("ticket", 100)
    assert uuids(error.result) == seeded[:100]
    assert error.result.next_cursor == seeded[99]

    deploys.store.lister = None
    rest = await deploys.v2.migrate_instances("ticket", **TO_V2, cursor=error.result.next_cursor)
    assert uuids(rest) == seeded[100:]
    assert rest.next_cursor is None


async def test_a_page_that_does_not_advance_interrupts(deploys: Deploys) -> None:
    (a,) = await deploys.seed(1)

    async def stuck(call: int, arguments: dict[str, Any]) -> list[Any]:
        return [a]

    deploys.store.lister = stuck
    with pytest.raises(MigrationInterruptedError, match=f"does not advance past {a}") as caught:
        await deploys.v2.migrate_instances("ticket", **TO_V2)
    assert caught.value.examined == 1
    assert caught.value.result.migrated == [MigratedInstance(a, "new", "new")]
    assert caught.value.result.next_cursor == a


async def test_a_page_entry_that_is_not_a_uuid_interrupts(deploys: Deploys) -> None:
    await deploys.seed(1)

    async def text(call: int, arguments: dict[str, Any]) -> list[Any]:
        return ["not a uuid"]

    deploys.store.lister = text
    with pytest.raises(MigrationInterruptedError, match="which is not a UUID") as caught:
        await deploys.v2.migrate_instances("ticket", **TO_V2, cursor=FIRST_UUID)
    assert (caught.value.examined, caught.value.result.next_cursor) == (0, FIRST_UUID)


async def test_rows_beyond_the_page_asked_for_are_dropped(deploys: Deploys) -> None:
    seeded = await deploys.seed(10)

    async def too_many(call: int, arguments: dict[str, Any]) -> list[Any]:
        return await deploys.store.inner.find_instance_uuids(**{**arguments, "limit": 1000})

    deploys.store.lister = too_many
    result = await deploys.v2.migrate_instances("ticket", **TO_V2, limit=3)
    assert uuids(result) == seeded[:3]
    assert result.next_cursor == seeded[2]


async def test_a_store_that_cannot_list_needs_explicit_uuids(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    class NoListing:
        def __init__(self, inner: WorkflowInstanceStore) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            if name == "find_instance_uuids":
                raise AttributeError(name)
            return getattr(self.inner, name)

    deploys = Deploys(any_persistence)
    (a,) = await deploys.seed(1)
    persistence = dataclasses.replace(
        any_persistence,
        instance_store=cast(WorkflowInstanceStore, NoListing(any_persistence.instance_store)),
    )
    definitions = DefinitionRegistry()
    definitions.register(TICKET_V2)
    runtime = WorkflowRuntime(
        definitions=definitions, commands=CommandRegistry(), persistence=persistence
    )
    with pytest.raises(WorkflowError, match="needs an instance store with find_instance_uuids"):
        await runtime.migrate_instances("ticket", **TO_V2)
    assert await deploys.version_of(a) == 1
    result = await runtime.migrate_instances("ticket", **TO_V2, instance_uuids=[a])
    assert uuids(result) == [a]


# --- PostgreSQL's plans ------------------------------------------------------------------------


def plan_nodes(plan: Any) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, depth first."""
    nodes, stack = [], [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    return nodes


async def test_find_instance_uuids_is_served_by_an_index(pool: asyncpg.Pool) -> None:
    # 40,000 instances over ten workflows and two versions (a page of one version is 1 row in
    # 20), and 300 of a rare workflow (1 row in 130).
    await pool.execute(
        "INSERT INTO workflow_instances (uuid, workflow_name, current_state, definition_version) "
        "SELECT gen_random_uuid(), 'wf' || (g % 10), "
        "CASE WHEN g % 3 = 0 THEN 'done' ELSE 'open' END, 1 + (g / 10) % 2 "
        "FROM generate_series(1, 40000) g"
    )
    await pool.execute(
        "INSERT INTO workflow_instances (uuid, workflow_name, current_state, definition_version) "
        "SELECT gen_random_uuid(), 'rare', 'open', 1 FROM generate_series(1, 300)"
    )
    await pool.execute("ANALYZE workflow_instances")
    queries = render_queries(None)
    middle = UUID(int=2**127)
    version_index = "workflow_instances_definition_version_idx"
    for workflow in ("wf1", "rare"):
        for sql, args in (
            (queries.find_instance_uuids, (workflow, 1, 100, None, None)),
            (queries.find_instance_uuids_after, (workflow, 1, 100, None, None, middle)),
            (queries.find_instance_uuids, (workflow, 1, 100, ["open"], None)),
            (queries.find_instance_uuids_after, (workflow, 1, 100, None, ["done"], middle)),
        ):
            nodes = plan_nodes(await pool.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args))
            indexes = {n["Index Name"] for n in nodes if "Index Name" in n}
            assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
            # A common version is read in uuid order from 101's (workflow_name, uuid) index (or
            # the primary key), up to the page; a rare workflow's rows from 006's index or 101's,
            # then sorted.
            if workflow == "rare":
                assert len(indexes) == 1, nodes
                assert indexes <= {version_index, "workflow_instances_workflow_uuid_idx"}, nodes
            else:
                assert indexes <= {
                    "workflow_instances_pkey",
                    "workflow_instances_workflow_uuid_idx",
                    version_index,
                }, nodes
                assert indexes, nodes


# --- the span ----------------------------------------------------------------------------------


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(_tracing, "_tracer", provider.get_tracer(_tracing.TRACER_NAME, __version__))
    yield exporter
    provider.shutdown()


async def test_migrate_instances_has_a_span(exporter: InMemorySpanExporter) -> None:
    deploys = Deploys(memory_workflow_providers())
    await deploys.seed(2)
    (reviewing,) = await deploys.seed(1, "review")
    await deploys.v2.migrate_instances("ticket", **TO_V2)
    (span,) = [s for s in exporter.get_finished_spans() if s.name == _tracing.MIGRATE_INSTANCES]
    assert dict(span.attributes or {}) == {
        "duraflows.workflow.name": "ticket",
        "duraflows.migration.from_version": 1,
        "duraflows.migration.to_version": 2,
        "duraflows.migration.dry_run": False,
        "duraflows.migration.migrated": 2,
        "duraflows.migration.skipped": 1,
        "duraflows.migration.failed": 0,
    }
    assert span.status.status_code is StatusCode.UNSET
    assert await deploys.version_of(reviewing) == 1

    async def fail(call: int, arguments: dict[str, Any]) -> list[Any]:
        raise ConnectionResetError("gone")

    deploys.store.lister = fail
    exporter.clear()
    with pytest.raises(MigrationInterruptedError):
        await deploys.v2.migrate_instances("ticket", **TO_V2)
    (failed,) = exporter.get_finished_spans()
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == (
        "duraflows_pg_async.errors.MigrationInterruptedError"
    )
