-- Moves the legacy triggered_by_type/triggered_by_uuid history columns into trigger_metadata_json.
-- migrate:up

-- Only databases created by the first form of 001 still have the legacy columns; on any other
-- schema the block does nothing. The lookup resolves workflow_history through search_path,
-- exactly as the ALTER TABLE statements below do.
DO $$
BEGIN
    IF EXISTS (
        SELECT 1
        FROM pg_attribute
        WHERE attrelid = to_regclass('workflow_history')
          AND attname = 'triggered_by_type'
          AND NOT attisdropped
    ) THEN
        ALTER TABLE workflow_history
            ADD COLUMN IF NOT EXISTS trigger_metadata_json jsonb NOT NULL DEFAULT '{}'::jsonb;
        UPDATE workflow_history
        SET trigger_metadata_json = jsonb_build_object(
                'type', triggered_by_type,
                'actorUuid', triggered_by_uuid)
        WHERE triggered_by_type IS NOT NULL;
        ALTER TABLE workflow_history DROP COLUMN IF EXISTS triggered_by_type;
        ALTER TABLE workflow_history DROP COLUMN IF EXISTS triggered_by_uuid;
    END IF;
END
$$;

-- migrate:down

-- Works from either form of the table: the legacy columns are re-created and filled from the
-- JSON (rows whose JSON is '{}' keep NULLs), then the JSON column goes.
ALTER TABLE workflow_history ADD COLUMN IF NOT EXISTS triggered_by_type text;
ALTER TABLE workflow_history ADD COLUMN IF NOT EXISTS triggered_by_uuid uuid NULL;

UPDATE workflow_history
SET triggered_by_type = trigger_metadata_json ->> 'type',
    triggered_by_uuid = (trigger_metadata_json ->> 'actorUuid')::uuid
WHERE trigger_metadata_json <> '{}'::jsonb;

ALTER TABLE workflow_history DROP COLUMN IF EXISTS trigger_metadata_json;
