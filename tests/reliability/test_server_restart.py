"""A PostgreSQL restart under load loses no committed transition and processes nothing twice.

Request tasks trigger events in a loop on their own instances while two TimeoutWorkers sweep a
backlog of due instances; the server is stopped (``fast``: every backend is terminated) while
both workers are inside a transaction, and started again on the same port once the requests and
the workers have felt the outage. The same pool, runtime and workers carry on: nothing is
recreated. Afterwards:

- every call either succeeded or raised a ``WorkflowError`` (nothing else leaks);
- every transition whose call returned is in the history (no committed transition is lost);
- each swept instance has exactly one history row (nothing is processed twice);
- no instance is left due, and the workers are still sweeping.

Every phase waits on a condition (calls made, rows swept, failures seen), never on a duration,
so a slow or CPU-starved machine only makes the test slower. A wait gives up only when what it
waits on stops moving for ``STALL`` seconds.

The server is a dedicated embedded one (the session's is shared by every test and must not be
restarted).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg
import pytest
from helpers import REMINDER

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    State,
    TimeoutRetryPolicy,
    TimeoutWorker,
    WorkflowDefinition,
    WorkflowRuntime,
    create_pool,
    migrations,
    pg_workflow_providers,
)
from duraflows_pg_async.errors import WorkflowError

if TYPE_CHECKING:
    from duraflows_pg_async.embedded import EmbeddedPostgres

# The module's own server (`restart_server`), which its tests stop and start: one worker runs them.
pytestmark = pytest.mark.xdist_group("server_restart")

REQUESTERS = 8
DUE = 1500
BATCH = 20
# Once this many reminders have been sent, the sweep holds (inside its transaction) until the
# server is down: the backlog is then still being swept when the stop comes, however fast or
# slow the machine is.
HELD_AFTER = 100
# Last-resort bounds, for a stuck system rather than a slow one: a wait fails when what it waits
# on has not moved for STALL seconds (more than TimeoutWorker's 30 s error backoff), and a call
# that takes CALL_TIMEOUT is a hang.
STALL = 60.0
CALL_TIMEOUT = 30.0

PING = WorkflowDefinition(
    name="ping",
    initial_state="idle",
    states={
        "idle": State(events={"ping": Event(target_state="idle", commands=(CommandRef("count"),))})
    },
)


async def _migrate(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrations.apply(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def restart_server() -> Iterator[EmbeddedPostgres]:
    """A server of this module's own, which the test may stop and start."""
    from duraflows_pg_async.embedded import TEST_SETTINGS, EmbeddedPostgres, EmbeddedPostgresError

    try:
        server = EmbeddedPostgres(settings=TEST_SETTINGS)
    except EmbeddedPostgresError as exc:
        pytest.skip(f"no embedded PostgreSQL to restart: {exc}")
    try:
        server.start()
        asyncio.run(_migrate(server.dsn()))
        yield server
    finally:
        server.close()


@dataclass
class Load:
    """What the request tasks saw, by phase of the restart."""

    phase: str = "before"
    successes: list[tuple[UUID, UUID, str]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    errors_by_phase: Counter[str] = field(default_factory=Counter)
    leaked: list[BaseException] = field(default_factory=list)
    samples: dict[str, str] = field(default_factory=dict)
    sends: Counter[UUID] = field(default_factory=Counter)
    # Set once the server is down: the sends held by HELD_AFTER go on then.
    resume: asyncio.Event = field(default_factory=asyncio.Event)

    def successes_in(self, phase: str) -> Counter[UUID]:
        return Counter(uuid for uuid, _, p in self.successes if p == phase)


def _runtime(pool: asyncpg.Pool, load: Load) -> WorkflowRuntime:
    definitions = DefinitionRegistry()
    definitions.register(PING)
    definitions.register(REMINDER)
    commands = CommandRegistry()

    def count(subject: Any, ctx: ExecutionContext) -> None:
        ctx.context["n"] = int(ctx.context.get("n", 0)) + 1

    async def send(subject: Any, ctx: ExecutionContext) -> None:
        if len(load.sends) >= HELD_AFTER:
            await load.resume.wait()
        load.sends[ctx.transition_uuid] += 1

    commands.register("count", count)
    commands.register("send", send)
    return WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        persistence=pg_workflow_providers(pool),
        # Failures caused by the outage are retried soon rather than after a minute.
        timeout_retry=TimeoutRetryPolicy(
            initial_delay=timedelta(milliseconds=200), max_delay=timedelta(seconds=1),
            max_attempts=50,
        ),
    )  # fmt: skip


