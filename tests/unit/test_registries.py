"""Definition, command and guard registries."""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import pytest

from duraflows_pg_async._core.model import CommandResult
from duraflows_pg_async._definitions.model import (
    CommandRef,
    Event,
    GuardRef,
    OnEnter,
    State,
    WorkflowDefinition,
)
from duraflows_pg_async._definitions.registries import (
    CommandRegistry,
    DefinitionRegistry,
    GuardRegistry,
    RegisteredCommand,
    RegisteredGuard,
)
from duraflows_pg_async.errors import (
    InvalidArgumentError,
    WorkflowDefinitionError,
    WorkflowError,
)


def workflow(name: str = "order", version: int = 1, **state_changes: State) -> WorkflowDefinition:
    states = {
        "new": State(
            events={
                "pay": Event(
                    target_state="paid",
                    commands=[CommandRef("charge")],
                    guard=GuardRef("has_items"),
                )
            }
        ),
        "paid": State(on_enter=OnEnter(commands=[CommandRef("notify")])),
        **state_changes,
    }
    return WorkflowDefinition(name=name, version=version, initial_state="new", states=states)


# ------------------------------------------------------------------------------------------------
# DefinitionRegistry


def test_get_returns_the_latest_version_or_the_one_asked_for() -> None:
    registry = DefinitionRegistry()
    v2, v1, v10 = workflow(version=2), workflow(version=1), workflow(version=10)
    for definition in (v2, v1, v10):
        registry.register(definition)
    assert registry.get("order") == v10
    assert registry.get("order", 1) == v1
    assert registry.get("order", 2) == v2
    assert registry.versions("order") == [1, 2, 10]
    assert registry.find("order") == v10
    assert registry.find("order", 2) == v2


def test_names_iteration_and_latest() -> None:
    registry = DefinitionRegistry()
    shipping_v1 = workflow("shipping")
    order_v1, order_v2 = workflow("order"), workflow("order", 2)
    billing = workflow("billing", 4)
    for definition in (shipping_v1, order_v2, billing, order_v1):
        registry.register(definition)
    assert registry.names() == ["shipping", "order", "billing"]
    assert list(registry) == [shipping_v1, order_v1, order_v2, billing]
    assert registry.latest() == [shipping_v1, order_v2, billing]
    assert len(registry) == 4
    assert "order" in registry
    assert "refund" not in registry
    assert registry.versions("refund") == []


def test_an_empty_registry() -> None:
    registry = DefinitionRegistry()
    assert registry.names() == []
    assert list(registry) == []
    assert registry.latest() == []
    assert len(registry) == 0


def test_unknown_name_and_version() -> None:
    registry = DefinitionRegistry()
    registry.register(workflow(version=1))
    registry.register(workflow(version=3))
    with pytest.raises(WorkflowDefinitionError) as info:
        registry.get("refund")
    assert str(info.value) == 'Workflow "refund": Workflow not found in registry'
    assert info.value.workflow_name == "refund"
    with pytest.raises(WorkflowDefinitionError) as info:
        registry.get("order", 2)
    assert str(info.value) == (
        'Workflow "order": version 2 is not registered (registered versions: 1, 3)'
    )
    assert registry.find("refund") is None
    assert registry.find("order", 2) is None


@pytest.mark.parametrize("version", ["1", 1.0, True])
def test_a_version_that_is_not_an_int_is_refused(version: Any) -> None:
    registry = DefinitionRegistry()
    registry.register(workflow())
    with pytest.raises(InvalidArgumentError, match="version must be an integer"):
        registry.get("order", version)
    with pytest.raises(InvalidArgumentError, match="version must be an integer"):
        registry.find("order", version)


def test_registering_the_same_name_and_version_twice_is_refused() -> None:
    registry = DefinitionRegistry()
    first = workflow()
    registry.register(first)
    changed = workflow(shipped=State())
    with pytest.raises(WorkflowDefinitionError) as info:
        registry.register(changed)
    assert str(info.value) == (
        'Workflow "order": version 1 is already registered; bump the version to register '
        "changed content"
    )
    with pytest.raises(WorkflowDefinitionError, match="version 1 is already registered"):
        registry.register(workflow())  # identical content too
    assert registry.get("order") == first
    assert len(registry) == 1


def test_an_invalid_definition_is_refused_and_not_kept() -> None:
    registry = DefinitionRegistry()
    broken = workflow(paid=State(on_enter=OnEnter(target_state="nowhere")))
    with pytest.raises(WorkflowDefinitionError) as info:
        registry.register(broken)
    assert 'state "paid" onEnter: target state "nowhere" is not defined in states' in str(
        info.value
    )
    assert registry.find("order") is None
    assert registry.names() == []


def test_something_that_is_not_a_definition_is_refused() -> None:
    registry = DefinitionRegistry()
    with pytest.raises(InvalidArgumentError, match="must be a WorkflowDefinition, got dict"):
        registry.register(workflow().to_dict())  # type: ignore[arg-type]
    assert len(registry) == 0


