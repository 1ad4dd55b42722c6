"""Editing a definition without a version bump: refused with the fix spelt out, or, with the
development switch ``allow_unbumped_edits``, replaced while no active instance is pinned to it."""

from __future__ import annotations

import logging

import pytest

from duraflows_pg_async import (
    CommandRegistry,
    DefinitionRegistry,
    Event,
    State,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
)
from duraflows_pg_async.errors import InvalidArgumentError, WorkflowDefinitionError


def ticket(closed_name: str = "closed") -> WorkflowDefinition:
    return WorkflowDefinition(
        name="ticket",
        initial_state="open",
        states={
            "open": State(events={"close": Event(target_state=closed_name)}),
            closed_name: State(),
        },
    )


def runtime_for(
    definition: WorkflowDefinition, persistence: WorkflowPersistenceProvider, *, dev: bool
) -> WorkflowRuntime:
    registry = DefinitionRegistry()
    registry.register(definition)
    return WorkflowRuntime(
        definitions=registry,
        commands=CommandRegistry(),
        persistence=persistence,
        allow_unbumped_edits=dev,
    )


async def stored_hash(persistence: WorkflowPersistenceProvider) -> str:
    stored = await persistence.definition_store.find_by_name_and_version("ticket", 1)
    assert stored is not None
    return stored.content_hash


async def test_a_forgotten_bump_says_how_to_fix_it(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    await runtime_for(ticket(), any_persistence, dev=False).initialize()
    edited = runtime_for(ticket("done"), any_persistence, dev=False)
    with pytest.raises(WorkflowDefinitionError) as caught:
        await edited.initialize()
    message = str(caught.value)
    assert "version 1 was not bumped" in message
    assert "register it as version=2 and keep version 1 registered" in message
    assert "allow_unbumped_edits=True" in message
    assert await stored_hash(any_persistence) == ticket().content_hash()


async def test_the_switch_replaces_a_snapshot_no_active_instance_uses(
    any_persistence: WorkflowPersistenceProvider, caplog: pytest.LogCaptureFixture
) -> None:
    first = runtime_for(ticket(), any_persistence, dev=False)
    finished = await first.create_instance("ticket")
    await first.trigger_event(finished.uuid, "close")  # terminal: it does not hold the edit back

    caplog.set_level(logging.WARNING, logger="duraflows_pg_async")
    edited = runtime_for(ticket("done"), any_persistence, dev=True)
    assert "DEVELOPMENT ONLY: allow_unbumped_edits=True" in caplog.text  # at construction
    instance = await edited.create_instance("ticket")
    result = await edited.trigger_event(instance.uuid, "close")
    assert result.to_state == "done"
    assert await stored_hash(any_persistence) == ticket("done").content_hash()
    assert "replaced the stored snapshot of workflow 'ticket' version 1" in caplog.text
    # The next runtime with the edit and without the switch agrees with what is stored.
    await runtime_for(ticket("done"), any_persistence, dev=False).initialize()


async def test_the_switch_is_refused_while_an_instance_is_pinned_to_the_version(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    await runtime_for(ticket(), any_persistence, dev=False).create_instance("ticket")
    edited = runtime_for(ticket("done"), any_persistence, dev=True)
    with pytest.raises(WorkflowDefinitionError) as caught:
        await edited.initialize()
    message = str(caught.value)
    assert "1 active instance(s) are pinned to version 1" in message
    assert "version=2" in message
    assert await stored_hash(any_persistence) == ticket().content_hash()


def test_the_switch_must_be_a_bool(any_persistence: WorkflowPersistenceProvider) -> None:
    with pytest.raises(InvalidArgumentError, match="allow_unbumped_edits"):
        WorkflowRuntime(
            definitions=DefinitionRegistry(),
            commands=CommandRegistry(),
            persistence=any_persistence,
            allow_unbumped_edits="yes",  # type: ignore[arg-type]
        )
