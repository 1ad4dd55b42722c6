"""The in-memory provider beyond the conformance suites: isolation, row locks, tasks, copies."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar
from uuid import UUID, uuid4

import pytest

from duraflows_pg_async import (
    HistoryRecord,
    WorkflowInstance,
    WorkflowPersistenceProvider,
    memory_workflow_providers,
)
from duraflows_pg_async._core.contract import (
    WorkflowDefinitionStore,
    WorkflowHistoryStore,
    WorkflowInstanceStore,
    WorkflowTransactionRunner,
)
from duraflows_pg_async.errors import (
    CommitRolledBackError,
    DatabaseError,
    InstanceAlreadyExistsError,
    InvalidArgumentError,
    LockTimeoutError,
    NoActiveTransactionError,
    OptimisticLockError,
    TransactionConflictError,
    TransactionTaskError,
    WorkflowInstanceNotFoundError,
)
from duraflows_pg_async.memory import (
    MemoryDatabase,
    MemoryTransactionRunner,
    MemoryWorkflowDefinitionStore,
    MemoryWorkflowHistoryStore,
    MemoryWorkflowInstanceStore,
)
from duraflows_pg_async.testing import make_instance

T = TypeVar("T")
NOW = datetime(2025, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def p() -> WorkflowPersistenceProvider:
    return memory_workflow_providers()


async def settle() -> None:
    """Let every runnable task run until it blocks (nothing here does real I/O).

    Yields to the loop, not a wait for a condition: the tests call it before asserting that a
    task did *not* finish (it waits for a lock), and a task that did not wait would have
    finished within these steps.
    """
    for _ in range(50):
        await asyncio.sleep(0)


async def within(awaitable: Awaitable[T], seconds: float = 5) -> T:
    async with asyncio.timeout(seconds):
        return await awaitable


async def create(p: WorkflowPersistenceProvider, *instances: WorkflowInstance) -> None:
    async with p.transaction_runner.transaction():
        for instance in instances:
            await p.instance_store.create(instance)


async def found(p: WorkflowPersistenceProvider, key: UUID) -> WorkflowInstance:
    """``find_by_uuid``'s instance, which the test knows is there."""
    instance = await p.instance_store.find_by_uuid(key)
    assert instance is not None
    return instance


def record(instance: WorkflowInstance, event: str = "go") -> HistoryRecord:
    return HistoryRecord(
        workflow_instance_uuid=instance.uuid,
        from_state="a",
        event_name=event,
        to_state="b",
        outcome="success",
    )


class Holder:
    """A task that opens a transaction, runs ``body`` in it, then waits to be told to finish."""

    def __init__(self, p: WorkflowPersistenceProvider, body: Any, *, fail: bool = False) -> None:
        self.p = p
        self.body = body
        self.fail = fail
        self.ready = asyncio.Event()
        self.finish = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with self.p.transaction_runner.transaction():
            await self.body()
            self.ready.set()
            await self.finish.wait()
            if self.fail:
                raise RuntimeError("holder rolls back")

    async def __aenter__(self) -> Holder:
        await within(self.ready.wait())
        return self

    async def end(self) -> None:
        self.finish.set()
        if self.fail:
            with pytest.raises(RuntimeError, match="holder rolls back"):
                await within(self.task)
        else:
            await within(self.task)

    async def __aexit__(self, *exc: object) -> None:
        if not self.task.done():
            await self.end()


# --- construction ----------------------------------------------------------------------------


def test_provider_parts_satisfy_the_protocols(p: WorkflowPersistenceProvider) -> None:
    assert isinstance(p.instance_store, WorkflowInstanceStore)
    assert isinstance(p.history_store, WorkflowHistoryStore)
    assert isinstance(p.definition_store, WorkflowDefinitionStore)
    assert isinstance(p.transaction_runner, WorkflowTransactionRunner)
    assert isinstance(p.transaction_runner, MemoryTransactionRunner)
    assert not hasattr(p.transaction_runner, "connection")


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "1s", timedelta(seconds=-1)])
def test_bad_lock_timeouts_are_refused(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="lock_timeout"):
        memory_workflow_providers(lock_timeout=bad)  # type: ignore[arg-type]


def test_lock_timeout_is_rounded_up_to_milliseconds() -> None:
    runner = memory_workflow_providers(lock_timeout=0.0001).transaction_runner
    assert isinstance(runner, MemoryTransactionRunner)
    assert runner.lock_timeout_ms == 1
    runner = memory_workflow_providers(lock_timeout=timedelta(seconds=2)).transaction_runner
    assert isinstance(runner, MemoryTransactionRunner)
    assert runner.lock_timeout_ms == 2000


