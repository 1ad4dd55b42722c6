"""The batched sweep: many due timeouts in one transaction, each under a savepoint of its own.

One transaction per batch. The scan locks the batch's rows (``find_expired``, FOR UPDATE SKIP
LOCKED, no claim: the locks keep other sweeps off the rows until COMMIT, and a batch that never
commits leaves them due at once). Each instance is re-checked and fired under its savepoint, as
the per-instance sweep fires it; one that raises rolls back to its savepoint and its failed
attempt (retry or parking) is written in the same transaction, without holding back the rest.
With PostgreSQL the instance and history rows are kept and written at the end of the batch in
two statements (``sweep_writes.py``), and the savepoint is lazy (sent only if the commands use
the connection): an instance whose commands send no SQL costs no round trip. One COMMIT for the
batch, then the observers of the whole batch.

The rows of a batch stay locked until its COMMIT, so a batch takes no new instance once it has
held them for ``BATCH_LOCK_BUDGET`` (or half the lease is spent): it commits what it fired, which
lets the rest go, and the sweep goes on with a new batch. A failed attempt that cannot be written
(the connection is gone) rolls the batch back and the sweep raises: those instances are due again.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING
from uuid import UUID

from duraflows_pg_async._core import metrics as _metrics
from duraflows_pg_async._core import tracing as _tracing
from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.model import WorkflowInstance
from duraflows_pg_async.errors import DatabaseError

from .execution import ProcessExpiredResult, TimeoutFailure
from .instance_updates import next_version
from .observers import EnteredStates
from .sweep_outcomes import Outcome, Tally, log_failure, still_due, timeout_outcome
from .sweep_writes import batch_writes
from .transitions import error_text

if TYPE_CHECKING:
    from .sweeper import Sweeper

__all__ = ["BATCH_LOCK_BUDGET", "sweep_in_batches"]

logger = logging.getLogger("duraflows_pg_async")

# Seconds a batch may hold its rows before it takes no new instance and commits: what a request
# waiting for one of those rows waits at most, plus the command in hand. Fast commands fill a
# batch of 100 in a few milliseconds, far below it.
BATCH_LOCK_BUDGET = 1.0


async def sweep_in_batches(
    sweeper: Sweeper,
    limit: int,
    should_stop: Callable[[], bool] | None,
    names: list[str],
    lease: timedelta,
    span: _tracing.Span | None,
) -> ProcessExpiredResult:
    """Up to ``limit`` due instances of ``names``, in one or more batch transactions."""
    runtime = sweeper.runtime
    runner = runtime.persistence.transaction_runner
    store = runtime.persistence.instance_store
    # As in the per-instance sweep: past half the lease a sweep takes nothing more.
    hand_back_at = sweeper.now() + lease / 2
    tally = Tally()
    remaining = limit
    found_total = 0

    def stopping() -> bool:
        return (should_stop is not None and should_stop()) or sweeper.now() >= hand_back_at

    while remaining > 0 and not stopping():
        fired: list[tuple[WorkflowInstance, Outcome, _metrics.Probe | None]] = []
        cut = False
        async with runner.transaction():
            due = await store.find_expired(remaining, sweeper.now(), workflow_names=names)
            found_total += len(due)
            budget_end = time.monotonic() + BATCH_LOCK_BUDGET
            batch = _Batch(runtime.persistence)
            for scanned in due:
                if stopping() or time.monotonic() >= budget_end:
                    cut = True  # the rest is let go at COMMIT, still due
                    break
                probe = _metrics.probe(runtime, "timeout", scanned.workflow_name)
                if span is None:
                    outcome = await _fire(sweeper, scanned, batch, None)
                else:
                    outcome = await sweeper.traced_timeout(
                        scanned, functools.partial(_fire, sweeper, scanned, batch)
                    )
                fired.append((scanned, outcome, probe))
            writes = batch.writes
            if writes is not None:
                await writes.flush()
        # Committed: only now do the outcomes count and the failed attempts get logged.
        for scanned, outcome, probe in fired:
            if probe is not None:
                probe.done(timeout_outcome(outcome))
            tally.add(scanned.uuid, outcome)
            if isinstance(outcome, TimeoutFailure) and outcome.attempts is not None:
                log_failure(scanned.workflow_name, outcome)
        remaining -= len(fired)
        if not cut or not fired:
            # Every row found was fired: either the limit is reached or nothing more is due
            # (or free) now. A batch cut by its lock budget is followed by another.
            break
    if span is not None and span.recording:
        span.update({"duraflows.sweep.found": found_total})
    return tally.result()


class _Batch:
    """What the instances of one batch share: its buffered writes (None: write at once), and
    whether a command may have written other instances' rows (then each next instance is read
    again under its lock instead of trusting the scan's copy)."""

    __slots__ = ("reread", "writes")

    def __init__(self, persistence: WorkflowPersistenceProvider) -> None:
        self.writes = batch_writes(persistence)
        # A runner without lazy savepoints cannot tell whether a command sent SQL.
        self.reread = getattr(persistence.transaction_runner, "lazy_savepoint", None) is None


