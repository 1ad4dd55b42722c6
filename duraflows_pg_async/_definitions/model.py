"""Workflow definitions: the frozen dataclasses, their JSON shape, validation and content hash.

A definition is plain data.
[`WorkflowDefinition.from_dict()`][duraflows_pg_async.WorkflowDefinition.from_dict] and
[`to_dict()`][duraflows_pg_async.WorkflowDefinition.to_dict] use the upstream (TypeScript) camelCase
JSON shape, [`validate_definition()`][duraflows_pg_async.validate_definition] checks the rules the
runtime relies on, and
[`WorkflowDefinition.content_hash()`][duraflows_pg_async.WorkflowDefinition.content_hash] gives the
same ``"sha256:<hex>"`` the TypeScript runtime writes for the same content.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any, Literal

from duraflows_pg_async._core.validate import MAX_DURATION, check_json, require_duration
from duraflows_pg_async.errors import InvalidArgumentError, WorkflowDefinitionError, echo

__all__ = [
    "CommandRef",
    "Event",
    "GuardRef",
    "OnEnter",
    "State",
    "Timeout",
    "VersionPolicy",
    "WorkflowDefinition",
    "validate_definition",
]

VersionPolicy = Literal["pinned", "latest"]
"""``"pinned"``: an instance stays on the version it was created with; ``"latest"``: it moves on."""

_VERSION_POLICIES: tuple[str, ...] = ("pinned", "latest")
# JavaScript's Number.MAX_SAFE_INTEGER: upstream requires a "positive safe integer" version.
_MAX_SAFE_INTEGER = 2**53 - 1


def _as_dict(value: object) -> Any:
    """A fresh dict for any mapping, ``{}`` for None; anything else is left for validation."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _as_tuple(value: object) -> Any:
    """A list becomes a tuple (so equality does not depend on how the user spelt it)."""
    if value is None:
        return ()
    if isinstance(value, Sequence) and not isinstance(value, str | bytes | tuple):
        return tuple(value)
    return value


def _quoted(name: object) -> str:
    """A name as messages quote it, ``"ship"``, cut if long (errors.echo)."""
    return f'"{echo(name, raw=True)}"'


def _timeout_total(timeout: Timeout, label: str) -> tuple[timedelta | None, list[str]]:
    """The total of a timeout's parts, or None and why not (one problem per bad part)."""
    problems: list[str] = []
    for part in ("minutes", "hours", "days"):
        try:
            require_duration(
                getattr(timeout, part), f"{label} {part}", unit=part, timedelta_ok=False
            )
        except InvalidArgumentError as exc:
            problems.append(exc.message)
    if problems:
        return None, problems
    # No overflow: each part is at most MAX_DURATION.
    total = timedelta(minutes=timeout.minutes, hours=timeout.hours, days=timeout.days)
    if total > MAX_DURATION:
        return None, [
            f"{label} must be at most 100 years (36525 days) in all, got {total.days} days"
        ]
    return total, []


# --------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True, slots=True)
class Timeout:
    """How long an instance may stay in a state before the event carrying this timeout fires.

    The parts add up: ``Timeout(hours=1, minutes=30)`` is 90 minutes. Each part is a finite,
    non-negative number and the total is at most 100 years (36525 days), so that a deadline is
    always a date PostgreSQL and Python can hold; registration checks this and reports every
    problem at once. Zero parts are left out of
    [`WorkflowDefinition.to_dict()`][duraflows_pg_async.WorkflowDefinition.to_dict].
    """

    minutes: float = 0
    hours: float = 0
    days: float = 0

    def to_timedelta(self) -> timedelta:
        """The total duration (the sum of the parts).

        [`InvalidArgumentError`][duraflows_pg_async.errors.InvalidArgumentError] names the part
        for a timeout that registration would refuse (a negative, non-finite or too long part).
        """
        total, problems = _timeout_total(self, "Timeout")
        if total is None:
            raise InvalidArgumentError(problems[0])
        return total


@dataclass(frozen=True, slots=True)
class CommandRef:
    """A command to run, by registered name; ``metadata`` reaches it as ``ctx.command_metadata``."""

    name: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", _as_dict(self.metadata))


@dataclass(frozen=True, slots=True)
class GuardRef:
    """A guard to evaluate, by registered name; ``metadata`` is its ``ctx.command_metadata``."""

    name: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", _as_dict(self.metadata))


