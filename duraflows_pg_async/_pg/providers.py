"""pg_workflow_providers: the four PostgreSQL persistence parts, built together."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.validate import require_bool

from .definition_store import PgWorkflowDefinitionStore
from .execution_store import PgWorkflowExecutionStore
from .history_store import PgWorkflowHistoryStore
from .idempotency_store import PgWorkflowIdempotencyStore
from .instance_store import PgWorkflowInstanceStore
from .runner import PgTransactionRunner

__all__ = ["pg_workflow_providers"]


def pg_workflow_providers(
    pool: asyncpg.Pool,
    *,
    schema: str | None = None,
    lock_timeout: timedelta | float | None = None,
    statement_timeout: timedelta | float | None = None,
    idempotency: bool = False,
    durable_execution: bool = False,
    js_safe_integers: bool = False,
) -> WorkflowPersistenceProvider[PgTransactionRunner]:
    """Stores and a transaction runner over ``pool``; fresh objects on every call.

    ``schema`` qualifies the table names (an identifier; otherwise search_path decides).
    ``lock_timeout`` and ``statement_timeout`` are a ``timedelta`` or seconds, applied with
    SET LOCAL to every transaction the runner opens. ``idempotency=True`` adds the idempotency
    store that keyed ``trigger_event`` calls need (migration 007). ``js_safe_integers=True``, for
    a database shared with TypeScript services, refuses integers that JavaScript would round
    (beyond ±(2**53 - 1)) in contexts and metadata. Bad values raise InvalidArgumentError here.
    The pool should come from ``create_pool()`` (or carry ``register_codecs``); it is never closed
    by this package.
    """
    require_bool(idempotency, "idempotency")
    require_bool(durable_execution, "durable_execution")
    runner = PgTransactionRunner(
        pool, lock_timeout=lock_timeout, statement_timeout=statement_timeout
    )
    return WorkflowPersistenceProvider(
        instance_store=PgWorkflowInstanceStore(
            pool,
            schema=schema,
            js_safe_integers=js_safe_integers,
            skip_busy=durable_execution,
        ),
        history_store=PgWorkflowHistoryStore(pool, schema=schema),
        transaction_runner=runner,
        definition_store=PgWorkflowDefinitionStore(pool, schema=schema),
        idempotency_store=PgWorkflowIdempotencyStore(pool, schema=schema) if idempotency else None,
        execution_store=PgWorkflowExecutionStore(pool, schema=schema)
        if durable_execution
        else None,
    )
