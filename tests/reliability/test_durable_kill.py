"""Durable executions with workers killed at random: every execution completes, no command runs
again once its checkpoint is committed, and a stale worker's checkpoint is refused.

N instances each get a queued three-command event (``c1``, ``c2``, ``c3``, then the state
``done``). N is 1,000, the measured size, in CI too (``DURAFLOWS_DURABLE_KILL_N`` sets another).
Worker processes loop ``process_pending_executions(1)`` with a 2 s lease. Two of them are
SIGKILLed at random, each a random 0.2 to 2 s after it is ready, half of the kills aimed at a
moment when the worker is inside a command (a quarter of the calls sleep 5 to 40 ms before they
return), and each is replaced at once, until every execution is completed (failing when none
completes for a minute). A
third worker, never killed, lets its 5th, 10th and 15th calls outlast the lease with no
heartbeat, so that their checkpoints must be refused.

Every call of a command writes a row in ``command_calls`` as it starts and again as it finishes,
each in an autocommit statement on a connection of its own, so the calls of a killed worker
survive it. A trigger on ``workflow_executions`` keeps every committed write of a record
(``execution_writes``: writer, time, revision, lease and journal before and after; a rolled-back
write leaves no row). The test then checks, for each command occurrence (an instance and a
command name):

- all its calls carry the same ``idempotency_key``, ``<execution uuid>:<position>``;
- one call is checkpointed (the journal's result names it): the call of the last claim (the
  highest attempt, the one the checkpoint records), finished, made by the worker that wrote the
  checkpoint, never one that outlasted its lease;
- no call of it started after its checkpoint's ``completed_at``, and no call of the next command
  before it (nothing runs again once checkpointed, nothing runs ahead of its turn);
- each other call is accounted for, one by one: it finished and its worker reported the
  checkpoint refused (the command ran, then the execution came back ``skipped``:
  ExecutionLeaseLostError), or it was the last call of a killed worker (cut inside the command,
  or before its checkpoint committed). So a command runs at most once more than the kills that
  hit it plus the refusals of its checkpoint; the calls that outlasted their lease were all
  refused, and every refusal a worker reported matches a call that was not checkpointed;

and for each execution: its instance is in ``done`` with its one history row and the context the
checkpointed calls wrote; the revisions of its committed writes go up by one; each write is a
claim (a new token, one more attempt, the journal unchanged) or a checkpoint (one journal entry
more, written by the worker of the latest claim under that claim's token, ``completed_at``
before that lease's end); a claim takes over a running execution only once its lease has ended;
and the claim of every call not checkpointed was taken over so.

Measured on a 2-core machine, N = 1,000, 16 runs (docs/reliability.md keeps the figures): 19 to
28 s of processing alone (24 to 33 s for the test), 28 to 37 s as two copies at once (34 to 44 s),
55 s (73 s) as two copies while two other full test suites ran; 23 to 47 kills a run, 58 % of
them inside a command; every re-run accounted for, none after a checkpoint. Within the
reliability suite on two xdist workers (as CI runs it), the test took 28 s. That is well under a
minute, so CI runs the full 1,000 (N = 300 takes 7 to 21 s of processing, 8 to 24 kills). The
figures are printed (``-s``), never asserted; a run that stops progressing fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import textwrap
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from helpers import wait_until

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    CommandResult,
    DefinitionRegistry,
    DurableExecutionPolicy,
    Event,
    ExecutionContext,
    State,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
    create_pool,
    pg_workflow_providers,
)
from duraflows_pg_async.types import WorkflowExecution

N = int(os.environ.get("DURAFLOWS_DURABLE_KILL_N", "1000"))
SEED = int(os.environ.get("DURAFLOWS_DURABLE_KILL_SEED", str(random.randrange(2**32))))
LEASE = 2.0
POLICY = DurableExecutionPolicy(
    lease_duration=timedelta(seconds=LEASE),
    initial_delay=timedelta(milliseconds=50),
    max_delay=timedelta(milliseconds=200),
    # Each claim counts as an attempt of the command, a killed one too: far above what kills
    # reach, so that nothing parks.
    max_attempts=20,
)
COMMANDS = ("c1", "c2", "c3")
KILLABLE = 2  # workers killed at random, besides the steady one
# The steady worker's calls (counted from 1) that sleep past the lease, without a heartbeat.
OVER_LEASE_CALLS = frozenset({5, 10, 15})
OVER_LEASE_SLEEP = LEASE + 0.5
# The run ends when every execution is completed; it fails when no execution completed for
# STALL seconds (the workers are stuck: the condition this test can see), and, as a last-resort
# bound only, after BOUND seconds in all. A busy machine slows the run; it does not stall it.
STALL = 60.0
BOUND = 900.0

THREE = WorkflowDefinition(
    name="three",
    initial_state="new",
    states={
        "new": State(
            events={
                "run": Event(
                    target_state="done", commands=tuple(CommandRef(name) for name in COMMANDS)
                )
            }
        ),
        "done": State(),
    },
)

SIDE_TABLES = """
CREATE TABLE command_calls (
    id              bigserial   PRIMARY KEY,
    command         text        NOT NULL,
    instance_n      integer     NOT NULL,
    execution_uuid  uuid        NOT NULL,
    command_id      text        NOT NULL,
    idempotency_key text        NOT NULL,
    attempt         integer     NOT NULL,
    worker_pid      integer     NOT NULL,
    over_lease      boolean     NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NULL,
    finished        boolean     NOT NULL DEFAULT false
);
CREATE INDEX ON command_calls (worker_pid) WHERE NOT finished;

