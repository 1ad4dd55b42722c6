"""The ``duraflows-pg`` command line: migrations, the schema generator, inspection, queued
executions, workers, diagrams, the dashboard.

Exit codes: 0 success, 1 an operational failure (the database cannot be reached, the tables are
missing, an unknown instance or execution, the output cannot be written), 2 a usage error (no
database URL, a malformed argument, a retry or cancel the execution's status refuses), 130
interrupted (SIGINT), 143 stopped (SIGTERM) (``stats --watch`` and a worker's first signal
end with 0 instead), 141 standard output closed
early (a broken pipe, reported like a tool killed by SIGPIPE, and quietly). Errors go to stderr
as one ``duraflows-pg: ...`` line, or with ``--json`` as one JSON object ``{"error": ...,
"exit_code": ...}``, never as a traceback.

Text read from the database (states, event names, errors, context) is escaped on output (see
``output``).

This module turns the command line into a command, and the command's outcome into an exit code;
each command lives in a module of its own (``migrate``, ``inspect``, ``queries`` (``list`` and
``stats``), ``executions``, ``worker``, ``demo``, ``dev_db``, ``diagram`` and ``graph``,
``dashboard``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from .dashboard import dashboard_command
from .database import classify, connect_error, connect_timeout
from .dev_db import dev_db_command
from .diagram import diagram_command, graph_command
from .executions import execution_command
from .exits import EXIT_INTERRUPTED, EXIT_USAGE, CliError
from .inspect import inspect_command, parked_command, rearm_command
from .migrate import migrate_command, sql_command
from .output import OutputError, emit, emit_json, fail, output_failed, safe_text, stderr
from .parser import UsageError, build_parser, wants_json
from .queries import list_command, stats_command
from .signals import Interrupted, run
from .worker import worker_command

__all__ = ["main"]


def _demo_command(args: argparse.Namespace) -> int:
    """``demo``: the demo prints as it goes, or with --json prints its report at the end."""
    from .demo import DemoConnectError, run_demo

    url = args.database_url or os.environ.get("DATABASE_URL") or None
    timeout = connect_timeout(args)
    as_json: bool = args.json
    try:
        report = run(
            run_demo(url, out=(lambda line: None) if as_json else emit, connect_timeout=timeout)
        )
    except DemoConnectError as exc:
        raise connect_error(exc, url or "", timeout) from exc
    if as_json:
        emit_json(report)
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": _demo_command,
    "sql": sql_command,
    "migrate": migrate_command,
    "inspect": inspect_command,
    "parked": parked_command,
    "rearm": rearm_command,
    "list": list_command,
    "stats": stats_command,
    "execution": execution_command,
    "executions": execution_command,
    "worker": worker_command,
    "diagram": diagram_command,
    "dev-db": dev_db_command,
    "graph": graph_command,
    "dashboard": dashboard_command,
}


def _dispatch(args: argparse.Namespace) -> int:
    command = _COMMANDS.get(args.command)
    if command is None:  # pragma: no cover - argparse checks
        raise CliError(f"unknown command {args.command!r}", EXIT_USAGE)
    return command(args)


def _main(argv: list[str], as_json: bool) -> int:
    try:
        args = build_parser(as_json).parse_args(argv)
    except UsageError as exc:
        if as_json:
            return fail(exc, as_json=True)
        exc.parser.print_usage(sys.stderr)
        stderr(safe_text(f"{exc.parser.prog}: error: {exc}"))
        return exc.code
    as_json = bool(args.json)
    try:
        return _dispatch(args)
    except OutputError:
        raise
    except CliError as exc:
        return fail(exc, as_json)
    except KeyboardInterrupt:
        return fail(CliError("interrupted", EXIT_INTERRUPTED), as_json)
    except Interrupted as exc:
        return fail(CliError(f"interrupted ({exc})", 128 + exc.signum), as_json)
    except Exception as exc:
        url = args.database_url or os.environ.get("DATABASE_URL")
        return fail(classify(exc, getattr(args, "schema", None), url), as_json)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    as_json = wants_json(arguments)
    try:
        try:
            code = _main(arguments, as_json)
        except SystemExit as exc:  # --help, --version
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        try:
            sys.stdout.flush()
        except OSError as exc:
            raise OutputError(exc) from exc
    except OutputError as exc:
        return output_failed(exc.error, as_json)
    return code
