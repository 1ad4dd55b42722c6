-- Indexes due timeouts per workflow (ours: numbered 100 so upstream's 007, 008... sort first).
-- migrate:up

-- Sweeps take only the workflows their runtime registers: this lets one range-scan a workflow's
-- due rows in due order, however many due rows other services' workflows have. The 'infinity'
-- never applies (expires_at is not null here); it makes the expression this index's own, so
-- that the planner reaches a workflow's rows through it rather than through 005's index.
-- Idempotent, so it can be built beforehand with CREATE INDEX CONCURRENTLY under the same name.
CREATE INDEX IF NOT EXISTS workflow_instances_workflow_due_idx
    ON workflow_instances
    (workflow_name, (coalesce(timeout_retry_at, expires_at, 'infinity'::timestamptz)))
    WHERE expires_at IS NOT NULL AND timeout_parked_at IS NULL;

-- migrate:down

DROP INDEX IF EXISTS workflow_instances_workflow_due_idx;
