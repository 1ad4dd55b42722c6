"""Keyed trigger_event: replay, conflicts, transactions and concurrency, on both providers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from helpers import wait_until

from duraflows_pg_async import (
    CommandRef,
    CommandRegistry,
    CommandResult,
    DefinitionRegistry,
    Event,
    ExecutionContext,
    ExecutionResult,
    GuardRef,
    GuardRegistry,
    State,
    StateEnterEvent,
    WorkflowDefinition,
    WorkflowPersistenceProvider,
    WorkflowRuntime,
    create_pool,
    memory_workflow_providers,
    pg_workflow_providers,
)
from duraflows_pg_async.errors import (
    CommandFailureError,
    IdempotencyConflictError,
    IdempotencyInProgressError,
    IdempotencyNotSupportedError,
    InvalidArgumentError,
    InvalidEventError,
)


class Rollback(Exception):
    """Raised by a test to roll its own transaction back."""


def payment_definition() -> WorkflowDefinition:
    return WorkflowDefinition(
        name="payment",
        version=1,
        initial_state="awaiting",
        states={
            "awaiting": State(
                events={
                    "pay": Event(
                        target_state="paid",
                        error_state="declined",
                        guard=GuardRef("allowed"),
                        commands=(CommandRef("charge"),),
                    ),
                    "note": Event(commands=(CommandRef("note"),)),
                }
            ),
            "paid": State(events={"refund": Event(target_state="refunded")}),
            "declined": State(),
            "refunded": State(),
        },
    )


class Payments:
    """The commands and guard, counting what ran; ``decline`` and ``explode`` steer them."""

    def __init__(self) -> None:
        self.charges = 0
        self.guard_calls = 0
        self.allow = True
        self.decline = False
        self.explode = False
        self.note_fails = False
        self.nested: Any = None  # a coroutine function a charge awaits, for re-entry tests

    async def charge(self, subject: Any, ctx: ExecutionContext) -> CommandResult:
        self.charges += 1
        if self.nested is not None:
            await self.nested()
        if self.explode:
            raise RuntimeError("card network down")
        if self.decline:
            return CommandResult(ok=False, code="declined", message="card declined")
        return CommandResult(ok=True, code="charged", metadata={"amount": 2500, "pair": (1, 2)})

    def note(self, subject: Any, ctx: ExecutionContext) -> CommandResult:
        return CommandResult(ok=not self.note_fails, code="nope" if self.note_fails else None)

    def allowed(self, subject: Any, ctx: ExecutionContext) -> bool:
        self.guard_calls += 1
        return self.allow


def make_runtime(
    persistence: WorkflowPersistenceProvider, payments: Payments, seen: list[StateEnterEvent]
) -> WorkflowRuntime:
    definitions = DefinitionRegistry()
    definitions.register(payment_definition())
    commands = CommandRegistry()
    commands.register("charge", payments.charge)
    commands.register("note", payments.note)
    guards = GuardRegistry()
    guards.register("allowed", payments.allowed)
    return WorkflowRuntime(
        definitions=definitions,
        commands=commands,
        guards=guards,
        persistence=persistence,
        observers=[seen.append],
    )


@pytest.fixture(params=["memory", "postgres"])
def keyed(request: pytest.FixtureRequest) -> WorkflowPersistenceProvider:
    """A provider with the idempotency store, in memory and on PostgreSQL."""
    if request.param == "memory":
        return memory_workflow_providers(idempotency=True)
    request.node.user_properties.append(("postgres", True))
    pool: asyncpg.Pool = request.getfixturevalue("pool")
    return pg_workflow_providers(pool, idempotency=True)


class Setup:
    def __init__(self, persistence: WorkflowPersistenceProvider) -> None:
        self.persistence = persistence
        self.payments = Payments()
        self.seen: list[StateEnterEvent] = []
        self.runtime = make_runtime(persistence, self.payments, self.seen)


@pytest.fixture
def setup(keyed: WorkflowPersistenceProvider) -> Setup:
    return Setup(keyed)


async def history_size(setup: Setup, instance_uuid: Any) -> int:
    return len(await setup.runtime.get_history(instance_uuid, limit=1000))


# --- replay ----------------------------------------------------------------------------------


async def test_a_committed_success_replays_without_running_anything(setup: Setup) -> None:
    runtime = setup.runtime
    instance = await runtime.create_instance("payment")
    first = await runtime.trigger_event(instance.uuid, "pay", idempotency_key="psp:evt_1")
    after_first = await runtime.get_instance(instance.uuid)
    setup.seen.clear()

    again = await runtime.trigger_event(instance.uuid, "pay", idempotency_key="psp:evt_1")

    assert again == first
    assert (again.outcome, again.from_state, again.to_state) == ("success", "awaiting", "paid")
    assert (setup.payments.charges, setup.payments.guard_calls) == (1, 1)
    assert await history_size(setup, instance.uuid) == 1
    assert await runtime.get_instance(instance.uuid) == after_first
    assert setup.seen == []


async def test_the_first_result_is_the_json_snapshot_a_replay_returns(setup: Setup) -> None:
    runtime = setup.runtime
    instance = await runtime.create_instance("payment")
    first = await runtime.trigger_event(instance.uuid, "pay", idempotency_key="k")
    # The command returned a tuple; the JSON form of the result holds a list, on both calls.
    assert first.command_results[0].metadata == {"amount": 2500, "pair": [1, 2]}
    assert first.to_json()["historyUuid"] == str(first.history_uuid)

    assert first.command_results[0].metadata is not None
    first.command_results[0].metadata["amount"] = 0  # type: ignore[index]
    again = await runtime.trigger_event(instance.uuid, "pay", idempotency_key="k")
    assert again.command_results[0].metadata == {"amount": 2500, "pair": [1, 2]}


async def test_a_routed_failure_replays_as_the_same_failure(setup: Setup) -> None:
    runtime = setup.runtime
    setup.payments.decline = True
    instance = await runtime.create_instance("payment")
    first = await runtime.trigger_event(instance.uuid, "pay", idempotency_key="k")
    setup.payments.decline = False
    again = await runtime.trigger_event(instance.uuid, "pay", idempotency_key="k")
    assert again == first
    assert (again.outcome, again.to_state) == ("failure", "declined")
    assert again.command_results[0].code == "declined"
    assert setup.payments.charges == 1


async def test_a_guard_rejection_replays_without_asking_the_guard_again(setup: Setup) -> None:
    runtime = setup.runtime
    setup.payments.allow = False
    instance = await runtime.create_instance("payment")
    first = await runtime.trigger_event(instance.uuid, "pay", idempotency_key="k")
    setup.payments.allow = True
    again = await runtime.trigger_event(instance.uuid, "pay", idempotency_key="k")
    assert again == first
    assert (again.outcome, again.rejected_by, again.command_results) == (
        "guard-rejected",
        "allowed",
        [],
    )
    assert setup.payments.guard_calls == 1
    assert setup.payments.charges == 0
    assert await history_size(setup, instance.uuid) == 1


async def test_a_replay_answers_even_after_the_instance_moved_on(setup: Setup) -> None:
    runtime = setup.runtime
    instance = await runtime.create_instance("payment")
    first = await runtime.trigger_event(instance.uuid, "pay", idempotency_key="k")
    await runtime.trigger_event(instance.uuid, "refund")
    # "pay" is not an event of "refunded": the receipt is read before the event is looked up.
    again = await runtime.trigger_event(instance.uuid, "pay", idempotency_key="k")
    assert again == first
    assert again.to_state == "paid"
    with pytest.raises(InvalidEventError):
        await runtime.trigger_event(instance.uuid, "pay", idempotency_key="another")


async def test_keys_are_per_instance(setup: Setup) -> None:
    runtime = setup.runtime
    one = await runtime.create_instance("payment")
    two = await runtime.create_instance("payment")
    await runtime.trigger_event(one.uuid, "pay", idempotency_key="same")
    second = await runtime.trigger_event(two.uuid, "pay", idempotency_key="same")
    assert second.outcome == "success"
    assert setup.payments.charges == 2


async def test_an_unkeyed_call_runs_every_time_and_leaves_no_receipt(setup: Setup) -> None:
    runtime = setup.runtime
    instance = await runtime.create_instance("payment")
    await runtime.trigger_event(instance.uuid, "note")
    await runtime.trigger_event(instance.uuid, "note")
    assert await history_size(setup, instance.uuid) == 2
    store = setup.persistence.idempotency_store
    assert store is not None
    async with setup.persistence.transaction_runner.transaction():
        assert await store.find(instance.uuid, "note") is None


# --- conflicts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "why"),
    [
        ({}, {"event": "note"}, "another event"),
        ({"fingerprint": "amount:2500"}, {"fingerprint": "amount:9900"}, "another fingerprint"),
        ({"fingerprint": "amount:2500"}, {}, "with a fingerprint"),
        ({}, {"fingerprint": "amount:2500"}, "without a fingerprint"),
    ],
)
async def test_reusing_a_key_for_another_request_is_a_conflict(
    setup: Setup, first: dict[str, str], second: dict[str, str], why: str
) -> None:
    runtime = setup.runtime
    instance = await runtime.create_instance("payment")
    await runtime.trigger_event(
        instance.uuid,
        first.get("event", "pay"),
        idempotency_key="k",
        idempotency_fingerprint=first.get("fingerprint"),
    )
    before = await runtime.get_instance(instance.uuid)
    with pytest.raises(IdempotencyConflictError, match=why) as caught:
        await runtime.trigger_event(
            instance.uuid,
            second.get("event", "pay"),
            idempotency_key="k",
            idempotency_fingerprint=second.get("fingerprint"),
        )
    assert (caught.value.instance_uuid, caught.value.key) == (instance.uuid, "k")
    assert await runtime.get_instance(instance.uuid) == before
    assert await history_size(setup, instance.uuid) == 1


async def test_same_key_reentry_in_one_transaction_is_in_progress(setup: Setup) -> None:
    runtime = setup.runtime
    instance = await runtime.create_instance("payment")
    caught: list[BaseException] = []

    async def reenter() -> None:
        setup.payments.nested = None
        try:
            await runtime.trigger_event(instance.uuid, "pay", idempotency_key="k")
        except IdempotencyInProgressError as exc:
            caught.append(exc)
            raise

    setup.payments.nested = reenter
    with pytest.raises(IdempotencyInProgressError):
        await runtime.trigger_event(instance.uuid, "pay", idempotency_key="k")
    assert len(caught) == 1
    # Nothing was written: the retry executes.
    assert await history_size(setup, instance.uuid) == 0
    retried = await runtime.trigger_event(instance.uuid, "pay", idempotency_key="k")
    assert retried.outcome == "success"


# --- transactions ----------------------------------------------------------------------------


async def test_a_failed_call_leaves_no_receipt_and_the_retry_executes(setup: Setup) -> None:
    runtime = setup.runtime
    instance = await runtime.create_instance("payment")
    setup.payments.explode = True
    with pytest.raises(RuntimeError, match="card network down"):
        await runtime.trigger_event(instance.uuid, "pay", idempotency_key="k")
    setup.payments.explode = False
    retried = await runtime.trigger_event(instance.uuid, "pay", idempotency_key="k")
    assert retried.outcome == "success"
    assert setup.payments.charges == 2
    assert await history_size(setup, instance.uuid) == 1


async def test_an_outer_rollback_takes_the_receipt_with_it(setup: Setup) -> None:
    runtime = setup.runtime
    runner = setup.persistence.transaction_runner
    instance = await runtime.create_instance("payment")

    async def in_rolled_back_transaction() -> None:
        async with runner.transaction():
            await runtime.trigger_event(instance.uuid, "pay", idempotency_key="k")
            raise Rollback

    with pytest.raises(Rollback):
        await in_rolled_back_transaction()
    retried = await runtime.trigger_event(instance.uuid, "pay", idempotency_key="k")
    assert retried.outcome == "success"
    assert setup.payments.charges == 2
    assert await history_size(setup, instance.uuid) == 1


async def test_a_failed_savepoint_takes_its_receipt_and_the_outer_commits(setup: Setup) -> None:
    runtime = setup.runtime
    runner = setup.persistence.transaction_runner
    instance = await runtime.create_instance("payment")
    async with runner.transaction():
        await runtime.trigger_event(instance.uuid, "note", idempotency_key="note-1")
        # A command that raises: this call's savepoint rolls back, the outer transaction goes on.
        setup.payments.explode = True
        with pytest.raises(RuntimeError):
            await runtime.trigger_event(instance.uuid, "pay", idempotency_key="pay-1")
    setup.payments.explode = False
    replayed_note = await runtime.trigger_event(instance.uuid, "note", idempotency_key="note-1")
    assert replayed_note.outcome == "success"
    paid = await runtime.trigger_event(instance.uuid, "pay", idempotency_key="pay-1")
    assert paid.to_state == "paid"
    assert setup.payments.charges == 2
    assert await history_size(setup, instance.uuid) == 2


async def test_a_mandatory_failure_without_error_route_writes_no_receipt(setup: Setup) -> None:
    runtime = setup.runtime
    instance = await runtime.create_instance("payment")
    setup.payments.note_fails = True
    with pytest.raises(CommandFailureError):
        await runtime.trigger_event(instance.uuid, "note", idempotency_key="k")
    setup.payments.note_fails = False
    assert (await runtime.trigger_event(instance.uuid, "note", idempotency_key="k")).outcome == (
        "success"
    )


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "fingerprint", "match"),
    [
        ("", None, "idempotency_key must not be blank"),
        ("   ", None, "idempotency_key must not be blank"),
        ("a\x00b", None, "idempotency_key must not contain NUL"),
        ("\udc80", None, "idempotency_key contains an unpaired surrogate"),
        ("é" * 129, None, "idempotency_key must be at most 256 bytes"),
        (42, None, "idempotency_key must be a string"),
        ("k", "", "idempotency_fingerprint must not be blank"),
        ("k", "x" * 257, "idempotency_fingerprint must be at most 256 bytes"),
        (None, "fp", "idempotency_fingerprint needs an idempotency_key"),
    ],
)
async def test_bad_keys_are_refused_before_anything_is_written(
    setup: Setup, key: Any, fingerprint: Any, match: str
) -> None:
    runtime = setup.runtime
    instance = await runtime.create_instance("payment")
    with pytest.raises(InvalidArgumentError, match=match):
        await runtime.trigger_event(
            instance.uuid, "pay", idempotency_key=key, idempotency_fingerprint=fingerprint
        )
    assert setup.payments.guard_calls == 0
    assert await history_size(setup, instance.uuid) == 0


async def test_a_key_of_256_utf8_bytes_is_accepted(setup: Setup) -> None:
    runtime = setup.runtime
    instance = await runtime.create_instance("payment")
    key = "é" * 128  # 256 bytes in UTF-8
    first = await runtime.trigger_event(
        instance.uuid, "pay", idempotency_key=key, idempotency_fingerprint="€" * 85 + "x"
    )
    again = await runtime.trigger_event(
        instance.uuid, "pay", idempotency_key=key, idempotency_fingerprint="€" * 85 + "x"
    )
    assert again == first


@pytest.fixture(params=["memory", "postgres"])
def unkeyed(request: pytest.FixtureRequest) -> WorkflowPersistenceProvider:
    """A provider built without the idempotency store, in memory and on PostgreSQL."""
    if request.param == "memory":
        return memory_workflow_providers()
    request.node.user_properties.append(("postgres", True))
    return pg_workflow_providers(request.getfixturevalue("pool"))


async def test_a_key_without_the_idempotency_store_is_refused(
    unkeyed: WorkflowPersistenceProvider,
) -> None:
    payments = Payments()
    runtime = make_runtime(unkeyed, payments, [])
    instance = await runtime.create_instance("payment")
    with pytest.raises(IdempotencyNotSupportedError, match="idempotency=True"):
        await runtime.trigger_event(instance.uuid, "pay", idempotency_key="k")
    assert payments.guard_calls == 0
    # Unkeyed calls need no store.
    assert (await runtime.trigger_event(instance.uuid, "pay")).outcome == "success"


def test_the_provider_flag_must_be_a_bool() -> None:
    with pytest.raises(InvalidArgumentError, match="idempotency must be True or False"):
        memory_workflow_providers(idempotency="yes")  # type: ignore[arg-type]


# --- concurrency (several real connections) --------------------------------------------------

CALLERS = 32


@pytest.fixture
async def wide_pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    """One connection per concurrent caller, plus one for the test's own reads."""
    pool = await create_pool(database, min_size=CALLERS + 1, max_size=CALLERS + 1)
    try:
        yield pool
    finally:
        await pool.close()


