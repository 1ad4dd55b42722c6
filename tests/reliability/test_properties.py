"""Property test: random valid definitions, random event sequences, both providers in lockstep.

Hypothesis draws a definition (a few states; events with target and error states, guards that
accept or reject from the context, commands that write to the context, fail with ok=False or
raise, all deterministically; acyclic onEnter chains) and a sequence of events, some of them not
available in the state the instance will be in. The same sequence runs through WorkflowRuntime on
the in-memory provider and on PostgreSQL. After every step:

- both providers agree: the same outcome, from/to states, command results, or the same error
  (type and message, instance uuids aside); the same current state, version and context; the
  same history;
- on each provider, the instance version equals the number of persisted changes (history rows
  with outcome success or failure; guard-rejected rows do not bump it), the history is a chain
  from the initial state to the current state (each row starts where the previous one ended),
  and its newest row ends in the current state;
- a call that raised wrote nothing (same version, same history);
- an event the current state does not define raises InvalidEventError, and only then.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    CommandResult,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    ExecutionResult,
    GuardRef,
    GuardRegistry,
    HistoryRecord,
    OnEnter,
    State,
    WorkflowDefinition,
    WorkflowInstance,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
    memory_workflow_providers,
)
from duraflows_pg_async.errors import InvalidEventError

EVENT_NAMES = ["a", "b", "c"]
UNKNOWN_EVENT = "zz"  # never defined


class Boom(Exception):
    """What the ``boom`` command raises: it propagates and rolls the call back."""


# Commands and guards: deterministic functions of the context (and of the state entered).


def inc(subject: Any, ctx: ExecutionContext) -> None:
    ctx.context["n"] = ctx.context.get("n", 0) + 1


def push(subject: Any, ctx: ExecutionContext) -> None:
    ctx.context["trail"] = [*ctx.context.get("trail", []), ctx.to_state]


def fail_if_odd(subject: Any, ctx: ExecutionContext) -> CommandResult:
    if ctx.context.get("n", 0) % 2:
        return CommandResult(ok=False, code="ODD", message=f"n={ctx.context['n']} is odd")
    return CommandResult(ok=True, metadata={"n": ctx.context.get("n", 0)})


def fail(subject: Any, ctx: ExecutionContext) -> CommandResult:
    return CommandResult(ok=False, code="NOPE")


def boom_if_big(subject: Any, ctx: ExecutionContext) -> None:
    if ctx.context.get("n", 0) >= 4:
        raise Boom(f"n={ctx.context['n']} is too big")


def best_effort_boom(subject: Any, ctx: ExecutionContext) -> None:
    raise Boom("best effort")


def even(subject: Any, ctx: ExecutionContext) -> bool:
    n: int = ctx.context.get("n", 0)
    return n % 2 == 0


def odd(subject: Any, ctx: ExecutionContext) -> bool:
    n: int = ctx.context.get("n", 0)
    return n % 2 == 1


def short_trail(subject: Any, ctx: ExecutionContext) -> bool:
    return len(ctx.context.get("trail", [])) < 3


COMMANDS = ["inc", "push", "fail_if_odd", "fail", "boom_if_big", "best_effort_boom"]
GUARDS = ["even", "odd", "short_trail"]


def registries() -> tuple[CommandRegistry, GuardRegistry]:
    commands = CommandRegistry()
    for name, fn in [
        ("inc", inc),
        ("push", push),
        ("fail_if_odd", fail_if_odd),
        ("fail", fail),
        ("boom_if_big", boom_if_big),
    ]:
        commands.register(name, fn)
    commands.register("best_effort_boom", best_effort_boom, best_effort=True)
    guards = GuardRegistry()
    guards.register("even", even)
    guards.register("odd", odd)
    guards.register("short_trail", short_trail)
    return commands, guards


# ---------------------------------------------------------------------------------------------
# Strategies

COMMAND_LISTS = st.lists(st.sampled_from(COMMANDS), max_size=3).map(
    lambda names: tuple(CommandRef(name) for name in names)
)
STATE_CONTEXTS: st.SearchStrategy[dict[str, Any]] = st.sampled_from(
    [{}, {"n": 0}, {"mark": "declared"}]
)


@st.composite
def definitions(draw: st.DrawFn) -> WorkflowDefinition:
    """A valid definition: states s0..sN (s0 initial); onEnter edges only lead to later states,
    so no onEnter chain can cycle."""
    names = [f"s{i}" for i in range(draw(st.integers(2, 5)))]
    any_state = st.sampled_from(names)
    states: dict[str, State] = {}
    for index, name in enumerate(names):
        events: dict[str, Event] = {}
        # Every state but the last accepts at least one event; the last may be terminal.
        least = 1 if index < len(names) - 1 else 0
        chosen = st.lists(st.sampled_from(EVENT_NAMES), unique=True, min_size=least, max_size=3)
        for event_name in draw(chosen):
            target = draw(st.none() | any_state)
            error = draw(st.none() | any_state)
            commands = draw(COMMAND_LISTS)
            if target is None and error is None and not commands:
                target = draw(any_state)
            guard = draw(st.none() | st.sampled_from(GUARDS))
            events[event_name] = Event(
                target_state=target,
                error_state=error,
                commands=commands,
                guard=GuardRef(guard) if guard is not None else None,
            )
        on_enter = None
        later = names[index + 1 :]
        if draw(st.booleans()):
            onward = (st.none() | st.sampled_from(later)) if later else st.none()
            on_enter = OnEnter(
                target_state=draw(onward),
                error_state=draw(onward),
                commands=draw(COMMAND_LISTS),
            )
        states[name] = State(events=events, on_enter=on_enter, context=draw(STATE_CONTEXTS))
    return WorkflowDefinition(name=f"prop_{uuid4().hex}", initial_state="s0", states=states)


def next_events(definition: WorkflowDefinition, state: str) -> st.SearchStrategy[str]:
    """One of the state's events, or (about one draw in k + 1) an event it does not define."""
    defined = list(definition.states[state].events)
    undefined = [name for name in [*EVENT_NAMES, UNKNOWN_EVENT] if name not in defined]
    return st.sampled_from(undefined).flatmap(lambda other: st.sampled_from([*defined, other]))


