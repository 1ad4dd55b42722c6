-- Creates the queue of durable executions; optional: needed only with durable_execution=True.
-- migrate:up

-- Execution uuids come from the application; deleting the instance deletes its executions. An
-- idempotency key names one execution of an instance; it compares byte for byte (COLLATE "C")
-- and holds 1 to 256 bytes.
CREATE TABLE workflow_executions (
    uuid                   uuid        PRIMARY KEY,
    workflow_instance_uuid uuid        NOT NULL
        REFERENCES workflow_instances (uuid) ON DELETE CASCADE,
    idempotency_key        text        COLLATE "C" NOT NULL
        CHECK (octet_length(idempotency_key) BETWEEN 1 AND 256),
    status                 text        NOT NULL
        CHECK (status IN ('pending', 'running', 'parked', 'completed', 'cancelled')),
    available_at           timestamptz NOT NULL,
    lease_until            timestamptz NULL,
    revision               integer     NOT NULL CHECK (revision >= 0),
    execution_json         jsonb       NOT NULL CHECK (jsonb_typeof(execution_json) = 'object'),
    UNIQUE (workflow_instance_uuid, idempotency_key)
);

-- At most one active (pending, running or parked) execution per instance.
CREATE UNIQUE INDEX workflow_executions_active_idx
    ON workflow_executions (workflow_instance_uuid)
    WHERE status IN ('pending', 'running', 'parked');

-- The due executions in due order, for the workers that claim them.
CREATE INDEX workflow_executions_due_idx
    ON workflow_executions (available_at, uuid)
    WHERE status IN ('pending', 'running');

-- migrate:down

DROP TABLE IF EXISTS workflow_executions;
