"""The public conformance suites of duraflows_pg_async.testing, run on the PostgreSQL provider."""

from __future__ import annotations

import asyncpg
import pytest

from duraflows_pg_async import (
    PgTransactionRunner,
    WorkflowPersistenceProvider,
    pg_workflow_providers,
)
from duraflows_pg_async.testing import (
    DefinitionStoreConformance,
    HistoryStoreConformance,
    IdempotencyStoreConformance,
    InstanceStoreConformance,
    TransactionRunnerConformance,
)


@pytest.fixture
def conformance_provider(pool: asyncpg.Pool) -> WorkflowPersistenceProvider:
    """A provider over a fresh, migrated database (see tests/conftest.py), with every store."""
    return pg_workflow_providers(pool, idempotency=True)


class TestPgInstanceStoreConformance(InstanceStoreConformance):
    pass


class TestPgHistoryStoreConformance(HistoryStoreConformance):
    pass


class TestPgDefinitionStoreConformance(DefinitionStoreConformance):
    pass


class TestPgIdempotencyStoreConformance(IdempotencyStoreConformance):
    pass


class TestPgTransactionRunnerConformance(TransactionRunnerConformance):
    async def cause_database_error(self, provider: WorkflowPersistenceProvider) -> object:
        # The suite calls this inside a nested transaction() (a savepoint): a caught SQL error
        # would otherwise leave the whole PostgreSQL transaction aborted.
        runner = provider.transaction_runner
        assert isinstance(runner, PgTransactionRunner)
        return await runner.connection().execute("SELECT 1/0")