# ---------------------------------------------------------------------------------------------
# Running both providers in lockstep


@dataclass
class Side:
    """One provider and the runtime on it."""

    label: str
    runtime: WorkflowRuntime
    workflow: str
    uuid: UUID | None = None

    async def instance(self) -> WorkflowInstance:
        assert self.uuid is not None
        found = await self.runtime.get_instance(self.uuid)
        assert found is not None
        return found

    async def history(self) -> list[HistoryRecord]:
        """Oldest first."""
        assert self.uuid is not None
        return list(reversed(await self.runtime.get_history(self.uuid, limit=1_000)))


def build_side(
    label: str, persistence: WorkflowPersistenceProvider, definition: WorkflowDefinition, depth: int
) -> Side:
    registry = DefinitionRegistry()
    commands, guards = registries()
    registry.register(definition, command_names=commands.names(), guard_names=guards.names())
    runtime = WorkflowRuntime(
        definitions=registry,
        commands=commands,
        guards=guards,
        persistence=persistence,
        max_on_enter_depth=depth,
    )
    return Side(label, runtime, definition.name)


Outcome = tuple[str, Any]


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def normalised_error(exc: BaseException) -> Outcome:
    """The error's type and message, instance uuids aside (they differ between providers)."""
    return ("error", (type(exc), _UUID.sub("<uuid>", str(exc))))


async def attempt(side: Side, event_name: str | None, start: dict[str, Any]) -> Outcome:
    """Create the instance (``event_name`` None) or fire one event; the outcome, comparable
    across providers."""
    try:
        if event_name is None:
            created = await side.runtime.create_instance(side.workflow, context=start)
            side.uuid = created.uuid
            return ("created", None)
        assert side.uuid is not None
        result: ExecutionResult = await side.runtime.trigger_event(side.uuid, event_name)
    except Exception as exc:
        return normalised_error(exc)
    return (
        "result",
        (
            result.outcome,
            result.from_state,
            result.to_state,
            result.rejected_by,
            [r.to_json() for r in result.command_results],
            result.history_uuid,
        ),
    )


def history_shape(rows: list[HistoryRecord]) -> list[tuple[Any, ...]]:
    return [
        (
            row.from_state,
            row.event_name,
            row.to_state,
            row.outcome,
            row.rejected_by,
            row.error_message,
            [r.to_json() for r in row.command_results],
            row.trigger_metadata,
            row.definition_version,
        )
        for row in rows
    ]