async def waiting_for_locks(pool: asyncpg.Pool) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    )


@pytest.mark.slow
async def test_32_concurrent_calls_with_one_key_execute_once(wide_pool: asyncpg.Pool) -> None:
    setup = Setup(pg_workflow_providers(wide_pool, idempotency=True))
    instance = await setup.runtime.create_instance("payment")
    setup.seen.clear()
    results = await asyncio.gather(
        *(
            setup.runtime.trigger_event(
                instance.uuid, "pay", idempotency_key="webhook-1", idempotency_fingerprint="f"
            )
            for _ in range(CALLERS)
        )
    )
    assert setup.payments.charges == 1
    assert await history_size(setup, instance.uuid) == 1
    assert all(result == results[0] for result in results)
    assert results[0].to_state == "paid"
    assert len(setup.seen) == 1  # one observer event: replays fire none


@pytest.mark.slow
async def test_when_the_first_call_rolls_back_exactly_one_waiter_executes(
    wide_pool: asyncpg.Pool,
) -> None:
    setup = Setup(pg_workflow_providers(wide_pool, idempotency=True))
    runtime, runner = setup.runtime, setup.persistence.transaction_runner
    instance = await runtime.create_instance("payment")
    first_done, release = asyncio.Event(), asyncio.Event()

    async def first_then_roll_back() -> None:
        async with runner.transaction():
            await runtime.trigger_event(instance.uuid, "pay", idempotency_key="k")
            first_done.set()
            await release.wait()
            raise Rollback

    first = asyncio.create_task(first_then_roll_back())
    await first_done.wait()
    waiters = [
        asyncio.create_task(runtime.trigger_event(instance.uuid, "pay", idempotency_key="k"))
        for _ in range(CALLERS - 1)
    ]
    # Every waiter is queued on the instance's row lock before the first one lets go.
    await wait_until(
        lambda: _at_least(waiting_for_locks(wide_pool), CALLERS - 1),
        within=60,
        what=f"{CALLERS - 1} calls waiting on the instance's row lock",
    )
    release.set()
    with pytest.raises(Rollback):
        await first
    results: list[ExecutionResult] = await asyncio.gather(*waiters)
    assert setup.payments.charges == 2  # the rolled-back first call, then one waiter
    assert await history_size(setup, instance.uuid) == 1
    assert all(result == results[0] for result in results)


async def _at_least(count: Any, wanted: int) -> bool:
    return bool(await count >= wanted)
