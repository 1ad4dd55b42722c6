"""The public conformance suites of duraflows_pg_async.testing, run on the PostgreSQL provider."""

from __future__ import annotations

import pytest

from duraflows_pg_async import PgTransactionRunner, WorkflowPersistenceProvider
from duraflows_pg_async.testing import (
    DefinitionStoreConformance,
    HistoryStoreConformance,
    InstanceStoreConformance,
    TransactionRunnerConformance,
)


@pytest.fixture
def conformance_provider(providers: WorkflowPersistenceProvider) -> WorkflowPersistenceProvider:
    """A provider over a fresh, migrated database (see tests/conftest.py)."""
    return providers


class TestPgInstanceStoreConformance(InstanceStoreConformance):
    pass


class TestPgHistoryStoreConformance(HistoryStoreConformance):
    pass


class TestPgDefinitionStoreConformance(DefinitionStoreConformance):
    pass


class TestPgTransactionRunnerConformance(TransactionRunnerConformance):
    async def cause_database_error(self, provider: WorkflowPersistenceProvider) -> object:
        # The suite calls this inside a nested transaction() (a savepoint): a caught SQL error
        # would otherwise leave the whole PostgreSQL transaction aborted.
        runner = provider.transaction_runner
        assert isinstance(runner, PgTransactionRunner)
        return await runner.connection().execute("SELECT 1/0")
