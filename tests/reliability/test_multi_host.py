"""Workers on separate hosts share one database: every timeout fires once, every queued command
runs once, and every host takes part.

The hosts are network namespaces on this machine (``ip netns``, from iproute2), each with a
network stack of its own and a veth link to the machine, whose end holds an address of the
benchmarking range 198.18.0.0/15 (RFC 2544: never routed, so never someone's real network). The
test's PostgreSQL listens on those link addresses too, and its pg_hba admits their subnet (SCRAM,
the server's password). One worker process runs inside each namespace
(``ip netns exec NS python -c WORKER``), with a ``TimeoutWorker`` and an ``ExecutionWorker`` on
a pool of its own, and so reaches the server over its link only; the server sees it under its own
address (``inet_client_addr()``).

Once every worker has polled, the test makes ``DUE`` timeouts due and queues ``EXECUTIONS``
two-command events. Every fired timeout writes a log row in its transition's transaction, and
every command call writes one as it runs (autocommit, so that a call whose checkpoint were lost
would show), each with the address the server saw. Then: one history row and one log row per
timeout, one call per command, every execution completed, and every host fired timeouts and ran
commands.

Namespaces need root (CAP_SYS_ADMIN): without it the test is skipped, saying why, unless
``DURAFLOWS_REQUIRE_NETNS=1`` (set by CI, which runs as root), which makes it fail instead. The
namespaces' names carry the test's pid; those of a run that died without cleaning up (its pid
gone) are removed at the start of the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import asyncpg
import pytest
from helpers import SWEEP

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    State,
    WorkflowDefinition,
    WorkflowRuntime,
    create_pool,
    migrations,
    pg_workflow_providers,
)
from duraflows_pg_async.embedded import TEST_SETTINGS, EmbeddedPostgres, EmbeddedPostgresError

# The module's own server and namespaces: one xdist worker runs the module.
pytestmark = pytest.mark.xdist_group("multi_host")

HOSTS = 3
DUE = 900
EXECUTIONS = 90
BATCH = 10
REQUIRE_ENV = "DURAFLOWS_REQUIRE_NETNS"
PREFIX = "duraflows-"  # namespaces: duraflows-<pid>-<n>
# Last-resort bound: a wait fails when what it waits on has not moved for this long.
STALL = 60.0
ROOT = Path(__file__).resolve().parents[2]

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

SIDE_TABLES = """
CREATE TABLE fired_log (
    transition_uuid uuid PRIMARY KEY,
    host            inet NOT NULL DEFAULT inet_client_addr()
);
CREATE TABLE step_log (
    id              bigserial PRIMARY KEY,
    idempotency_key text NOT NULL,
    host            inet NOT NULL DEFAULT inet_client_addr()
);
"""

# The worker of one host: polls until the test closes its stdin, then prints its stats.
WORKER = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from duraflows_pg_async import ExecutionWorker, TimeoutWorker, create_pool
    from tests.reliability.test_multi_host import BATCH, build_runtime

    async def main():
        pool = await create_pool(os.environ["DATABASE_URL"], min_size=1, max_size=4)
        try:
            runtime = build_runtime(pool)
            await runtime.initialize()
            sweeper = TimeoutWorker(runtime, batch_size=BATCH, poll_interval=0.05)
            executor = ExecutionWorker(runtime, batch_size=BATCH, poll_interval=0.05)
            tasks = [asyncio.create_task(w.run()) for w in (sweeper, executor)]
            while sweeper.stats.sweeps == 0 or executor.stats.polls == 0:
                await asyncio.sleep(0.01)
            print("ready", await pool.fetchval("SELECT host(inet_client_addr())"), flush=True)
            await asyncio.to_thread(sys.stdin.read)
            sweeper.stop()
            executor.stop()
            await asyncio.gather(*tasks)
            print("stats", json.dumps({"processed": sweeper.stats.processed,
                "sweep_errors": sweeper.stats.errors, "completed": executor.stats.completed,
                "poll_errors": executor.stats.errors}), flush=True)
        finally:
            await pool.close()

    asyncio.run(main())
    """
)


