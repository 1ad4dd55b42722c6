"""``WorkflowDefinition.to_mermaid()``: what the diagram shows, and that no name can break it."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from duraflows_pg_async._cli.demo import ORDER
from duraflows_pg_async._definitions.diagram import label
from duraflows_pg_async._definitions.model import (
    CommandRef,
    Event,
    GuardRef,
    OnEnter,
    State,
    Timeout,
    WorkflowDefinition,
)
from duraflows_pg_async.errors import InvalidArgumentError

ROOT = Path(__file__).parents[2]
PARSER = Path(__file__).with_name("mermaid_parse.mjs")

# Every element: a guard, commands, an event that stays in place, a timeout of three parts and
# one of a fraction, an error route, an onEnter with both hops and commands, an onEnter with
# only an error hop (its state still ends the diagram), an onEnter without hops, end states.
EVERYTHING = WorkflowDefinition(
    name="everything",
    initial_state="new",
    states={
        "new": State(
            events={
                "submit": Event(
                    target_state="review",
                    guard=GuardRef("complete"),
                    commands=[CommandRef("stamp"), CommandRef("notify")],
                ),
                "comment": Event(commands=[CommandRef("add_comment")]),
                "expire": Event(
                    target_state="closed", timeout=Timeout(days=1, hours=12, minutes=30)
                ),
            }
        ),
        "review": State(
            events={
                "approve": Event(
                    target_state="charging",
                    error_state="rejected",
                    commands=[CommandRef("check")],
                )
            }
        ),
        "charging": State(
            on_enter=OnEnter(
                target_state="done", error_state="failed", commands=[CommandRef("charge")]
            )
        ),
        "failed": State(on_enter=OnEnter(error_state="closed", commands=[CommandRef("refund")])),
        "done": State(on_enter=OnEnter(commands=[CommandRef("archive")])),
        "rejected": State(
            events={"reopen": Event(target_state="review", timeout=Timeout(hours=0.5))}
        ),
        "closed": State(),
    },
)

EVERYTHING_TEXT = """\
stateDiagram-v2
    direction TB
    state "new" as s0
    state "review" as s1
    state "charging" as s2
    state "failed" as s3
    state "done" as s4
    state "rejected" as s5
    state "closed" as s6
    [*] --> s0
    s0 --> s1 : submit [complete]
    s0 --> s0 : comment
    s0 --> s6 : expire after 1d 12h 30m
    s1 --> s2 : approve
    s1 --> s5 : approve (failure)
    s2 --> s4 : ⚡ onEnter
    s2 --> s3 : ⚡ onEnter (failure)
    s3 --> s6 : ⚡ onEnter (failure)
    s5 --> s1 : reopen after 0.5h
    s3 --> [*]
    s4 --> [*]
    s6 --> [*]
"""

EVERYTHING_WITH_COMMANDS_LR = """\
stateDiagram-v2
    direction LR
    state "new" as s0
    state "review" as s1
    state "charging" as s2
    state "failed" as s3
    state "done" as s4
    state "rejected" as s5
    state "closed" as s6
    [*] --> s0
    s0 --> s1 : submit [complete] / stamp, notify
    s0 --> s0 : comment / add_comment
    s0 --> s6 : expire after 1d 12h 30m
    s1 --> s2 : approve / check
    s1 --> s5 : approve (failure)
    s2 --> s4 : ⚡ onEnter / charge
    s2 --> s3 : ⚡ onEnter (failure)
    s3 --> s6 : ⚡ onEnter (failure) / refund
    s5 --> s1 : reopen after 0.5h
    s3 --> [*]
    s4 --> [*]
    s6 --> [*]
"""

DEMO_TEXT = """\
stateDiagram-v2
    direction TB
    state "cart" as s0
    state "awaiting_payment" as s1
    state "paid" as s2
    state "packing" as s3
    state "shipped" as s4
    state "payment_failed" as s5
    state "cancelled" as s6
    [*] --> s0
    s0 --> s0 : add_item
    s0 --> s1 : checkout [cart_not_empty]
    s1 --> s2 : pay
    s1 --> s5 : pay (failure)
    s1 --> s6 : payment_timeout after 30m
    s2 --> s3 : ⚡ onEnter
    s3 --> s4 : ⚡ onEnter
    s5 --> s1 : retry_payment
    s4 --> [*]
    s6 --> [*]