@dataclass(frozen=True, slots=True)
class Event:
    """An event a state accepts.

    Commands run in order. On success the instance moves to ``target_state`` (or stays where it
    is without one); when a mandatory command returns ``ok=False`` it moves to ``error_state``
    (without one the call fails with
    [`CommandFailureError`][duraflows_pg_async.errors.CommandFailureError]). At least one of
    ``target_state``, ``error_state`` or ``commands`` is required. ``commands`` may be given as any
    sequence (a list); it is stored as a tuple.
    """

    target_state: str | None = None
    error_state: str | None = None
    commands: Sequence[CommandRef] = ()
    guard: GuardRef | None = None
    timeout: Timeout | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "commands", _as_tuple(self.commands))
        object.__setattr__(self, "metadata", _as_dict(self.metadata))


@dataclass(frozen=True, slots=True)
class OnEnter:
    """Commands run whenever the state is entered, then an optional automatic move onwards.

    After the commands succeed the instance moves on to ``target_state`` (and that state's
    onEnter runs in turn); a mandatory command's ``ok=False`` moves it to ``error_state``.
    ``commands`` is stored as a tuple.
    """

    target_state: str | None = None
    error_state: str | None = None
    commands: Sequence[CommandRef] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "commands", _as_tuple(self.commands))
        object.__setattr__(self, "metadata", _as_dict(self.metadata))


@dataclass(frozen=True, slots=True)
class State:
    """A state: its events (in definition order), an optional onEnter and its declared context.

    ``context`` is merged into the instance's context each time the state is entered. A state
    without events is terminal, even if it has an onEnter.
    """

    events: Mapping[str, Event] = field(default_factory=dict)
    on_enter: OnEnter | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "events", _as_dict(self.events))
        object.__setattr__(self, "context", _as_dict(self.context))
        object.__setattr__(self, "metadata", _as_dict(self.metadata))

    @property
    def is_terminal(self) -> bool:
        """True when the state accepts no event."""
        return not self.events


