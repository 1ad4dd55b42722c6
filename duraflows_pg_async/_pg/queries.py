"""Every SQL statement of the adapter, rendered once per schema.

Table names are fixed (they are shared with the TypeScript ``@duraflows/pg``); a validated schema
name may qualify them. Each statement lists its parameters as ``$n=...`` in the comment above it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

from duraflows_pg_async._core.validate import require_identifier

# The columns of every instance SELECT; the stores read rows by column name, so order is free
# (the INSERT lists its values in this order).
INSTANCE_COLUMNS = (
    "uuid, workflow_name, current_state, version, expires_at, last_transition_at, context_json, "
    "metadata_json, created_at, updated_at, definition_version, timeout_attempts, "
    "timeout_retry_at, timeout_last_error, timeout_parked_at"
)

HISTORY_COLUMNS = (
    "uuid, workflow_instance_uuid, from_state, event_name, to_state, outcome, error_message, "
    "command_results_json, trigger_metadata_json, rejected_by, definition_version, created_at"
)

DEFINITION_COLUMNS = "workflow_name, version, content_hash, definition_json, registered_at"

EXECUTION_COLUMNS = "uuid, workflow_instance_uuid, execution_json"

RECEIPT_COLUMNS = (
    "workflow_instance_uuid, idempotency_key, event_name, fingerprint, result_json, created_at"
)


# A due timeout: a deadline and, if retrying, a retry time before $2, not parked. The coalesce()
# predicate repeats the others so that the partial indexes on coalesce(timeout_retry_at,
# expires_at) (005's, and 100's per workflow) can be range-scanned in due order.
_DUE_AT = "coalesce(timeout_retry_at, expires_at)"
_DUE = (
    f"expires_at IS NOT NULL AND timeout_parked_at IS NULL AND {_DUE_AT} < $2 "
    "AND expires_at < $2 AND (timeout_retry_at IS NULL OR timeout_retry_at < $2)"
)


# The due time as migration 100's index spells it. Equal to _DUE_AT wherever _DUE holds (it
# needs expires_at), but a different expression: 005's index cannot give rows in this order, so
# the planner cannot pick it and walk other workflows' due rows one by one (it cannot tell that
# the lateral name is selective), and the index of 100 is the only way in.
_WORKFLOW_DUE_AT = "coalesce(timeout_retry_at, expires_at, 'infinity'::timestamptz)"


def _due_of(instances: str, names: str, due: str) -> str:
    """uuid and due_at of up to $1 due rows of the workflows in ``names``, locked SKIP LOCKED.

    One index scan per workflow (the index of migration 100 leads with workflow_name), merged:
    a single scan with ``workflow_name = ANY(...)`` can return rows in due order only for one
    name, and PostgreSQL would sort every due row of the listed workflows instead.
    """
    return (
        f"SELECT d.uuid, d.due_at FROM unnest({names}::text[]) AS w(name) CROSS JOIN LATERAL "
        f"(SELECT uuid, {_WORKFLOW_DUE_AT} AS due_at FROM {instances} "
        f"WHERE workflow_name = w.name AND {due} AND {_WORKFLOW_DUE_AT} < $2 "
        f"ORDER BY {_WORKFLOW_DUE_AT} LIMIT $1 FOR UPDATE SKIP LOCKED) AS d "
        "ORDER BY d.due_at LIMIT $1"
    )


def _claim(instances: str, due: str) -> str:
    # = ANY(ARRAY(...)) finds the batch through the primary key whatever the planner guesses
    # about the CTE's size.
    return (
        f"WITH due AS MATERIALIZED ({due}), "
        f"claimed AS (UPDATE {instances} SET timeout_retry_at = CASE "
        "WHEN timeout_attempts = 0 THEN $3 ELSE timeout_retry_at END "
        "WHERE uuid = ANY (ARRAY(SELECT uuid FROM due)) RETURNING uuid) "
        "SELECT uuid FROM claimed JOIN due USING (uuid) ORDER BY due.due_at"
    )


def wakeup_channel(schema: str | None) -> str:
    """The LISTEN/NOTIFY channel of one schema's writes, so that two schemas never wake each
    other's workers. A channel name is an identifier (at most 63 bytes): a long schema name is
    replaced by a digest of it."""
    if schema is None:
        return "duraflows_wakeup"
    channel = f"duraflows_wakeup.{schema}"
    if len(channel.encode()) <= 63:
        return channel
    return "duraflows_wakeup." + hashlib.sha256(schema.encode()).hexdigest()[:32]


def _notify(channel: str, payload: str) -> str:
    """pg_notify of ``payload`` (a parameter) on ``channel``: sent with the transaction's commit
    only, never for a rollback. Folded into the write's own statement (no extra round trip)."""
    quoted = channel.replace("'", "''")
    return f"pg_notify('{quoted}', {payload})"


@dataclass(frozen=True, slots=True)
class Queries:
    insert_instance: str
    select_instance: str
    lock_instance: str
    try_lock_instance: str
    update_instance: str
    persist_transition: str
    update_instances: str
    find_expired: str
    find_expired_of: str
    claim_expired: str
    claim_expired_of: str
    select_instances: str
    select_context: str
    select_metadata: str
    release_claims: str
    postpone_timeout: str
    park_unreadable: str
    find_parked: str
    count_instances: str
    insert_history: str
    insert_histories: str
    select_history: str
    ensure_definition: str
    select_definition: str
    list_definitions: str
    replace_definition: str
    select_receipt: str
    insert_receipt: str
    complete_receipt: str
    insert_execution: str
    update_execution: str
    select_execution: str
    select_execution_by_key: str
    select_active_execution: str
    select_due_executions: str
    find_instance_uuids: str
    find_instance_uuids_after: str
    insert_instance_notify: str
    update_instance_notify: str
    persist_transition_notify: str
    insert_execution_notify: str
    update_execution_notify: str
    next_timeout_due: str
    next_execution_due: str


