"""A workflow's Mermaid diagram with each state's live counts in its label."""

from __future__ import annotations

from collections.abc import Container, Mapping

from duraflows_pg_async._core.model import StateStats
from duraflows_pg_async._definitions.diagram import _ids, label
from duraflows_pg_async._definitions.model import WorkflowDefinition

__all__ = ["counted_diagram", "count_text", "number"]

STATUSES = ("due", "retrying", "parked", "claimed")


def number(value: int, estimated: bool = False) -> str:
    """``1,234``, or for an estimate ``≈1,200`` (two significant digits: no more are known)."""
    if not estimated:
        return f"{value:,}"
    digits = len(str(abs(value)))
    return f"≈{round(value, min(0, 2 - digits)):,}"


def count_text(stats: StateStats | None, estimated: Container[tuple[str, str, str]] = ()) -> str:
    """``120`` or ``120 (3 due, 1 parked)``: the instances and the non-zero statuses."""
    if stats is None:
        return "0"
    key = (stats.workflow_name, stats.state)
    parts = [
        f"{number(getattr(stats, name), (*key, name) in estimated)} {name}"
        for name in STATUSES
        if getattr(stats, name)
    ]
    total = number(stats.instances, (*key, "instances") in estimated)
    return f"{total} ({', '.join(parts)})" if parts else total


def counted_diagram(
    definition: WorkflowDefinition,
    counts: Mapping[str, StateStats],
    estimated: Container[tuple[str, str, str]] = (),
) -> str:
    """``to_mermaid()`` with ``name · count`` labels; states holding instances are shaded, and
    those with parked timeouts marked. The counts go through the same escaping as names."""
    lines = definition.to_mermaid().splitlines()
    ids = _ids(definition)
    occupied: list[str] = []
    parked: list[str] = []
    for name, state_id in ids.items():
        declared = f'state "{label(name)}" as {state_id}'
        stats = counts.get(name)
        counted = f'state "{label(name)} · {label(count_text(stats, estimated))}" as {state_id}'
        lines = [line.replace(declared, counted) if line.strip() == declared else line
                 for line in lines]  # fmt: skip
        if stats is not None and stats.parked:
            parked.append(state_id)
        elif stats is not None and stats.instances:
            occupied.append(state_id)
    lines.append("    classDef occupied fill:#dbeafe,stroke:#1d4ed8")
    lines.append("    classDef parked fill:#fee2e2,stroke:#b91c1c")
    if occupied:
        lines.append(f"    class {','.join(occupied)} occupied")
    if parked:
        lines.append(f"    class {','.join(parked)} parked")
    return "\n".join(lines) + "\n"