@pytest.mark.parametrize(
    "cls",
    [
        MemoryTransactionRunner,
        MemoryWorkflowInstanceStore,
        MemoryWorkflowHistoryStore,
        MemoryWorkflowDefinitionStore,
    ],
)
def test_parts_need_a_memory_database(cls: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="MemoryDatabase"):
        cls(object())
    cls(MemoryDatabase())


async def test_runner_argument_errors(p: WorkflowPersistenceProvider) -> None:
    runner = p.transaction_runner
    with pytest.raises(InvalidArgumentError):
        await runner.run_in_transaction("not callable")  # type: ignore[arg-type]
    with pytest.raises(NoActiveTransactionError, match="after_commit requires an active"):
        runner.after_commit(lambda: None)
    with pytest.raises(InvalidArgumentError):
        async with runner.transaction():
            runner.after_commit("not callable")  # type: ignore[arg-type]
    tx = runner.transaction()
    async with tx:
        with pytest.raises(InvalidArgumentError, match="entered twice"):
            async with tx:
                pass


# --- isolation -------------------------------------------------------------------------------


async def test_uncommitted_writes_are_invisible_to_others_until_commit(
    p: WorkflowPersistenceProvider,
) -> None:
    existing = make_instance(current_state="old")
    await create(p, existing)
    new = make_instance()

    async def write() -> None:
        await p.instance_store.create(new)
        locked = await p.instance_store.lock_by_uuid(existing.uuid)
        assert locked is not None
        locked.version += 1
        locked.current_state = "new"
        await p.instance_store.update(locked)
        await p.history_store.append(record(new))
        await p.definition_store.ensure(
            workflow_name="w", version=1, content_hash="h", definition_json={}
        )
        # Its own writes are visible to the transaction itself.
        assert await p.instance_store.find_by_uuid(new.uuid) is not None
        assert (await found(p, existing.uuid)).current_state == "new"
        assert len(await p.history_store.find_by_instance_uuid(new.uuid)) == 1
        assert await p.definition_store.find_by_name_and_version("w", 1) is not None

    async def other_transaction() -> tuple[Any, ...]:
        async with p.transaction_runner.transaction():
            return (
                await p.instance_store.find_by_uuid(new.uuid),
                await p.instance_store.lock_by_uuid(new.uuid),
                (await found(p, existing.uuid)).current_state,
                await p.history_store.find_by_instance_uuid(new.uuid),
                await p.definition_store.find_by_name_and_version("w", 1),
                await p.definition_store.list_versions("w"),
                await p.instance_store.count_instances(
                    workflow_name="conformance", definition_version=1
                ),
            )

    async with Holder(p, write) as holder:
        # Outside any transaction, and in another task's transaction: the committed state.
        assert await p.instance_store.find_by_uuid(new.uuid) is None
        assert await within(asyncio.create_task(other_transaction())) == (
            None,
            None,
            "old",
            [],
            None,
            [],
            0,
        )
        with pytest.raises(WorkflowInstanceNotFoundError):
            await p.history_store.append(record(new))
        with pytest.raises(OptimisticLockError):
            await p.instance_store.update(make_instance(uuid=new.uuid, version=1))
        await holder.end()

    assert await p.instance_store.find_by_uuid(new.uuid) is not None
    assert (await found(p, existing.uuid)).current_state == "new"
    assert len(await p.history_store.find_by_instance_uuid(new.uuid)) == 1
    assert await p.definition_store.find_by_name_and_version("w", 1) is not None


async def test_rolled_back_writes_are_never_visible(p: WorkflowPersistenceProvider) -> None:
    instance = make_instance()
    async with Holder(p, lambda: p.instance_store.create(instance), fail=True):
        pass
    assert await p.instance_store.find_by_uuid(instance.uuid) is None


# --- row locks -------------------------------------------------------------------------------


async def test_lock_by_uuid_waits_for_the_holder_and_gets_the_committed_value(
    p: WorkflowPersistenceProvider,
) -> None:
    instance = make_instance(context={"n": 0})
    await create(p, instance)

    async def lock_and_change() -> None:
        locked = await p.instance_store.lock_by_uuid(instance.uuid)
        assert locked is not None
        locked.version += 1
        locked.context = {"n": 1}
        await p.instance_store.update(locked)

    async def second_locker() -> WorkflowInstance | None:
        async with p.transaction_runner.transaction():
            return await p.instance_store.lock_by_uuid(instance.uuid)

    async with Holder(p, lock_and_change) as holder:
        waiter = asyncio.create_task(second_locker())
        await settle()
        assert not waiter.done(), "lock_by_uuid did not wait for the holder"
        # A plain read does not wait, and sees the committed value.
        assert (await found(p, instance.uuid)).context == {"n": 0}
        await holder.end()
    got = await within(waiter)
    assert got is not None
    assert got.version == 1
    assert got.context == {"n": 1}


