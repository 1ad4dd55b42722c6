"""A worker killed mid-batch: its claims are bounded by the lease, nothing is lost or done twice.

The lease defaults to a short one so that the test runs in seconds; run it with
``DURAFLOWS_KILL_TEST_LEASE=20`` to measure the stall with the default lease (docs/reliability.md
gives the figure). The stall is printed, never asserted: the machine may be slow.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers import SWEEP

from duraflows_pg_async import (
    CommandRegistry,
    DefinitionRegistry,
    ExecutionContext,
    TimeoutWorker,
    WorkflowRuntime,
    create_pool,
    pg_workflow_providers,
)

INSTANCES = 200
LEASE = float(os.environ.get("DURAFLOWS_KILL_TEST_LEASE", "3"))

# The worker that gets killed: its third instance never finishes.
DOOMED_WORKER = textwrap.dedent(
    """
    import asyncio, os, sys
    from duraflows_pg_async import (CommandRegistry, DefinitionRegistry, TimeoutWorker,
        WorkflowRuntime, create_pool, pg_workflow_providers)
    from helpers import SWEEP
    from tests.reliability.test_worker_kill import log_in_transaction

    async def main(dsn, lease):
        pool = await create_pool(dsn, min_size=1, max_size=2)
        done = 0
        providers = pg_workflow_providers(pool)

        async def log(subject, ctx):
            nonlocal done
            await log_in_transaction(providers, ctx, "doomed")
            done += 1
            if done == 3:
                print("stuck", flush=True)
                await asyncio.Event().wait()

        definitions = DefinitionRegistry()
        definitions.register(SWEEP)
        commands = CommandRegistry()
        commands.register("log", log)
        runtime = WorkflowRuntime(definitions=definitions, commands=commands,
            persistence=providers, sweep_lease=lease)
        batched = len(sys.argv) > 3 and sys.argv[3] == "batched"
        await TimeoutWorker(runtime, batch_size=int(sys.argv[2]), batched=batched).run()

    asyncio.run(main(os.environ["DATABASE_URL"], float(sys.argv[1])))
    """
)
ROOT = Path(__file__).resolve().parents[2]


async def log_in_transaction(providers: Any, ctx: ExecutionContext, worker: str) -> None:
    """One sweep_log row per transition, in the transition's own transaction."""
    conn = providers.transaction_runner.connection()
    await conn.execute(
        "INSERT INTO sweep_log (transition_uuid, worker) VALUES ($1, $2)",
        ctx.transition_uuid,
        worker,
    )


@pytest.mark.slow
async def test_a_killed_worker_s_batch_is_taken_over_after_its_lease(database: str) -> None:
    conn = await asyncpg.connect(database)
    pool = await create_pool(database, min_size=1, max_size=4)
    doomed: asyncio.subprocess.Process | None = None
    try:
        await conn.execute(
            "CREATE TABLE sweep_log (transition_uuid uuid PRIMARY KEY, worker text NOT NULL)"
        )
        providers = pg_workflow_providers(pool)
        taken_over = asyncio.Event()
        first_takeover: list[float] = []
        logged = 0

        async def log(subject: Any, ctx: ExecutionContext) -> None:
            nonlocal logged
            await log_in_transaction(providers, ctx, "survivor")
            if not first_takeover:
                first_takeover.append(time.monotonic())
            logged += 1
            if logged == INSTANCES - 2:
                taken_over.set()

        definitions = DefinitionRegistry()
        definitions.register(SWEEP)
        commands = CommandRegistry()
        commands.register("log", log)
        survivor = WorkflowRuntime(
            definitions=definitions, commands=commands, persistence=providers, sweep_lease=LEASE
        )
        await survivor.initialize()
        await conn.execute(
            "INSERT INTO workflow_instances (uuid, workflow_name, current_state, "
            "definition_version, expires_at) SELECT gen_random_uuid(), 'sweep', 'waiting', 1, "
            "now() - interval '1 minute' - (g || ' milliseconds')::interval "
            "FROM generate_series(1, $1::int) g",
            INSTANCES,
        )
        doomed = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            DOOMED_WORKER,
            str(LEASE),
            str(INSTANCES),
            cwd=ROOT,
            # The DSN carries the server's password: never on a command line.
            env={
                **os.environ,
                # The repository, and tests/ for the helpers (as pytest puts it on sys.path).
                "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
                "DATABASE_URL": database,
            },
            stdout=asyncio.subprocess.PIPE,
        )
        assert doomed.stdout is not None
        async with asyncio.timeout(120):
            line = await doomed.stdout.readline()
        assert line.strip() == b"stuck", line
        claimed_at = datetime.now(UTC)
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
        killed = time.monotonic()

        # Whatever it had claimed is claimed for at most the lease.
        claims = await conn.fetchrow(
            "SELECT count(*) AS n, max(timeout_retry_at) AS until FROM workflow_instances "
            "WHERE timeout_attempts = 0 AND timeout_retry_at IS NOT NULL"
        )
        assert claims is not None
        assert claims["n"] == INSTANCES - 2
        assert claims["until"] <= claimed_at + timedelta(seconds=LEASE)

        worker = TimeoutWorker(survivor, batch_size=50, poll_interval=0.2)
        task = asyncio.create_task(worker.run())
        try:
            async with asyncio.timeout(LEASE + 120):
                await taken_over.wait()
        finally:
            worker.stop()
            await task
        stall = first_takeover[0] - killed
        print(
            f"\nlease {LEASE:g} s: first instance of the killed worker's batch after {stall:.1f} s"
        )

        # Nothing lost, nothing twice: one history row and one log row per instance.
        per_instance = await conn.fetch(
            "SELECT workflow_instance_uuid, count(*) AS n FROM workflow_history GROUP BY 1"
        )
        assert len(per_instance) == INSTANCES
        assert {row["n"] for row in per_instance} == {1}
        workers: dict[str, int] = {
            row["worker"]: row["n"]
            for row in await conn.fetch("SELECT worker, count(*) AS n FROM sweep_log GROUP BY 1")
        }
        assert workers == {"doomed": 2, "survivor": INSTANCES - 2}
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM workflow_instances WHERE current_state <> 'fired'"
            )
            == 0
        )
    finally:
        if doomed is not None and doomed.returncode is None:
            doomed.kill()
            await doomed.wait()
        await pool.close()
        await conn.close()


