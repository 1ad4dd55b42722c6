-- Indexes list_instances and stats (ours: numbered after 100 so upstream's migrations sort first).
-- migrate:up

-- list_instances pages in uuid order (a keyset on the primary key): these two give a workflow's
-- instances, and a workflow's instances in one state, in that order, so a page is a range scan
-- that stops at its limit. The second also counts instances per (workflow, state) for stats with
-- an index-only scan. The third holds only the rows with timeout state (retrying, parked, or a
-- sweep's claim), usually few: listing them and counting them per state reads this index alone.
-- Indexing current_state makes a transition that changes nothing else indexed a non-HOT update.
-- Idempotent, so each can be built beforehand with CREATE INDEX CONCURRENTLY under the same name.
CREATE INDEX IF NOT EXISTS workflow_instances_workflow_uuid_idx
    ON workflow_instances (workflow_name, uuid);

CREATE INDEX IF NOT EXISTS workflow_instances_workflow_state_idx
    ON workflow_instances (workflow_name, current_state, uuid);

CREATE INDEX IF NOT EXISTS workflow_instances_timeout_state_idx
    ON workflow_instances (workflow_name, uuid)
    INCLUDE (current_state, timeout_attempts, timeout_retry_at, timeout_parked_at)
    WHERE timeout_attempts > 0 OR timeout_retry_at IS NOT NULL OR timeout_parked_at IS NOT NULL;

-- migrate:down

DROP INDEX IF EXISTS workflow_instances_timeout_state_idx;
DROP INDEX IF EXISTS workflow_instances_workflow_state_idx;
DROP INDEX IF EXISTS workflow_instances_workflow_uuid_idx;