async def test_update_waits_for_a_lock_holder_then_checks_the_new_version(
    p: WorkflowPersistenceProvider,
) -> None:
    instance = make_instance()
    await create(p, instance)
    stale = await p.instance_store.find_by_uuid(instance.uuid)
    assert stale is not None

    async def lock_and_bump() -> None:
        locked = await p.instance_store.lock_by_uuid(instance.uuid)
        assert locked is not None
        locked.version += 1
        locked.current_state = "by-holder"
        await p.instance_store.update(locked)

    async with Holder(p, lock_and_bump) as holder:
        stale.version += 1
        stale.current_state = "by-waiter"
        waiter = asyncio.create_task(p.instance_store.update(stale))  # outside a transaction
        await settle()
        assert not waiter.done(), "update did not wait for the row lock"
        await holder.end()
    with pytest.raises(OptimisticLockError):
        await within(waiter)
    stored = await p.instance_store.find_by_uuid(instance.uuid)
    assert stored is not None
    assert stored.current_state == "by-holder"


async def test_lock_timeout_raises_and_leaves_nothing() -> None:
    p = memory_workflow_providers(lock_timeout=0.05)
    instance = make_instance()
    await create(p, instance)
    other = make_instance()
    async with Holder(p, lambda: p.instance_store.lock_by_uuid(instance.uuid)):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(LockTimeoutError, match="lock not available"):
            async with p.transaction_runner.transaction():
                await p.instance_store.create(other)
                await p.instance_store.lock_by_uuid(instance.uuid)
        assert 0.04 < loop.time() - started < 2
        # Statements outside a transaction run without lock_timeout, as on the pool.
        outside = asyncio.create_task(p.history_store.append(record(instance)))
        # What is tested: nothing happens in twice the lock_timeout (no LockTimeoutError).
        await asyncio.sleep(0.1)
        assert not outside.done()
    await within(outside)
    assert await p.instance_store.find_by_uuid(other.uuid) is None


async def test_lock_timeout_zero_disables_it() -> None:
    p = memory_workflow_providers(lock_timeout=0)
    instance = make_instance()
    await create(p, instance)

    async def locker() -> None:
        async with p.transaction_runner.transaction():
            await p.instance_store.lock_by_uuid(instance.uuid)

    async with Holder(p, lambda: p.instance_store.lock_by_uuid(instance.uuid)):
        waiter = asyncio.create_task(locker())
        # What is tested: nothing happens in this time (0 is no timeout, not an immediate one).
        await asyncio.sleep(0.05)
        assert not waiter.done()
    await within(waiter)


async def test_relocking_in_the_same_transaction_does_not_wait(
    p: WorkflowPersistenceProvider,
) -> None:
    instance = make_instance(expires_at=NOW - timedelta(hours=1))
    await create(p, instance)
    async with p.transaction_runner.transaction():
        await p.instance_store.lock_by_uuid(instance.uuid)
        await within(p.instance_store.lock_by_uuid(instance.uuid), 1)
        async with p.transaction_runner.transaction():
            assert await within(p.instance_store.lock_by_uuid(instance.uuid), 1) is not None
        # The lock taken by the outer transaction survives the savepoint's rollback.
        with pytest.raises(KeyError):
            async with p.transaction_runner.transaction():
                await p.instance_store.lock_by_uuid(instance.uuid)
                raise KeyError("inner")
        assert not await _lockable_by_another_task(p, instance)
    assert await _lockable_by_another_task(p, instance)


async def _lockable_by_another_task(
    p: WorkflowPersistenceProvider, instance: WorkflowInstance
) -> bool:
    assert instance.expires_at is not None
    assert instance.expires_at < NOW

    async def probe() -> bool:
        async with p.transaction_runner.transaction():
            found = await p.instance_store.find_expired(100, NOW)
            return instance.uuid in [i.uuid for i in found]

    # find_expired skips locked rows, so it tells whether the row is free without waiting.
    return await within(asyncio.create_task(probe()))


async def test_savepoint_rollback_releases_its_locks_and_discards_its_writes(
    p: WorkflowPersistenceProvider,
) -> None:
    instance = make_instance(expires_at=NOW - timedelta(hours=1))
    await create(p, instance)
    runner = p.transaction_runner
    created_inside = make_instance()
    events: list[str] = []
    async with runner.transaction():
        with pytest.raises(KeyError):
            async with runner.transaction():
                locked = await p.instance_store.lock_by_uuid(instance.uuid)
                assert locked is not None
                locked.version += 1
                locked.current_state = "inside"
                await p.instance_store.update(locked)
                await p.instance_store.create(created_inside)
                await p.history_store.append(record(instance))
                runner.after_commit(lambda: events.append("inside"))
                assert not await _lockable_by_another_task(p, instance)
                raise KeyError("roll back the savepoint")
        # Released although the outer transaction is still open.
        assert await _lockable_by_another_task(p, instance)
        assert (await found(p, instance.uuid)).current_state == "start"
        assert await p.instance_store.find_by_uuid(created_inside.uuid) is None
        assert await p.history_store.find_by_instance_uuid(instance.uuid) == []
        # The uuid of the discarded create is free again.
        await p.instance_store.create(make_instance(uuid=created_inside.uuid, version=7))
    assert events == []
    again = await p.instance_store.find_by_uuid(created_inside.uuid)
    assert again is not None
    assert again.version == 7


