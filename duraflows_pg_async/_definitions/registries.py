"""The registries the runtime looks up: definitions (by name and version), commands, guards."""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from duraflows_pg_async._core.echo import echo
from duraflows_pg_async._core.model import CommandResult
from duraflows_pg_async.errors import InvalidArgumentError, WorkflowDefinitionError, WorkflowError

from .model import WorkflowDefinition
from .validation import validate_definition

if TYPE_CHECKING:
    # For the signatures only: the runtime, which builds the context, depends on this package.
    from duraflows_pg_async._runtime.execution import ExecutionContext

__all__ = [
    "CommandFunction",
    "CommandRegistry",
    "DefinitionRegistry",
    "GuardFunction",
    "GuardRegistry",
    "RegisteredCommand",
    "RegisteredGuard",
]

logger = logging.getLogger("duraflows_pg_async")

CommandFunction = Callable[
    [Any, "ExecutionContext"], CommandResult | Awaitable[CommandResult | None] | None
]
"""``fn(subject, ctx)``, sync or async; returns a
[`CommandResult`][duraflows_pg_async.CommandResult] (``None`` = success)."""

GuardFunction = Callable[[Any, "ExecutionContext"], bool | Awaitable[bool]]
"""``fn(subject, ctx)``, sync or async; returns True to let the event through."""

_CommandT = TypeVar("_CommandT", bound=CommandFunction)
_GuardT = TypeVar("_GuardT", bound=GuardFunction)


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"{what} name must be a non-empty string, got {echo(name)}")
    return name


class DefinitionRegistry:
    """Every workflow definition the runtime knows, each name with one or more versions.

    ``register`` validates the definition (one
    [`WorkflowDefinitionError`][duraflows_pg_async.errors.WorkflowDefinitionError] listing every
    problem), logs its warnings (unreachable states) on the ``duraflows_pg_async`` logger and keeps
    a deep copy, so later changes to the caller's dicts do not leak in. Keep older versions
    registered while instances pinned to them are still running. New instances always use the latest
    version of their workflow.
    """

    def __init__(self) -> None:
        self._versions: dict[str, dict[int, WorkflowDefinition]] = {}

    def register(
        self,
        definition: WorkflowDefinition,
        *,
        command_names: Collection[str] | None = None,
        guard_names: Collection[str] | None = None,
    ) -> None:
        """Validate and add ``definition``; the same name and version twice is an error.

        With ``command_names`` / ``guard_names`` (for example ``commands.names()``), references
        to commands or guards that are not among them are reported as problems too.
        """
        if not isinstance(definition, WorkflowDefinition):
            raise InvalidArgumentError(
                f"definition must be a WorkflowDefinition, got {type(definition).__name__}"
            )
        warnings = validate_definition(
            definition, command_names=command_names, guard_names=guard_names
        )
        versions = self._versions.get(definition.name, {})
        if definition.version in versions:
            raise WorkflowDefinitionError(
                definition.name,
                f"version {definition.version} is already registered; bump the version to "
                "register changed content",
            )
        for warning in warnings:
            logger.warning(
                'Workflow "%s" version %d: %s', definition.name, definition.version, warning
            )
        versions[definition.version] = copy.deepcopy(definition)
        self._versions[definition.name] = dict(sorted(versions.items()))

    def get(self, name: str, version: int | None = None) -> WorkflowDefinition:
        """The given version of ``name``, or its latest when ``version`` is None."""
        versions = self._versions.get(self._check_workflow_name(name))
        if not versions:
            raise WorkflowDefinitionError(name, "Workflow not found in registry")
        if version is None:
            return versions[max(versions)]
        definition = versions.get(self._check_version(version))
        if definition is None:
            known = ", ".join(str(v) for v in versions)
            raise WorkflowDefinitionError(
                name, f"version {echo(version)} is not registered (registered versions: {known})"
            )
        return definition

    def find(self, name: str, version: int | None = None) -> WorkflowDefinition | None:
        """Like `get()`, but None when the name or version is not registered."""
        versions = self._versions.get(self._check_workflow_name(name))
        if not versions:
            return None
        if version is None:
            return versions[max(versions)]
        return versions.get(self._check_version(version))

    def versions(self, name: str) -> list[int]:
        """Registered versions of ``name``, ascending (empty for an unknown name)."""
        return list(self._versions.get(name, ()))

    def names(self) -> list[str]:
        """Registered workflow names, in the order they were first registered."""
        return list(self._versions)

    def latest(self) -> list[WorkflowDefinition]:
        """The latest version of every workflow, in name registration order."""
        return [versions[max(versions)] for versions in self._versions.values()]

    def __iter__(self) -> Iterator[WorkflowDefinition]:
        """Every registered definition: names in registration order, versions ascending."""
        for versions in self._versions.values():
            yield from versions.values()

    def __contains__(self, name: object) -> bool:
        return name in self._versions

    def __len__(self) -> int:
        """How many definitions (every version counts)."""
        return sum(len(versions) for versions in self._versions.values())

    @staticmethod
    def _check_workflow_name(name: object) -> str:
        # A dict lookup with an unhashable name would raise a raw TypeError.
        if not isinstance(name, str):
            raise InvalidArgumentError(f"workflow name must be a string, got {echo(name)}")
        return name

    @staticmethod
    def _check_version(version: object) -> int:
        if isinstance(version, bool) or not isinstance(version, int):
            raise InvalidArgumentError(f"version must be an integer, got {echo(version)}")
        return version


