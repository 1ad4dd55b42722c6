"""MemoryWorkflowDefinitionStore: definition snapshots in memory."""

from __future__ import annotations

from typing import Any

from duraflows_pg_async._core.model import StoredWorkflowDefinition
from duraflows_pg_async._core.store_checks import check_ensure_arguments
from duraflows_pg_async._core.validate import INT4_MAX, require_int, require_str

from .locks import FOR_UPDATE
from .round_trip import as_jsonb
from .rows import export_definition
from .store_base import MemoryStore, reading_level, statement
from .transaction import Level

__all__ = ["MemoryWorkflowDefinitionStore"]


class MemoryWorkflowDefinitionStore(MemoryStore):
    """Definition snapshots keyed by (workflow name, version). Joins the current transaction if
    there is one; ``registered_at`` is the transaction's start time, as PostgreSQL's now()."""

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
        name = str.__str__(workflow_name)
        key = (name, int.__index__(version))
        database = self._database
        what = f'ensure workflow definition "{workflow_name}" version {version}'

        async def op(level: Level) -> StoredWorkflowDefinition:
            row = database._definition(level, key)
            if row is None:
                # Wait for another transaction's uncommitted row with this key, as ON CONFLICT.
                undo = await database._locks.acquire(level, ("definition", *key), FOR_UPDATE, what)
                row = database._definition(level, key)
                if row is not None:
                    database._locks.undo(level, undo)
                else:
                    row = StoredWorkflowDefinition(
                        workflow_name=name,
                        version=key[1],
                        content_hash=str.__str__(content_hash),
                        definition_json=as_jsonb(definition_json),
                        registered_at=level.root.started_at,
                    )
                    level.definitions[key] = row
            return export_definition(row)

        return await statement(database, what, op)

    async def replace(
        self,
        *,
        workflow_name: str,
        version: int,
        content_hash: str,
        definition_json: dict[str, Any],
    ) -> StoredWorkflowDefinition | None:
        """Overwrite a stored snapshot (None when there is none); development only, as the
        PostgreSQL store's."""
        check_ensure_arguments(workflow_name, version, content_hash, definition_json)
        key = (str.__str__(workflow_name), int.__index__(version))
        database = self._database
        what = f'replace workflow definition "{workflow_name}" version {version}'

        async def op(level: Level) -> StoredWorkflowDefinition | None:
            await database._locks.acquire(level, ("definition", *key), FOR_UPDATE, what)
            row = database._definition(level, key)
            if row is None:
                return None
            row = StoredWorkflowDefinition(
                workflow_name=key[0],
                version=key[1],
                content_hash=str.__str__(content_hash),
                definition_json=as_jsonb(definition_json),
                registered_at=level.root.started_at,
            )
            level.definitions[key] = row
            return export_definition(row)

        return await statement(database, what, op)

    async def find_by_name_and_version(
        self, workflow_name: str, version: int
    ) -> StoredWorkflowDefinition | None:
        require_str(workflow_name, "workflow_name")
        require_int(version, "version", minimum=1, maximum=INT4_MAX)  # as PostgreSQL's integer
        level = reading_level(
            self._database, f'find workflow definition "{workflow_name}" version {version}'
        )
        row = self._database._definition(level, (workflow_name, version))
        return None if row is None else export_definition(row)

    async def list_versions(self, workflow_name: str) -> list[StoredWorkflowDefinition]:
        """Every stored version of the workflow, oldest first."""
        require_str(workflow_name, "workflow_name")
        level = reading_level(
            self._database, f'list versions of workflow definition "{workflow_name}"'
        )
        rows = [
            row
            for (name, _), row in self._database._all_definitions(level).items()
            if name == workflow_name
        ]
        rows.sort(key=lambda row: row.version)
        return [export_definition(row) for row in rows]
