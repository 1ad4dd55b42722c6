"""The PostgreSQL execution store beyond the conformance suite: the stored JSON and columns, the
due index, records written by a TypeScript worker, a database without migration 008, and the
due-timeout scans that skip busy instances (on both providers)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg
import pytest

from duraflows_pg_async import (
    CommandResult,
    DurableExecutionPolicy,
    WorkflowPersistenceProvider,
    create_pool,
    migrations,
    pg_workflow_providers,
)
from duraflows_pg_async._pg.queries import render_queries
from duraflows_pg_async.errors import ConfigurationError
from duraflows_pg_async.memory import (
    MemoryDatabase,
    MemoryTransactionRunner,
    MemoryWorkflowDefinitionStore,
    MemoryWorkflowExecutionStore,
    MemoryWorkflowHistoryStore,
    MemoryWorkflowInstanceStore,
)
from duraflows_pg_async.stores import PgWorkflowInstanceStore, WorkflowExecutionStore
from duraflows_pg_async.testing import make_instance
from duraflows_pg_async.testing.executions import make_execution
from duraflows_pg_async.types import CommandCheckpoint, WorkflowExecution

if TYPE_CHECKING:
    from conftest import MakeDatabase

NOW = datetime(2026, 5, 1, 10, 1, 2, 118000, tzinfo=UTC)
INSTANCE = UUID("0b7d3c8e-4f3a-4d55-9a55-3f2d9f0c1e2a")
EXECUTION = UUID("6f9619ff-8b86-4d11-b42d-00c04fc964ff")
HISTORY = UUID("1d4e8f2a-9b3c-4e5f-8a7b-6c5d4e3f2a1b")


def executions(provider: WorkflowPersistenceProvider) -> WorkflowExecutionStore:
    store = provider.execution_store
    assert store is not None
    return store


async def create(provider: WorkflowPersistenceProvider, *records: WorkflowExecution) -> None:
    async with provider.transaction_runner.transaction():
        for record in records:
            await executions(provider).create(record)


@pytest.fixture
def durable(pool: asyncpg.Pool) -> WorkflowPersistenceProvider:
    return pg_workflow_providers(pool, durable_execution=True)


# --- the stored shape ----------------------------------------------------------------------------


async def stored_row(conn: asyncpg.Connection, uuid: UUID) -> tuple[dict[str, Any], Any]:
    """The indexed columns and the parsed execution_json (``raw_connection`` has no codecs)."""
    row = await conn.fetchrow(
        "SELECT workflow_instance_uuid, idempotency_key, status, available_at, lease_until, "
        "revision, execution_json FROM workflow_executions WHERE uuid = $1",
        uuid,
    )
    assert row is not None
    columns = dict(row.items())
    return columns, json.loads(columns.pop("execution_json"))


def assert_columns_match(columns: dict[str, Any], execution: WorkflowExecution) -> None:
    assert columns == {
        "workflow_instance_uuid": execution.workflow_instance_uuid,
        "idempotency_key": execution.idempotency_key,
        "status": execution.status,
        "available_at": execution.available_at,
        "lease_until": execution.lease_until,
        "revision": execution.revision,
    }


async def test_the_stored_json_is_upstreams_shape_and_the_columns_match_it(
    durable: WorkflowPersistenceProvider, raw_connection: asyncpg.Connection
) -> None:
    instance = make_instance(uuid=INSTANCE, workflow_name="order")
    await durable.instance_store.create(instance)
    execution = make_execution(
        instance,
        uuid=EXECUTION,
        definition={"name": "order", "initialState": "open", "states": {"open": {}}},
        initial_context={"n": 1},
        journal=[
            CommandCheckpoint(
                id="0",
                name="charge",
                result=CommandResult(ok=True, code="charged"),
                context={"n": 2},
                attempts=1,
                completed_at=NOW - timedelta(seconds=1),
            )
        ],
        available_at=NOW,
        created_at=NOW - timedelta(minutes=1),
        updated_at=NOW - timedelta(microseconds=5),
    )
    await create(durable, execution)
    columns, data = await stored_row(raw_connection, EXECUTION)
    assert_columns_match(columns, execution)
    assert data == {
        "uuid": str(EXECUTION),
        "workflowInstanceUuid": str(INSTANCE),
        "workflowName": "order",
        "eventName": "pay",
        "idempotencyKey": "pay-1",
        "idempotencyFingerprint": "f:2500",
        "status": "pending",
        "revision": 0,
        "definition": {"name": "order", "initialState": "open", "states": {"open": {}}},
        "bestEffortCommands": ["notify"],
        "instanceVersion": 3,
        "fromState": "start",
        "initialContext": {"n": 1},
        "metadata": {"tenant": "acme"},
        "subject": {"user": "u-1", "roles": ["payer"]},
        "triggerMetadata": {"source": "api", "requestId": "r-9"},
        "journal": [
            {
                "id": "0",
                "name": "charge",
                "result": {"ok": True, "code": "charged"},
                "context": {"n": 2},
                "attempts": 1,
                "completedAt": "2026-05-01T10:01:01.118000Z",
            }
        ],
        "result": None,
        "attempts": 1,
        "lastError": "gateway timeout",
        "availableAt": "2026-05-01T10:01:02.118000Z",
        "leaseToken": None,
        "leaseUntil": None,
        "createdAt": "2026-05-01T10:00:02.118000Z",
        "updatedAt": "2026-05-01T10:01:02.117995Z",
        "policy": {
            "leaseDurationMs": 45000,
            "initialDelayMs": 250,
            "maxDelayMs": 300000,
            "maxAttempts": 7,
        },
        "maxOnEnterDepth": 12,
    }

    # An update moves the columns with the record.
    leased = make_execution(
        instance,
        uuid=EXECUTION,
        status="running",
        revision=1,
        lease_token="lease-1",
        lease_until=NOW + timedelta(seconds=45),
        available_at=NOW + timedelta(seconds=1),
        has_subject=False,
        subject=None,
        idempotency_fingerprint=None,
    )
    async with durable.transaction_runner.transaction():
        await executions(durable).update(leased)
    columns, data = await stored_row(raw_connection, EXECUTION)
    assert_columns_match(columns, leased)
    assert data == leased.to_json()
    assert (data["leaseToken"], data["leaseUntil"]) == ("lease-1", "2026-05-01T10:01:47.118000Z")
    assert "subject" not in data
    assert "idempotencyFingerprint" not in data


# A record as the TypeScript runtime writes it (JSON.stringify: Dates as ISO strings with
# milliseconds, undefined keys left out): no fingerprint, no subject, no rejectedBy.
UPSTREAM_RECORD: dict[str, Any] = {
    "uuid": str(EXECUTION),
    "workflowInstanceUuid": str(INSTANCE),
    "workflowName": "order",
    "eventName": "ship",
    "idempotencyKey": "ship-2026-05-01",
    "status": "running",
    "revision": 4,
    "definition": {
        "name": "order",
        "version": 3,
        "initialState": "paid",
        "states": {
            "paid": {
                "events": {"ship": {"targetState": "shipped", "commands": [{"name": "label"}]}}
            },
            "shipped": {"onEnter": {"commands": [{"name": "email"}]}},
        },
    },
    "bestEffortCommands": ["email"],
    "instanceVersion": 2,
    "fromState": "paid",
    "initialContext": {"orderId": 42, "total": 19.5},
    "metadata": {},
    "triggerMetadata": {"actor": "warehouse"},
    "journal": [
        {
            "id": "0",
            "name": "label",
            "result": {"ok": True, "code": "labelled", "metadata": {"carrier": "dhl"}},
            "context": {"orderId": 42, "total": 19.5, "label": "L-1"},
            "attempts": 3,
            "completedAt": "2026-05-01T10:00:59.007Z",
        }
    ],
    "result": None,
    "attempts": 0,
    "lastError": None,
    "availableAt": "2026-05-01T10:00:00.000Z",
    "leaseToken": "5b1e0c6a-worker-1",
    "leaseUntil": "2026-05-01T10:01:30.500Z",
    "createdAt": "2026-05-01T09:59:58.250Z",
    "updatedAt": "2026-05-01T10:01:00.500Z",
    "policy": {
        "leaseDurationMs": 30000,
        "initialDelayMs": 1000,
        "maxDelayMs": 3600000,
        "maxAttempts": 10,
    },
    "maxOnEnterDepth": 10,
}


async def test_a_record_written_by_a_typescript_worker_is_read_back(
    durable: WorkflowPersistenceProvider, raw_connection: asyncpg.Connection
) -> None:
    await durable.instance_store.create(make_instance(uuid=INSTANCE, workflow_name="order"))
    await raw_connection.execute(
        "INSERT INTO workflow_executions (uuid, workflow_instance_uuid, idempotency_key, status, "
        "available_at, lease_until, revision, execution_json) "
        "VALUES ($1, $2, $3, $4, $5::text::timestamptz, $6::text::timestamptz, $7, $8::jsonb)",
        EXECUTION,
        INSTANCE,
        UPSTREAM_RECORD["idempotencyKey"],
        UPSTREAM_RECORD["status"],
        UPSTREAM_RECORD["availableAt"],
        UPSTREAM_RECORD["leaseUntil"],
        UPSTREAM_RECORD["revision"],
        json.dumps(UPSTREAM_RECORD),
    )
    store = executions(durable)
    found = await store.find_by_uuid(EXECUTION)
    assert found is not None
    assert found == await store.find_by_key(INSTANCE, "ship-2026-05-01")
    assert found == await store.find_active(INSTANCE)
    assert (found.uuid, found.workflow_instance_uuid) == (EXECUTION, INSTANCE)
    assert (found.status, found.revision, found.attempts) == ("running", 4, 0)
    assert (found.idempotency_fingerprint, found.rejected_by, found.result) == (None, None, None)
    assert (found.subject, found.has_subject) == (None, False)
    assert found.available_at == datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    assert found.lease_until == datetime(2026, 5, 1, 10, 1, 30, 500000, tzinfo=UTC)
    assert found.created_at == datetime(2026, 5, 1, 9, 59, 58, 250000, tzinfo=UTC)
    assert found.updated_at == datetime(2026, 5, 1, 10, 1, 0, 500000, tzinfo=UTC)
    assert found.lease_token == "5b1e0c6a-worker-1"
    assert found.policy == DurableExecutionPolicy()
    assert found.max_on_enter_depth == 10
    assert found.definition == UPSTREAM_RECORD["definition"]
    assert found.initial_context == {"orderId": 42, "total": 19.5}
    assert found.trigger_metadata == {"actor": "warehouse"}
    assert found.best_effort_commands == ["email"]
    assert found.journal == [
        CommandCheckpoint(
            id="0",
            name="label",
            result=CommandResult(ok=True, code="labelled", metadata={"carrier": "dhl"}),
            context={"orderId": 42, "total": 19.5, "label": "L-1"},
            attempts=3,
            completed_at=datetime(2026, 5, 1, 10, 0, 59, 7000, tzinfo=UTC),
        )
    ]
    # Due once its lease has run out, and it can be written back at its next revision.
    assert await store.find_due(10, datetime(2026, 5, 1, 10, 1, 30, 499000, tzinfo=UTC)) == []
    assert await store.find_due(10, datetime(2026, 5, 1, 10, 1, 30, 500000, tzinfo=UTC)) == [found]
    found.revision += 1
    found.status = "completed"
    async with durable.transaction_runner.transaction():
        await store.update(found)
    assert await store.find_by_uuid(EXECUTION) == found


# --- the due index -------------------------------------------------------------------------------


def plan_nodes(plan: Any) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, depth first."""
    nodes, stack = [], [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    return nodes


async def test_find_due_is_served_by_the_due_index(pool: asyncpg.Pool) -> None:
    # 20,000 instances, each with a finished execution, and one in ten with a pending or running
    # one too, a second apart (every fifth of those leased): without a fitting index, the
    # planner would scan the table.
    await pool.execute(
        "INSERT INTO workflow_instances (uuid, workflow_name, current_state) "
        "SELECT gen_random_uuid(), 'order', 'open' FROM generate_series(1, 20000)"
    )
    await pool.execute(
        "INSERT INTO workflow_executions (uuid, workflow_instance_uuid, idempotency_key, status, "
        "available_at, lease_until, revision, execution_json) "
        "SELECT gen_random_uuid(), uuid, 'done', 'completed', $1, NULL, 3, '{}'::jsonb "
        "FROM workflow_instances",
        NOW - timedelta(days=1),
    )
    await pool.execute(
        "INSERT INTO workflow_executions (uuid, workflow_instance_uuid, idempotency_key, status, "
        "available_at, lease_until, revision, execution_json) "
        "SELECT gen_random_uuid(), uuid, 'queued', CASE WHEN m % 2 = 0 THEN 'pending' "
        "ELSE 'running' END, $1::timestamptz + (m || ' seconds')::interval, "
        "CASE WHEN m % 5 = 0 THEN $1::timestamptz + interval '1 year' END, 0, '{}'::jsonb "
        "FROM (SELECT uuid, row_number() OVER () / 10 AS m, row_number() OVER () % 10 AS r "
        "FROM workflow_instances) AS i WHERE r = 0",
        NOW,
    )
    await pool.execute("ANALYZE workflow_instances, workflow_executions")
    sql = render_queries(None).select_due_executions

    # A backlog (everything available): the due index is read in due order, no sort, no scan.
    backlog = plan_nodes(
        await pool.fetchval("EXPLAIN (FORMAT JSON) " + sql, 100, NOW + timedelta(days=30))
    )
    assert [n.get("Index Name") for n in backlog if "Index Name" in n] == [
        "workflow_executions_due_idx"
    ], backlog
    assert not [n for n in backlog if n["Node Type"] in ("Sort", "Seq Scan")], backlog

    # A generic plan too (asyncpg prepares the statement; PostgreSQL may switch after five runs).
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        generic = plan_nodes(
            await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, 100, NOW + timedelta(days=30))
        )
    assert "workflow_executions_due_idx" in [n.get("Index Name") for n in generic], generic
    assert not [n for n in generic if n["Node Type"] == "Seq Scan"], generic

    # A few due rows: the index still, never a scan of the table.
    few = plan_nodes(
        await pool.fetchval("EXPLAIN (FORMAT JSON) " + sql, 100, NOW + timedelta(seconds=5))
    )
    assert "workflow_executions_due_idx" in [n.get("Index Name") for n in few], few
    assert not [n for n in few if n["Node Type"] == "Seq Scan"], few


