"""The sweep of due timeouts: claiming a batch, running each timeout in a transaction of its own,
recording failures, and handing back the claims a sweep did not use. The batched sweep (one
transaction per batch) is ``sweep_batches.py``; both share the firing of a locked instance."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from duraflows_pg_async._core import metrics as _metrics
from duraflows_pg_async._core import tracing as _tracing
from duraflows_pg_async._core.echo import echo
from duraflows_pg_async._core.model import WorkflowInstance
from duraflows_pg_async._core.validate import require_duration, require_str
from duraflows_pg_async._definitions.registries import DefinitionRegistry
from duraflows_pg_async.errors import DatabaseError, InvalidArgumentError

from .execution import BusinessFailure, ProcessExpiredResult, TimeoutFailure
from .instance_updates import next_version, utc_now
from .observers import EnteredStates
from .sweep_batches import sweep_in_batches
from .sweep_outcomes import Outcome, Tally, log_failure, still_due, timeout_outcome
from .sweep_writes import BatchWrites, BufferedTransition, InstanceWrites
from .transitions import Transition, error_text, result_attributes

if TYPE_CHECKING:
    from .runtime import WorkflowRuntime

__all__ = ["DEFAULT_SWEEP_LEASE", "Sweeper", "checked_lease", "sweep_names"]

logger = logging.getLogger("duraflows_pg_async")

# How long a sweep's claim on its batch lasts by default: the longest a killed worker's batch
# waits before other sweeps take it. A sweep hands back what it has not reached once half of its
# lease is spent, so a slow batch never outlives its claim.
DEFAULT_SWEEP_LEASE = timedelta(seconds=20)

_TIMEOUT_TRIGGER: Mapping[str, Any] = {"source": "timeout"}


def checked_lease(value: object, name: str) -> timedelta:
    """A sweep lease: a positive timedelta or number of seconds."""
    return timedelta(seconds=require_duration(value, name, positive=True))


def sweep_names(definitions: DefinitionRegistry, workflow_names: Iterable[str] | None) -> list[str]:
    """The workflows a sweep takes: the registered ones, or the given subset of them."""
    registered = [definition.name for definition in definitions.latest()]
    if workflow_names is None:
        return registered
    if isinstance(workflow_names, str) or not isinstance(workflow_names, Iterable):
        raise InvalidArgumentError(
            "workflow_names must be a collection of workflow names, got "
            f"{type(workflow_names).__name__}"
        )
    names = [require_str(name, "workflow_names[]") for name in workflow_names]
    unknown = sorted(set(names).difference(registered))
    if unknown:
        raise InvalidArgumentError(
            f"workflow_names: {', '.join(echo(n) for n in unknown[:5])} "
            f"{'is' if len(unknown) == 1 else 'are'} not registered in this runtime"
        )
    return list(dict.fromkeys(names))


def _sweep_attributes(result: ProcessExpiredResult) -> dict[str, _tracing.Value]:
    return {
        "duraflows.sweep.processed": result.processed,
        "duraflows.sweep.rejected": result.rejected,
        "duraflows.sweep.business_failed": len(result.business_failed),
        "duraflows.sweep.failed": len(result.failed),
        "duraflows.sweep.parked": len(result.parked),
    }


def _sweep_counts(result: ProcessExpiredResult) -> dict[str, int]:
    return {
        "processed": result.processed,
        "rejected": result.rejected,
        "business_failed": len(result.business_failed),
        "failed": len(result.failed),
        "parked": len(result.parked),
    }


def _timeout_attributes(outcome: Outcome) -> dict[str, _tracing.Value]:
    if not isinstance(outcome, TimeoutFailure):
        what = (
            "skipped" if outcome is None else "rejected" if outcome == "rejected" else "processed"
        )
        return {"duraflows.timeout.outcome": what}
    if outcome.attempts is None:  # not even the failure could be recorded
        return {"duraflows.timeout.outcome": "failed"}
    return {
        "duraflows.timeout.attempts": outcome.attempts,
        "duraflows.timeout.outcome": "failed" if outcome.retry_at is not None else "parked",
    }


class Sweeper:
    """The sweeps of one runtime, and the claims they still have to hand back.

    A claim is queued for hand-back when a sweep stops before the end of its batch, passes over
    a row, or cannot record a failure; each sweep first hands back what earlier ones queued.
    Each timeout runs as a ``trigger_event`` does: in the runtime's transaction, under the
    definition that rules the instance.
    """

    def __init__(self, runtime: WorkflowRuntime) -> None:
        self._runtime = runtime
        self._unreleased_claims: list[tuple[UUID, datetime]] = []

    def sweep(
        self,
        limit: int,
        should_stop: Callable[[], bool] | None,
        names: list[str],
        lease: timedelta,
        batched: bool = False,
    ) -> Awaitable[ProcessExpiredResult]:
        """One sweep of up to ``limit`` due instances of ``names``, its batch claimed for
        ``lease`` (``batched``: locked in one transaction per batch instead, see
        ``sweep_batches``); the arguments are already checked."""
        traced = _tracing.traced(
            _tracing.SWEEP,
            lambda span: self._sweep(limit, should_stop, names, lease, span, batched),
            lambda: {"duraflows.sweep.limit": limit},
            _sweep_attributes,
        )
        return _metrics.swept(self._runtime, "timeout", traced, _sweep_counts)

    @property
    def runtime(self) -> WorkflowRuntime:
        return self._runtime

    def now(self) -> datetime:
        """The runtime clock's time, in UTC."""
        return utc_now(self._runtime.clock)

    _now = now

    async def _sweep(
        self,
        limit: int,
        should_stop: Callable[[], bool] | None,
        names: list[str],
        lease: timedelta,
        span: _tracing.Span | None,
        batched: bool = False,
    ) -> ProcessExpiredResult:
        if batched:
            # Claims queued by earlier per-instance sweeps of this runtime still go back first.
            await self._release_unreleased_claims(self._now())
            if not names:
                return ProcessExpiredResult()
            return await sweep_in_batches(self, limit, should_stop, names, lease, span)
        now = self._now()
        store = self._runtime.persistence.instance_store
        # The scan claims its batch for the lease, so that concurrent sweeps take disjoint
        # batches; exclusivity itself comes from the per-instance lock and due re-check below.
        claim_until = now + lease
        # Past this point the rest of the batch is handed back: its claims must not run out
        # while this sweep still counts on them.
        hand_back_at = now + lease / 2
        await self._release_unreleased_claims(now)
        if not names:
            return ProcessExpiredResult()
        async with self._runtime.persistence.transaction_runner.transaction():
            due = await store.find_expired(
                limit, now, claim_until=claim_until, workflow_names=names
            )
        if span is not None and span.recording:
            span.update({"duraflows.sweep.found": len(due)})
        tally = Tally()
        # Claims to hand back are queued at once, so that a cancellation later in the batch
        # leaves them to the next sweep rather than to the end of the lease.
        hand_back = self._unreleased_claims
        for index, scanned in enumerate(due):
            if (should_stop is not None and should_stop()) or self._now() >= hand_back_at:
                # Other sweepers take the rest at once instead of waiting out the claims.
                hand_back.extend((i.uuid, claim_until) for i in due[index:])
                break
            probe = _metrics.probe(self._runtime, "timeout", scanned.workflow_name)
            if span is None:
                outcome = await self._sweep_one(scanned, claim_until, None)
            else:
                outcome = await self._traced_sweep_one(scanned, claim_until)
            if probe is not None:
                probe.done(timeout_outcome(outcome))
            if outcome is None:
                # Held by someone else, or no longer due: a later sweep takes it if it still
                # needs it, without waiting for this claim to run out.
                hand_back.append((scanned.uuid, claim_until))
            tally.add(scanned.uuid, outcome)
        if self._unreleased_claims:
            await self._release_unreleased_claims(self._now())
        return tally.result()

    def _traced_sweep_one(
        self, scanned: WorkflowInstance, claim_until: datetime
    ) -> Awaitable[Outcome]:
        """``_sweep_one`` in a "duraflows.timeout" span, a child of the sweep's."""
        return self.traced_timeout(
            scanned, lambda span: self._sweep_one(scanned, claim_until, span)
        )

    def traced_timeout(
        self,
        scanned: WorkflowInstance,
        work: Callable[[_tracing.Span | None], Awaitable[Outcome]],
    ) -> Awaitable[Outcome]:
        """``work`` for one instance in a "duraflows.timeout" span, a child of the sweep's."""
        return _tracing.traced(
            _tracing.TIMEOUT,
            work,
            lambda: {
                "duraflows.workflow.name": scanned.workflow_name,
                "duraflows.instance.uuid": str(scanned.uuid),
                "duraflows.state.from": scanned.current_state,
            },
            _timeout_attributes,
        )

    async def _sweep_one(
        self, scanned: WorkflowInstance, claim_until: datetime, span: _tracing.Span | None
    ) -> Outcome:
        """Process one scanned instance in a transaction of its own. A failure is rolled back,
        recorded (retry or parking) and returned, never raised. None: passed over (held by
        another transaction, gone, or no longer due)."""
        try:
            # SKIP LOCKED even for the rows this sweep claimed: whoever holds one (a request,
            # a peer's scan) may hold it for any time, and no sweep waits on it.
            return await self._runtime._in_transaction(
                functools.partial(self._process_timeout, scanned.uuid, span)
            )
        except Exception as exc:
            if span is not None:
                span.fail(exc)
            return await self._record_timeout_failure(scanned, error_text(exc), claim_until)

    async def _process_timeout(
        self, instance_uuid: UUID, span: _tracing.Span | None, entered: EnteredStates
    ) -> str | BusinessFailure | None:
        """Fire the timeout event of the instance, if it is still due and nobody holds it."""
        store = self._runtime.persistence.instance_store
        instance = await store.lock_by_uuid(instance_uuid, skip_locked=True)
        if instance is None:
            return None  # gone, or held by another transaction
        return await self.fire_locked(instance, span, entered)

    async def fire_locked(
        self,
        instance: WorkflowInstance,
        span: _tracing.Span | None,
        entered: EnteredStates,
        buffered: tuple[BatchWrites, InstanceWrites] | None = None,
        *,
        occupied_checked: bool = False,
    ) -> str | BusinessFailure | None:
        """Fire the timeout event of ``instance``, which this transaction holds locked, if it is
        still due; the per-instance and the batched sweeps share this. ``buffered``: the
        batch's writes and this instance's, to keep the rows in instead of writing them;
        ``occupied_checked``: the caller has made sure no queued execution holds it."""
        runtime = self._runtime
        if not still_due(instance, self._now()):
            return None  # taken by another worker, or handled since the scan
        if not occupied_checked and await self.occupied(instance):
            return None  # a queued execution holds it: sweeps leave it alone
        definition = await runtime._governing(instance)
        transition = (
            Transition(runtime, instance, definition, entered, span)
            if buffered is None
            else BufferedTransition(runtime, instance, definition, entered, span, *buffered)
        )
        timeout = definition.timeout_event(instance.current_state)
        if timeout is None:
            # The state has no timeout (any more): clear the deadline quietly.
            instance.expires_at = None
            instance.timeout_retry = None
            next_version(instance, self._now(), definition=definition)
            await transition.write_instance()
            return None
        event_name, _event = timeout
        trigger = dict(_TIMEOUT_TRIGGER)
        result = await transition.fire(event_name, None, trigger)
        if span is not None and span.recording:
            span.update(result_attributes(result))
        if result.outcome == "guard-rejected":
            # Rejected timeouts do not fire again: the deadline is cleared.
            instance.expires_at = None
            instance.timeout_retry = None
            next_version(instance, self._now(), definition=definition, transition=True)
            await transition.write_instance()
            return "rejected"
        if result.outcome == "failure":
            return BusinessFailure(instance.uuid, result.to_state)
        return "processed"

    async def occupied(self, instance: WorkflowInstance) -> bool:
        """Whether a queued execution occupies the (locked) instance."""
        return await self._runtime._active_execution(instance) is not None

    async def _record_timeout_failure(
        self, scanned: WorkflowInstance, message: str, claim_until: datetime
    ) -> TimeoutFailure:
        """Schedule the retry (or park) in a transaction of its own; never raises.

        ``attempts`` is None in the result when nothing was recorded: the row changed or is held
        by someone else (its claim is handed back), or recording failed. A failure that could
        not be recorded is never retried at once: the instance is postponed by the retry delay,
        or, when the database is unreachable, its claim is handed back by a later sweep.
        """
        runtime = self._runtime
        store = runtime.persistence.instance_store
        try:
            async with runtime.persistence.transaction_runner.transaction():
                instance = await store.lock_by_uuid(scanned.uuid, skip_locked=True)
                now = self._now()
                if (
                    instance is None
                    or instance.version != scanned.version
                    or instance.current_state != scanned.current_state
                    or instance.expires_at != scanned.expires_at
                    or not still_due(instance, now)
                    or await self.occupied(instance)
                ):
                    self._unreleased_claims.append((scanned.uuid, claim_until))
                    return TimeoutFailure(scanned.uuid, message)
                retry = runtime.timeout_retry.next(instance.timeout_retry, message, now)
                instance.timeout_retry = retry
                next_version(instance, now)
                await store.update(instance)
        except Exception as exc:
            await self._postpone_unrecorded(scanned, message, claim_until, exc)
            return TimeoutFailure(scanned.uuid, message)
        failure = TimeoutFailure(scanned.uuid, retry.last_error, retry.attempts, retry.retry_at)
        log_failure(scanned.workflow_name, failure)
        return failure

    async def _postpone_unrecorded(
        self, scanned: WorkflowInstance, message: str, claim_until: datetime, exc: Exception
    ) -> None:
        """After a failure that could not be recorded: keep the instance from running again at
        once. A database error (connection lost, timeouts) hands the claim back to a later sweep,
        as the database may be back by then; anything else postpones it by the delay its next
        retry would have had."""
        if isinstance(exc, DatabaseError):
            self._unreleased_claims.append((scanned.uuid, claim_until))
            logger.warning(
                "duraflows: could not record the failed timeout of instance %s (workflow %r): %s",
                scanned.uuid,
                scanned.workflow_name,
                message,
                exc_info=True,
            )
            return
        policy = self._runtime.timeout_retry
        until: datetime | None = None
        try:
            now = self._now()
            until = policy.next(scanned.timeout_retry, message, now).retry_at
            until = max(until or now, claim_until, now + policy.initial_delay)
            await self._runtime.persistence.instance_store.postpone_timeout(scanned.uuid, until)
        except Exception:
            until = None
        logger.error(
            "duraflows: could not record the failed timeout of instance %s (workflow %r); %s: %s",
            scanned.uuid,
            scanned.workflow_name,
            f"next attempt not before {until.isoformat()}"
            if until is not None
            else "it stays claimed until its lease ends",
            message,
            exc_info=exc,
        )

    async def _release_unreleased_claims(self, now: datetime) -> None:
        """Hand back the queued claims the sweeps did not use.

        Queued: the rest of a batch a sweep stopped early, rows it passed over, and instances
        whose failure could not be recorded because the database went away (a restart, a network
        cut), which would otherwise stay due only once their lease ran out. release_claims
        touches only claims still unused and never waits for a row, so a row processed,
        recorded or held since is left alone. When the database cannot be reached, they are
        tried again by the next sweep.
        """
        pending, self._unreleased_claims = self._unreleased_claims, []
        batches: dict[datetime, list[UUID]] = {}
        for instance_uuid, claim_until in pending:
            if claim_until > now:  # a claim past its time has run out by itself
                batches.setdefault(claim_until, []).append(instance_uuid)
        for claim_until, uuids in list(batches.items()):
            try:
                held = await self._runtime.persistence.instance_store.release_claims(
                    uuids, claim_until
                )
            except BaseException as exc:
                # Kept for the next sweep, also when cancelled here (releasing twice is harmless).
                self._unreleased_claims.extend(
                    (u, until) for until, group in batches.items() for u in group
                )
                if isinstance(exc, Exception):
                    return
                raise
            del batches[claim_until]
            # Held by another transaction: tried again by the next sweep, until it is let go
            # (then due at once) or written (which ends the claim), or the claim runs out.
            self._unreleased_claims.extend((u, claim_until) for u in held)
