"""The SQL of one transition, written by hand for the baselines.

Baseline A (asyncpg) and baseline B (pgbench) run the statements the adapter runs for
``lock_by_uuid`` + ``update`` + ``append``: the same tables, the same columns, the same
``WHERE`` clauses. The one deliberate difference is ``created_at`` of the history row: plain
hand-written code lets the database stamp it with ``now()`` (the column default), where the adapter
computes ``greatest(clock_timestamp(), newest row of the instance + 1 µs)`` to keep the history of
one transaction in write order.
"""

from __future__ import annotations

from uuid import UUID

__all__ = [
    "INSERT_HISTORY",
    "LOCK_INSTANCE",
    "UPDATE_INSTANCE",
    "pgbench_instance_uuid",
    "pgbench_script",
]

INSTANCE_COLUMNS = (
    "uuid, workflow_name, current_state, version, expires_at, last_transition_at, context_json, "
    "metadata_json, created_at, updated_at, definition_version, timeout_attempts, "
    "timeout_retry_at, timeout_last_error, timeout_parked_at"
)

# $1=uuid
LOCK_INSTANCE = f"SELECT {INSTANCE_COLUMNS} FROM workflow_instances WHERE uuid = $1 FOR UPDATE"

# $1=uuid $2=current_state $3=version $4=expires_at $5=last_transition_at $6=context
# $7=updated_at $8=definition_version $9..$12=timeout retry columns $13=expected version
UPDATE_INSTANCE = (
    "UPDATE workflow_instances SET current_state = $2, version = $3, expires_at = $4, "
    "last_transition_at = $5, context_json = $6, updated_at = $7, definition_version = $8, "
    "timeout_attempts = $9, timeout_retry_at = $10, timeout_last_error = $11, "
    "timeout_parked_at = $12 WHERE uuid = $1 AND version = $13"
)

HISTORY_COLUMNS = (
    "workflow_instance_uuid, from_state, event_name, to_state, outcome, error_message, "
    "rejected_by, command_results_json, trigger_metadata_json, definition_version, created_at"
)

# $1=instance $2=from_state $3=event_name $4=to_state $5=outcome $6=error_message
# $7=rejected_by $8=command_results $9=trigger_metadata $10=definition_version
INSERT_HISTORY = (
    f"INSERT INTO workflow_history ({HISTORY_COLUMNS}) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now()) RETURNING uuid"
)

# pgbench cannot bind a uuid it computed, so its instances have uuids built from an integer:
# the client number plus one, in decimal, as the last group.
_PGBENCH_UUID_PREFIX = "b0000000-0000-4000-8000-"
_PGBENCH_UUID_SQL = f"('{_PGBENCH_UUID_PREFIX}' || lpad(:id, 12, '0'))::uuid"


def pgbench_instance_uuid(number: int) -> UUID:
    """The uuid of pgbench's instance ``number`` (1-based: client 0 uses instance 1)."""
    if not 1 <= number < 10**12:
        raise ValueError(f"pgbench instance number out of range: {number}")
    return UUID(f"{_PGBENCH_UUID_PREFIX}{number:012d}")


def pgbench_script() -> str:
    """The custom pgbench script: one transition on the client's own instance per transaction.

    The SELECT stores the locked row into ``:r_*`` variables (``\\gset``); the UPDATE writes the
    version read plus one and the context with its counter moved on, guarded by the version read,
    exactly like the hand-written code. A ``:`` followed by a letter is a pgbench variable, even in
    a string literal, hence the spaces after the colons of the JSON literals.
    """
    uuid = _PGBENCH_UUID_SQL
    return "\n".join(
        [
            "\\set id :client_id + 1",
            "BEGIN;",
            f"SELECT {INSTANCE_COLUMNS} FROM workflow_instances WHERE uuid = {uuid} FOR UPDATE"
            " \\gset r_",
            "UPDATE workflow_instances SET current_state = :r_current_state, "
            "version = :r_version + 1, expires_at = NULL, last_transition_at = now(), "
            "context_json = jsonb_set(:r_context_json::jsonb, '{n}', to_jsonb(:r_version + 1)), "
            "updated_at = now(), definition_version = :r_definition_version, "
            "timeout_attempts = 0, timeout_retry_at = NULL, timeout_last_error = NULL, "
            f"timeout_parked_at = NULL WHERE uuid = {uuid} AND version = :r_version;",
            f"INSERT INTO workflow_history ({HISTORY_COLUMNS}) VALUES ({uuid}, :r_current_state, "
            "'touch', :r_current_state, 'success', NULL, NULL, "
            '\'[{"ok": true, "code": "TOUCHED"}]\', \'{"source": "bench"}\', '
            ":r_definition_version, now()) RETURNING uuid;",
            "COMMIT;",
            "",
        ]
    )
