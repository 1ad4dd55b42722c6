"""Hostile input: every public entry point refuses what it cannot take, and writes nothing.

Each test draws bad input with hypothesis and sends it to the runtime and to the stores, on the
in-memory provider and on PostgreSQL (``world`` runs every test on both). A refused call raises
InvalidArgumentError naming the argument (and, for JSON, the key path), or the documented error
(WorkflowDefinitionError for an unknown workflow, InvalidEventError for an unknown event,
WorkflowInstanceNotFoundError for an unknown instance), and leaves every table exactly as it
was: the row counts and a digest of every row of workflow_instances, workflow_history and
workflow_definitions are compared before and after each call.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from types import MappingProxyType
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    CommandResult,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    GuardRef,
    GuardRegistry,
    HistoryRecord,
    PgTransactionRunner,
    State,
    TimeoutRetry,
    WorkflowDefinition,
    WorkflowInstance,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
    memory_workflow_providers,
    pg_workflow_providers,
)
from duraflows_pg_async.errors import (
    InvalidArgumentError,
    InvalidEventError,
    OptimisticLockError,
    WorkflowDefinitionError,
    WorkflowInstanceNotFoundError,
)
from duraflows_pg_async.memory import MemoryWorkflowInstanceStore
from duraflows_pg_async.testing import make_instance

# Function-scoped fixtures are shared by the examples of one test: every example either writes
# nothing (which is what is checked) or works on instances of its own.
HOSTILE = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

INT4_MAX = 2**31 - 1  # PostgreSQL integer: version, definition_version, timeout_attempts
INT8_MAX = 2**63 - 1  # PostgreSQL bigint: LIMIT and OFFSET
NAME = "hostile"

WORKFLOW = WorkflowDefinition(
    name=NAME,
    initial_state="new",
    states={
        "new": State(
            context={"declared": True},
            events={
                "go": Event(target_state="done", commands=(CommandRef("note"),)),
                "check": Event(target_state="done", guard=GuardRef("never")),
            },
        ),
        "done": State(),
    },
)

SNAPSHOT_SQL = """
SELECT
    (SELECT count(*) FROM workflow_instances),
    (SELECT count(*) FROM workflow_history),
    (SELECT count(*) FROM workflow_definitions),
    (SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t.uuid), ''))
       FROM workflow_instances t),
    (SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t.uuid), ''))
       FROM workflow_history t),
    (SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t.workflow_name, t.version), ''))
       FROM workflow_definitions t),
    (SELECT count(*) FROM pg_stat_activity
      WHERE datname = current_database() AND state LIKE 'idle in transaction%')
"""


async def database_snapshot(conn: asyncpg.Connection) -> tuple[Any, ...]:
    """SNAPSHOT_SQL's one row (counts and digests of the tables, sessions idle in transaction)."""
    row = await conn.fetchrow(SNAPSHOT_SQL)
    assert row is not None
    return tuple(row)


def note(subject: Any, ctx: ExecutionContext) -> CommandResult:
    """Notes the event; a ``subject`` dict may make it write ``context`` into the context and
    return ``result`` as its result's metadata: what a command hands back is input too."""
    ctx.context["noted"] = True
    if isinstance(subject, dict) and "context" in subject:
        ctx.context["written"] = subject["context"]
    if isinstance(subject, dict) and "result" in subject:
        return CommandResult(ok=True, metadata=subject["result"])
    return CommandResult(ok=True)


def never(subject: Any, ctx: ExecutionContext) -> bool:
    return False


@dataclass
class World:
    """One provider, a runtime on it, and the instance the calls aim at."""

    kind: str
    persistence: WorkflowPersistenceProvider
    raw: asyncpg.Connection | None
    definitions: DefinitionRegistry
    commands: CommandRegistry
    guards: GuardRegistry
    runtime: WorkflowRuntime
    instance_uuid: UUID | None = None

    @classmethod
    def build(
        cls, kind: str, persistence: WorkflowPersistenceProvider, raw: asyncpg.Connection | None
    ) -> World:
        definitions = DefinitionRegistry()
        definitions.register(WORKFLOW)
        commands = CommandRegistry()
        commands.register("note", note)
        guards = GuardRegistry()
        guards.register("never", never)
        runtime = WorkflowRuntime(
            definitions=definitions, commands=commands, guards=guards, persistence=persistence
        )
        return cls(kind, persistence, raw, definitions, commands, guards, runtime)

    def runtime_with(self, **options: Any) -> WorkflowRuntime:
        return WorkflowRuntime(
            definitions=self.definitions,
            commands=self.commands,
            guards=self.guards,
            persistence=self.persistence,
            **options,
        )

    async def ready(self) -> UUID:
        """Initialise the runtime and create the target instance (once per test)."""
        if self.instance_uuid is None:
            await self.runtime.initialize()
            created = await self.runtime.create_instance(NAME, context={"n": 1})
            self.instance_uuid = created.uuid
        return self.instance_uuid

    async def stored(self) -> WorkflowInstance:
        found = await self.persistence.instance_store.find_by_uuid(await self.ready())
        assert found is not None
        return found

    async def snapshot(self) -> tuple[Any, ...]:
        """Row counts and a digest of every row of the three tables; also what a refused call
        must not leave behind (a session idle in transaction, a connection not back in the
        pool, a row lock)."""
        if self.raw is not None:
            runner = self.persistence.transaction_runner
            assert isinstance(runner, PgTransactionRunner)
            in_use = runner.pool.get_size() - runner.pool.get_idle_size()
            return (*await database_snapshot(self.raw), in_use)
        store = self.persistence.instance_store
        assert isinstance(store, MemoryWorkflowInstanceStore)
        db = store._database
        return (
            len(db._instances),
            sum(len(rows) for rows in db._history.values()),
            len(db._definitions),
            _digest(sorted(db._instances.items())),
            _digest(sorted(db._history.items())),
            _digest(sorted(db._definitions.items())),
            # A refused call leaves no row lock or sweep claim behind either.
            len(db._locks),
            len(db._claims),
        )