async def _fire(
    sweeper: Sweeper,
    scanned: WorkflowInstance,
    batch: _Batch,
    span: _tracing.Span | None,
) -> Outcome:
    """Fire one locked instance under a savepoint; a failure is rolled back to it and recorded
    in the batch's transaction. Raises only when the failure cannot be recorded, or cannot be
    undone alone (then the whole batch rolls back)."""
    runtime = sweeper.runtime
    persistence = runtime.persistence
    runner = persistence.transaction_runner
    observers = runtime._observers
    entered = EnteredStates(observers)
    buffer = batch.writes
    writes = None if buffer is None else buffer.instance_writes()
    lazy = getattr(runner, "lazy_savepoint", None)
    # Rows the batch kept back are written before a command's first SQL: it must see them.
    savepoint = (
        runner.transaction() if lazy is None else lazy(None if buffer is None else buffer.flush)
    )
    try:
        instance: WorkflowInstance | None = scanned
        if batch.reread:
            # This transaction holds the row: no wait, and what commands wrote is seen.
            instance = await persistence.instance_store.lock_by_uuid(scanned.uuid)
            if instance is None:
                return None
        assert instance is not None
        # Checked before the savepoint: a read of the store's own, which needs no savepoint
        # (and does not count as a command's SQL).
        if persistence.execution_store is not None and await sweeper.occupied(instance):
            return None  # a queued execution holds it: sweeps leave it alone
        # A savepoint of the batch's transaction; its observers wait for the batch's COMMIT.
        async with savepoint:
            outcome = await sweeper.fire_locked(
                instance,
                span,
                entered,
                None if buffer is None or writes is None else (buffer, writes),
                occupied_checked=True,
            )
            if entered.events and observers:
                runner.after_commit(entered.notify)
            if getattr(savepoint, "used", True):
                # Its commands sent SQL, which may have written this or another instance of
                # the batch: its own rows are written now (a conflict fails it alone), and the
                # next instances are read again.
                batch.reread = True
                if buffer is not None and writes is not None:
                    await buffer.write(writes)
                    writes = None
    except Exception as exc:
        if getattr(savepoint, "unguarded", False):
            raise  # its SQL may have run outside the savepoint: only the batch can undo it
        if span is not None:
            span.fail(exc)
        return await _record_failure(sweeper, scanned.uuid, error_text(exc))
    if buffer is not None and writes is not None:
        buffer.keep(writes)
    return outcome


async def _record_failure(sweeper: Sweeper, instance_uuid: UUID, message: str) -> TimeoutFailure:
    """Write the failed attempt (retry or parking) of an instance this batch holds locked.

    The transition may have changed the scanned instance before it raised, so the row is read
    again (the lock is this transaction's: no wait). A database error means the batch's
    transaction is lost: it propagates and rolls the batch back. Any other error while recording
    (a policy that raises) postpones the instance by the first retry delay instead, so that no
    sweep takes it again at once.
    """
    runtime = sweeper.runtime
    store = runtime.persistence.instance_store
    now = sweeper.now()
    try:
        async with runtime.persistence.transaction_runner.transaction():
            instance = await store.lock_by_uuid(instance_uuid)
            if instance is None or not still_due(instance, now):
                return TimeoutFailure(instance_uuid, message)
            retry = runtime.timeout_retry.next(instance.timeout_retry, message, now)
            instance.timeout_retry = retry
            next_version(instance, now)
            await store.update(instance)
    except DatabaseError:
        raise
    except Exception:
        until = now + runtime.timeout_retry.initial_delay
        await store.postpone_timeout(instance_uuid, until)
        logger.error(
            "duraflows: could not record the failed timeout of instance %s; next attempt not "
            "before %s: %s",
            instance_uuid,
            until.isoformat(),
            message,
            exc_info=True,
        )
        return TimeoutFailure(instance_uuid, message)
    return TimeoutFailure(instance_uuid, retry.last_error, retry.attempts, retry.retry_at)