-- Every committed write of an execution record (a rolled-back one leaves no row either).
CREATE TABLE execution_writes (
    id              bigserial   PRIMARY KEY,
    execution_uuid  uuid        NOT NULL,
    writer          text        NOT NULL,
    written_at      timestamptz NOT NULL,
    old_revision    integer     NOT NULL,
    new_revision    integer     NOT NULL,
    old_status      text        NOT NULL,
    new_status      text        NOT NULL,
    old_token       text        NULL,
    new_token       text        NULL,
    old_lease_until text        NULL,
    old_attempts    integer     NOT NULL,
    new_attempts    integer     NOT NULL,
    old_journal     jsonb       NOT NULL,
    new_journal     jsonb       NOT NULL
);
CREATE FUNCTION record_execution_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO execution_writes (execution_uuid, writer, written_at, old_revision,
        new_revision, old_status, new_status, old_token, new_token, old_lease_until,
        old_attempts, new_attempts, old_journal, new_journal)
    VALUES (NEW.uuid, current_setting('application_name'), clock_timestamp(), OLD.revision,
        NEW.revision, OLD.status, NEW.status, OLD.execution_json->>'leaseToken',
        NEW.execution_json->>'leaseToken', OLD.execution_json->>'leaseUntil',
        (OLD.execution_json->>'attempts')::int, (NEW.execution_json->>'attempts')::int,
        OLD.execution_json->'journal', NEW.execution_json->'journal');
    RETURN NULL;
END
$$;
CREATE TRIGGER record_execution_write AFTER UPDATE ON workflow_executions
    FOR EACH ROW EXECUTE FUNCTION record_execution_write();