@pytest.mark.slow
async def test_a_killed_batched_worker_s_batch_is_due_again_at_once(database: str) -> None:
    """A batched worker holds its batch with row locks, not claims: killed mid-batch, its
    transaction is rolled back by the server and the whole batch (the instances it had fired
    included) is due at once, whatever the lease; each instance then fires once."""
    conn = await asyncpg.connect(database)
    pool = await create_pool(database, min_size=1, max_size=4)
    doomed: asyncio.subprocess.Process | None = None
    lease = 600.0  # far longer than the test: nothing may wait for it
    try:
        await conn.execute(
            "CREATE TABLE sweep_log (transition_uuid uuid PRIMARY KEY, worker text NOT NULL)"
        )
        providers = pg_workflow_providers(pool)
        all_fired = asyncio.Event()
        logged = 0

        async def log(subject: Any, ctx: ExecutionContext) -> None:
            nonlocal logged
            await log_in_transaction(providers, ctx, "survivor")
            logged += 1
            if logged == INSTANCES:
                all_fired.set()

        definitions = DefinitionRegistry()
        definitions.register(SWEEP)
        commands = CommandRegistry()
        commands.register("log", log)
        survivor = WorkflowRuntime(
            definitions=definitions, commands=commands, persistence=providers, sweep_lease=lease
        )
        await survivor.initialize()
        await conn.execute(
            "INSERT INTO workflow_instances (uuid, workflow_name, current_state, "
            "definition_version, expires_at) SELECT gen_random_uuid(), 'sweep', 'waiting', 1, "
            "now() - interval '1 minute' - (g || ' milliseconds')::interval "
            "FROM generate_series(1, $1::int) g",
            INSTANCES,
        )
        doomed = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            DOOMED_WORKER,
            str(lease),
            str(INSTANCES),
            "batched",
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
                "DATABASE_URL": database,
            },
            stdout=asyncio.subprocess.PIPE,
        )
        assert doomed.stdout is not None
        async with asyncio.timeout(120):
            line = await doomed.stdout.readline()
        assert line.strip() == b"stuck", line
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()

        worker = TimeoutWorker(survivor, batch_size=50, poll_interval=0.2, batched=True)
        task = asyncio.create_task(worker.run())
        try:
            # Well before the lease: the batch was held by locks the kill released.
            async with asyncio.timeout(120):
                await all_fired.wait()
        finally:
            worker.stop()
            await task

        per_instance = await conn.fetch(
            "SELECT workflow_instance_uuid, count(*) AS n FROM workflow_history GROUP BY 1"
        )
        assert len(per_instance) == INSTANCES
        assert {row["n"] for row in per_instance} == {1}
        workers = await conn.fetch("SELECT worker, count(*) AS n FROM sweep_log GROUP BY 1")
        # The doomed worker's two fired instances were in its rolled-back transaction.
        assert {row["worker"]: row["n"] for row in workers} == {"survivor": INSTANCES}
        claims = await conn.fetchval(
            "SELECT count(*) FROM workflow_instances "
            "WHERE timeout_attempts = 0 AND timeout_retry_at IS NOT NULL"
        )
        assert claims == 0
    finally:
        if doomed is not None and doomed.returncode is None:
            doomed.kill()
            await doomed.wait()
        await pool.close()
        await conn.close()
