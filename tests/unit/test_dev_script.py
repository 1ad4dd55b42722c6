"""scripts/dev.py: command parsing and the reinstall decision, without pip or the network.

Each test copies the script into a temporary "repository" and imports it from there, so its root
(resolved from the script's own location) is the temporary directory, never this checkout.
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "dev.py"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A temporary repository root holding a copy of scripts/dev.py and a pyproject.toml."""
    (tmp_path / "scripts").mkdir()
    shutil.copy2(SCRIPT, tmp_path / "scripts" / "dev.py")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n', encoding="utf-8")
    return tmp_path


@pytest.fixture
def dev(repo: Path) -> ModuleType:
    """scripts/dev.py imported from the temporary repository."""
    spec = importlib.util.spec_from_file_location("dev_script_under_test", repo / "scripts/dev.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_venv(dev: ModuleType, root: Path) -> None:
    python = dev.venv_python(root)
    python.parent.mkdir(parents=True)
    python.write_text("", encoding="utf-8")


def test_root_is_resolved_from_the_script_location(
    dev: ModuleType, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo.parent)
    assert repo.resolve() == dev.ROOT


# --- usage ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [[], ["benchmark"], ["frobnicate", "--quick"], ["lint", "extra"], ["--verbose"]],
)
def test_unknown_or_malformed_command_prints_usage_and_exits_2(
    dev: ModuleType, repo: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert dev.main(argv) == 2
    captured = capsys.readouterr()
    assert "usage: python3 scripts/dev.py" in captured.err
    assert captured.out == ""
    # Nothing is set up for a command that is not run.
    assert not (repo / ".venv").exists()


def test_help_prints_usage_and_exits_0(dev: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert dev.main(["--help"]) == 0
    assert "usage: python3 scripts/dev.py" in capsys.readouterr().out


def test_unknown_command_from_another_directory_exits_2(
    repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    result = subprocess.run(
        [sys.executable, str(repo / "scripts" / "dev.py"), "frobnicate"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert not (repo / ".venv").exists()


# --- the install decision ------------------------------------------------------------------------


def test_install_needed_without_a_venv(dev: ModuleType, repo: Path) -> None:
    assert dev.needs_install(repo)
    assert dev.install_reason(repo) == "no virtualenv yet"


def test_install_needed_when_the_stamp_is_missing(dev: ModuleType, repo: Path) -> None:
    _fake_venv(dev, repo)
    assert dev.needs_install(repo)
    assert "not installed" in dev.install_reason(repo)


def test_no_install_when_the_stamp_matches(dev: ModuleType, repo: Path) -> None:
    _fake_venv(dev, repo)
    dev.write_stamp(repo, ("embedded", "orjson"), ("test",), "uv")
    assert dev.stamp_path(repo) == repo / ".venv" / ".duraflows-installed"
    stamp = dev.read_stamp(repo)
    assert stamp["inputs"] == dev.inputs_hash(repo)
    assert stamp["extras"] == ["embedded", "orjson"]
    assert stamp["groups"] == ["test"]
    assert not dev.needs_install(repo, ("embedded", "orjson"), ("test",))
    assert dev.install_reason(repo, ("embedded",), ()) is None  # less than was installed
    assert dev.install_reason(repo) is None


def test_install_needed_when_a_command_needs_more(dev: ModuleType, repo: Path) -> None:
    _fake_venv(dev, repo)
    dev.write_stamp(repo, ("embedded",), (), "uv")  # what `demo` installs
    assert dev.install_reason(repo, ("embedded", "orjson"), ("test",)) == (
        "this command needs the extra 'orjson', group 'test'"
    )
    assert dev.install_reason(repo, (), ("lint",)) == "this command needs the group 'lint'"


def test_a_group_included_in_an_installed_one_is_installed(dev: ModuleType, repo: Path) -> None:
    (repo / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[dependency-groups]\nbench = ["psutil"]\n'
        'test = ["pytest", {include-group = "bench"}]\nlint = ["ruff"]\n',
        encoding="utf-8",
    )
    _fake_venv(dev, repo)
    dev.write_stamp(repo, (), ("test",), "uv")
    assert dev.install_reason(repo, (), ("bench",)) is None
    assert dev.install_reason(repo, (), ("lint",)) == "this command needs the group 'lint'"


@pytest.mark.parametrize("changed", ["pyproject.toml", "uv.lock", "requirements-dev.txt"])
def test_install_needed_when_pyproject_or_the_lock_changed(
    dev: ModuleType, repo: Path, changed: str
) -> None:
    _fake_venv(dev, repo)
    dev.write_stamp(repo)
    path = repo / changed
    path.write_text((path.read_text("utf-8") if path.exists() else "") + "# changed\n", "utf-8")
    assert dev.needs_install(repo)
    assert "changed" in dev.install_reason(repo)
    dev.write_stamp(repo)
    assert not dev.needs_install(repo)


@pytest.mark.parametrize(
    "text",
    ["not a hash\n", "0" * 64 + "\n", "[]", '{"inputs": 3}'],
    ids=["garbage", "old-format", "not-a-dict", "bad-inputs"],
)
def test_install_needed_when_the_stamp_is_garbage_or_of_an_older_dev_py(
    dev: ModuleType, repo: Path, text: str
) -> None:
    _fake_venv(dev, repo)
    dev.stamp_path(repo).write_text(text, encoding="utf-8")
    assert dev.needs_install(repo)


def test_each_command_needs_only_its_own_extras_and_groups(dev: ModuleType) -> None:
    # The demo needs the embedded server and nothing of the development tools.
    assert dev.NEEDS["demo"] == (("embedded",), ())
    assert dev.NEEDS["test"] == (("embedded", "orjson"), ("test",))
    assert dev.NEEDS["test-pg"] == dev.NEEDS["test"]
    assert dev.NEEDS["lint"] == ((), ("lint",))
    assert dev.NEEDS["docs"] == ((), ("docs",))
    assert dev.NEEDS["bench"] == (("embedded", "orjson"), ("bench",))
    # hatchling builds the wheel; the user project installs its own environment.
    assert dev.NEEDS["user-project"] == ((), ("test",))
    assert set(dev.NEEDS) | {"lock"} == set(dev.COMMANDS)


# --- installing: uv, or pip from the same pins ---------------------------------------------------


@pytest.fixture
def installs(dev: ModuleType, repo: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The set-up commands ensure_env() runs (none is run); a working virtualenv is assumed."""
    _fake_venv(dev, repo)
    calls: list[list[str]] = []

    def run_quiet(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
        calls.append(argv)

    monkeypatch.setattr(dev, "_python_works", lambda python: True)
    monkeypatch.setattr(dev, "_has_pip", lambda python: True)
    monkeypatch.setattr(dev, "_run_quiet", run_quiet)
    return calls


def test_uv_syncs_the_locked_extras_and_groups(
    dev: ModuleType, repo: Path, installs: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dev, "find_uv", lambda: (Path("/opt/uv"), ""))
    dev.ensure_env(repo, ("embedded",), ())
    sync = ["/opt/uv", "sync", "--locked", "--no-default-groups"]
    python = str(dev.venv_python(repo))
    assert installs == [[*sync, "--python", python, "--extra=embedded"]]
    assert dev.read_stamp(repo)["installer"] == "uv"
    assert not dev.needs_install(repo, ("embedded",), ())
    dev.ensure_env(repo, ("embedded",), ())  # installed: nothing to do
    assert len(installs) == 1
    # A command that needs more syncs what was there and what it adds.
    dev.ensure_env(repo, ("embedded", "orjson"), ("test",))
    assert installs[1] == [
        *sync, "--python", python, "--extra=embedded", "--extra=orjson", "--group=test"
    ]  # fmt: skip
    dev.ensure_env(repo, (), ("lint",))
    assert installs[2][-4:] == [
        "--extra=embedded",
        "--extra=orjson",
        "--group=lint",
        "--group=test",
    ]
    assert not dev.needs_install(repo, ("embedded",), ("test", "lint"))


def test_without_uv_pip_installs_the_same_pins(
    dev: ModuleType, repo: Path, installs: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[dependency-groups]\n'
        'bench = ["psutil>=5"]\ntest = ["pytest>=8", {include-group = "bench"}]\n',
        encoding="utf-8",
    )
    (repo / "requirements-dev.txt").write_text("pytest==9.0\npsutil==7.0\n", encoding="utf-8")
    monkeypatch.setattr(dev, "find_uv", lambda: (None, "no pip"))
    dev.ensure_env(repo, ("embedded", "orjson"), ("test",))
    assert installs == [
        [
            str(dev.venv_python(repo)), "-m", "pip", "install", "--quiet",
            "--constraint", "requirements-dev.txt",
            "--editable", ".[embedded,orjson]", "pytest>=8", "psutil>=5",
        ]
    ]  # fmt: skip
    assert dev.read_stamp(repo)["installer"] == "pip"
    assert not dev.needs_install(repo, ("embedded", "orjson"), ("test",))


def test_the_installer_can_be_forced_to_pip(
    dev: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DURAFLOWS_DEV_INSTALLER", "pip")
    assert dev.find_uv() == (None, "DURAFLOWS_DEV_INSTALLER=pip")


def test_lock_without_uv_fails_and_installs_nothing(
    dev: ModuleType, repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(dev, "find_uv", lambda: (None, "no pip"))
    assert dev.main(["lock"]) == 1
    assert "needs uv" in capsys.readouterr().err
    assert not (repo / ".venv").exists()


def test_dependency_groups_expand_their_includes(dev: ModuleType) -> None:
    pyproject = {
        "dependency-groups": {
            "a": ["x>=1", {"include-group": "b"}],
            "b": ["y", {"include-group": "c"}, "x>=1"],
            "c": ["z"],
            "loop": [{"include-group": "loop"}],
        }
    }
    assert dev.dependency_group(pyproject, "a") == ["x>=1", "y", "z"]
    with pytest.raises(KeyError):
        dev.dependency_group(pyproject, "missing")
    with pytest.raises(ValueError, match="includes itself"):
        dev.dependency_group(pyproject, "loop")


# --- the repository's own pyproject.toml and locks ------------------------------------------------

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_development_requirements_are_dependency_groups_not_extras(dev: ModuleType) -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    groups = PYPROJECT["dependency-groups"]
    # What users install stays published; the tools of this repository do not.
    assert {"orjson", "embedded", "otel", "fastapi", "aiohttp"} <= set(extras)
    assert not {"dev", "test", "docs", "bench", "lint"} & set(extras)
    assert {"dev", "test", "docs", "bench", "lint"} <= set(groups)
    for command, (needed_extras, needed_groups) in dev.NEEDS.items():
        assert set(needed_extras) <= set(extras), command
        assert set(needed_groups) <= set(groups), command


def _locked_versions() -> dict[str, set[str]]:
    lock = tomllib.loads((REPO / "uv.lock").read_text(encoding="utf-8"))
    versions: dict[str, set[str]] = {}
    for package in lock["package"]:
        if package["name"] != PYPROJECT["project"]["name"]:
            versions.setdefault(package["name"], set()).add(package["version"])
    return versions


def test_the_pip_pins_are_the_lock_s_versions() -> None:
    """requirements-dev.txt is `uv export` of uv.lock (`python3 scripts/dev.py lock` writes both):
    the same packages at the same versions, so pip and uv install the same environment."""
    pins: dict[str, set[str]] = {}
    for line in (REPO / "requirements-dev.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = line.split(";", 1)[0].strip()
        name, sep, version = requirement.partition("==")
        assert sep, f"not pinned: {line}"
        pins.setdefault(name.strip().lower(), set()).add(version.strip())
    assert pins == _locked_versions()


def test_the_lock_covers_every_dependency_group() -> None:
    lock = tomllib.loads((REPO / "uv.lock").read_text(encoding="utf-8"))
    (project,) = [p for p in lock["package"] if p["name"] == PYPROJECT["project"]["name"]]
    locked_groups = project["metadata"]["requires-dev"]
    assert set(locked_groups) == set(PYPROJECT["dependency-groups"])


# --- what the commands run (set-up and execution stubbed out) ------------------------------------


@pytest.fixture
def ran(dev: ModuleType, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Commands dev.main() would run; each "succeeds" unless a test changes the exit codes."""
    calls: list[list[str]] = []

    def record(argv: list[str], **kwargs: object) -> int:
        calls.append(argv)
        return 0

    monkeypatch.setattr(dev, "ensure_env", lambda *args: None)
    monkeypatch.setattr(dev, "_exec", record)
    monkeypatch.setattr(dev, "_call", record)
    return calls


def test_test_forwards_pytest_args(
    dev: ModuleType, repo: Path, ran: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)
    assert dev.main(["test", "-x", "-k", "name", "tests/unit"]) == 0
    assert ran == [[str(dev.venv_python(repo)), "-m", "pytest", "-x", "-k", "name", "tests/unit"]]


def test_test_paths_relative_to_a_subdirectory_are_made_absolute(
    dev: ModuleType, repo: Path, ran: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = repo / "tests" / "unit"
    sub.mkdir(parents=True)
    (sub / "test_a.py").write_text("", encoding="utf-8")
    monkeypatch.chdir(sub)
    dev.main(["test", "-q", "test_a.py::test_one", "missing.py", "-p", "no:cacheprovider"])
    expected = str((sub / "test_a.py").resolve()) + "::test_one"
    assert ran[0][3:] == ["-q", expected, "missing.py", "-p", "no:cacheprovider"]


def test_demo_forwards_to_the_console_script(
    dev: ModuleType, repo: Path, ran: list[list[str]]
) -> None:
    assert dev.main(["demo", "--steps", "3"]) == 0
    assert ran == [[str(dev.venv_bin(repo, "duraflows-pg")), "demo", "--steps", "3"]]


def test_bench_forwards_to_the_bench_package(
    dev: ModuleType, repo: Path, ran: list[list[str]]
) -> None:
    assert dev.main(["bench", "--smoke", "--out", "/tmp/x"]) == 0
    assert ran == [[str(dev.venv_python(repo)), "-m", "bench", "--smoke", "--out", "/tmp/x"]]


def test_bench_without_arguments_runs_the_full_benchmark(
    dev: ModuleType, repo: Path, ran: list[list[str]]
) -> None:
    assert dev.main(["bench"]) == 0
    assert ran == [[str(dev.venv_python(repo)), "-m", "bench"]]


@pytest.mark.parametrize("command", ["demo", "test", "lint", "docs", "bench"])
def test_each_command_sets_up_what_it_needs_first(
    dev: ModuleType, repo: Path, ran: list[list[str]], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    set_up: list[tuple[object, ...]] = []
    monkeypatch.setattr(dev, "ensure_env", lambda *args: set_up.append(args))
    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")  # which `docs` sets
    assert dev.main([command]) == 0
    assert set_up == [(repo, *dev.NEEDS[command])]
    assert len(ran) >= 1


def test_user_project_builds_the_wheel_installs_it_in_a_new_venv_and_runs_its_tests(
    dev: ModuleType, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo / "examples" / "user_project" / "tests").mkdir(parents=True)
    calls: list[tuple[list[str], dict[str, object]]] = []

    def call(argv: list[str], **kwargs: object) -> int:
        calls.append((argv, kwargs))
        if "hatchling" in argv:  # the build makes one wheel
            dist = Path(argv[argv.index("-d") + 1])
            dist.mkdir()
            (dist / "duraflows_pg_async-1.0-py3-none-any.whl").write_bytes(b"")
        return 0

    monkeypatch.setattr(dev, "ensure_env", lambda *args: None)
    monkeypatch.setattr(dev, "find_uv", lambda: (None, "test"))
    monkeypatch.setattr(dev, "_call", call)
    monkeypatch.setenv("PYTHONPATH", str(repo))
    assert dev.main(["user-project", "-x"]) == 0
    build, venv, install, check, version, tests = (argv for argv, _ in calls)
    assert build[:4] == [str(dev.venv_python(repo)), "-m", "hatchling", "build"]
    assert venv[:3] == [sys.executable, "-m", "venv"]
    assert install[-3:-1] == ["--constraint", str(repo / "requirements-dev.txt")]
    assert install[-1].endswith("duraflows_pg_async-1.0-py3-none-any.whl[pytest]")
    assert tests[1:] == ["-m", "pytest", "-p", "no:cacheprovider", "-x"]
    assert version[1:] == ["-m", "duraflows_pg_async", "--version"]
    for argv in (check, version, tests):
        assert argv[0] == install[0]  # the new virtualenv's python
    _, run = calls[-1]
    assert Path(str(run["cwd"])).name == "user_project"
    assert Path(str(run["cwd"])) != repo / "examples" / "user_project"  # a copy
    assert "PYTHONPATH" not in run["env"]  # type: ignore[operator]

    calls.clear()
    assert dev.main(["user-project", "--latest"]) == 0
    assert "--constraint" not in calls[2][0]

    # --all-pythons: one wheel, a virtualenv and a test run on each interpreter found.
    calls.clear()
    found = [Path("/opt/py311/bin/python3.11"), Path("/opt/py313/bin/python3.13")]
    monkeypatch.setattr(dev, "find_pythons", lambda: (found, ["3.12"]))
    monkeypatch.setattr(dev, "_python_version", lambda python: "3.x")
    assert dev.main(["user-project", "--all-pythons", "-x"]) == 0
    argvs = [argv for argv, _ in calls]
    assert sum("hatchling" in argv for argv in argvs) == 1
    assert [argv[0] for argv in argvs if argv[1:3] == ["-m", "venv"]] == [str(p) for p in found]
    assert sum(argv[-1] == "-x" for argv in argvs) == 2


def test_lint_runs_ruff_check_ruff_format_and_mypy(
    dev: ModuleType, repo: Path, ran: list[list[str]]
) -> None:
    assert dev.main(["lint"]) == 0
    assert ran == [
        [str(dev.venv_bin(repo, "ruff")), "check", "."],
        [str(dev.venv_bin(repo, "ruff")), "format", "--check", "."],
        [str(dev.venv_bin(repo, "mypy"))],
    ]


def test_lint_stops_at_the_first_failure(
    dev: ModuleType, ran: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = iter([0, 1, 0])

    def call(argv: list[str]) -> int:
        ran.append(argv)
        return next(codes)

    monkeypatch.setattr(dev, "_call", call)
    assert dev.main(["lint"]) == 1
    assert [argv[1:] for argv in ran] == [["check", "."], ["format", "--check", "."]]


# --- standard library only -----------------------------------------------------------------------


def test_script_imports_only_the_standard_library() -> None:
    tree = ast.parse(SCRIPT.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