# --- without migration 008 -----------------------------------------------------------------------


async def test_every_method_names_migration_008_when_its_table_is_missing(
    make_database: MakeDatabase,
) -> None:
    dsn = await make_database()
    conn = await asyncpg.connect(dsn)
    try:
        await migrations.apply(conn, target="006")
    finally:
        await conn.close()
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        provider = pg_workflow_providers(pool, durable_execution=True)
        instance = make_instance()
        await provider.instance_store.create(instance)
        store = executions(provider)
        execution = make_execution(instance)
        for write in (store.create, store.update):
            with pytest.raises(ConfigurationError, match="migration 008"):
                async with provider.transaction_runner.transaction():
                    await write(make_execution(instance, revision=1))
        reads: list[Callable[[], Any]] = [
            lambda: store.find_by_uuid(execution.uuid),
            lambda: store.find_by_key(instance.uuid, "pay-1"),
            lambda: store.find_active(instance.uuid),
            lambda: store.find_due(10, NOW),
        ]
        for read in reads:
            with pytest.raises(ConfigurationError, match=r"workflow_executions.*migration 008"):
                await read()
            with pytest.raises(ConfigurationError, match="migration 008"):
                async with provider.transaction_runner.transaction():
                    await read()
        # The sweeps of a durable provider read the table too.
        with pytest.raises(ConfigurationError, match=r"find_expired.*migration 008"):
            async with provider.transaction_runner.transaction():
                await provider.instance_store.find_expired(10, NOW)
    finally:
        await pool.close()


