-- Creates the workflow_instances and workflow_history tables and their indexes.
-- migrate:up

-- Instance uuids come from the application; history uuids from the database default.
CREATE TABLE workflow_instances (
    uuid               uuid        PRIMARY KEY,
    workflow_name      text        NOT NULL,
    current_state      text        NOT NULL,
    version            integer     NOT NULL DEFAULT 0,
    expires_at         timestamptz NULL,
    last_transition_at timestamptz NOT NULL DEFAULT now(),
    context_json       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    metadata_json      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX workflow_instances_workflow_name_idx
    ON workflow_instances (workflow_name);

CREATE INDEX workflow_instances_expires_at_idx
    ON workflow_instances (expires_at)
    WHERE expires_at IS NOT NULL;

-- The outcome CHECK is left unnamed on purpose: PostgreSQL names it
-- workflow_history_outcome_check, the name 003 replaces.
CREATE TABLE workflow_history (
    uuid                   uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    workflow_instance_uuid uuid        NOT NULL REFERENCES workflow_instances (uuid),
    from_state             text        NULL,
    event_name             text        NOT NULL,
    to_state               text        NOT NULL,
    outcome                text        NOT NULL CHECK (outcome IN ('success', 'failure')),
    error_message          text        NULL,
    command_results_json   jsonb       NOT NULL DEFAULT '[]'::jsonb,
    trigger_metadata_json  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at             timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX workflow_history_instance_created_idx
    ON workflow_history (workflow_instance_uuid, created_at DESC);

-- migrate:down

DROP TABLE IF EXISTS workflow_history;
DROP TABLE IF EXISTS workflow_instances;