async def test_a_released_savepoint_keeps_its_locks_until_commit(
    p: WorkflowPersistenceProvider,
) -> None:
    instance = make_instance(expires_at=NOW - timedelta(hours=1))
    await create(p, instance)
    async with p.transaction_runner.transaction():
        async with p.transaction_runner.transaction():
            await p.instance_store.lock_by_uuid(instance.uuid)
        assert not await _lockable_by_another_task(p, instance)
    assert await _lockable_by_another_task(p, instance)


async def test_find_expired_skips_rows_locked_elsewhere_and_sweepers_get_disjoint_sets(
    p: WorkflowPersistenceProvider,
) -> None:
    due = [make_instance(expires_at=NOW - timedelta(minutes=m)) for m in range(1, 11)]
    await create(p, *due)
    oldest_first = [i.uuid for i in reversed(due)]  # due[m - 1] expired m minutes ago
    both_have_swept = asyncio.Event()
    counter = 0

    async def sweeper() -> list[Any]:
        nonlocal counter
        async with p.transaction_runner.transaction():
            found = await p.instance_store.find_expired(4, NOW)
            counter += 1
            if counter == 2:
                both_have_swept.set()
            await within(both_have_swept.wait())
            return [i.uuid for i in found]

    first, second = await within(asyncio.gather(sweeper(), sweeper()))
    assert first == oldest_first[:4]
    assert second == oldest_first[4:8]

    # A row one transaction locked is skipped by another, and not waited for.
    async with Holder(p, lambda: p.instance_store.lock_by_uuid(oldest_first[0])):

        async def sweep() -> list[Any]:
            async with p.transaction_runner.transaction():
                return [i.uuid for i in await p.instance_store.find_expired(3, NOW)]

        assert await within(asyncio.create_task(sweep())) == oldest_first[1:4]


async def test_find_expired_locks_what_it_returns(p: WorkflowPersistenceProvider) -> None:
    instance = make_instance(expires_at=NOW - timedelta(hours=1))
    await create(p, instance)

    async def other_locker() -> None:
        async with p.transaction_runner.transaction():
            await p.instance_store.lock_by_uuid(instance.uuid)

    async with Holder(p, lambda: p.instance_store.find_expired(10, NOW)) as holder:
        waiter = asyncio.create_task(other_locker())
        await settle()
        assert not waiter.done()
        await holder.end()
    await within(waiter)


async def test_fifty_concurrent_locked_increments_lose_no_update(
    p: WorkflowPersistenceProvider,
) -> None:
    instance = make_instance(context={"n": 0})
    await create(p, instance)

    async def increment() -> None:
        async with p.transaction_runner.transaction():
            locked = await p.instance_store.lock_by_uuid(instance.uuid)
            assert locked is not None
            await asyncio.sleep(0)  # let the others pile up on the lock
            locked.version += 1
            locked.context["n"] += 1
            await p.instance_store.update(locked)
            await p.history_store.append(record(locked, f"inc-{locked.version}"))

    await within(asyncio.gather(*(increment() for _ in range(50))))
    stored = await p.instance_store.find_by_uuid(instance.uuid)
    assert stored is not None
    assert stored.version == 50
    assert stored.context == {"n": 50}
    history = await p.history_store.find_by_instance_uuid(instance.uuid, limit=100)
    assert [r.event_name for r in history] == [f"inc-{n}" for n in range(50, 0, -1)]


async def test_unlocked_read_modify_write_races_are_caught_by_the_version(
    p: WorkflowPersistenceProvider,
) -> None:
    instance = make_instance(context={"n": 0})
    await create(p, instance)
    outcomes: list[str] = []

    async def increment() -> None:
        read = await p.instance_store.find_by_uuid(instance.uuid)
        assert read is not None
        await asyncio.sleep(0)  # a yield, so that the others read the same version
        read.version += 1
        read.context["n"] += 1
        try:
            await p.instance_store.update(read)
            outcomes.append("ok")
        except OptimisticLockError:
            outcomes.append("conflict")

    await within(asyncio.gather(*(increment() for _ in range(10))))
    stored = await p.instance_store.find_by_uuid(instance.uuid)
    assert stored is not None
    assert outcomes.count("ok") == stored.version == stored.context["n"] >= 1
    assert outcomes.count("conflict") == 10 - outcomes.count("ok")


