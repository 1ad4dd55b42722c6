"""PostgreSQL-specific store behaviour: locking under concurrency, plans, codecs, stored shapes."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import asyncpg
import orjson
import pytest

from duraflows_pg_async import (
    CommandResult,
    HistoryRecord,
    WorkflowInstance,
    WorkflowPersistenceProvider,
    create_pool,
    pg_workflow_providers,
    register_codecs,
)
from duraflows_pg_async._pg.queries import render_queries
from duraflows_pg_async.errors import (
    ConfigurationError,
    InstanceAlreadyExistsError,
    InvalidArgumentError,
    OptimisticLockError,
)
from duraflows_pg_async.testing import make_instance

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


async def create_due(p: WorkflowPersistenceProvider, count: int, *, due: bool = True) -> list[Any]:
    instances = []
    async with p.transaction_runner.transaction():
        for i in range(count):
            offset = timedelta(minutes=-(i + 1)) if due else timedelta(days=1 + i)
            instance = make_instance(expires_at=NOW + offset)
            await p.instance_store.create(instance)
            instances.append(instance)
    return instances


async def test_two_sweepers_on_separate_connections_never_share_a_row(database: str) -> None:
    pools = [await create_pool(database, min_size=1, max_size=1) for _ in range(2)]
    try:
        sweepers = [pg_workflow_providers(p) for p in pools]
        created = await create_due(sweepers[0], 120)
        both_locked = asyncio.Event()
        arrived = 0

        async def sweep(p: WorkflowPersistenceProvider) -> set[Any]:
            nonlocal arrived
            async with p.transaction_runner.transaction():
                rows = await p.instance_store.find_expired(80, NOW)
                arrived += 1
                if arrived == 2:
                    both_locked.set()
                # Hold the locks until the other sweeper has scanned too.
                await asyncio.wait_for(both_locked.wait(), 10)
                return {r.uuid for r in rows}

        first, second = await asyncio.gather(*(sweep(p) for p in sweepers))
        assert first.isdisjoint(second)
        assert len(first) + len(second) == 120
        assert first | second == {i.uuid for i in created}
    finally:
        for p in pools:
            await p.close()


async def test_find_expired_returns_rows_in_due_order(
    providers: WorkflowPersistenceProvider,
) -> None:
    await create_due(providers, 5)
    await create_due(providers, 3, due=False)
    async with providers.transaction_runner.transaction():
        rows = await providers.instance_store.find_expired(100, NOW)
    due_times = [r.expires_at for r in rows if r.expires_at is not None]
    assert len(due_times) == len(rows) == 5
    assert due_times == sorted(due_times)


def plan_nodes(plan: Any) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, depth first."""
    nodes, stack = [], [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    return nodes


async def test_find_expired_uses_the_due_index(pool: asyncpg.Pool) -> None:
    # 5,000 instances with deadlines a minute apart and 5,000 without: a sequential scan would
    # be the planner's choice if no index fitted.
    await pool.execute(
        "INSERT INTO workflow_instances (uuid, workflow_name, current_state, expires_at) "
        "SELECT gen_random_uuid(), 'order', 'open', $1::timestamptz + (g || ' minutes')::interval "
        "FROM generate_series(1, 5000) g",
        NOW,
    )
    await pool.execute(
        "INSERT INTO workflow_instances (uuid, workflow_name, current_state) "
        "SELECT gen_random_uuid(), 'order', 'done' FROM generate_series(1, 5000)"
    )
    await pool.execute("ANALYZE workflow_instances")
    sql = "EXPLAIN (FORMAT JSON) " + render_queries(None).find_expired

    # A backlog (every deadline passed): the due index is read in due order, no sort, no scan
    # of the whole table, so a batch costs the same however large the backlog grows.
    backlog = plan_nodes(await pool.fetchval(sql, 100, NOW + timedelta(days=10)))
    scans = [n for n in backlog if "Index Name" in n]
    assert [n["Index Name"] for n in scans] == ["workflow_instances_timeout_due_idx"], backlog
    assert not [n for n in backlog if n["Node Type"] in ("Sort", "Seq Scan")], backlog

    # The claiming form of the sweep reads the same index in the same way.
    claim_sql = "EXPLAIN (FORMAT JSON) " + render_queries(None).claim_expired
    claim = plan_nodes(
        await pool.fetchval(claim_sql, 100, NOW + timedelta(days=10), NOW + timedelta(days=11))
    )
    assert "workflow_instances_timeout_due_idx" in [n.get("Index Name") for n in claim], claim
    assert not [n for n in claim if n["Node Type"] == "Seq Scan"], claim

    # A few due rows: any index may serve them, but never a sequential scan.
    few = plan_nodes(await pool.fetchval(sql, 100, NOW + timedelta(hours=1)))
    assert [n for n in few if "Index Name" in n], few
    assert not [n for n in few if n["Node Type"] == "Seq Scan"], few


async def test_concurrent_stale_updates_raise_optimistic_lock_errors(database: str) -> None:
    pool = await create_pool(database, min_size=8, max_size=8)
    try:
        p = pg_workflow_providers(pool)
        instance = make_instance()
        await p.instance_store.create(instance)
        # Every writer has read version 0 before any of them writes.
        all_read = asyncio.Barrier(8)

        async def writer(n: int) -> str:
            copy = await p.instance_store.find_by_uuid(instance.uuid)
            assert copy is not None
            await all_read.wait()
            copy.version += 1
            copy.context = {"writer": n}
            try:
                await p.instance_store.update(copy)
            except OptimisticLockError as exc:
                assert exc.expected_version == 0
                assert str(instance.uuid) in str(exc)
                return "conflict"
            return "won"

        outcomes = await asyncio.gather(*(writer(n) for n in range(8)))
        assert sorted(outcomes) == ["conflict"] * 7 + ["won"]
        stored = await p.instance_store.find_by_uuid(instance.uuid)
        assert stored is not None
        assert stored.version == 1
    finally:
        await pool.close()


async def test_locked_read_modify_write_loses_no_update(database: str) -> None:
    pool = await create_pool(database, min_size=6, max_size=6)
    try:
        p = pg_workflow_providers(pool)
        instance = make_instance(context={"count": 0})
        await p.instance_store.create(instance)

        async def increment() -> None:
            async with p.transaction_runner.transaction():
                row = await p.instance_store.lock_by_uuid(instance.uuid)
                assert row is not None
                row.version += 1
                row.context = {"count": row.context["count"] + 1}
                await p.instance_store.update(row)

        await asyncio.gather(*(increment() for _ in range(30)))
        stored = await p.instance_store.find_by_uuid(instance.uuid)
        assert stored is not None
        assert (stored.version, stored.context) == (30, {"count": 30})
    finally:
        await pool.close()


async def test_duplicate_create_is_a_clear_error(providers: WorkflowPersistenceProvider) -> None:
    instance = make_instance()
    await providers.instance_store.create(instance)
    with pytest.raises(InstanceAlreadyExistsError, match=str(instance.uuid)) as caught:
        await providers.instance_store.create(instance)
    assert isinstance(caught.value.__cause__, asyncpg.UniqueViolationError)


async def test_history_rows_of_one_transaction_read_back_in_write_order(
    providers: WorkflowPersistenceProvider,
) -> None:
    instance = make_instance()
    await providers.instance_store.create(instance)
    written = []
    async with providers.transaction_runner.transaction():
        for n in range(25):
            written.append(
                await providers.history_store.append(
                    HistoryRecord(instance.uuid, f"s{n}", "onEnter", f"s{n + 1}", "success")
                )
            )
    rows = await providers.history_store.find_by_instance_uuid(instance.uuid, limit=100)
    assert [r.uuid for r in rows] == written[::-1]
    assert [r.from_state for r in rows] == [f"s{n}" for n in reversed(range(25))]


async def test_stored_json_shapes_match_the_typescript_adapter(
    providers: WorkflowPersistenceProvider, raw_connection: asyncpg.Connection
) -> None:
    instance = make_instance(context={"items": [1, 2.5, "x", None, True]}, metadata={"tenant": "a"})
    await providers.instance_store.create(instance)
    await providers.history_store.append(
        HistoryRecord(
            instance.uuid,
            "open",
            "pay",
            "paid",
            "failure",
            command_results=[CommandResult(ok=True), CommandResult(ok=False, code="DECLINED")],
            error_message="DECLINED",
            trigger_metadata={"actorUuid": "u-1", "type": "user"},
        )
    )
    row = await raw_connection.fetchrow(
        "SELECT command_results_json::text AS results, trigger_metadata_json::text AS meta "
        "FROM workflow_history"
    )
    assert row is not None
    assert json.loads(row["results"]) == [{"ok": True}, {"ok": False, "code": "DECLINED"}]
    assert json.loads(row["meta"]) == {"actorUuid": "u-1", "type": "user"}
    stored = await raw_connection.fetchval("SELECT context_json::text FROM workflow_instances")
    assert json.loads(stored) == {"items": [1, 2.5, "x", None, True]}


async def test_rows_read_back_give_upstreams_json_form(
    providers: WorkflowPersistenceProvider,
) -> None:
    created = NOW.replace(microsecond=123456)
    instance = make_instance(
        context={"n": 1}, created_at=created, expires_at=NOW, definition_version=1
    )
    await providers.instance_store.create(instance)
    await providers.history_store.append(
        HistoryRecord(
            instance.uuid,
            None,
            "pay",
            "paid",
            "success",
            [CommandResult(ok=True)],
            definition_version=1,
        )
    )
    stored = await providers.instance_store.find_by_uuid(instance.uuid)
    [record] = await providers.history_store.find_by_instance_uuid(instance.uuid)
    assert stored is not None
    data = json.loads(json.dumps(stored.to_json()))
    assert list(data) == [
        "uuid",
        "workflowName",
        "currentState",
        "version",
        "definitionVersion",
        "expiresAt",
        "timeoutRetry",
        "lastTransitionAt",
        "context",
        "metadata",
        "createdAt",
        "updatedAt",
        "claimedUntil",
    ]
    assert data["uuid"] == str(instance.uuid)
    assert data["createdAt"] == "2026-06-01T12:00:00.123456Z"
    assert data["expiresAt"] == "2026-06-01T12:00:00.000000Z"
    assert WorkflowInstance.from_json(data) == stored
    history = json.loads(json.dumps(record.to_json()))
    assert sorted(history) == sorted(
        [
            "workflowInstanceUuid",
            "fromState",
            "eventName",
            "toState",
            "outcome",
            "commandResultsJson",
            "triggerMetadata",
            "definitionVersion",
            "createdAt",
            "uuid",
        ]
    )
    assert history["commandResultsJson"] == [{"ok": True}]
    assert history["createdAt"].endswith("Z")
    assert HistoryRecord.from_json(history) == record


@pytest.mark.parametrize(
    ("context", "fragment"),
    [
        ({"price": float("nan")}, "['price']: nan is not a JSON number"),
        ({"a": [1, {"b": float("inf")}]}, "['a'][1]['b']"),
        ({"tags": {"x", "y"}}, "['tags']: set value"),
        ({"blob": b"\x00\x01"}, "['blob']: bytes value"),
        ({"when": datetime.now(UTC)}, "['when']: datetime value"),
        ({1: "int key"}, "key 1 is a int"),
        ({"text": "nul\x00byte"}, "['text']: strings stored as jsonb cannot contain NUL"),
        ({"text": "lone \ud800 surrogate"}, "unpaired surrogate"),
    ],
)
async def test_non_json_context_is_refused_with_its_key_path(
    providers: WorkflowPersistenceProvider, pool: asyncpg.Pool, context: Any, fragment: str
) -> None:
    instance = make_instance(context=context)
    with pytest.raises(InvalidArgumentError) as caught:
        async with providers.transaction_runner.transaction():
            await providers.instance_store.create(make_instance())
            await providers.instance_store.create(instance)
    assert fragment in str(caught.value)
    assert "context" in str(caught.value)
    assert await pool.fetchval("SELECT count(*) FROM workflow_instances") == 0


async def test_very_deep_nesting_is_refused(providers: WorkflowPersistenceProvider) -> None:
    deep: Any = "leaf"
    for _ in range(500):
        deep = {"d": deep}
    with pytest.raises(InvalidArgumentError, match="nested deeper than"):
        await providers.instance_store.create(make_instance(context=deep))


async def test_large_payload_round_trips(providers: WorkflowPersistenceProvider) -> None:
    big = {"rows": [{"id": n, "name": "x" * 100} for n in range(20_000)]}
    instance = make_instance(context=big)
    await providers.instance_store.create(instance)
    stored = await providers.instance_store.find_by_uuid(instance.uuid)
    assert stored is not None
    assert stored.context == big


@pytest.mark.parametrize("bad", ["not-a-uuid", "", "123", 42, None])
async def test_malformed_uuids_are_refused_before_sql(
    providers: WorkflowPersistenceProvider, bad: Any
) -> None:
    with pytest.raises(InvalidArgumentError, match="instance_uuid"):
        await providers.instance_store.find_by_uuid(bad)
    with pytest.raises(InvalidArgumentError, match="instance_uuid"):
        await providers.history_store.find_by_instance_uuid(bad)


async def test_uuid_strings_in_any_case_are_accepted(
    providers: WorkflowPersistenceProvider,
) -> None:
    instance = make_instance()
    await providers.instance_store.create(instance)
    found = await providers.instance_store.find_by_uuid(str(instance.uuid).upper())
    assert found is not None
    assert found.uuid == instance.uuid


async def test_naive_datetimes_are_refused(
    providers: WorkflowPersistenceProvider, pool: asyncpg.Pool
) -> None:
    with pytest.raises(InvalidArgumentError, match="expires_at must be timezone-aware"):
        await providers.instance_store.create(make_instance(expires_at=datetime(2026, 1, 1)))
    with pytest.raises(InvalidArgumentError, match="now must be timezone-aware"):
        async with providers.transaction_runner.transaction():
            await providers.instance_store.find_expired(10, datetime(2026, 1, 1))
    assert await pool.fetchval("SELECT count(*) FROM workflow_instances") == 0


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10", True])
async def test_bad_limits_are_refused(providers: WorkflowPersistenceProvider, bad: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="limit"):
        await providers.instance_store.find_parked_timeouts(limit=bad)
    with pytest.raises(InvalidArgumentError, match="limit"):
        await providers.history_store.find_by_instance_uuid(uuid4(), limit=bad)


async def test_pool_without_codecs_gets_an_error_naming_register_codecs(database: str) -> None:
    plain = await asyncpg.create_pool(database, min_size=1, max_size=2)
    try:
        p = pg_workflow_providers(plain)
        instance = make_instance()
        with pytest.raises(ConfigurationError, match="register_codecs"):
            await p.instance_store.create(instance)
        await plain.execute(
            "INSERT INTO workflow_instances (uuid, workflow_name, current_state) "
            "VALUES ($1, 'w', 's')",
            instance.uuid,
        )
        with pytest.raises(ConfigurationError, match="register_codecs"):
            await p.instance_store.find_by_uuid(instance.uuid)
    finally:
        await plain.close()


async def test_register_codecs_on_your_own_pool_with_orjson(database: str) -> None:
    calls: list[str] = []

    async def init(conn: asyncpg.Connection) -> None:
        await register_codecs(conn, json_dumps=orjson.dumps, json_loads=orjson.loads)
        calls.append("init")

    own = await asyncpg.create_pool(database, min_size=1, max_size=1, init=init)
    try:
        p = pg_workflow_providers(own)
        instance = make_instance(context={"é": [1, {"n": None}]})
        await p.instance_store.create(instance)
        stored = await p.instance_store.find_by_uuid(instance.uuid)
        assert stored is not None
        assert stored.context == {"é": [1, {"n": None}]}
        assert calls == ["init"]
    finally:
        await own.close()


async def test_create_pool_calls_the_users_init_after_the_codecs(database: str) -> None:
    seen: list[object] = []

    async def init(conn: asyncpg.Connection) -> None:
        seen.append(await conn.fetchval("SELECT '{\"a\": 1}'::jsonb"))

    pool = await create_pool(database, min_size=1, max_size=1, init=init)
    try:
        assert seen == [{"a": 1}]
    finally:
        await pool.close()


async def test_create_pool_rejects_non_callables() -> None:
    with pytest.raises(InvalidArgumentError, match="json_dumps"):
        await create_pool("postgresql://unused", json_dumps="orjson")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="init"):
        await create_pool("postgresql://unused", init=42)  # type: ignore[arg-type]


async def test_providers_in_a_named_schema(pool: asyncpg.Pool) -> None:
    from duraflows_pg_async.migrations import generate_migration_sql

    await pool.execute(generate_migration_sql(schema="tenant_a").up)
    tenant = pg_workflow_providers(pool, schema="tenant_a")
    default = pg_workflow_providers(pool)
    instance = make_instance()
    await tenant.instance_store.create(instance)
    await tenant.history_store.append(HistoryRecord(instance.uuid, "a", "go", "b", "success"))
    assert await tenant.instance_store.find_by_uuid(instance.uuid) is not None
    assert await default.instance_store.find_by_uuid(instance.uuid) is None
    assert await pool.fetchval("SELECT count(*) FROM tenant_a.workflow_history") == 1


@pytest.mark.parametrize("schema", ["a;drop table x", "1abc", "x" * 64, "", 'a"b'])
def test_injection_like_schema_names_are_refused(pool: asyncpg.Pool, schema: str) -> None:
    with pytest.raises(InvalidArgumentError, match="schema"):
        pg_workflow_providers(pool, schema=schema)
