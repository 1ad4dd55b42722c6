"""Reading a definition from the upstream camelCase JSON shape, every problem with its path."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from duraflows_pg_async._core.echo import echo
from duraflows_pg_async._core.validate import check_json, require_duration
from duraflows_pg_async.errors import InvalidArgumentError, WorkflowDefinitionError

from .model import (
    DEFAULT_VERSION,
    VERSION_POLICIES,
    CommandRef,
    Event,
    GuardRef,
    OnEnter,
    State,
    Timeout,
    WorkflowDefinition,
)
from .problems import summary

_DEFINITION_KEYS = ("name", "version", "versionPolicy", "initialState", "states")
_STATE_KEYS = ("events", "onEnter", "context", "metadata")
_EVENT_KEYS = ("targetState", "errorState", "commands", "guard", "timeout", "metadata")
_ON_ENTER_KEYS = ("targetState", "errorState", "commands", "metadata")
_REF_KEYS = ("name", "metadata")
_COMMAND_KEYS = ("name", "metadata", "transactional")
_TIMEOUT_KEYS = ("afterSeconds", "afterMinutes", "afterHours", "afterDays")


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
            version = DEFAULT_VERSION
        elif isinstance(version, bool) or not isinstance(version, int):
            self.problems.append(f"version must be an integer, got {echo(version)}")
        policy: Any = root.get("versionPolicy")
        if policy is None:
            policy = "pinned"
        elif policy not in VERSION_POLICIES:
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
                seconds=self._duration(timeout_data, "afterSeconds", "seconds", timeout_path),
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
            item = self._object(raw, item_path, _COMMAND_KEYS)
            if item is None:
                continue
            transactional = item.get("transactional")
            if transactional is not None and not isinstance(transactional, bool):
                self.problems.append(
                    f"{item_path}.transactional must be a boolean, got {echo(transactional)}"
                )
            refs.append(
                CommandRef(
                    name=self._string(item, "name", item_path, required=True),
                    metadata=self._mapping(item, "metadata", item_path),
                    transactional=transactional is True,
                )
            )
        return tuple(refs)


def read_definition(data: Mapping[str, Any]) -> WorkflowDefinition:
    """The definition ``data`` describes (see ``WorkflowDefinition.from_dict``).

    Raises one WorkflowDefinitionError listing every shape problem, each with its path.
    """
    reader = _Reader()
    definition = reader.definition(data)
    if reader.problems or definition is None:
        raw: object = data
        name = raw.get("name") if isinstance(raw, Mapping) else None
        raise WorkflowDefinitionError(
            name if isinstance(name, str) else "<unnamed>",
            summary("cannot read the definition", reader.problems),
        )
    return definition
