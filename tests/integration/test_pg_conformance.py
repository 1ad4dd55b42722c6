"""The public conformance suites of duraflows_pg_async.testing, run on the PostgreSQL provider."""

from __future__ import annotations

import pytest
from helpers import PgDatabaseError

from duraflows_pg_async import WorkflowPersistenceProvider
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


class TestPgTransactionRunnerConformance(PgDatabaseError, TransactionRunnerConformance):
    pass
