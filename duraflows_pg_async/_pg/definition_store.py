"""PgWorkflowDefinitionStore: definition snapshots in ``workflow_definitions``."""

from __future__ import annotations

from typing import Any

import asyncpg

from duraflows_pg_async._core.model import StoredWorkflowDefinition
from duraflows_pg_async._core.store_checks import check_ensure_arguments
from duraflows_pg_async._core.validate import INT4_MAX, require_int, require_str
from duraflows_pg_async._pg.error_mapping import map_db_errors
from duraflows_pg_async.errors import WorkflowError

from .codecs import decoded
from .store_base import PgStore

__all__ = ["PgWorkflowDefinitionStore"]


def _definition_from_row(row: asyncpg.Record) -> StoredWorkflowDefinition:
    # By column name: the SELECT list (queries.DEFINITION_COLUMNS) may change order freely.
    return StoredWorkflowDefinition(
        workflow_name=row["workflow_name"],
        version=row["version"],
        content_hash=row["content_hash"],
        definition_json=decoded(row["definition_json"], "workflow_definitions.definition_json"),
        registered_at=row["registered_at"],
    )


class PgWorkflowDefinitionStore(PgStore):
    """Definition snapshots keyed by (workflow name, version). Joins the current transaction if
    there is one, so a snapshot commits or rolls back with the instance that needed it."""

    __slots__ = ()

    async def ensure(
        self,
        *,
        workflow_name: str,
        version: int,
        content_hash: str,
        definition_json: dict[str, Any],
    ) -> StoredWorkflowDefinition:
        """Store the snapshot unless one exists, and return the stored row (the first one wins;
        compare its ``content_hash`` to detect drift)."""
        check_ensure_arguments(workflow_name, version, content_hash, definition_json)
        what = f'ensure workflow definition "{workflow_name}" version {version}'
        executor = self._executor()
        with map_db_errors(what, executor):
            row = await executor.fetchrow(
                self._q.ensure_definition, workflow_name, version, content_hash, definition_json
            )
            if row is None:
                # A concurrent transaction committed the row after this statement's snapshot was
                # taken; a fresh statement sees it.
                row = await executor.fetchrow(self._q.select_definition, workflow_name, version)
        if row is None:
            raise WorkflowError(
                f'Failed to ensure workflow definition "{workflow_name}" version {version}'
            )
        return _definition_from_row(row)

    async def replace(
        self,
        *,
        workflow_name: str,
        version: int,
        content_hash: str,
        definition_json: dict[str, Any],
    ) -> StoredWorkflowDefinition | None:
        """Overwrite a stored snapshot (None when there is none). For development only: the
        runtime calls it under ``allow_unbumped_edits`` when no active instance is pinned to the
        version; nothing else should, since instances read their rules from this row."""
        check_ensure_arguments(workflow_name, version, content_hash, definition_json)
        executor = self._executor()
        with map_db_errors(
            f'replace workflow definition "{workflow_name}" version {version}', executor
        ):
            row = await executor.fetchrow(
                self._q.replace_definition, workflow_name, version, content_hash, definition_json
            )
        return None if row is None else _definition_from_row(row)

    async def find_by_name_and_version(
        self, workflow_name: str, version: int
    ) -> StoredWorkflowDefinition | None:
        require_str(workflow_name, "workflow_name")
        require_int(version, "version", minimum=1, maximum=INT4_MAX)  # an integer column
        executor = self._executor()
        with map_db_errors(
            f'find workflow definition "{workflow_name}" version {version}', executor
        ):
            row = await executor.fetchrow(self._q.select_definition, workflow_name, version)
        return None if row is None else _definition_from_row(row)

    async def list_versions(self, workflow_name: str) -> list[StoredWorkflowDefinition]:
        """Every stored version of the workflow, oldest first."""
        require_str(workflow_name, "workflow_name")
        executor = self._executor()
        with map_db_errors(f'list versions of workflow definition "{workflow_name}"', executor):
            rows = await executor.fetch(self._q.list_definitions, workflow_name)
        return [_definition_from_row(row) for row in rows]
