"""The built wheel carries what users rely on: the migrations, py.typed, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
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


def build_wheel(out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = out.glob("duraflows_pg_async-*.whl")
    return wheel


def test_wheel_ships_migrations_and_py_typed(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = sorted(p.name for p in (REPO / "migrations").glob("*.sql"))
    assert len(sources) >= 6
    for name in sources:
        assert f"duraflows_pg_async/_migrations/{name}" in names
    assert "duraflows_pg_async/py.typed" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "duraflows-pg = duraflows_pg_async.__main__:main" in text

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
