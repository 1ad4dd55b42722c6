"""``duraflows-pg worker``: where APP is found, its timeouts, lease and workflows."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from helpers import wait_until
from test_cli import assert_clean_error, cli, due_reminder, wait_for_stopping_notice

from duraflows_pg_async import WorkflowInstance, WorkflowPersistenceProvider

APP = """
import asyncio
import os
from pathlib import Path

from duraflows_pg_async import (
    CommandRef, CommandRegistry, DefinitionRegistry, Event, State, Timeout, WorkflowDefinition,
    WorkflowRuntime, memory_workflow_providers,
)


def flow(name):
    send = (CommandRef("send"),)
    remind = Event(target_state="reminded", commands=send, timeout=Timeout(minutes=5))
    return WorkflowDefinition(
        name=name,
        initial_state="waiting",
        states={"waiting": State(events={"remind": remind}), "reminded": State()},
    )


def build(persistence):
    async def send(subject, ctx):
        if persistence.transaction_runner.is_transaction_active():
            conn = persistence.transaction_runner.connection()
            ctx.context["lock_timeout"] = await conn.fetchval("SHOW lock_timeout")
            ctx.context["statement_timeout"] = await conn.fetchval("SHOW statement_timeout")
        marker = os.environ.get("IN_COMMAND_MARKER")
        if marker:
            Path(marker).touch()
            await asyncio.sleep(120)  # a command stuck on a slow partner

    definitions = DefinitionRegistry()
    definitions.register(flow("reminder"))
    definitions.register(flow("nudge"))
    commands = CommandRegistry()
    commands.register("send", send)
    return WorkflowRuntime(definitions=definitions, commands=commands, persistence=persistence)


def not_a_runtime(persistence):
    return 42


def needs_a_file(persistence):
    with open("/nonexistent/duraflows-settings.toml") as settings:
        return settings.read()


