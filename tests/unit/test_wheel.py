"""The built wheel carries what users rely on: the migrations, py.typed, the CLI, the licence;
the sdist carries the licence too."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

REPO = Path(__file__).parents[2]

PROBE = """
import json, duraflows_pg_async, duraflows_pg_async.migrations as m
print(json.dumps({
    "package": duraflows_pg_async.__file__,
    "migrations": {x.filename: x.up + x.down for x in m.list_migrations()},
}))
"""


def build(target: str, out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", target, "-d", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (built,) = out.glob("duraflows_pg_async-*.whl" if target == "wheel" else "*.tar.gz")
    return built


def build_wheel(out: Path) -> Path:
    return build("wheel", out)


def test_wheel_ships_migrations_and_py_typed(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = sorted(p.name for p in (REPO / "migrations").glob("*.sql"))
    assert {"007_event_idempotency.sql", "008_durable_execution.sql"} <= set(sources)
    for name in sources:
        assert f"duraflows_pg_async/_migrations/{name}" in names
    assert "duraflows_pg_async/py.typed" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "duraflows-pg = duraflows_pg_async.__main__:main" in text
    licence = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
    assert zipfile.ZipFile(wheel).read(licence) == (REPO / "LICENSE").read_bytes()
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    headers = zipfile.ZipFile(wheel).read(metadata).decode().split("\n\n", 1)[0].splitlines()
    assert "License-Expression: MIT" in headers
    assert "License-File: LICENSE" in headers
    # PEP 639: a licence expression and "License ::" classifiers do not go together.
    classifiers = [h.removeprefix("Classifier: ") for h in headers if h.startswith("Classifier:")]
    assert not [c for c in classifiers if c.startswith("License ::")]
    # The Python versions claimed are the ones CI tests the wheel on, and requires-python agrees.
    versions = [c.rsplit(" ", 1)[1] for c in classifiers if c.startswith("Programming Language ::")]
    assert {"3.11", "3.12", "3.13"} <= set(versions)
    assert "Requires-Python: >=3.11" in headers
    urls = {h.split(", ", 1)[0].removeprefix("Project-URL: ") for h in headers if "URL" in h}
    assert {"Homepage", "Documentation", "Source", "Issues", "Changelog"} <= urls

    # Imported from the unpacked wheel (ahead of the editable install on sys.path), the package
    # reads its migrations from the packaged copy, and that copy is the repository's.
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={"PYTHONPATH": str(unpacked), "PATH": ""},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    probe = json.loads(result.stdout)
    assert probe["package"].startswith(str(unpacked))
    from duraflows_pg_async.migrations import list_migrations

    expected = {m.filename: m.up + m.down for m in list_migrations()}
    assert probe["migrations"] == expected
    assert sorted(probe["migrations"]) == sources


def test_sdist_ships_the_license(tmp_path: Path) -> None:
    sdist = build("sdist", tmp_path / "dist")
    with tarfile.open(sdist) as archive:
        (member,) = [m for m in archive.getmembers() if m.name.endswith("/LICENSE")]
        assert member.name.count("/") == 1  # at the top of the unpacked source tree
        source = archive.extractfile(member)
        assert source is not None
        assert source.read() == (REPO / "LICENSE").read_bytes()


def test_wheel_ships_the_dashboards_templates_and_static_files(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist")
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    package = REPO / "duraflows_pg_async" / "dashboard"
    files = sorted(
        p.relative_to(REPO).as_posix()
        for folder in ("templates", "static")
        for p in (package / folder).iterdir()
    )
    assert "duraflows_pg_async/dashboard/static/mermaid.min.js" in files
    assert "duraflows_pg_async/dashboard/static/mermaid.LICENSE.txt" in files
    assert "duraflows_pg_async/dashboard/templates/workflows.html" in files
    for name in files:
        assert name in names, name
        assert archive.read(name) == (REPO / name).read_bytes(), name
    # Mermaid is shipped whole, with its licence, and no page loads anything from elsewhere.
    assert b"mermaid" in archive.read("duraflows_pg_async/dashboard/static/mermaid.min.js")[:200]
    assert b"MIT License" in archive.read("duraflows_pg_async/dashboard/static/mermaid.LICENSE.txt")
    for name in files:
        if name.endswith(".html"):
            assert b"http" not in archive.read(name), name
