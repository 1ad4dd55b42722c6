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
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "dev.py"


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
    dev.write_stamp(repo)
    assert dev.stamp_path(repo) == repo / ".venv" / ".duraflows-installed"
    assert dev.stamp_path(repo).read_text(encoding="utf-8").strip() == dev.pyproject_hash(repo)
    assert not dev.needs_install(repo)
    assert dev.install_reason(repo) is None


def test_install_needed_when_pyproject_changed(dev: ModuleType, repo: Path) -> None:
    _fake_venv(dev, repo)
    dev.write_stamp(repo)
    pyproject = repo / "pyproject.toml"
    pyproject.write_text(pyproject.read_text(encoding="utf-8") + 'version = "2"\n', "utf-8")
    assert dev.needs_install(repo)
    assert "pyproject.toml changed" in dev.install_reason(repo)
    dev.write_stamp(repo)
    assert not dev.needs_install(repo)


def test_install_needed_when_the_stamp_is_garbage(dev: ModuleType, repo: Path) -> None:
    _fake_venv(dev, repo)
    dev.stamp_path(repo).write_text("not a hash\n", encoding="utf-8")
    assert dev.needs_install(repo)


# --- what the commands run (set-up and execution stubbed out) ------------------------------------


@pytest.fixture
def ran(dev: ModuleType, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Commands dev.main() would run; each "succeeds" unless a test changes the exit codes."""
    calls: list[list[str]] = []

    def record(argv: list[str]) -> int:
        calls.append(argv)
        return 0

    monkeypatch.setattr(dev, "ensure_env", lambda root=None: None)
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


def test_the_environment_gets_the_dev_and_bench_extras(
    dev: ModuleType, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_venv(dev, repo)
    installs: list[list[str]] = []

    def run_quiet(argv: list[str], what: str) -> None:
        installs.append(argv)

    monkeypatch.setattr(dev, "_python_works", lambda python: True)
    monkeypatch.setattr(dev, "_run_quiet", run_quiet)
    dev.ensure_env(repo)
    assert installs == [
        [str(dev.venv_python(repo)), "-m", "pip", "install", "--quiet", "-e", ".[dev,bench]"]
    ]
    assert not dev.needs_install(repo)


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
