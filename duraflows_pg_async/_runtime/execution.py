"""What commands, guards and observers see, what the runtime returns, and the retry policy."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import CoroutineType, MappingProxyType
from typing import TYPE_CHECKING, Any, TypeGuard
from uuid import UUID

from duraflows_pg_async._core.echo import echo
from duraflows_pg_async._core.model import (
    CommandResult,
    ExecutionOutcome,
    ExecutionResult,
    TimeoutRetry,
)
from duraflows_pg_async._core.validate import require_duration
from duraflows_pg_async.errors import InvalidArgumentError

__all__ = [
    "AvailableEvent",
    "DurableContext",
    "BusinessFailure",
    "ExecutionContext",
    "ExecutionOutcome",
    "ExecutionResult",
    "ParkedTimeout",
    "ProcessExpiredResult",
    "StateEnterEvent",
    "TimeoutFailure",
    "TimeoutRetryPolicy",
]


_EMPTY: Mapping[str, Any] = MappingProxyType({})


def freeze(value: Any) -> Any:
    """A deep, read-only copy: dicts become read-only mappings, lists become tuples."""
    # JSON's own types first, by exact type: the ABC checks below cost more than the copy.
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict:
        return MappingProxyType({k: freeze(v) for k, v in value.items()}) if value else _EMPTY
    if kind is list or kind is tuple:
        return tuple(freeze(v) for v in value)
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, set | frozenset):
        return frozenset(freeze(v) for v in value)
    return copy.deepcopy(value) if not isinstance(value, str | int | float | bool | None) else value


def json_clone(value: Any) -> Any:
    """A deep copy of JSON-shaped data (dicts, lists, scalars); several times faster than
    copy.deepcopy on the hot path. Other containers are copied with deepcopy."""
    kind = type(value)
    if kind is dict:
        return {k: json_clone(v) for k, v in value.items()}
    if kind is list:
        return [json_clone(v) for v in value]
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    return copy.deepcopy(value)


# What sync commands, guards and observers return: never awaitable, and told by their type
# alone, before inspect.isawaitable's costlier check of the Awaitable ABC.
_NOT_AWAITABLE: frozenset[type] = frozenset({type(None), bool, CommandResult})


def is_awaitable(value: object) -> TypeGuard[Awaitable[Any]]:
    """``inspect.isawaitable``, with the common answers first: a coroutine (async def) is,
    None, a bool or a CommandResult is not."""
    kind = type(value)
    if kind is CoroutineType:
        return True
    if kind in _NOT_AWAITABLE:
        return False
    return inspect.isawaitable(value)


async def maybe_await(value: Any) -> Any:
    """``value``, awaited if awaitable: commands, guards and observers may be sync or async."""
    return await value if is_awaitable(value) else value


class DurableContext:
    """``ctx.durable`` of a command run by a queued execution.

    ``idempotency_key`` (``"<execution_uuid>:<command_id>"``) stays the same across retries and
    workers: pass it to the services the command calls, since a command may run again after a
    crash. ``attempt`` counts from 1. A long command awaits ``heartbeat()`` before its lease
    ends; it raises ExecutionLeaseLostError when another worker may have taken over.
    """

    __slots__ = ("_heartbeat", "attempt", "command_id", "execution_uuid", "idempotency_key")

    def __init__(
        self,
        execution_uuid: UUID,
        command_id: str,
        attempt: int,
        heartbeat: Callable[[], Awaitable[None]],
    ) -> None:
        self.execution_uuid = execution_uuid
        self.command_id = command_id
        self.idempotency_key = f"{execution_uuid}:{command_id}"
        self.attempt = attempt
        self._heartbeat = heartbeat

    async def heartbeat(self) -> None:
        """Extend this execution's lease by the policy's ``lease_duration``."""
        await self._heartbeat()

    def __repr__(self) -> str:
        return (
            f"DurableContext(execution_uuid={self.execution_uuid}, "
            f"command_id={self.command_id!r}, attempt={self.attempt})"
        )


@dataclass(slots=True)
class ExecutionContext:
    """Given to every command and guard as ``ctx``.

    ``context`` is a mutable copy of the instance's context: a command's writes are saved with
    the transition (a guard gets a read-only copy). Everything else is read-only.
    ``transition_uuid`` identifies the transition the command runs for. ``durable`` is set only
    for a command of a queued execution (``enqueue_event``).
    """

    context: dict[str, Any]
    metadata: Mapping[str, Any]
    trigger_metadata: Mapping[str, Any]
    now: datetime
    from_state: str | None
    to_state: str
    transition_uuid: UUID
    command_metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    durable: DurableContext | None = None

    def derive(
        self,
        *,
        context: dict[str, Any] | None = None,
        command_metadata: Mapping[str, Any] | None = None,
    ) -> ExecutionContext:
        """A copy with another context and/or command metadata (cheaper than dataclasses.replace
        on the per-command hot path)."""
        return ExecutionContext(
            self.context if context is None else context,
            self.metadata,
            self.trigger_metadata,
            self.now,
            self.from_state,
            self.to_state,
            self.transition_uuid,
            self.command_metadata if command_metadata is None else command_metadata,
            self.durable,
        )


@dataclass(frozen=True, slots=True)
class StateEnterEvent:
    """What observers receive when an instance enters a state (snapshots, read-only).

    ``trigger_event`` is the event name, ``"onEnter"`` for chain hops, or None on create.
    """

    workflow_name: str
    instance_uuid: UUID
    state: str
    from_state: str | None
    to_state: str
    transition_uuid: UUID
    trigger_event: str | None
    context: Mapping[str, Any]
    metadata: Mapping[str, Any]
    trigger_metadata: Mapping[str, Any]
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class AvailableEvent:
    """An event defined on the instance's current state (guards are not evaluated)."""

    event_name: str
    target_state: str | None
    error_state: str | None
    has_commands: bool
    has_timeout: bool
    metadata: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class BusinessFailure:
    """A timeout whose event or onEnter chain ended in a routed failure (still processed)."""

    uuid: UUID
    final_state: str


