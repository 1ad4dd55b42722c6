"""Optional OpenTelemetry spans for transactions, events and sweeps (docs/tracing.md).

OpenTelemetry is an optional dependency, so it is looked for once, here, at import. Callers test
``_tracing.active()`` before anything else (``traced`` does it for them): without the API, or with
the API but no tracer provider set (no SDK configured: a dependency pulled the API in), a
transaction or an event costs that test and no span is made. The API's proxy would hand back
non-recording spans carrying the current context unchanged, so skipping them changes nothing a
child span or a propagator sees. ``start`` still returns None for an invalid span (a no-op
tracer), so the callers skip attributes and context changes then too. Attributes are only
computed for spans that record (a sampler may drop a span and still want it propagated).

A tracing failure (a faulty span processor, say) is logged and swallowed: it must never break the
transaction it describes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

__all__ = [
    "CREATE_INSTANCE",
    "DB_ATTRIBUTES",
    "ENABLED",
    "MIGRATE_INSTANCES",
    "SAVEPOINT",
    "SWEEP",
    "TIMEOUT",
    "TRACER_NAME",
    "TRANSACTION",
    "TRIGGER_EVENT",
    "Span",
    "active",
    "connection_attributes",
    "start",
    "traced",
]

logger = logging.getLogger("duraflows_pg_async")
T = TypeVar("T")

# The attribute values we send (OpenTelemetry's AttributeValue without the sequences); spelled
# out so that annotations here and in the callers do not depend on the optional API.
Value = str | bool | int | float

TRACER_NAME: Final = "duraflows_pg_async"

# Span names.
TRANSACTION: Final = "duraflows.transaction"
SAVEPOINT: Final = "duraflows.savepoint"
TRIGGER_EVENT: Final = "duraflows.trigger_event"
CREATE_INSTANCE: Final = "duraflows.create_instance"
SWEEP: Final = "duraflows.sweep"
TIMEOUT: Final = "duraflows.timeout"
MIGRATE_INSTANCES: Final = "duraflows.migrate_instances"

# Given at span creation, where samplers can see them: the semantic conventions for database
# spans ask for that. "db.system" is the name used before the conventions were stabilised.
DB_ATTRIBUTES: Final[Mapping[str, Value]] = {
    "db.system.name": "postgresql",
    "db.system": "postgresql",
}

try:
    from opentelemetry import context as _context
    from opentelemetry import trace as _trace
    from opentelemetry.trace import StatusCode as _StatusCode
except ImportError:
    ENABLED = False
else:
    ENABLED = True


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("duraflows-pg-async")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0"


if ENABLED:
    # Taken once: before an SDK is configured this is the API's proxy tracer, which follows the
    # global TracerProvider as soon as the application sets one.
    _tracer = _trace.get_tracer(TRACER_NAME, _version())
    # Until a provider is set, get_tracer_provider() looks its variable up in os.environ (a
    # KeyError raised and caught) on every call. The API module's own record of the global
    # provider answers the same question for a read; an API without it, or a provider named in
    # the environment (loaded by that call), takes the public call.
    _READ_PROVIDER = (
        hasattr(_trace, "_TRACER_PROVIDER") and "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ
    )

_warned = False


def _failed(what: str) -> None:
    """Log a tracing failure: once as a warning, then at debug level (it may repeat per call)."""
    global _warned
    level = logging.DEBUG if _warned else logging.WARNING
    _warned = True
    logger.log(level, "duraflows: tracing failed (%s); carrying on without it", what, exc_info=True)


def _error_type(error: BaseException) -> str:
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


class Span:
    """A started span, current (the parent of spans started meanwhile) until ``end()``.

    ``recording`` is False for a span that a sampler dropped: it is still propagated, but callers
    skip computing its attributes.
    """

    __slots__ = ("_attributes", "_span", "_token", "recording")

    def __init__(self, span: Any, token: Any) -> None:
        self._span = span
        self._token = token
        self.recording: bool = span.is_recording()
        self._attributes: dict[str, Value] = {}

    def update(self, attributes: Mapping[str, Value]) -> None:
        """Add attributes. They are handed to the SDK in one call at ``end()``: each call to the
        SDK's ``set_attributes`` takes a lock and validates, which costs more than a dict."""
        if self.recording:
            self._attributes.update(attributes)

    def fail(self, error: BaseException) -> None:
        """Record ``error`` and set the status to ERROR.

        As OpenTelemetry's own ``use_span``, only an ``Exception`` counts: a cancellation (or
        another BaseException) is not an error of the operation, and leaves the status unset.
        """
        if not self.recording or not isinstance(error, Exception):
            return
        self._attributes["error.type"] = _error_type(error)
        try:
            span = self._span
            span.record_exception(error)
            span.set_status(_StatusCode.ERROR, f"{type(error).__name__}: {error}")
        except Exception:
            _failed("record_exception")

    def end(self, error: BaseException | None = None) -> None:
        """End the span (failed by ``error`` if given) and restore the context it replaced."""
        try:
            if error is not None:
                self.fail(error)
            if self._attributes:
                self._span.set_attributes(self._attributes)
            self._span.end()
        except Exception:
            _failed("end")
        finally:
            _context.detach(self._token)  # logs, never raises

    async def watch(self, awaitable: Awaitable[T]) -> T:
        """``await awaitable``; if it raises, end the span with the error and re-raise."""
        try:
            return await awaitable
        except BaseException as exc:
            self.end(exc)
            raise


