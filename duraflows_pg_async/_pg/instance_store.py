"""PgWorkflowInstanceStore: workflow instances in ``workflow_instances``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from duraflows_pg_async._core.model import (
    INSTANCE_STATUSES,
    HistoryRecord,
    StateStats,
    TimeoutRetry,
    WorkflowInstance,
)
from duraflows_pg_async._core.store_checks import (
    checked_built_instance,
    checked_built_record,
    checked_count_arguments,
    checked_instance,
    checked_instance_query,
    checked_listing_arguments,
    checked_listing_page,
    checked_stats_arguments,
    checked_transition,
    checked_update,
    checked_workflow_names,
)
from duraflows_pg_async._core.validate import (
    coerce_uuid,
    require_aware,
    require_bool,
    require_int,
    require_str,
)
from duraflows_pg_async._pg.error_mapping import (
    map_db_errors,
    map_optional_table_errors,
    raise_mapped,
)
from duraflows_pg_async.errors import (
    InstanceAlreadyExistsError,
    InvalidArgumentError,
    OptimisticLockError,
    UnreadableRowError,
)

from .instance_estimates import estimate_stats
from .instance_rows import CONTEXT_COLUMN, METADATA_COLUMN
from .instance_rows import instance_from_row as _instance_from_row
from .instance_rows import is_decode_error as _is_decode_error
from .queries import (
    list_instances_sql,
    render_queries,
    stats_sql,
)
from .runner import AnyConnection
from .store_base import PgStore
from .wakeups import timeout_payload

__all__ = ["PgWorkflowInstanceStore"]


logger = logging.getLogger("duraflows_pg_async")


def _update_arguments(
    inst: WorkflowInstance, instance_uuid: UUID, expected: int
) -> tuple[Any, ...]:
    """update_instance's parameters, $1 to $13."""
    return (
        instance_uuid,
        inst.current_state,
        inst.version,
        inst.expires_at,
        inst.last_transition_at,
        inst.context,
        inst.updated_at,
        inst.definition_version,
        *_retry_columns(inst.timeout_retry),
        expected,
    )


def _due_of(inst: WorkflowInstance) -> datetime | None:
    """When the instance's timeout falls due (the sweep's rule): its retry time, else its
    deadline; None without a deadline or when parked."""
    retry = inst.timeout_retry
    if inst.expires_at is None or (retry is not None and retry.parked_at is not None):
        return None
    if retry is not None and retry.retry_at is not None:
        return retry.retry_at
    return inst.expires_at


def _retry_columns(
    retry: TimeoutRetry | None,
) -> tuple[int, datetime | None, str | None, datetime | None]:
    if retry is None:
        return 0, None, None, None
    return retry.attempts, retry.retry_at, retry.last_error, retry.parked_at