def _digest(rows: object) -> str:
    return hashlib.sha256(pickle.dumps(rows)).hexdigest()


@pytest.fixture(params=["memory", "postgres"])
def world(request: pytest.FixtureRequest) -> World:
    if request.param == "memory":
        return World.build("memory", memory_workflow_providers(), None)
    persistence = request.getfixturevalue("providers")
    raw = request.getfixturevalue("raw_connection")
    request.node.user_properties.append(("postgres", True))  # counted in the summary line
    return World.build("postgres", persistence, raw)


async def refused(
    world: World,
    call: Callable[[], Awaitable[object]],
    errors: type[Exception] | tuple[type[Exception], ...],
    *fragments: str,
) -> Exception:
    """Run ``call``: it must raise one of ``errors`` whose message holds every fragment, and
    the database must be exactly as it was."""
    before = await world.snapshot()
    with pytest.raises(errors) as caught:
        await call()
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert await world.snapshot() == before, "a refused call wrote something"
    return caught.value


# ---------------------------------------------------------------------------------------------
# Strategies

SAFE_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=8)
SURROGATE = st.characters(categories=["Cs"])
NUL_TEXT = st.builds(lambda a, b: f"{a}\x00{b}", SAFE_TEXT, SAFE_TEXT)
SURROGATE_TEXT = st.builds(lambda a, s, b: a + s + b, SAFE_TEXT, SURROGATE, SAFE_TEXT)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12),
    SAFE_TEXT,
)


class EvilRepr:
    """An object whose repr() raises: error messages must not depend on it."""

    def __repr__(self) -> str:
        raise RuntimeError("repr refused")

    def __hash__(self) -> int:
        return 7


class InfiniteFloat(float):
    pass


