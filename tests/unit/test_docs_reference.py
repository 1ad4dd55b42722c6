"""Every public name has a docstring and a place in the API reference (docs/reference/).

The site renders the reference from docstrings with mkdocstrings, which reads the source with
griffe; these checks use griffe too, so they see what the site sees (attribute and type-alias
docstrings included, which ``__doc__`` does not carry).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import griffe
import pytest

ROOT = Path(__file__).parents[2]
REFERENCE = ROOT / "docs" / "reference"
PUBLIC_MODULES = [
    "duraflows_pg_async",
    "duraflows_pg_async.errors",
    "duraflows_pg_async.types",
    "duraflows_pg_async.stores",
    "duraflows_pg_async.memory",
    "duraflows_pg_async.migrations",
    "duraflows_pg_async.embedded",
    "duraflows_pg_async.testing",
    "duraflows_pg_async.pytest_plugin",
    "duraflows_pg_async.contrib",
    "duraflows_pg_async.contrib.fastapi",
    "duraflows_pg_async.contrib.aiohttp",
    "duraflows_pg_async.dashboard",
    "duraflows_pg_async.metrics",
]
# Names that are data, not API to document on a page of its own.
NOT_DOCUMENTED = {("duraflows_pg_async", "__version__")}


def public_names() -> list[tuple[str, str]]:
    names = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        names += [
            (module_name, name)
            for name in module.__all__
            if (module_name, name) not in NOT_DOCUMENTED
        ]
    return names


def documented_paths() -> set[str]:
    paths: set[str] = set()
    for page in REFERENCE.glob("*.md"):
        paths |= set(re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), re.MULTILINE))
    return paths


@pytest.fixture(scope="module")
def package() -> griffe.Object:
    loaded = griffe.load("duraflows_pg_async", search_paths=[str(ROOT)], resolve_aliases=True)
    assert isinstance(loaded, griffe.Object)
    return loaded


def _same_object(a: str, b: str) -> bool:
    """Whether two dotted paths name the same Python object (re-exports count as the same)."""

    def get(path: str) -> object:
        module_name, _, attr = path.rpartition(".")
        return getattr(importlib.import_module(module_name), attr)

    try:
        return get(a) is get(b)
    except (ImportError, AttributeError):
        return False


@pytest.mark.parametrize(("module_name", "name"), public_names())
def test_public_name_is_in_the_reference(module_name: str, name: str) -> None:
    wanted = f"{module_name}.{name}"
    paths = documented_paths()
    assert wanted in paths or any(_same_object(wanted, path) for path in paths), (
        f"{wanted} is public (in __all__) but no page of docs/reference/ renders it "
        f"(add a '::: {wanted}' line)"
    )


@pytest.mark.parametrize(("module_name", "name"), public_names())
def test_public_name_has_a_docstring(package: griffe.Object, module_name: str, name: str) -> None:
    module = package if module_name == "duraflows_pg_async" else package[module_name[19:]]
    member = module[name]
    target = member.final_target if isinstance(member, griffe.Alias) else member
    docstring = target.docstring.value.strip() if target.docstring is not None else ""
    assert docstring, f"{module_name}.{name} has no docstring"


def test_every_reference_directive_names_something_that_exists() -> None:
    for path in documented_paths():
        module_name, _, attr = path.rpartition(".")
        try:
            module = importlib.import_module(path)
        except ImportError:
            module = importlib.import_module(module_name)
            assert hasattr(module, attr), f"docs/reference names {path}, which does not exist"
        else:
            assert module.__name__ == path
