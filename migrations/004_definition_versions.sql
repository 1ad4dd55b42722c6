-- Adds the workflow_definitions snapshot table and definition_version on instances and history.
-- migrate:up

CREATE TABLE workflow_definitions (
    workflow_name   text        NOT NULL,
    version         integer     NOT NULL,
    content_hash    text        NOT NULL,
    definition_json jsonb       NOT NULL,
    registered_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_name, version)
);

ALTER TABLE workflow_instances
    ADD COLUMN definition_version integer NULL;

ALTER TABLE workflow_history
    ADD COLUMN definition_version integer NULL;

-- migrate:down

ALTER TABLE workflow_history DROP COLUMN definition_version;
ALTER TABLE workflow_instances DROP COLUMN definition_version;
DROP TABLE IF EXISTS workflow_definitions;
