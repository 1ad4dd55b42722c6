"""The conformance suite of the transaction runner."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async.errors import NoActiveTransactionError

from ._helpers import Rollback
from .data import make_instance

__all__ = ["TransactionRunnerConformance"]


class TransactionRunnerConformance:
    """The ``WorkflowTransactionRunner`` contract (savepoint nesting, after-commit callbacks).

    Subclass in a test module as ``class TestX(TransactionRunnerConformance)`` and provide a
    ``conformance_provider`` fixture returning a fresh, empty ``WorkflowPersistenceProvider``.
    Override `cause_database_error()` when the provider has a database.
    """

    #: Logger that must record a warning when an after-commit callback raises (None: no check).
    callback_failure_logger: str | None = "duraflows_pg_async"

    async def cause_database_error(self, provider: WorkflowPersistenceProvider) -> object:
        """Make the database reject a statement in the current transaction; let the error out.

        Called inside a nested ``transaction()``. The default returns ``NotImplemented`` (the
        provider has no database), which skips the test that needs it.
        """
        return NotImplemented

    async def test_after_commit_callbacks_run_after_the_outermost_commit_in_order(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        store = conformance_provider.instance_store
        instance = make_instance()
        events: list[tuple[str, bool, bool]] = []

        def recorder(label: str) -> Callable[[], Awaitable[None]]:
            async def callback() -> None:
                # Runs outside the finished transaction, and its write is visible to all.
                visible = await store.find_by_uuid(instance.uuid) is not None
                events.append((label, runner.is_transaction_active(), visible))

            return callback

        async with runner.transaction():
            await store.create(instance)
            runner.after_commit(recorder("first"))
            async with runner.transaction():
                runner.after_commit(recorder("nested"))
            assert events == [], "a callback ran before the outermost commit"
            runner.after_commit(recorder("last"))
            assert events == [], "a callback ran before the outermost commit"

        assert events == [
            ("first", False, True),
            ("nested", False, True),
            ("last", False, True),
        ]

    async def test_after_commit_callbacks_are_discarded_on_rollback(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        store = conformance_provider.instance_store
        instance = make_instance()
        events: list[str] = []

        async def rolled_back() -> None:
            async with runner.transaction():
                await store.create(instance)
                runner.after_commit(lambda: events.append("outer"))
                async with runner.transaction():
                    runner.after_commit(lambda: events.append("nested"))
                raise Rollback

        with pytest.raises(Rollback):
            await rolled_back()
        assert events == []
        assert await store.find_by_uuid(instance.uuid) is None
        assert not runner.is_transaction_active()

        # The next transaction starts clean: no leftover callbacks run with it.
        async with runner.transaction():
            runner.after_commit(lambda: events.append("next"))
        assert events == ["next"]

    async def test_failed_nested_transaction_rolls_back_only_its_own_work(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        store = conformance_provider.instance_store
        before = make_instance(current_state="before")
        inside = make_instance(current_state="inside")
        after = make_instance(current_state="after")
        events: list[str] = []

        async def failing_nested() -> None:
            async with runner.transaction():
                await store.create(inside)
                runner.after_commit(lambda: events.append("failed-nested"))
                raise Rollback

        async with runner.transaction():
            await store.create(before)
            runner.after_commit(lambda: events.append("outer"))
            with pytest.raises(Rollback):
                await failing_nested()
            assert runner.is_transaction_active()
            assert await store.find_by_uuid(inside.uuid) is None
            assert await store.find_by_uuid(before.uuid) is not None
            await store.create(after)
            runner.after_commit(lambda: events.append("outer-after"))

        assert events == ["outer", "outer-after"]
        assert await store.find_by_uuid(before.uuid) is not None
        assert await store.find_by_uuid(after.uuid) is not None
        assert await store.find_by_uuid(inside.uuid) is None

    async def test_outer_transaction_usable_after_a_caught_nested_database_error(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        store = conformance_provider.instance_store
        before = make_instance(current_state="before")
        inside = make_instance(current_state="inside")
        after = make_instance(current_state="after")
        events: list[str] = []
        caught: Exception | None = None

        async with runner.transaction():
            await store.create(before)
            try:
                async with runner.transaction():
                    await store.create(inside)
                    runner.after_commit(lambda: events.append("failed-nested"))
                    if await self.cause_database_error(conformance_provider) is NotImplemented:
                        pytest.skip(
                            "cause_database_error() is not implemented for this provider (it has "
                            "no database that can reject a statement)"
                        )
                    pytest.fail("cause_database_error() returned instead of raising an error")
            except Exception as exc:
                caught = exc
            # The failed statement was rolled back with its savepoint; the outer transaction
            # still takes statements and commits.
            assert await store.find_by_uuid(before.uuid) is not None
            assert await store.find_by_uuid(inside.uuid) is None
            await store.create(after)
            runner.after_commit(lambda: events.append("outer"))

        assert caught is not None
        assert not isinstance(caught, AssertionError), caught
        assert events == ["outer"]
        assert await store.find_by_uuid(before.uuid) is not None
        assert await store.find_by_uuid(after.uuid) is not None
        assert await store.find_by_uuid(inside.uuid) is None

    async def test_a_failing_callback_does_not_stop_the_others(
        self, conformance_provider: WorkflowPersistenceProvider, caplog: pytest.LogCaptureFixture
    ) -> None:
        runner = conformance_provider.transaction_runner
        store = conformance_provider.instance_store
        logger_name = self.callback_failure_logger
        if logger_name is not None:
            caplog.set_level(logging.WARNING, logger=logger_name)
        instance = make_instance()
        events: list[str] = []

        def explode() -> None:
            events.append("explode")
            raise RuntimeError("first-7f3a callback failed")

        async def explode_async() -> None:
            events.append("explode-async")
            raise ValueError("second-7f3a callback failed")

        async def after_async() -> None:
            events.append("after-async")

        async def body() -> str:
            await store.create(instance)
            runner.after_commit(lambda: events.append("before"))
            runner.after_commit(explode)
            runner.after_commit(explode_async)
            runner.after_commit(after_async)
            return "committed"

        assert await runner.run_in_transaction(body) == "committed"
        assert events == ["before", "explode", "explode-async", "after-async"]
        assert await store.find_by_uuid(instance.uuid) is not None

        if logger_name is not None:
            warnings = [
                record
                for record in caplog.records
                if (record.name == logger_name or record.name.startswith(logger_name + "."))
                and record.levelno >= logging.WARNING
            ]
            logged = " | ".join(
                f"{record.getMessage()} {record.exc_info[1] if record.exc_info else ''}"
                for record in warnings
            )
            assert "first-7f3a callback failed" in logged, (
                f"no warning logged for the sync callback: {logged}"
            )
            assert "second-7f3a callback failed" in logged, (
                f"no warning logged for the async callback: {logged}"
            )

    async def test_after_commit_outside_a_transaction_raises(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        events: list[str] = []
        with pytest.raises(NoActiveTransactionError):
            runner.after_commit(lambda: events.append("never"))
        # Nor is it queued for a later transaction.
        async with runner.transaction():
            pass
        assert events == []

    async def test_a_transaction_started_from_a_callback_is_a_fresh_outermost_one(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        store = conformance_provider.instance_store
        first = make_instance(current_state="first")
        from_callback = make_instance(current_state="from-callback")
        events: list[str] = []

        async def callback() -> None:
            events.append(f"outer-start active={runner.is_transaction_active()}")
            async with runner.transaction():
                events.append(f"inner active={runner.is_transaction_active()}")
                await store.create(from_callback)
                runner.after_commit(lambda: events.append("inner-callback"))
            # The inner transaction was outermost: it committed and ran its callback already.
            events.append("outer-end")

        async with runner.transaction():
            await store.create(first)
            runner.after_commit(callback)

        assert events == [
            "outer-start active=False",
            "inner active=True",
            "inner-callback",
            "outer-end",
        ]
        assert await store.find_by_uuid(from_callback.uuid) is not None
        assert not runner.is_transaction_active()

    async def test_sync_async_and_coroutine_returning_callbacks(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        events: list[str] = []

        def sync_callback() -> None:
            events.append("sync")

        async def async_callback() -> None:
            events.append("async")

        async def record(label: str) -> None:
            events.append(label)

        async with runner.transaction():
            runner.after_commit(sync_callback)
            runner.after_commit(async_callback)
            runner.after_commit(lambda: record("lambda-coroutine"))
            runner.after_commit(lambda: events.append("lambda-sync"))
        assert events == ["sync", "async", "lambda-coroutine", "lambda-sync"]

    async def test_is_transaction_active(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        assert runner.is_transaction_active() is False
        async with runner.transaction():
            assert runner.is_transaction_active() is True
            async with runner.transaction():
                assert runner.is_transaction_active() is True
            assert runner.is_transaction_active() is True
        assert runner.is_transaction_active() is False

        async def inside() -> bool:
            return runner.is_transaction_active()

        assert await runner.run_in_transaction(inside) is True
        assert runner.is_transaction_active() is False
        with pytest.raises(Rollback):
            async with runner.transaction():
                raise Rollback
        assert runner.is_transaction_active() is False

    async def test_run_in_transaction_returns_the_value_and_commits(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        store = conformance_provider.instance_store
        instance = make_instance()
        result = object()

        async def body() -> object:
            await store.create(instance)
            return result

        assert await runner.run_in_transaction(body) is result
        assert await store.find_by_uuid(instance.uuid) is not None

        async def nested() -> object:
            return await runner.run_in_transaction(body_value)

        async def body_value() -> object:
            return result

        assert await runner.run_in_transaction(nested) is result

    async def test_a_raising_body_propagates_the_same_exception(
        self, conformance_provider: WorkflowPersistenceProvider
    ) -> None:
        runner = conformance_provider.transaction_runner
        store = conformance_provider.instance_store
        instance = make_instance()
        error = Rollback("the caller's own error")

        async def body() -> None:
            await store.create(instance)
            raise error

        with pytest.raises(Rollback) as raised:
            await runner.run_in_transaction(body)
        assert raised.value is error
        assert await store.find_by_uuid(instance.uuid) is None

        async def raising_in_nested() -> None:
            async with runner.transaction():
                await store.create(instance)
                async with runner.transaction():
                    raise error

        with pytest.raises(Rollback) as raised:
            await raising_in_nested()
        assert raised.value is error
        assert await store.find_by_uuid(instance.uuid) is None

        lookup_error = KeyError("caller")
        with pytest.raises(KeyError) as raised_key:
            async with runner.transaction():
                raise lookup_error
        assert raised_key.value is lookup_error