class NoOffset(tzinfo):
    """A tzinfo that knows no offset: such a datetime is naive."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None


# Python's int-to-str limit (4300 digits by default): json.dumps cannot write these.
HUGE_INTS = st.integers(4301, 5000).flatmap(lambda n: st.sampled_from([10**n, -(10**n)]))

BAD_JSON_VALUES = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.builds(InfiniteFloat, st.sampled_from(["inf", "-inf", "nan"])),
    st.sets(st.integers(), max_size=3),
    st.frozensets(st.integers(), max_size=3),
    st.binary(max_size=8),
    st.builds(bytearray, st.binary(max_size=8)),
    st.datetimes(),
    st.dates(),
    st.decimals(allow_nan=True),
    st.complex_numbers(),
    st.uuids(),
    NUL_TEXT,
    SURROGATE_TEXT,
    HUGE_INTS,
    st.builds(object),
    st.builds(EvilRepr),
    st.builds(threading.Lock),
    st.builds(lambda: MappingProxyType({"a": 1})),
    st.builds(lambda: range(3)),
    st.builds(lambda: iter([1])),
)

BAD_JSON_KEYS = st.one_of(
    st.integers(),
    st.floats(),
    st.none(),
    st.booleans(),
    st.tuples(st.integers()),
    st.binary(max_size=4),
    st.builds(EvilRepr),
    HUGE_INTS,
    NUL_TEXT,
    SURROGATE_TEXT,
)


@st.composite
def poisoned_objects(draw: st.DrawFn) -> tuple[dict[Any, Any], str]:
    """A JSON object with exactly one thing JSON cannot hold somewhere inside it, and the start
    of the error message (the key path relative to the argument) that must name it."""
    steps: list[tuple[str, Any]] = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("key"), SAFE_TEXT),
                st.tuples(st.just("index"), st.integers(0, 3)),
            ),
            max_size=4,
        )
    )
    if draw(st.booleans()):
        # A bad key in the innermost object.
        bad_key = draw(BAD_JSON_KEYS)
        inner: Any = draw(st.dictionaries(SAFE_TEXT, JSON_SCALARS, max_size=3))
        inner[bad_key] = draw(JSON_SCALARS)
        tail = ": key "
    else:
        inner = draw(BAD_JSON_VALUES)
        tail = ":"
        if not steps:
            steps = [("key", draw(SAFE_TEXT))]
    if steps and steps[0][0] == "index":
        steps.insert(0, ("key", draw(SAFE_TEXT)))  # the argument itself is an object
    path = ""
    for kind, key in reversed(steps):
        if kind == "key":
            container: Any = draw(st.dictionaries(SAFE_TEXT, JSON_SCALARS, max_size=3))
            container[key] = inner
            path = f"[{key!r}]{path}"
        else:
            items = draw(st.lists(JSON_SCALARS, max_size=3))
            position = min(key, len(items))
            items.insert(position, inner)
            container = tuple(items) if draw(st.booleans()) else items
            path = f"[{position}]{path}"
        inner = container
    return inner, f"{path}{tail}"


def nested(depth: int) -> dict[str, Any]:
    """An object ``depth`` containers deep (itself included), objects and arrays in turn."""
    value: Any = "leaf"
    for level in range(depth - 1):
        value = {"d": value} if level % 2 else [value]
    return {"d": value}


# ---------------------------------------------------------------------------------------------
# Non-JSON values, at every entry point that stores JSON


def _history(instance_uuid: UUID, **fields: Any) -> HistoryRecord:
    return HistoryRecord(instance_uuid, "new", "go", "done", "success", **fields)


async def _store_update_context(w: World, value: Any) -> None:
    instance = await w.stored()
    instance.context = value
    instance.version += 1
    await w.persistence.instance_store.update(instance)


async def _store_create_in_transaction(w: World, value: Any) -> None:
    # The valid row written first must be rolled back with the refused one.
    async with w.persistence.transaction_runner.transaction():
        await w.persistence.instance_store.create(make_instance())
        await w.persistence.instance_store.create(make_instance(context=value))


async def _append(w: World, **fields: Any) -> None:
    await w.persistence.history_store.append(_history(await w.ready(), **fields))


async def _trigger_via_handle(w: World, value: Any) -> None:
    await w.runtime.handle(await w.ready()).trigger_event("go", trigger_metadata=value)


async def _trigger(w: World, value: Any) -> None:
    await w.runtime.trigger_event(await w.ready(), "go", trigger_metadata=value)


async def _command_writes_context(w: World, value: Any) -> None:
    await w.runtime.trigger_event(await w.ready(), "go", subject={"context": value})


async def _command_returns_metadata(w: World, value: Any) -> None:
    await w.runtime.trigger_event(await w.ready(), "go", subject={"result": value})


JsonEntry = Callable[[World, Any], Awaitable[object]]
JSON_ENTRIES: dict[str, tuple[JsonEntry, str]] = {
    "runtime.create_instance(context)": (
        lambda w, v: w.runtime.create_instance(NAME, context=v),
        "context",
    ),
    "runtime.create_instance(metadata)": (
        lambda w, v: w.runtime.create_instance(NAME, metadata=v),
        "metadata",
    ),
    "runtime.create_instance(trigger_metadata)": (
        lambda w, v: w.runtime.create_instance(NAME, trigger_metadata=v),
        "trigger_metadata",
    ),
    "runtime.trigger_event(trigger_metadata)": (_trigger, "trigger_metadata"),
    "handle.trigger_event(trigger_metadata)": (_trigger_via_handle, "trigger_metadata"),
    "a command's write to ctx.context": (_command_writes_context, "context['written']"),
    "instance_store.create(context)": (
        lambda w, v: w.persistence.instance_store.create(make_instance(context=v)),
        "context",
    ),
    "instance_store.create(metadata)": (
        lambda w, v: w.persistence.instance_store.create(make_instance(metadata=v)),
        "metadata",
    ),
    "instance_store.create in a transaction": (_store_create_in_transaction, "context"),
    "instance_store.update(context)": (_store_update_context, "context"),
    "history_store.append(trigger_metadata)": (
        lambda w, v: _append(w, trigger_metadata=v),
        "trigger_metadata",
    ),
    "history_store.append(command_results metadata)": (
        lambda w, v: _append(
            w, command_results=[CommandResult(ok=True), CommandResult(ok=True, metadata=v)]
        ),
        "command_results[1]['metadata']",
    ),
    "history_store.append(command_results error)": (
        lambda w, v: _append(w, command_results=[CommandResult(ok=False, error=v)]),
        "command_results[0]['error']",
    ),
    "definition_store.ensure(definition_json)": (
        lambda w, v: w.persistence.definition_store.ensure(
            workflow_name="other", version=1, content_hash="sha256:x", definition_json=v
        ),
        "definition_json",
    ),
}


@HOSTILE
@given(entry=st.sampled_from(sorted(JSON_ENTRIES)), poisoned=poisoned_objects())
@example(entry="runtime.create_instance(context)", poisoned=({"x": threading.Lock()}, "['x']:"))
@example(
    entry="runtime.create_instance(context)",
    poisoned=({"x": MappingProxyType({})}, "['x']:"),
)
@example(entry="instance_store.create(context)", poisoned=({"n": 10**5000}, "['n']:"))
@example(entry="definition_store.ensure(definition_json)", poisoned=({"x": "\xe9\x00"}, "['x']:"))
@example(entry="runtime.trigger_event(trigger_metadata)", poisoned=({10**5000: 1}, ": key "))
async def test_non_json_values_are_refused_with_their_key_path(
    world: World, entry: str, poisoned: tuple[dict[Any, Any], str]
) -> None:
    value, path = poisoned
    call, argument = JSON_ENTRIES[entry]
    await world.ready()
    await refused(world, lambda: call(world, value), InvalidArgumentError, f"{argument}{path}")


# A command's result is not refused for its text: NUL and unpaired surrogates in it are replaced
# (see _core/text.py), so it joins the entries only where text is not what is wrong.
DEPTH_ENTRIES: dict[str, tuple[JsonEntry, str]] = {
    **JSON_ENTRIES,
    "a command's result metadata": (_command_returns_metadata, "command_results[0]['metadata']"),
}


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"x": threading.Lock()}, "['x']:"),
        ({"a": [1, {2: 3}]}, "['a'][1]: key 2"),
        (float("nan"), ":"),
    ],
)
async def test_a_command_result_that_is_not_json_is_refused_with_its_key_path(
    world: World, value: Any, path: str
) -> None:
    await world.ready()
    await refused(
        world,
        lambda: _command_returns_metadata(world, {"v": value}),
        InvalidArgumentError,
        f"command_results[0]['metadata']['v']{path}",
    )


@HOSTILE
@given(
    entry=st.sampled_from(sorted(DEPTH_ENTRIES)),
    depth=st.one_of(st.integers(201, 260), st.integers(261, 5000)),
)
@example(entry="runtime.create_instance(context)", depth=1200)
@example(entry="runtime.trigger_event(trigger_metadata)", depth=1200)
async def test_nesting_deeper_than_200_levels_is_refused(
    world: World, entry: str, depth: int
) -> None:
    call, argument = DEPTH_ENTRIES[entry]
    await world.ready()
    await refused(
        world,
        lambda: call(world, nested(depth)),
        InvalidArgumentError,
        argument,
        "nested deeper than 200 levels",
    )


async def test_nesting_of_exactly_200_levels_round_trips(world: World) -> None:
    value = nested(200)
    created = await world.runtime.create_instance(NAME, context=value, metadata=value)
    found = await world.runtime.get_instance(created.uuid)
    assert found is not None
    assert found.context == {**value, "declared": True}
    assert found.metadata == value
    instance = make_instance(context=value)
    await world.persistence.instance_store.create(instance)
    stored = await world.persistence.instance_store.find_by_uuid(instance.uuid)
    assert stored is not None
    assert stored.context == value


TEN_MB = 10 * 1024 * 1024


@pytest.mark.slow
@settings(HOSTILE, max_examples=2)
@given(
    unit=st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1),
    row=st.dictionaries(SAFE_TEXT, JSON_SCALARS, max_size=4),
)
async def test_a_10_mb_payload_round_trips(world: World, unit: str, row: dict[str, Any]) -> None:
    blob = unit * (TEN_MB // len(unit.encode()) + 1)
    payload: dict[str, Any] = {"blob": blob, "rows": [dict(row, n=n) for n in range(2_000)]}
    assert len(json.dumps(payload, ensure_ascii=False).encode()) > TEN_MB
    # Through the runtime: created, moved by an event (the context is written again), read back.
    created = await world.runtime.create_instance(NAME, context=payload)
    result = await world.runtime.trigger_event(created.uuid, "go", trigger_metadata=payload)
    assert result.to_state == "done"
    found = await world.runtime.get_instance(created.uuid)
    assert found is not None
    assert found.context == {**payload, "declared": True, "noted": True}
    [record] = await world.runtime.get_history(created.uuid)
    assert record.trigger_metadata == payload
    # Through the store.
    instance = make_instance(context=payload, metadata=payload)
    await world.persistence.instance_store.create(instance)
    stored = await world.persistence.instance_store.find_by_uuid(instance.uuid)
    assert stored is not None
    assert stored.context == payload
    assert stored.metadata == payload


# ---------------------------------------------------------------------------------------------
# Malformed UUIDs

_UUID_TEXT = re.compile(r"(?:urn:uuid:)?\{?[0-9A-Fa-f-]+\}?")


def is_uuid_text(text: str) -> bool:
    """The string forms of a UUID: 32 ASCII hex digits, hyphens anywhere, optional braces and an
    optional ``urn:uuid:`` prefix. Nothing else (whitespace, signs, underscores, ``0x``,
    non-ASCII digits) is a UUID, even where ``uuid.UUID()`` would read it."""
    if not _UUID_TEXT.fullmatch(text):
        return False
    return sum(ch in "0123456789abcdefABCDEF" for ch in text.removeprefix("urn:uuid:")) == 32


@st.composite
def near_uuids(draw: st.DrawFn) -> str:
    """A UUID's text with one mutation: most are malformed, the others are filtered out."""
    text = str(draw(st.uuids()))
    if draw(st.booleans()):
        text = text.replace("-", "")
    if draw(st.booleans()):
        text = text.upper()
    position = draw(st.integers(0, len(text)))
    mutation = draw(st.sampled_from(["insert", "delete", "replace", "wrap"]))
    odd = draw(
        st.one_of(
            st.sampled_from([" ", "\t", "\n", "+", "_", "x", "g", "\x00", "\u0663", "\uff11", "-"]),
            st.characters(),
        )
    )
    if mutation == "insert":
        return text[:position] + odd + text[position:]
    if mutation == "delete":
        return text[:position] + text[position + 1 :]
    if mutation == "replace":
        return text[:position] + odd + text[position + 1 :]
    prefix = draw(st.sampled_from(["{", "0x", "+", " ", "urn:uuid:", "URN:UUID:", "uuid:", "{{"]))
    return prefix + text + draw(st.sampled_from(["}", " ", "\n", "}}", ""]))


