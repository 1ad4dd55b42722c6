"""Workflow definitions as Mermaid state diagrams, on stdout.

``diagram APP [NAME]``: APP (``module:attr``) names a WorkflowDefinition, a DefinitionRegistry,
a WorkflowRuntime, or the worker's runtime factory, which is called with in-memory providers: no
database is opened. ``graph WORKFLOW``: the definition snapshot stored in the database, as the
runtimes registered it (no application code needed), or with ``--app`` the application's.
"""

from __future__ import annotations

import argparse

from duraflows_pg_async._definitions.model import WorkflowDefinition
from duraflows_pg_async._definitions.registries import DefinitionRegistry
from duraflows_pg_async._memory.provider import memory_workflow_providers
from duraflows_pg_async._pg.providers import pg_workflow_providers
from duraflows_pg_async._runtime.runtime import WorkflowRuntime
from duraflows_pg_async.errors import WorkflowDefinitionError

from .app import build_runtime, load_app, use_app_dir
from .database import Target, pool, schema_option, target_from
from .exits import EXIT_USAGE, CliError
from .output import emit, json_text
from .signals import run

__all__ = ["diagram_command", "graph_command"]


def _registry_of(app: object, spec: str) -> DefinitionRegistry:
    if isinstance(app, DefinitionRegistry):
        return app
    runtime = run(build_runtime(app, spec, memory_workflow_providers()))
    assert isinstance(runtime, WorkflowRuntime)
    return runtime.definitions


def _definition(app: object, args: argparse.Namespace) -> WorkflowDefinition:
    """The definition that APP, NAME and --version choose; a usage error if there is none."""
    name: str | None = args.name
    version: int | None = args.version
    if isinstance(app, WorkflowDefinition):
        if name not in (None, app.name) or version not in (None, app.version):
            raise CliError(
                f"{args.app} is version {app.version} of workflow {app.name!r}", EXIT_USAGE
            )
        return app
    registry = _registry_of(app, args.app)
    names = registry.names()
    if name is None:
        # A registry of one workflow needs no NAME.
        if len(names) != 1:
            listed = ", ".join(names) or "none"
            raise CliError(f"give the workflow NAME (registered: {listed})", EXIT_USAGE)
        name = names[0]
    try:
        return registry.get(name, version)
    except WorkflowDefinitionError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc


def diagram_command(args: argparse.Namespace) -> int:
    """``diagram``: the Mermaid text, or with --json an object holding it."""
    use_app_dir(args.app_dir)
    return _print(_definition(load_app(args.app), args), args)


def _print(definition: WorkflowDefinition, args: argparse.Namespace) -> int:
    text = definition.to_mermaid(show_commands=args.show_commands, direction=args.direction)
    if args.json:
        data = {"workflow": definition.name, "version": definition.version, "mermaid": text}
        emit(json_text(data))
    else:
        emit(text.removesuffix("\n"))
    return 0


async def _stored(
    db: Target, name: str, version: int | None, schema: str | None
) -> dict[str, object]:
    async with pool(db) as opened:
        store = pg_workflow_providers(opened, schema=schema).definition_store
        if version is not None:
            found = await store.find_by_name_and_version(name, version)
            if found is None:
                raise CliError(f"no stored definition of workflow {name!r} version {version}")
            return found.definition_json
        versions = await store.list_versions(name)
    if not versions:
        raise CliError(f"no stored definition of workflow {name!r}")
    return versions[-1].definition_json


def graph_command(args: argparse.Namespace) -> int:
    """``graph WORKFLOW``: the stored snapshot (latest, or ``--version``) as a diagram; with
    ``--app MODULE:ATTR``, the application's own definition (as ``diagram`` draws it)."""
    if args.version is not None and args.version < 1:
        raise CliError(f"--version must be at least 1, got {args.version}", EXIT_USAGE)
    if args.app is not None:
        use_app_dir(args.app_dir)
        return _print(_definition(load_app(args.app), args), args)
    db = target_from(args)
    data = run(_stored(db, args.name, args.version, schema_option(args.schema)))
    try:
        definition = WorkflowDefinition.from_dict(data)
    except WorkflowDefinitionError as exc:
        raise CliError(f"the stored definition cannot be read: {exc}") from exc
    return _print(definition, args)
