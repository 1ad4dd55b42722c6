"""The issue's baseline, measured in the same run: the per-instance sweep of a pinned commit.

Issue 14 set batched sweeps a goal of "≥ 20x today's one-worker TimeoutWorker rate", today being
the day it was filed: the per-instance ``TimeoutWorker`` as of :data:`FILED_BASELINE` (the last
commit before the issue's changes). The per-instance path got faster since, so the current
per-instance sweep is no longer that baseline. Rather than quote an old figure from another day,
this runs the old code against the same server, in the same run: ``git archive`` of the commit's
``duraflows_pg_async`` and ``migrations`` into a temporary directory, then a child process
(:mod:`bench.sweep_baseline_child`) with that directory first on its path drains the same due
instances with one ``TimeoutWorker``, the same batch size, poll interval, JSON codec and event loop.

Without git or without the commit (a shallow clone, a tarball), the measurement is recorded as
unavailable with the reason, and the run goes on.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import asyncpg

from .sweep import count_repeats, reset_due_instances
from .sweep_processes import ROOT
from .workloads import Codec

__all__ = ["FILED_BASELINE", "BaselineUnavailable", "extract_package", "run_filed_baseline"]

# 8eb6902: the last commit before issue 14's fast path, batched sweeps and wake-ups.
FILED_BASELINE = "8eb6902088509599d9181da1c8265a6643750320"
# What the child needs of the commit: the package, and the migrations it may read.
ARCHIVED = ("duraflows_pg_async", "migrations")
# Generous: a child that takes this long is stuck (the sweep itself gives up after 60 s idle).
CHILD_SECONDS = 1800.0


class BaselineUnavailable(Exception):
    """The pinned commit's package could not be had (no git, no repository, no such commit)."""


def _git(root: Path, *args: str) -> bytes:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
    except OSError as error:  # git is not installed
        raise BaselineUnavailable(f"git could not be run: {error}") from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise BaselineUnavailable(
            f"git {args[0]} in {root}: " + (lines[-1] if lines else f"exit {done.returncode}")
        )
    return done.stdout


def extract_package(ref: str, into: Path, *, root: Path = ROOT) -> str:
    """Extract ``ref``'s package and migrations from the repository at ``root`` into ``into``;
    returns the commit's full hash. :class:`BaselineUnavailable` says why it could not."""
    try:
        commit = _git(root, "rev-parse", "--verify", f"{ref}^{{commit}}").decode().strip()
    except BaselineUnavailable as error:
        raise BaselineUnavailable(f"no commit {ref} ({error})") from None
    archive = _git(root, "archive", "--format=tar", commit, *ARCHIVED)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
            tar.extractall(into, filter="data")
        else:  # pragma: no cover - a git archive of our own repository
            tar.extractall(into)
    if not (into / "duraflows_pg_async" / "__init__.py").is_file():
        raise BaselineUnavailable(f"{commit[:7]} has no duraflows_pg_async package")
    return commit


def _loop_name() -> str:
    """The event loop this run's Python variants run on, for the child to run the same."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.split(".")[0] == "uvloop" else "asyncio"


async def run_filed_baseline(
    *,
    dsn: str,
    admin: asyncpg.Pool,
    ref: str,
    instances: int,
    batch_size: int,
    poll_interval: float,
    codec: Codec,
) -> dict[str, Any]:
    """One per-instance ``TimeoutWorker`` of ``ref`` draining ``instances`` due instances.

    Returns ``{"ref", "available": True, "commit", "short", "per_second", ...}`` (the fields of
    :class:`bench.sweep.SweepResult`), or ``{"ref", "available": False, "reason"}``.
    """
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as tmp:
        package_dir = Path(tmp)
        try:
            commit = await asyncio.to_thread(extract_package, ref, package_dir)
        except BaselineUnavailable as error:
            return {"ref": ref, "available": False, "reason": str(error)}
        await reset_due_instances(admin, instances)
        loop = _loop_name()
        argv = [str(instances), str(batch_size), str(poll_interval), codec, loop]
        # The working directory is the extracted tree, and it comes first on PYTHONPATH: `-m`
        # puts the working directory first on sys.path, so ROOT (where the child module is)
        # must not be it, or its duraflows_pg_async would be imported instead.
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.sweep_baseline_child",
            str(package_dir),
            *argv,
            cwd=package_dir,
            # The DSN carries the server's password: never on a command line.
            env={
                **os.environ,
                "DATABASE_URL": dsn,
                "PYTHONPATH": os.pathsep.join(
                    [str(package_dir), str(ROOT), os.environ.get("PYTHONPATH", "")]
                ),
            },
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(child.communicate(), CHILD_SECONDS)
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
    if child.returncode != 0:
        # Recorded, not raised: the old code failing is no reason to lose the rest of the run.
        lines = err.decode(errors="replace").strip().splitlines()
        reason = f"the sweep of {commit[:7]} failed (exit {child.returncode})"
        return {
            "ref": ref,
            "available": False,
            "commit": commit,
            "reason": reason + (f": {lines[-1]}" if lines else ""),
        }
    report = json.loads(out.decode().strip().splitlines()[-1])
    twice, left = await count_repeats(admin)
    return {
        "ref": ref,
        "available": True,
        "commit": commit,
        "short": commit[:7],
        "loop": report["loop"],
        "workers": 1,
        "instances": instances,
        "seconds": float(report["seconds"]),
        "per_second": float(report["per_second"]),
        "processed_twice": twice,
        "commands_repeated": int(report["commands_repeated"]),
        "failed": int(report["failed"]),
        "left_due": left,
        "sweeps": int(report["sweeps"]),
    }
