"""Numbers in every JSON column: what jsonb gives back, on both providers and with both codecs.

jsonb holds numbers as numeric and prints them in plain decimal notation, so a float written in
exponent form that is integral (1e16, 1e308) comes back as an int, -0.0 comes back as 0.0, and
integers of any size come back exact. The in-memory provider must give back the same values and
types, and so must a pool whose codec is orjson (which on its own reads integers beyond 64 bits as
rounded floats and refuses to write them).
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from duraflows_pg_async import (
    CommandResult,
    HistoryRecord,
    WorkflowPersistenceProvider,
    create_pool,
    memory_workflow_providers,
    pg_workflow_providers,
    register_codecs,
)
from duraflows_pg_async.errors import DatabaseError
from duraflows_pg_async.testing import make_instance

# (label, the value written, what jsonb gives back), as measured on PostgreSQL 13 and 18.
NUMBERS: list[tuple[str, object, object]] = [
    ("1e16", 1e16, 10**16),
    ("1e22", 1e22, 10**22),
    ("1e308", 1e308, 10**308),
    ("max float", 1.7976931348623157e308, 17976931348623157 * 10**292),
    ("-0.0", -0.0, 0.0),
    ("0.0", 0.0, 0.0),
    ("1.5e-7", 1.5e-7, 1.5e-7),
    ("1e-7", 1e-7, 1e-7),
    ("-1e-7", -1e-7, -1e-7),
    ("123.456", 123.456, 123.456),
    ("1e15", 1e15, 1e15),
    ("1.0", 1.0, 1.0),
    ("5e-324", 5e-324, 5e-324),
    ("2**53+1", 2**53 + 1, 2**53 + 1),
    ("2**63", 2**63, 2**63),
    ("-2**63", -(2**63), -(2**63)),
    ("2**64-1", 2**64 - 1, 2**64 - 1),
    ("2**64", 2**64, 2**64),
    ("-2**63-1", -(2**63) - 1, -(2**63) - 1),
    ("10**30", 10**30, 10**30),
    ("-10**30", -(10**30), -(10**30)),
]


def _shaped(value: object) -> dict[str, Any]:
    # Keys already in jsonb's order (by length, then bytes), so dict order can be compared too.
    return {"n": value, "list": [value, [value, {"x": value}]], "nested": {"deep": {"x": value}}}


def _payload(column: int) -> dict[str, Any]:
    return {f"n{i:02d}": _shaped(written) for i, (_, written, _) in enumerate(NUMBERS)} | {
        "column": column
    }


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same types, zeros of the same sign, dict keys in the same order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


async def _round_trip(p: WorkflowPersistenceProvider) -> dict[str, Any]:
    """Write the payload into every JSON column and read each back (by column name)."""
    instance = make_instance(context=_payload(0), metadata=_payload(1))
    out: dict[str, Any] = {}
    await p.instance_store.create(instance)
    found = await p.instance_store.find_by_uuid(instance.uuid)
    assert found is not None
    out["metadata"] = found.metadata
    out["context at create"] = found.context
    async with p.transaction_runner.transaction():
        locked = await p.instance_store.lock_by_uuid(instance.uuid)
        assert locked is not None
        locked.context = _payload(2)
        locked.version += 1
        await p.instance_store.update(locked)
    found = await p.instance_store.find_by_uuid(instance.uuid)
    assert found is not None
    out["context after update"] = found.context
    await p.history_store.append(
        HistoryRecord(
            workflow_instance_uuid=instance.uuid,
            from_state="a",
            event_name="go",
            to_state="b",
            outcome="failure",
            command_results=[
                CommandResult(ok=False, code="c", metadata=_payload(3), error=_payload(4))
            ],
            trigger_metadata=_payload(5),
        )
    )
    [row] = await p.history_store.find_by_instance_uuid(instance.uuid)
    out["command result metadata"] = row.command_results[0].metadata
    out["command result error"] = row.command_results[0].error
    out["trigger_metadata"] = row.trigger_metadata
    stored = await p.definition_store.ensure(
        workflow_name="numbers", version=1, content_hash="sha256:x", definition_json=_payload(6)
    )
    out["definition_json from ensure"] = stored.definition_json
    again = await p.definition_store.find_by_name_and_version("numbers", 1)
    assert again is not None
    out["definition_json"] = again.definition_json
    return out


def _mismatches(read: dict[str, Any]) -> list[str]:
    wrong = []
    for column, value in read.items():
        assert isinstance(value, dict), column
        for i, (label, _, expected) in enumerate(NUMBERS):
            got = value[f"n{i:02d}"]
            if not _same(got, _shaped(expected)):
                wrong.append(f"{column}: {label} came back as {got['n']!r} ({type(got['n'])})")
    return wrong


async def test_every_json_column_gives_numbers_back_as_jsonb_does(
    any_persistence: WorkflowPersistenceProvider,
) -> None:
    assert _mismatches(await _round_trip(any_persistence)) == []


@pytest.fixture(params=["create_pool", "register_codecs"])
async def orjson_pool(request: pytest.FixtureRequest, database: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool whose codec is orjson, set up either of the documented ways."""
    if request.param == "create_pool":
        pool = await create_pool(
            database, min_size=1, max_size=2, json_dumps=orjson.dumps, json_loads=orjson.loads
        )
    else:

        async def init(conn: asyncpg.Connection) -> None:
            await register_codecs(conn, json_dumps=orjson.dumps, json_loads=orjson.loads)

        pool = await asyncpg.create_pool(database, min_size=1, max_size=2, init=init)
    try:
        yield pool
    finally:
        await pool.close()