async def test_deadlock_is_detected(p: WorkflowPersistenceProvider) -> None:
    a, b = make_instance(), make_instance()
    await create(p, a, b)
    both_locked = asyncio.Event()
    locked = 0

    async def worker(first: WorkflowInstance, second: WorkflowInstance) -> str:
        nonlocal locked
        try:
            async with p.transaction_runner.transaction():
                await p.instance_store.lock_by_uuid(first.uuid)
                locked += 1
                if locked == 2:
                    both_locked.set()
                await both_locked.wait()
                await p.instance_store.lock_by_uuid(second.uuid)
        except TransactionConflictError as exc:
            assert "40P01" in str(exc)
            return "deadlock"
        return "ok"

    results = await within(asyncio.gather(worker(a, b), worker(b, a)))
    assert sorted(results) == ["deadlock", "ok"]


# --- create and ensure against uncommitted rows ------------------------------------------------


@pytest.mark.parametrize("holder_commits", [True, False])
async def test_create_waits_for_an_uncommitted_create_of_the_same_uuid(
    p: WorkflowPersistenceProvider, holder_commits: bool
) -> None:
    instance = make_instance(current_state="first")

    async with Holder(p, lambda: p.instance_store.create(instance), fail=not holder_commits) as h:
        second = make_instance(uuid=instance.uuid, current_state="second")
        waiter = asyncio.create_task(p.instance_store.create(second))
        await settle()
        assert not waiter.done(), "create did not wait for the uncommitted row"
        await h.end()
    if holder_commits:
        with pytest.raises(InstanceAlreadyExistsError):
            await within(waiter)
        expected = "first"
    else:
        await within(waiter)
        expected = "second"
    stored = await p.instance_store.find_by_uuid(instance.uuid)
    assert stored is not None
    assert stored.current_state == expected


async def test_create_of_a_committed_uuid_fails_at_once_even_if_locked(
    p: WorkflowPersistenceProvider,
) -> None:
    instance = make_instance()
    await create(p, instance)
    async with Holder(p, lambda: p.instance_store.lock_by_uuid(instance.uuid)):
        with pytest.raises(InstanceAlreadyExistsError):
            await within(p.instance_store.create(make_instance(uuid=instance.uuid)), 1)


async def test_ensure_waits_for_an_uncommitted_ensure_and_keeps_the_first(
    p: WorkflowPersistenceProvider,
) -> None:
    store = p.definition_store

    async def first() -> None:
        await store.ensure(
            workflow_name="w", version=1, content_hash="first", definition_json={"a": 1}
        )

    async with Holder(p, first) as holder:
        waiter = asyncio.create_task(
            store.ensure(workflow_name="w", version=1, content_hash="second", definition_json={})
        )
        await settle()
        assert not waiter.done()
        await holder.end()
    stored = await within(waiter)
    assert stored.content_hash == "first"
    assert stored.definition_json == {"a": 1}


# --- history and the instance's row lock ---------------------------------------------------------


async def test_history_append_waits_for_a_for_update_holder(
    p: WorkflowPersistenceProvider,
) -> None:
    instance = make_instance()
    await create(p, instance)
    async with Holder(p, lambda: p.instance_store.lock_by_uuid(instance.uuid)) as holder:
        waiter = asyncio.create_task(p.history_store.append(record(instance)))
        await settle()
        assert not waiter.done(), "the foreign key check did not wait for FOR UPDATE"
        await holder.end()
    await within(waiter)
    assert len(await p.history_store.find_by_instance_uuid(instance.uuid)) == 1


async def test_an_uncommitted_history_row_blocks_for_update_but_not_update(
    p: WorkflowPersistenceProvider,
) -> None:
    instance = make_instance(expires_at=NOW - timedelta(hours=1))
    await create(p, instance)
    async with Holder(p, lambda: p.history_store.append(record(instance))) as holder:
        # UPDATE (no key change) does not conflict with the foreign key's KEY SHARE lock...
        changed = make_instance(uuid=instance.uuid, version=1, expires_at=instance.expires_at)
        await within(p.instance_store.update(changed), 1)
        # ...but FOR UPDATE does: find_expired skips the row.
        assert not await _lockable_by_another_task(p, instance)
        await holder.end()
    assert await _lockable_by_another_task(p, instance)


# --- aborted transactions, as in PostgreSQL --------------------------------------------------


async def test_a_swallowed_database_error_aborts_the_transaction(
    p: WorkflowPersistenceProvider,
) -> None:
    instance = make_instance()
    await create(p, instance)
    other = make_instance()
    ran: list[str] = []
    with pytest.raises(CommitRolledBackError):
        async with p.transaction_runner.transaction():
            p.transaction_runner.after_commit(lambda: ran.append("callback"))
            await p.instance_store.create(other)
            with pytest.raises(InstanceAlreadyExistsError):
                await p.instance_store.create(make_instance(uuid=instance.uuid))
            with pytest.raises(DatabaseError, match="current transaction is aborted"):
                await p.instance_store.find_by_uuid(instance.uuid)
            # Validation happens before any statement, as in the PostgreSQL stores.
            with pytest.raises(InvalidArgumentError):
                await p.instance_store.find_by_uuid("nope")
    assert ran == []
    assert await p.instance_store.find_by_uuid(other.uuid) is None