@dataclass(frozen=True, slots=True)
class WorkflowDefinition:
    """A named, versioned state machine.

    ``states`` keeps its order (the timeout event of a state is its first event with a timeout).
    ``version_policy="pinned"`` (the default) keeps each instance on the version it was created
    with (or last moved under); ``"latest"`` moves every instance to the newest registered
    version. Bump ``version`` whenever the content changes: the content hash is stored per
    version and a changed hash under the same version is refused at start-up.

    Definitions compare by value; they are not hashable (their mappings are dicts).
    """

    name: str
    initial_state: str
    states: Mapping[str, State]
    version: int = 1
    version_policy: VersionPolicy = "pinned"

    def __post_init__(self) -> None:
        object.__setattr__(self, "states", _as_dict(self.states))

    def timeout_event(self, state_name: str) -> tuple[str, Event] | None:
        """The first event of ``state_name``, in definition order, that has a timeout.

        None when the state has no such event;
        [`WorkflowDefinitionError`][duraflows_pg_async.errors.WorkflowDefinitionError] when the
        state is not part of this definition.
        """
        state = self.states.get(state_name)
        if state is None:
            raise WorkflowDefinitionError(
                self.name, f"state {_quoted(state_name)} is not defined in version {self.version}"
            )
        for event_name, event in state.events.items():
            if event.timeout is not None:
                return event_name, event
        return None

    # ----------------------------------------------------------------------------------------
    # JSON shape

    def to_dict(self) -> dict[str, Any]:
        """The upstream camelCase JSON shape (a fresh, deep-copied dict).

        ``version`` is always written; ``versionPolicy`` only when it is ``"latest"`` (upstream's
        default is ``"pinned"``). Unset optional fields, empty ``commands``/``events``/
        ``context``/``metadata`` and zero timeout parts are left out, so
        ``WorkflowDefinition.from_dict(d.to_dict()) == d``.
        """
        out: dict[str, Any] = {"name": self.name, "version": self.version}
        if self.version_policy != "pinned":
            out["versionPolicy"] = self.version_policy
        out["initialState"] = self.initial_state
        out["states"] = {name: _state_to_dict(state) for name, state in self.states.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkflowDefinition:
        """Build a definition from the upstream camelCase JSON shape.

        Checks the shape only (types and key names; ``None`` counts as absent for optional
        fields); [`validate_definition()`][duraflows_pg_async.validate_definition] checks the rules.
        Every problem is reported in one
        [`WorkflowDefinitionError`][duraflows_pg_async.errors.WorkflowDefinitionError], each with
        its path, for example ``states.paid.events.ship.targetState must be a string``. Metadata and
        context are deep-copied.
        """
        reader = _Reader()
        definition = reader.definition(data)
        if reader.problems or definition is None:
            raw: object = data
            name = raw.get("name") if isinstance(raw, Mapping) else None
            raise WorkflowDefinitionError(
                name if isinstance(name, str) else "<unnamed>",
                _summary("cannot read the definition", reader.problems),
            )
        return definition

    # ----------------------------------------------------------------------------------------
    # Content hash

    def content_hash(self) -> str:
        """``"sha256:<64 hex>"`` of the canonical JSON of `to_dict()` without the version keys.

        Byte-compatible with the TypeScript runtime: keys sorted by UTF-16 code units (keys that
        are array indices such as ``"7"`` first, in numeric order, as a JavaScript object orders
        them) and text serialised exactly as ``JSON.stringify`` does. Equal content gives equal
        hashes whatever the dict order or ``version``.
        """
        data = self.to_dict()
        data.pop("version", None)
        data.pop("versionPolicy", None)
        text = _canonical_json(data)
        return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# to_dict helpers


def _metadata(value: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(value))


def _commands_to_list(commands: Sequence[CommandRef]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for ref in commands:
        item: dict[str, Any] = {"name": ref.name}
        if ref.metadata:
            item["metadata"] = _metadata(ref.metadata)
        out.append(item)
    return out


def _timeout_to_dict(timeout: Timeout) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if timeout.minutes:
        out["afterMinutes"] = timeout.minutes
    if timeout.hours:
        out["afterHours"] = timeout.hours
    if timeout.days:
        out["afterDays"] = timeout.days
    return out


def _event_to_dict(event: Event) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if event.target_state is not None:
        out["targetState"] = event.target_state
    if event.error_state is not None:
        out["errorState"] = event.error_state
    if event.commands:
        out["commands"] = _commands_to_list(event.commands)
    if event.guard is not None:
        guard: dict[str, Any] = {"name": event.guard.name}
        if event.guard.metadata:
            guard["metadata"] = _metadata(event.guard.metadata)
        out["guard"] = guard
    if event.timeout is not None:
        out["timeout"] = _timeout_to_dict(event.timeout)
    if event.metadata:
        out["metadata"] = _metadata(event.metadata)
    return out


def _on_enter_to_dict(on_enter: OnEnter) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if on_enter.target_state is not None:
        out["targetState"] = on_enter.target_state
    if on_enter.error_state is not None:
        out["errorState"] = on_enter.error_state
    if on_enter.commands:
        out["commands"] = _commands_to_list(on_enter.commands)
    if on_enter.metadata:
        out["metadata"] = _metadata(on_enter.metadata)
    return out


def _state_to_dict(state: State) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if state.events:
        out["events"] = {name: _event_to_dict(event) for name, event in state.events.items()}
    if state.on_enter is not None:
        out["onEnter"] = _on_enter_to_dict(state.on_enter)
    if state.context:
        out["context"] = _metadata(state.context)
    if state.metadata:
        out["metadata"] = _metadata(state.metadata)
    return out


# --------------------------------------------------------------------------------------------
# from_dict


_DEFINITION_KEYS = ("name", "version", "versionPolicy", "initialState", "states")
_STATE_KEYS = ("events", "onEnter", "context", "metadata")
_EVENT_KEYS = ("targetState", "errorState", "commands", "guard", "timeout", "metadata")
_ON_ENTER_KEYS = ("targetState", "errorState", "commands", "metadata")
_REF_KEYS = ("name", "metadata")
_TIMEOUT_KEYS = ("afterMinutes", "afterHours", "afterDays")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Reader:
    """Reads the JSON shape, collecting every problem with its path instead of stopping."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def _object(
        self, value: object, path: str, allowed: tuple[str, ...]
    ) -> Mapping[str, Any] | None:
        if not isinstance(value, Mapping):
            self.problems.append(f"{path or 'the definition'} must be an object")
            return None
        for key in value:
            if key not in allowed:
                self.problems.append(
                    f"{path or 'the definition'} has an unknown key {echo(key)} "
                    f"(allowed: {', '.join(allowed)})"
                )
        return value

    def _optional_object(
        self, data: Mapping[str, Any], key: str, path: str, allowed: tuple[str, ...]
    ) -> Mapping[str, Any] | None:
        value = data.get(key)
        return None if value is None else self._object(value, _join(path, key), allowed)

    def _string(self, data: Mapping[str, Any], key: str, path: str, *, required: bool) -> Any:
        value = data.get(key)
        if value is None:
            if required:
                self.problems.append(f"{_join(path, key)} is required")
            return None
        if not isinstance(value, str):
            self.problems.append(f"{_join(path, key)} must be a string")
            return None
        return value

    def _mapping(self, data: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
        value = data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problems.append(f"{_join(path, key)} must be an object")
            return {}
        # Checked first: deepcopy recurses, and a document nested thousands deep would raise
        # RecursionError instead of being reported here.
        try:
            check_json(dict(value), _join(path, key))
        except InvalidArgumentError as exc:
            self.problems.append(exc.message)
            return {}
        return copy.deepcopy(dict(value))

    def _duration(self, data: Mapping[str, Any], key: str, unit: str, path: str) -> float:
        """A timeout part: a finite, non-negative number of ``unit``, at most MAX_DURATION."""
        value = data.get(key)
        if value is None:
            return 0
        try:
            require_duration(value, _join(path, key), unit=unit, timedelta_ok=False)
        except InvalidArgumentError as exc:
            self.problems.append(exc.message)
            return 0
        number: float = value
        return number

    def _keyed(self, data: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
        """An object whose keys are names (states, events): keys must be strings."""
        value = data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problems.append(f"{_join(path, key)} must be an object")
            return {}
        for name in value:
            if not isinstance(name, str):
                self.problems.append(
                    f"{_join(path, key)} has a key {echo(name)} that is not a string"
                )
        return value

    def definition(self, data: object) -> WorkflowDefinition | None:
        root = self._object(data, "", _DEFINITION_KEYS)
        if root is None:
            return None
        name = self._string(root, "name", "", required=True)
        initial_state = self._string(root, "initialState", "", required=True)
        version: Any = root.get("version")
        if version is None:
            version = 1
        elif isinstance(version, bool) or not isinstance(version, int):
            self.problems.append(f"version must be an integer, got {echo(version)}")
        policy: Any = root.get("versionPolicy")
        if policy is None:
            policy = "pinned"
        elif policy not in _VERSION_POLICIES:
            self.problems.append(f'versionPolicy must be "pinned" or "latest", got {echo(policy)}')
        if root.get("states") is None:
            self.problems.append("states is required")
        states: dict[str, State] = {}
        for state_name, raw in self._keyed(root, "states", "").items():
            state = self.state(raw, f"states.{echo(state_name, raw=True)}")
            if isinstance(state_name, str):
                states[state_name] = state
        if self.problems:
            return None
        return WorkflowDefinition(
            name=name,
            initial_state=initial_state,
            states=states,
            version=version,
            version_policy=policy,
        )

    def state(self, raw: object, path: str) -> State:
        data = self._object(raw, path, _STATE_KEYS) or {}
        events: dict[str, Event] = {}
        for event_name, event_raw in self._keyed(data, "events", path).items():
            event = self.event(event_raw, f"{path}.events.{echo(event_name, raw=True)}")
            if isinstance(event_name, str):
                events[event_name] = event
        on_enter = None
        on_enter_data = self._optional_object(data, "onEnter", path, _ON_ENTER_KEYS)
        if on_enter_data is not None:
            on_enter = self.on_enter(on_enter_data, f"{path}.onEnter")
        return State(
            events=events,
            on_enter=on_enter,
            context=self._mapping(data, "context", path),
            metadata=self._mapping(data, "metadata", path),
        )

    def event(self, raw: object, path: str) -> Event:
        data = self._object(raw, path, _EVENT_KEYS) or {}
        guard = None
        guard_path = f"{path}.guard"
        guard_data = self._optional_object(data, "guard", path, _REF_KEYS)
        if guard_data is not None:
            guard = GuardRef(
                name=self._string(guard_data, "name", guard_path, required=True),
                metadata=self._mapping(guard_data, "metadata", guard_path),
            )
        timeout = None
        timeout_path = f"{path}.timeout"
        timeout_data = self._optional_object(data, "timeout", path, _TIMEOUT_KEYS)
        if timeout_data is not None:
            timeout = Timeout(
                minutes=self._duration(timeout_data, "afterMinutes", "minutes", timeout_path),
                hours=self._duration(timeout_data, "afterHours", "hours", timeout_path),
                days=self._duration(timeout_data, "afterDays", "days", timeout_path),
            )
        return Event(
            target_state=self._string(data, "targetState", path, required=False),
            error_state=self._string(data, "errorState", path, required=False),
            commands=self.commands(data, path),
            guard=guard,
            timeout=timeout,
            metadata=self._mapping(data, "metadata", path),
        )

    def on_enter(self, data: Mapping[str, Any], path: str) -> OnEnter:
        return OnEnter(
            target_state=self._string(data, "targetState", path, required=False),
            error_state=self._string(data, "errorState", path, required=False),
            commands=self.commands(data, path),
            metadata=self._mapping(data, "metadata", path),
        )

    def commands(self, data: Mapping[str, Any], path: str) -> tuple[CommandRef, ...]:
        value = data.get("commands")
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            self.problems.append(f"{path}.commands must be an array")
            return ()
        refs: list[CommandRef] = []
        for index, raw in enumerate(value):
            item_path = f"{path}.commands[{index}]"
            item = self._object(raw, item_path, _REF_KEYS)
            if item is None:
                continue
            refs.append(
                CommandRef(
                    name=self._string(item, "name", item_path, required=True),
                    metadata=self._mapping(item, "metadata", item_path),
                )
            )
        return tuple(refs)


# --------------------------------------------------------------------------------------------
# Validation


# An error lists at most this many problems (and a message names at most _LISTED of a list of
# names): a generated definition with thousands of bad states still gives a readable message.
_MAX_PROBLEMS = 100
_LISTED = 5


def _summary(what: str, problems: list[str]) -> str:
    count = len(problems)
    lines = "\n".join(f"  - {problem}" for problem in problems[:_MAX_PROBLEMS])
    if count > _MAX_PROBLEMS:
        lines += f"\n  - ... and {count - _MAX_PROBLEMS} more"
    return f"{what} ({count} problem{'s' if count != 1 else ''}):\n{lines}"


def _name_problem(value: object) -> str | None:
    """Why ``value`` cannot be a name (of a workflow, state, event, command or guard)."""
    if not isinstance(value, str) or not value:
        return f"must be a non-empty string, got {echo(value)}"
    if "\x00" in value:
        return f"must not contain NUL characters, got {echo(value)}"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"must be valid Unicode (it has an unpaired surrogate), got {echo(value)}"
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
        if (
            isinstance(version, bool)
            or not isinstance(version, int)
            or not 1 <= version <= _MAX_SAFE_INTEGER
        ):
            self.problems.append(
                f"version must be a positive integer of at most {_MAX_SAFE_INTEGER}, "
                f"got {echo(version)}"
            )
        if d.version_policy not in _VERSION_POLICIES:
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
                    f"state {_quoted(state_name)} must be a State, got {type(state).__name__}"
                )
            else:
                self.states[state_name] = state
        initial: object = d.initial_state
        if (problem := _name_problem(initial)) is not None:
            self.problems.append(f"initial_state {problem}")
        elif initial not in self.state_names:
            self.problems.append(f"initial state {_quoted(initial)} is not defined in states")
        for state_name, state in self.states.items():
            self.state(state_name, state)
        self.cycles()

    def state(self, state_name: str, state: State) -> None:
        where = f"state {_quoted(state_name)}"
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
                    f'{where}: event name {_quoted(event_name)} starts with "$", which is reserved'
                )
            if not isinstance(event, Event):
                self.problems.append(
                    f"{where}: event {_quoted(event_name)} must be an Event, "
                    f"got {type(event).__name__}"
                )
                continue
            self.event(f"{where} event {_quoted(event_name)}", event)
            if event.timeout is not None:
                timeout_events.append(event_name)
        if len(timeout_events) > 1:
            names = ", ".join(_quoted(name) for name in timeout_events[:_LISTED])
            if len(timeout_events) > _LISTED:
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
            self.problems.append(f"{where}: {what} {_quoted(value)} is not defined in states")

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
            self.problems.append(f"{where}: {kind} {_quoted(name)} is not registered")
        self.json(metadata, f"{where} {kind} {_quoted(name)} metadata")

    def timeout(self, where: str, timeout: object) -> None:
        if not isinstance(timeout, Timeout):
            self.problems.append(
                f"{where}: timeout must be a Timeout or None, got {type(timeout).__name__}"
            )
            return
        total, problems = _timeout_total(timeout, "timeout")
        if total is None:
            self.problems.extend(f"{where}: {problem}" for problem in problems)
            return
        if not (timeout.minutes > 0 or timeout.hours > 0 or timeout.days > 0):
            self.problems.append(
                f"{where}: timeout must have at least one positive part (minutes, hours, days)"
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
            f"state {_quoted(name)} is not reachable from the initial state {_quoted(initial)}"
            for name in self.states
            if name not in seen
        ]


def _chain(states: list[str]) -> str:
    """``a -> b -> a``; a long cycle shows its first and last states and how many there are."""
    if len(states) <= 2 * _LISTED:
        return " -> ".join(echo(name, raw=True) for name in states)
    head = [echo(name, raw=True) for name in states[:_LISTED]]
    tail = [echo(name, raw=True) for name in states[-_LISTED:]]
    return " -> ".join([*head, f"... ({len(states) - 2 * _LISTED} more)", *tail])


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
            _summary("invalid definition", validator.problems),
        )
    return validator.unreachable()


# --------------------------------------------------------------------------------------------
# Canonical JSON, byte for byte as JavaScript's JSON.stringify writes it

_JS_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
# What JSON.stringify escapes: quote, backslash, C0 controls and (since ES2019) lone surrogates.
_JS_NEEDS_ESCAPE = re.compile('[\x00-\x1f"\\\\\ud800-\udfff]')
_SURROGATE = re.compile("[\ud800-\udfff]")
# A JavaScript "array index": these keys come first in an object's key order, numerically.
_ARRAY_INDEX = re.compile("0|[1-9][0-9]{0,9}")
_MAX_ARRAY_INDEX = 2**32 - 2


def _js_text(text: str) -> str:
    """``text`` as JavaScript sees it: a surrogate pair given as two code points is one char."""
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-be", "surrogatepass").decode("utf-16-be", "surrogatepass")


def _js_escape(match: re.Match[str]) -> str:
    char = match.group()
    return _JS_ESCAPES.get(char) or f"\\u{ord(char):04x}"


def _js_string(text: str) -> str:
    return '"' + _JS_NEEDS_ESCAPE.sub(_js_escape, _js_text(text)) + '"'


def _js_number(value: float) -> str:
    """``Number.prototype.toString()`` of a double (ECMA-262 Number::toString, radix 10)."""
    if not math.isfinite(value):
        return "null"  # JSON.stringify(NaN) and of ±Infinity
    if value == 0:
        return "0"  # -0 included
    sign = "-" if value < 0 else ""
    # repr() is the shortest string that round-trips, as JavaScript requires.
    decimal = Decimal(float.__repr__(abs(value))).as_tuple()
    digits = "".join(map(str, decimal.digits))
    assert isinstance(decimal.exponent, int)
    n = len(digits) + decimal.exponent  # value = 0.<digits> x 10^n
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        exponent = n - 1
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent)}"
    return sign + text


def _js_int(value: int) -> str:
    if -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
        return str(value)
    # JavaScript holds every number as a double.
    try:
        return _js_number(float(value))
    except OverflowError:
        return "null"


def _is_array_index(key: str) -> bool:
    return _ARRAY_INDEX.fullmatch(key) is not None and int(key) <= _MAX_ARRAY_INDEX


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _js_key_order(keys: list[str]) -> list[str]:
    """Keys sorted as ``Object.keys(o).sort()`` inserted into a fresh object, which then lists
    its array-index keys first in numeric order and the others in insertion order."""
    indices = sorted((key for key in keys if _is_array_index(key)), key=int)
    others = sorted((key for key in keys if not _is_array_index(key)), key=_utf16_key)
    return indices + others


def _canonical_json(value: object) -> str:
    parts: list[str] = []
    _write_json(value, parts.append, "")
    return "".join(parts)


def _write_json(value: object, write: Callable[[str], object], path: str) -> None:
    if value is None:
        write("null")
    elif value is True:
        write("true")
    elif value is False:
        write("false")
    elif isinstance(value, str):
        write(_js_string(value))
    elif isinstance(value, int):
        write(_js_int(int(value)))
    elif isinstance(value, float):
        write(_js_number(float(value)))
    elif isinstance(value, Mapping):
        items: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgumentError(
                    f"{echo(path or 'value', raw=True)}: key {echo(key)} is not a string"
                )
            items[_js_text(key)] = item
        write("{")
        for index, key in enumerate(_js_key_order(list(items))):
            if index:
                write(",")
            write(_js_string(key))
            write(":")
            _write_json(items[key], write, f"{path}.{key}" if path else key)
        write("}")
    elif isinstance(value, list | tuple):
        write("[")
        for index, item in enumerate(value):
            if index:
                write(",")
            _write_json(item, write, f"{path}[{index}]")
        write("]")
    else:
        raise InvalidArgumentError(
            f"{echo(path or 'value', raw=True)}: {type(value).__name__} value is not JSON and "
            "cannot be hashed"
        )
