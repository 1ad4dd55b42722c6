-- Indexes workflow_instances by (workflow_name, definition_version); recommended, not required.
-- migrate:up

-- Keeps the startup version check and per-version instance counts cheap on large tables.
-- Idempotent, so it can be built beforehand with CREATE INDEX CONCURRENTLY under the same name.
CREATE INDEX IF NOT EXISTS workflow_instances_definition_version_idx
    ON workflow_instances (workflow_name, definition_version);

-- migrate:down

DROP INDEX IF EXISTS workflow_instances_definition_version_idx;