@dataclass(frozen=True, slots=True)
class TimeoutFailure:
    """A timeout that raised; ``attempts`` and ``retry_at`` are set when the failure was recorded
    (``retry_at`` is None when the instance was parked)."""

    uuid: UUID
    error: str
    attempts: int | None = None
    retry_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ParkedTimeout:
    """A timeout that exhausted its retries: it will not be retried until ``rearm_timeout``."""

    uuid: UUID
    error: str


@dataclass(frozen=True, slots=True)
class ProcessExpiredResult:
    """What one ``process_expired_workflows`` sweep did."""

    processed: int = 0
    rejected: int = 0
    business_failed: list[BusinessFailure] = field(default_factory=list)
    failed: list[TimeoutFailure] = field(default_factory=list)
    parked: list[ParkedTimeout] = field(default_factory=list)


MAX_ERROR_LENGTH = 2000


def _sanitise_error(message: str) -> str:
    # PostgreSQL text cannot hold NUL; lone surrogates cannot be encoded. Both become U+FFFD.
    # Cut first: each replacement is one character for one, and the message may be huge.
    cleaned = message[:MAX_ERROR_LENGTH].replace("\x00", "\ufffd")
    if not cleaned.isascii():
        # A Python str holds astral characters as one code point, so any code point in the
        # surrogate range is an unpaired surrogate.
        cleaned = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in cleaned)
    return cleaned


def _positive_delay(value: object, name: str) -> timedelta:
    # At most MAX_DURATION (100 years), so that now + delay stays a datetime and a timestamptz.
    seconds = require_duration(value, name, positive=True)
    return value if isinstance(value, timedelta) else timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class TimeoutRetryPolicy:
    """How a failing timeout is retried: waits double from ``initial_delay`` up to ``max_delay``;
    the ``max_attempts``-th failure parks the instance. Defaults: 1 minute, 1 hour, 10.

    Delays are a timedelta or a number of seconds, positive and at most 100 years (36525 days).
    """

    initial_delay: timedelta = timedelta(minutes=1)
    max_delay: timedelta = timedelta(hours=1)
    max_attempts: int = 10

    if TYPE_CHECKING:
        # The constructor takes seconds too (__post_init__ turns them into a timedelta); the
        # fields, once built, are timedeltas.
        def __init__(
            self,
            initial_delay: timedelta | float = timedelta(minutes=1),
            max_delay: timedelta | float = timedelta(hours=1),
            max_attempts: int = 10,
        ) -> None: ...

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "initial_delay", _positive_delay(self.initial_delay, "initial_delay")
        )
        object.__setattr__(self, "max_delay", _positive_delay(self.max_delay, "max_delay"))
        if self.initial_delay > self.max_delay:
            raise InvalidArgumentError("initial_delay must not be greater than max_delay")
        if type(self.max_attempts) is not int or self.max_attempts < 1:
            raise InvalidArgumentError(
                f"max_attempts must be a positive integer, got {echo(self.max_attempts)}"
            )

    def next(self, previous: TimeoutRetry | None, message: str, now: datetime) -> TimeoutRetry:
        """The retry state after one more failure at ``now``."""
        attempts = (previous.attempts if previous is not None else 0) + 1
        error = _sanitise_error(message)
        if attempts >= self.max_attempts:
            return TimeoutRetry(attempts=attempts, last_error=error, retry_at=None, parked_at=now)
        # Compared in float seconds first: initial_delay * 2**n overflows timedelta for large n.
        exponent = min(attempts - 1, 1000)
        if self.initial_delay.total_seconds() * 2.0**exponent >= self.max_delay.total_seconds():
            delay = self.max_delay
        else:
            delay = self.initial_delay * 2**exponent
        try:
            retry_at = now + delay
        except OverflowError:
            # A clock within max_delay of datetime.max: no retry time can be written, and a
            # failure must be recorded, so the instance is parked (rearm_timeout retries it).
            return TimeoutRetry(attempts=attempts, last_error=error, retry_at=None, parked_at=now)
        return TimeoutRetry(attempts=attempts, last_error=error, retry_at=retry_at, parked_at=None)
