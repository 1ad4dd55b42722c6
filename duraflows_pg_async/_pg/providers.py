"""pg_workflow_providers: the four PostgreSQL persistence parts, built together."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from duraflows_pg_async._core.contract import WorkflowPersistenceProvider
from duraflows_pg_async._core.validate import (
    require_bool,
    require_duration,
    require_identifier,
    require_str,
)

from .definition_store import PgWorkflowDefinitionStore
from .execution_store import PgWorkflowExecutionStore
from .history_store import PgWorkflowHistoryStore
from .idempotency_store import PgWorkflowIdempotencyStore
from .instance_store import PgWorkflowInstanceStore
from .runner import PgTransactionRunner
from .wakeups import PgWakeups

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
    wakeups: bool = True,
    listen_dsn: str | None = None,
    notify_within: timedelta | float = 60.0,
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

    ``wakeups=True`` (the default) lets workers sleep until the nearest due time and be woken
    by LISTEN/NOTIFY: a write whose timeout or queued execution falls due within
    ``notify_within`` (a ``timedelta`` or seconds, at least the workers' ``poll_interval``)
    notifies on commit. While workers run, the listener holds one connection more, made as the
    pool makes its own (outside the pool's size), or to ``listen_dsn`` (a direct connection:
    LISTEN cannot pass a pgbouncer in transaction mode). ``wakeups=False``: workers poll every
    ``poll_interval``, writes never notify. See docs/timeouts-and-workers.md, "Wake-ups".
    """
    require_bool(idempotency, "idempotency")
    require_bool(durable_execution, "durable_execution")
    require_bool(wakeups, "wakeups")
    if listen_dsn is not None:
        require_str(listen_dsn, "listen_dsn")
    within = timedelta(seconds=require_duration(notify_within, "notify_within", positive=True))
    if schema is not None:
        require_identifier(schema, "schema")
    waker = (
        PgWakeups(pool, schema=schema, listen_dsn=listen_dsn, notify_within=within)
        if wakeups
        else None
    )
    notify = within if wakeups else None
    runner = PgTransactionRunner(
        pool, lock_timeout=lock_timeout, statement_timeout=statement_timeout
    )
    return WorkflowPersistenceProvider(
        instance_store=PgWorkflowInstanceStore(
            pool,
            schema=schema,
            js_safe_integers=js_safe_integers,
            skip_busy=durable_execution,
            notify_within=notify,
        ),
        history_store=PgWorkflowHistoryStore(pool, schema=schema),
        transaction_runner=runner,
        definition_store=PgWorkflowDefinitionStore(pool, schema=schema),
        idempotency_store=PgWorkflowIdempotencyStore(pool, schema=schema) if idempotency else None,
        execution_store=PgWorkflowExecutionStore(pool, schema=schema, notify_within=notify)
        if durable_execution
        else None,
        wakeups=waker,
    )
