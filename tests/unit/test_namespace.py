"""The public namespace: a small top level, the rest in public modules, old paths deprecated."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import duraflows_pg_async

PUBLIC_MODULES = ["errors", "types", "stores", "memory", "migrations"]


def test_top_level_all_names_resolve_without_warnings() -> None:
    for name in duraflows_pg_async.__all__:
        assert hasattr(duraflows_pg_async, name), name


@pytest.mark.parametrize("name", sorted(duraflows_pg_async._MOVED))
def test_moved_name_still_imports_from_the_top_with_a_deprecation_warning(name: str) -> None:
    module = importlib.import_module(duraflows_pg_async._MOVED[name])
    with pytest.warns(DeprecationWarning, match=rf"duraflows_pg_async\.{name} moved to "):
        value = getattr(duraflows_pg_async, name)
    assert value is getattr(module, name)
    assert name in module.__all__
    assert name not in duraflows_pg_async.__all__


def test_every_error_lives_in_the_errors_module() -> None:
    from duraflows_pg_async import errors

    tree = [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, errors.WorkflowError)
    ]
    assert sorted(cls.__name__ for cls in tree) == sorted(errors.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        getattr(duraflows_pg_async, "NoSuchThing")  # noqa: B009
    with pytest.raises(ImportError):
        exec("from duraflows_pg_async import NoSuchThing")


def test_no_public_name_is_in_two_public_modules() -> None:
    seen: dict[int, str] = {}
    for short in PUBLIC_MODULES:
        module = importlib.import_module(f"duraflows_pg_async.{short}")
        for name in module.__all__:
            obj = getattr(module, name)
            if not (isinstance(obj, type) or inspect.isfunction(obj)):
                continue  # aliases: equal Literal aliases are one cached object
            where = f"{short}.{name}"
            assert id(obj) not in seen, f"{where} is also {seen[id(obj)]}"
            seen[id(obj)] = where


def test_importing_the_package_does_not_import_the_web_frameworks() -> None:
    code = (
        "import sys, duraflows_pg_async, duraflows_pg_async.stores, duraflows_pg_async.types, "
        "duraflows_pg_async.memory; "
        "print(sorted(m for m in ('fastapi', 'aiohttp', 'starlette') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