def test_command_and_guard_names_are_cross_checked_when_given() -> None:
    registry = DefinitionRegistry()
    with pytest.raises(WorkflowDefinitionError) as info:
        registry.register(workflow(), command_names=["charge"], guard_names=[])
    message = str(info.value)
    assert 'state "new" event "pay": guard "has_items" is not registered' in message
    assert 'state "paid" onEnter: command "notify" is not registered' in message
    assert 'command "charge"' not in message
    registry.register(workflow(), command_names=["charge", "notify"], guard_names=["has_items"])
    assert registry.versions("order") == [1]


def test_warnings_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    registry = DefinitionRegistry()
    with caplog.at_level(logging.WARNING, logger="duraflows_pg_async"):
        registry.register(workflow(version=2, archived=State()))
    records = [r for r in caplog.records if r.name == "duraflows_pg_async"]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert records[0].getMessage() == (
        'Workflow "order" version 2: state "archived" is not reachable from the initial state "new"'
    )
    assert registry.get("order", 2).states["archived"] == State()


def test_no_warning_for_a_fully_reachable_definition(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="duraflows_pg_async"):
        DefinitionRegistry().register(workflow())
    assert [r for r in caplog.records if r.name == "duraflows_pg_async"] == []


def test_the_registry_keeps_its_own_copy() -> None:
    registry = DefinitionRegistry()
    definition = workflow(done=State(metadata={"tags": ["a"]}))
    snapshot = copy.deepcopy(definition)
    registry.register(definition)
    # A frozen dataclass still holds ordinary dicts: later changes must not reach the registry.
    definition.states["done"].metadata["tags"].append("b")
    definition.states["new"].events["pay"].metadata["x"] = 1  # type: ignore[index]
    stored = registry.get("order")
    assert stored.states["done"].metadata == {"tags": ["a"]}
    assert stored.states["new"].events["pay"].metadata == {}
    assert stored == snapshot
    assert stored.content_hash() == snapshot.content_hash() != definition.content_hash()


# ------------------------------------------------------------------------------------------------
# CommandRegistry


def charge(subject: Any, ctx: Any) -> CommandResult:
    return CommandResult(ok=True)


async def notify(subject: Any, ctx: Any) -> None:
    return None


def test_register_and_get_commands() -> None:
    commands = CommandRegistry()
    commands.register("charge", charge)
    commands.register("notify", notify, best_effort=True)
    assert commands.get("charge") == RegisteredCommand(name="charge", fn=charge, best_effort=False)
    assert commands.get("notify") == RegisteredCommand(name="notify", fn=notify, best_effort=True)
    assert commands.get("charge").fn is charge
    assert commands.names() == ["charge", "notify"]
    assert "charge" in commands
    assert "refund" not in commands
    assert len(commands) == 2


def test_command_decorator_registers_and_returns_the_function() -> None:
    commands = CommandRegistry()

    @commands.command("reserve")
    async def reserve(subject: Any, ctx: Any) -> CommandResult:
        return CommandResult(ok=False, code="OUT_OF_STOCK")

    @commands.command("audit", best_effort=True)
    def audit(subject: Any, ctx: Any) -> None:
        return None

    assert commands.get("reserve") == RegisteredCommand("reserve", reserve, False)
    assert commands.get("audit") == RegisteredCommand("audit", audit, True)
    assert audit(None, None) is None  # still the plain function
    assert commands.names() == ["reserve", "audit"]


def test_duplicate_command_is_refused_and_the_first_kept() -> None:
    commands = CommandRegistry()
    commands.register("charge", charge)
    with pytest.raises(WorkflowError) as info:
        commands.register("charge", notify, best_effort=True)
    assert str(info.value) == 'Command "charge" is already registered'
    assert not isinstance(info.value, InvalidArgumentError)
    with pytest.raises(WorkflowError, match='Command "charge" is already registered'):
        commands.command("charge")(notify)
    assert commands.get("charge").fn is charge


def test_unknown_command() -> None:
    with pytest.raises(WorkflowError) as info:
        CommandRegistry().get("refund")
    assert str(info.value) == 'Command "refund" is not registered'


@pytest.mark.parametrize(
    ("name", "fn", "kwargs", "message"),
    [
        ("", charge, {}, "command name must be a non-empty string, got ''"),
        (None, charge, {}, "command name must be a non-empty string, got None"),
        ("charge", "charge", {}, 'command "charge" must be callable, got str'),
        ("charge", None, {}, 'command "charge" must be callable, got NoneType'),
        ("charge", charge, {"best_effort": "yes"}, "best_effort must be a bool, got 'yes'"),
    ],
)
def test_bad_command_registration(name: Any, fn: Any, kwargs: dict[str, Any], message: str) -> None:
    commands = CommandRegistry()
    with pytest.raises(InvalidArgumentError) as info:
        commands.register(name, fn, **kwargs)
    assert str(info.value) == message
    assert commands.names() == []


def test_registered_command_is_frozen() -> None:
    registered = RegisteredCommand("charge", charge)
    assert registered.best_effort is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        registered.best_effort = True  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------
