"""ExecutionWorker: the async loop that runs queued executions (``enqueue_event``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from duraflows_pg_async._core.contract import WorkflowWakeups
from duraflows_pg_async._core.executions import WorkflowExecution
from duraflows_pg_async.errors import DurableExecutionNotSupportedError, WorkflowError

from .durable import ProcessPendingResult
from .runtime import WorkflowRuntime
from .worker import PollingWorker

__all__ = ["ExecutionWorker", "ExecutionWorkerStats"]

logger = logging.getLogger("duraflows_pg_async")


@dataclass(slots=True)
class ExecutionWorkerStats:
    """Running totals of one [`ExecutionWorker`][duraflows_pg_async.ExecutionWorker] (for logs,
    metrics and tests).

    ``polls`` counts ``process_pending_executions`` calls that returned; the other fields add up
    the ``ProcessPendingResult`` of each
    (``processed``: executions claimed, each moved one command further or finished;
    ``progressed``, ``completed``, ``retrying``, ``parked``, ``skipped``, ``failed``: how many
    uuids each list held). ``errors`` counts polls that raised (the worker backed off).
    """

    polls: int = 0
    processed: int = 0
    progressed: int = 0
    completed: int = 0
    retrying: int = 0
    parked: int = 0
    skipped: int = 0
    failed: int = 0
    errors: int = 0

    def add(self, result: ProcessPendingResult) -> None:
        self.polls += 1
        self.processed += result.processed
        self.progressed += len(result.progressed)
        self.completed += len(result.completed)
        self.retrying += len(result.retrying)
        self.parked += len(result.parked)
        self.skipped += len(result.skipped)
        self.failed += len(result.failed)


class ExecutionWorker(PollingWorker[ExecutionWorkerStats]):
    """Runs queued executions until ``stop()`` is called or its task is cancelled.

    Each poll is one ``runtime.process_pending_executions(batch_size)``: up to ``batch_size``
    due executions, each moved one command further (or finished), each step checkpointed in
    transactions of its own. The next poll starts at once when the poll settled a full batch or
    moved an execution to a next command that is due now; otherwise the worker sleeps
    ``poll_interval`` seconds. A poll that raises (the database is unreachable) is logged and
    retried after ``poll_interval``, doubling up to 30 seconds. A failing command is retried
    with the backoff of the execution's policy and then parked, so it never makes a worker spin.

    ``stop()`` lets the command in hand finish and be checkpointed, then ``run()`` returns;
    cancelling the task instead abandons the command in
    hand: its execution keeps its lease, and a worker takes it again when the lease ends (the
    command runs again, as a new attempt). Any number of workers, in one process or many, can
    share the queue: a lease with fencing gives each execution to one worker at a time.

    The runtime's provider must have an execution store (``pg_workflow_providers(pool,
    durable_execution=True)``; DurableExecutionNotSupportedError otherwise), and ``run()``
    must not be called inside a transaction (WorkflowError): each checkpoint commits on its own.
    """

    _what = "execution poll"

    def __init__(
        self, runtime: WorkflowRuntime, *, batch_size: int = 100, poll_interval: float = 1.0
    ) -> None:
        super().__init__(runtime, batch_size, poll_interval)
        if runtime.persistence.execution_store is None:
            raise DurableExecutionNotSupportedError()
        self.stats = ExecutionWorkerStats()

    def _check_can_run(self) -> None:
        if self.runtime.persistence.transaction_runner.is_transaction_active():
            raise WorkflowError(
                "an ExecutionWorker must run outside a transaction: each checkpoint commits on "
                "its own"
            )

    async def _next_due(self, wakeups: WorkflowWakeups, now: datetime) -> datetime | None:
        return await wakeups.next_execution_due(now)

    def _wanted(self, kind: str, workflow_name: str | None) -> bool:
        return kind in ("execution", "any")

    async def _poll(self) -> bool:
        result = await self.runtime.process_pending_executions(
            self.batch_size, should_stop=lambda: self._stopping
        )
        self.stats.add(result)
        await self._log(result)
        # Settled: moved or decided. A skipped execution (another worker has it) and an error
        # the worker could not record are not progress: polling again at once could spin.
        settled = (
            len(result.progressed)
            + len(result.completed)
            + len(result.retrying)
            + len(result.parked)
        )
        # A full batch means more may be due now, and so does a finished command whose
        # execution has another one to run: its next step is due at once.
        return settled >= self.batch_size or bool(result.progressed)

    async def _log(self, result: ProcessPendingResult) -> None:
        """A warning for each failed attempt, parked execution and unrecorded error."""
        for uuid in result.retrying:
            execution = await self._read(uuid)
            if execution is None or execution.status != "pending":
                logger.warning("duraflows: execution %s failed; it will be retried", uuid)
                continue
            logger.warning(
                "duraflows: execution %s (%s of workflow %s, instance %s) failed attempt %d; "
                "next attempt at %s: %s",
                uuid,
                execution.event_name,
                execution.workflow_name,
                execution.workflow_instance_uuid,
                execution.attempts,
                execution.available_at.isoformat(),
                execution.last_error,
            )
        for uuid in result.parked:
            execution = await self._read(uuid)
            detail = (
                ""
                if execution is None
                else f" ({execution.event_name} of workflow {execution.workflow_name}, instance "
                f"{execution.workflow_instance_uuid}) after {execution.attempts} attempt(s): "
                f"{execution.last_error}"
            )
            logger.warning(
                "duraflows: execution %s parked%s; retry_execution() or cancel_execution() it",
                uuid,
                detail,
            )
        for uuid, error in result.failed:
            logger.warning(
                "duraflows: execution %s: an error could not be recorded (the execution is "
                "taken again when due): %s",
                uuid,
                error,
            )

    async def _read(self, execution_uuid: UUID) -> WorkflowExecution | None:
        """The execution for a log line, or None if it cannot be read now."""
        try:
            return await self.runtime.get_execution(execution_uuid)
        except Exception:
            return None
