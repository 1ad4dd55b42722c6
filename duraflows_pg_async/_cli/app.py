"""The worker's APP (``module:attr``): finding it, importing it, and getting a runtime from it."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._runtime.runtime import WorkflowRuntime

from .exits import EXIT_USAGE, CliError

__all__ = ["use_app_dir", "load_app", "build_runtime"]


def use_app_dir(app_dir: str) -> None:
    """Put ``app_dir`` first on sys.path, as uvicorn does: an installed console script starts
    with its own bin directory there, not the directory it was run from."""
    path = os.path.abspath(app_dir)
    if not os.path.isdir(path):
        raise CliError(f"--app-dir {app_dir!r} is not a directory", EXIT_USAGE)
    if path not in (os.path.abspath(p or ".") for p in sys.path):
        sys.path.insert(0, path)


def load_app(spec: str) -> object:
    """The object ``module:attr`` names (``attr`` may be dotted)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"APP must be module:attr, got {spec!r}", EXIT_USAGE)
    try:
        found: object = importlib.import_module(module_name)
    except Exception as exc:
        raise CliError(
            f"cannot import {module_name!r}: {type(exc).__name__}: {exc}", EXIT_USAGE
        ) from exc
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError as exc:
            raise CliError(f"{module_name!r} has no attribute {attr!r}", EXIT_USAGE) from exc
    return found


async def build_runtime(
    app: object, spec: str, providers: WorkflowPersistenceProvider
) -> WorkflowRuntime:
    """``app`` itself if it is a runtime, else what it returns when called with ``providers``
    (awaited if it is awaitable)."""
    if isinstance(app, WorkflowRuntime):
        return app
    if not callable(app):
        raise CliError(f"{spec} is neither a WorkflowRuntime nor a callable", EXIT_USAGE)
    factory: Callable[[WorkflowPersistenceProvider], Any] = app
    runtime = factory(providers)
    if inspect.isawaitable(runtime):
        runtime = await runtime
    if not isinstance(runtime, WorkflowRuntime):
        raise CliError(
            f"{spec} returned {type(runtime).__name__}, not a WorkflowRuntime", EXIT_USAGE
        )
    return runtime
