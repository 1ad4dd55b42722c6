"""A definition as a Mermaid ``stateDiagram-v2``, for ``WorkflowDefinition.to_mermaid()``.

What is drawn follows upstream's diagram: the initial state, every event (its timeout, and its
commands on request), onEnter hops, error routes, and an end marker after each state that
neither accepts an event nor moves on by itself. Upstream also keeps quiet about guards and
about events that stay in place; here a guard is shown as ``[name]`` and such an event as a loop.

User text never reaches Mermaid as syntax: every state is declared under a generated id
(``s0``, ``s1``, ... in definition order) with its name as a quoted label, and labels carry
every character Mermaid could read as syntax as an entity code (``#35;``), which Mermaid turns
back into the character when it draws the diagram.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal

from duraflows_pg_async.errors import InvalidArgumentError

if TYPE_CHECKING:
    from .model import CommandRef, Event, State, Timeout, WorkflowDefinition

__all__ = ["MermaidDirection", "to_mermaid"]

MermaidDirection = Literal["TB", "BT", "LR", "RL"]
DIRECTIONS: tuple[str, ...] = ("TB", "BT", "LR", "RL")

_INDENT = "    "
ON_ENTER = "⚡ onEnter"
TIMEOUT = "after"
FAILURE = "(failure)"

# ASCII that is only ever text to Mermaid. Everything else in ASCII can start a comment (%%, #),
# a directive (%%{), an entity (#...;), HTML (<, &), end a label (", :, ;) or build a
# pseudo-state marker ([[choice]], <<fork>>), so it is written as an entity code.
_SAFE_ASCII = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.,()/!?@+=*'~^$|"
)
# Outside ASCII: controls, format characters (bidi marks), separators, private-use, unassigned
# and surrogate code points could end a line or hide in the text.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})
# Mermaid's state-diagram lexer takes any line holding "direction", blanks and TB/BT/LR/RL as
# a direction statement, wherever it stands: the blank after "direction" is written as an entity.
_DIRECTION_WORD = re.compile(r"(?<=direction) ", re.IGNORECASE)


def _char(char: str) -> str:
    if char in _SAFE_ASCII:
        return char
    if char < "\x80" or unicodedata.category(char) in _UNSAFE_CATEGORIES:
        return f"#{ord(char)};"
    return char


def label(text: object) -> str:
    """``text`` as Mermaid label text: never syntax, never empty, always one line."""
    escaped = "".join(_char(char) for char in str(text))
    return _DIRECTION_WORD.sub("#32;", escaped) or "#32;"


def _amount(value: float) -> str:
    """A timeout part as upstream writes it: ``1.0`` as ``1``, ``1.5`` as ``1.5``."""
    if isinstance(value, int) or not value.is_integer():
        return str(value)
    return str(int(value))


def timeout_text(timeout: Timeout) -> str:
    """Upstream's timeout text: ``1d 12h 30m``, zero parts left out (seconds, ours, as ``s``)."""
    parts = [
        (timeout.days, "d"),
        (timeout.hours, "h"),
        (timeout.minutes, "m"),
        (timeout.seconds, "s"),
    ]
    return " ".join(f"{_amount(value)}{unit}" for value, unit in parts if value)


def _commands(commands: Sequence[CommandRef], show: bool) -> str:
    if not show or not commands:
        return ""
    return " / " + ", ".join(label(ref.name) for ref in commands)


def _event_label(name: str, event: Event, show_commands: bool) -> str:
    text = label(name)
    if event.timeout is not None:
        duration = timeout_text(event.timeout)
        if duration:
            text += f" {TIMEOUT} {label(duration)}"
    if event.guard is not None:
        text += f" [{label(event.guard.name)}]"
    return text + _commands(event.commands, show_commands)


def _ids(definition: WorkflowDefinition) -> dict[str, str]:
    """Every state's id: the defined states in order, then any state only referred to."""
    referred: list[str | None] = [definition.initial_state]
    for state in definition.states.values():
        if state.on_enter is not None:
            referred += [state.on_enter.target_state, state.on_enter.error_state]
        for event in state.events.values():
            referred += [event.target_state, event.error_state]
    names = dict.fromkeys([*definition.states, *(name for name in referred if name is not None)])
    return {name: f"s{index}" for index, name in enumerate(names)}


def _is_end(state: State) -> bool:
    """Upstream's end marker rule: no event, and no onEnter that moves on."""
    return not state.events and (state.on_enter is None or state.on_enter.target_state is None)


def _state_lines(
    ids: dict[str, str], name: str, state: State, show_commands: bool
) -> Iterator[str]:
    here = ids[name]
    on_enter = state.on_enter
    if on_enter is not None:
        # The commands are shown once, on the first hop drawn.
        commands = _commands(on_enter.commands, show_commands)
        hops = [(on_enter.target_state, ON_ENTER), (on_enter.error_state, f"{ON_ENTER} {FAILURE}")]
        for target, text in hops:
            if target is not None:
                yield f"{here} --> {ids[target]} : {text}{commands}"
                commands = ""
    for event_name, event in state.events.items():
        # An event without a target state succeeds in place: a loop.
        target = here if event.target_state is None else ids[event.target_state]
        yield f"{here} --> {target} : {_event_label(event_name, event, show_commands)}"
        if event.error_state is not None:
            yield f"{here} --> {ids[event.error_state]} : {label(event_name)} {FAILURE}"


def to_mermaid(
    definition: WorkflowDefinition,
    *,
    show_commands: bool = False,
    direction: MermaidDirection = "TB",
) -> str:
    """The diagram's text, one statement a line, ending with a newline."""
    if direction not in DIRECTIONS:
        raise InvalidArgumentError(
            f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}"
        )
    ids = _ids(definition)
    lines = ["stateDiagram-v2", f"direction {direction}"]
    lines += [f'state "{label(name)}" as {state_id}' for name, state_id in ids.items()]
    lines.append(f"[*] --> {ids[definition.initial_state]}")
    for name, state in definition.states.items():
        lines += _state_lines(ids, name, state, show_commands)
    lines += [f"{ids[name]} --> [*]" for name, state in definition.states.items() if _is_end(state)]
    return "\n".join([lines[0], *(_INDENT + line for line in lines[1:])]) + "\n"
