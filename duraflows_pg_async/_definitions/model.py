"""Workflow definitions: the frozen dataclasses and their upstream camelCase JSON shape.

A definition is plain data.
[`WorkflowDefinition.to_dict()`][duraflows_pg_async.WorkflowDefinition.to_dict] writes the upstream
(TypeScript) JSON shape; reading it (``reader``), checking the rules the runtime relies on
(``validation``) and the content hash (``canonical_json``) live in modules of their own, which the
methods here call.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from duraflows_pg_async._core.validate import MAX_DURATION, require_duration
from duraflows_pg_async.errors import InvalidArgumentError, WorkflowDefinitionError

from .canonical_json import canonical_hash
from .diagram import to_mermaid
from .problems import quoted

__all__ = [
    "CommandRef",
    "Event",
    "GuardRef",
    "OnEnter",
    "State",
    "Timeout",
    "VersionPolicy",
    "WorkflowDefinition",
]

VersionPolicy = Literal["pinned", "latest"]
"""``"pinned"``: an instance stays on the version it was created with; ``"latest"``: it moves on."""

VERSION_POLICIES: tuple[str, ...] = ("pinned", "latest")


class _DefaultVersion(int):
    """``version``'s default: 1, marked as not written by the definition's author."""

    __slots__ = ()


# A definition that does not set its version is version 1 but writes no "version" key, as
# upstream's runtime stores such a definition: both runtimes then store the same snapshot.
DEFAULT_VERSION: int = _DefaultVersion(1)


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


def timeout_total(timeout: Timeout, label: str) -> tuple[timedelta | None, list[str]]:
    """The total of a timeout's parts, or None and why not (one problem per bad part)."""
    problems: list[str] = []
    for part in ("seconds", "minutes", "hours", "days"):
        try:
            require_duration(
                getattr(timeout, part), f"{label} {part}", unit=part, timedelta_ok=False
            )
        except InvalidArgumentError as exc:
            problems.append(exc.message)
    if problems:
        return None, problems
    # No overflow: each part is at most MAX_DURATION.
    total = timedelta(
        seconds=timeout.seconds, minutes=timeout.minutes, hours=timeout.hours, days=timeout.days
    )
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

    ``seconds`` is this package's own part (written as ``afterSeconds``): upstream's TypeScript
    runtime knows minutes, hours and days only, so a workflow both runtimes run uses those
    (``minutes=0.5`` is 30 seconds there too).
    """

    minutes: float = 0
    hours: float = 0
    days: float = 0
    seconds: float = 0

    def to_timedelta(self) -> timedelta:
        """The total duration (the sum of the parts).

        [`InvalidArgumentError`][duraflows_pg_async.errors.InvalidArgumentError] names the part
        for a timeout that registration would refuse (a negative, non-finite or too long part).
        """
        total, problems = timeout_total(self, "Timeout")
        if total is None:
            raise InvalidArgumentError(problems[0])
        return total


@dataclass(frozen=True, slots=True)
class CommandRef:
    """A command to run, by registered name; ``metadata`` reaches it as ``ctx.command_metadata``.

    ``transactional=True`` matters for queued executions only (``enqueue_event``): the command
    then runs in the transaction of its checkpoint, so its database writes commit with it. Keep
    such commands short: the instance's row lock is held while they run.
    """

    name: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    transactional: bool = False

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
    version: int = DEFAULT_VERSION
    version_policy: VersionPolicy = "pinned"
    # An init field, so that dataclasses.replace() keeps it; any version but 1 was written.
    _version_given: bool = field(default=True, repr=False, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "states", _as_dict(self.states))
        if type(self.version) is _DefaultVersion:
            object.__setattr__(self, "version", 1)
            object.__setattr__(self, "_version_given", False)
        elif self.version != 1:
            object.__setattr__(self, "_version_given", True)

    def timeout_event(self, state_name: str) -> tuple[str, Event] | None:
        """The first event of ``state_name``, in definition order, that has a timeout.

        None when the state has no such event;
        [`WorkflowDefinitionError`][duraflows_pg_async.errors.WorkflowDefinitionError] when the
        state is not part of this definition.
        """
        state = self.states.get(state_name)
        if state is None:
            raise WorkflowDefinitionError(
                self.name, f"state {quoted(state_name)} is not defined in version {self.version}"
            )
        for event_name, event in state.events.items():
            if event.timeout is not None:
                return event_name, event
        return None

    # ----------------------------------------------------------------------------------------
    # JSON shape

    def to_dict(self) -> dict[str, Any]:
        """The upstream camelCase JSON shape (a fresh, deep-copied dict).

        ``version`` is written when the definition sets it (an unset version is 1, as upstream
        reads it, and is left out, as upstream stores it); ``versionPolicy`` only when it is
        ``"latest"`` (upstream's default is ``"pinned"``). Unset optional fields, empty
        ``commands``/``events``/``context``/``metadata`` and zero timeout parts are left out, so
        ``WorkflowDefinition.from_dict(d.to_dict()) == d``.
        """
        out: dict[str, Any] = {"name": self.name}
        if self._version_given:
            out["version"] = self.version
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
        # Imported here: the reader builds the classes of this module.
        from .reader import read_definition

        return read_definition(data)

    # ----------------------------------------------------------------------------------------
    # Diagram

    def to_mermaid(
        self, *, show_commands: bool = False, direction: Literal["TB", "BT", "LR", "RL"] = "TB"
    ) -> str:
        """A Mermaid ``stateDiagram-v2`` of the definition, ending with a newline.

        An arrow per event (name, ``after 30m`` timeout, ``[guard]``, and ``/ commands`` with
        ``show_commands``; a loop when it has no target state), ``name (failure)`` to its error
        state, ``⚡ onEnter`` hops, and ``[*]`` into the initial state and out of each state with
        no event and no onEnter target state. ``direction``: ``"TB"``, ``"BT"``, ``"LR"`` or
        ``"RL"``. Any name is safe: states get generated ids (``s0``, ``s1``, ...) and labels
        write Mermaid syntax characters as entity codes (``:`` as ``#58;``).
        """
        return to_mermaid(self, show_commands=show_commands, direction=direction)

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
        return canonical_hash(data)


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
        if ref.transactional:
            item["transactional"] = True
        out.append(item)
    return out


def _timeout_to_dict(timeout: Timeout) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # Written only when set, so that every definition without it keeps upstream's snapshot
    # and content hash.
    if timeout.seconds:
        out["afterSeconds"] = timeout.seconds
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