READY = build(memory_workflow_providers())
"""


def console_script() -> str:
    script = shutil.which("duraflows-pg", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the duraflows-pg console script is not installed next to this Python")
    return script


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without PYTHONPATH (APP must be found by the command itself)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATABASE_URL")}
    env.update(extra)
    return env


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def test_app_is_imported_from_the_current_directory(database: str, tmp_path: Path) -> None:
    (tmp_path / "cli_here.py").write_text(APP)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = console_script()
    env = clean_env(DATABASE_URL=database)

    here = await asyncio.to_thread(run, [script, "worker", "cli_here:not_a_runtime"], tmp_path, env)
    # Imported and called: what it returned is the only complaint.
    assert_clean_error(here, 2, "cli_here:not_a_runtime returned int, not a WorkflowRuntime")

    away = await asyncio.to_thread(
        run, [script, "worker", "cli_here:not_a_runtime"], elsewhere, env
    )
    assert_clean_error(away, 2, "cannot import 'cli_here'")
    app_dir = [script, "worker", "cli_here:not_a_runtime", "--app-dir", ".."]
    found = await asyncio.to_thread(run, app_dir, elsewhere, env)
    assert_clean_error(found, 2, "returned int, not a WorkflowRuntime")
    missing = [script, "worker", "cli_here:not_a_runtime", "--app-dir", "nowhere"]
    assert_clean_error(await asyncio.to_thread(run, missing, elsewhere, env), 2, "--app-dir")


class Worker:
    """A ``duraflows-pg worker`` process for one test."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, cwd: Path, env: dict[str, str], *args: str) -> Worker:
        argv = [sys.executable, "-m", "duraflows_pg_async", "worker", *args]
        proc = await asyncio.to_thread(
            subprocess.Popen,
            argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return cls(proc)

    async def first_line(self) -> str:
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        assert line, self.proc.communicate()
        return line

    def check_running(self) -> None:
        assert self.proc.poll() is None, self.proc.communicate()

    async def stop(self, signals: int = 1) -> tuple[int, str, str]:
        """Send ``signals`` SIGTERMs; returns the exit code, stdout and (all of) stderr."""
        self.proc.send_signal(signal.SIGTERM)
        notices = ""
        for _ in range(signals - 1):
            # The first signal waits for the instance in hand; the next one aborts it.
            notices += await wait_for_stopping_notice(self.proc)
            self.proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(self.proc.communicate, timeout=20)
        return self.proc.returncode, out, notices + err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


async def test_worker_timeouts_reach_its_transactions(
    database: str, providers: WorkflowPersistenceProvider, tmp_path: Path
) -> None:
    (tmp_path / "cli_app.py").write_text(APP)
    instance = due_reminder()
    await providers.instance_store.create(instance)
    env = clean_env(DATABASE_URL=database, DURAFLOWS_STATEMENT_TIMEOUT="7")
    worker = await Worker.start(
        tmp_path, env, "cli_app:build", "--lock-timeout", "3", "--poll-interval", "0.1"
    )
    try:

        async def reminded() -> WorkflowInstance | None:
            stored = await providers.instance_store.find_by_uuid(instance.uuid)
            assert stored is not None
            if stored.current_state == "reminded":
                return stored
            worker.check_running()
            return None

        stored = await wait_until(reminded, within=30, what="the worker processing the timeout")
        assert stored is not None
        code, _, err = await worker.stop()
    finally:
        worker.kill()
    assert code == 0, err
    assert stored.context == {"lock_timeout": "3s", "statement_timeout": "7s"}


async def test_a_batched_worker_sweeps_in_batches(
    database: str, providers: WorkflowPersistenceProvider, tmp_path: Path
) -> None:
    (tmp_path / "cli_app.py").write_text(APP)
    instances = [due_reminder() for _ in range(3)]
    for instance in instances:
        await providers.instance_store.create(instance)
    env = clean_env(DATABASE_URL=database)
    worker = await Worker.start(
        tmp_path, env, "cli_app:build", "--json", "--batched", "--poll-interval", "0.1"
    )
    try:
        started = json.loads(await worker.first_line())
        assert (started["event"], started["batched"], started["concurrency"]) == (
            "started",
            True,
            2,
        )

        async def all_reminded() -> bool:
            for instance in instances:
                stored = await providers.instance_store.find_by_uuid(instance.uuid)
                assert stored is not None
                if stored.current_state != "reminded":
                    worker.check_running()
                    return False
            return True

        await wait_until(all_reminded, within=30, what="the batched worker's sweep")
        code, _, err = await worker.stop()
    finally:
        worker.kill()
    assert code == 0, err
    # The command's SQL (SHOW) ran inside the batch's transaction, under the worker's settings.
    for instance in instances:
        stored = await providers.instance_store.find_by_uuid(instance.uuid)
        assert stored is not None
        assert set(stored.context) == {"lock_timeout", "statement_timeout"}


async def test_worker_sweeps_only_the_named_workflows_with_its_lease(
    database: str, providers: WorkflowPersistenceProvider, tmp_path: Path
) -> None:
    (tmp_path / "cli_app.py").write_text(APP)
    reminder = due_reminder()
    nudge = due_reminder()
    nudge.workflow_name = "nudge"
    nudge.expires_at = datetime.now(UTC) - timedelta(hours=1)  # due first
    for instance in (reminder, nudge):
        await providers.instance_store.create(instance)
    marker = tmp_path / "in-command"
    env = clean_env(DATABASE_URL=database, IN_COMMAND_MARKER=str(marker))
    worker = await Worker.start(
        tmp_path,
        env,
        "cli_app:build",
        "--json",
        "--workflow",
        "reminder",
        "--lease",
        "300",
        "--batch-size",
        "1",
        "--poll-interval",
        "0.1",
    )
    conn = await asyncpg.connect(database)
    try:
        started = json.loads(await worker.first_line())
        assert started["event"] == "started"
        assert (started["lease"], started["workflows"]) == (300.0, ["reminder"])

        async def in_command() -> bool:
            if marker.exists():
                return True
            worker.check_running()
            return False

        await wait_until(in_command, within=30, what="the worker in the command")
        claim_left = await conn.fetchval(
            "SELECT timeout_retry_at - now() FROM workflow_instances WHERE uuid = $1",
            reminder.uuid,
        )
        nudge_row = await conn.fetchrow(
            "SELECT version, timeout_retry_at FROM workflow_instances WHERE uuid = $1", nudge.uuid
        )
        code, out, err = await worker.stop(signals=2)
    finally:
        worker.kill()
        await conn.close()
    assert timedelta(seconds=200) < claim_left <= timedelta(seconds=300)
    assert nudge_row is not None
    assert tuple(nudge_row) == (1, None)  # never claimed, never touched
    assert code == 1, err
    assert json.loads(out.splitlines()[-1]) == {
        "event": "aborted",
        "processed": 0,
        "failed": 0,
        "parked": 0,
        "exit_code": 1,
    }


async def test_a_ready_runtime_keeps_its_own_timeouts(database: str, tmp_path: Path) -> None:
    (tmp_path / "cli_app.py").write_text(APP)
    env = clean_env(DATABASE_URL=database)
    worker = await Worker.start(tmp_path, env, "cli_app:READY", "--lock-timeout", "2")
    try:
        assert "1 worker(s) running" in await worker.first_line()
        code, _, err = await worker.stop()
    finally:
        worker.kill()
    assert code == 0, err
    assert "--lock-timeout has no effect: cli_app:READY is a ready WorkflowRuntime" in err


@pytest.mark.parametrize(
    ("args", "env", "text"),
    [
        (
            ["--workflow", "invoice"],
            {},
            "--workflow invoice: not registered in cli_app:build (registered: nudge, reminder)",
        ),
        (["--lock-timeout", "-1"], {}, "--lock-timeout must be a non-negative number"),
        (["--statement-timeout", "later"], {}, "--statement-timeout must be"),
        ([], {"DURAFLOWS_LOCK_TIMEOUT": "abc"}, "DURAFLOWS_LOCK_TIMEOUT must be"),
        (["--lease", "0"], {}, "--lease must be a positive number of seconds"),
        ([], {"DURAFLOWS_WORKER_LEASE": "nan"}, "DURAFLOWS_WORKER_LEASE must be"),
        (["--concurrency", "0"], {}, "--concurrency must be between 1 and 64, got 0"),
        (["--concurrency", "65"], {}, "--concurrency must be between 1 and 64, got 65"),
    ],
)
async def test_worker_options_are_checked(
    database: str, tmp_path: Path, args: list[str], env: dict[str, str], text: str
) -> None:
    (tmp_path / "cli_app.py").write_text(APP)
    result = await cli(
        "worker",
        "cli_app:build",
        *args,
        url=database,
        extra_env={**env, "PYTHONPATH": str(tmp_path)},
    )
    assert_clean_error(result, 2, text)


async def test_an_os_error_of_the_app_is_not_a_database_error(
    database: str, tmp_path: Path
) -> None:
    (tmp_path / "cli_app.py").write_text(APP)
    result = await cli(
        "worker", "cli_app:needs_a_file", url=database, extra_env={"PYTHONPATH": str(tmp_path)}
    )
    assert_clean_error(result, 1, "FileNotFoundError: [Errno 2] No such file or directory")
    assert "database" not in result.stderr
