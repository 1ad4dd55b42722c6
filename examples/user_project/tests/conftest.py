import asyncpg
import pytest
from approvals import build_runtime, create_schema

from duraflows_pg_async import WorkflowRuntime, pg_workflow_providers
from duraflows_pg_async.testing import ManualClock

# --8<-- [start:plugin]
# The plugin is opt-in: installing the package loads nothing into pytest.
pytest_plugins = ["duraflows_pg_async.pytest_plugin"]
# --8<-- [end:plugin]


# --8<-- [start:template]
@pytest.fixture(scope="session")
def duraflows_template_setup():
    """The app's own tables, in the template that every test's database is copied from."""
    return create_schema  # an async callable taking an asyncpg.Connection


# --8<-- [end:template]


# --8<-- [start:runtime]
@pytest.fixture
def runtime(duraflows_pool: asyncpg.Pool, duraflows_clock: ManualClock) -> WorkflowRuntime:
    """The app's runtime on this test's fresh database, on a clock the test moves."""
    return build_runtime(pg_workflow_providers(duraflows_pool), clock=duraflows_clock)


# --8<-- [end:runtime]
