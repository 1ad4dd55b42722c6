"""``duraflows-pg list`` and ``stats`` (with ``--watch``) on a known population."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from helpers import wait_for_line
from test_cli import assert_clean_error, cli

from duraflows_pg_async import TimeoutRetry, pg_workflow_providers
from duraflows_pg_async.testing import make_instance

HOUR = timedelta(hours=1)


async def populate(pool: asyncpg.Pool) -> dict[str, uuid.UUID]:
    """order/waiting (v1): one due for 2 h, one due in an hour, one without deadline;
    order/paying (v2): one retrying later, one parked; invoice/open: one claimed by a sweep."""
    now = datetime.now(UTC)
    store = pg_workflow_providers(pool).instance_store
    made = {
        "due": make_instance(
            workflow_name="order",
            current_state="waiting",
            definition_version=1,
            expires_at=now - 2 * HOUR,
        ),
        "later": make_instance(
            workflow_name="order",
            current_state="waiting",
            definition_version=1,
            expires_at=now + HOUR,
        ),
        "idle": make_instance(workflow_name="order", current_state="waiting", definition_version=1),
        "retrying": make_instance(
            workflow_name="order",
            current_state="paying",
            definition_version=2,
            expires_at=now - HOUR,
            timeout_retry=TimeoutRetry(attempts=2, last_error="boom", retry_at=now + HOUR),
        ),
        "parked": make_instance(
            workflow_name="order",
            current_state="paying",
            definition_version=2,
            expires_at=now - HOUR,
            timeout_retry=TimeoutRetry(attempts=5, last_error="boom", parked_at=now),
        ),
        "claimed": make_instance(
            workflow_name="invoice", current_state="open", expires_at=now - HOUR
        ),
    }
    for instance in made.values():
        await store.create(instance)
    async with pool.acquire() as conn:
        # A sweep's claim: a retry time without retry attempts.
        await conn.execute(
            "UPDATE workflow_instances SET timeout_retry_at = now() + interval '1 hour' "
            "WHERE uuid = $1",
            made["claimed"].uuid,
        )
    return {name: instance.uuid for name, instance in made.items()}


async def listed(database: str, *args: str) -> tuple[list[uuid.UUID], str | None]:
    result = await cli("list", "--json", *args, url=database)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert set(body) == {"items", "nextCursor"}
    return [uuid.UUID(item["uuid"]) for item in body["items"]], body["nextCursor"]


async def test_list_filters(database: str, pool: asyncpg.Pool) -> None:
    known = await populate(pool)
    every, cursor = await listed(database)
    assert sorted(every) == sorted(known.values())
    assert cursor is None
    assert every == sorted(every)  # by uuid
    cases: list[tuple[tuple[str, ...], set[str]]] = [
        (("--workflow", "order"), {"due", "later", "idle", "retrying", "parked"}),
        (("--workflow", "order", "--state", "paying"), {"retrying", "parked"}),
        (("--workflow", "order", "--version", "1"), {"due", "later", "idle"}),
        (("--status", "due"), {"due"}),
        (("--status", "retrying"), {"retrying"}),
        (("--status", "parked"), {"parked"}),
        (("--status", "claimed"), {"claimed"}),
        (("--workflow", "invoice", "--status", "parked"), set()),
    ]
    for args, names in cases:
        found, cursor = await listed(database, *args)
        assert set(found) == {known[n] for n in names}, args
        assert cursor is None


async def test_list_pages_with_the_cursor(database: str, pool: asyncpg.Pool) -> None:
    known = await populate(pool)
    seen: list[uuid.UUID] = []
    found, cursor = await listed(database, "--limit", "2")
    seen += found
    pages = 1
    while cursor is not None:
        found, cursor = await listed(database, "--limit", "2", "--after", cursor)
        seen += found
        pages += 1
    assert pages == 3
    assert seen == sorted(known.values())

    # The text form prints the cursor of the next page after its table.
    text = await cli("list", "--limit", "4", url=database)
    assert text.returncode == 0, text.stderr
    more = [line for line in text.stdout.splitlines() if line.startswith("more: --after ")]
    assert len(more) == 1
    rest, cursor = await listed(database, "--limit", "4", "--after", more[0].split()[-1])
    assert len(rest) == 2
    assert cursor is None


async def test_list_text(database: str, pool: asyncpg.Pool) -> None:
    known = await populate(pool)
    result = await cli("list", "--workflow", "order", url=database)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["uuid", "workflow", "state", "version", "deadline", "timeout"]
    assert not any(line.startswith("more:") for line in lines)
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {str(known[n]) for n in ("due", "later", "idle", "retrying", "parked")}
    assert rows[str(known["due"])].endswith("due")
    assert rows[str(known["retrying"])].endswith("retry 2")
    assert rows[str(known["parked"])].endswith("parked after 5")
    assert rows[str(known["idle"])].split()[1:] == ["order", "waiting", "1", "-"]
    claimed = await cli("list", "--status", "claimed", url=database)
    assert claimed.stdout.splitlines()[2].endswith("claimed")
    empty = await cli("list", "--workflow", "nothing", url=database)
    assert (empty.returncode, empty.stdout) == (0, "no instances\n")


async def test_list_errors(database: str, pool: asyncpg.Pool) -> None:
    await populate(pool)
    _, cursor = await listed(database, "--limit", "2")
    assert cursor is not None
    for args, text in [
        (("--state", "paying"), "state needs workflow_name"),
        (("--version", "1"), "definition_version needs workflow_name"),
        (("--after", "not-a-cursor"), "after is not a cursor of list_instances"),
        (("--after", cursor, "--workflow", "order"), "a cursor of a listing with other filters"),
        (("--limit", "0"), "--limit must be 1 to 1000"),
        (("--limit", "1001"), "--limit must be 1 to 1000"),
    ]:
        assert_clean_error(await cli("list", *args, url=database), 2, text)
    as_json = await cli("list", "--json", "--after", "x", url=database)
    assert as_json.returncode == 2
    assert json.loads(as_json.stderr)["exit_code"] == 2
    bad_status = await cli("list", "--status", "late", url=database)
    assert bad_status.returncode == 2
    assert "invalid choice" in bad_status.stderr


EXPECTED_STATS = [
    # workflow, state, instances, due, retrying, parked, claimed
    ("invoice", "open", 1, 0, 0, 0, 1),
    ("order", "paying", 2, 0, 1, 1, 0),
    ("order", "waiting", 3, 1, 0, 0, 0),
]


async def test_stats_json_and_text(database: str, pool: asyncpg.Pool) -> None:
    known = await populate(pool)
    result = await cli("stats", "--json", url=database)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    keys = ["workflowName", "state", "instances", "due", "retrying", "parked", "claimed"]
    assert [tuple(row[k] for k in keys) for row in body] == EXPECTED_STATS
    assert all(set(row) == {*keys, "oldestDueAt"} for row in body)
    waiting = body[2]
    oldest = datetime.fromisoformat(waiting["oldestDueAt"])
    stored = await pg_workflow_providers(pool).instance_store.find_by_uuid(known["due"])
    assert stored is not None
    assert oldest == stored.expires_at
    assert [row["oldestDueAt"] for row in body[:2]] == [None, None]

    only = await cli("stats", "--json", "--workflow", "invoice", url=database)
    assert [row["workflowName"] for row in json.loads(only.stdout)] == ["invoice"]

    text = await cli("stats", url=database)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == [
        *("workflow", "state", "instances", "due", "retrying", "parked", "claimed"),
        *("oldest", "due", "late"),
    ]
    assert [tuple(line.split()[:7]) for line in lines[2:]] == [
        tuple(str(v) for v in row) for row in EXPECTED_STATS
    ]
    # Due for two hours: "late" reads 2h 00m (or 2h 01m on a slow run).
    assert lines[4].split()[-2] == "2h"
    assert lines[4].split()[-1] in ("00m", "01m")
    empty = await cli("stats", "--workflow", "nothing", url=database)
    assert (empty.returncode, empty.stdout) == (0, "no instances\n")


def watch(database: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["DATABASE_URL"] = database
    return subprocess.Popen(
        [sys.executable, "-m", "duraflows_pg_async", "stats", "--watch", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def stop(proc: subprocess.Popen[str], sig: int) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    return proc.returncode, out, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_stats_watch_redraws_until_stopped(
    database: str, pool: asyncpg.Pool, sig: int
) -> None:
    await populate(pool)
    proc = watch(database, "0.2")
    try:
        assert proc.stdout is not None
        first = await wait_for_line(proc.stdout, "duraflows-pg stats at")
        second = await wait_for_line(proc.stdout, "duraflows-pg stats at")
        code, rest, err = await stop(proc, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (code, err) == (0, "")
    # Not a terminal: no screen-clearing escape codes, frames one after the other.
    assert "\x1b" not in first + second + rest
    assert "every 0.2 s" in first
    # wait_for_line stops after the header line: the first frame's table is read with the second.
    table = [line.split()[:3] for line in second.splitlines()]
    assert ["order", "waiting", "3"] in table


async def test_stats_watch_json_lines(database: str, pool: asyncpg.Pool) -> None:
    await populate(pool)
    proc = watch(database, "0.2", "--json", "--workflow", "invoice")
    try:
        assert proc.stdout is not None
        lines = [await wait_for_line(proc.stdout, "invoice") for _ in range(2)]
        code, rest, err = await stop(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (code, err) == (0, "")
    for line in [*lines, *rest.splitlines()]:
        body = json.loads(line)
        assert [(r["workflowName"], r["claimed"]) for r in body] == [("invoice", 1)]


async def test_stats_watch_rejects_a_bad_interval(database: str) -> None:
    for value in ("0", "-1", "nan", "soon"):
        assert_clean_error(
            await cli("stats", "--watch", value, url=database), 2, "--watch must be a positive"
        )