def _instance_uuids(instances: str, after: str) -> str:
    """uuids of one workflow version, ascending, for find_instance_uuids.

    $1=workflow_name $2=definition_version $3=limit $4=states or NULL (an empty array matches
    nothing) $5=exclude_states or NULL (an empty array excludes nothing; NOT IN () is not valid
    SQL, hence ANY), then ``after`` (a further condition on uuid, or nothing). PostgreSQL's uuid
    order is the byte order, the order of Python's UUID and of the lowercase text form. A rare
    version is found with 006's index on (workflow_name, definition_version), then sorted; a
    common one is read in uuid order up to the page, from 101's (workflow_name, uuid) index (the
    primary key without 101) (EXPLAIN-tested).
    """
    return (
        f"SELECT uuid FROM {instances} WHERE workflow_name = $1 AND definition_version = $2 "
        "AND ($4::text[] IS NULL OR current_state = ANY($4::text[])) "
        "AND ($5::text[] IS NULL OR NOT (current_state = ANY($5::text[])))"
        f"{after} ORDER BY uuid LIMIT $3"
    )


def qualify(schema: str | None, table: str) -> str:
    return table if schema is None else f'"{schema}".{table}'


@lru_cache(maxsize=32)
def render_queries(schema: str | None, *, skip_busy: bool = False) -> Queries:
    """The statements for one schema (``None``: unqualified names, resolved by search_path).

    ``skip_busy``: the due-timeout scans leave out instances with an active queued execution
    (migration 008's table), before the limit, so busy instances never starve the others.
    """
    if schema is not None:
        require_identifier(schema, "schema")
    instances = qualify(schema, "workflow_instances")
    history = qualify(schema, "workflow_history")
    definitions = qualify(schema, "workflow_definitions")
    receipts = qualify(schema, "workflow_event_idempotency")
    executions = qualify(schema, "workflow_executions")
    due = _DUE
    if skip_busy:
        due += (
            f" AND NOT EXISTS (SELECT 1 FROM {executions} AS busy "
            f"WHERE busy.workflow_instance_uuid = {instances}.uuid "
            "AND busy.status IN ('pending', 'running', 'parked'))"
        )
    channel = wakeup_channel(schema)
    statements = {
        # $1=uuid $2=workflow_name $3=current_state $4=version $5=expires_at
        # $6=last_transition_at $7=context $8=metadata $9=created_at $10=updated_at
        # $11=definition_version $12=timeout_attempts $13=timeout_retry_at
        # $14=timeout_last_error $15=timeout_parked_at
        "insert_instance": (
            f"INSERT INTO {instances} ({INSTANCE_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        ),
        # $1=uuid
        "select_instance": f"SELECT {INSTANCE_COLUMNS} FROM {instances} WHERE uuid = $1",
        # $1=uuid. Blocks while another transaction holds the row; lock_timeout bounds the wait.
        "lock_instance": f"SELECT {INSTANCE_COLUMNS} FROM {instances} WHERE uuid = $1 FOR UPDATE",
        # $1=uuid. No row when another transaction holds it: sweepers pass over an instance a
        # peer is processing instead of queueing behind it and re-checking it afterwards.
        "try_lock_instance": (
            f"SELECT {INSTANCE_COLUMNS} FROM {instances} WHERE uuid = $1 FOR UPDATE SKIP LOCKED"
        ),
        # $1=uuid $2=current_state $3=version $4=expires_at $5=last_transition_at $6=context
        # $7=updated_at $8=definition_version $9=timeout_attempts $10=timeout_retry_at
        # $11=timeout_last_error $12=timeout_parked_at $13=expected (previous) version.
        # metadata_json, workflow_name and created_at are written once, at create.
        "update_instance": (
            f"UPDATE {instances} SET current_state = $2, version = $3, expires_at = $4, "
            "last_transition_at = $5, context_json = $6, updated_at = $7, "
            "definition_version = $8, timeout_attempts = $9, timeout_retry_at = $10, "
            "timeout_last_error = $11, timeout_parked_at = $12 "
            "WHERE uuid = $1 AND version = $13"
        ),
        # update_instance's $1-$13, then the history row: $14=from_state $15=event_name
        # $16=to_state $17=outcome $18=error_message $19=rejected_by $20=command_results
        # $21=trigger_metadata $22=definition_version. One statement, one round trip: the row is
        # inserted only if the UPDATE matched (no row back = another version, an optimistic
        # conflict), stamped as insert_history stamps it. The max(created_at) subquery sees this
        # transaction's earlier rows (the statement's snapshot), as insert_history's does.
        "persist_transition": (
            f"WITH moved AS (UPDATE {instances} SET current_state = $2, version = $3, "
            "expires_at = $4, last_transition_at = $5, context_json = $6, updated_at = $7, "
            "definition_version = $8, timeout_attempts = $9, timeout_retry_at = $10, "
            "timeout_last_error = $11, timeout_parked_at = $12 "
            "WHERE uuid = $1 AND version = $13 RETURNING uuid) "
            f"INSERT INTO {history} (workflow_instance_uuid, from_state, event_name, to_state, "
            "outcome, error_message, rejected_by, command_results_json, trigger_metadata_json, "
            "definition_version, created_at) "
            "SELECT uuid, $14, $15, $16, $17, $18, $19, $20::jsonb, $21::jsonb, $22::int, "
            f"greatest(now(), (SELECT max(created_at) FROM {history} "
            "WHERE workflow_instance_uuid = $1) + interval '1 microsecond') FROM moved "
            "RETURNING uuid"
        ),
        # update_instance for many rows in one statement (a batched sweep's): $1..$13 hold
        # update_instance's parameters, one element per row, in arrays, except $6, the contexts:
        # one JSON array of them (the pool's JSON codec encodes it; element n is row n's). Returns
        # the uuids written; a row whose version is not its expected one is not written.
        "update_instances": (
            f"UPDATE {instances} AS i SET current_state = u.current_state, version = u.version, "
            "expires_at = u.expires_at, last_transition_at = u.last_transition_at, "
            "context_json = $6::jsonb -> (u.n::int - 1), updated_at = u.updated_at, "
            "definition_version = u.definition_version, timeout_attempts = u.timeout_attempts, "
            "timeout_retry_at = u.timeout_retry_at, timeout_last_error = u.timeout_last_error, "
            "timeout_parked_at = u.timeout_parked_at "
            "FROM unnest($1::uuid[], $2::text[], $3::int[], $4::timestamptz[], "
            "$5::timestamptz[], $7::timestamptz[], $8::int[], $9::int[], $10::timestamptz[], "
            "$11::text[], $12::timestamptz[], $13::int[]) WITH ORDINALITY AS u(uuid, "
            "current_state, version, expires_at, last_transition_at, updated_at, "
            "definition_version, timeout_attempts, timeout_retry_at, timeout_last_error, "
            "timeout_parked_at, expected, n) "
            "WHERE i.uuid = u.uuid AND i.version = u.expected RETURNING i.uuid"
        ),
        # $1=limit $2=now (the application's clock, never the database's). The uuids of due rows,
        # oldest due first; select_instances reads them, so that one row the codec cannot decode
        # does not fail the batch. SKIP LOCKED lets many sweepers share the work; it does not make
        # them exclusive (the locks end with the scan), which is why the runtime re-checks each
        # row under lock_by_uuid.
        "find_expired": (
            f"SELECT uuid FROM {instances} WHERE {due} "
            f"ORDER BY {_DUE_AT} LIMIT $1 FOR UPDATE SKIP LOCKED"
        ),
        # $1=limit $2=now $3=workflow names: find_expired for these workflows only.
        "find_expired_of": f"SELECT uuid FROM ({_due_of(instances, '$3', due)}) AS due",
        # $1=limit $2=now $3=claim_until. Claims the due rows and returns their uuids, oldest due
        # first (select_instances reads them, so that one row the codec cannot decode does not
        # fail the batch). The claim sets timeout_retry_at to $3 so that concurrent sweeps (ours
        # and the TypeScript runtime's alike) pass over the rows instead of walking them again.
        # Only rows without retry state are claimed (timeout_attempts = 0), whose models read
        # timeout_retry_at as the claim; processing writes the retry columns back (ending the
        # claim), a recorded failure overwrites it, and a crashed sweeper's claims fall due again
        # at $3.
        "claim_expired": _claim(
            instances,
            f"SELECT uuid, {_DUE_AT} AS due_at FROM {instances} WHERE {due} "
            f"ORDER BY {_DUE_AT} LIMIT $1 FOR UPDATE SKIP LOCKED",
        ),
        # $1=limit $2=now $3=claim_until $4=workflow names: claim_expired for these workflows.
        "claim_expired_of": _claim(instances, _due_of(instances, "$4", due)),
        # $1=uuids
        "select_instances": f"SELECT {INSTANCE_COLUMNS} FROM {instances} WHERE uuid = ANY ($1)",
        # $1=uuid: one JSON column, to tell which one the codec cannot decode.
        "select_context": f"SELECT context_json FROM {instances} WHERE uuid = $1",
        "select_metadata": f"SELECT metadata_json FROM {instances} WHERE uuid = $1",
        # $1=uuids $2=claim_until: hand back claims a sweep did not use. Rows another transaction
        # holds are not waited for: their uuids are returned, for a later try.
        "release_claims": (
            f"WITH mine AS (SELECT uuid FROM {instances} WHERE uuid = ANY ($1::uuid[]) "
            "AND timeout_attempts = 0 AND timeout_retry_at = $2), "
            f"free AS (SELECT uuid FROM {instances} WHERE uuid IN (SELECT uuid FROM mine) "
            "FOR UPDATE SKIP LOCKED), "
            f"released AS (UPDATE {instances} SET timeout_retry_at = NULL "
            "WHERE uuid IN (SELECT uuid FROM free) RETURNING uuid) "
            "SELECT uuid FROM mine EXCEPT ALL SELECT uuid FROM released"
        ),
        # $1=uuid $2=until. The next attempt no earlier than $2 (a claim for a row without retry
        # state, the retry time otherwise), without recording a failure; never waits for a lock.
        "postpone_timeout": (
            f"UPDATE {instances} SET timeout_retry_at = $2 WHERE uuid IN (SELECT uuid FROM "
            f"{instances} WHERE uuid = $1 AND timeout_parked_at IS NULL "
            "AND (timeout_retry_at IS NULL OR timeout_retry_at < $2) FOR UPDATE SKIP LOCKED)"
        ),
        # $1=uuid $2=error $3=now. Parks a row whose JSON cannot be decoded, touching no JSON.
        "park_unreadable": (
            f"UPDATE {instances} SET timeout_attempts = timeout_attempts + 1, "
            "timeout_retry_at = NULL, timeout_last_error = $2, timeout_parked_at = $3, "
            "version = version + 1, updated_at = $3 WHERE uuid = $1"
        ),
        # $1=limit $2=workflow_name or NULL for all
        "find_parked": (
            f"SELECT {INSTANCE_COLUMNS} FROM {instances} "
            "WHERE timeout_parked_at IS NOT NULL AND ($2::text IS NULL OR workflow_name = $2) "
            "ORDER BY timeout_parked_at, uuid LIMIT $1"
        ),
        # $1=workflow_name $2=definition_version $3=states to exclude (an empty array excludes
        # nothing; NOT IN () is not valid SQL, hence ANY).
        "count_instances": (
            f"SELECT count(*)::int FROM {instances} "
            "WHERE workflow_name = $1 AND definition_version = $2 "
            "AND NOT (current_state = ANY($3::text[]))"
        ),
        # $1=workflow_instance_uuid $2=from_state $3=event_name $4=to_state $5=outcome
        # $6=error_message $7=rejected_by $8=command_results $9=trigger_metadata
        # $10=definition_version.
        # A row is stamped with its transaction's start, now(), as the TypeScript runtime stamps
        # its rows, kept strictly after the instance's newest row. The start precedes the row
        # lock, so a transaction that waited for this one's lock (and stamps its own start) is
        # never stamped before it; "newest + 1 µs" orders an event and its onEnter hops, which
        # share one now(), in the order they were written.
        "insert_history": (
            f"INSERT INTO {history} (workflow_instance_uuid, from_state, event_name, to_state, "
            "outcome, error_message, rejected_by, command_results_json, trigger_metadata_json, "
            "definition_version, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
            f"greatest(now(), (SELECT max(created_at) FROM {history} "
            "WHERE workflow_instance_uuid = $1) + interval '1 microsecond')) "
            "RETURNING uuid"
        ),
        # insert_history for many rows in one statement (a batched sweep's), their uuids chosen by
        # the caller: $1=uuids, $2..$11 insert_history's $1..$10 in arrays, except $9 and $10 (the
        # command results and trigger metadata): one JSON array each, element n being row n's;
        # $12=each row's rank among the rows of its instance in this statement (0, 1, ...). The
        # stamps are what appending the rows one by one in that order gives: the first as
        # insert_history's, each next one 1 µs later (the subquery does not see the rows of its
        # own statement).
        "insert_histories": (
            f"INSERT INTO {history} (uuid, workflow_instance_uuid, from_state, event_name, "
            "to_state, outcome, error_message, rejected_by, command_results_json, "
            "trigger_metadata_json, definition_version, created_at) "
            "SELECT r.uuid, r.instance, r.from_state, r.event_name, r.to_state, r.outcome, "
            "r.error_message, r.rejected_by, $9::jsonb -> (r.n::int - 1), "
            "$10::jsonb -> (r.n::int - 1), r.definition_version, greatest(now(), (SELECT "
            f"max(created_at) FROM {history} WHERE workflow_instance_uuid = r.instance) "
            "+ interval '1 microsecond') + r.rank * interval '1 microsecond' "
            "FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], "
            "$7::text[], $8::text[], $11::int[], $12::int[]) WITH ORDINALITY AS "
            "r(uuid, instance, from_state, event_name, to_state, outcome, error_message, "
            "rejected_by, definition_version, rank, n)"
        ),
        # $1=workflow_instance_uuid $2=limit $3=offset. Newest first; uuid breaks ties as the
        # TypeScript reader does.
        "select_history": (
            f"SELECT {HISTORY_COLUMNS} FROM {history} WHERE workflow_instance_uuid = $1 "
            "ORDER BY created_at DESC, uuid DESC LIMIT $2 OFFSET $3"
        ),
        # $1=workflow_name $2=version $3=content_hash $4=definition_json.
        # An existing row wins: a stored snapshot is never overwritten.
        "ensure_definition": (
            f"WITH inserted AS (INSERT INTO {definitions} "
            "(workflow_name, version, content_hash, definition_json) VALUES ($1, $2, $3, $4) "
            f"ON CONFLICT (workflow_name, version) DO NOTHING RETURNING {DEFINITION_COLUMNS}) "
            f"SELECT {DEFINITION_COLUMNS} FROM inserted UNION ALL "
            f"SELECT {DEFINITION_COLUMNS} FROM {definitions} "
            "WHERE workflow_name = $1 AND version = $2 LIMIT 1"
        ),
        # $1=workflow_name $2=version
        "select_definition": (
            f"SELECT {DEFINITION_COLUMNS} FROM {definitions} "
            "WHERE workflow_name = $1 AND version = $2"
        ),
        # $1=workflow_name
        "list_definitions": (
            f"SELECT {DEFINITION_COLUMNS} FROM {definitions} WHERE workflow_name = $1 "
            "ORDER BY version"
        ),
        # $1=workflow_name $2=version $3=content_hash $4=definition_json (development only:
        # WorkflowRuntime(allow_unbumped_edits=True))
        "replace_definition": (
            f"UPDATE {definitions} SET content_hash = $3, definition_json = $4, "
            "registered_at = now() WHERE workflow_name = $1 AND version = $2 "
            f"RETURNING {DEFINITION_COLUMNS}"
        ),
        # $1=workflow_instance_uuid $2=idempotency_key
        "select_receipt": (
            f"SELECT {RECEIPT_COLUMNS} FROM {receipts} "
            "WHERE workflow_instance_uuid = $1 AND idempotency_key = $2"
        ),
        # $1=workflow_instance_uuid $2=idempotency_key $3=event_name $4=fingerprint.
        # A plain INSERT: a receipt is never overwritten (the primary key refuses a second one).
        "insert_receipt": (
            f"INSERT INTO {receipts} (workflow_instance_uuid, idempotency_key, event_name, "
            "fingerprint) VALUES ($1, $2, $3, $4)"
        ),
        # $1=workflow_instance_uuid $2=idempotency_key $3=result_json. Only a reservation (no
        # result yet) is completed, once.
        "complete_receipt": (
            f"UPDATE {receipts} SET result_json = $3 "
            "WHERE workflow_instance_uuid = $1 AND idempotency_key = $2 AND result_json IS NULL"
        ),
        # $1=uuid $2=workflow_instance_uuid $3=idempotency_key $4=status $5=available_at
        # $6=lease_until $7=revision $8=execution_json. The unique key (instance, key) and the
        # unique index of active executions refuse a duplicate: nothing is overwritten.
        "insert_execution": (
            f"INSERT INTO {executions} (uuid, workflow_instance_uuid, idempotency_key, status, "
            "available_at, lease_until, revision, execution_json) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ),
        # $1=uuid $2=status $3=available_at $4=lease_until $5=revision $6=execution_json.
        # Optimistic: the stored revision must be the previous one.
        "update_execution": (
            f"UPDATE {executions} SET status = $2, available_at = $3, lease_until = $4, "
            "revision = $5, execution_json = $6 WHERE uuid = $1 AND revision = $5 - 1"
        ),
        # $1=uuid
        "select_execution": (f"SELECT {EXECUTION_COLUMNS} FROM {executions} WHERE uuid = $1"),
        # $1=workflow_instance_uuid $2=idempotency_key
        "select_execution_by_key": (
            f"SELECT {EXECUTION_COLUMNS} FROM {executions} "
            "WHERE workflow_instance_uuid = $1 AND idempotency_key = $2"
        ),
        # $1=workflow_instance_uuid. The predicate of the unique index of active executions.
        "select_active_execution": (
            f"SELECT {EXECUTION_COLUMNS} FROM {executions} "
            "WHERE workflow_instance_uuid = $1 AND status IN ('pending', 'running', 'parked')"
        ),
        # $1=limit $2=now (the application's clock). Served by workflow_executions_due_idx; no row
        # locks: a hint that the worker re-checks under the instance's lock.
        "select_due_executions": (
            f"SELECT {EXECUTION_COLUMNS} FROM {executions} "
            "WHERE status IN ('pending', 'running') AND available_at <= $2 "
            "AND (lease_until IS NULL OR lease_until <= $2) "
            "ORDER BY available_at, uuid LIMIT $1"
        ),
        # See _instance_uuids for $1-$5. The first page has no lower bound; the next ones start
        # strictly after $6, the last uuid of the page before (a bound of its own rather than
        # "$6 IS NULL OR uuid > $6", which a generic plan could not use as an index condition).
        "find_instance_uuids": _instance_uuids(instances, ""),
        "find_instance_uuids_after": _instance_uuids(instances, " AND uuid > $6"),
    }
    return Queries(
        **statements,
        # The writes above that wake workers: the same statement, plus a pg_notify of one more
        # parameter (the payload) in its RETURNING, evaluated once if the row was written. The
        # stores pick these only for a due time near enough to matter (pg_notify takes a global
        # lock at commit: every write notifying would serialise commits).
        # insert_instance's $1-$15, $16=payload
        insert_instance_notify=(
            statements["insert_instance"] + f" RETURNING {_notify(channel, '$16')}"
        ),
        # update_instance's $1-$13, $14=payload
        update_instance_notify=(
            statements["update_instance"] + f" RETURNING {_notify(channel, '$14')}"
        ),
        # persist_transition's $1-$22, $23=payload (the history row's uuid stays first)
        persist_transition_notify=(
            statements["persist_transition"] + f", {_notify(channel, '$23')}"
        ),
        # insert_execution's $1-$8, $9=payload
        insert_execution_notify=(
            statements["insert_execution"] + f" RETURNING {_notify(channel, '$9')}"
        ),
        # update_execution's $1-$6, $7=payload
        update_execution_notify=(
            statements["update_execution"] + f" RETURNING {_notify(channel, '$7')}"
        ),
        # $1=workflow names $2=now (the application's clock). The earliest due time after $2 of
        # these workflows (a worker sleeps until then): one probe per workflow down migration
        # 100's index, the first entry after $2 (EXPLAIN-tested). Due rows at or before $2 are
        # left out: a due row the sweep passed over (locked, busy) is polled for, not slept to.
        next_timeout_due=(
            f"SELECT min(d.due_at) FROM unnest($1::text[]) AS w(name) CROSS JOIN LATERAL "
            f"(SELECT {_WORKFLOW_DUE_AT} AS due_at FROM {instances} "
            "WHERE workflow_name = w.name AND expires_at IS NOT NULL "
            f"AND timeout_parked_at IS NULL AND {_WORKFLOW_DUE_AT} > $2 "
            f"ORDER BY {_WORKFLOW_DUE_AT} LIMIT 1) AS d"
        ),
        # $1=now (the application's clock). The earliest available_at after $1 of a pending or
        # running execution: the first entry after $1 of workflow_executions_due_idx. A lease
        # that ends (a worker died) is found by polling.
        next_execution_due=(
            f"SELECT available_at FROM {executions} WHERE status IN ('pending', 'running') "
            "AND available_at > $1 ORDER BY available_at, uuid LIMIT 1"
        ),
    )


@lru_cache(maxsize=32)
def list_active_executions(schema: str | None) -> str:
    """The active executions (``duraflows-pg execution list``), read-only, for one schema.

    $1=statuses (text[], a subset of pending, running, parked) $2=workflow_name (NULL: every
    workflow) $3=limit. The repeated status list is the predicate of migration 008's unique index
    of active executions, which holds only active rows: however many completed executions the
    table keeps, the listing reads that small index, never the whole table.
    """
    if schema is not None:
        require_identifier(schema, "schema")
    executions = qualify(schema, "workflow_executions")
    return (
        f"SELECT {EXECUTION_COLUMNS} FROM {executions} "
        "WHERE status IN ('pending', 'running', 'parked') AND status = ANY($1::text[]) "
        "AND ($2::text IS NULL OR execution_json->>'workflowName' = $2) "
        "ORDER BY available_at, uuid LIMIT $3"
    )


# --- list_instances and stats ------------------------------------------------------------------

# The statuses list_instances filters by and stats counts, as docs/operations.md defines them.
# "due" is the sweep's rule (_DUE) at the application clock's now: a claim that has not ended is
# not due, an ended one is due from its end.
_STATUS_OF = {
    "retrying": "timeout_attempts > 0 AND timeout_parked_at IS NULL",
    "parked": "timeout_parked_at IS NOT NULL",
    "claimed": "timeout_attempts = 0 AND timeout_retry_at IS NOT NULL",
}
# Migration 101's partial index: every retrying, parked or claimed row (repeated in the queries
# so that the planner matches the index without proving the implication).
_TIMEOUT_STATE = (
    "(timeout_attempts > 0 OR timeout_retry_at IS NOT NULL OR timeout_parked_at IS NOT NULL)"
)


def _due_at(now: str) -> str:
    return _DUE.replace("$2", now)


@lru_cache(maxsize=256)
def list_instances_sql(
    schema: str | None,
    *,
    workflow: bool,
    state: bool,
    version: bool,
    status: str | None,
    after: bool,
) -> str:
    """One page of list_instances, in uuid order, for one combination of filters.

    $1=limit, then one parameter per filter given, in this order: workflow_name, current_state,
    definition_version, now (status "due" only), after (the last uuid of the page before). Each
    combination is a statement of its own (no "$n IS NULL OR ...", which a generic plan could not
    use as an index condition). The order is the uuid's (PostgreSQL's byte order, Python's UUID
    order): the primary key serves the unfiltered list, migration 101's indexes a workflow's
    rows, by state, or those with timeout state, each in that order up to the page. Due rows are
    found through the deadline indexes (001's, 005's, 100's) and sorted: only as many as have
    passed their deadline. A rare state or version may be found first, then sorted.
    EXPLAIN-tested on 100,000 rows (tests/integration/test_instance_query_plans.py).
    """
    if schema is not None:
        require_identifier(schema, "schema")
    instances = qualify(schema, "workflow_instances")
    where: list[str] = []
    number = 1

    def param() -> str:
        nonlocal number
        number += 1
        return f"${number}"

    if workflow:
        where.append(f"workflow_name = {param()}")
    if state:
        where.append(f"current_state = {param()}")
    if version:
        where.append(f"definition_version = {param()}")
    if status == "due":
        now = param()
        where.append(_due_at(now))
        if workflow:
            where.append(f"{_WORKFLOW_DUE_AT} < {now}")
    elif status is not None:
        where.append(f"{_STATUS_OF[status]} AND {_TIMEOUT_STATE}")
    if after:
        where.append(f"uuid > {param()}")
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT {INSTANCE_COLUMNS} FROM {instances}{condition} ORDER BY uuid LIMIT $1"


@lru_cache(maxsize=32)
def stats_sql(schema: str | None, *, workflow: bool) -> str:
    """Per (workflow_name, current_state): instances and the due, retrying, parked and claimed
    counts, and the oldest due time (the sweep's order: the retry time or the ended claim, else the
    deadline); $1=now (the application's clock) [$2=workflow_name]. Unordered (the store sorts).

    The (workflow, state) pairs are found by skipping through 101's (workflow_name, current_state,
    uuid) index, one probe per pair (a loose index scan), and each pair's instances are counted
    with an index-only scan of its range: the count reads every index entry of the workflows
    asked for (not the rows), and no plan can turn it into a scan of the table. Due rows are found
    through the due indexes, bounded by the due backlog; the other statuses from 101's partial
    index, which holds only rows with timeout state. EXPLAIN-tested on 100,000 rows
    (tests/integration/test_instance_query_plans.py).
    """
    if schema is not None:
        require_identifier(schema, "schema")
    instances = qualify(schema, "workflow_instances")
    of = " AND workflow_name = $2" if workflow else ""
    due_of = f" AND workflow_name = $2 AND {_WORKFLOW_DUE_AT} < $1" if workflow else ""
    first = " WHERE workflow_name = $2" if workflow else ""
    return (
        "WITH RECURSIVE pairs AS ("
        f"(SELECT workflow_name, current_state FROM {instances}{first} "
        "ORDER BY workflow_name, current_state LIMIT 1) "
        "UNION ALL "
        "SELECT n.workflow_name, n.current_state FROM pairs AS p CROSS JOIN LATERAL ("
        f"SELECT workflow_name, current_state FROM {instances} "
        f"WHERE (workflow_name, current_state) > (p.workflow_name, p.current_state){of} "
        "ORDER BY workflow_name, current_state LIMIT 1) AS n) "
        "SELECT workflow_name, current_state, max(instances) AS instances, max(due) AS due, "
        "max(retrying) AS retrying, max(parked) AS parked, max(claimed) AS claimed, "
        "max(oldest_due_at) AS oldest_due_at FROM ("
        "SELECT workflow_name, current_state, "
        f"(SELECT count(*) FROM {instances} AS i WHERE i.workflow_name = pairs.workflow_name "
        "AND i.current_state = pairs.current_state) AS instances, 0::bigint AS due, "
        "0::bigint AS retrying, 0::bigint AS parked, 0::bigint AS claimed, "
        "NULL::timestamptz AS oldest_due_at FROM pairs "
        "UNION ALL "
        f"SELECT workflow_name, current_state, 0, count(*), 0, 0, 0, min({_DUE_AT}) "
        f"FROM {instances} WHERE {_due_at('$1')}{due_of} GROUP BY workflow_name, current_state "
        "UNION ALL "
        "SELECT workflow_name, current_state, 0, 0, "
        f"count(*) FILTER (WHERE {_STATUS_OF['retrying']}), "
        f"count(*) FILTER (WHERE {_STATUS_OF['parked']}), "
        f"count(*) FILTER (WHERE {_STATUS_OF['claimed']}), NULL "
        f"FROM {instances} WHERE {_TIMEOUT_STATE}{of} GROUP BY workflow_name, current_state"
        ") AS parts GROUP BY workflow_name, current_state"
    )


# --- execution stats (metrics) -----------------------------------------------------------------

# A worker would take it now: select_due_executions' rule at $1.
_EXECUTION_DUE = (
    "status IN ('pending', 'running') AND available_at <= $1 "
    "AND (lease_until IS NULL OR lease_until <= $1)"
)


@lru_cache(maxsize=32)
def execution_stats_sql(schema: str | None) -> str:
    """Per active status (pending, running, parked): the executions, the due ones at $1 (the
    application's clock) and when the oldest due one fell due (available and its lease over;
    greatest() skips a NULL lease). Statuses without executions are left out.

    The status list is the predicate of migration 008's unique index of active executions, which
    holds only active rows: however many completed executions the table keeps, this reads that
    small index and the active rows, never the whole table (EXPLAIN-tested in
    tests/integration/test_metrics_pg.py).
    """
    if schema is not None:
        require_identifier(schema, "schema")
    executions = qualify(schema, "workflow_executions")
    return (
        "SELECT status, count(*) AS executions, "
        f"count(*) FILTER (WHERE {_EXECUTION_DUE}) AS due, "
        f"min(greatest(available_at, lease_until)) FILTER (WHERE {_EXECUTION_DUE}) "
        f"AS oldest_due_at FROM {executions} "
        "WHERE status IN ('pending', 'running', 'parked') GROUP BY status"
    )


# --- list_executions ---------------------------------------------------------------------------

_ACTIVE_EXECUTION = "status IN ('pending', 'running', 'parked')"


@lru_cache(maxsize=64)
def list_executions_sql(
    schema: str | None, *, status: str | None, workflow: bool, after: bool
) -> str:
    """One page of list_executions, in uuid order, for one combination of filters.

    $1=limit, then one parameter per filter given, in this order: status, workflow_name (the
    record's ``workflowName``), after (the last uuid of the page before). Unfiltered and
    completed/cancelled pages walk the primary key in uuid order up to the page. An active status
    repeats the predicate of migration 008's unique index of active executions, which holds only
    active rows: those are found there (however many finished ones the table keeps) and sorted.
    """
    if schema is not None:
        require_identifier(schema, "schema")
    executions = qualify(schema, "workflow_executions")
    where: list[str] = []
    number = 1

    def param() -> str:
        nonlocal number
        number += 1
        return f"${number}"

    if status is not None:
        if status in ("pending", "running", "parked"):
            where.append(_ACTIVE_EXECUTION)
        where.append(f"status = {param()}")
    if workflow:
        where.append(f"execution_json->>'workflowName' = {param()}")
    if after:
        where.append(f"uuid > {param()}")
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT {EXECUTION_COLUMNS} FROM {executions}{condition} ORDER BY uuid LIMIT $1"


# --- estimated stats (the dashboard's overview of a large table) -------------------------------


@lru_cache(maxsize=32)
def table_rows_sql(schema: str | None) -> str:
    """The planner's row count of workflow_instances (``pg_class.reltuples``, kept by ANALYZE
    and autovacuum; -1 before the first); no parameter."""
    if schema is not None:
        require_identifier(schema, "schema")
    name = qualify(schema, "workflow_instances").replace("'", "''")
    return f"SELECT reltuples::float8 FROM pg_class WHERE oid = to_regclass('{name}')"


@lru_cache(maxsize=32)
def estimated_stats_sql(schema: str | None) -> str:
    """stats_sql over every workflow, with the counts of large states sampled.

    $1=now $2=the sample's percent of the table's pages (TABLESAMPLE SYSTEM) $3=the sampled rows
    under which a state's instances are counted exactly. Per (workflow_name, current_state):
    ``instances`` (exact, or NULL where it was not counted), ``sampled`` and ``sampled_due``
    (the state's rows, and due rows, in the sample), ``sampled_oldest`` (the sample's oldest due
    time), and the exact retrying, parked and claimed counts. Counting every index entry grows
    with the table (about 200 ms a million on a small machine); the sample reads a fixed number
    of pages, and a state with few rows in it is counted exactly, cheaply (its range of 101's
    (workflow_name, current_state, uuid) index is short). Retrying, parked and claimed come from
    101's partial index; due rows from due_probe_sql.
    """
    if schema is not None:
        require_identifier(schema, "schema")
    instances = qualify(schema, "workflow_instances")
    return (
        "WITH RECURSIVE pairs AS ("
        f"(SELECT workflow_name, current_state FROM {instances} "
        "ORDER BY workflow_name, current_state LIMIT 1) "
        "UNION ALL "
        "SELECT n.workflow_name, n.current_state FROM pairs AS p CROSS JOIN LATERAL ("
        f"SELECT workflow_name, current_state FROM {instances} "
        "WHERE (workflow_name, current_state) > (p.workflow_name, p.current_state) "
        "ORDER BY workflow_name, current_state LIMIT 1) AS n), "
        "sampled AS (SELECT workflow_name, current_state, count(*) AS rows, "
        f"count(*) FILTER (WHERE {_due_at('$1')}) AS due, "
        f"min({_DUE_AT}) FILTER (WHERE {_due_at('$1')}) AS oldest "
        f"FROM {instances} TABLESAMPLE SYSTEM ($2) GROUP BY workflow_name, current_state) "
        "SELECT workflow_name, current_state, max(instances) AS instances, "
        "max(sampled) AS sampled, max(sampled_due) AS sampled_due, "
        "max(sampled_oldest) AS sampled_oldest, max(retrying) AS retrying, "
        "max(parked) AS parked, max(claimed) AS claimed "
        "FROM ("
        "SELECT p.workflow_name, p.current_state, CASE WHEN coalesce(s.rows, 0) < $3 THEN "
        f"(SELECT count(*) FROM {instances} AS i WHERE i.workflow_name = p.workflow_name "
        "AND i.current_state = p.current_state) END AS instances, "
        "coalesce(s.rows, 0) AS sampled, coalesce(s.due, 0) AS sampled_due, "
        "s.oldest AS sampled_oldest, 0::bigint AS retrying, 0::bigint AS parked, "
        "0::bigint AS claimed "
        "FROM pairs AS p LEFT JOIN sampled AS s "
        "ON s.workflow_name = p.workflow_name AND s.current_state = p.current_state "
        "UNION ALL "
        "SELECT workflow_name, current_state, NULL, 0, 0, NULL, "
        f"count(*) FILTER (WHERE {_STATUS_OF['retrying']}), "
        f"count(*) FILTER (WHERE {_STATUS_OF['parked']}), "
        f"count(*) FILTER (WHERE {_STATUS_OF['claimed']}) "
        f"FROM {instances} WHERE {_TIMEOUT_STATE} GROUP BY workflow_name, current_state"
        ") AS parts GROUP BY workflow_name, current_state"
    )


# The sweep's due rule with "expires_at < $1" written so that no index can serve it: the plain
# form lets the planner pick 001's deadline index, read every overdue row and sort them (it
# underestimates how many), where 005's due index gives them in due order up to the cap.
_PROBE_DUE = _due_at("$1").replace("AND expires_at < $1", "AND (expires_at < $1) IS TRUE")


@lru_cache(maxsize=32)
def due_probe_sql(schema: str | None, cap: int) -> str:
    """Up to ``cap`` due rows at $1=now, oldest first (005's due index, in due order), counted
    per (workflow_name, current_state) with their oldest due time: every due row when fewer than
    ``cap`` come back, else the oldest ``cap`` of the backlog. The cap is written into the
    statement: as a parameter, a generic plan would not know the LIMIT is small."""
    if schema is not None:
        require_identifier(schema, "schema")
    if type(cap) is not int or cap < 1:
        raise ValueError("cap must be a positive int")
    instances = qualify(schema, "workflow_instances")
    return (
        "SELECT workflow_name, current_state, count(*) AS due, min(due_at) AS oldest_due_at "
        f"FROM (SELECT workflow_name, current_state, {_DUE_AT} AS due_at FROM {instances} "
        f"WHERE {_PROBE_DUE} ORDER BY {_DUE_AT} LIMIT {cap}) AS d "
        "GROUP BY workflow_name, current_state"
    )
