"""Connecting: a server that never answers, a refused connection, the --connect-timeout option."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from test_cli import assert_clean_error, cli


class SilentServer:
    """A TCP server that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.accepted = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        await reader.read()  # until the client gives up

    def close(self) -> None:
        for writer in self._writers:
            writer.close()


@pytest.fixture
async def silent_url() -> AsyncIterator[tuple[str, SilentServer]]:
    silent = SilentServer()
    server = await asyncio.start_server(silent.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"postgresql://app:s3cret-pw@127.0.0.1:{port}/app", silent
    finally:
        silent.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "args",
    [
        ["parked", "--connect-timeout", "0.5"],
        ["--connect-timeout", "0.5", "migrate", "status"],
        ["inspect", "00000000-0000-0000-0000-000000000001", "--connect-timeout", "0.5"],
        ["worker", "json:loads", "--connect-timeout", "0.5"],
        ["demo", "--connect-timeout", "0.5"],
    ],
)
async def test_a_server_that_never_answers(
    silent_url: tuple[str, SilentServer], args: list[str]
) -> None:
    url, silent = silent_url
    port = url.rsplit(":", 1)[1].split("/")[0]
    started = time.monotonic()
    result = await cli(*args, url=url)
    elapsed = time.monotonic() - started
    assert_clean_error(
        result, 1, f"cannot connect to the database at 127.0.0.1:{port} (no answer within 0.5 s)"
    )
    assert silent.accepted >= 1
    assert "s3cret-pw" not in result.stderr
    assert "CancelledError" not in result.stderr
    assert elapsed < 8, "the default timeout was used, not --connect-timeout"


async def test_the_timeout_from_the_environment(silent_url: tuple[str, SilentServer]) -> None:
    url, _ = silent_url
    result = await cli("parked", url=url, extra_env={"DURAFLOWS_CONNECT_TIMEOUT": "0.25"})
    assert_clean_error(result, 1, "(no answer within 0.25 s)")


@pytest.mark.parametrize(
    ("args", "env", "text"),
    [
        (["parked", "--connect-timeout", "0"], {}, "--connect-timeout must be a positive number"),
        (["parked", "--connect-timeout", "soon"], {}, "got 'soon'"),
        (["parked"], {"DURAFLOWS_CONNECT_TIMEOUT": "-1"}, "DURAFLOWS_CONNECT_TIMEOUT must be"),
        (["parked"], {"DURAFLOWS_CONNECT_TIMEOUT": "inf"}, "DURAFLOWS_CONNECT_TIMEOUT must be"),
    ],
)
async def test_a_bad_timeout_is_a_usage_error(
    args: list[str], env: dict[str, str], text: str
) -> None:
    url = "postgresql://app@127.0.0.1:1/app"
    assert_clean_error(await cli(*args, url=url, extra_env=env), 2, text)


@pytest.mark.parametrize(
    "args", [["migrate", "up"], ["rearm", "00000000-0000-0000-0000-000000000001"]]
)
async def test_a_refused_connection_says_so(args: list[str]) -> None:
    result = await cli(*args, url="postgresql://app:s3cret-pw@127.0.0.1:1/app")
    assert_clean_error(
        result, 1, "cannot connect to the database at 127.0.0.1:1: connection refused"
    )
    assert "s3cret-pw" not in result.stderr
    assert "lost" not in result.stderr
