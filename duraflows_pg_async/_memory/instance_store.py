"""MemoryWorkflowInstanceStore: workflow instances in memory, with the PostgreSQL store's locking,
sweep claims and errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from duraflows_pg_async._core.model import HistoryRecord, StateStats, WorkflowInstance
from duraflows_pg_async._core.store_checks import (
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
from duraflows_pg_async.errors import (
    InstanceAlreadyExistsError,
    InvalidArgumentError,
    OptimisticLockError,
)

from .database import MemoryDatabase
from .history_store import add_history_row
from .locks import FOR_UPDATE, NO_KEY_UPDATE
from .round_trip import as_jsonb, as_timestamptz, optional_timestamptz, stored_retry
from .rows import export_instance
from .store_base import MemoryStore, reading_level, statement
from .transaction import Level

__all__ = ["MemoryWorkflowInstanceStore"]


def _due_at(row: WorkflowInstance, claim: datetime | None, now: datetime) -> datetime | None:
    """When ``row`` fell due if a sweep would take it at ``now`` (the PostgreSQL store's rule),
    else None. ``claim`` is its sweep claim, if any."""
    expires_at = row.expires_at
    if expires_at is None or not expires_at < now:
        return None
    retry = row.timeout_retry
    if retry is None:
        if claim is None:
            return expires_at
        return claim if claim < now else None
    if retry.parked_at is not None:
        return None
    if retry.retry_at is None:
        return expires_at
    return retry.retry_at if retry.retry_at < now else None


_STATUS_NAMES = ("due", "retrying", "parked", "claimed")


def _statuses(row: WorkflowInstance, claim: datetime | None, now: datetime) -> set[str]:
    retry = row.timeout_retry
    found = set()
    if _due_at(row, claim, now) is not None:
        found.add("due")
    if retry is None:
        if claim is not None:
            found.add("claimed")
    elif retry.parked_at is None:
        found.add("retrying")
    else:
        found.add("parked")
    return found


class MemoryWorkflowInstanceStore(MemoryStore):
    """Workflow instances in memory, with the PostgreSQL store's locking and errors.

    ``lock_by_uuid`` and ``find_expired`` need an active transaction; the other methods join one
    if present, else run as their own small transaction.
    ``js_safe_integers=True`` (for a database shared with TypeScript services) refuses integers
    beyond ±(2**53 - 1) in contexts and metadata with InvalidArgumentError, before any SQL.
    ``skip_busy=True`` makes ``find_expired`` leave out instances with an active queued
    execution.
    """

    __slots__ = ("_js_safe_integers", "_skip_busy")

    def __init__(
        self, database: MemoryDatabase, *, js_safe_integers: bool = False, skip_busy: bool = False
    ) -> None:
        super().__init__(database)
        self._js_safe_integers = require_bool(js_safe_integers, "js_safe_integers")
        require_bool(skip_busy, "skip_busy")
        self._skip_busy = skip_busy

    async def create(self, instance: WorkflowInstance) -> None:
        """Insert a new instance. A uuid in use raises InstanceAlreadyExistsError (after waiting
        for another transaction's uncommitted instance with that uuid)."""
        inst = checked_instance(instance, "create", js_safe_integers=self._js_safe_integers)
        key = coerce_uuid(inst.uuid, "instance.uuid")
        row = WorkflowInstance(
            uuid=key,
            workflow_name=str.__str__(inst.workflow_name),
            current_state=str.__str__(inst.current_state),
            version=int.__index__(inst.version),
            context=as_jsonb(inst.context),
            metadata=as_jsonb(inst.metadata),
            expires_at=optional_timestamptz(inst.expires_at),
            last_transition_at=as_timestamptz(inst.last_transition_at),
            created_at=as_timestamptz(inst.created_at),
            updated_at=as_timestamptz(inst.updated_at),
            definition_version=(
                None if inst.definition_version is None else int.__index__(inst.definition_version)
            ),
            timeout_retry=stored_retry(inst.timeout_retry),
        )
        database = self._database
        what = f"create instance {key}"

        async def op(level: Level) -> None:
            if database._instance(level, key) is not None:
                raise InstanceAlreadyExistsError(key)
            # Only an uncommitted insert of this uuid can hold its lock: wait for it to end.
            undo = await database._locks.acquire(level, key, FOR_UPDATE, what)
            if database._instance(level, key) is not None:
                database._locks.undo(level, undo)
                raise InstanceAlreadyExistsError(key)
            level.instances[key] = row

        await statement(database, what, op)

    async def find_by_uuid(self, instance_uuid: UUID | str) -> WorkflowInstance | None:
        """The instance, or None. Does not lock."""
        key = coerce_uuid(instance_uuid, "instance_uuid")
        level = reading_level(self._database, f"find_by_uuid {key}")
        row = self._database._instance(level, key)
        return None if row is None else export_instance(row, self._database._claims)

    async def lock_by_uuid(
        self, instance_uuid: UUID | str, *, skip_locked: bool = False
    ) -> WorkflowInstance | None:
        """The instance locked until the transaction ends, or None. Requires a transaction.

        Waits while another transaction holds the row, bounded by the runner's lock_timeout
        (LockTimeoutError), and then returns the committed value; with ``skip_locked`` it
        returns None at once instead of waiting.
        """
        key = coerce_uuid(instance_uuid, "instance_uuid")
        database = self._database
        what = f"lock_by_uuid {key}"

        async def op(level: Level) -> WorkflowInstance | None:
            if database._instance(level, key) is None:
                return None
            if skip_locked and database._locks.blockers(level.root, key, FOR_UPDATE):
                return None
            await database._locks.acquire(level, key, FOR_UPDATE, what)
            row = database._instance(level, key)
            return None if row is None else export_instance(row, database._claims)

        return await statement(database, what, op, requires_transaction="lock_by_uuid")

    async def update(self, instance: WorkflowInstance) -> None:
        """Write the instance's mutable fields if the stored version is ``instance.version - 1``.

        The caller increments ``version`` first; another version (or no visible row) raises
        OptimisticLockError. Waits for another transaction's lock on the row, like UPDATE.
        ``metadata``, ``workflow_name`` and ``created_at`` are never written.
        """
        inst, key, expected = checked_update(
            instance, "update", js_safe_integers=self._js_safe_integers
        )
        context = as_jsonb(inst.context)
        what = f"update instance {key}"

        async def op(level: Level) -> None:
            await self._write(level, inst, key, expected, context, what)

        await statement(self._database, what, op)

    async def persist_transition(self, instance: WorkflowInstance, record: HistoryRecord) -> UUID:
        """``update(instance)`` and ``append(record)`` (a row of the same instance) as one
        statement; returns the history row's uuid.

        Another version (or no visible row) raises OptimisticLockError and writes neither.
        """
        inst, key, expected, results, trigger_metadata = checked_transition(
            instance, record, js_safe_integers=self._js_safe_integers
        )
        assert isinstance(record, HistoryRecord)
        context = as_jsonb(inst.context)
        database = self._database
        what = f"persist transition of instance {key}"

        async def op(level: Level) -> UUID:
            await self._write(level, inst, key, expected, context, what)
            return add_history_row(database, level, record, key, results, trigger_metadata)

        return await statement(database, what, op)

    async def _write(
        self,
        level: Level,
        inst: WorkflowInstance,
        key: UUID,
        expected: int,
        context: dict[str, Any],
        what: str,
    ) -> None:
        """The row write of ``update``, at ``level``."""
        database = self._database
        current = database._instance(level, key)
        if current is None or current.version != expected:
            raise OptimisticLockError(key, expected)
        undo = await database._locks.acquire(level, key, NO_KEY_UPDATE, what)
        current = database._instance(level, key)
        if current is None or current.version != expected:
            database._locks.undo(level, undo)
            raise OptimisticLockError(key, expected)
        database._claims.pop(key, None)  # writing the retry columns ends a sweep claim
        level.instances[key] = WorkflowInstance(
            uuid=key,
            workflow_name=current.workflow_name,
            current_state=str.__str__(inst.current_state),
            version=int.__index__(inst.version),
            context=context,
            metadata=current.metadata,
            expires_at=optional_timestamptz(inst.expires_at),
            last_transition_at=as_timestamptz(inst.last_transition_at),
            created_at=current.created_at,
            updated_at=as_timestamptz(inst.updated_at),
            definition_version=(
                None if inst.definition_version is None else int.__index__(inst.definition_version)
            ),
            timeout_retry=stored_retry(inst.timeout_retry),
        )

    async def find_expired(
        self,
        limit: int,
        now: datetime,
        *,
        claim_until: datetime | None = None,
        workflow_names: Sequence[str] | None = None,
    ) -> list[WorkflowInstance]:
        """Due instances (deadline or retry time before ``now``, not parked), oldest due first,
        locked until the transaction ends; rows locked by other transactions are skipped (SKIP
        LOCKED). Requires a transaction. ``workflow_names`` limits the search (None: all).

        With ``claim_until``, returned instances without retry state are claimed until then, as
        in PostgreSQL; here claims take effect at once (not at commit) and ``update`` ends them.
        """
        require_int(limit, "limit", minimum=1)
        require_aware(now, "now")
        names = None if workflow_names is None else set(checked_workflow_names(workflow_names))
        if claim_until is not None and require_aware(claim_until, "claim_until") <= now:
            raise InvalidArgumentError("claim_until must be later than now")
        database = self._database

        async def op(level: Level) -> list[WorkflowInstance]:
            due: list[tuple[datetime, WorkflowInstance]] = []
            busy = database._busy_instances(level) if self._skip_busy else frozenset()
            for row in database._all_instances(level).values():
                if names is not None and row.workflow_name not in names:
                    continue
                if row.uuid in busy:
                    continue
                expires_at = row.expires_at
                if expires_at is None or not expires_at < now:
                    continue
                retry = row.timeout_retry
                claim = database._claims.get(row.uuid)
                if retry is None and claim is not None:
                    if not claim < now:
                        continue
                    due.append((claim, row))
                    continue
                if retry is not None:
                    if retry.parked_at is not None:
                        continue
                    if retry.retry_at is not None:
                        if not retry.retry_at < now:
                            continue
                        due.append((retry.retry_at, row))
                        continue
                due.append((expires_at, row))
            due.sort(key=lambda item: item[0])
            found: list[WorkflowInstance] = []
            root = level.root
            for _, row in due:
                if len(found) >= limit:
                    break
                if database._locks.blockers(root, row.uuid, FOR_UPDATE):
                    continue
                await database._locks.acquire(level, row.uuid, FOR_UPDATE, "find_expired")
                if claim_until is not None and row.timeout_retry is None:
                    database._claims[row.uuid] = claim_until
                found.append(export_instance(row, database._claims))
            return found

        return await statement(database, "find_expired", op, requires_transaction="find_expired")

    async def release_claims(
        self, instance_uuids: Sequence[UUID | str], claim_until: datetime
    ) -> list[UUID]:
        """End unused sweep claims taken with ``find_expired(claim_until=...)``. Claims live
        outside transactions here, so a row's lock never keeps one: returns an empty list."""
        keys = [coerce_uuid(u, "instance_uuids[]") for u in instance_uuids]
        require_aware(claim_until, "claim_until")
        for key in keys:
            if self._database._claims.get(key) == claim_until:
                del self._database._claims[key]
        return []

    async def postpone_timeout(self, instance_uuid: UUID | str, until: datetime) -> bool:
        """Make the instance's timeout due no earlier than ``until`` without recording anything
        (see the PostgreSQL store). Never waits for a row lock."""
        key = coerce_uuid(instance_uuid, "instance_uuid")
        until = as_timestamptz(require_aware(until, "until"))
        database = self._database
        what = f"postpone_timeout {key}"

        async def op(level: Level) -> bool:
            row = database._instance(level, key)
            if row is None or database._locks.blockers(level.root, key, FOR_UPDATE):
                return False
            retry = row.timeout_retry
            if retry is None:
                claim = database._claims.get(key)
                if claim is not None and claim >= until:
                    return False
                database._claims[key] = until
                return True
            if retry.parked_at is not None or (
                retry.retry_at is not None and retry.retry_at >= until
            ):
                return False
            await database._locks.acquire(level, key, NO_KEY_UPDATE, what)
            level.instances[key] = dataclasses.replace(
                row, timeout_retry=dataclasses.replace(retry, retry_at=until)
            )
            return True

        return await statement(database, what, op)

    async def find_parked_timeouts(
        self, *, limit: int = 100, workflow_name: str | None = None
    ) -> list[WorkflowInstance]:
        """Instances whose timeout retries were exhausted, oldest parked first."""
        require_int(limit, "limit", minimum=1)
        if workflow_name is not None:
            require_str(workflow_name, "workflow_name")
        level = reading_level(self._database, "find_parked_timeouts")
        parked: list[tuple[datetime, UUID, WorkflowInstance]] = []
        for row in self._database._all_instances(level).values():
            retry = row.timeout_retry
            if retry is None or retry.parked_at is None:
                continue
            if workflow_name is not None and row.workflow_name != workflow_name:
                continue
            parked.append((retry.parked_at, row.uuid, row))
        parked.sort(key=lambda item: (item[0], item[1]))
        claims = self._database._claims
        return [export_instance(row, claims) for _, _, row in parked[:limit]]

    async def count_instances(
        self,
        *,
        workflow_name: str,
        definition_version: int,
        exclude_states: Sequence[str] = (),
    ) -> int:
        """How many instances of this workflow are stamped with ``definition_version`` and are
        not in one of ``exclude_states``."""
        excluded = set(checked_count_arguments(workflow_name, definition_version, exclude_states))
        level = reading_level(self._database, "count_instances")
        return sum(
            1
            for row in self._database._all_instances(level).values()
            if row.workflow_name == workflow_name
            and row.definition_version == definition_version
            and row.current_state not in excluded
        )

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
        ``definition_version``, ascending, each greater than ``after_uuid`` (see the PostgreSQL
        store). Does not lock."""
        after, wanted, excluded = checked_listing_arguments(
            workflow_name, definition_version, limit, after_uuid, states, exclude_states
        )
        wanted_set = None if wanted is None else set(wanted)
        excluded_set = set(excluded or ())
        level = reading_level(self._database, "find_instance_uuids")
        # UUIDs compare as 128-bit integers: PostgreSQL's (byte) order of uuid values.
        found = sorted(
            row.uuid
            for row in self._database._all_instances(level).values()
            if row.workflow_name == workflow_name
            and row.definition_version == definition_version
            and (after is None or row.uuid > after)
            and (wanted_set is None or row.current_state in wanted_set)
            and row.current_state not in excluded_set
        )
        return found[:limit]

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
        greater than ``after_uuid`` (see the PostgreSQL store). Does not lock."""
        checked_instance_query(workflow_name, state, definition_version, status)
        after = checked_listing_page(limit, now, after_uuid)
        database = self._database
        level = reading_level(database, "list_instances")
        claims = database._claims
        found = sorted(
            (
                row
                for row in database._all_instances(level).values()
                if (workflow_name is None or row.workflow_name == workflow_name)
                and (state is None or row.current_state == state)
                and (definition_version is None or row.definition_version == definition_version)
                and (after is None or row.uuid > after)
                and (status is None or status in _statuses(row, claims.get(row.uuid), now))
            ),
            # UUIDs compare as 128-bit integers: PostgreSQL's (byte) order of uuid values.
            key=lambda row: row.uuid,
        )
        return [export_instance(row, claims) for row in found[:limit]]

    async def stats(self, *, now: datetime, workflow_name: str | None = None) -> list[StateStats]:
        """Per (workflow, state) with at least one instance: the counts and the oldest due time
        (see the PostgreSQL store); sorted by workflow name then state."""
        checked_stats_arguments(workflow_name, now)
        database = self._database
        level = reading_level(database, "stats")
        claims = database._claims
        counts: dict[tuple[str, str], dict[str, int]] = {}
        oldest: dict[tuple[str, str], datetime] = {}
        for row in database._all_instances(level).values():
            if workflow_name is not None and row.workflow_name != workflow_name:
                continue
            key = (row.workflow_name, row.current_state)
            tally = counts.setdefault(key, dict.fromkeys(("instances", *_STATUS_NAMES), 0))
            tally["instances"] += 1
            claim = claims.get(row.uuid)
            for name in _statuses(row, claim, now):
                tally[name] += 1
            due_at = _due_at(row, claim, now)
            if due_at is not None and (key not in oldest or due_at < oldest[key]):
                oldest[key] = due_at
        return [
            StateStats(
                workflow_name=key[0],
                state=key[1],
                instances=tally["instances"],
                due=tally["due"],
                retrying=tally["retrying"],
                parked=tally["parked"],
                claimed=tally["claimed"],
                oldest_due_at=oldest.get(key),
            )
            for key, tally in sorted(counts.items())
        ]
