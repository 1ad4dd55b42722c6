"""``duraflows-pg dev-db``: an embedded server in the foreground, migrated, stopped by a signal,
its data kept between runs with ``--data-dir``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from helpers import wait_for_line
from test_cli import assert_clean_error, cli


def start(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.Popen(
        [sys.executable, "-m", "duraflows_pg_async", "dev-db", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


async def stop(process: subprocess.Popen[str], sig: signal.Signals) -> tuple[int, str, str]:
    process.send_signal(sig)
    out, err = await asyncio.to_thread(process.communicate, timeout=120)
    return process.returncode, out, err


@pytest.fixture
def searchable_dir() -> Iterator[Path]:
    """A directory the server's user can reach when the tests run as root (dev-db runs the
    server as an unprivileged user then, and never opens up a directory itself)."""
    path = Path(tempfile.mkdtemp(prefix="duraflows-dev-db-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
async def test_serves_a_migrated_database_and_keeps_its_data_dir(searchable_dir: Path) -> None:
    data_dir = searchable_dir / "pg"
    first = start("--data-dir", str(data_dir), "--json")
    try:
        line = await wait_for_line(first.stdout, "databaseUrl", within=120)  # type: ignore[arg-type]
        info = json.loads(line.strip().splitlines()[-1])
        assert info["dataDir"] == str(data_dir)
        conn = await asyncpg.connect(info["databaseUrl"])
        try:
            assert await conn.fetchval("SELECT current_database()") == "duraflows"
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") > 0
            await conn.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        finally:
            await conn.close()
    finally:
        code, _, err = await stop(first, signal.SIGINT)
    assert code == 0, err
    assert not (data_dir / "data" / "postmaster.pid").exists()  # stopped, not killed
    assert (data_dir / "dev-db.password").stat().st_mode & 0o777 == 0o600

    second = start("--data-dir", str(data_dir))
    try:
        read = await wait_for_line(second.stdout, "DATABASE_URL=", within=120)  # type: ignore[arg-type]
        url = read.strip().splitlines()[-1].removeprefix("DATABASE_URL=")
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT n FROM kept") == 7
        finally:
            await conn.close()
    finally:
        code, out, err = await stop(second, signal.SIGTERM)
    assert code == 0, err
    assert out.strip().endswith("PostgreSQL stopped.")


async def test_without_a_data_dir_nothing_is_left() -> None:
    process = start("--database", "scratch")
    try:
        read = await wait_for_line(process.stdout, "DATABASE_URL=", within=120)  # type: ignore[arg-type]
        assert "'scratch' is up and migrated; data in " in read
        base_dir = read.split("data in ", 1)[1].splitlines()[0]
        assert await asyncio.to_thread(os.path.isdir, base_dir)
    finally:
        code, _, err = await stop(process, signal.SIGINT)
    assert code == 0, err
    assert not await asyncio.to_thread(os.path.exists, base_dir)


async def test_bad_options_and_a_foreign_data_dir(tmp_path: Path) -> None:
    bad_port = await cli("dev-db", "--port", "70000")
    assert_clean_error(bad_port, 2, "--port must be 1 to 65535")
    bad_name = await cli("dev-db", "--database", 'a"b')
    assert_clean_error(bad_name, 2, "--database must be a name")
    foreign = tmp_path / "foreign"
    (foreign / "data").mkdir(parents=True)
    (foreign / "data" / "PG_VERSION").write_text("18\n")
    refused = await cli("dev-db", "--data-dir", str(foreign))
    assert_clean_error(refused, 2, "was not made by dev-db")