"""

QUICK_START_TEXT = """\
stateDiagram-v2
    direction TB
    state "submitted" as s0
    state "approved" as s1
    state "paid" as s2
    state "rejected" as s3
    state "escalated" as s4
    [*] --> s0
    s0 --> s1 : approve [within_budget]
    s0 --> s3 : reject
    s0 --> s4 : escalate after 3d
    s1 --> s2 : ⚡ onEnter
    s2 --> [*]
    s3 --> [*]
    s4 --> [*]
"""

HOSTILE = [
    "two words",
    'say "hi"',
    "a --> b",
    "%% comment",
    "%%{init: {'theme': 'dark'}}%%",
    "line\nbreak",
    "carriage\rreturn\ttab",
    "end",
    "state",
    "note",
    "direction",
    "direction TB",
    "x DIRECTION\u00a0lr",
    "class",
    "classDef x fill:#f00;",
    "style s0 fill:#f00;",
    "[*]",
    "s0",
    "a:b;c#d",
    "#35;",
    "<b>bold</b> &amp; <script>alert(1)</script>",
    "[[choice]]",
    "<<fork>>",
    "{",
    "}",
    "`markdown`",
    "back\\slash",
    "Ünïcødé ✓ 注文 😀",
    "bidi \u202eevil\u202c",
    "sep\u2028arated\u2029",
    "",
    " padded ",
]


def quick_start() -> WorkflowDefinition:
    """README's quick-start definition, built from the README's own code."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    tree = ast.parse(match.group(1))
    body: list[ast.stmt] = [
        node
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        or (
            isinstance(node, ast.Assign)
            and [getattr(target, "id", None) for target in node.targets] == ["expense"]
        )
    ]
    namespace: dict[str, Any] = {}
    exec(compile(ast.Module(body=body, type_ignores=[]), "README.md", "exec"), namespace)
    definition = namespace["expense"]
    assert isinstance(definition, WorkflowDefinition)
    return definition


def hostile_definition(name: str) -> WorkflowDefinition:
    """``name`` as a state, an event, a guard and a command, and as the initial state."""
    return WorkflowDefinition(
        name="hostile",
        initial_state=name,
        states={
            name: State(
                events={
                    name: Event(
                        target_state="other",
                        error_state=name,
                        guard=GuardRef(name),
                        commands=[CommandRef(name)],
                    ),
                    "go": Event(target_state=name),
                },
                on_enter=OnEnter(error_state="other", commands=[CommandRef(name)]),
            ),
            "other": State(),
        },
    )


def decoded(text: str) -> str:
    """A label as Mermaid shows it: entity codes back as their characters."""
    return re.sub(r"#(\d+);", lambda match: chr(int(match.group(1))), text)


# The only statements to_mermaid() writes; labels are what follows ``: `` and the quoted text.
STATEMENT = re.compile(
    r'    (?:direction (?:TB|BT|LR|RL)|state "(?P<state>[^"]*)" as s\d+'
    r"|(?:\[\*\]|s\d+) --> (?:\[\*\]|s\d+)(?: : (?P<label>.+))?)"
)


def labels(diagram: str) -> list[str]:
    lines = diagram.split("\n")
    assert lines[0] == "stateDiagram-v2"
    assert lines[-1] == ""
    found = []
    for line in lines[1:-1]:
        match = STATEMENT.fullmatch(line)
        assert match is not None, line
        found += [text for text in match.group("state", "label") if text is not None]
    return found


# --------------------------------------------------------------------------------------------
# What is drawn


def test_every_element() -> None:
    assert EVERYTHING.to_mermaid() == EVERYTHING_TEXT