class PgWorkflowInstanceStore(PgStore):
    """Workflow instances in PostgreSQL.

    ``lock_by_uuid`` and ``find_expired`` need an active transaction of the same pool (see
    ``PgTransactionRunner``); the other methods join one if present, else run on the pool.
    ``js_safe_integers=True`` (for a database shared with TypeScript services) refuses integers
    beyond ±(2**53 - 1) in contexts and metadata with InvalidArgumentError, before any SQL.
    ``skip_busy=True`` (set by ``pg_workflow_providers(..., durable_execution=True)``) makes
    ``find_expired`` leave out instances with an active queued execution (migration 008).
    """

    __slots__ = ("_js_safe_integers", "_skip_busy")

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        schema: str | None = None,
        js_safe_integers: bool = False,
        skip_busy: bool = False,
        notify_within: timedelta | None = None,
    ) -> None:
        super().__init__(pool, schema=schema, notify_within=notify_within)
        self._js_safe_integers = require_bool(js_safe_integers, "js_safe_integers")
        require_bool(skip_busy, "skip_busy")
        self._skip_busy = skip_busy
        if skip_busy:
            self._q = render_queries(schema, skip_busy=True)

    async def create(self, instance: WorkflowInstance) -> None:
        """Insert a new instance. A uuid in use raises InstanceAlreadyExistsError."""
        inst = checked_instance(instance, "create", js_safe_integers=self._js_safe_integers)
        instance_uuid = coerce_uuid(inst.uuid, "instance.uuid")
        args: tuple[Any, ...] = (
            instance_uuid,
            inst.workflow_name,
            inst.current_state,
            inst.version,
            inst.expires_at,
            inst.last_transition_at,
            inst.context,
            inst.metadata,
            inst.created_at,
            inst.updated_at,
            inst.definition_version,
            *_retry_columns(inst.timeout_retry),
        )
        query = self._q.insert_instance
        due = _due_of(inst)
        if self._notifies(due, inst.updated_at):
            assert due is not None
            query = self._q.insert_instance_notify
            args += (timeout_payload(inst.workflow_name, due),)
        executor = self._executor()
        with map_db_errors(f"create instance {instance_uuid}", executor):
            try:
                await executor.execute(query, *args)
            except asyncpg.UniqueViolationError as exc:
                raise InstanceAlreadyExistsError(instance_uuid) from exc

    async def find_by_uuid(self, instance_uuid: UUID | str) -> WorkflowInstance | None:
        """The instance, or None. Does not lock."""
        key = coerce_uuid(instance_uuid, "instance_uuid")
        executor = self._executor()
        try:
            row = await executor.fetchrow(self._q.select_instance, key)
        except Exception as exc:
            if _is_decode_error(exc):
                raise await self._undecodable(executor, key, exc) from exc
            raise_mapped(exc, f"find_by_uuid {key}", executor)
        return None if row is None else _instance_from_row(row)

    async def lock_by_uuid(
        self, instance_uuid: UUID | str, *, skip_locked: bool = False
    ) -> WorkflowInstance | None:
        """The instance locked FOR UPDATE until the transaction ends, or None if there is none.

        Requires an active transaction. Waits for a holder of the lock, bounded by lock_timeout
        (LockTimeoutError) when the runner sets one; with ``skip_locked`` it does not wait and
        returns None while another transaction holds the row.
        """
        key = coerce_uuid(instance_uuid, "instance_uuid")
        conn = self._transaction_connection("lock_by_uuid")
        query = self._q.try_lock_instance if skip_locked else self._q.lock_instance
        try:
            row = await conn.fetchrow(query, key)
        except Exception as exc:
            if _is_decode_error(exc):
                raise await self._undecodable(conn, key, exc) from exc
            raise_mapped(exc, f"lock_by_uuid {key}", conn)
        return None if row is None else _instance_from_row(row)

    async def update(self, instance: WorkflowInstance) -> None:
        """Write the instance's mutable fields if the stored version is ``instance.version - 1``.

        The caller increments ``version`` first. Another version in the database (or no row)
        raises OptimisticLockError. ``metadata``, ``workflow_name`` and ``created_at`` are never
        written.
        """
        row = self.update_row(instance)
        instance_uuid, expected = row[0], row[-1]
        query = self._q.update_instance
        due = _due_of(instance)
        if self._notifies(due, instance.updated_at):
            assert due is not None
            query = self._q.update_instance_notify
            row += (timeout_payload(instance.workflow_name, due),)
        executor = self._executor()
        try:
            status = await executor.execute(query, *row)
        except Exception as exc:
            raise_mapped(exc, f"update instance {instance_uuid}", executor)
        if status != "UPDATE 1":
            raise OptimisticLockError(instance_uuid, expected)

    def update_row(self, instance: WorkflowInstance) -> tuple[Any, ...]:
        """What ``update`` writes for ``instance``, checked (the same errors). The last element
        is the version expected in the database."""
        inst, instance_uuid, expected = checked_update(
            instance, "update", js_safe_integers=self._js_safe_integers
        )
        return _update_arguments(inst, instance_uuid, expected)

    def built_update_row(self, instance: WorkflowInstance) -> tuple[Any, ...]:
        """``update_row`` of an instance the runtime built itself (only its context is checked
        again), for ``update_rows``: a batched sweep checks each instance as it fires and
        writes them all at the end of the batch."""
        key, expected = checked_built_instance(
            instance, "update", js_safe_integers=self._js_safe_integers
        )
        return _update_arguments(instance, key, expected)

    async def update_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Write rows of ``update_row`` in one statement (at most one per instance). A row whose
        stored version is not its expected one raises OptimisticLockError (nothing is written
        once the transaction rolls back)."""
        if not rows:
            return
        columns = [list(column) for column in zip(*rows, strict=True)]
        executor = self._executor()
        try:
            written = await executor.fetch(self._q.update_instances, *columns)
        except Exception as exc:
            raise_mapped(exc, f"update {len(rows)} instances", executor)
        if len(written) != len(rows):
            done = {row["uuid"] for row in written}
            missing = next(row for row in rows if row[0] not in done)
            raise OptimisticLockError(missing[0], missing[-1])

    async def persist_transition(self, instance: WorkflowInstance, record: HistoryRecord) -> UUID:
        """``update(instance)`` and ``append(record)`` (a row of the same instance) in one
        statement, one round trip; returns the history row's uuid.

        Another version in the database (or no row) raises OptimisticLockError and writes
        neither.
        """
        inst, instance_uuid, expected, results, trigger_metadata = checked_transition(
            instance, record, js_safe_integers=self._js_safe_integers
        )
        assert isinstance(record, HistoryRecord)
        return await self._persist(inst, instance_uuid, expected, record, results, trigger_metadata)

    async def persist_built_transition(
        self, instance: WorkflowInstance, record: HistoryRecord
    ) -> UUID:
        """``persist_transition`` for the runtime, of an instance and a record it built itself:
        only what commands put in them (the context, the command results) is checked again."""
        key, expected = checked_built_instance(
            instance, "persist_transition", js_safe_integers=self._js_safe_integers
        )
        results, trigger_metadata = checked_built_record(record, "persist_transition")
        return await self._persist(instance, key, expected, record, results, trigger_metadata)

    async def _persist(
        self,
        inst: WorkflowInstance,
        instance_uuid: UUID,
        expected: int,
        record: HistoryRecord,
        results: list[dict[str, Any]],
        trigger_metadata: dict[str, Any],
    ) -> UUID:
        query = self._q.persist_transition
        wake: tuple[str, ...] = ()
        due = _due_of(inst)
        if self._notifies(due, inst.updated_at):
            assert due is not None
            query = self._q.persist_transition_notify
            wake = (timeout_payload(inst.workflow_name, due),)
        executor = self._executor()
        try:
            row_uuid = await executor.fetchval(
                query,
                *_update_arguments(inst, instance_uuid, expected),
                record.from_state,
                record.event_name,
                record.to_state,
                record.outcome,
                record.error_message,
                record.rejected_by,
                results,
                trigger_metadata,
                record.definition_version,
                *wake,
            )
        except Exception as exc:
            raise_mapped(exc, f"persist transition of instance {instance_uuid}", executor)
        if row_uuid is None:
            raise OptimisticLockError(instance_uuid, expected)
        return row_uuid  # type: ignore[no-any-return]

    async def find_expired(
        self,
        limit: int,
        now: datetime,
        *,
        claim_until: datetime | None = None,
        workflow_names: Sequence[str] | None = None,
    ) -> list[WorkflowInstance]:
        """Due instances (deadline or retry time before ``now``, not parked), oldest due first,
        locked FOR UPDATE SKIP LOCKED until the transaction ends. Requires a transaction.

        With ``claim_until``, the returned instances that have no retry state are also claimed
        until then (their ``claimed_until``): other sweeps skip them even after this transaction
        ends, so concurrent sweepers get disjoint batches. Writing an instance with ``update``
        ends its claim. ``workflow_names`` limits the search to those workflows (None: all).

        A due row whose JSON cannot be decoded is not returned: it is parked, with an error
        naming the instance and column as its last error, and logged; the others are returned.
        """
        require_int(limit, "limit", minimum=1)
        require_aware(now, "now")
        names = None if workflow_names is None else checked_workflow_names(workflow_names)
        if claim_until is not None and require_aware(claim_until, "claim_until") <= now:
            raise InvalidArgumentError("claim_until must be later than now")
        conn = self._transaction_connection("find_expired")
        if names is not None and not names:
            return []
        scan = (
            map_optional_table_errors(
                "find_expired", conn, table="workflow_executions", migration="008"
            )
            if self._skip_busy
            else map_db_errors("find_expired", conn)
        )
        with scan:
            if claim_until is None:
                if names is None:
                    keys = await conn.fetch(self._q.find_expired, limit, now)
                else:
                    keys = await conn.fetch(self._q.find_expired_of, limit, now, names)
            elif names is None:
                keys = await conn.fetch(self._q.claim_expired, limit, now, claim_until)
            else:
                keys = await conn.fetch(self._q.claim_expired_of, limit, now, claim_until, names)
        return await self._read_due(conn, [k["uuid"] for k in keys], now)

    async def _read_due(
        self, conn: AnyConnection, keys: list[UUID], now: datetime
    ) -> list[WorkflowInstance]:
        """The instances of ``keys`` in that order; unreadable ones are parked and left out."""
        if not keys:
            return []
        try:
            with map_db_errors("find_expired", conn):
                rows = await conn.fetch(self._q.select_instances, keys)
            by_uuid = {row["uuid"]: _instance_from_row(row) for row in rows}
        except UnreadableRowError:
            by_uuid = {}
        except Exception as exc:
            if not _is_decode_error(exc):
                raise
            by_uuid = {}
        if len(by_uuid) == len(keys):
            return [by_uuid[key] for key in keys]
        # One row at a time, to find the unreadable ones (the others read as before).
        found: list[WorkflowInstance] = []
        for key in keys:
            try:
                instance = await self.lock_by_uuid(key)
            except UnreadableRowError as exc:
                await self._park_unreadable(conn, exc, now)
                continue
            if instance is not None:
                found.append(instance)
        return found

    async def _park_unreadable(
        self, conn: AnyConnection, error: UnreadableRowError, now: datetime
    ) -> None:
        # Retrying cannot help until someone repairs the row; parked, it shows in
        # find_parked_timeouts and the monitoring queries, and rearm_timeout resumes it.
        message = str(error)
        logger.error("duraflows: timeout parked: %s", message)
        with map_db_errors(f"park instance {error.instance_uuid}", conn):
            await conn.execute(self._q.park_unreadable, error.instance_uuid, message, now)

    async def _undecodable(
        self, executor: AnyConnection | asyncpg.Pool, key: UUID, exc: BaseException
    ) -> UnreadableRowError:
        """The error for a row whose JSON the codec refused, naming the column."""
        column = f"{CONTEXT_COLUMN} or {METADATA_COLUMN}"
        for name, query in (
            (CONTEXT_COLUMN, self._q.select_context),
            (METADATA_COLUMN, self._q.select_metadata),
        ):
            try:
                await executor.fetchval(query, key)
            except Exception as probe:
                if _is_decode_error(probe):
                    column = name
                    break
                raise_mapped(probe, f"read instance {key}", executor)
        detail = str(exc)[:200]
        return UnreadableRowError(
            key, column, f"cannot be decoded ({type(exc).__name__}: {detail})"
        )

    async def release_claims(
        self, instance_uuids: Sequence[UUID | str], claim_until: datetime
    ) -> list[UUID]:
        """End the claims that ``find_expired(claim_until=...)`` took on these instances and that
        were not used; claims renewed or ended since are left alone. Never waits for a row:
        returns the instances still claimed because another transaction holds them."""
        keys = [coerce_uuid(u, "instance_uuids[]") for u in instance_uuids]
        require_aware(claim_until, "claim_until")
        if not keys:
            return []
        executor = self._executor()
        try:
            rows = await executor.fetch(self._q.release_claims, keys, claim_until)
        except Exception as exc:
            raise_mapped(exc, "release_claims", executor)
        return [row["uuid"] for row in rows]

    async def postpone_timeout(self, instance_uuid: UUID | str, until: datetime) -> bool:
        """Make the instance's timeout due no earlier than ``until`` without recording anything:
        a claim if it has no retry state, its retry time otherwise. For a sweep that could not
        record a failure. Never waits for a row lock; False when the row is held, gone, parked
        or already due later."""
        key = coerce_uuid(instance_uuid, "instance_uuid")
        require_aware(until, "until")
        executor = self._executor()
        try:
            status = await executor.execute(self._q.postpone_timeout, key, until)
        except Exception as exc:
            raise_mapped(exc, f"postpone_timeout {key}", executor)
        return bool(status == "UPDATE 1")

    async def find_parked_timeouts(
        self, *, limit: int = 100, workflow_name: str | None = None
    ) -> list[WorkflowInstance]:
        """Instances whose timeout retries were exhausted, oldest parked first."""
        require_int(limit, "limit", minimum=1)
        if workflow_name is not None:
            require_str(workflow_name, "workflow_name")
        executor = self._executor()
        with map_db_errors("find_parked_timeouts", executor):
            rows = await executor.fetch(self._q.find_parked, limit, workflow_name)
        return [_instance_from_row(row) for row in rows]

    async def count_instances(
        self,
        *,
        workflow_name: str,
        definition_version: int,
        exclude_states: Sequence[str] = (),
    ) -> int:
        """How many instances of this workflow are stamped with ``definition_version`` and are
        not in one of ``exclude_states``."""
        states = checked_count_arguments(workflow_name, definition_version, exclude_states)
        executor = self._executor()
        with map_db_errors("count_instances", executor):
            count = await executor.fetchval(
                self._q.count_instances, workflow_name, definition_version, states
            )
        return int(count)

    async def find_instance_uuids(
        self,
        *,
        workflow_name: str,
        definition_version: int,
        limit: int,
        after_uuid: UUID | str | None = None,
        states: Sequence[str] | None = None,
        exclude_states: Sequence[str] | None = None,
    ) -> list[UUID]:
        """Up to ``limit`` uuids of the instances of this workflow stamped with
        ``definition_version``, ascending, each greater than ``after_uuid`` (a keyset cursor).

        ``states`` keeps only instances in one of them (an empty list matches nothing);
        ``exclude_states`` leaves out instances in one of them (an empty list leaves out
        nothing); ``None`` filters nothing. Does not lock.
        """
        after, wanted, excluded = checked_listing_arguments(
            workflow_name, definition_version, limit, after_uuid, states, exclude_states
        )
        args: tuple[Any, ...] = (workflow_name, definition_version, limit, wanted, excluded)
        executor = self._executor()
        with map_db_errors("find_instance_uuids", executor):
            if after is None:
                rows = await executor.fetch(self._q.find_instance_uuids, *args)
            else:
                rows = await executor.fetch(self._q.find_instance_uuids_after, *args, after)
        return [row["uuid"] for row in rows]

    async def list_instances(
        self,
        *,
        limit: int,
        now: datetime,
        workflow_name: str | None = None,
        state: str | None = None,
        definition_version: int | None = None,
        status: str | None = None,
        after_uuid: UUID | str | None = None,
    ) -> list[WorkflowInstance]:
        """Up to ``limit`` instances matching every filter given, in ascending uuid order, each
        greater than ``after_uuid`` (a keyset cursor). Does not lock.

        ``state`` and ``definition_version`` need ``workflow_name``; ``status`` is one of
        ``"due"`` (at ``now``), ``"retrying"``, ``"parked"``, ``"claimed"``. Each combination is
        served by an index (see ``queries.list_instances_sql``).
        """
        checked_instance_query(workflow_name, state, definition_version, status)
        after = checked_listing_page(limit, now, after_uuid)
        # The tuple's own string: a str subclass never reaches the statement cache.
        wanted = None if status is None else INSTANCE_STATUSES[INSTANCE_STATUSES.index(status)]
        sql = list_instances_sql(
            self._schema,
            workflow=workflow_name is not None,
            state=state is not None,
            version=definition_version is not None,
            status=wanted,
            after=after is not None,
        )
        args: list[Any] = [limit]
        args += [v for v in (workflow_name, state, definition_version) if v is not None]
        if wanted == "due":
            args.append(now)
        if after is not None:
            args.append(after)
        executor = self._executor()
        with map_db_errors("list_instances", executor):
            rows = await executor.fetch(sql, *args)
        return [_instance_from_row(row) for row in rows]

    async def stats(self, *, now: datetime, workflow_name: str | None = None) -> list[StateStats]:
        """Per (workflow, state) with at least one instance: the instance count, the due (at
        ``now``), retrying, parked and claimed counts, and the oldest due time; sorted by
        workflow name then state (Python's string order)."""
        checked_stats_arguments(workflow_name, now)
        sql = stats_sql(self._schema, workflow=workflow_name is not None)
        args: tuple[Any, ...] = (now,) if workflow_name is None else (now, workflow_name)
        executor = self._executor()
        with map_db_errors("stats", executor):
            rows = await executor.fetch(sql, *args)
        found = [
            StateStats(
                workflow_name=row["workflow_name"],
                state=row["current_state"],
                instances=row["instances"],
                due=row["due"],
                retrying=row["retrying"],
                parked=row["parked"],
                claimed=row["claimed"],
                oldest_due_at=row["oldest_due_at"],
            )
            for row in rows
        ]
        return sorted(found, key=lambda s: (s.workflow_name, s.state))

    async def estimate_stats(
        self,
        *,
        now: datetime,
        from_rows: int | None = None,
        sample_rows: int | None = None,
    ) -> tuple[list[StateStats], frozenset[tuple[str, str, str]]] | None:
        """``stats(now=now)`` for a large table, with the counts of its large states estimated
        from a sample; None when the table is small enough to count (then call ``stats``). Also
        returns which (workflow, state, "instances" or "due") are estimates. See
        ``instance_estimates`` for what stays exact and the defaults of ``from_rows`` and
        ``sample_rows``.
        """
        return await estimate_stats(
            self._executor(), self._schema, now=now, from_rows=from_rows, sample_rows=sample_rows
        )