@pytest.fixture
async def restart_pool(restart_server: EmbeddedPostgres) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(restart_server.dsn(), min_size=2, max_size=12)
    try:
        yield pool
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def _wait_until_none_left(remaining: Callable[[], Awaitable[int]], what: str) -> None:
    """Poll ``remaining()`` (what is still missing) until it is 0. Fails only when it has not
    gone down for STALL seconds: progress, however slow, keeps the wait going."""
    loop = asyncio.get_running_loop()
    best, since = await remaining(), loop.time()
    while best > 0:
        await asyncio.sleep(0.05)  # the interval of the poll, bounded by STALL below
        left = await remaining()
        if left < best:
            best, since = left, loop.time()
        elif loop.time() - since > STALL:
            raise AssertionError(f"{what}: {left} still missing, no progress for {STALL}s")


@pytest.mark.slow
# Last resort only: the waits below fail first, and with a message, if progress stops.
@pytest.mark.timeout(600)
async def test_restart_under_load_loses_nothing_and_processes_nothing_twice(
    restart_server: EmbeddedPostgres,
    restart_pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    request.node.user_properties.append(("postgres", True))  # counted in the summary line
    caplog.set_level(logging.ERROR, logger="duraflows_pg_async")  # outage warnings are expected
    caplog.set_level(logging.ERROR, logger="asyncpg")
    pool = restart_pool
    load = Load()
    runtime = _runtime(pool, load)
    await runtime.initialize()
    pings = [(await runtime.create_instance("ping")).uuid for _ in range(REQUESTERS)]
    past = datetime.now(UTC) - timedelta(minutes=10)
    async with pool.acquire() as conn:
        reminders: list[UUID] = [
            row[0]
            for row in await conn.fetch(
                "INSERT INTO workflow_instances (uuid, workflow_name, current_state, "
                "definition_version, expires_at) SELECT gen_random_uuid(), 'reminder', 'waiting', "
                "1, $1::timestamptz - g * interval '1 millisecond' FROM generate_series(1, $2) g "
                "RETURNING uuid",
                past,
                DUE,
            )
        ]

    stopping = asyncio.Event()

    async def requester(instance_uuid: UUID) -> None:
        while not stopping.is_set():
            phase = load.phase
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    result = await runtime.trigger_event(instance_uuid, "ping")
            except WorkflowError as exc:
                load.errors[type(exc).__name__] += 1
                load.errors_by_phase[phase] += 1
                load.samples.setdefault(type(exc).__name__, repr(exc))
                await asyncio.sleep(0.02)  # the load's pace after a failure: not a wait
            except Exception as exc:  # anything else is a leak (a TimeoutError is a hang)
                load.leaked.append(exc)
                await asyncio.sleep(0.02)  # the load's pace after a failure: not a wait
            else:
                load.successes.append((instance_uuid, result.history_uuid, phase))
                await asyncio.sleep(0.005)  # the load's pace: not a wait

    workers = [TimeoutWorker(runtime, batch_size=BATCH, poll_interval=0.05) for _ in range(2)]

    async def swept() -> int:
        return int(
            await pool.fetchval(
                "SELECT count(*) FROM workflow_instances WHERE workflow_name = 'reminder' "
                "AND current_state = 'reminded'"
            )
        )

    def calls_left(phase: str) -> int:
        """Calls still missing for every requester to have succeeded 3 times in ``phase``."""
        done = load.successes_in(phase)
        return sum(max(0, 3 - done[u]) for u in pings)

    requests = [asyncio.create_task(requester(u)) for u in pings]
    sweepers = [asyncio.create_task(w.run()) for w in workers]
    try:
        # Load is flowing: every requester succeeded, the sweep is under way (and held by
        # HELD_AFTER, so not done).
        async def warm_up_left() -> int:
            return calls_left("before") + max(0, 51 - await swept())

        await _wait_until_none_left(warm_up_left, "the load to warm up")
        swept_before = await swept()

        load.phase = "down"
        troubles_at_stop = [w.stats.failed + w.stats.errors for w in workers]
        loop = asyncio.get_running_loop()
        started = loop.time()
        # In a thread, so that the requests and workers keep running meanwhile.
        await asyncio.to_thread(restart_server.stop, "fast")
        load.resume.set()

        # The server stays down until the outage has been felt: a request failed, and each
        # worker's sweep (held inside a transaction when the server went) failed.
        async def unfelt() -> int:
            workers_unaware = sum(
                w.stats.failed + w.stats.errors == n
                for w, n in zip(workers, troubles_at_stop, strict=True)
            )
            return (load.errors_by_phase["down"] == 0) + workers_unaware

        await _wait_until_none_left(unfelt, "the outage to be felt")
        await asyncio.to_thread(restart_server.start)
        outage = loop.time() - started
        load.phase = "after"
        sweeps_at_restart = [w.stats.sweeps for w in workers]

        async def recovery_left() -> int:
            due = await pool.fetchval(
                "SELECT count(*) FROM workflow_instances WHERE expires_at IS NOT NULL"
            )
            return calls_left("after") + int(due)

        try:
            await _wait_until_none_left(recovery_left, "requests and sweeps to recover")
        except AssertionError as exc:
            left = await pool.fetch(
                "SELECT current_state, timeout_attempts, timeout_retry_at - now() AS wait, "
                "count(*) FROM workflow_instances WHERE expires_at IS NOT NULL "
                "GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 10"
            )
            raise AssertionError(
                f"{exc}; still due: {[dict(r) for r in left]}; after the restart "
                f"{dict(load.successes_in('after'))}; workers {[w.stats for w in workers]}"
            ) from None
        assert all(task.done() is False for task in sweepers), "a worker stopped by itself"
        assert all(w.running for w in workers)
    finally:
        stopping.set()
        load.resume.set()
        for w in workers:
            w.stop()
        await asyncio.gather(*requests, *sweepers)

    # Nothing but WorkflowErrors.
    assert load.leaked == [], load.leaked
    # And the caller can tell what happened: the connection was lost, whatever the driver saw.
    assert set(load.errors) == {"ConnectionLostError"}, load.samples
    # The workers went on sweeping after the restart, on their own.
    assert all(w.stats.sweeps > n for w, n in zip(workers, sweeps_at_restart, strict=True))

    async with pool.acquire() as conn:
        # No committed transition lost: every history_uuid a call returned is stored.
        returned = [h for _, h, _ in load.successes]
        stored = await conn.fetchval(
            "SELECT count(*) FROM workflow_history WHERE uuid = ANY($1::uuid[])", returned
        )
        assert stored == len(returned) == len(set(returned))
        # Each ping instance: one history row per version, context in step with both (calls that
        # failed while their COMMIT was in flight may have committed: they are counted too).
        rows = await conn.fetch(
            "SELECT i.uuid, i.version, (i.context_json->>'n')::int AS n, "
            "(SELECT count(*) FROM workflow_history h WHERE h.workflow_instance_uuid = i.uuid) "
            "AS h FROM workflow_instances i WHERE i.workflow_name = 'ping'"
        )
        per_instance = Counter(u for u, _, _ in load.successes)
        for row in rows:
            assert row["version"] == row["h"] == row["n"], dict(row)
            assert row["h"] >= per_instance[row["uuid"]]
        # Each swept instance processed exactly once, none left due.
        history = await conn.fetch(
            "SELECT workflow_instance_uuid, count(*) AS n FROM workflow_history h "
            "JOIN workflow_instances i ON i.uuid = h.workflow_instance_uuid "
            "WHERE i.workflow_name = 'reminder' GROUP BY 1"
        )
        assert len(history) == DUE
        assert Counter(row["n"] for row in history) == {1: DUE}
        assert set(reminders) == {row["workflow_instance_uuid"] for row in history}
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM workflow_instances WHERE workflow_name = 'reminder' "
                "AND (current_state <> 'reminded' OR expires_at IS NOT NULL "
                "OR timeout_parked_at IS NOT NULL)"
            )
            == 0
        )
    # The pool is the one we started with, all its connections back.
    assert pool.get_idle_size() == pool.get_size()
    print(
        f"\nrestart: outage {outage:.2f}s, {len(load.successes)} successful calls "
        f"({dict(Counter(p for _, _, p in load.successes))}), errors {dict(load.errors)}, "
        f"swept {DUE} ({swept_before} before the stop), worker stats {[w.stats for w in workers]}"
    )
