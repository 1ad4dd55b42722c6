"""The public conformance suites of duraflows_pg_async.testing, run on the PostgreSQL provider."""

from __future__ import annotations

import asyncpg
import pytest
from helpers import PgDatabaseError

from duraflows_pg_async import WorkflowPersistenceProvider, pg_workflow_providers
from duraflows_pg_async.testing import (
    DefinitionStoreConformance,
    ExecutionStoreConformance,
    HistoryStoreConformance,
    IdempotencyStoreConformance,
    InstanceStoreConformance,
    TransactionRunnerConformance,
)


@pytest.fixture
def conformance_provider(pool: asyncpg.Pool) -> WorkflowPersistenceProvider:
    """A provider over a fresh, migrated database (see tests/conftest.py), with every store."""
    return pg_workflow_providers(pool, idempotency=True, durable_execution=True)


class TestPgInstanceStoreConformance(InstanceStoreConformance):
    pass


class TestPgHistoryStoreConformance(HistoryStoreConformance):
    pass


class TestPgDefinitionStoreConformance(DefinitionStoreConformance):
    pass


class TestPgIdempotencyStoreConformance(IdempotencyStoreConformance):
    pass


class TestPgExecutionStoreConformance(ExecutionStoreConformance):
    pass


class TestPgTransactionRunnerConformance(PgDatabaseError, TransactionRunnerConformance):
    pass