def build_runtime(pool: asyncpg.Pool) -> WorkflowRuntime:
    """The runtime of every host: ``log`` fires the timeouts, ``step`` runs the executions."""
    providers = pg_workflow_providers(pool, durable_execution=True)
    definitions = DefinitionRegistry()
    definitions.register(SWEEP)
    definitions.register(JOB)
    commands = CommandRegistry()

    async def log(subject: Any, ctx: ExecutionContext) -> None:
        # In the transition's transaction: committed with it, or not at all.
        await providers.transaction_runner.connection().execute(
            "INSERT INTO fired_log (transition_uuid) VALUES ($1)", ctx.transition_uuid
        )

    async def step(subject: Any, ctx: ExecutionContext) -> None:
        # Outside any transaction (autocommit): every call shows, checkpointed or not.
        assert ctx.durable is not None
        await pool.execute(
            "INSERT INTO step_log (idempotency_key) VALUES ($1)", ctx.durable.idempotency_key
        )

    commands.register("log", log)
    commands.register("step", step)
    return WorkflowRuntime(definitions=definitions, commands=commands, persistence=providers)


# --- the network ---------------------------------------------------------------------------------


def _unavailable(reason: str) -> NoReturn:
    """Skip, or fail when the environment says namespaces must work here (CI)."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: the multi-host test must run here)")
    pytest.skip(reason)


def _ip(*args: str) -> str:
    """Run ``ip ARGS``; its stdout, or CalledProcessError with its stderr."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, ["ip", *args], result.stdout, result.stderr
        )
    return result.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_leftovers() -> None:
    """Delete the namespaces of earlier runs whose process is gone (a run killed before its
    clean-up); deleting a namespace deletes its veth link, both ends."""
    for line in _ip("netns", "list").splitlines():
        match = re.fullmatch(rf"{PREFIX}(\d+)-\d+(?: \(id: \d+\))?", line.strip())
        if match and not _pid_alive(int(match.group(1))):
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", line.split()[0])


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 198.18.0.0/15 that no address of this machine is in (another run's, say)."""
    used = [
        ipaddress.ip_interface(word)
        for word in _ip("-o", "-4", "addr", "show").split()
        if re.fullmatch(r"\d+\.\d+\.\d+\.\d+/\d+", word)
    ]
    candidates = list(ipaddress.IPv4Network("198.18.0.0/15").subnets(new_prefix=24))
    random.shuffle(candidates)
    for subnet in candidates:
        if not any(interface.ip in subnet for interface in used):
            return subnet
    raise AssertionError("no free /24 in 198.18.0.0/15")


@dataclass(frozen=True)
class Host:
    """A namespace and its link: the machine's end (where the server listens) and its own."""

    namespace: str
    server_ip: str
    own_ip: str


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[Host]]:
    """HOSTS namespaces, each linked to the machine by a veth pair with a /30 of its own."""
    if not sys.platform.startswith("linux"):
        _unavailable("network namespaces are a Linux feature")
    if shutil.which("ip") is None:
        _unavailable("no `ip` command: install iproute2 (Debian: apt-get install iproute2)")
    try:
        _remove_leftovers()
    except subprocess.CalledProcessError as exc:
        _unavailable(f"`ip netns list` failed: {exc.stderr.strip()}")
    subnet = _free_subnet()
    addresses = list(subnet)
    made: list[Host] = []
    try:
        for n in range(HOSTS):
            namespace = f"{PREFIX}{os.getpid()}-{n}"
            outside, inside = f"dfh{os.getpid()}-{n}", f"dfn{os.getpid()}-{n}"
            host = Host(namespace, str(addresses[4 * n + 1]), str(addresses[4 * n + 2]))
            try:
                _ip("netns", "add", namespace)
            except subprocess.CalledProcessError as exc:
                _unavailable(
                    f"`ip netns add` is not permitted here (it needs root or CAP_SYS_ADMIN): "
                    f"{exc.stderr.strip()}"
                )
            made.append(host)
            try:
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside,
                    "netns", namespace)  # fmt: skip
            except subprocess.CalledProcessError as exc:
                _unavailable(f"no veth link could be made: {exc.stderr.strip()}")
            _ip("addr", "add", f"{host.server_ip}/30", "dev", outside)
            _ip("link", "set", outside, "up")
            _ip("-n", namespace, "addr", "add", f"{host.own_ip}/30", "dev", inside)
            _ip("-n", namespace, "link", "set", inside, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        yield made
    finally:
        for host in made:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", host.namespace)


# --- the server ----------------------------------------------------------------------------------


@dataclass
class Server:
    embedded: EmbeddedPostgres

    def dsn(self, host: str = "127.0.0.1") -> str:
        """The server's DSN through ``host``, one of the addresses it listens on."""
        return self.embedded.dsn().replace("@127.0.0.1:", f"@{host}:", 1)


async def _prepare(server: Server, subnet: str) -> None:
    conn = await asyncpg.connect(server.dsn())
    try:
        await migrations.apply(conn)
        await conn.execute(SIDE_TABLES)
        # The namespaces' subnet, with the same SCRAM password as everything else.
        hba = server.embedded.data_dir / "pg_hba.conf"
        with hba.open("a") as file:
            file.write(f"host all postgres {subnet} scram-sha-256\n")
        assert await conn.fetchval("SELECT pg_reload_conf()")
    finally:
        await conn.close()


async def _wait_until_admitted(dsn: str) -> None:
    """Until the reloaded pg_hba admits the links' subnet (the postmaster reloads on its own
    time): this connection comes from the machine's end of the first link, in that subnet."""
    async with asyncio.timeout(STALL):
        while True:
            try:
                conn = await asyncpg.connect(dsn)
            except asyncpg.InvalidAuthorizationSpecificationError:
                await asyncio.sleep(0.05)  # the poll's interval, bounded above
                continue
            await conn.close()
            return


@pytest.fixture(scope="module")
def server(hosts: list[Host]) -> Iterator[Server]:
    """A server of the module's own that listens on every link's machine end too."""
    try:
        embedded = EmbeddedPostgres(settings=TEST_SETTINGS)
    except EmbeddedPostgresError as exc:
        pytest.skip(f"no embedded PostgreSQL: {exc}")
    # EmbeddedPostgres keeps listen_addresses to itself so that its server is private by
    # default; this test opens it on purpose, to the links of its own namespaces only.
    embedded.settings["listen_addresses"] = ",".join(
        ["127.0.0.1", *(host.server_ip for host in hosts)]
    )
    try:
        embedded.start()
        result = Server(embedded)
        subnet = ipaddress.ip_network(f"{hosts[0].server_ip}/24", strict=False)
        asyncio.run(_prepare(result, str(subnet)))
        asyncio.run(_wait_until_admitted(result.dsn(hosts[0].server_ip)))
        yield result
    finally:
        embedded.close()


@pytest.fixture
async def local_pool(server: Server) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(server.dsn(), min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


# --- the test ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_workers_on_separate_hosts_share_one_database_with_no_double_processing(
    hosts: list[Host],
    server: Server,
    local_pool: asyncpg.Pool,
    request: pytest.FixtureRequest,
) -> None:
    request.node.user_properties.append(("postgres", True))  # counted in the summary line
    pool = local_pool
    processes: list[asyncio.subprocess.Process] = []
    try:
        for host in hosts:
            process = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", host.namespace, sys.executable, "-c", WORKER,
                cwd=ROOT,
                # The DSN carries the server's password: never on a command line.
                env={
                    **os.environ,
                    "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
                    "DATABASE_URL": server.dsn(host.server_ip),
                },
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            processes.append(process)
        # Every worker has polled (through its own link: the server sees its own address).
        for host, process in zip(hosts, processes, strict=True):
            assert process.stdout is not None
            async with asyncio.timeout(STALL):
                ready = await process.stdout.readline()
            assert ready.decode().split() == ["ready", host.own_ip], ready

        # The work, all at once: due timeouts, then queued executions.
        await pool.execute(
            "INSERT INTO workflow_instances (uuid, workflow_name, current_state, "
            "definition_version, expires_at) SELECT gen_random_uuid(), 'sweep', 'waiting', 1, "
            "now() - interval '1 minute' - g * interval '1 millisecond' "
            "FROM generate_series(1, $1::int) g",
            DUE,
        )
        runtime = build_runtime(pool)
        for _ in range(EXECUTIONS):
            job = await runtime.create_instance("job")
            await runtime.enqueue_event(job.uuid, "run", idempotency_key=f"run:{job.uuid}")

        async def unfinished() -> int:
            for process in processes:
                assert process.returncode is None, f"a worker exited: {process.returncode}"
            return int(
                await pool.fetchval(
                    "SELECT (SELECT count(*) FROM workflow_instances "
                    "WHERE expires_at IS NOT NULL) + (SELECT count(*) FROM workflow_executions "
                    "WHERE status <> 'completed')"
                )
            )

        loop = asyncio.get_running_loop()
        best, since = await unfinished(), loop.time()
        while best > 0:
            await asyncio.sleep(0.05)  # the poll's interval, bounded by STALL below
            left = await unfinished()
            if left < best:
                best, since = left, loop.time()
            elif loop.time() - since > STALL:
                raise AssertionError(f"{left} timeouts and executions left, none for {STALL}s")

        # Stop the workers (stdin closed) and read their figures.
        stats = []
        for process in processes:
            async with asyncio.timeout(STALL):
                out, _ = await process.communicate(b"")
            assert process.returncode == 0, out
            stats.append(json.loads(out.decode().split("stats", 1)[1]))
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()

    own_ips = {host.own_ip for host in hosts}
    # Each timeout fired once: one history row, one log row (same transaction), none left.
    fired = await pool.fetch("SELECT host(host) AS host, count(*) AS n FROM fired_log GROUP BY 1")
    by_host = {row["host"]: row["n"] for row in fired}
    assert sum(by_host.values()) == DUE
    assert set(by_host) == own_ips, by_host  # every host fired some, over its own link
    history = await pool.fetch(
        "SELECT count(*) AS n FROM workflow_history h JOIN workflow_instances i "
        "ON i.uuid = h.workflow_instance_uuid WHERE i.workflow_name = 'sweep' "
        "GROUP BY h.workflow_instance_uuid"
    )
    assert Counter(row["n"] for row in history) == {1: DUE}
    assert not await pool.fetchval(
        "SELECT count(*) FROM workflow_instances WHERE workflow_name = 'sweep' "
        "AND (current_state <> 'fired' OR expires_at IS NOT NULL)"
    )
    # Each execution completed once: two journal entries, each command called once, the
    # instance in done with one history row.
    executions = await pool.fetch(
        "SELECT uuid, status, jsonb_array_length(execution_json->'journal') AS journal "
        "FROM workflow_executions"
    )
    assert len(executions) == EXECUTIONS
    assert {(row["status"], row["journal"]) for row in executions} == {("completed", 2)}
    calls = await pool.fetch(
        "SELECT idempotency_key, count(*) AS n, array_agg(host(host)) AS hosts "
        "FROM step_log GROUP BY 1"
    )
    assert {row["idempotency_key"] for row in calls} == {
        f"{row['uuid']}:{command}" for row in executions for command in ("0", "1")
    }
    assert {row["n"] for row in calls} == {1}
    step_hosts = Counter(row["hosts"][0] for row in calls)
    assert set(step_hosts) == own_ips, step_hosts
    jobs = await pool.fetch(
        "SELECT i.current_state, count(h.uuid) AS h FROM workflow_instances i "
        "LEFT JOIN workflow_history h ON h.workflow_instance_uuid = i.uuid "
        "WHERE i.workflow_name = 'job' GROUP BY i.uuid"
    )
    assert {(row["current_state"], row["h"]) for row in jobs} == {("done", 1)}
    print(
        f"\nmulti-host: {HOSTS} hosts; timeouts fired per host {sorted(by_host.values())}, "
        f"commands run per host {sorted(step_hosts.values())}; worker stats {stats}"
    )
