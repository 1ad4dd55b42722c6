"""Workflow definitions: the model, the JSON shape, validation and the content hash."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from duraflows_pg_async import (
    CommandRegistry,
    DefinitionRegistry,
    WorkflowRuntime,
    memory_workflow_providers,
)
from duraflows_pg_async._definitions.canonical_json import canonical_json as _canonical_json
from duraflows_pg_async._definitions.model import (
    CommandRef,
    Event,
    GuardRef,
    OnEnter,
    State,
    Timeout,
    WorkflowDefinition,
)
from duraflows_pg_async._definitions.validation import validate_definition
from duraflows_pg_async.errors import (
    InvalidArgumentError,
    WorkflowDefinitionError,
    WorkflowError,
)


def order_workflow() -> WorkflowDefinition:
    """A realistic workflow: guard, commands with metadata, an onEnter chain, a timeout."""
    return WorkflowDefinition(
        name="order",
        version=3,
        version_policy="latest",
        initial_state="draft",
        states={
            "draft": State(
                events={
                    "submit": Event(
                        target_state="awaiting_payment",
                        guard=GuardRef("has_items", metadata={"min_items": 1}),
                        commands=[CommandRef("reserve_stock")],
                    ),
                    "cancel": Event(target_state="cancelled"),
                },
                context={"channel": "web"},
            ),
            "awaiting_payment": State(
                events={
                    "remind": Event(commands=[CommandRef("send_reminder")]),
                    "pay": Event(
                        target_state="paid",
                        error_state="payment_failed",
                        commands=[
                            CommandRef("charge_card", metadata={"provider": "stripe"}),
                            CommandRef("send_receipt"),
                        ],
                        metadata={"label": "Pay now"},
                    ),
                    "expire": Event(target_state="cancelled", timeout=Timeout(hours=24)),
                }
            ),
            "payment_failed": State(events={"retry": Event(target_state="awaiting_payment")}),
            "paid": State(
                on_enter=OnEnter(
                    target_state="fulfilling",
                    error_state="on_hold",
                    commands=[CommandRef("notify_warehouse")],
                ),
                context={"paid": True},
            ),
            "fulfilling": State(
                events={
                    "ship": Event(target_state="shipped"),
                    "escalate": Event(
                        target_state="on_hold", timeout=Timeout(days=2, hours=12, minutes=0)
                    ),
                },
                on_enter=OnEnter(commands=[CommandRef("book_courier", metadata={"speed": 2})]),
            ),
            "on_hold": State(
                events={
                    "resume": Event(target_state="fulfilling"),
                    "cancel": Event(target_state="cancelled"),
                }
            ),
            "shipped": State(metadata={"final": True}),
            "cancelled": State(),
        },
    )


ORDER_DICT: dict[str, Any] = {
    "name": "order",
    "version": 3,
    "versionPolicy": "latest",
    "initialState": "draft",
    "states": {
        "draft": {
            "events": {
                "submit": {
                    "targetState": "awaiting_payment",
                    "commands": [{"name": "reserve_stock"}],
                    "guard": {"name": "has_items", "metadata": {"min_items": 1}},
                },
                "cancel": {"targetState": "cancelled"},
            },
            "context": {"channel": "web"},
        },
        "awaiting_payment": {
            "events": {
                "remind": {"commands": [{"name": "send_reminder"}]},
                "pay": {
                    "targetState": "paid",
                    "errorState": "payment_failed",
                    "commands": [
                        {"name": "charge_card", "metadata": {"provider": "stripe"}},
                        {"name": "send_receipt"},
                    ],
                    "metadata": {"label": "Pay now"},
                },
                "expire": {"targetState": "cancelled", "timeout": {"afterHours": 24}},
            }
        },
        "payment_failed": {"events": {"retry": {"targetState": "awaiting_payment"}}},
        "paid": {
            "onEnter": {
                "targetState": "fulfilling",
                "errorState": "on_hold",
                "commands": [{"name": "notify_warehouse"}],
            },
            "context": {"paid": True},
        },
        "fulfilling": {
            "events": {
                "ship": {"targetState": "shipped"},
                "escalate": {
                    "targetState": "on_hold",
                    "timeout": {"afterHours": 12, "afterDays": 2},
                },
            },
            "onEnter": {"commands": [{"name": "book_courier", "metadata": {"speed": 2}}]},
        },
        "on_hold": {
            "events": {
                "resume": {"targetState": "fulfilling"},
                "cancel": {"targetState": "cancelled"},
            }
        },
        "shipped": {"metadata": {"final": True}},
        "cancelled": {},
    },
}


def simple(**changes: Any) -> WorkflowDefinition:
    """A valid two-state workflow; ``changes`` replace its fields."""
    base = WorkflowDefinition(
        name="simple",
        initial_state="a",
        states={"a": State(events={"go": Event(target_state="b")}), "b": State()},
    )
    return dataclasses.replace(base, **changes)


def problems_of(error: WorkflowDefinitionError) -> list[str]:
    """The problem lines of a validation or parse error (each after the summary line)."""
    lines = str(error).split("\n")
    assert all(line.startswith("  - ") for line in lines[1:]), str(error)
    return [line[4:] for line in lines[1:]]


def invalid(definition: WorkflowDefinition, **kwargs: Any) -> list[str]:
    with pytest.raises(WorkflowDefinitionError) as info:
        validate_definition(definition, **kwargs)
    return problems_of(info.value)


# ------------------------------------------------------------------------------------------------
# The model


def test_defaults_are_empty_and_a_state_without_events_is_terminal() -> None:
    state = State()
    assert state.events == {}
    assert state.context == {}
    assert state.metadata == {}
    assert state.on_enter is None
    assert state.is_terminal
    assert State(on_enter=OnEnter(commands=[CommandRef("log")])).is_terminal
    assert not State(events={"go": Event(target_state="x")}).is_terminal
    event = Event()
    assert (event.target_state, event.error_state, event.commands) == (None, None, ())
    assert (event.guard, event.timeout, event.metadata) == (None, None, {})
    definition = WorkflowDefinition(name="w", initial_state="s", states={"s": state})
    assert (definition.version, definition.version_policy) == (1, "pinned")


def test_lists_become_tuples_so_equality_ignores_the_spelling() -> None:
    as_list = Event(commands=[CommandRef("a"), CommandRef("b")])
    as_tuple = Event(commands=(CommandRef("a"), CommandRef("b")))
    assert as_list.commands == (CommandRef("a"), CommandRef("b"))
    assert type(as_list.commands) is tuple
    assert as_list == as_tuple
    assert type(OnEnter(commands=[CommandRef("a")]).commands) is tuple


def test_mappings_are_copied_and_none_means_empty() -> None:
    metadata = {"k": 1}
    events = {"go": Event(target_state="b")}
    ref = CommandRef("x", metadata=metadata)
    state = State(events=events)
    metadata["k"] = 2
    events["other"] = Event(target_state="c")
    assert ref.metadata == {"k": 1}
    assert list(state.events) == ["go"]
    assert GuardRef("g", metadata=None).metadata == {}  # type: ignore[arg-type]
    assert State(events=None, context=None).events == {}  # type: ignore[arg-type]


def test_definitions_are_frozen_and_compare_by_value() -> None:
    definition = order_workflow()
    with pytest.raises(dataclasses.FrozenInstanceError):
        definition.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        definition.states["draft"].on_enter = None  # type: ignore[misc]
    assert definition == order_workflow()
    assert definition != dataclasses.replace(definition, version=4)
    with pytest.raises(TypeError, match="unhashable"):
        hash(definition)


def test_state_order_is_kept() -> None:
    assert list(order_workflow().states) == [
        "draft",
        "awaiting_payment",
        "payment_failed",
        "paid",
        "fulfilling",
        "on_hold",
        "shipped",
        "cancelled",
    ]
    assert list(order_workflow().states["awaiting_payment"].events) == ["remind", "pay", "expire"]


def test_timeout_parts_add_up() -> None:
    assert Timeout(minutes=30, hours=1, days=2).to_timedelta() == timedelta(
        days=2, hours=1, minutes=30
    )
    assert Timeout(hours=1.5).to_timedelta() == timedelta(minutes=90)
    assert Timeout().to_timedelta() == timedelta(0)
    assert Timeout(seconds=90, minutes=1).to_timedelta() == timedelta(seconds=150)


def test_seconds_are_written_only_when_set_so_upstream_snapshots_keep_their_hash() -> None:
    def flow(timeout: Timeout) -> WorkflowDefinition:
        return WorkflowDefinition(
            name="t",
            initial_state="a",
            states={
                "a": State(events={"go": Event(target_state="b", timeout=timeout)}),
                "b": State(),
            },
        )

    plain = flow(Timeout(minutes=5))
    assert plain.to_dict()["states"]["a"]["events"]["go"]["timeout"] == {"afterMinutes": 5}
    assert plain.content_hash() == flow(Timeout(minutes=5, seconds=0)).content_hash()
    quick = flow(Timeout(seconds=10))
    assert quick.to_dict()["states"]["a"]["events"]["go"]["timeout"] == {"afterSeconds": 10}
    assert WorkflowDefinition.from_dict(quick.to_dict()) == quick
    assert quick.content_hash() != plain.content_hash()
    assert "s0 --> s1 : go after 10s\n" in quick.to_mermaid()
    with pytest.raises(WorkflowDefinitionError, match="timeout seconds"):
        validate_definition(flow(Timeout(seconds=-1)))


def test_timeout_event_is_the_first_event_with_a_timeout() -> None:
    definition = order_workflow()
    name, event = definition.timeout_event("awaiting_payment") or ("", Event())
    assert name == "expire"
    assert event.timeout == Timeout(hours=24)
    assert definition.timeout_event("draft") is None
    assert definition.timeout_event("cancelled") is None
    # Definition order decides, even in a definition validation would refuse.
    two = WorkflowDefinition(
        name="two",
        initial_state="s",
        states={
            "s": State(
                events={
                    "plain": Event(target_state="s"),
                    "late": Event(target_state="s", timeout=Timeout(days=1)),
                    "early": Event(target_state="s", timeout=Timeout(minutes=1)),
                }
            )
        },
    )
    assert two.timeout_event("s") == ("late", Event(target_state="s", timeout=Timeout(days=1)))


def test_timeout_event_of_an_unknown_state_names_it() -> None:
    with pytest.raises(WorkflowDefinitionError, match='state "gone" is not defined in version 3'):
        order_workflow().timeout_event("gone")


# ------------------------------------------------------------------------------------------------
# to_dict / from_dict


def test_to_dict_gives_the_upstream_shape_and_leaves_defaults_out() -> None:
    assert order_workflow().to_dict() == ORDER_DICT
    assert simple().to_dict() == {
        "name": "simple",
        "initialState": "a",
        "states": {"a": {"events": {"go": {"targetState": "b"}}}, "b": {}},
    }


def test_an_unset_version_is_1_and_left_out_of_the_json_as_upstream_stores_it() -> None:
    unset = simple()
    written = WorkflowDefinition(
        name=unset.name, initial_state=unset.initial_state, states=unset.states, version=1
    )
    assert unset.version == written.version == 1
    assert type(unset.version) is int
    assert unset == written
    assert unset.content_hash() == written.content_hash()
    assert "version" not in unset.to_dict()
    assert written.to_dict()["version"] == 1
    # The JSON round trip, a copy and a replace keep whether the author wrote it.
    assert "version" not in WorkflowDefinition.from_dict(unset.to_dict()).to_dict()
    assert WorkflowDefinition.from_dict(written.to_dict()).to_dict()["version"] == 1
    assert "version" not in copy.deepcopy(unset).to_dict()
    assert "version" not in dataclasses.replace(unset, name="other").to_dict()
    assert dataclasses.replace(unset, version=2).to_dict()["version"] == 2


async def test_the_stored_snapshot_of_an_unversioned_definition_has_no_version_key() -> None:
    definitions = DefinitionRegistry()
    definitions.register(simple())
    persistence = memory_workflow_providers()
    runtime = WorkflowRuntime(
        definitions=definitions, commands=CommandRegistry(), persistence=persistence
    )
    await runtime.create_instance("simple")
    stored = await persistence.definition_store.find_by_name_and_version("simple", 1)
    assert stored is not None
    assert "version" not in stored.definition_json
    assert stored.definition_json == simple().to_dict()


def test_to_dict_keeps_definition_order() -> None:
    data = order_workflow().to_dict()
    assert list(data) == ["name", "version", "versionPolicy", "initialState", "states"]
    assert list(data["states"]) == list(ORDER_DICT["states"])
    assert list(data["states"]["awaiting_payment"]["events"]) == ["remind", "pay", "expire"]


def test_to_dict_returns_copies() -> None:
    definition = order_workflow()
    data = definition.to_dict()
    data["states"]["shipped"]["metadata"]["final"] = False
    data["states"]["draft"]["events"]["submit"]["guard"]["metadata"]["min_items"] = 9
    assert definition.states["shipped"].metadata == {"final": True}
    assert definition.states["draft"].events["submit"].guard == GuardRef(
        "has_items", metadata={"min_items": 1}
    )


@pytest.mark.parametrize("definition", [order_workflow(), simple()], ids=["order", "simple"])
def test_round_trip_through_dict_and_json(definition: WorkflowDefinition) -> None:
    assert WorkflowDefinition.from_dict(definition.to_dict()) == definition
    text = json.dumps(definition.to_dict())
    assert WorkflowDefinition.from_dict(json.loads(text)) == definition


def test_from_dict_reads_the_upstream_shape() -> None:
    definition = WorkflowDefinition.from_dict(ORDER_DICT)
    assert definition == order_workflow()
    assert definition.to_dict() == ORDER_DICT
    assert definition.states["fulfilling"].events["escalate"].timeout == Timeout(days=2, hours=12)


def test_from_dict_defaults_and_null_optionals() -> None:
    definition = WorkflowDefinition.from_dict(
        {
            "name": "w",
            "initialState": "s",
            "states": {
                "s": {
                    "events": {"e": {"targetState": "s", "errorState": None, "guard": None}},
                    "onEnter": None,
                    "metadata": None,
                }
            },
            "versionPolicy": None,
        }
    )
    assert definition == WorkflowDefinition(
        name="w", initial_state="s", states={"s": State(events={"e": Event(target_state="s")})}
    )
    assert (definition.version, definition.version_policy) == (1, "pinned")


def test_from_dict_copies_metadata_deeply() -> None:
    data = copy.deepcopy(ORDER_DICT)
    definition = WorkflowDefinition.from_dict(data)
    data["states"]["draft"]["context"]["channel"] = "phone"
    data["states"]["draft"]["events"]["submit"]["guard"]["metadata"]["min_items"] = 5
    assert definition == order_workflow()


def _with(path: list[str | int], value: Any) -> dict[str, Any]:
    """ORDER_DICT with the value at ``path`` replaced (or removed when value is ...)."""
    data = copy.deepcopy(ORDER_DICT)
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


PAY = ["states", "awaiting_payment", "events", "pay"]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (_with(["name"], ...), "name is required"),
        (_with(["name"], 7), "name must be a string"),
        (_with(["initialState"], ...), "initialState is required"),
        (_with(["states"], ...), "states is required"),
        (_with(["states"], ["draft"]), "states must be an object"),
        (_with(["version"], "3"), "version must be an integer, got '3'"),
        (_with(["version"], True), "version must be an integer, got True"),
        (
            _with(["versionPolicy"], "newest"),
            'versionPolicy must be "pinned" or "latest", got \'newest\'',
        ),
        (
            _with(["initial"], "draft"),
            "the definition has an unknown key 'initial' "
            "(allowed: name, version, versionPolicy, initialState, states)",
        ),
        (_with(["states", "cancelled"], "end"), "states.cancelled must be an object"),
        (
            _with(["states", "cancelled", "onExit"], {}),
            "states.cancelled has an unknown key 'onExit' "
            "(allowed: events, onEnter, context, metadata)",
        ),
        (_with([*PAY, "targetState"], 5), f"{'.'.join(PAY)}.targetState must be a string"),
        (_with([*PAY, "errorState"], ["x"]), f"{'.'.join(PAY)}.errorState must be a string"),
        (
            _with([*PAY, "target"], "paid"),
            f"{'.'.join(PAY)} has an unknown key 'target' "
            "(allowed: targetState, errorState, commands, guard, timeout, metadata)",
        ),
        (_with([*PAY, "commands"], "charge_card"), f"{'.'.join(PAY)}.commands must be an array"),
        (
            _with([*PAY, "commands", 1], {"metadata": {}}),
            f"{'.'.join(PAY)}.commands[1].name is required",
        ),
        (_with([*PAY, "commands", 0], "charge"), f"{'.'.join(PAY)}.commands[0] must be an object"),
        (_with([*PAY, "metadata"], ["x"]), f"{'.'.join(PAY)}.metadata must be an object"),
        (
            _with([*PAY, "commands", 0, "metadata"], 1),
            f"{'.'.join(PAY)}.commands[0].metadata must be an object",
        ),
        (
            _with(["states", "draft", "events", "submit", "guard"], "has_items"),
            "states.draft.events.submit.guard must be an object",
        ),
        (
            _with(["states", "draft", "events", "submit", "guard", "name"], None),
            "states.draft.events.submit.guard.name is required",
        ),
        (
            _with(["states", "awaiting_payment", "events", "expire", "timeout"], 30),
            "states.awaiting_payment.events.expire.timeout must be an object",
        ),
        (
            _with(["states", "awaiting_payment", "events", "expire", "timeout"], {"hours": 2}),
            "states.awaiting_payment.events.expire.timeout has an unknown key 'hours' "
            "(allowed: afterSeconds, afterMinutes, afterHours, afterDays)",
        ),
        (
            _with(
                ["states", "awaiting_payment", "events", "expire", "timeout", "afterHours"], "24"
            ),
            "states.awaiting_payment.events.expire.timeout.afterHours must be a number, got '24'",
        ),
        (
            _with(
                ["states", "awaiting_payment", "events", "expire", "timeout", "afterHours"], True
            ),
            "states.awaiting_payment.events.expire.timeout.afterHours must be a number, got True",
        ),
        (_with(["states", "paid", "onEnter"], []), "states.paid.onEnter must be an object"),
        (
            _with(["states", "paid", "onEnter", "targetState"], 1),
            "states.paid.onEnter.targetState must be a string",
        ),
        (
            _with(["states", "paid", "onEnter", "guard"], {"name": "g"}),
            "states.paid.onEnter has an unknown key 'guard' "
            "(allowed: targetState, errorState, commands, metadata)",
        ),
        (_with(["states", "paid", "context"], "x"), "states.paid.context must be an object"),
        (_with(["states", "paid", "events"], []), "states.paid.events must be an object"),
        (
            _with(["states", 3], {}),
            "states has a key 3 that is not a string",
        ),
    ],
)
def test_from_dict_names_the_path_of_a_shape_problem(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(WorkflowDefinitionError) as info:
        WorkflowDefinition.from_dict(data)
    assert problems_of(info.value) == [problem]
    name = data.get("name")
    assert info.value.workflow_name == (name if isinstance(name, str) else "<unnamed>")
    assert str(info.value).split("\n")[0].endswith("cannot read the definition (1 problem):")


def test_from_dict_reports_every_shape_problem_at_once() -> None:
    data = _with([*PAY, "targetState"], 5)
    data["states"]["draft"]["events"]["submit"]["timeout"] = {"afterDays": "1"}
    data["versionPolicy"] = "sometimes"
    with pytest.raises(WorkflowDefinitionError) as info:
        WorkflowDefinition.from_dict(data)
    assert str(info.value).startswith(
        'Workflow "order": cannot read the definition (3 problems):\n'
    )
    assert problems_of(info.value) == [
        'versionPolicy must be "pinned" or "latest", got \'sometimes\'',
        "states.draft.events.submit.timeout.afterDays must be a number, got '1'",
        "states.awaiting_payment.events.pay.targetState must be a string",
    ]


def test_from_dict_of_something_that_is_not_an_object() -> None:
    with pytest.raises(WorkflowDefinitionError) as info:
        WorkflowDefinition.from_dict(["order"])  # type: ignore[arg-type]
    assert problems_of(info.value) == ["the definition must be an object"]
    assert info.value.workflow_name == "<unnamed>"


def test_from_dict_checks_shape_not_rules() -> None:
    # An unknown target state is a rule (validate_definition), not a shape problem.
    data = _with([*PAY, "targetState"], "nowhere")
    definition = WorkflowDefinition.from_dict(data)
    assert definition.states["awaiting_payment"].events["pay"].target_state == "nowhere"
    assert invalid(definition) == [
        'state "awaiting_payment" event "pay": target state "nowhere" is not defined in states'
    ]


def test_the_docs_example_and_its_json_agree() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "defining-workflows.md").read_text("utf-8")
    python_block = re.findall(r"```python\n(.*?)```", doc, re.S)[0]
    json_block = re.findall(r"```json\n(.*?)```", doc, re.S)[0]
    namespace: dict[str, Any] = {}
    # The page imports from the package root; the names live in _definitions.
    exec(
        python_block.replace(
            "from duraflows_pg_async import", "from duraflows_pg_async._definitions.model import"
        ),
        namespace,
    )
    order = namespace["order"]
    assert order.to_dict() == json.loads(json_block)
    assert WorkflowDefinition.from_dict(json.loads(json_block)) == order
    assert validate_definition(order) == []


# ------------------------------------------------------------------------------------------------
# Validation


def test_a_valid_definition_has_no_warnings() -> None:
    assert validate_definition(order_workflow()) == []
    assert validate_definition(simple()) == []


def test_unreachable_states_are_warnings_not_errors() -> None:
    definition = simple(
        states={
            "a": State(events={"go": Event(target_state="b")}),
            "b": State(),
            "island": State(events={"back": Event(target_state="a")}),
            "lost": State(on_enter=OnEnter(target_state="b")),
        }
    )
    assert validate_definition(definition) == [
        'state "island" is not reachable from the initial state "a"',
        'state "lost" is not reachable from the initial state "a"',
    ]


def test_states_reached_through_error_states_and_on_enter_count_as_reachable() -> None:
    definition = simple(
        states={
            "a": State(events={"go": Event(error_state="b", commands=[CommandRef("c")])}),
            "b": State(on_enter=OnEnter(target_state="c", error_state="d")),
            "c": State(),
            "d": State(),
        }
    )
    assert validate_definition(definition) == []


def _state_with_events(**events: Event) -> dict[str, State]:
    return {"a": State(events=events), "b": State()}


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        pytest.param(simple(name=""), ["name must be a non-empty string, got ''"], id="name"),
        pytest.param(
            simple(name="a\x00b"), ["name must not contain NUL characters, got 'a\\x00b'"], id="nul"
        ),
        pytest.param(
            simple(states={}),
            ["states must define at least one state", 'initial state "a" is not defined in states'],
            id="no-states",
        ),
        pytest.param(
            simple(initial_state="start"),
            ['initial state "start" is not defined in states'],
            id="initial",
        ),
        pytest.param(
            simple(initial_state=""),
            ["initial_state must be a non-empty string, got ''"],
            id="initial-empty",
        ),
        pytest.param(
            simple(version=0),
            ["version must be a positive integer of at most 9007199254740991, got 0"],
            id="version-0",
        ),
        pytest.param(
            simple(version=2**53),
            [
                "version must be a positive integer of at most 9007199254740991, "
                "got 9007199254740992"
            ],
            id="version-unsafe",
        ),
        pytest.param(
            simple(version=True),
            ["version must be a positive integer of at most 9007199254740991, got True"],
            id="version-bool",
        ),
        pytest.param(
            simple(version="2"),
            ["version must be a positive integer of at most 9007199254740991, got '2'"],
            id="version-str",
        ),
        pytest.param(
            simple(version_policy="newest"),
            ['version_policy must be "pinned" or "latest", got \'newest\''],
            id="policy",
        ),
        pytest.param(
            simple(states=_state_with_events(go=Event(target_state="nowhere"))),
            ['state "a" event "go": target state "nowhere" is not defined in states'],
            id="target",
        ),
        pytest.param(
            simple(
                states=_state_with_events(
                    go=Event(target_state="b", error_state="oops", commands=[CommandRef("c")])
                )
            ),
            ['state "a" event "go": error state "oops" is not defined in states'],
            id="error-state",
        ),
        pytest.param(
            simple(states=_state_with_events(go=Event(target_state="b"), noop=Event())),
            [
                'state "a" event "noop": must define at least one of target_state, error_state '
                "or commands"
            ],
            id="empty-event",
        ),
        pytest.param(
            simple(states=_state_with_events(go=Event(target_state="b"), **{"$go": Event("b")})),
            ['state "a": event name "$go" starts with "$", which is reserved'],
            id="reserved",
        ),
        pytest.param(
            simple(states=_state_with_events(**{"": Event(target_state="b")})),
            ["state \"a\": event name must be a non-empty string, got ''"],
            id="event-name",
        ),
        pytest.param(
            simple(
                states={
                    "a": State(events={"go": Event(target_state="b")}),
                    "b": State(),
                    "": State(),
                }
            ),
            ["state name must be a non-empty string, got ''"],
            id="state-name",
        ),
        pytest.param(
            simple(
                states=_state_with_events(
                    go=Event(target_state="b"),
                    soon=Event(target_state="b", timeout=Timeout(minutes=5)),
                    later=Event(target_state="b", timeout=Timeout(days=1)),
                )
            ),
            [
                'state "a": at most one event per state may have a timeout, found 2 '
                '("soon", "later")'
            ],
            id="two-timeouts",
        ),
        pytest.param(
            simple(states=_state_with_events(go=Event(target_state="b", timeout=Timeout()))),
            [
                'state "a" event "go": timeout must have at least one positive part '
                "(seconds, minutes, hours, days)"
            ],
            id="timeout-zero",
        ),
        pytest.param(
            simple(
                states=_state_with_events(
                    go=Event(target_state="b", timeout=Timeout(hours=-1, minutes=5))
                )
            ),
            ['state "a" event "go": timeout hours must be non-negative, got -1'],
            id="timeout-negative",
        ),
        pytest.param(
            simple(
                states=_state_with_events(
                    go=Event(target_state="b", timeout=Timeout(minutes=math.nan))
                )
            ),
            ['state "a" event "go": timeout minutes must be a finite number, got nan'],
            id="timeout-nan",
        ),
        pytest.param(
            simple(
                states=_state_with_events(
                    go=Event(target_state="b", timeout=Timeout(days=math.inf))
                )
            ),
            ['state "a" event "go": timeout days must be a finite number, got inf'],
            id="timeout-inf",
        ),
        pytest.param(
            simple(
                states=_state_with_events(
                    go=Event(target_state="b", timeout=Timeout(days="1"))  # type: ignore[arg-type]
                )
            ),
            ['state "a" event "go": timeout days must be a number, got \'1\''],
            id="timeout-str",
        ),
        pytest.param(
            simple(
                states=_state_with_events(go=Event(target_state="b", timeout=Timeout(days=1e12)))
            ),
            [
                'state "a" event "go": timeout days must be at most 100 years (36525 days), '
                "got 1000000000000.0"
            ],
            id="timeout-overflow",
        ),
        pytest.param(
            simple(
                states=_state_with_events(
                    go=Event(target_state="b", timeout=Timeout(minutes=1e-12))
                )
            ),
            ['state "a" event "go": timeout must be longer than zero, got 0:00:00'],
            id="timeout-rounds-to-zero",
        ),
        pytest.param(
            simple(
                states={
                    "a": State(events={"go": Event(target_state="b")}),
                    "b": State(on_enter=OnEnter(target_state="c")),
                }
            ),
            ['state "b" onEnter: target state "c" is not defined in states'],
            id="on-enter-target",
        ),
        pytest.param(
            simple(
                states={
                    "a": State(events={"go": Event(target_state="b")}),
                    "b": State(on_enter=OnEnter(commands=[CommandRef("x")], error_state="z")),
                }
            ),
            ['state "b" onEnter: error state "z" is not defined in states'],
            id="on-enter-error",
        ),
        pytest.param(
            simple(states={"a": State(events={"go": Event(target_state="b")}), "b": {}}),
            ['state "b" must be a State, got dict'],
            id="state-type",
        ),
        pytest.param(
            simple(states={"a": State(events={"go": {"target_state": "b"}}), "b": State()}),  # type: ignore[dict-item]
            ['state "a": event "go" must be an Event, got dict'],
            id="event-type",
        ),
        pytest.param(
            simple(states=_state_with_events(go=Event(commands=("charge",)))),  # type: ignore[arg-type]
            ['state "a" event "go": commands[0] must be a CommandRef, got str'],
            id="command-type",
        ),
        pytest.param(
            simple(states=_state_with_events(go=Event(commands="charge"))),  # type: ignore[arg-type]
            ['state "a" event "go": commands must be a tuple or list of CommandRef, got str'],
            id="commands-str",
        ),
        pytest.param(
            simple(states=_state_with_events(go=Event(commands=(CommandRef(""),)))),
            ['state "a" event "go": command name must be a non-empty string, got \'\''],
            id="command-name",
        ),
        pytest.param(
            simple(
                states=_state_with_events(
                    go=Event(target_state="b", guard="is_ok")  # type: ignore[arg-type]
                )
            ),
            ['state "a" event "go": guard must be a GuardRef or None, got str'],
            id="guard-type",
        ),
        pytest.param(
            simple(states=_state_with_events(go=Event(target_state="b", metadata={"s": {1, 2}}))),
            [
                'state "a" event "go" metadata[\'s\']: set value {1, 2} is not JSON '
                "(allowed: dict, list, str, int, float, bool, None)"
            ],
            id="metadata-json",
        ),
        pytest.param(
            simple(
                states={
                    "a": State(events={"go": Event(target_state="b")}),
                    "b": State(context={"x": math.inf}),
                }
            ),
            ["state \"b\" context['x']: inf is not a JSON number"],
            id="context-json",
        ),
    ],
)
def test_each_rule_alone(definition: WorkflowDefinition, expected: list[str]) -> None:
    assert invalid(definition) == expected


def test_command_and_guard_names_are_checked_when_given() -> None:
    definition = order_workflow()
    commands = {
        "reserve_stock",
        "send_reminder",
        "charge_card",
        "send_receipt",
        "notify_warehouse",
        "book_courier",
    }
    assert validate_definition(definition, command_names=commands, guard_names=["has_items"]) == []
    assert invalid(
        definition,
        command_names=commands - {"charge_card", "book_courier"},
        guard_names=[],
    ) == [
        'state "draft" event "submit": guard "has_items" is not registered',
        'state "awaiting_payment" event "pay": command "charge_card" is not registered',
        'state "fulfilling" onEnter: command "book_courier" is not registered',
    ]
    # Without the collections nothing is cross-checked.
    assert validate_definition(definition) == []


def test_every_problem_is_listed_in_one_error() -> None:
    definition = WorkflowDefinition(
        name="broken",
        initial_state="start",
        version=0,
        states={
            "a": State(
                events={
                    "$tick": Event(target_state="a"),
                    "go": Event(target_state="nowhere", timeout=Timeout()),
                    "wait": Event(commands=[CommandRef("c")], timeout=Timeout(hours=1)),
                },
                on_enter=OnEnter(target_state="b"),
            ),
            "b": State(on_enter=OnEnter(target_state="a")),
        },
    )
    with pytest.raises(WorkflowDefinitionError) as info:
        validate_definition(definition, command_names=[])
    error = info.value
    assert isinstance(error, WorkflowError)
    assert error.workflow_name == "broken"
    assert str(error).split("\n")[0] == 'Workflow "broken": invalid definition (8 problems):'
    assert problems_of(error) == [
        "version must be a positive integer of at most 9007199254740991, got 0",
        'initial state "start" is not defined in states',
        'state "a": event name "$tick" starts with "$", which is reserved',
        'state "a" event "go": target state "nowhere" is not defined in states',
        (
            'state "a" event "go": timeout must have at least one positive part '
            "(seconds, minutes, hours, days)"
        ),
        'state "a" event "wait": command "c" is not registered',
        'state "a": at most one event per state may have a timeout, found 2 ("go", "wait")',
        "Cycle detected in onEnter chain: a -> b -> a",
    ]


@pytest.mark.parametrize(
    ("on_enter", "cycles"),
    [
        pytest.param({"a": OnEnter(target_state="a")}, ["a -> a"], id="self"),
        pytest.param(
            {
                "a": OnEnter(target_state="b"),
                "b": OnEnter(target_state="c"),
                "c": OnEnter(target_state="a"),
            },
            ["a -> b -> c -> a"],
            id="three",
        ),
        pytest.param(
            # The path starts where the cycle starts, not at the state that leads into it.
            {
                "start": OnEnter(target_state="a"),
                "a": OnEnter(target_state="b"),
                "b": OnEnter(commands=[CommandRef("x")], error_state="a"),
            },
            ["a -> b -> a"],
            id="through-error-state",
        ),
        pytest.param(
            {"a": OnEnter(target_state="b", error_state="a"), "b": OnEnter(target_state="a")},
            ["a -> b -> a", "a -> a"],
            id="two-cycles",
        ),
        pytest.param(
            {"a": OnEnter(target_state="b"), "b": OnEnter(target_state="c")},
            [],
            id="chain-without-cycle",
        ),
    ],
)
def test_on_enter_cycles_are_reported_with_their_path(
    on_enter: dict[str, OnEnter], cycles: list[str]
) -> None:
    names = ["start", "a", "b", "c"]
    definition = WorkflowDefinition(
        name="loops",
        initial_state="start",
        states={
            name: State(
                events={"next": Event(target_state=names[(i + 1) % len(names)])},
                on_enter=on_enter.get(name),
            )
            for i, name in enumerate(names)
        },
    )
    if not cycles:
        assert validate_definition(definition) == []
        return
    assert invalid(definition) == [f"Cycle detected in onEnter chain: {c}" for c in cycles]


def test_validate_refuses_something_that_is_not_a_definition() -> None:
    with pytest.raises(InvalidArgumentError, match="must be a WorkflowDefinition, got dict"):
        validate_definition(ORDER_DICT)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# Content hash


def test_content_hash_format_and_a_known_vector() -> None:
    definition = WorkflowDefinition(name="w", initial_state="s", states={"s": State()})
    text = '{"initialState":"s","name":"w","states":{"s":{}}}'
    assert (
        _canonical_json({k: v for k, v in definition.to_dict().items() if k != "version"}) == text
    )
    expected = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    assert definition.content_hash() == expected
    assert expected == "sha256:1804199bad82b28441b515107373b6243072ad86771ea34c0fcdf75122958a0f"


def test_content_hash_ignores_version_policy_and_order_but_not_content() -> None:
    definition = order_workflow()
    digest = definition.content_hash()
    assert digest == order_workflow().content_hash()
    assert (
        dataclasses.replace(definition, version=99, version_policy="pinned").content_hash()
        == digest
    )
    reordered = dataclasses.replace(
        definition, states=dict(reversed(list(definition.states.items())))
    )
    assert reordered.content_hash() == digest
    changed = dataclasses.replace(
        definition,
        states={**definition.states, "cancelled": State(metadata={"final": True})},
    )
    assert changed.content_hash() != digest
    renamed = dataclasses.replace(definition, name="order2")
    assert renamed.content_hash() != digest


def test_canonical_json_of_the_brief_example() -> None:
    assert _canonical_json({"b": 1, "a": [1.5, "é\n"]}) == '{"a":[1.5,"é\\n"],"b":1}'


def test_keys_sort_by_utf16_code_units_not_code_points() -> None:
    keys = {"\uffff": 1, "\U0001f600": 2}
    # Code points put U+FFFF first; UTF-16 (D83D DE00 vs FFFF) puts the emoji first.
    assert sorted(keys) == ["\uffff", "\U0001f600"]
    assert _canonical_json(keys) == '{"\U0001f600":2,"\uffff":1}'
    assert _canonical_json({"b": 1, "a": 2, "B": 3, "é": 4, "": 5}) == (
        '{"":5,"B":3,"a":2,"b":1,"é":4}'
    )


def test_array_index_keys_come_first_in_numeric_order_as_in_a_js_object() -> None:
    data = {"10": 1, "9": 2, "a": 3, "01": 4, "4294967294": 5, "4294967295": 6, "-1": 7}
    assert _canonical_json(data) == (
        '{"9":2,"10":1,"4294967294":5,"-1":7,"01":4,"4294967295":6,"a":3}'
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (100.0, "100"),
        (-2.5, "-2.5"),
        (0.1, "0.1"),
        (-0.0, "0"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1.5e22, "1.5e+22"),
        (1e-6, "0.000001"),
        (1.5e-6, "0.0000015"),
        (1e-7, "1e-7"),
        (-1.25e-7, "-1.25e-7"),
        (123e-20, "1.23e-18"),
        (123456789.125, "123456789.125"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (1 / 3, "0.3333333333333333"),
        (0, "0"),
        (42, "42"),
        (-(2**53) + 1, "-9007199254740991"),
        (2**53 + 1, "9007199254740992"),  # a JavaScript number is a double
        (10**21, "1e+21"),
        (2**1100, "null"),  # Infinity in JavaScript
        (math.nan, "null"),
        (math.inf, "null"),
        (True, "true"),
        (False, "false"),
        (None, "null"),
    ],
)
def test_numbers_and_literals_print_as_javascript_does(value: object, text: str) -> None:
    assert _canonical_json(value) == text
    assert _canonical_json([value]) == f"[{text}]"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("\b\f\n\r\t", '"\\b\\f\\n\\r\\t"'),
        ("\x00\x01\x1f", '"\\u0000\\u0001\\u001f"'),
        ("\x7f", '"\x7f"'),
        ("a/b", '"a/b"'),
        ("\u2028\u2029", '"\u2028\u2029"'),
        ("é☃𝄞", '"é☃𝄞"'),
        ("\ud800", '"\\ud800"'),
        ("x\udfffy", '"x\\udfffy"'),
        ("\ud83d\ude00", '"\U0001f600"'),  # a surrogate pair spelt as two code points
        ("\ude00\ud83d", '"\\ude00\\ud83d"'),  # the wrong way round: two lone surrogates
    ],
)
def test_strings_escape_as_javascript_does(value: str, text: str) -> None:
    assert _canonical_json(value) == text


def test_hash_of_something_that_is_not_json_is_refused() -> None:
    definition = simple(states={"a": State(metadata={"when": {1, 2}})})
    with pytest.raises(
        InvalidArgumentError, match=r"^states\.a\.metadata\.when: set value is not JSON"
    ):
        definition.content_hash()


# ------------------------------------------------------------------------------------------------
# The same hash as the TypeScript runtime computes, checked with node

# Canonicalise as the TypeScript runtime does (sorted keys into a fresh object; a null-prototype
# object so that a "__proto__" key stays an ordinary key), then JSON.stringify and sha256.
_NODE_SCRIPT = r"""
const crypto = require("crypto");
function canon(v) {
  if (Array.isArray(v)) return v.map(canon);
  if (v !== null && typeof v === "object") {
    const out = Object.create(null);
    for (const k of Object.keys(v).sort()) if (v[k] !== undefined) out[k] = canon(v[k]);
    return out;
  }
  return v;
}
let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const out = JSON.parse(input).map((definition) => {
    const { version, versionPolicy, ...rest } = definition;
    const text = JSON.stringify(canon(rest));
    const hash = crypto.createHash("sha256").update(text, "utf8").digest("hex");
    return { text, hash: "sha256:" + hash };
  });
  process.stdout.write(JSON.stringify(out));
});
"""


def _node_definitions() -> list[WorkflowDefinition]:
    numbers = [1.0, 1e21, 1e-7, 0.1, -0.0, 1.5, 1e20, 123e-20, 5e-324, 1.7976931348623157e308]
    numbers += [2**53 + 1, 10**22, 1 / 3, -1e-6, 12345.678e10]
    return [
        order_workflow(),
        simple(),
        WorkflowDefinition(
            name="unicode \u00e9\u2603\U0001d11e",
            initial_state="\U0001f600",
            states={
                "\U0001f600": State(
                    events={"\uffff": Event(target_state="\uffff"), "go": Event("é")},
                    metadata={
                        "text": '"quoted" back\\slash \b\f\n\r\t \x00\x01\x1f\x7f \u2028\u2029',
                        "lone": "\ud800 and \udfff",
                        "pair": "\ud83d\ude00",
                    },
                ),
                "\uffff": State(),
                "é": State(context={"__proto__": {"x": 1}, "constructor": 2}),
            },
        ),
        WorkflowDefinition(
            name="numbers",
            initial_state="s",
            states={
                "s": State(
                    events={"t": Event(target_state="s", timeout=Timeout(minutes=0.5, days=1e-3))},
                    context={"numbers": numbers, "flags": [True, False, None]},
                    metadata={
                        "10": 1,
                        "9": 2,
                        "01": 3,
                        "4294967294": 4,
                        "4294967295": 5,
                        "9007199254740991": 6,
                        "-1": 7,
                        "1.5": 8,
                        "": 9,
                        "nested": {"b": [{"z": 1, "a": {"y": [], "x": {}}}], "a": 0},
                    },
                )
            },
        ),
    ]


@pytest.mark.skipif(
    shutil.which("node") is None, reason="node is not on PATH: no JavaScript to compare with"
)
def test_canonical_text_and_hash_match_javascript() -> None:
    definitions = _node_definitions()
    payload = json.dumps([d.to_dict() for d in definitions])  # ASCII, lone surrogates escaped
    node = shutil.which("node")
    assert node is not None
    completed = subprocess.run(
        [node, "-e", _NODE_SCRIPT],
        input=payload.encode("ascii"),
        capture_output=True,
        check=True,
        timeout=60,
    )
    results = json.loads(completed.stdout.decode("utf-8"))
    assert len(results) == len(definitions)
    for definition, result in zip(definitions, results, strict=True):
        data = definition.to_dict()
        data.pop("version", None)
        data.pop("versionPolicy", None)
        assert _canonical_json(data) == result["text"], definition.name
        assert definition.content_hash() == result["hash"], definition.name


# ------------------------------------------------------------------------------------------------
# Bounds: deep documents, long chains, long durations and long names

HUGE = 20_000_090


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"k": value}
    return value


@pytest.mark.parametrize(
    ("path", "where"),
    [
        (["states", "paid", "metadata"], "states.paid.metadata"),
        (["states", "paid", "context"], "states.paid.context"),
        (["states", "paid", "onEnter", "metadata"], "states.paid.onEnter.metadata"),
        (
            ["states", "draft", "events", "submit", "metadata"],
            "states.draft.events.submit.metadata",
        ),
        (
            ["states", "draft", "events", "submit", "guard", "metadata"],
            "states.draft.events.submit.guard.metadata",
        ),
        (
            ["states", "paid", "onEnter", "commands", 0, "metadata"],
            "states.paid.onEnter.commands[0].metadata",
        ),
    ],
)
def test_from_dict_refuses_a_document_nested_5000_deep_and_names_where(
    path: list[str | int], where: str
) -> None:
    data = _with(path, _nested(5000))
    with pytest.raises(WorkflowDefinitionError) as info:
        WorkflowDefinition.from_dict(data)
    (problem,) = problems_of(info.value)
    assert problem.startswith(f"{where}['k']['k']")
    assert problem.endswith(": nested deeper than 200 levels")
    assert len(str(info.value)) < 1024


def test_from_dict_reads_a_document_200_levels_deep() -> None:
    ok = _nested(199)  # 200 objects in all
    definition = WorkflowDefinition.from_dict(_with(["states", "paid", "metadata"], ok))
    assert definition.states["paid"].metadata == ok


def _chain(length: int, *, back_to: int | None = None) -> WorkflowDefinition:
    names = [f"s{i}" for i in range(length)]
    states = {
        name: State(on_enter=OnEnter(target_state=names[i + 1]))
        for i, name in enumerate(names[:-1])
    }
    last = OnEnter(target_state=names[back_to]) if back_to is not None else None
    states[names[-1]] = State(on_enter=last)
    return WorkflowDefinition(name="chain", initial_state="s0", states=states)


def test_an_on_enter_chain_of_2000_states_validates() -> None:
    assert validate_definition(_chain(2000)) == []


def test_a_cycle_of_2000_states_is_reported_briefly() -> None:
    (problem,) = invalid(_chain(2000, back_to=0))
    assert problem == (
        "Cycle detected in onEnter chain: s0 -> s1 -> s2 -> s3 -> s4 -> ... (1991 more) -> "
        "s1996 -> s1997 -> s1998 -> s1999 -> s0"
    )


def _timeout_definition(timeout: Timeout) -> WorkflowDefinition:
    return simple(states=_state_with_events(go=Event(target_state="b", timeout=timeout)))


@pytest.mark.parametrize(
    "timeout",
    [
        Timeout(days=36525),
        Timeout(hours=36525 * 24),
        Timeout(minutes=36525 * 24 * 60),
        Timeout(days=36524, hours=23, minutes=60),
    ],
)
def test_a_timeout_of_100_years_is_accepted(timeout: Timeout) -> None:
    assert validate_definition(_timeout_definition(timeout)) == []
    assert timeout.to_timedelta() == timedelta(days=36525)


@pytest.mark.parametrize(
    ("timeout", "problem"),
    [
        (Timeout(days=3e6), "timeout days must be at most 100 years (36525 days), got 3000000.0"),
        (
            Timeout(minutes=1e300),
            "timeout minutes must be at most 100 years (36525 days), got 1e+300",
        ),
        (
            Timeout(hours=10**400),
            "timeout hours must be at most 100 years (36525 days), got <int of 1329 bits>",
        ),
        (Timeout(days=-(10**400)), "timeout days must be non-negative, got <int of 1329 bits>"),
        (Timeout(days=True), "timeout days must be a number, got True"),
        (
            Timeout(days=36525, minutes=1),
            "timeout must be at most 100 years (36525 days) in all, got 36525 days",
        ),
        (
            Timeout(days=20000, hours=20000 * 24),
            "timeout must be at most 100 years (36525 days) in all, got 40000 days",
        ),
    ],
)
def test_a_timeout_longer_than_100_years_is_refused_at_registration(
    timeout: Timeout, problem: str
) -> None:
    assert invalid(_timeout_definition(timeout)) == [f'state "a" event "go": {problem}']


@pytest.mark.parametrize(
    ("timeout", "message"),
    [
        (Timeout(days=3e6), "Timeout days must be at most 100 years"),
        (Timeout(days=10**400), "Timeout days must be at most 100 years"),
        (Timeout(hours=math.nan), "Timeout hours must be a finite number"),
        (Timeout(minutes=-1), "Timeout minutes must be non-negative"),
        (Timeout(days=36525, minutes=1), "Timeout must be at most 100 years"),
    ],
)
def test_to_timedelta_of_a_timeout_registration_refuses_names_the_part(
    timeout: Timeout, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        timeout.to_timedelta()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (3e6, "afterDays must be at most 100 years (36525 days), got 3000000.0"),
        (math.inf, "afterDays must be a finite number, got inf"),
        (-1, "afterDays must be non-negative, got -1"),
    ],
)
def test_from_dict_bounds_timeout_parts(value: object, problem: str) -> None:
    data = _with(
        ["states", "awaiting_payment", "events", "expire", "timeout"], {"afterDays": value}
    )
    with pytest.raises(WorkflowDefinitionError) as info:
        WorkflowDefinition.from_dict(data)
    assert problems_of(info.value) == [f"states.awaiting_payment.events.expire.timeout.{problem}"]


def test_long_state_names_are_cut_in_validation_messages() -> None:
    long = "s" * HUGE
    definition = simple(
        initial_state=long,
        states={"a": State(events={"go": Event(target_state=long + "x")}), "b": State()},
    )
    with pytest.raises(WorkflowDefinitionError) as info:
        validate_definition(definition)
    problems = problems_of(info.value)
    assert len(problems) == 2
    assert all(len(problem) < 400 for problem in problems)
    assert problems[0].startswith('initial state "sss')
    assert problems[0].endswith(f'... ({HUGE} characters)" is not defined in states')
    assert f"({HUGE + 1} characters)" in problems[1]
    assert len(str(info.value)) < 1024


def test_a_long_state_name_is_cut_in_from_dict_paths_and_timeout_event() -> None:
    long = "p" * HUGE
    data = copy.deepcopy(ORDER_DICT)
    data["states"][long] = {"events": {"e" * HUGE: {"targetState": 5}}}
    with pytest.raises(WorkflowDefinitionError) as info:
        WorkflowDefinition.from_dict(data)
    (problem,) = problems_of(info.value)
    assert problem.endswith(f"({HUGE} characters).targetState must be a string")
    assert len(problem) < 1024
    with pytest.raises(WorkflowDefinitionError) as missing:
        order_workflow().timeout_event(long)
    assert len(str(missing.value)) < 1024
    assert f"({HUGE} characters)" in str(missing.value)


def test_a_long_workflow_name_and_unknown_key_are_cut() -> None:
    data = copy.deepcopy(ORDER_DICT)
    data["name"] = "n" * HUGE
    data["k" * HUGE] = 1
    with pytest.raises(WorkflowDefinitionError) as info:
        WorkflowDefinition.from_dict(data)
    assert info.value.workflow_name == "n" * HUGE  # the attribute keeps the full name
    assert len(str(info.value)) < 1024
    assert str(info.value).count(f"({HUGE} characters)") == 2


def test_an_error_lists_at_most_100_problems() -> None:
    states = {f"s{i}": State(events={"go": Event(target_state="nowhere")}) for i in range(250)}
    definition = WorkflowDefinition(name="many", initial_state="s0", states=states)
    with pytest.raises(WorkflowDefinitionError) as info:
        validate_definition(definition)
    lines = str(info.value).split("\n")
    assert lines[0] == 'Workflow "many": invalid definition (250 problems):'
    assert len(lines) == 1 + 100 + 1
    assert lines[-1] == "  - ... and 150 more"


def test_a_state_with_many_timeout_events_names_five() -> None:
    events = {f"e{i}": Event(target_state="b", timeout=Timeout(minutes=1)) for i in range(1000)}
    (problem,) = invalid(simple(states={"a": State(events=events), "b": State()}))
    assert problem == (
        'state "a": at most one event per state may have a timeout, found 1000 '
        '("e0", "e1", "e2", "e3", "e4", ...)'
    )
