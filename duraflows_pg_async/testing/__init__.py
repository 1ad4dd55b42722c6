"""Conformance suites for persistence providers, to run with pytest, and a clock for tests.

To test your own workflows (not a provider), see the pytest plugin,
[`duraflows_pg_async.pytest_plugin`][duraflows_pg_async.pytest_plugin].

Every [`WorkflowPersistenceProvider`][duraflows_pg_async.WorkflowPersistenceProvider] (the
PostgreSQL one of this package, an in-memory one, a third-party adapter) must behave the same way
for the runtime to be correct on it. The base classes below hold that behaviour as pytest
tests. To check a provider, subclass them in one of your test modules and provide a
``conformance_provider`` fixture that returns a fresh provider over empty storage for every test:

```python
import pytest

from duraflows_pg_async import pg_workflow_providers
from duraflows_pg_async.testing import (
    DefinitionStoreConformance,
    ExecutionStoreConformance,
    HistoryStoreConformance,
    IdempotencyStoreConformance,
    InstanceStoreConformance,
    TransactionRunnerConformance,
)


@pytest.fixture
def conformance_provider(my_fresh_pool):
    return pg_workflow_providers(my_fresh_pool, idempotency=True, durable_execution=True)


class TestInstanceStore(InstanceStoreConformance):
    pass


class TestHistoryStore(HistoryStoreConformance):
    pass


class TestDefinitionStore(DefinitionStoreConformance):
    pass


class TestIdempotencyStore(IdempotencyStoreConformance):
    pass  # needs a provider built with idempotency=True


class TestExecutionStore(ExecutionStoreConformance):
    pass  # needs a provider built with durable_execution=True


class TestTransactionRunner(TransactionRunnerConformance):
    async def cause_database_error(self, provider):
        # Make the database reject a statement inside the current transaction.
        await provider.transaction_runner.connection().execute("SELECT 1/0")
```

The tests are ``async def`` methods: run them with pytest-asyncio in ``auto`` mode, or add
``pytestmark = pytest.mark.asyncio`` to each subclass under pytest-asyncio's ``strict`` mode.

Hooks a subclass may override:

- ``TransactionRunnerConformance.cause_database_error()``:
  make the database reject a statement inside the current transaction (and let the error propagate).
  Providers without a database keep the default, which returns ``NotImplemented``; the test that
  needs it is then skipped with a reason.
- ``TransactionRunnerConformance.callback_failure_logger``:
  the logger name that must record a warning when an after-commit callback raises (``None`` skips
  that check).

[`ManualClock`][duraflows_pg_async.testing.ManualClock] is a clock your tests move by hand, and
[`make_instance()`][duraflows_pg_async.testing.make_instance] builds a valid new
[`WorkflowInstance`][duraflows_pg_async.WorkflowInstance] with any field overridden; it is handy in
your own tests too.
"""

from __future__ import annotations

from .clock import ManualClock
from .data import make_instance
from .definitions import DefinitionStoreConformance
from .executions import ExecutionStoreConformance
from .history import HistoryStoreConformance
from .idempotency import IdempotencyStoreConformance
from .instances import InstanceStoreConformance
from .runner import TransactionRunnerConformance

__all__ = [
    "ManualClock",
    "make_instance",
    "InstanceStoreConformance",
    "HistoryStoreConformance",
    "DefinitionStoreConformance",
    "TransactionRunnerConformance",
    "IdempotencyStoreConformance",
    "ExecutionStoreConformance",
]
