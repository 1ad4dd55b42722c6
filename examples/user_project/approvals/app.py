"""An expense claim is approved within budget, paid on approval, escalated after three days."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

import asyncpg

from duraflows_pg_async import (
    Clock,
    CommandRef,
    CommandRegistry,
    CommandResult,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    GuardRef,
    GuardRegistry,
    Observer,
    OnEnter,
    PgTransactionRunner,
    State,
    Timeout,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
)

# --8<-- [start:definition]
EXPENSE = WorkflowDefinition(
    name="expense",
    initial_state="submitted",
    states={
        "submitted": State(
            events={
                "approve": Event(target_state="approved", guard=GuardRef("within_budget")),
                "reject": Event(target_state="rejected"),
                # Nobody decided within three days: a worker escalates the claim.
                "escalate": Event(target_state="escalated", timeout=Timeout(days=3)),
            }
        ),
        "approved": State(on_enter=OnEnter(target_state="paid", commands=[CommandRef("pay_out")])),
        "paid": State(),
        "rejected": State(),
        "escalated": State(),
    },
)
# --8<-- [end:definition]

BUDGET = 500

# The app's own table, beside the workflow tables: its tests add it to the template database.
SCHEMA = """
CREATE TABLE expense_claims (
    instance_uuid uuid PRIMARY KEY,
    employee text NOT NULL,
    amount integer NOT NULL
)
"""


async def create_schema(conn: asyncpg.Connection) -> None:
    await conn.execute(SCHEMA)


async def pay_out(subject: object, ctx: ExecutionContext) -> CommandResult:
    ctx.context["paid"] = ctx.context["amount"]  # saved with the transition
    return CommandResult(ok=True, code="PAID")


def within_budget(subject: object, ctx: ExecutionContext) -> bool:
    return int(ctx.context["amount"]) <= BUDGET


def build_runtime(
    persistence: WorkflowPersistenceProvider,
    *,
    clock: Clock | None = None,
    observers: Iterable[Observer] = (),
) -> WorkflowRuntime:
    definitions = DefinitionRegistry()
    definitions.register(EXPENSE)
    commands = CommandRegistry()
    commands.register("pay_out", pay_out)
    guards = GuardRegistry()
    guards.register("within_budget", within_budget)
    return WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        guards=guards,
        persistence=persistence,
        clock=clock,
        observers=observers,
    )


async def submit_claim(runtime: WorkflowRuntime, employee: str, amount: int) -> UUID:
    """A claim's row and its workflow instance, in one transaction."""
    runner = runtime.persistence.transaction_runner
    assert isinstance(runner, PgTransactionRunner)
    async with runner.transaction():
        claim = await runtime.create_instance(
            "expense", context={"employee": employee, "amount": amount}
        )
        await runner.connection().execute(
            "INSERT INTO expense_claims (instance_uuid, employee, amount) VALUES ($1, $2, $3)",
            claim.uuid,
            employee,
            amount,
        )
    return claim.uuid