async def test_a_database_error_escaping_a_savepoint_keeps_the_outer_transaction(
    p: WorkflowPersistenceProvider,
) -> None:
    runner = p.transaction_runner
    before, inside, after = make_instance(), make_instance(), make_instance()
    ghost = make_instance()
    events: list[str] = []
    async with runner.transaction():
        await p.instance_store.create(before)
        with pytest.raises(WorkflowInstanceNotFoundError):
            async with runner.transaction():
                await p.instance_store.create(inside)
                runner.after_commit(lambda: events.append("inside"))
                await p.history_store.append(record(ghost))
        await p.instance_store.create(after)
        runner.after_commit(lambda: events.append("outer"))
    assert events == ["outer"]
    assert await p.instance_store.find_by_uuid(before.uuid) is not None
    assert await p.instance_store.find_by_uuid(after.uuid) is not None
    assert await p.instance_store.find_by_uuid(inside.uuid) is None


async def test_a_savepoint_that_swallowed_a_database_error_fails_loudly(
    p: WorkflowPersistenceProvider,
) -> None:
    runner = p.transaction_runner
    instance = make_instance()
    aborted = r"RELEASE SAVEPOINT \w+: .*current transaction is aborted"
    with pytest.raises(DatabaseError, match=aborted):
        async with runner.transaction():
            await p.instance_store.create(instance)
            async with runner.transaction():
                with pytest.raises(WorkflowInstanceNotFoundError):
                    await p.history_store.append(record(make_instance()))
    assert await p.instance_store.find_by_uuid(instance.uuid) is None

    # Caught in the outer block: the transaction stays aborted and its COMMIT is refused.
    with pytest.raises(CommitRolledBackError):
        async with runner.transaction():
            await p.instance_store.create(instance)
            with pytest.raises(DatabaseError):
                async with runner.transaction():
                    with pytest.raises(WorkflowInstanceNotFoundError):
                        await p.history_store.append(record(make_instance()))
            with pytest.raises(DatabaseError, match="current transaction is aborted"):
                async with runner.transaction():
                    pass
    assert await p.instance_store.find_by_uuid(instance.uuid) is None


async def test_optimistic_lock_errors_do_not_abort_the_transaction(
    p: WorkflowPersistenceProvider,
) -> None:
    instance = make_instance()
    await create(p, instance)
    async with p.transaction_runner.transaction():
        with pytest.raises(OptimisticLockError):
            await p.instance_store.update(make_instance(uuid=instance.uuid, version=5))
        locked = await p.instance_store.lock_by_uuid(instance.uuid)
        assert locked is not None
        locked.version += 1
        locked.current_state = "moved"
        await p.instance_store.update(locked)
    assert (await found(p, instance.uuid)).current_state == "moved"


# --- cancellation ----------------------------------------------------------------------------


async def test_cancellation_rolls_back_and_releases_the_locks(
    p: WorkflowPersistenceProvider,
) -> None:
    instance = make_instance(expires_at=NOW - timedelta(hours=1))
    await create(p, instance)
    created = make_instance()
    entered = asyncio.Event()

    async def work() -> None:
        async with p.transaction_runner.transaction():
            await p.instance_store.create(created)
            async with p.transaction_runner.transaction():
                locked = await p.instance_store.lock_by_uuid(instance.uuid)
                assert locked is not None
                locked.version += 1
                await p.instance_store.update(locked)
                p.transaction_runner.after_commit(lambda: pytest.fail("ran after a rollback"))
                entered.set()
                await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(work())
    await within(entered.wait())
    assert not await _lockable_by_another_task(p, instance)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _lockable_by_another_task(p, instance)
    assert await p.instance_store.find_by_uuid(created.uuid) is None
    assert (await found(p, instance.uuid)).version == 0


async def test_cancelling_a_lock_wait_leaves_the_lock_to_others(
    p: WorkflowPersistenceProvider,
) -> None:
    instance = make_instance()
    await create(p, instance)

    async def locker() -> WorkflowInstance | None:
        async with p.transaction_runner.transaction():
            return await p.instance_store.lock_by_uuid(instance.uuid)

    async with Holder(p, lambda: p.instance_store.lock_by_uuid(instance.uuid)) as holder:
        cancelled = asyncio.create_task(locker())
        patient = asyncio.create_task(locker())
        await settle()
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await holder.end()
    assert await within(patient) is not None


