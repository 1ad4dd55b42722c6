-- Adds the timeout retry/parking columns to workflow_instances and the due and parked indexes.
-- migrate:up

-- Idempotent: on a large table, add the columns and build both indexes beforehand with
-- CREATE INDEX CONCURRENTLY (same names and definitions); this migration then skips them.
ALTER TABLE workflow_instances
    ADD COLUMN IF NOT EXISTS timeout_attempts   integer     NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS timeout_retry_at   timestamptz NULL,
    ADD COLUMN IF NOT EXISTS timeout_last_error text        NULL,
    ADD COLUMN IF NOT EXISTS timeout_parked_at  timestamptz NULL;

CREATE INDEX IF NOT EXISTS workflow_instances_timeout_due_idx
    ON workflow_instances ((coalesce(timeout_retry_at, expires_at)))
    WHERE expires_at IS NOT NULL AND timeout_parked_at IS NULL;

CREATE INDEX IF NOT EXISTS workflow_instances_timeout_parked_idx
    ON workflow_instances (timeout_parked_at)
    WHERE timeout_parked_at IS NOT NULL;

-- migrate:down

DROP INDEX IF EXISTS workflow_instances_timeout_parked_idx;
DROP INDEX IF EXISTS workflow_instances_timeout_due_idx;

ALTER TABLE workflow_instances
    DROP COLUMN timeout_parked_at,
    DROP COLUMN timeout_last_error,
    DROP COLUMN timeout_retry_at,
    DROP COLUMN timeout_attempts;
