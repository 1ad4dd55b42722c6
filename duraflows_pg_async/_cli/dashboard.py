"""``dashboard``: serve the web dashboard (``duraflows_pg_async.dashboard``) with uvicorn.

No APP is needed: the runtime has empty registries, so the diagrams come from the definition
snapshots the application's runtimes stored (as ``graph`` draws them), and the actions go
through the runtime's rules like ``rearm`` and ``execution retry|cancel``. SIGINT or SIGTERM
stops it after the requests in hand (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from duraflows_pg_async._definitions.registries import CommandRegistry, DefinitionRegistry
from duraflows_pg_async._runtime.runtime import WorkflowRuntime

from .database import Target, pool, schema_option, target_from, workflow_providers
from .exits import EXIT_USAGE, CliError
from .output import emit

__all__ = ["dashboard_command"]

EXTRA = "the dashboard needs the `dashboard` extra: pip install 'duraflows-pg-async[dashboard]'"


def _server_class() -> type[Any]:
    try:
        import uvicorn
    except ImportError as exc:
        raise CliError(EXTRA, EXIT_USAGE) from exc

    class Server(uvicorn.Server):
        """uvicorn's server, stopped by a signal without raising it again afterwards (uvicorn
        re-raises it once shut down, which would end the command by the signal, not with 0)."""

        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            loop = asyncio.get_running_loop()
            signals = (signal.SIGINT, signal.SIGTERM)
            for sig in signals:
                loop.add_signal_handler(sig, self._stop)
            try:
                yield
            finally:
                for sig in signals:
                    loop.remove_signal_handler(sig)

        def _stop(self) -> None:
            # A second signal stops at once, without waiting for open connections.
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True

    return Server


async def _announce(server: Any, read_only: bool) -> None:
    """Print the address once the server listens (with --port 0, the port it was given)."""
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.05)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    mode = " (read-only)" if read_only else ""
    emit(f"dashboard on http://{shown}:{port}/{mode}")


async def _serve(db: Target, args: argparse.Namespace, schema: str | None) -> None:
    try:
        from duraflows_pg_async.dashboard import dashboard_app
    except ImportError as exc:
        raise CliError(EXTRA, EXIT_USAGE) from exc
    import uvicorn

    server_class = _server_class()
    async with pool(db, max_size=args.pool_size) as opened:
        runtime = WorkflowRuntime(
            definitions=DefinitionRegistry(),
            commands=CommandRegistry(),
            persistence=await workflow_providers(opened, schema),
        )
        app = dashboard_app(runtime, read_only=args.read_only)
        config = uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            root_path=args.root_path,
            log_level="warning",
            lifespan="off",
            server_header=False,
        )
        server = server_class(config)
        announce = asyncio.create_task(_announce(server, args.read_only))
        try:
            await server.serve()
        finally:
            announce.cancel()
        if not server.started:
            raise CliError(f"the dashboard could not listen on {args.host}:{args.port}")


def dashboard_command(args: argparse.Namespace) -> int:
    """``dashboard``: serve until SIGINT or SIGTERM."""
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be from 0 to 65535, got {args.port}", EXIT_USAGE)
    if args.pool_size < 1:
        raise CliError(f"--pool-size must be at least 1, got {args.pool_size}", EXIT_USAGE)
    if args.root_path and (not args.root_path.startswith("/") or args.root_path.endswith("/")):
        raise CliError("--root-path must start with / and not end with one, e.g. /ops", EXIT_USAGE)
    db = target_from(args)
    asyncio.run(_serve(db, args, schema_option(args.schema)))
    return 0
