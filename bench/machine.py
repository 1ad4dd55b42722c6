"""What the results were measured on: hardware, software versions, server settings."""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

__all__ = ["SERVER_SETTINGS", "describe_machine", "describe_server"]

SERVER_SETTINGS = (
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_sync_method",
    "wal_level",
    "shared_buffers",
    "max_connections",
    "max_wal_size",
    "checkpoint_timeout",
    "autovacuum",
    "jit",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _git_commit(root: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def describe_machine() -> dict[str, Any]:
    import psutil

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "asyncpg": asyncpg.__version__,
        "duraflows_pg_async": _package_version("duraflows-pg-async"),
        "orjson": _package_version("orjson"),
        "git_commit": _git_commit(Path(__file__).resolve().parent.parent),
        "load_average_at_start": list(load) if load else None,
    }


async def describe_server(
    conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any], pgbench: Path
) -> dict[str, Any]:
    rows = await conn.fetch(
        "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[]) ORDER BY name",
        list(SERVER_SETTINGS),
    )
    version_run = await asyncio.create_subprocess_exec(
        str(pgbench), "--version", stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
    )
    out, _ = await version_run.communicate()
    return {
        "version": await conn.fetchval("SHOW server_version"),
        "pgbench": out.decode(errors="replace").strip(),
        "settings": {
            row["name"]: row["setting"] + (f" ({row['unit']})" if row["unit"] else "")
            for row in rows
        },
    }