MALFORMED_UUIDS = st.one_of(
    near_uuids().filter(lambda s: not is_uuid_text(s)),
    st.text(max_size=40).filter(lambda s: not is_uuid_text(s)),
    st.integers(),
    st.none(),
    st.binary(min_size=16, max_size=16),
    st.floats(),
    st.builds(lambda u: [u], st.uuids()),
    st.builds(EvilRepr),
)

LATER = datetime(2100, 1, 1, tzinfo=UTC)


async def _lock_in_transaction(w: World, bad: Any) -> None:
    async with w.persistence.transaction_runner.transaction():
        await w.persistence.instance_store.lock_by_uuid(bad)


async def _handle(w: World, bad: Any) -> None:
    w.runtime.handle(bad)


UuidEntry = Callable[[World, Any], Awaitable[object]]
UUID_ENTRIES: dict[str, tuple[UuidEntry, str]] = {
    "runtime.trigger_event": (lambda w, u: w.runtime.trigger_event(u, "go"), "instance_uuid"),
    "runtime.get_instance": (lambda w, u: w.runtime.get_instance(u), "instance_uuid"),
    "runtime.get_history": (lambda w, u: w.runtime.get_history(u), "instance_uuid"),
    "runtime.get_available_events": (
        lambda w, u: w.runtime.get_available_events(u),
        "instance_uuid",
    ),
    "runtime.rearm_timeout": (lambda w, u: w.runtime.rearm_timeout(u), "instance_uuid"),
    "runtime.handle": (_handle, "instance_uuid"),
    "instance_store.find_by_uuid": (
        lambda w, u: w.persistence.instance_store.find_by_uuid(u),
        "instance_uuid",
    ),
    "instance_store.lock_by_uuid": (_lock_in_transaction, "instance_uuid"),
    "instance_store.create": (
        lambda w, u: w.persistence.instance_store.create(make_instance(uuid=u)),
        "instance.uuid",
    ),
    "instance_store.update": (
        lambda w, u: w.persistence.instance_store.update(make_instance(uuid=u, version=1)),
        "instance.uuid",
    ),
    "instance_store.release_claims": (
        lambda w, u: w.persistence.instance_store.release_claims([uuid4(), u], LATER),
        "instance_uuids[]",
    ),
    "history_store.find_by_instance_uuid": (
        lambda w, u: w.persistence.history_store.find_by_instance_uuid(u),
        "instance_uuid",
    ),
    "history_store.append": (
        lambda w, u: w.persistence.history_store.append(_history(u)),
        "record.workflow_instance_uuid",
    ),
}


