"""JSON codecs for asyncpg pools: registered once per connection through the pool's ``init``."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from duraflows_pg_async._pg.error_mapping import map_db_errors
from duraflows_pg_async.errors import ConfigurationError, DatabaseError, InvalidArgumentError

from .json_numbers import (
    exact_loads,
    exact_orjson_dumps,
    exact_orjson_loads,
    is_exact_loads,
    stdlib_dumps,
)
from .session_reset import PooledConnection, reset_session

__all__ = ["JsonDumps", "JsonLoads", "create_pool", "register_codecs"]

JsonDumps = Callable[[Any], str | bytes]
JsonLoads = Callable[[str | bytes], Any]
ConnectionInit = Callable[[asyncpg.Connection], Awaitable[None]]

CODEC_HINT = (
    "create the pool with duraflows_pg_async.create_pool(), or call "
    "duraflows_pg_async.register_codecs(conn) in your own pool's init="
)


# jsonb's binary form is a version byte, then the JSON text (PostgreSQL 9.4 to 18: version 1).
_JSONB_VERSION = b"\x01"


def _text_encoder(dumps: JsonDumps) -> Callable[[Any], str]:
    def encode(value: Any) -> str:
        out = dumps(value)
        # orjson and msgspec return bytes; asyncpg's text format wants str.
        return out.decode() if isinstance(out, bytes) else out

    return encode


def _binary_codecs(
    dumps: JsonDumps, loads: JsonLoads
) -> dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]]:
    """(encoder, decoder) of the binary format, by type name.

    The same JSON text as the text format, without a str in between: orjson's bytes go to the
    socket as they are, and the bytes read are parsed without being decoded to str first.
    """

    def encode_json(value: Any) -> bytes:
        out = dumps(value)
        return out if isinstance(out, bytes) else out.encode()

    def encode_jsonb(value: Any) -> bytes:
        out = dumps(value)
        return _JSONB_VERSION + (out if isinstance(out, bytes) else out.encode())

    def decode_jsonb(data: bytes) -> Any:
        if data[:1] != _JSONB_VERSION:
            raise DatabaseError(f"jsonb read from PostgreSQL: unknown binary version {data[:1]!r}")
        return loads(data[1:])

    return {"jsonb": (encode_jsonb, decode_jsonb), "json": (encode_json, loads)}


def _default_functions() -> tuple[JsonDumps, JsonLoads]:
    """orjson's functions (wrapped, see json_numbers) when it is installed, else the standard
    library's."""
    try:
        import orjson
    except ImportError:
        return stdlib_dumps, exact_loads
    return exact_orjson_dumps(orjson.dumps), exact_orjson_loads(
        orjson.loads, orjson.JSONDecodeError
    )


def _check_functions(json_dumps: object, json_loads: object) -> tuple[JsonDumps, JsonLoads]:
    if json_dumps is not None and not callable(json_dumps):
        raise InvalidArgumentError(f"json_dumps must be callable, got {json_dumps!r}")
    if json_loads is not None and not callable(json_loads):
        raise InvalidArgumentError(f"json_loads must be callable, got {json_loads!r}")
    default_dumps, default_loads = _default_functions()
    dumps: JsonDumps = default_dumps if json_dumps is None else json_dumps
    loads: JsonLoads = default_loads if json_loads is None else json_loads
    # The standard library's functions: the same JSON from the module's one encoder, and numbers
    # read exactly.
    if dumps is json.dumps:
        dumps = stdlib_dumps
    if loads is json.loads:
        loads = exact_loads
    # orjson rounds integers beyond 64 bits to floats on read and refuses them on write: its
    # functions are wrapped so that every number comes back as jsonb holds it.
    orjson = sys.modules.get("orjson")
    if orjson is not None:
        if _is_function(dumps, orjson.dumps):
            dumps = exact_orjson_dumps(dumps)
        if _is_function(loads, orjson.loads):
            loads = exact_orjson_loads(loads, orjson.JSONDecodeError)
    return dumps, loads


def _is_function(candidate: object, function: object) -> bool:
    return candidate is function or (
        isinstance(candidate, functools.partial) and candidate.func is function
    )


async def register_codecs(
    conn: asyncpg.Connection,
    *,
    json_dumps: JsonDumps | None = None,
    json_loads: JsonLoads | None = None,
) -> None:
    """Register the json and jsonb codecs on one connection (for a pool you build yourself).

    Call it from your pool's ``init=``. The default codec is orjson when it is installed (the
    ``[orjson]`` extra), else the standard library's ``json``; ``json_dumps=json.dumps,
    json_loads=json.loads`` asks for the standard library. Either way numbers come back as jsonb
    holds them: orjson's functions are wrapped so that integers beyond 64 bits stay exact, and a
    number no Python type holds raises DatabaseError naming its key path. With these functions
    the values travel in PostgreSQL's binary format (no str in between); a ``json_loads`` of
    your own gets str, in the text format.
    """
    dumps, loads = _check_functions(json_dumps, json_loads)
    with map_db_errors("register_codecs"):
        if is_exact_loads(loads):
            for type_name, (encoder, decoder) in _binary_codecs(dumps, loads).items():
                await conn.set_type_codec(
                    type_name,
                    encoder=encoder,
                    decoder=decoder,
                    schema="pg_catalog",
                    format="binary",
                )
            return
        text_encoder = _text_encoder(dumps)
        for type_name in ("jsonb", "json"):
            await conn.set_type_codec(
                type_name, encoder=text_encoder, decoder=loads, schema="pg_catalog", format="text"
            )


async def create_pool(
    dsn: str | None = None,
    *,
    json_dumps: JsonDumps | None = None,
    json_loads: JsonLoads | None = None,
    init: ConnectionInit | None = None,
    **asyncpg_kwargs: Any,
) -> asyncpg.Pool:
    """An ``asyncpg.Pool`` whose connections carry the JSON codecs this package needs.

    Your own ``init`` still runs, after the codecs are registered. Other keyword arguments go to
    ``asyncpg.create_pool``. The caller owns the pool and closes it.
    """
    dumps, loads = _check_functions(json_dumps, json_loads)
    if init is not None and not callable(init):
        raise InvalidArgumentError(f"init must be an async callable, got {init!r}")

    async def _init(conn: asyncpg.Connection) -> None:
        await register_codecs(conn, json_dumps=dumps, json_loads=loads)
        if init is not None:
            await init(conn)

    # The runner folds the session reset into its COMMIT on these connections (session_reset).
    if "connection_class" not in asyncpg_kwargs and "reset" not in asyncpg_kwargs:
        asyncpg_kwargs["connection_class"] = PooledConnection
        asyncpg_kwargs["reset"] = reset_session
    with map_db_errors("create_pool"):
        pool: asyncpg.Pool = await asyncpg.create_pool(dsn, init=_init, **asyncpg_kwargs)
    return pool


def decoded(value: object, column: str) -> Any:
    """A jsonb value as the codec decoded it; text means the connection has no codec."""
    if isinstance(value, str):
        raise ConfigurationError(
            f"{column} came back as JSON text, so the pool has no JSON codecs: {CODEC_HINT}"
        )
    return value


def is_client_encode_error(exc: BaseException) -> bool:
    """asyncpg's client-side bind error (it subclasses both InterfaceError and ValueError)."""
    return isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError)