def active() -> bool:
    """Whether spans may be made: the API is installed and its tracer is more than a no-op.

    The tracer taken at import is the API's proxy, which follows the global provider once the
    application sets one (an SDK's); until then it can only make non-recording spans.
    """
    if not ENABLED:
        return False
    tracer = _tracer
    if isinstance(tracer, _trace.ProxyTracer):
        if _READ_PROVIDER:
            return _trace._TRACER_PROVIDER is not None
        return not isinstance(_trace.get_tracer_provider(), _trace.ProxyTracerProvider)
    return not isinstance(tracer, _trace.NoOpTracer)


def start(name: str, attributes: Mapping[str, Value] | None = None) -> Span | None:
    """Start span ``name`` as a child of the current one and make it current.

    Only call it when ``ENABLED``. Returns None when there is nothing to record or to propagate
    (no SDK configured) or when tracing failed; the caller then does nothing more.
    """
    try:
        span = _tracer.start_span(name, attributes=attributes)
        if not span.get_span_context().is_valid:
            return None
        return Span(span, _context.attach(_trace.set_span_in_context(span)))
    except Exception:
        _failed(f"start {name}")
        return None


def connection_attributes(conn: Any) -> dict[str, Value]:
    """``db.namespace``, ``server.address`` and ``server.port`` of an asyncpg connection.

    asyncpg keeps them in private attributes (``_params``, ``_addr``), so they are read
    defensively: whatever is missing is left out. No round trip is made.
    """
    attributes: dict[str, Value] = {}
    database = getattr(getattr(conn, "_params", None), "database", None)
    if isinstance(database, str):
        attributes["db.namespace"] = database
    address = getattr(conn, "_addr", None)
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        if isinstance(host, str):
            attributes["server.address"] = host
        if isinstance(port, int):
            attributes["server.port"] = port
    elif isinstance(address, str):  # a Unix-domain socket path
        attributes["server.address"] = address
    return attributes


def traced(
    name: str,
    run: Callable[[Span | None], Awaitable[T]],
    attributes: Callable[[], Mapping[str, Value]] | None = None,
    outcome: Callable[[T], Mapping[str, Value]] | None = None,
) -> Awaitable[T]:
    """``run(span)`` inside span ``name``, or ``run(None)`` when no span is started.

    ``attributes()`` describes the span at its start and ``outcome(result)`` at its end, both
    only when it records. If ``run`` raises, the span ends failed by the error. Without tracing
    this is one test (``active()``): ``run(None)`` is handed back as it is.
    """
    if not active():
        return run(None)
    return _traced(name, run, attributes, outcome)


async def _traced(
    name: str,
    run: Callable[[Span | None], Awaitable[T]],
    attributes: Callable[[], Mapping[str, Value]] | None,
    outcome: Callable[[T], Mapping[str, Value]] | None,
) -> T:
    span = start(name)
    if span is None:
        return await run(None)
    if attributes is not None and span.recording:
        span.update(attributes())
    result = await span.watch(run(span))
    if outcome is not None and span.recording:
        span.update(outcome(result))
    span.end()
    return result