@HOSTILE
@given(entry=st.sampled_from(sorted(UUID_ENTRIES)), bad=MALFORMED_UUIDS)
@example(entry="instance_store.find_by_uuid", bad=" " + "1" * 31)
@example(entry="instance_store.find_by_uuid", bad="+" + "1" * 31)
@example(entry="runtime.get_instance", bad="\u0663" * 32)
@example(entry="runtime.trigger_event", bad="1234_5678" + "1" * 24)
@example(entry="history_store.append", bad="0x" + "a" * 30)
@example(entry="instance_store.create", bad=10**5000)
async def test_malformed_uuids_are_refused(world: World, entry: str, bad: Any) -> None:
    call, argument = UUID_ENTRIES[entry]
    await world.ready()
    await refused(world, lambda: call(world, bad), InvalidArgumentError, argument)


@pytest.mark.parametrize(
    "text",
    [
        "12345678-1234-5678-1234-567812345678",
        "12345678123456781234567812345678",
        "{12345678-1234-5678-1234-567812345678}",
        "urn:uuid:12345678-1234-5678-1234-567812345678",
        "12345678-1234-5678-1234-56781234567A",
    ],
)
async def test_every_string_form_of_a_uuid_is_accepted(world: World, text: str) -> None:
    assert await world.runtime.get_instance(text) is None
    assert await world.persistence.history_store.find_by_instance_uuid(text) == []


# ---------------------------------------------------------------------------------------------
# Unknown workflows, events and instances


@HOSTILE
@given(
    name=st.one_of(
        st.text(max_size=30), NUL_TEXT, SURROGATE_TEXT, st.integers(), st.none(), st.binary()
    ).filter(lambda n: n != NAME)
)
@example(name="hostile ")
@example(name="HOSTILE")
@example(name="")
async def test_unknown_workflow_names_are_refused(world: World, name: Any) -> None:
    await world.ready()
    # A runtime that was never initialised, with a workflow whose snapshot is not stored yet:
    # a refused create must not store it either.
    registry = DefinitionRegistry()
    registry.register(replace(WORKFLOW, name=f"fresh_{uuid4().hex}"))
    fresh = WorkflowRuntime(
        definitions=registry,
        commands=world.commands,
        guards=world.guards,
        persistence=world.persistence,
    )
    exc = await refused(
        world,
        lambda: fresh.create_instance(name, context={"a": 1}),
        (WorkflowDefinitionError, InvalidArgumentError),
    )
    if isinstance(exc, WorkflowDefinitionError):
        assert exc.workflow_name == name
        assert "not found" in str(exc)
    else:
        assert "workflow_name" in str(exc)


@HOSTILE
@given(
    event=st.one_of(
        st.text(max_size=30), NUL_TEXT, SURROGATE_TEXT, st.integers(), st.none()
    ).filter(lambda e: e not in WORKFLOW.states["new"].events),
    via_handle=st.booleans(),
)
@example(event="GO", via_handle=False)
@example(event="go ", via_handle=True)
@example(event="$timeout", via_handle=False)
async def test_unknown_events_are_refused(world: World, event: Any, via_handle: bool) -> None:
    instance_uuid = await world.ready()

    async def call() -> object:
        if via_handle:
            return await world.runtime.handle(instance_uuid).trigger_event(event)
        return await world.runtime.trigger_event(instance_uuid, event)

    exc = await refused(world, call, (InvalidEventError, InvalidArgumentError))
    if isinstance(exc, InvalidEventError):
        assert exc.event_name == event
        assert exc.state == "new"
        assert exc.instance_uuid == instance_uuid
    else:
        assert "event_name" in str(exc)


async def _not_found(w: World, u: UUID, call: Callable[[], Awaitable[object]]) -> None:
    exc = await refused(w, call, WorkflowInstanceNotFoundError, str(u))
    assert isinstance(exc, WorkflowInstanceNotFoundError)
    assert exc.instance_uuid == u


@HOSTILE
@given(instance_uuid=st.uuids(), as_text=st.booleans())
async def test_unknown_instances_are_reported_and_nothing_is_written(
    world: World, instance_uuid: UUID, as_text: bool
) -> None:
    await world.ready()
    key: Any = str(instance_uuid).upper() if as_text else instance_uuid
    runtime, stores = world.runtime, world.persistence
    await _not_found(world, instance_uuid, lambda: runtime.trigger_event(key, "go"))
    await _not_found(world, instance_uuid, lambda: runtime.handle(key).trigger_event("go"))
    await _not_found(world, instance_uuid, lambda: runtime.get_available_events(key))
    await _not_found(world, instance_uuid, lambda: runtime.rearm_timeout(key))
    await _not_found(world, instance_uuid, lambda: stores.history_store.append(_history(key)))
    await refused(
        world,
        lambda: stores.instance_store.update(make_instance(uuid=key, version=1)),
        OptimisticLockError,
        str(instance_uuid),
    )
    assert await runtime.get_instance(key) is None
    assert await runtime.get_history(key) == []
    assert await stores.instance_store.find_by_uuid(key) is None


# ---------------------------------------------------------------------------------------------
# Injection-like schema names


def _is_identifier(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= 63
        and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value) is not None
    )


@HOSTILE
@given(
    schema=st.one_of(
        st.text(max_size=80),
        st.text(st.characters(codec="ascii"), min_size=64, max_size=100),
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{63,80}", fullmatch=True),
        st.integers(),
        st.binary(max_size=10),
        st.lists(st.text(max_size=3), max_size=2),
        st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    ).filter(lambda s: not _is_identifier(s))
)
@example(schema='a"b')
@example(schema='tenant"; DROP TABLE workflow_instances; --')
@example(schema="x; DROP TABLE workflow_history")
@example(schema="public.workflow_instances")
@example(schema="my schema")
@example(schema="tenant\x00a")
@example(schema="ténant")
@example(schema="t" * 64)
@example(schema="")
@example(schema=["tenant_a"])
async def test_injection_like_schema_names_are_refused(
    pool: asyncpg.Pool, raw_connection: asyncpg.Connection, schema: Any
) -> None:
    before = await database_snapshot(raw_connection)
    with pytest.raises(InvalidArgumentError, match="schema"):
        pg_workflow_providers(pool, schema=schema)
    assert await database_snapshot(raw_connection) == before