"""

# A worker process: it loops process_pending_executions until it is killed (or, at the end of
# the run, sent SIGTERM: then it stops after its poll).
WORKER = textwrap.dedent(
    """
    import asyncio, os, sys
    from tests.reliability.test_durable_kill import run_worker

    asyncio.run(run_worker(os.environ["DATABASE_URL"], sys.argv[1] == "steady", int(sys.argv[2])))
    """
)
ROOT = Path(__file__).resolve().parents[2]


def make_runtime(
    persistence: WorkflowPersistenceProvider, commands: CommandRegistry
) -> WorkflowRuntime:
    definitions = DefinitionRegistry()
    definitions.register(THREE)
    return WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        persistence=persistence,
        durable_execution=POLICY,
    )


class Calls:
    """The commands of a worker: each call is written to ``command_calls`` as it starts and
    again as it finishes, on a connection of its own (autocommit), so a kill loses neither."""

    def __init__(self, conn: asyncpg.Connection, steady: bool, rng: random.Random) -> None:
        self.conn = conn
        self.pid = os.getpid()
        self.steady = steady
        self.rng = rng
        self.count = 0
        self.ran: set[UUID] = set()  # executions whose command ran in the current poll

    def registry(self) -> CommandRegistry:
        registry = CommandRegistry()
        for name in COMMANDS:
            registry.register(name, self._command(name))
        return registry

    def _command(self, name: str) -> Any:
        async def command(subject: Any, ctx: ExecutionContext) -> CommandResult:
            return await self.call(name, subject, ctx)

        return command

    async def call(self, name: str, subject: Any, ctx: ExecutionContext) -> CommandResult:
        durable = ctx.durable
        assert durable is not None
        self.count += 1
        self.ran.add(durable.execution_uuid)
        over_lease = self.steady and self.count in OVER_LEASE_CALLS
        call_id: int = await self.conn.fetchval(
            "INSERT INTO command_calls (command, instance_n, execution_uuid, command_id, "
            "idempotency_key, attempt, worker_pid, over_lease, started_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            name,
            subject["n"],
            durable.execution_uuid,
            durable.command_id,
            durable.idempotency_key,
            durable.attempt,
            self.pid,
            over_lease,
            datetime.now(UTC),
        )
        if over_lease:
            await asyncio.sleep(OVER_LEASE_SLEEP)  # no heartbeat: the lease runs out
        elif self.rng.random() < 0.25:
            await asyncio.sleep(self.rng.uniform(0.005, 0.04))  # a window for a kill
        await self.conn.execute(
            "UPDATE command_calls SET finished = true, finished_at = $2 WHERE id = $1",
            call_id,
            datetime.now(UTC),
        )
        ctx.context[name] = call_id
        return CommandResult(ok=True, code=name, metadata={"call": call_id})


async def run_worker(dsn: str, steady: bool, seed: int) -> None:
    """A worker process's loop: one due execution per poll, so that what a poll reports is about
    the last command the worker ran. Prints a JSON line when a checkpoint was refused (the
    command ran, then the execution came back ``skipped``: ExecutionLeaseLostError) and when
    anything else than progress happened."""
    pid = os.getpid()
    pool = await create_pool(
        dsn, min_size=1, max_size=2, server_settings={"application_name": f"worker-{pid}"}
    )
    calls = Calls(await asyncpg.connect(dsn), steady, random.Random(seed))
    runtime = make_runtime(pg_workflow_providers(pool, durable_execution=True), calls.registry())
    await runtime.initialize()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"ready": pid}), flush=True)
    while not stop.is_set():
        calls.ran.clear()
        result = await runtime.process_pending_executions(1)
        lost = [str(u) for u in result.skipped if u in calls.ran]
        if lost or result.failed or result.parked or result.retrying:
            print(
                json.dumps(
                    {
                        "lost": lost,
                        "failed": [[str(u), text] for u, text in result.failed],
                        "parked": [str(u) for u in result.parked],
                        "retrying": [str(u) for u in result.retrying],
                    }
                ),
                flush=True,
            )
        if result.processed == 0 and not result.skipped:
            with contextlib.suppress(TimeoutError):  # nothing due
                await asyncio.wait_for(stop.wait(), 0.05)
    await pool.close()
    await calls.conn.close()


@dataclass
class Worker:
    role: str
    proc: asyncio.subprocess.Process
    output: Path


@dataclass
class Kill:
    pid: int
    aimed: bool  # waited for the victim to be inside a command


async def start_worker(database: str, role: str, seed: int, folder: Path) -> Worker:
    output = folder / f"{role}-{seed}.out"
    with output.open("w") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER,
            role,
            str(seed),
            cwd=ROOT,
            # The DSN carries the server's password: never on a command line.
            env={
                **os.environ,
                # The repository, and tests/ for the helpers (as pytest puts it on sys.path).
                "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
                "DATABASE_URL": database,
            },
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    return Worker(role, proc, output)


async def kill(worker: Worker) -> None:
    worker.proc.send_signal(signal.SIGKILL)
    await worker.proc.wait()


@dataclass
class Run:
    workers: list[Worker] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def pause(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less if the run is stopping; whether it is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
        return self.stopping.is_set()


async def ready(worker: Worker) -> None:
    """Wait until the worker has started its loop (its handler of SIGTERM is installed)."""

    async def started() -> bool:
        if worker.proc.returncode is not None:
            raise AssertionError(f"the worker exited: {worker.output.read_text()}")
        return '"ready"' in worker.output.read_text()

    await wait_until(started, within=60, interval=0.02, what=f"worker {worker.proc.pid} ready")


async def kill_and_replace(database: str, folder: Path, rng: random.Random, run: Run) -> None:
    """One killable worker at a time: started, given a random while once ready, SIGKILLed (half
    the time at a moment it is inside a command), replaced; until the run stops."""
    conn = await asyncpg.connect(database)
    try:
        while not run.stopping.is_set():
            worker = await start_worker(database, "killable", rng.randrange(2**32), folder)
            run.workers.append(worker)
            await ready(worker)
            if await run.pause(rng.uniform(0.2, 2.0)):
                return
            aimed = rng.random() < 0.5
            if aimed:
                # Inside a command: the worker has a call that has not finished (or 1 s passed).
                deadline = time.monotonic() + 1
                while time.monotonic() < deadline and not await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM command_calls "
                    "WHERE worker_pid = $1 AND NOT finished)",
                    worker.proc.pid,
                ):
                    if await run.pause(0.002):
                        return
            run.kills.append(Kill(worker.proc.pid, aimed))  # before: the run checks exits
            await kill(worker)
    finally:
        await conn.close()


async def enqueue_all(runtime: WorkflowRuntime, n: int) -> dict[int, UUID]:
    """Instance ``i`` (context and subject ``{"n": i}``) and its queued ``run``; returns the
    execution of each."""
    gate = asyncio.Semaphore(8)

    async def one(i: int) -> tuple[int, UUID]:
        async with gate:
            instance = await runtime.create_instance("three", context={"n": i})
            execution = await runtime.enqueue_event(
                instance.uuid, "run", idempotency_key=f"run-{i}", subject={"n": i}
            )
            return i, execution.uuid

    return dict(await asyncio.gather(*(one(i) for i in range(n))))


def _not_run(subject: Any, ctx: ExecutionContext) -> None:
    raise AssertionError("the test process runs no command")


@pytest.mark.slow
async def test_killed_workers_lose_no_execution_and_rerun_no_checkpointed_command(
    database: str, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    conn = await asyncpg.connect(database)
    pool = await create_pool(database, min_size=1, max_size=8)
    run = Run()
    killers: list[asyncio.Task[None]] = []
    try:
        await conn.execute(SIDE_TABLES)
        registry = CommandRegistry()
        for name in COMMANDS:
            registry.register(name, _not_run)
        runtime = make_runtime(pg_workflow_providers(pool, durable_execution=True), registry)
        began = time.monotonic()
        executions = await enqueue_all(runtime, N)
        enqueued = time.monotonic() - began

        # The workers: the killable ones are killed at random and replaced, until every
        # execution is completed.
        processing_from = datetime.now(UTC)
        started = time.monotonic()
        killers += [
            asyncio.create_task(
                kill_and_replace(database, tmp_path, random.Random(rng.randrange(2**32)), run)
            )
            for _ in range(KILLABLE)
        ]
        steady = await start_worker(database, "steady", rng.randrange(2**32), tmp_path)
        run.workers.append(steady)
        progress_at, last_completed = time.monotonic(), -1
        while True:
            completed = await conn.fetchval(
                "SELECT count(*) FROM workflow_executions WHERE status = 'completed'"
            )
            if completed == N:
                break
            if completed != last_completed:
                progress_at, last_completed = time.monotonic(), completed
            elif time.monotonic() - progress_at > STALL:
                statuses = await conn.fetch(
                    "SELECT status, count(*) FROM workflow_executions GROUP BY 1 ORDER BY 1"
                )
                tails = [
                    f"{w.proc.pid} ({w.proc.returncode}): {w.output.read_text()[-400:]!r}"
                    for w in run.workers[-4:]
                ]
                raise AssertionError(
                    f"no execution completed for {STALL} s ({completed} of {N} completed; "
                    f"{ {r[0]: r[1] for r in statuses} }); the last workers' output: {tails}"
                )
            killed = {k.pid for k in run.kills}
            for worker in run.workers:
                if worker.proc.returncode is not None and worker.proc.pid not in killed:
                    raise AssertionError(
                        f"a worker exited with {worker.proc.returncode}: "
                        f"{worker.output.read_text()}"
                    )
            for task in killers:
                if task.done():
                    task.result()  # its error
            if time.monotonic() - started > BOUND:  # last resort: progress, but far too slow
                raise AssertionError(f"{completed} of {N} executions completed within {BOUND} s")
            await asyncio.sleep(0.1)
        # The end of the run: the workers stop after their poll (a call that outlasts its lease
        # ends, and its refusal is reported).
        run.stopping.set()
        await asyncio.gather(*killers)
        live = [worker for worker in run.workers if worker.proc.returncode is None]
        for worker in live:
            await ready(worker)
            worker.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(OVER_LEASE_SLEEP + 10):
            for worker in live:
                assert await worker.proc.wait() == 0, worker.output.read_text()
        workers, kills = run.workers, run.kills

        # --- what the run left --------------------------------------------------------------
        records = {
            row["uuid"]: WorkflowExecution.from_json(row["execution_json"])
            for row in await pool.fetch("SELECT uuid, execution_json FROM workflow_executions")
        }
        instances = {
            row["uuid"]: row
            for row in await pool.fetch(
                "SELECT uuid, current_state, context_json FROM workflow_instances"
            )
        }
        history: dict[UUID, list[asyncpg.Record]] = defaultdict(list)
        for row in await pool.fetch(
            "SELECT workflow_instance_uuid, from_state, event_name, to_state, outcome "
            "FROM workflow_history"
        ):
            history[row["workflow_instance_uuid"]].append(row)
        calls = {row["id"]: row for row in await conn.fetch("SELECT * FROM command_calls")}
        writes: dict[UUID, list[asyncpg.Record]] = defaultdict(list)
        for row in await pool.fetch("SELECT * FROM execution_writes ORDER BY id"):
            writes[row["execution_uuid"]].append(row)
        refused: Counter[tuple[int, UUID]] = Counter()  # (pid, execution): refusals reported
        for worker in workers:
            for line in worker.output.read_text().splitlines():
                if not line.startswith("{"):
                    continue
                report = json.loads(line)
                if "ready" in report:
                    continue
                assert (report["failed"], report["parked"], report["retrying"]) == ([], [], []), (
                    worker.output.read_text()
                )
                for uuid in report["lost"]:
                    refused[worker.proc.pid, UUID(uuid)] += 1

        # --- every execution completed, once ------------------------------------------------
        assert len(records) == N
        assert {r.status for r in records.values()} == {"completed"}
        by_instance = {r.workflow_instance_uuid: r for r in records.values()}
        execution_of = {r.uuid: r for r in records.values()}
        assert set(executions.values()) == set(execution_of)
        for i, execution_uuid in executions.items():
            record = execution_of[execution_uuid]
            instance = instances[record.workflow_instance_uuid]
            assert instance["current_state"] == "done"
            rows = history[record.workflow_instance_uuid]
            assert [
                (h["from_state"], h["event_name"], h["to_state"], h["outcome"]) for h in rows
            ] == [("new", "run", "done", "success")]
            assert record.result is not None
            assert record.result.to_state == "done"
            assert [c.name for c in record.journal] == list(COMMANDS)
            assert [c.id for c in record.journal] == ["0", "1", "2"]
            # The context after the event holds what each checkpointed call wrote.
            assert instance["context_json"] == {
                "n": i,
                **{c.name: (c.result.metadata or {})["call"] for c in record.journal},
            }
        assert set(by_instance) == set(instances)

        # --- the calls of each command occurrence -------------------------------------------
        occurrences: dict[tuple[int, str], list[asyncpg.Record]] = defaultdict(list)
        for row in calls.values():
            occurrences[row["instance_n"], row["command"]].append(row)
        assert set(occurrences) == {(i, name) for i in range(N) for name in COMMANDS}
        last_call_of: dict[int, int] = {}
        for row in sorted(calls.values(), key=lambda r: r["id"]):
            last_call_of[row["worker_pid"]] = row["id"]
        killed = {k.pid for k in kills}
        assert all(w.proc.returncode == -signal.SIGKILL for w in workers if w.proc.pid in killed)
        hit_by_kill = {last_call_of[pid] for pid in killed if pid in last_call_of}
        checkpointed: set[int] = set()
        refused_calls: set[int] = set()
        lost_claims: list[tuple[UUID, int, int]] = []  # execution, position, attempt
        reruns: Counter[str] = Counter()
        calls_per_command: Counter[int] = Counter()
        for (i, name), rows in occurrences.items():
            record = execution_of[executions[i]]
            position = COMMANDS.index(name)
            checkpoint = record.journal[position]
            key = f"{record.uuid}:{position}"
            assert {r["idempotency_key"] for r in rows} == {key}, rows
            assert {(r["execution_uuid"], r["command_id"]) for r in rows} == {
                (record.uuid, str(position))
            }
            # One call per claim: the attempts are distinct; the checkpointed call is the last
            # claim's, it finished, and its worker wrote the checkpoint.
            attempts = [r["attempt"] for r in rows]
            assert len(set(attempts)) == len(attempts), rows
            assert checkpoint.result.metadata is not None
            winner = calls[checkpoint.result.metadata["call"]]
            checkpointed.add(winner["id"])
            assert winner["idempotency_key"] == key
            assert winner["finished"]
            assert winner["attempt"] == checkpoint.attempts == max(attempts)
            assert not winner["over_lease"]
            # No call after the checkpoint committed; none of the next command before it.
            late = [r for r in rows if r["started_at"] > checkpoint.completed_at]
            assert not late, f"calls after the checkpoint of {checkpoint}: {late}"
            if position + 1 < len(COMMANDS):
                after = occurrences[i, COMMANDS[position + 1]]
                assert all(r["started_at"] > checkpoint.completed_at for r in after)
            # Every other call finished and had its checkpoint refused (its worker said so), or
            # was the last call of a killed worker (cut inside the command, or before its
            # checkpoint committed): each re-run has a kill or a refusal of its own.
            kills_on = refusals_on = 0
            for r in sorted(rows, key=lambda r: r["id"]):
                if r["id"] == winner["id"]:
                    continue
                lost_claims.append((record.uuid, position, r["attempt"]))
                if r["finished"] and refused[r["worker_pid"], record.uuid] > 0:
                    refused[r["worker_pid"], record.uuid] -= 1
                    refused_calls.add(r["id"])
                    refusals_on += 1
                elif r["id"] in hit_by_kill:
                    kills_on += 1
                else:
                    raise AssertionError(f"a call re-ran with no kill and no refusal: {r}")
            assert len(rows) - 1 == kills_on + refusals_on
            reruns["after a kill"] += kills_on
            reruns["after a refused checkpoint"] += refusals_on
            calls_per_command[len(rows)] += 1
        # Every refusal a worker reported is a call that was not checkpointed.
        assert +refused == Counter(), refused
        # The calls that outlasted their lease (a worker never killed) were all refused.
        over_lease = {r["id"] for r in calls.values() if r["over_lease"]}
        assert over_lease
        assert over_lease <= refused_calls

        # --- the committed writes of each execution -----------------------------------------
        takeovers: set[tuple[UUID, int, int]] = set()  # execution, position, attempt taken over
        for execution_uuid, record in execution_of.items():
            chain = writes[execution_uuid]
            assert [w["old_revision"] for w in chain] == list(range(len(chain)))
            assert [w["new_revision"] for w in chain] == list(range(1, len(chain) + 1))
            assert chain[-1]["new_revision"] == record.revision
            claim: asyncpg.Record | None = None
            for w in chain:
                if w["new_status"] == "running":  # a claim
                    assert w["old_status"] in ("pending", "running")
                    assert w["new_token"] not in (None, w["old_token"])
                    assert w["new_attempts"] == w["old_attempts"] + 1
                    assert w["new_journal"] == w["old_journal"]
                    if w["old_status"] == "running":  # taken over: the lease had ended
                        takeovers.add((execution_uuid, len(w["old_journal"]), w["old_attempts"]))
                        assert w["written_at"] >= datetime.fromisoformat(w["old_lease_until"])
                    claim = w
                    continue
                # A checkpoint: by the latest claim's worker, under its token, in its lease.
                assert claim is not None, w
                assert w["old_status"] == "running", w
                assert w["new_status"] in ("pending", "completed"), w
                assert (w["writer"], w["old_token"]) == (claim["writer"], claim["new_token"])
                assert w["new_journal"][:-1] == w["old_journal"], w
                entry = w["new_journal"][-1]
                assert entry["attempts"] == w["old_attempts"]
                completed_at = datetime.fromisoformat(entry["completedAt"])
                assert completed_at < datetime.fromisoformat(w["old_lease_until"])
                winner = calls[entry["result"]["metadata"]["call"]]
                assert w["writer"] == f"worker-{winner['worker_pid']}"
                claim = None
            assert chain[-1]["new_status"] == "completed"
            assert len(chain[-1]["new_journal"]) == len(COMMANDS)
        # The claim of each call that was not checkpointed ended with no write of its worker:
        # another worker took the execution over once that lease had ended.
        assert set(lost_claims) <= takeovers, set(lost_claims) - takeovers

        # --- the figures --------------------------------------------------------------------
        last_write = max(w["written_at"] for chain in writes.values() for w in chain)
        processing = (last_write - processing_from).total_seconds()
        inside = sum(
            1 for k in kills if k.pid in last_call_of and not calls[last_call_of[k.pid]]["finished"]
        )
        before_checkpoint = sum(
            1
            for k in kills
            if k.pid in last_call_of
            and calls[last_call_of[k.pid]]["finished"]
            and last_call_of[k.pid] not in checkpointed
        )
        print(
            f"\n{N} executions ({N * len(COMMANDS)} commands) enqueued in {enqueued:.1f} s, "
            f"completed in {processing:.1f} s by {len(workers)} worker processes; seed {SEED}\n"
            f"{len(kills)} kills ({sum(k.aimed for k in kills)} aimed at a command): "
            f"{inside} inside a command, {before_checkpoint} between a command's end and its "
            f"checkpoint, {len(kills) - inside - before_checkpoint} elsewhere\n"
            f"{len(calls)} calls, {sum(reruns.values())} re-runs ({reruns['after a kill']} after "
            f"a kill, {reruns['after a refused checkpoint']} after a refused checkpoint, "
            f"{len(over_lease)} of them calls that outlasted the lease); commands by number of "
            f"calls: {dict(sorted(calls_per_command.items()))}; {len(takeovers)} takeovers of an "
            "expired lease"
        )
    finally:
        run.stopping.set()
        if killers:
            _, pending = await asyncio.wait(killers, timeout=70)
            for task in pending:
                task.cancel()
        for worker in run.workers:
            if worker.proc.returncode is None:
                await kill(worker)
        await pool.close()
        await conn.close()