async def test_an_orjson_pool_gives_numbers_back_as_jsonb_does(orjson_pool: asyncpg.Pool) -> None:
    assert _mismatches(await _round_trip(pg_workflow_providers(orjson_pool))) == []


@pytest.fixture(params=["stdlib", "orjson"])
async def any_codec_pool(
    request: pytest.FixtureRequest, database: str
) -> AsyncIterator[asyncpg.Pool]:
    functions: dict[str, Any] = {"json_dumps": json.dumps, "json_loads": json.loads}
    if request.param == "orjson":
        functions = {"json_dumps": orjson.dumps, "json_loads": orjson.loads}
    pool = await create_pool(database, min_size=1, max_size=2, **functions)
    try:
        yield pool
    finally:
        await pool.close()


_OTHER_WRITER = (
    '{"big": 123456789012345678901234567890, "neg": -9223372036854775809, '
    '"u64": 18446744073709551615, "js": 1e+21, "list": [100000000000000000000000, 1.5]}'
)


async def test_integers_written_by_other_writers_stay_exact_through_a_read_and_write(
    any_codec_pool: asyncpg.Pool, raw_connection: asyncpg.Connection
) -> None:
    # What SQL or the TypeScript runtime (JSON.stringify prints 1e21 as "1e+21") may store.
    instance = make_instance()
    await raw_connection.execute(
        "INSERT INTO workflow_instances (uuid, workflow_name, current_state, context_json) "
        "VALUES ($1, 'w', 's', $2::text::jsonb)",
        instance.uuid,
        _OTHER_WRITER,
    )
    p = pg_workflow_providers(any_codec_pool)
    found = await p.instance_store.find_by_uuid(instance.uuid)
    assert found is not None
    expected = {
        "js": 10**21,
        "big": 123456789012345678901234567890,
        "neg": -9223372036854775809,
        "u64": 18446744073709551615,
        "list": [10**23, 1.5],
    }
    assert _same(found.context, expected)
    async with p.transaction_runner.transaction():
        locked = await p.instance_store.lock_by_uuid(instance.uuid)
        assert locked is not None
        locked.version += 1
        await p.instance_store.update(locked)
    text = await raw_connection.fetchval(
        "SELECT context_json::text FROM workflow_instances WHERE uuid = $1", instance.uuid
    )
    assert text == (
        '{"js": 1000000000000000000000, "big": 123456789012345678901234567890, '
        '"neg": -9223372036854775809, "u64": 18446744073709551615, '
        '"list": [100000000000000000000000, 1.5]}'
    )


async def test_the_codec_refuses_a_number_no_python_type_holds_naming_its_key_path(
    any_codec_pool: asyncpg.Pool,
) -> None:
    beyond_float = "1" + "0" * 400 + ".5"  # the standard library reads it as inf
    with pytest.raises(DatabaseError, match=r"value\['a'\]\[1\]: .*beyond the range of a float"):
        await any_codec_pool.fetchval(f"SELECT '{{\"a\": [1, {beyond_float}]}}'::jsonb")
    with pytest.raises(DatabaseError, match=r"value\[0\]: .*beyond the range of a float"):
        await any_codec_pool.fetchval("SELECT '[1e400]'::json")  # json keeps the text as written
    too_long = "9" * 5000
    with pytest.raises(DatabaseError, match=r"value\['b'\]: .*int-to-str limit"):
        await any_codec_pool.fetchval(f"SELECT '{{\"b\": {too_long}}}'::jsonb")
    assert await any_codec_pool.fetchval("SELECT '[1]'::jsonb") == [1]


def _random_numbers(seed: int) -> list[object]:
    rnd = random.Random(seed)
    floats: list[object] = []
    while len(floats) < 3000:
        value = struct.unpack("<d", rnd.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(value):
            floats.append(value)
    floats += [rnd.random() * 10 ** rnd.randint(0, 25) for _ in range(1000)]
    floats += [float(f"{rnd.randint(1, 99)}e{exponent}") for exponent in range(-330, 307)]
    floats += [rnd.randint(-(10**40), 10**40) for _ in range(200)]
    return floats


async def test_random_numbers_come_back_the_same_from_both_providers_and_codecs(
    any_codec_pool: asyncpg.Pool,
) -> None:
    numbers = _random_numbers(20250601)
    context = {"xs": numbers, "ys": [[x] for x in numbers[:500]]}
    read: list[dict[str, Any]] = []
    for p in (memory_workflow_providers(), pg_workflow_providers(any_codec_pool)):
        instance = make_instance(context=context, created_at=datetime(2025, 1, 1, tzinfo=UTC))
        await p.instance_store.create(instance)
        found = await p.instance_store.find_by_uuid(instance.uuid)
        assert found is not None
        read.append(found.context)
    memory, postgres = read
    differ = [
        (x, m, q)
        for x, m, q in zip(numbers, memory["xs"], postgres["xs"], strict=True)
        if not _same(m, q)
    ]
    assert differ == []
    assert _same(memory, postgres)