# --- due timeouts skip busy instances ------------------------------------------------------------


Build = Callable[[bool], WorkflowPersistenceProvider]


@pytest.fixture(params=["memory", "postgres"])
def build(request: pytest.FixtureRequest) -> Build:
    """``build(skip_busy)``: a provider with an execution store and an instance store built with
    ``skip_busy``, the providers of one test sharing one database."""
    if request.param == "memory":
        database = MemoryDatabase()

        def memory(skip_busy: bool) -> WorkflowPersistenceProvider:
            return WorkflowPersistenceProvider(
                instance_store=MemoryWorkflowInstanceStore(database, skip_busy=skip_busy),
                history_store=MemoryWorkflowHistoryStore(database),
                transaction_runner=MemoryTransactionRunner(database),
                definition_store=MemoryWorkflowDefinitionStore(database),
                execution_store=MemoryWorkflowExecutionStore(database),
            )

        return memory
    pool: asyncpg.Pool = request.getfixturevalue("pool")
    request.node.user_properties.append(("postgres", True))  # counted in the summary line

    def postgres(skip_busy: bool) -> WorkflowPersistenceProvider:
        provider = pg_workflow_providers(pool, durable_execution=True)
        return WorkflowPersistenceProvider(
            instance_store=PgWorkflowInstanceStore(pool, skip_busy=skip_busy),
            history_store=provider.history_store,
            transaction_runner=provider.transaction_runner,
            definition_store=provider.definition_store,
            execution_store=provider.execution_store,
        )

    return postgres