def test_commands_and_direction_on_request() -> None:
    assert EVERYTHING.to_mermaid(show_commands=True, direction="LR") == EVERYTHING_WITH_COMMANDS_LR


def test_demo_workflow() -> None:
    assert ORDER.to_mermaid() == DEMO_TEXT


def test_readme_quick_start() -> None:
    assert quick_start().to_mermaid() == QUICK_START_TEXT


def test_docs_show_the_quick_start_diagram(capsys: pytest.CaptureFixture[str]) -> None:
    page = (ROOT / "docs" / "defining-workflows.md").read_text()
    section = page[page.index("## Diagrams") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    namespace: dict[str, Any] = {}
    exec(match.group(1), namespace)
    assert capsys.readouterr().out == QUICK_START_TEXT + "\n"
    assert namespace["expense"] == quick_start()
    assert f"```text\n{QUICK_START_TEXT}```" in section
    assert f"```mermaid\n{QUICK_START_TEXT}```" in section


def test_single_state() -> None:
    only = WorkflowDefinition(name="one", initial_state="only", states={"only": State()})
    assert only.to_mermaid().splitlines()[2:] == [
        '    state "only" as s0',
        "    [*] --> s0",
        "    s0 --> [*]",
    ]


def test_definition_order_and_stable_output() -> None:
    first = EVERYTHING.to_mermaid()
    assert first == EVERYTHING.to_mermaid()
    assert first == WorkflowDefinition.from_dict(EVERYTHING.to_dict()).to_mermaid()
    flipped = WorkflowDefinition(
        name="flip",
        initial_state="b",
        states={"b": State(events={"go": Event(target_state="a")}), "a": State()},
    )
    assert flipped.to_mermaid().splitlines()[2:] == [
        '    state "b" as s0',
        '    state "a" as s1',
        "    [*] --> s0",
        "    s0 --> s1 : go",
        "    s1 --> [*]",
    ]


def test_states_only_referred_to_are_declared_after_the_defined_ones() -> None:
    # An unregistered (invalid) definition still draws: the missing states are boxes too.
    broken = WorkflowDefinition(
        name="broken",
        initial_state="start",
        states={"a": State(events={"go": Event(target_state="nowhere", error_state="lost")})},
    )
    assert broken.to_mermaid().splitlines()[2:] == [
        '    state "a" as s0',
        '    state "start" as s1',
        '    state "nowhere" as s2',
        '    state "lost" as s3',
        "    [*] --> s1",
        "    s0 --> s2 : go",
        "    s0 --> s3 : go (failure)",
    ]


def test_timeout_parts() -> None:
    def text(timeout: Timeout) -> str:
        definition = WorkflowDefinition(
            name="t",
            initial_state="a",
            states={"a": State(events={"late": Event(target_state="a", timeout=timeout)})},
        )
        return definition.to_mermaid().splitlines()[-1]

    assert text(Timeout(days=14)) == "    s0 --> s0 : late after 14d"
    assert text(Timeout(hours=2, minutes=30)) == "    s0 --> s0 : late after 2h 30m"
    assert text(Timeout(days=1.0, hours=12)) == "    s0 --> s0 : late after 1d 12h"
    assert text(Timeout(minutes=0.25)) == "    s0 --> s0 : late after 0.25m"


def test_direction_is_checked() -> None:
    with pytest.raises(InvalidArgumentError, match="direction must be one of TB, BT, LR, RL"):
        EVERYTHING.to_mermaid(direction="sideways")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Hostile names


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_stay_inside_labels(name: str) -> None:
    diagram = hostile_definition(name).to_mermaid(show_commands=True)
    # One statement a line, each of the forms above: ids are generated, never a name.
    assert diagram.count("\n") == len(diagram.splitlines())
    found = labels(diagram)
    assert decoded(found[0]) == (name or " ")  # the state's label; an empty one is a blank
    for text in found:
        plain = re.sub(r"#\d+;", "", text)
        # What is left of a label is text to Mermaid: nothing that ends it or starts a comment,
        # a directive, an entity, HTML or a pseudo-state marker.
        assert not set(plain) & set('"#%:;<>&{}`\\\r\n\t'), text
        assert not re.search(r"direction\s+(TB|BT|RL|LR)", plain, re.IGNORECASE), text
        assert "[[" not in plain
    expected = {
        "s0 --> s1 : {n} [{n}] / {n}",
        "s0 --> s0 : {n} (failure)",
        "s0 --> s0 : go",
        "s0 --> s1 : ⚡ onEnter (failure) / {n}",
    }
    drawn = {line.removeprefix("    ") for line in diagram.splitlines() if " : " in line}
    assert {decoded(line) for line in drawn} == {
        line.replace("{n}", decoded(label(name))) for line in expected
    }


def test_label_escapes() -> None:
    assert label("a b_c-d.e") == "a b_c-d.e"
    assert label('say "hi"') == "say #34;hi#34;"
    assert label("a:b;c#d%e") == "a#58;b#59;c#35;d#37;e"
    assert label("a --> b") == "a --#62; b"
    assert label("x\ny") == "x#10;y"
    assert label("Direction TB") == "Direction#32;TB"
    assert label("注文 😀") == "注文 😀"
    assert label("\u00a0\u202e\u2028") == "#160;#8238;#8232;"
    assert label("") == "#32;"


# --------------------------------------------------------------------------------------------
# Mermaid's own parser (optional: needs node and the npm packages mermaid and jsdom)


def mermaid_modules() -> str:
    """The node_modules holding mermaid and jsdom (the test is deselected without them)."""
    modules = os.environ.get("DURAFLOWS_MERMAID_MODULES", "")
    if shutil.which("node") is None:
        pytest.fail("DURAFLOWS_MERMAID_MODULES is set but node is not installed")
    for package in ("mermaid", "jsdom"):
        if not (Path(modules) / package / "package.json").is_file():
            pytest.fail(f"DURAFLOWS_MERMAID_MODULES={modules} has no {package} package")
    return modules


def parse_with_mermaid(diagrams: list[str]) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["node", str(PARSER), mermaid_modules()],
        input="\0".join(diagrams),
        capture_output=True,
        text=True,
        timeout=100,
        check=True,
    )
    parsed: list[dict[str, Any]] = json.loads(result.stdout)
    return parsed


