"""What the instances of a sweep came to, added up, and the re-check and log lines both kinds of
sweep (per instance, batched) share."""

from __future__ import annotations

import logging
from datetime import datetime
from uuid import UUID

from duraflows_pg_async._core.model import WorkflowInstance

from .execution import BusinessFailure, ParkedTimeout, ProcessExpiredResult, TimeoutFailure

__all__ = ["Outcome", "Tally", "log_failure", "still_due", "timeout_outcome"]

logger = logging.getLogger("duraflows_pg_async")

# What one instance of a sweep came to: "processed" or "rejected", a business failure (processed,
# routed to an error state), a timeout failure (rolled back), or None (passed over).
Outcome = str | BusinessFailure | TimeoutFailure | None


def timeout_outcome(outcome: Outcome) -> str | None:
    """A timeout's outcome as a transition's (for the metrics): the event's, or "error" (rolled
    back); None when it was passed over."""
    if outcome is None:
        return None
    if isinstance(outcome, TimeoutFailure):
        return "error"
    if isinstance(outcome, BusinessFailure):
        return "failure"
    return "guard-rejected" if outcome == "rejected" else "success"


class Tally:
    """The outcomes of one sweep, added up into its ``ProcessExpiredResult``."""

    __slots__ = ("business_failed", "failed", "parked", "processed", "rejected")

    def __init__(self) -> None:
        self.processed = self.rejected = 0
        self.business_failed: list[BusinessFailure] = []
        self.failed: list[TimeoutFailure] = []
        self.parked: list[ParkedTimeout] = []

    def add(self, instance_uuid: UUID, outcome: Outcome) -> None:
        """Count one settled instance (None, passed over, counts nowhere)."""
        if isinstance(outcome, TimeoutFailure):
            self.failed.append(outcome)
            if outcome.attempts is not None and outcome.retry_at is None:
                self.parked.append(ParkedTimeout(instance_uuid, outcome.error))
        elif outcome == "rejected":
            self.rejected += 1
        elif outcome is not None:
            self.processed += 1
            if isinstance(outcome, BusinessFailure):
                self.business_failed.append(outcome)

    def result(self) -> ProcessExpiredResult:
        return ProcessExpiredResult(
            self.processed, self.rejected, self.business_failed, self.failed, self.parked
        )


def still_due(instance: WorkflowInstance, now: datetime) -> bool:
    """Whether a locked instance is still due at ``now`` (the re-check under the lock)."""
    retry = instance.timeout_retry
    return (
        instance.expires_at is not None
        and instance.expires_at <= now
        and (
            retry is None
            or (retry.parked_at is None and (retry.retry_at is None or retry.retry_at <= now))
        )
    )


def log_failure(workflow_name: str, failure: TimeoutFailure) -> None:
    """Log a recorded failed attempt, or the parking of an instance."""
    if failure.retry_at is None:
        logger.warning(
            "duraflows: timeout of instance %s (workflow %r) parked after %d failed attempts: %s",
            failure.uuid,
            workflow_name,
            failure.attempts,
            failure.error,
        )
    else:
        logger.warning(
            "duraflows: timeout of instance %s (workflow %r) failed, attempt %d; next "
            "attempt at %s: %s",
            failure.uuid,
            workflow_name,
            failure.attempts,
            failure.retry_at.isoformat(),
            failure.error,
        )
