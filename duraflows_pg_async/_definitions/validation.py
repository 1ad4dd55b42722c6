"""The rules a definition must keep before the runtime takes it, all reported at once."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import timedelta
from typing import Any

from duraflows_pg_async._core.echo import echo
from duraflows_pg_async._core.validate import TextProblem, check_json, text_problem
from duraflows_pg_async.errors import InvalidArgumentError, WorkflowDefinitionError

from .canonical_json import MAX_SAFE_INTEGER
from .model import (
    VERSION_POLICIES,
    CommandRef,
    Event,
    GuardRef,
    OnEnter,
    State,
    Timeout,
    WorkflowDefinition,
    timeout_total,
)
from .problems import LISTED, quoted, summary

__all__ = ["validate_definition"]

# How a name's text problem (_core.validate.text_problem) is worded.
_NAME_TEXT_PROBLEMS: dict[TextProblem, str] = {
    "NUL": "must not contain NUL characters",
    "unpaired surrogate": "must be valid Unicode (it has an unpaired surrogate)",
}


def _name_problem(value: object) -> str | None:
    """Why ``value`` cannot be a name (of a workflow, state, event, command or guard)."""
    if not isinstance(value, str) or not value:
        return f"must be a non-empty string, got {echo(value)}"
    if (problem := text_problem(value)) is not None:
        return f"{_NAME_TEXT_PROBLEMS[problem]}, got {echo(value)}"
    return None


class _Validator:
    def __init__(
        self,
        definition: WorkflowDefinition,
        command_names: Collection[str] | None,
        guard_names: Collection[str] | None,
    ) -> None:
        self.definition = definition
        self.command_names = command_names
        self.guard_names = guard_names
        self.problems: list[str] = []
        # States that are well-formed enough to follow their edges.
        self.states: dict[str, State] = {}
        self.state_names: set[object] = set()

    def run(self) -> None:
        d = self.definition
        if (problem := _name_problem(d.name)) is not None:
            self.problems.append(f"name {problem}")
        version: object = d.version
        # Upstream requires a "positive safe integer" version (JavaScript's Number).
        if (
            isinstance(version, bool)
            or not isinstance(version, int)
            or not 1 <= version <= MAX_SAFE_INTEGER
        ):
            self.problems.append(
                f"version must be a positive integer of at most {MAX_SAFE_INTEGER}, "
                f"got {echo(version)}"
            )
        if d.version_policy not in VERSION_POLICIES:
            self.problems.append(
                f'version_policy must be "pinned" or "latest", got {echo(d.version_policy)}'
            )
        states: object = d.states
        if not isinstance(states, Mapping):
            self.problems.append(
                f"states must be a mapping of state names to State, got {type(states).__name__}"
            )
            states = {}
        elif not states:
            self.problems.append("states must define at least one state")
        assert isinstance(states, Mapping)
        self.state_names = set(states)
        for state_name, state in states.items():
            if (problem := _name_problem(state_name)) is not None:
                self.problems.append(f"state name {problem}")
            elif not isinstance(state, State):
                self.problems.append(
                    f"state {quoted(state_name)} must be a State, got {type(state).__name__}"
                )
            else:
                self.states[state_name] = state
        initial: object = d.initial_state
        if (problem := _name_problem(initial)) is not None:
            self.problems.append(f"initial_state {problem}")
        elif initial not in self.state_names:
            self.problems.append(f"initial state {quoted(initial)} is not defined in states")
        for state_name, state in self.states.items():
            self.state(state_name, state)
        self.cycles()

    def state(self, state_name: str, state: State) -> None:
        where = f"state {quoted(state_name)}"
        self.json(state.context, f"{where} context")
        self.json(state.metadata, f"{where} metadata")
        events: object = state.events
        if not isinstance(events, Mapping):
            self.problems.append(
                f"{where}: events must be a mapping of event names to Event, "
                f"got {type(events).__name__}"
            )
            events = {}
        assert isinstance(events, Mapping)
        timeout_events: list[str] = []
        for event_name, event in events.items():
            if (problem := _name_problem(event_name)) is not None:
                self.problems.append(f"{where}: event name {problem}")
                continue
            if event_name.startswith("$"):
                self.problems.append(
                    f'{where}: event name {quoted(event_name)} starts with "$", which is reserved'
                )
            if not isinstance(event, Event):
                self.problems.append(
                    f"{where}: event {quoted(event_name)} must be an Event, "
                    f"got {type(event).__name__}"
                )
                continue
            self.event(f"{where} event {quoted(event_name)}", event)
            if event.timeout is not None:
                timeout_events.append(event_name)
        if len(timeout_events) > 1:
            names = ", ".join(quoted(name) for name in timeout_events[:LISTED])
            if len(timeout_events) > LISTED:
                names += ", ..."
            self.problems.append(
                f"{where}: at most one event per state may have a timeout, found "
                f"{len(timeout_events)} ({names})"
            )
        on_enter: object = state.on_enter
        if on_enter is None:
            return
        if not isinstance(on_enter, OnEnter):
            self.problems.append(
                f"{where}: on_enter must be an OnEnter or None, got {type(on_enter).__name__}"
            )
            return
        inner = f"{where} onEnter"
        self.state_ref(inner, "target state", on_enter.target_state)
        self.state_ref(inner, "error state", on_enter.error_state)
        self.commands(inner, on_enter.commands)
        self.json(on_enter.metadata, f"{inner} metadata")

    def event(self, where: str, event: Event) -> None:
        if event.target_state is None and event.error_state is None and not event.commands:
            self.problems.append(
                f"{where}: must define at least one of target_state, error_state or commands"
            )
        self.state_ref(where, "target state", event.target_state)
        self.state_ref(where, "error state", event.error_state)
        self.commands(where, event.commands)
        guard: object = event.guard
        if isinstance(guard, GuardRef):
            self.ref(where, "guard", guard.name, guard.metadata, self.guard_names)
        elif guard is not None:
            self.problems.append(
                f"{where}: guard must be a GuardRef or None, got {type(guard).__name__}"
            )
        if event.timeout is not None:
            self.timeout(where, event.timeout)
        self.json(event.metadata, f"{where} metadata")

    def state_ref(self, where: str, what: str, value: object) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            self.problems.append(f"{where}: {what} must be a string, got {echo(value)}")
        elif value not in self.state_names:
            self.problems.append(f"{where}: {what} {quoted(value)} is not defined in states")

    def commands(self, where: str, commands: object) -> None:
        if not isinstance(commands, tuple):
            self.problems.append(
                f"{where}: commands must be a tuple or list of CommandRef, "
                f"got {type(commands).__name__}"
            )
            return
        for index, ref in enumerate(commands):
            if not isinstance(ref, CommandRef):
                self.problems.append(
                    f"{where}: commands[{index}] must be a CommandRef, got {type(ref).__name__}"
                )
                continue
            if not isinstance(ref.transactional, bool):
                self.problems.append(
                    f"{where}: commands[{index}].transactional must be a bool, "
                    f"got {type(ref.transactional).__name__}"
                )
            self.ref(where, "command", ref.name, ref.metadata, self.command_names)

    def ref(
        self,
        where: str,
        kind: str,
        name: object,
        metadata: Mapping[str, Any],
        known: Collection[str] | None,
    ) -> None:
        if (problem := _name_problem(name)) is not None:
            self.problems.append(f"{where}: {kind} name {problem}")
            return
        if known is not None and name not in known:
            self.problems.append(f"{where}: {kind} {quoted(name)} is not registered")
        self.json(metadata, f"{where} {kind} {quoted(name)} metadata")

    def timeout(self, where: str, timeout: object) -> None:
        if not isinstance(timeout, Timeout):
            self.problems.append(
                f"{where}: timeout must be a Timeout or None, got {type(timeout).__name__}"
            )
            return
        total, problems = timeout_total(timeout, "timeout")
        if total is None:
            self.problems.extend(f"{where}: {problem}" for problem in problems)
            return
        if not (
            timeout.seconds > 0 or timeout.minutes > 0 or timeout.hours > 0 or timeout.days > 0
        ):
            self.problems.append(
                f"{where}: timeout must have at least one positive part "
                "(seconds, minutes, hours, days)"
            )
        elif total <= timedelta(0):
            # Parts so small that they round to zero microseconds.
            self.problems.append(f"{where}: timeout must be longer than zero, got {total}")

    def json(self, value: object, name: str) -> None:
        if not isinstance(value, Mapping):
            self.problems.append(f"{name} must be a mapping, got {type(value).__name__}")
            return
        try:
            check_json(dict(value), name)
        except InvalidArgumentError as exc:
            self.problems.append(exc.message)

    def cycles(self) -> None:
        """Every cycle of onEnter target/error edges: such a chain would never stop on its own."""
        edges: dict[str, list[str]] = {}
        for state_name, state in self.states.items():
            on_enter: object = state.on_enter
            targets: list[str] = []
            if isinstance(on_enter, OnEnter):
                for target in (on_enter.target_state, on_enter.error_state):
                    if isinstance(target, str) and target in self.states and target not in targets:
                        targets.append(target)
            edges[state_name] = targets
        # Depth-first, with an explicit stack: a valid chain of thousands of states must not hit
        # Python's recursion limit.
        done: set[str] = set()
        for root in edges:
            if root in done:
                continue
            path = [root]
            on_path = {root}
            pending = [iter(edges[root])]
            while pending:
                target = next(pending[-1], None)
                if target is None:
                    pending.pop()
                    node = path.pop()
                    on_path.discard(node)
                    done.add(node)
                elif target in on_path:
                    cycle = [*path[path.index(target) :], target]
                    self.problems.append(f"Cycle detected in onEnter chain: {_chain(cycle)}")
                elif target not in done:
                    path.append(target)
                    on_path.add(target)
                    pending.append(iter(edges[target]))

    def unreachable(self) -> list[str]:
        """States no event or onEnter path leads to from the initial state."""
        initial = self.definition.initial_state
        seen = {initial}
        queue = [initial]
        while queue:
            state = self.states.get(queue.pop())
            if state is None:
                continue
            targets: list[str | None] = []
            for event in state.events.values():
                targets += (event.target_state, event.error_state)
            if state.on_enter is not None:
                targets += (state.on_enter.target_state, state.on_enter.error_state)
            for target in targets:
                if target is not None and target not in seen:
                    seen.add(target)
                    queue.append(target)
        return [
            f"state {quoted(name)} is not reachable from the initial state {quoted(initial)}"
            for name in self.states
            if name not in seen
        ]


def _chain(states: list[str]) -> str:
    """``a -> b -> a``; a long cycle shows its first and last states and how many there are."""
    if len(states) <= 2 * LISTED:
        return " -> ".join(echo(name, raw=True) for name in states)
    head = [echo(name, raw=True) for name in states[:LISTED]]
    tail = [echo(name, raw=True) for name in states[-LISTED:]]
    return " -> ".join([*head, f"... ({len(states) - 2 * LISTED} more)", *tail])


def validate_definition(
    definition: WorkflowDefinition,
    *,
    command_names: Collection[str] | None = None,
    guard_names: Collection[str] | None = None,
) -> list[str]:
    """Check ``definition``; return warnings (unreachable states), raise on every problem at once.

    With ``command_names`` / ``guard_names``, every command and guard reference must be one of
    them. Raises one [`WorkflowDefinitionError`][duraflows_pg_async.errors.WorkflowDefinitionError]
    whose message lists each problem on its own line after a summary line.
    """
    if not isinstance(definition, WorkflowDefinition):
        raise InvalidArgumentError(
            f"definition must be a WorkflowDefinition, got {type(definition).__name__}"
        )
    validator = _Validator(definition, command_names, guard_names)
    validator.run()
    if validator.problems:
        name: object = definition.name
        raise WorkflowDefinitionError(
            name if isinstance(name, str) else echo(name),
            summary("invalid definition", validator.problems),
        )
    return validator.unreachable()
