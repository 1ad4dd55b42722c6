"""Hostile sizes through the runtime, on both providers: errors stay short, durations stay
representable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from helpers import ManualClock

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    CommandResult,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    State,
    Timeout,
    TimeoutRetryPolicy,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
)
from duraflows_pg_async.errors import (
    CommandFailureError,
    InvalidArgumentError,
    InvalidEventError,
    WorkflowDefinitionError,
)

HUGE = 20_000_090
HUNDRED_YEARS = timedelta(days=36525)
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def runtime_for(
    persistence: WorkflowPersistenceProvider, **options: Any
) -> tuple[WorkflowRuntime, ManualClock]:
    definitions = DefinitionRegistry()
    definitions.register(
        WorkflowDefinition(
            name="bounds",
            initial_state="open",
            states={
                "open": State(
                    events={
                        "close": Event(target_state="closed"),
                        "fail": Event(commands=(CommandRef("refuse"),)),
                        # The longest timeout there is: its deadline must still be stored.
                        "expire": Event(
                            target_state="closed",
                            commands=(CommandRef("flaky"),),
                            timeout=Timeout(days=36525),
                        ),
                    }
                ),
                "closed": State(),
            },
        )
    )
    commands = CommandRegistry()

    def refuse(subject: Any, ctx: ExecutionContext) -> CommandResult:
        return CommandResult(ok=False, code="REFUSED", message="m" * HUGE)

    def flaky(subject: Any, ctx: ExecutionContext) -> None:
        raise RuntimeError("e" * HUGE)

    commands.register("refuse", refuse)
    commands.register("flaky", flaky)
    clock = ManualClock(START)
    runtime = WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        persistence=persistence,
        clock=clock,
        **options,
    )
    return runtime, clock


def assert_short(exc: BaseException, size: int = HUGE) -> None:
    text = str(exc)
    assert len(text) < 1024, len(text)
    assert f"({size} characters)" in text


async def test_a_huge_event_name_gives_a_short_invalid_event_error(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    runtime, _ = runtime_for(any_persistence)
    instance = await runtime.create_instance("bounds")
    name = "x" * HUGE
    with pytest.raises(InvalidEventError) as caught:
        await runtime.trigger_event(instance.uuid, name)
    assert_short(caught.value)
    assert str(instance.uuid) in str(caught.value)
    # The attribute keeps what the caller sent; only the message is bounded.
    assert caught.value.event_name == name


async def test_a_huge_workflow_name_gives_a_short_definition_error(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    runtime, _ = runtime_for(any_persistence)
    with pytest.raises(WorkflowDefinitionError) as caught:
        await runtime.create_instance("w" * HUGE)
    assert_short(caught.value)


async def test_a_huge_uuid_string_gives_a_short_argument_error(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    runtime, _ = runtime_for(any_persistence)
    for text in ("0" * HUGE, "urn:uuid:" + "{" * HUGE):
        with pytest.raises(InvalidArgumentError, match="instance_uuid must be a UUID") as caught:
            await runtime.trigger_event(text, "close")
        assert_short(caught.value, len(text))


async def test_a_huge_command_message_gives_a_short_command_failure_error(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    runtime, _ = runtime_for(any_persistence)
    instance = await runtime.create_instance("bounds")
    with pytest.raises(CommandFailureError) as caught:
        await runtime.trigger_event(instance.uuid, "fail")
    assert_short(caught.value)
    assert caught.value.result.message == "m" * HUGE


async def test_the_longest_timeout_gives_a_deadline_that_is_stored_and_read_back(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    runtime, _ = runtime_for(any_persistence)
    instance = await runtime.create_instance("bounds")
    assert instance.expires_at == START + HUNDRED_YEARS
    stored = await runtime.get_instance(instance.uuid)
    assert stored is not None
    assert stored.expires_at == START + HUNDRED_YEARS


async def test_the_longest_retry_delay_is_recorded_and_not_retried_before_it(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    policy = TimeoutRetryPolicy(initial_delay=HUNDRED_YEARS, max_delay=HUNDRED_YEARS)
    runtime, clock = runtime_for(any_persistence, timeout_retry=policy)
    instance = await runtime.create_instance("bounds")
    clock.set(START + HUNDRED_YEARS + timedelta(seconds=1))
    result = await runtime.process_expired_workflows()
    (failure,) = result.failed
    assert failure.attempts == 1
    assert failure.retry_at == clock.now() + HUNDRED_YEARS
    after = await runtime.get_instance(instance.uuid)
    assert after is not None
    assert after.timeout_retry is not None
    assert after.timeout_retry.retry_at == clock.now() + HUNDRED_YEARS
    assert len(after.timeout_retry.last_error) == 2000
    # Recorded, so not due again: the failing command does not run in the next sweep.
    assert (await runtime.process_expired_workflows()).failed == []