@pytest.mark.parametrize("steps", range(12))
async def test_cancellation_at_any_point_commits_all_or_nothing(
    p: WorkflowPersistenceProvider, steps: int
) -> None:
    instance = make_instance()
    await create(p, instance)

    async def work() -> None:
        async with p.transaction_runner.transaction():
            locked = await p.instance_store.lock_by_uuid(instance.uuid)
            assert locked is not None
            # Yields: points where the cancellation may land, not waits.
            await asyncio.sleep(0)
            async with p.transaction_runner.transaction():
                locked.version += 1
                locked.current_state = "done"
                await p.instance_store.update(locked)
                await asyncio.sleep(0)
                await p.history_store.append(record(locked))
            await asyncio.sleep(0)

    task = asyncio.create_task(work())
    for _ in range(steps):  # what is tested: the cancellation after `steps` loop steps
        await asyncio.sleep(0)
    task.cancel()
    try:
        await task
        committed = True
    except asyncio.CancelledError:
        committed = False
    stored = await p.instance_store.find_by_uuid(instance.uuid)
    assert stored is not None
    history = await p.history_store.find_by_instance_uuid(instance.uuid)
    assert (stored.version, len(history)) == ((1, 1) if committed else (0, 0))
    # No lock is left behind: another transaction locks the row at once.
    async with p.transaction_runner.transaction():
        await within(p.instance_store.lock_by_uuid(instance.uuid), 1)


# --- tasks -----------------------------------------------------------------------------------


async def test_another_task_cannot_use_the_transaction(p: WorkflowPersistenceProvider) -> None:
    runner = p.transaction_runner
    instance = make_instance()
    async with runner.transaction():
        await p.instance_store.create(instance)
        with pytest.raises(TransactionTaskError, match="inherited"):
            await asyncio.gather(p.instance_store.find_by_uuid(instance.uuid))
        with pytest.raises(TransactionTaskError):
            await asyncio.create_task(p.instance_store.lock_by_uuid(instance.uuid))

        async def register() -> None:
            runner.after_commit(lambda: None)

        with pytest.raises(TransactionTaskError):
            await asyncio.create_task(register())

        async def active() -> bool:
            return runner.is_transaction_active()

        assert await asyncio.create_task(active()) is False
        assert runner.is_transaction_active()
    assert await p.instance_store.find_by_uuid(instance.uuid) is not None


async def test_a_child_task_opens_a_separate_transaction(p: WorkflowPersistenceProvider) -> None:
    runner = p.transaction_runner
    parent_row, child_row = make_instance(), make_instance()

    async def child() -> WorkflowInstance | None:
        assert not runner.is_transaction_active()
        async with runner.transaction():
            await p.instance_store.create(child_row)
            return await p.instance_store.find_by_uuid(parent_row.uuid)

    with pytest.raises(KeyError):
        async with runner.transaction():
            await p.instance_store.create(parent_row)
            assert await asyncio.create_task(child()) is None
            # The child committed on its own.
            assert await p.instance_store.find_by_uuid(child_row.uuid) is not None
            raise KeyError("roll the parent back")
    assert await p.instance_store.find_by_uuid(child_row.uuid) is not None
    assert await p.instance_store.find_by_uuid(parent_row.uuid) is None


async def test_a_task_outliving_its_transaction_gets_a_clear_error(
    p: WorkflowPersistenceProvider,
) -> None:
    release = asyncio.Event()

    async def late() -> object:
        await release.wait()
        return await p.instance_store.find_by_uuid(uuid4())

    async with p.transaction_runner.transaction():
        leaked = asyncio.create_task(late())
    release.set()
    with pytest.raises(TransactionTaskError):
        await leaked


async def test_asyncio_timeout_bounds_a_call_inside_a_transaction(
    p: WorkflowPersistenceProvider,
) -> None:
    instance = make_instance()
    await create(p, instance)
    async with p.transaction_runner.transaction():
        async with asyncio.timeout(1):
            assert await p.instance_store.lock_by_uuid(instance.uuid) is not None


# --- independence and copies -------------------------------------------------------------------


async def test_two_providers_are_independent() -> None:
    a = memory_workflow_providers()
    b = memory_workflow_providers()
    instance = make_instance()
    async with a.transaction_runner.transaction():
        await a.instance_store.create(instance)
        assert not b.transaction_runner.is_transaction_active()
        with pytest.raises(NoActiveTransactionError):
            await b.instance_store.lock_by_uuid(instance.uuid)
        async with b.transaction_runner.transaction():
            assert a.transaction_runner.is_transaction_active()
            assert await b.instance_store.lock_by_uuid(instance.uuid) is None
    assert await a.instance_store.find_by_uuid(instance.uuid) is not None
    assert await b.instance_store.find_by_uuid(instance.uuid) is None
    # The same uuid may exist in both.
    await create(b, make_instance(uuid=instance.uuid))