# GuardRegistry


def has_items(subject: Any, ctx: Any) -> bool:
    return bool(subject)


def test_register_and_get_guards() -> None:
    guards = GuardRegistry()
    guards.register("has_items", has_items)

    @guards.guard("is_paid")
    async def is_paid(subject: Any, ctx: Any) -> bool:
        return True

    assert guards.get("has_items") == RegisteredGuard(name="has_items", fn=has_items)
    assert guards.get("is_paid").fn is is_paid
    assert is_paid.__name__ == "is_paid"
    assert guards.names() == ["has_items", "is_paid"]
    assert "is_paid" in guards
    assert "is_open" not in guards
    assert len(guards) == 2


def test_duplicate_and_unknown_guards() -> None:
    guards = GuardRegistry()
    guards.register("has_items", has_items)
    with pytest.raises(WorkflowError) as info:
        guards.register("has_items", lambda subject, ctx: True)
    assert str(info.value) == 'Guard "has_items" is already registered'
    assert guards.get("has_items").fn is has_items
    with pytest.raises(WorkflowError) as info:
        guards.get("is_open")
    assert str(info.value) == 'Guard "is_open" is not registered'


@pytest.mark.parametrize(
    ("name", "fn", "message"),
    [
        ("", has_items, "guard name must be a non-empty string, got ''"),
        (3, has_items, "guard name must be a non-empty string, got 3"),
        ("has_items", True, 'guard "has_items" must be callable, got bool'),
    ],
)
def test_bad_guard_registration(name: Any, fn: Any, message: str) -> None:
    guards = GuardRegistry()
    with pytest.raises(InvalidArgumentError) as info:
        guards.register(name, fn)
    assert str(info.value) == message
    assert guards.names() == []


def test_registries_feed_the_definition_cross_check() -> None:
    commands, guards = CommandRegistry(), GuardRegistry()
    commands.register("charge", charge)
    guards.register("has_items", has_items)
    definitions = DefinitionRegistry()
    with pytest.raises(WorkflowDefinitionError, match='command "notify" is not registered'):
        definitions.register(workflow(), command_names=commands.names(), guard_names=guards.names())
    commands.register("notify", notify)
    definitions.register(workflow(), command_names=commands.names(), guard_names=guards.names())
    assert definitions.get("order") == workflow()


# ------------------------------------------------------------------------------------------------
# Messages repeat a bounded part of the input

HUGE = 20_000_090


def _short(error: BaseException) -> str:
    text = str(error)
    assert len(text) < 1024, len(text)
    assert f"({HUGE} characters)" in text
    return text


def test_lookups_of_huge_names_give_short_messages() -> None:
    long = "n" * HUGE
    definitions = DefinitionRegistry()
    definitions.register(workflow())
    with pytest.raises(WorkflowDefinitionError) as info:
        definitions.get(long)
    assert _short(info.value).endswith('": Workflow not found in registry')
    assert info.value.workflow_name == long
    with pytest.raises(WorkflowError) as command:
        CommandRegistry().get(long)
    assert _short(command.value).startswith('Command "nnn')
    with pytest.raises(WorkflowError) as guard:
        GuardRegistry().get(long)
    assert _short(guard.value).startswith('Guard "nnn')


def test_registrations_with_huge_names_give_short_messages() -> None:
    long = "n" * HUGE
    commands, guards = CommandRegistry(), GuardRegistry()
    commands.register(long, charge)
    guards.register(long, has_items)
    with pytest.raises(WorkflowError) as duplicate:
        commands.register(long, charge)
    _short(duplicate.value)
    with pytest.raises(WorkflowError) as duplicate_guard:
        guards.register(long, has_items)
    _short(duplicate_guard.value)
    with pytest.raises(InvalidArgumentError) as not_callable:
        commands.register(long + "x", None)  # type: ignore[arg-type]
    assert len(str(not_callable.value)) < 1024
    with pytest.raises(InvalidArgumentError) as bad_flag:
        commands.register("c", charge, best_effort="y" * HUGE)  # type: ignore[arg-type]
    _short(bad_flag.value)


@pytest.mark.parametrize("name", [["order"], {"order": 1}, None, 5])
def test_a_workflow_name_that_is_not_a_string_is_refused(name: Any) -> None:
    definitions = DefinitionRegistry()
    definitions.register(workflow())
    with pytest.raises(InvalidArgumentError, match="workflow name must be a string"):
        definitions.get(name)
    with pytest.raises(InvalidArgumentError, match="workflow name must be a string"):
        definitions.find(name)


def test_a_huge_version_gives_a_short_message() -> None:
    definitions = DefinitionRegistry()
    definitions.register(workflow())
    with pytest.raises(WorkflowDefinitionError, match="<int of 16610 bits>") as info:
        definitions.get("order", 10**5000)
    assert len(str(info.value)) < 200
    with pytest.raises(InvalidArgumentError) as bad:
        definitions.get("order", "1" * HUGE)  # type: ignore[arg-type]
    _short(bad.value)