@dataclass(frozen=True, slots=True)
class RegisteredCommand:
    """A command as registered: its name, the callable and whether it is best-effort."""

    name: str
    fn: CommandFunction
    best_effort: bool = False


@dataclass(frozen=True, slots=True)
class RegisteredGuard:
    """A guard as registered: its name and the callable."""

    name: str
    fn: GuardFunction


class CommandRegistry:
    """Commands by name. A command is a sync or async callable ``fn(subject, ctx)``.

    It returns a [`CommandResult`][duraflows_pg_async.CommandResult] (``ok=False`` routes the event
    to its error state) or None for success. A ``best_effort=True`` command never fails the
    transition: its ``ok=False`` is recorded and the next command runs, and an exception it raises
    becomes ``CommandResult(ok=False, code="BEST_EFFORT_THROWN", ...)``. An exception from a
    mandatory command rolls the whole call back.
    """

    def __init__(self) -> None:
        self._commands: dict[str, RegisteredCommand] = {}

    def register(self, name: str, fn: CommandFunction, *, best_effort: bool = False) -> None:
        """Register ``fn`` under ``name``; a name can be registered once."""
        _check_name(name, "command")
        if not callable(fn):
            raise InvalidArgumentError(
                f'command "{echo(name, raw=True)}" must be callable, got {type(fn).__name__}'
            )
        if not isinstance(best_effort, bool):
            raise InvalidArgumentError(f"best_effort must be a bool, got {echo(best_effort)}")
        if name in self._commands:
            raise WorkflowError(f'Command "{echo(name, raw=True)}" is already registered')
        self._commands[name] = RegisteredCommand(name=name, fn=fn, best_effort=best_effort)

    def command(self, name: str, *, best_effort: bool = False) -> Callable[[_CommandT], _CommandT]:
        """Decorator form of `register()`; returns the function unchanged."""

        def decorate(fn: _CommandT) -> _CommandT:
            self.register(name, fn, best_effort=best_effort)
            return fn

        return decorate

    def get(self, name: str) -> RegisteredCommand:
        """The command registered as ``name``;
        [`WorkflowError`][duraflows_pg_async.errors.WorkflowError]
        when there is none."""
        command = self._commands.get(name)
        if command is None:
            raise WorkflowError(f'Command "{echo(name, raw=True)}" is not registered')
        return command

    def names(self) -> list[str]:
        """Registered command names, in registration order."""
        return list(self._commands)

    def __contains__(self, name: object) -> bool:
        return name in self._commands

    def __len__(self) -> int:
        return len(self._commands)


class GuardRegistry:
    """Guards by name. A guard is a sync or async callable ``fn(subject, ctx)`` returning a bool.

    False rejects the event: no command runs, the state does not change and a
    ``guard-rejected`` history row is written. An exception it raises rolls the call back.
    """

    def __init__(self) -> None:
        self._guards: dict[str, RegisteredGuard] = {}

    def register(self, name: str, fn: GuardFunction) -> None:
        """Register ``fn`` under ``name``; a name can be registered once."""
        _check_name(name, "guard")
        if not callable(fn):
            raise InvalidArgumentError(
                f'guard "{echo(name, raw=True)}" must be callable, got {type(fn).__name__}'
            )
        if name in self._guards:
            raise WorkflowError(f'Guard "{echo(name, raw=True)}" is already registered')
        self._guards[name] = RegisteredGuard(name=name, fn=fn)

    def guard(self, name: str) -> Callable[[_GuardT], _GuardT]:
        """Decorator form of `register()`; returns the function unchanged."""

        def decorate(fn: _GuardT) -> _GuardT:
            self.register(name, fn)
            return fn

        return decorate

    def get(self, name: str) -> RegisteredGuard:
        """The guard registered as ``name``;
        [`WorkflowError`][duraflows_pg_async.errors.WorkflowError]
        when there is none."""
        guard = self._guards.get(name)
        if guard is None:
            raise WorkflowError(f'Guard "{echo(name, raw=True)}" is not registered')
        return guard

    def names(self) -> list[str]:
        """Registered guard names, in registration order."""
        return list(self._guards)

    def __contains__(self, name: object) -> bool:
        return name in self._guards

    def __len__(self) -> int:
        return len(self._guards)
