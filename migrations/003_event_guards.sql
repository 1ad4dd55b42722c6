-- Allows the 'guard-rejected' history outcome and adds the rejected_by column.
-- migrate:up

ALTER TABLE workflow_history
    DROP CONSTRAINT IF EXISTS workflow_history_outcome_check;

ALTER TABLE workflow_history
    ADD CONSTRAINT workflow_history_outcome_check
    CHECK (outcome IN ('success', 'failure', 'guard-rejected'));

ALTER TABLE workflow_history
    ADD COLUMN IF NOT EXISTS rejected_by text;

-- migrate:down

-- Fails while any history row has outcome 'guard-rejected': the two-value CHECK is validated
-- against existing rows. Delete or relabel those rows first (losing that audit trail); the
-- failed step changes nothing.
ALTER TABLE workflow_history
    DROP CONSTRAINT IF EXISTS workflow_history_outcome_check;

ALTER TABLE workflow_history
    ADD CONSTRAINT workflow_history_outcome_check
    CHECK (outcome IN ('success', 'failure'));

ALTER TABLE workflow_history
    DROP COLUMN IF EXISTS rejected_by;
