"""Wake-ups: workers sleep until the nearest due time and are woken by LISTEN/NOTIFY of writes
that commit; the listener reconnects; without wake-ups the workers poll.

Every worker here polls every 30 seconds: what fires within the tests' bounds (far below that)
was woken. The bounds are only last resorts; each test waits on what it observes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from helpers import reminder, wait_until

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    DefinitionRegistry,
    DurableExecutionPolicy,
    Event,
    ExecutionContext,
    ExecutionWorker,
    State,
    TimeoutWorker,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
    pg_workflow_providers,
)
from duraflows_pg_async._pg.queries import render_queries, wakeup_channel
from duraflows_pg_async._pg.wakeups import PgWakeups
from duraflows_pg_async.errors import InvalidArgumentError

ASLEEP = 30.0  # every worker's poll_interval: what happens sooner was woken
BOUND = 10.0  # the last-resort bound of a wait
# Fires 0.3 s after the instance enters "waiting": after the worker went to sleep.
SOON = reminder("soon", minutes=0.3 / 60)
# Fires in an hour: a deadline no worker here sleeps to.
LATER = reminder("later", minutes=60)
CHARGE = WorkflowDefinition(
    name="charge",
    initial_state="new",
    states={
        "new": State(
            events={"charge": Event(target_state="charged", commands=(CommandRef("pay"),))}
        ),
        "charged": State(),
    },
)


class Fired:
    """A runtime whose commands set an event per instance (per its context's ``tag``) when they
    run; ``create`` makes an instance with a fresh tag."""

    def __init__(
        self,
        persistence: WorkflowPersistenceProvider,
        *,
        policy: DurableExecutionPolicy | None = None,
    ) -> None:
        self.done: dict[str, asyncio.Event] = {}
        # Attempts of "pay" to fail before one succeeds.
        self.failures = 0
        definitions = DefinitionRegistry()
        for definition in (SOON, LATER, CHARGE):
            definitions.register(definition)
        commands = CommandRegistry()

        async def ran(subject: Any, ctx: ExecutionContext) -> None:
            self.event(ctx.context["tag"]).set()

        async def pay(subject: Any, ctx: ExecutionContext) -> None:
            if self.failures > 0:
                self.failures -= 1
                raise RuntimeError("card declined")
            await ran(subject, ctx)

        commands.register("send", ran)
        commands.register("pay", pay)
        self.runtime = WorkflowRuntime(
            definitions=definitions,
            commands=commands,
            persistence=persistence,
            durable_execution=policy,
        )

    def event(self, tag: str) -> asyncio.Event:
        return self.done.setdefault(tag, asyncio.Event())

    async def create(self, workflow_name: str) -> tuple[UUID, asyncio.Event]:
        tag = str(uuid4())
        instance = await self.runtime.create_instance(workflow_name, context={"tag": tag})
        return instance.uuid, self.event(tag)


def waker_of(persistence: WorkflowPersistenceProvider) -> PgWakeups:
    assert isinstance(persistence.wakeups, PgWakeups)
    return persistence.wakeups


async def asleep(worker: TimeoutWorker | ExecutionWorker, waker: PgWakeups, polls: int) -> None:
    """Until the listener is up and the worker polled ``polls`` times (the first poll, then the
    one every (re)connect wakes it for): from then on it sleeps ASLEEP seconds unless woken."""

    async def ready() -> bool:
        count = worker.stats.sweeps if isinstance(worker, TimeoutWorker) else worker.stats.polls
        return waker.listening and count >= polls

    await wait_until(ready, within=BOUND, what="the worker asleep with its listener up")


@pytest.fixture
async def notices(database: str) -> AsyncIterator[tuple[asyncpg.Connection, list[str]]]:
    """A connection of its own listening on the default schema's channel, and what it heard."""
    conn = await asyncpg.connect(database)
    heard: list[str] = []
    await conn.add_listener(wakeup_channel(None), lambda *args: heard.append(args[3]))
    try:
        yield conn, heard
    finally:
        await conn.close()


async def running(worker: TimeoutWorker | ExecutionWorker) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(worker.run())


async def test_a_sleeping_worker_fires_a_timeout_created_after_it_fell_asleep(
    pool: asyncpg.Pool,
) -> None:
    fired = Fired(pg_workflow_providers(pool))
    await fired.runtime.initialize()
    worker = TimeoutWorker(fired.runtime, poll_interval=ASLEEP)
    task = await running(worker)
    try:
        await asleep(worker, waker_of(fired.runtime.persistence), polls=2)
        instance_uuid, done = await fired.create("soon")
        await asyncio.wait_for(done.wait(), BOUND)
        # The command ran inside the transition: its commit follows.

        async def reminded() -> bool:
            stored = await fired.runtime.get_instance(instance_uuid)
            return stored is not None and stored.current_state == "reminded"

        await wait_until(reminded, within=BOUND, what="the transition committed")
    finally:
        worker.stop()
        await task
    # Its listener went with it.
    assert not waker_of(fired.runtime.persistence).listening


async def test_wakeups_due_after_the_sleep_ends_do_not_wake_the_worker(
    pool: asyncpg.Pool,
) -> None:
    fired = Fired(pg_workflow_providers(pool))
    await fired.runtime.initialize()
    worker = TimeoutWorker(fired.runtime, poll_interval=ASLEEP)
    task = await running(worker)
    try:
        await asleep(worker, waker_of(fired.runtime.persistence), polls=2)
        polls = worker.stats.sweeps
        # A busy database's stream: deadlines an hour away, after this sleep ends.
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        for _ in range(50):
            await pool.execute(
                "SELECT pg_notify($1, $2)", wakeup_channel(None), f"timeout {later} soon"
            )
        _, done = await fired.create("soon")
        await asyncio.wait_for(done.wait(), BOUND)
        # Woken for "soon" (then slept until its deadline): a few polls, not one per wake-up.
        assert worker.stats.sweeps - polls <= 4, worker.stats
    finally:
        worker.stop()
        await task


async def test_a_worker_sleeps_until_a_deadline_no_write_announced(pool: asyncpg.Pool) -> None:
    # Written without wake-ups (as the TypeScript runtime writes): no NOTIFY, so the worker
    # must find the deadline by itself, with the nearest-due query after its poll.
    silent = Fired(pg_workflow_providers(pool, wakeups=False))
    await silent.runtime.initialize()
    _, _ = await silent.create("soon")
    fired = Fired(pg_workflow_providers(pool))
    fired.done = silent.done
    (done,) = fired.done.values()
    worker = TimeoutWorker(fired.runtime, poll_interval=ASLEEP)
    task = await running(worker)
    try:
        await asyncio.wait_for(done.wait(), BOUND)
    finally:
        worker.stop()
        await task


async def test_a_sleeping_execution_worker_runs_an_enqueued_execution(pool: asyncpg.Pool) -> None:
    fired = Fired(pg_workflow_providers(pool, durable_execution=True))
    await fired.runtime.initialize()
    instance_uuid, done = await fired.create("charge")
    worker = ExecutionWorker(fired.runtime, poll_interval=ASLEEP)
    task = await running(worker)
    try:
        await asleep(worker, waker_of(fired.runtime.persistence), polls=2)
        await fired.runtime.enqueue_event(instance_uuid, "charge", idempotency_key="one")
        await asyncio.wait_for(done.wait(), BOUND)
    finally:
        worker.stop()
        await task


async def test_a_sleeping_execution_worker_runs_a_retry_when_its_backoff_ends(
    pool: asyncpg.Pool,
) -> None:
    fired = Fired(
        pg_workflow_providers(pool, durable_execution=True),
        policy=DurableExecutionPolicy(initial_delay=timedelta(milliseconds=300)),
    )
    fired.failures = 1
    await fired.runtime.initialize()
    instance_uuid, done = await fired.create("charge")
    worker = ExecutionWorker(fired.runtime, poll_interval=ASLEEP)
    task = await running(worker)
    try:
        await asleep(worker, waker_of(fired.runtime.persistence), polls=2)
        await fired.runtime.enqueue_event(instance_uuid, "charge", idempotency_key="one")
        # The first attempt fails; the retry, 0.3 s later, is slept to, not polled for.
        await asyncio.wait_for(done.wait(), BOUND)
        assert worker.stats.retrying == 1
    finally:
        worker.stop()
        await task


async def test_a_worker_whose_listener_cannot_connect_keeps_polling(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens on port 1: the listener fails and retries; the worker never waits for it.
    persistence = pg_workflow_providers(pool, listen_dsn="postgresql://127.0.0.1:1/nothing")
    fired = Fired(persistence)
    await fired.runtime.initialize()
    worker = TimeoutWorker(fired.runtime, poll_interval=0.05)
    task = await running(worker)
    try:
        _, done = await fired.create("soon")
        await asyncio.wait_for(done.wait(), BOUND)
        assert not waker_of(persistence).listening
    finally:
        worker.stop()
        await task
    assert "wake-up listener" in caplog.text


async def test_a_rolled_back_write_notifies_nobody(
    pool: asyncpg.Pool, notices: tuple[asyncpg.Connection, list[str]]
) -> None:
    _, heard = notices
    fired = Fired(pg_workflow_providers(pool))
    await fired.runtime.initialize()
    runner = fired.runtime.persistence.transaction_runner

    async def create_then_fail() -> None:
        await fired.create("soon")
        raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        await runner.run_in_transaction(create_then_fail)
    committed, _ = await fired.create("soon")
    stored = await fired.runtime.get_instance(committed)
    assert stored is not None
    assert stored.expires_at is not None
    # Notifications come in commit order: the first one heard is the committed write's.
    await wait_until(lambda: _async(heard), within=BOUND, what="a notification")
    assert heard[0] == f"timeout {stored.expires_at.isoformat()} soon"


async def test_a_far_deadline_and_a_deadline_free_write_notify_nobody(
    pool: asyncpg.Pool, notices: tuple[asyncpg.Connection, list[str]]
) -> None:
    _conn, heard = notices
    fired = Fired(pg_workflow_providers(pool))
    await fired.runtime.initialize()
    await fired.create("later")  # an hour away: past notify_within
    await fired.create("charge")  # no deadline
    await pool.execute("SELECT pg_notify($1, 'marker')", wakeup_channel(None))
    await wait_until(lambda: _async(heard), within=BOUND, what="the marker")
    assert heard == ["marker"]


async def test_the_listener_reconnects_after_its_connection_is_killed(pool: asyncpg.Pool) -> None:
    fired = Fired(pg_workflow_providers(pool))
    await fired.runtime.initialize()
    waker = waker_of(fired.runtime.persistence)
    worker = TimeoutWorker(fired.runtime, poll_interval=ASLEEP)
    task = await running(worker)
    try:
        await asleep(worker, waker, polls=2)
        pid = waker.listener_pid
        assert pid is not None
        assert await pool.fetchval("SELECT pg_terminate_backend($1)", pid)

        async def back() -> bool:
            return waker.connects >= 2 and waker.listening

        await wait_until(back, within=BOUND, what="the listener reconnected")
        assert waker.listener_pid != pid
        await asleep(worker, waker, polls=3)
        _, done = await fired.create("soon")
        await asyncio.wait_for(done.wait(), BOUND)
    finally:
        worker.stop()
        await task


async def test_a_listener_of_its_own_dsn(pool: asyncpg.Pool, database: str) -> None:
    fired = Fired(pg_workflow_providers(pool, listen_dsn=database))
    await fired.runtime.initialize()
    waker = waker_of(fired.runtime.persistence)
    worker = TimeoutWorker(fired.runtime, poll_interval=ASLEEP)
    task = await running(worker)
    try:
        await asleep(worker, waker, polls=2)
        _, done = await fired.create("soon")
        await asyncio.wait_for(done.wait(), BOUND)
    finally:
        worker.stop()
        await task
    assert not waker.listening


async def test_without_wakeups_workers_poll_and_writes_never_notify(
    pool: asyncpg.Pool, notices: tuple[asyncpg.Connection, list[str]]
) -> None:
    _, heard = notices
    persistence = pg_workflow_providers(pool, wakeups=False)
    assert persistence.wakeups is None
    fired = Fired(persistence)
    await fired.runtime.initialize()
    worker = TimeoutWorker(fired.runtime, poll_interval=0.05)
    task = await running(worker)
    try:
        _, done = await fired.create("soon")
        await asyncio.wait_for(done.wait(), BOUND)
    finally:
        worker.stop()
        await task
    await pool.execute("SELECT pg_notify($1, 'marker')", wakeup_channel(None))
    await wait_until(lambda: _async(heard), within=BOUND, what="the marker")
    assert heard == ["marker"]


async def test_two_schemas_do_not_wake_each_other(pool: asyncpg.Pool, database: str) -> None:
    from duraflows_pg_async.migrations import generate_migration_sql

    for schema in ("tenant_a", "tenant_b"):
        await pool.execute(generate_migration_sql(schema=schema).up)
    assert wakeup_channel("tenant_a") != wakeup_channel("tenant_b")
    conn = await asyncpg.connect(database)
    heard: list[str] = []
    try:
        await conn.add_listener(wakeup_channel("tenant_a"), lambda *args: heard.append(args[3]))
        b = Fired(pg_workflow_providers(pool, schema="tenant_b"))
        await b.runtime.initialize()
        await b.create("soon")
        a = Fired(pg_workflow_providers(pool, schema="tenant_a"))
        await a.runtime.initialize()
        await a.create("soon")
        await wait_until(lambda: _async(heard), within=BOUND, what="tenant_a's notification")
        assert len(heard) == 1
        assert heard[0].endswith(" soon")
    finally:
        await conn.close()


def test_channel_names_fit_an_identifier() -> None:
    assert wakeup_channel(None) == "duraflows_wakeup"
    long = wakeup_channel("s" * 63)
    assert len(long) <= 63
    assert long != wakeup_channel("s" * 62)


def test_bad_wakeup_options_are_refused(pool: asyncpg.Pool) -> None:
    with pytest.raises(InvalidArgumentError, match="wakeups"):
        pg_workflow_providers(pool, wakeups="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="notify_within"):
        pg_workflow_providers(pool, notify_within=0)
    with pytest.raises(InvalidArgumentError, match="listen_dsn"):
        pg_workflow_providers(pool, listen_dsn="")


def plan_nodes(plan: Any) -> list[dict[str, Any]]:
    nodes, stack = [], [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    return nodes


async def test_the_nearest_due_queries_are_served_by_indexes(pool: asyncpg.Pool) -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    # 20,000 instances over four workflows, half with a deadline spread over a day around now.
    await pool.execute(
        "INSERT INTO workflow_instances (uuid, workflow_name, current_state, definition_version, "
        "expires_at) SELECT gen_random_uuid(), 'wf' || (g % 4), 'open', 1, "
        "CASE WHEN g % 2 = 0 THEN $1::timestamptz + (g - 10000) * interval '5 seconds' END "
        "FROM generate_series(1, 20000) g",
        now,
    )
    # One execution per instance, a tenth of them pending, spread over a day around now.
    await pool.execute(
        "INSERT INTO workflow_executions (uuid, workflow_instance_uuid, idempotency_key, status, "
        "available_at, revision, execution_json) SELECT gen_random_uuid(), i.uuid, 'k', "
        "CASE WHEN i.g % 10 = 0 THEN 'pending' ELSE 'completed' END, "
        "$1::timestamptz + (i.g - 10000) * interval '5 seconds', 1, '{}'::jsonb "
        "FROM (SELECT uuid, row_number() OVER (ORDER BY uuid) AS g FROM workflow_instances) i",
        now,
    )
    await pool.execute("ANALYZE workflow_instances; ANALYZE workflow_executions")
    q = render_queries(None)
    cases = [
        (q.next_timeout_due, ["wf0", "wf1", "wf2"], now),
        (q.next_execution_due, now),
    ]
    expected = ["workflow_instances_workflow_due_idx", "workflow_executions_due_idx"]
    async with pool.acquire() as conn:
        # The generic plan too, as a prepared statement ends up using.
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        try:
            for (sql, *args), index in zip(cases, expected, strict=True):
                # The pool's codec decodes the JSON plan.
                plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
                nodes = plan_nodes(plan)
                assert not any(n["Node Type"] == "Seq Scan" for n in nodes), plan
                assert not any(n["Node Type"] == "Sort" for n in nodes), plan
                assert index in {n.get("Index Name") for n in nodes}, plan
        finally:
            await conn.execute("RESET plan_cache_mode")
    # And they give what they promise.
    waker = PgWakeups(pool, schema=None, listen_dsn=None, notify_within=timedelta(minutes=1))
    assert await waker.next_timeout_due(["wf0", "wf1", "wf2"], now) == now + timedelta(seconds=10)
    assert await waker.next_timeout_due([], now) is None
    assert await waker.next_execution_due(now) == now + timedelta(seconds=50)


async def _async(value: list[str]) -> bool:
    return bool(value)