@HOSTILE
@given(
    option=st.sampled_from(["lock_timeout", "statement_timeout"]),
    bad=st.one_of(
        st.floats(max_value=-1e-9) | st.sampled_from([math.nan, math.inf, -math.inf]),
        st.integers(max_value=-1),
        st.integers(min_value=2**31),  # beyond 2**31 - 1 milliseconds, and beyond float
        st.floats(min_value=2.2e6, allow_infinity=False),
        HUGE_INTS,
        st.sampled_from([timedelta(days=10**8), timedelta(microseconds=-1)]),
        st.text(max_size=5),
        st.booleans(),
        st.builds(EvilRepr),
    ),
)
@example(option="lock_timeout", bad=10**400)
@example(option="statement_timeout", bad=1e306)
async def test_bad_timeouts_are_refused(pool: asyncpg.Pool, option: str, bad: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=option):
        pg_workflow_providers(pool, **{option: bad})
    if option == "lock_timeout":
        with pytest.raises(InvalidArgumentError, match=option):
            memory_workflow_providers(lock_timeout=bad)


# ---------------------------------------------------------------------------------------------
# Naive (and otherwise unusable) datetimes

BAD_DATETIMES = st.one_of(
    st.datetimes(),  # naive
    st.datetimes(timezones=st.builds(NoOffset)),
    st.sampled_from([datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)]),
    # Aware, but outside datetime's range once converted to UTC.
    st.integers(1, 24 * 60 - 1).map(
        lambda m: datetime.min.replace(tzinfo=timezone(timedelta(minutes=m)))
    ),
    st.integers(1, 24 * 60 - 1).map(
        lambda m: datetime.max.replace(tzinfo=timezone(-timedelta(minutes=m)))
    ),
    st.dates(),
    st.text(max_size=20),
    st.integers(),
)


