"""The public conformance suites of duraflows_pg_async.testing, run on the in-memory provider.

The in-memory database aborts a transaction on a database-type error (a duplicate key) the way
PostgreSQL does, so the suite's "caught nested database error" test runs here too.
"""

from __future__ import annotations

import pytest

from duraflows_pg_async import (
    WorkflowPersistenceProvider,
    memory_workflow_providers,
)
from duraflows_pg_async.testing import (
    DefinitionStoreConformance,
    ExecutionStoreConformance,
    HistoryStoreConformance,
    IdempotencyStoreConformance,
    InstanceStoreConformance,
    TransactionRunnerConformance,
    make_instance,
)


@pytest.fixture
def conformance_provider() -> WorkflowPersistenceProvider:
    """A provider over a new, empty in-memory database."""
    return memory_workflow_providers(idempotency=True, durable_execution=True)


class TestMemoryInstanceStoreConformance(InstanceStoreConformance):
    pass


class TestMemoryHistoryStoreConformance(HistoryStoreConformance):
    pass


class TestMemoryDefinitionStoreConformance(DefinitionStoreConformance):
    pass


class TestMemoryIdempotencyStoreConformance(IdempotencyStoreConformance):
    pass


class TestMemoryExecutionStoreConformance(ExecutionStoreConformance):
    pass


class TestMemoryTransactionRunnerConformance(TransactionRunnerConformance):
    async def cause_database_error(self, provider: WorkflowPersistenceProvider) -> None:
        # A duplicate primary key: the statement fails and aborts the (sub)transaction.
        instance = make_instance()
        await provider.instance_store.create(instance)
        await provider.instance_store.create(instance)  # raises InstanceAlreadyExistsError