def check_invariants(
    side: Side,
    definition: WorkflowDefinition,
    instance: WorkflowInstance,
    rows: list[HistoryRecord],
) -> None:
    where = f"[{side.label}]"
    persisted = [row for row in rows if row.outcome in ("success", "failure")]
    assert instance.version == len(persisted), f"{where} version != persisted changes"
    state = definition.initial_state
    for row in rows:
        assert row.from_state == state, f"{where} history is not a chain at {row}"
        if row.outcome == "guard-rejected":
            assert row.to_state == row.from_state
            assert row.rejected_by in GUARDS
        else:
            assert row.rejected_by is None
        assert row.to_state in definition.states
        state = row.to_state
    assert state == instance.current_state, f"{where} history does not end in the current state"
    if rows:
        assert rows[-1].to_state == instance.current_state
    assert instance.definition_version == definition.version


# Function-scoped fixtures (the PostgreSQL pool) are shared by the examples: every example
# works on a workflow and instances of its own.
PROPERTIES = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.slow
@PROPERTIES
@given(
    definition=definitions(),
    steps=st.integers(1, 8),
    start_n=st.integers(0, 5),
    depth=st.sampled_from([2, 10]),
    data=st.data(),
)
async def test_random_event_sequences_agree_on_both_providers(
    providers: WorkflowPersistenceProvider,
    definition: WorkflowDefinition,
    steps: int,
    start_n: int,
    depth: int,
    data: st.DataObject,
) -> None:
    memory = build_side("memory", memory_workflow_providers(), definition, depth)
    postgres = build_side("postgres", providers, definition, depth)
    sides = (memory, postgres)
    start = {"n": start_n, "trail": []}

    # Creation (and the initial state's onEnter chain).
    created = [await attempt(side, None, start) for side in sides]
    assert created[0] == created[1], f"create: {created}"
    event(f"create: {label(created[0])}")
    if created[0][0] == "error":
        for side in sides:
            count = await side.runtime.persistence.instance_store.count_instances(
                workflow_name=definition.name, definition_version=definition.version
            )
            assert count == 0, f"[{side.label}] a failed create left an instance"
        return
    previous = await observe(sides, definition)

    for _ in range(steps):
        state_before = previous[0][0].current_state
        event_name = data.draw(next_events(definition, state_before), label="event")
        outcomes = [await attempt(side, event_name, start) for side in sides]
        kinds = [outcome[0] for outcome in outcomes]
        assert kinds[0] == kinds[1], f"{event_name}: {outcomes}"
        event(f"step: {label(outcomes[0])}")
        defined = event_name in definition.states[state_before].events
        if kinds[0] == "error":
            assert outcomes[0][1] == outcomes[1][1], f"{event_name}: errors differ: {outcomes}"
            assert (outcomes[0][1][0] is InvalidEventError) == (not defined)
        else:
            assert defined, f"{event_name} is not defined on {state_before} but was accepted"
            # The history uuids differ between providers; each must be its newest row's.
            assert outcomes[0][1][:-1] == outcomes[1][1][:-1], f"{event_name}: {outcomes}"
        current = await observe(sides, definition)
        for side, outcome, (instance, rows), (before, rows_before) in zip(
            sides, outcomes, current, previous, strict=True
        ):
            if outcome[0] == "error":
                assert instance == before, f"[{side.label}] a failed call changed the instance"
                assert history_shape(rows) == history_shape(rows_before)
                assert [r.uuid for r in rows] == [r.uuid for r in rows_before]
            else:
                assert rows[-1].uuid == outcome[1][-1], f"[{side.label}] history_uuid"
                assert outcome[1][2] == instance.current_state
        previous = current


def label(outcome: Outcome) -> str:
    """For hypothesis' statistics (--hypothesis-show-statistics): what the steps did."""
    if outcome[0] == "error":
        error_type: type[BaseException] = outcome[1][0]
        return error_type.__name__
    if outcome[0] == "result":
        return str(outcome[1][0])
    return "created"


async def observe(
    sides: tuple[Side, Side], definition: WorkflowDefinition
) -> list[tuple[WorkflowInstance, list[HistoryRecord]]]:
    """Read each side's instance and history, check the invariants and that the sides agree."""
    seen = []
    for side in sides:
        instance = await side.instance()
        rows = await side.history()
        check_invariants(side, definition, instance, rows)
        seen.append((instance, rows))
    (mem, mem_rows), (pg, pg_rows) = seen
    assert (mem.current_state, mem.version, mem.context, mem.metadata) == (
        pg.current_state,
        pg.version,
        pg.context,
        pg.metadata,
    ), f"providers disagree: {mem} vs {pg}"
    assert (mem.expires_at, mem.timeout_retry) == (pg.expires_at, pg.timeout_retry)
    assert history_shape(mem_rows) == history_shape(pg_rows), "histories differ"
    return seen