class FixedClock:
    """A clock whose ``now()`` is whatever it was given: the hostile value itself (naive, out of
    range, not a datetime at all), which helpers.ManualClock would refuse."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def now(self) -> Any:
        return self.value


async def _update_with(w: World, **fields: Any) -> None:
    instance = await w.stored()
    for name, value in fields.items():
        setattr(instance, name, value)
    instance.version += 1
    await w.persistence.instance_store.update(instance)


async def _find_expired(w: World, now: Any, claim_until: Any = None) -> None:
    async with w.persistence.transaction_runner.transaction():
        await w.persistence.instance_store.find_expired(10, now, claim_until=claim_until)


def _create_with(w: World, **fields: Any) -> Awaitable[None]:
    return w.persistence.instance_store.create(make_instance(**fields))


DatetimeEntry = Callable[[World, Any], Awaitable[object]]
DATETIME_ENTRIES: dict[str, tuple[DatetimeEntry, str]] = {
    "create expires_at": (lambda w, d: _create_with(w, expires_at=d), "expires_at"),
    "create created_at": (lambda w, d: _create_with(w, created_at=d), "created_at"),
    "create updated_at": (lambda w, d: _create_with(w, updated_at=d), "updated_at"),
    "create last_transition_at": (
        lambda w, d: _create_with(w, last_transition_at=d),
        "last_transition_at",
    ),
    "create timeout_retry.retry_at": (
        lambda w, d: _create_with(w, timeout_retry=TimeoutRetry(1, "e", retry_at=d)),
        "timeout_retry.retry_at",
    ),
    "create timeout_retry.parked_at": (
        lambda w, d: _create_with(w, timeout_retry=TimeoutRetry(1, "e", parked_at=d)),
        "timeout_retry.parked_at",
    ),
    "update expires_at": (lambda w, d: _update_with(w, expires_at=d), "expires_at"),
    "update updated_at": (lambda w, d: _update_with(w, updated_at=d), "updated_at"),
    "update last_transition_at": (
        lambda w, d: _update_with(w, last_transition_at=d),
        "last_transition_at",
    ),
    "find_expired now": (lambda w, d: _find_expired(w, d), "now"),
    "find_expired claim_until": (
        lambda w, d: _find_expired(w, datetime.now(UTC), d),
        "claim_until",
    ),
    "release_claims claim_until": (
        lambda w, d: w.persistence.instance_store.release_claims([uuid4()], d),
        "claim_until",
    ),
    "runtime clock: create_instance": (
        lambda w, d: w.runtime_with(clock=FixedClock(d)).create_instance(NAME),
        "clock.now()",
    ),
    "runtime clock: trigger_event": (
        lambda w, d: _trigger_with_clock(w, d),
        "clock.now()",
    ),
    "runtime clock: sweep": (
        lambda w, d: w.runtime_with(clock=FixedClock(d)).sweep(),
        "clock.now()",
    ),
}


async def _trigger_with_clock(w: World, value: Any) -> None:
    await w.runtime_with(clock=FixedClock(value)).trigger_event(await w.ready(), "go")


@HOSTILE
@given(entry=st.sampled_from(sorted(DATETIME_ENTRIES)), bad=BAD_DATETIMES)
@example(entry="create expires_at", bad=datetime(2026, 1, 1))
@example(
    entry="create expires_at",
    bad=datetime.min.replace(tzinfo=timezone(timedelta(hours=5))),
)
@example(
    entry="update updated_at",
    bad=datetime.max.replace(tzinfo=timezone(timedelta(hours=-5))),
)
# asyncpg writes these two instants as -infinity/infinity and reads them back naive.
@example(entry="create expires_at", bad=datetime.min.replace(tzinfo=UTC))
@example(entry="update expires_at", bad=datetime.max.replace(tzinfo=UTC))
async def test_naive_and_unusable_datetimes_are_refused(world: World, entry: str, bad: Any) -> None:
    call, argument = DATETIME_ENTRIES[entry]
    await world.ready()
    await refused(world, lambda: call(world, bad), InvalidArgumentError, argument)


async def test_the_extreme_datetimes_in_range_round_trip(world: World) -> None:
    tick = timedelta(microseconds=1)
    for moment in (
        datetime.min.replace(tzinfo=UTC) + tick,
        datetime.max.replace(tzinfo=UTC) - tick,
        datetime.min.replace(tzinfo=timezone(timedelta(hours=-5))),
        datetime.max.replace(tzinfo=timezone(timedelta(hours=5))),
    ):
        instance = make_instance(expires_at=moment, created_at=moment)
        await world.persistence.instance_store.create(instance)
        stored = await world.persistence.instance_store.find_by_uuid(instance.uuid)
        assert stored is not None
        assert stored.expires_at == moment
        assert stored.created_at == moment
        assert stored.expires_at.tzinfo is not None


# ---------------------------------------------------------------------------------------------
# Bad limits, offsets and integer columns


def bad_ints(minimum: int, maximum: int, *, none_ok: bool = False) -> st.SearchStrategy[Any]:
    choices = [
        st.integers(max_value=minimum - 1),
        st.integers(min_value=maximum + 1),
        st.integers(min_value=maximum + 1, max_value=maximum + 3),
        HUGE_INTS,
        st.booleans(),
        st.floats(),
        st.decimals(allow_nan=False, allow_infinity=False),
        st.fractions(),
        st.text(max_size=5),
        st.builds(EvilRepr),
    ]
    if not none_ok:
        choices.append(st.none())
    return st.one_of(choices)


async def _find_expired_limit(w: World, limit: Any) -> None:
    async with w.persistence.transaction_runner.transaction():
        await w.persistence.instance_store.find_expired(limit, datetime.now(UTC))


async def _history_of(w: World, **kwargs: Any) -> None:
    await w.persistence.history_store.find_by_instance_uuid(await w.ready(), **kwargs)


async def _runtime_history(w: World, **kwargs: Any) -> None:
    await w.runtime.get_history(await w.ready(), **kwargs)


async def _update_version(w: World, value: Any) -> None:
    instance = await w.stored()
    instance.version = value
    await w.persistence.instance_store.update(instance)


IntEntry = Callable[[World, Any], Awaitable[object]]
# name -> (call, fragment, minimum, maximum, None accepted)
INT_ENTRIES: dict[str, tuple[IntEntry, str, int, int, bool]] = {
    "runtime.get_history limit": (
        lambda w, v: _runtime_history(w, limit=v),
        "limit",
        1,
        INT8_MAX,
        False,
    ),
    "runtime.get_history offset": (
        lambda w, v: _runtime_history(w, offset=v),
        "offset",
        0,
        INT8_MAX,
        False,
    ),
    "runtime.sweep limit": (lambda w, v: w.runtime.sweep(v), "limit", 1, INT8_MAX, False),
    "runtime.process_expired_workflows limit": (
        lambda w, v: w.runtime.process_expired_workflows(v),
        "limit",
        1,
        INT8_MAX,
        False,
    ),
    "runtime.find_parked_timeouts limit": (
        lambda w, v: w.runtime.find_parked_timeouts(limit=v),
        "limit",
        1,
        INT8_MAX,
        False,
    ),
    "history_store.find_by_instance_uuid limit": (
        lambda w, v: _history_of(w, limit=v),
        "limit",
        1,
        INT8_MAX,
        False,
    ),
    "history_store.find_by_instance_uuid offset": (
        lambda w, v: _history_of(w, offset=v),
        "offset",
        0,
        INT8_MAX,
        False,
    ),
    "instance_store.find_expired limit": (_find_expired_limit, "limit", 1, INT8_MAX, False),
    "instance_store.find_parked_timeouts limit": (
        lambda w, v: w.persistence.instance_store.find_parked_timeouts(limit=v),
        "limit",
        1,
        INT8_MAX,
        False,
    ),
    "instance_store.create version": (
        lambda w, v: _create_with(w, version=v),
        "version",
        0,
        INT4_MAX,
        False,
    ),
    "instance_store.create definition_version": (
        lambda w, v: _create_with(w, definition_version=v),
        "definition_version",
        1,
        INT4_MAX,
        True,
    ),
    "instance_store.create timeout_retry.attempts": (
        lambda w, v: _create_with(w, timeout_retry=TimeoutRetry(v, "e")),
        "timeout_retry.attempts",
        1,
        INT4_MAX,
        False,
    ),
    "instance_store.update version": (_update_version, "version", 1, INT4_MAX, False),
    "instance_store.count_instances definition_version": (
        lambda w, v: w.persistence.instance_store.count_instances(
            workflow_name=NAME, definition_version=v
        ),
        "definition_version",
        1,
        INT4_MAX,
        False,
    ),
    "history_store.append definition_version": (
        lambda w, v: _append(w, definition_version=v),
        "definition_version",
        1,
        INT4_MAX,
        True,
    ),
    "definition_store.ensure version": (
        lambda w, v: w.persistence.definition_store.ensure(
            workflow_name="other", version=v, content_hash="sha256:x", definition_json={}
        ),
        "version",
        1,
        INT4_MAX,
        False,
    ),
    "definition_store.find_by_name_and_version version": (
        lambda w, v: w.persistence.definition_store.find_by_name_and_version(NAME, v),
        "version",
        1,
        INT4_MAX,
        False,
    ),
}


@st.composite
def int_cases(draw: st.DrawFn) -> tuple[str, Any]:
    entry = draw(st.sampled_from(sorted(INT_ENTRIES)))
    _, _, minimum, maximum, none_ok = INT_ENTRIES[entry]
    return entry, draw(bad_ints(minimum, maximum, none_ok=none_ok))


@HOSTILE
@given(case=int_cases())
@example(case=("runtime.get_history limit", 2**63))
@example(case=("runtime.get_history offset", 2**63))
@example(case=("instance_store.create version", 2**31))
@example(case=("instance_store.count_instances definition_version", 2**31))
@example(case=("runtime.sweep limit", 10**5000))
async def test_bad_limits_offsets_and_integers_are_refused(
    world: World, case: tuple[str, Any]
) -> None:
    entry, bad = case
    call, argument = INT_ENTRIES[entry][:2]
    await world.ready()
    await refused(world, lambda: call(world, bad), InvalidArgumentError, argument)


async def test_the_largest_limits_and_offsets_are_accepted(world: World) -> None:
    instance_uuid = await world.ready()
    assert len(await world.runtime.get_history(instance_uuid, limit=INT8_MAX)) == 0
    assert await world.runtime.get_history(instance_uuid, limit=1, offset=INT8_MAX) == []
    assert await world.runtime.find_parked_timeouts(limit=INT8_MAX) == []
    instance = make_instance(version=INT4_MAX, definition_version=INT4_MAX)
    await world.persistence.instance_store.create(instance)
    stored = await world.persistence.instance_store.find_by_uuid(instance.uuid)
    assert stored is not None
    assert stored.version == INT4_MAX


# ---------------------------------------------------------------------------------------------
# Text that PostgreSQL's text type cannot hold


def bad_texts(*, non_empty: bool = True, none_ok: bool = False) -> st.SearchStrategy[Any]:
    choices = [
        NUL_TEXT,
        SURROGATE_TEXT,
        st.integers(),
        st.binary(max_size=4),
        st.lists(st.text(max_size=2), max_size=2),
        st.builds(EvilRepr),
    ]
    if non_empty:
        choices.append(st.just(""))
    if not none_ok:
        choices.append(st.none())
    return st.one_of(choices)


TextEntry = Callable[[World, Any], Awaitable[object]]
# name -> (call, fragment, must be non-empty, None accepted)
TEXT_ENTRIES: dict[str, tuple[TextEntry, str, bool, bool]] = {
    "instance_store.create workflow_name": (
        lambda w, v: _create_with(w, workflow_name=v),
        "workflow_name",
        True,
        False,
    ),
    "instance_store.create current_state": (
        lambda w, v: _create_with(w, current_state=v),
        "current_state",
        True,
        False,
    ),
    "instance_store.create timeout_retry.last_error": (
        lambda w, v: _create_with(w, timeout_retry=TimeoutRetry(1, v)),
        "timeout_retry.last_error",
        False,
        False,
    ),
    "instance_store.update current_state": (
        lambda w, v: _update_with(w, current_state=v),
        "current_state",
        True,
        False,
    ),
    "instance_store.count_instances workflow_name": (
        lambda w, v: w.persistence.instance_store.count_instances(
            workflow_name=v, definition_version=1
        ),
        "workflow_name",
        True,
        False,
    ),
    "instance_store.count_instances exclude_states": (
        lambda w, v: w.persistence.instance_store.count_instances(
            workflow_name=NAME, definition_version=1, exclude_states=["done", v]
        ),
        "exclude_states",
        True,
        False,
    ),
    "instance_store.find_parked_timeouts workflow_name": (
        lambda w, v: w.persistence.instance_store.find_parked_timeouts(workflow_name=v),
        "workflow_name",
        True,
        True,
    ),
    "history_store.append from_state": (
        lambda w, v: _append_record(w, from_state=v),
        "from_state",
        False,
        True,
    ),
    "history_store.append event_name": (
        lambda w, v: _append_record(w, event_name=v),
        "event_name",
        True,
        False,
    ),
    "history_store.append to_state": (
        lambda w, v: _append_record(w, to_state=v),
        "to_state",
        True,
        False,
    ),
    "history_store.append outcome": (
        lambda w, v: _append_record(w, outcome=v),
        "outcome",
        True,
        False,
    ),
    "history_store.append error_message": (
        lambda w, v: _append_record(w, error_message=v),
        "error_message",
        False,
        True,
    ),
    "history_store.append rejected_by": (
        lambda w, v: _append_record(w, rejected_by=v),
        "rejected_by",
        False,
        True,
    ),
    "definition_store.ensure workflow_name": (
        lambda w, v: w.persistence.definition_store.ensure(
            workflow_name=v, version=1, content_hash="sha256:x", definition_json={}
        ),
        "workflow_name",
        True,
        False,
    ),
    "definition_store.ensure content_hash": (
        lambda w, v: w.persistence.definition_store.ensure(
            workflow_name="other", version=1, content_hash=v, definition_json={}
        ),
        "content_hash",
        True,
        False,
    ),
    "definition_store.list_versions workflow_name": (
        lambda w, v: w.persistence.definition_store.list_versions(v),
        "workflow_name",
        True,
        False,
    ),
    "runtime.find_parked_timeouts workflow_name": (
        lambda w, v: w.runtime.find_parked_timeouts(workflow_name=v),
        "workflow_name",
        True,
        True,
    ),
}


async def _append_record(w: World, **fields: Any) -> None:
    record = replace(_history(await w.ready()), **fields)
    await w.persistence.history_store.append(record)


@st.composite
def text_cases(draw: st.DrawFn) -> tuple[str, Any]:
    entry = draw(st.sampled_from(sorted(TEXT_ENTRIES)))
    _, _, non_empty, none_ok = TEXT_ENTRIES[entry]
    return entry, draw(bad_texts(non_empty=non_empty, none_ok=none_ok))


@HOSTILE
@given(case=text_cases())
@example(case=("instance_store.create workflow_name", "w\ud800"))
@example(case=("history_store.append event_name", "\udfff"))
@example(case=("definition_store.ensure workflow_name", "wf\x00"))
async def test_text_postgresql_cannot_store_is_refused(world: World, case: tuple[str, Any]) -> None:
    entry, bad = case
    call, argument = TEXT_ENTRIES[entry][:2]
    await world.ready()
    await refused(world, lambda: call(world, bad), InvalidArgumentError, argument)