def expected_structure(diagram: str) -> tuple[dict[str, list[str]], list[list[str]]]:
    """The states and arrows Mermaid should read from ``diagram``, labels decoded."""
    states: dict[str, list[str]] = {}
    relations = []
    for line in diagram.splitlines()[2:]:
        declared = re.fullmatch(r'    state "(.*)" as (s\d+)', line)
        if declared:
            states[declared[2]] = [decoded(declared[1].strip())]
            continue
        arrow = re.fullmatch(r"    (\S+) --> (\S+)(?: : (.*))?", line)
        assert arrow is not None
        ends = [{"[*]": "root_start"}.get(arrow[1], arrow[1])]
        ends.append({"[*]": "root_end"}.get(arrow[2], arrow[2]))
        relations.append([*ends, decoded((arrow[3] or "").strip())])
    states.update({"root_start": [], "root_end": []})
    return states, relations


@pytest.mark.mermaid
def test_mermaid_parses_every_diagram() -> None:
    diagrams = [
        EVERYTHING.to_mermaid(),
        EVERYTHING.to_mermaid(show_commands=True, direction="LR"),
        ORDER.to_mermaid(show_commands=True),
        quick_start().to_mermaid(),
        *(hostile_definition(name).to_mermaid(show_commands=True) for name in HOSTILE),
    ]
    for diagram, parsed in zip(diagrams, parse_with_mermaid(diagrams), strict=True):
        assert parsed["ok"], (parsed["error"], diagram)
        assert parsed["type"] == "stateDiagram"
        assert parsed["direction"] == diagram.splitlines()[1].split()[1]
        states, relations = expected_structure(diagram)
        assert parsed["states"] == states, diagram
        assert parsed["relations"] == relations, diagram
