"""``duraflows-pg graph WORKFLOW``: the stored definition snapshot as a Mermaid diagram."""

from __future__ import annotations

import dataclasses
import json

import asyncpg
from test_cli import assert_clean_error, cli

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    DefinitionRegistry,
    Event,
    State,
    WorkflowDefinition,
    WorkflowRuntime,
    pg_workflow_providers,
)

FLOW = WorkflowDefinition(
    name="ticket",
    initial_state="open",
    states={
        "open": State(
            events={"close": Event(target_state="closed", commands=(CommandRef("note"),))}
        ),
        "closed": State(),
    },
)


async def register(pool: asyncpg.Pool, *definitions: WorkflowDefinition) -> None:
    registry = DefinitionRegistry()
    for definition in definitions:
        registry.register(definition, command_names=["note"])
    commands = CommandRegistry()
    commands.register("note", lambda subject, ctx: None)
    runtime = WorkflowRuntime(
        definitions=registry, commands=commands, persistence=pg_workflow_providers(pool)
    )
    await runtime.initialize()


async def test_graph_draws_the_latest_stored_version_or_the_one_asked(
    database: str, pool: asyncpg.Pool
) -> None:
    reopen = dataclasses.replace(
        FLOW,
        version=2,
        states={**FLOW.states, "closed": State(events={"reopen": Event(target_state="open")})},
    )
    await register(pool, FLOW, reopen)

    latest = await cli("graph", "ticket", url=database)
    assert latest.returncode == 0, latest.stderr
    assert latest.stdout == reopen.to_mermaid()

    first = await cli("graph", "ticket", "--version", "1", "--show-commands", url=database)
    assert first.returncode == 0, first.stderr
    assert first.stdout == FLOW.to_mermaid(show_commands=True)

    as_json = await cli("graph", "ticket", "--json", "--direction", "LR", url=database)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {
        "workflow": "ticket",
        "version": 2,
        "mermaid": reopen.to_mermaid(direction="LR"),
    }


async def test_graph_of_an_unknown_workflow_or_version(database: str, pool: asyncpg.Pool) -> None:
    await register(pool, FLOW)
    unknown = await cli("graph", "nothing", url=database)
    assert_clean_error(unknown, 1, "no stored definition of workflow 'nothing'")
    missing = await cli("graph", "ticket", "--version", "9", url=database)
    assert_clean_error(missing, 1, "version 9")
    bad = await cli("graph", "ticket", "--version", "0", url=database)
    assert_clean_error(bad, 2, "--version must be at least 1")