async def test_values_are_copied_on_write_and_on_read(p: WorkflowPersistenceProvider) -> None:
    context: dict[str, Any] = {"items": [1, {"x": 2}], "nested": {"k": "v"}}
    metadata: dict[str, Any] = {"tags": ["a"]}
    instance = make_instance(context=context, metadata=metadata)
    await create(p, instance)
    context["items"].append(3)
    context["nested"]["k"] = "changed"
    metadata["tags"].append("b")

    found = await p.instance_store.find_by_uuid(instance.uuid)
    assert found is not None
    assert found.context == {"items": [1, {"x": 2}], "nested": {"k": "v"}}
    assert found.metadata == {"tags": ["a"]}
    found.context["items"].append("mutated")
    found.context["nested"]["k"] = "mutated"
    found.metadata["tags"].clear()
    again = await p.instance_store.find_by_uuid(instance.uuid)
    assert again is not None
    assert again.context == {"items": [1, {"x": 2}], "nested": {"k": "v"}}
    assert again.metadata == {"tags": ["a"]}

    # The same for a row locked and updated, history and definitions.
    async with p.transaction_runner.transaction():
        locked = await p.instance_store.lock_by_uuid(instance.uuid)
        assert locked is not None
        locked.version += 1
        await p.instance_store.update(locked)
        locked.context["after-update"] = True
    stored = await p.instance_store.find_by_uuid(instance.uuid)
    assert stored is not None
    assert "after-update" not in stored.context

    trigger: dict[str, Any] = {"who": {"id": 1}}
    await p.history_store.append(
        HistoryRecord(
            workflow_instance_uuid=instance.uuid,
            from_state=None,
            event_name="e",
            to_state="s",
            outcome="success",
            trigger_metadata=trigger,
        )
    )
    trigger["who"]["id"] = 2
    (row,) = await p.history_store.find_by_instance_uuid(instance.uuid)
    assert row.trigger_metadata == {"who": {"id": 1}}
    row.trigger_metadata["who"]["id"] = 3
    (row,) = await p.history_store.find_by_instance_uuid(instance.uuid)
    assert row.trigger_metadata == {"who": {"id": 1}}

    definition: dict[str, Any] = {"states": {"a": {}}}
    stored_def = await p.definition_store.ensure(
        workflow_name="w", version=1, content_hash="h", definition_json=definition
    )
    definition["states"]["b"] = {}
    stored_def.definition_json["states"]["c"] = {}
    found_def = await p.definition_store.find_by_name_and_version("w", 1)
    assert found_def is not None
    assert found_def.definition_json == {"states": {"a": {}}}


async def test_values_come_back_as_jsonb_and_timestamptz_give_them(
    p: WorkflowPersistenceProvider,
) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2025, 6, 1, 14, 0, 0, 123456, tzinfo=plus_two)
    instance = make_instance(
        context={"bb": 1, "a": (1, 2), "ccc": 1e16, "é": -0.0, "b": 0.5},
        expires_at=local,
        created_at=local,
    )
    await create(p, instance)
    found = await p.instance_store.find_by_uuid(instance.uuid)
    assert found is not None
    # jsonb orders keys by byte length, then bytes; tuples are arrays; numeric drops exponents.
    assert list(found.context) == ["a", "b", "bb", "é", "ccc"]
    assert found.context["a"] == [1, 2]
    assert found.context["ccc"] == 10**16
    assert type(found.context["ccc"]) is int
    assert found.context["b"] == 0.5
    assert found.expires_at == local
    assert found.expires_at is not None
    assert found.expires_at.tzinfo is UTC
    assert found.created_at.hour == 12


async def test_history_of_one_instance_reads_back_in_write_order_across_transactions(
    p: WorkflowPersistenceProvider,
) -> None:
    instance = make_instance()
    await create(p, instance)
    written = [await p.history_store.append(record(instance, f"e{n}")) for n in range(20)]
    rows = await p.history_store.find_by_instance_uuid(instance.uuid, limit=100)
    assert [r.uuid for r in rows] == list(reversed(written))
    stamps = [r.created_at for r in rows if r.created_at is not None]
    assert len(stamps) == len(rows)
    assert all(a > b for a, b in itertools.pairwise(stamps))


async def test_failing_callbacks_are_logged_on_the_package_logger(
    p: WorkflowPersistenceProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="duraflows_pg_async")

    def boom() -> None:
        raise RuntimeError("boom-5c1d")

    ran: list[str] = []
    async with p.transaction_runner.transaction():
        p.transaction_runner.after_commit(boom)
        p.transaction_runner.after_commit(lambda: ran.append("after"))
    assert ran == ["after"]
    assert any(
        r.name == "duraflows_pg_async" and r.exc_info and "boom-5c1d" in str(r.exc_info[1])
        for r in caplog.records
    )