@pytest.mark.parametrize("skip_busy", [True, False], ids=["skip_busy", "not_skip_busy"])
async def test_find_expired_leaves_out_busy_instances_before_the_limit(
    build: Build, skip_busy: bool
) -> None:
    provider = build(skip_busy)
    # Due oldest first: three busy instances (pending, running, parked), then one whose only
    # execution is completed, one with a cancelled one, and one that never had any.
    instances = [make_instance(expires_at=NOW - timedelta(hours=10 - n)) for n in range(6)]
    statuses = ["pending", "running", "parked", "completed", "cancelled"]
    async with provider.transaction_runner.transaction():
        for instance in instances:
            await provider.instance_store.create(instance)
    await create(
        provider,
        *(make_execution(i, status=s) for i, s in zip(instances, statuses, strict=False)),
    )
    free = [i.uuid for i in instances[3:]]
    everything = [i.uuid for i in instances]
    expected = free if skip_busy else everything
    for names in (None, ["conformance"]):
        async with provider.transaction_runner.transaction():
            first = await provider.instance_store.find_expired(2, NOW, workflow_names=names)
            every = await provider.instance_store.find_expired(100, NOW, workflow_names=names)
        assert [i.uuid for i in first] == expected[:2], names
        assert [i.uuid for i in every] == expected, names
    # Claiming sweeps too (last: their claims outlast the transaction).
    async with provider.transaction_runner.transaction():
        claimed = await provider.instance_store.find_expired(
            2, NOW, claim_until=NOW + timedelta(minutes=1)
        )
    assert [i.uuid for i in claimed] == expected[:2]
