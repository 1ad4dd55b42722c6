"""The command line's grammar: the commands and their options, --json anywhere, usage errors.

argparse's own exits and messages are routed back to ``main()``, so that a usage error is
reported like any other (as text or JSON) and --help into a closed pipe ends like any output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from duraflows_pg_async import __version__

from .database import DEFAULT_CONNECT_TIMEOUT
from .exits import EXIT_USAGE, CliError
from .output import PROG, emit, json_text, stderr

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

__all__ = ["UsageError", "build_parser", "wants_json"]


class UsageError(CliError):
    """argparse refused the command line; ``parser`` is the (sub)parser that did."""

    def __init__(self, message: str, parser: argparse.ArgumentParser) -> None:
        super().__init__(message, EXIT_USAGE)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors come back to main(), which reports them as text or JSON."""

    json_mode = False

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self)

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        # argparse drops write errors; --help into a closed pipe must end like any other output.
        if not message:
            return
        if file is None or file is sys.stdout:
            emit(message.removesuffix("\n"))
        else:
            stderr(message.removesuffix("\n"))


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        if isinstance(parser, _Parser) and parser.json_mode:
            emit(json_text({"version": __version__}))
        else:
            emit(f"{PROG} {__version__}")
        parser.exit()


# Options every command takes, before or after the command name. The copies on the subcommands
# default to SUPPRESS so that they do not overwrite a value given before the command.
def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    default: Any = argparse.SUPPRESS
    parser.add_argument(
        "--database-url",
        default=None if top else default,
        help="PostgreSQL URL (default: $DATABASE_URL; the demo starts an embedded server if unset)",
    )
    parser.add_argument(
        "--connect-timeout",
        default=None if top else default,
        metavar="SECONDS",
        help="give up connecting after this long (default: $DURAFLOWS_CONNECT_TIMEOUT, else "
        f"{DEFAULT_CONNECT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top else default,
        help="print JSON: results on stdout, errors as one object on stderr",
    )


def build_parser(json_mode: bool = False) -> argparse.ArgumentParser:
    """The whole command line; with ``json_mode``, --version prints JSON."""
    common = _Parser(add_help=False)
    _global_options(common, top=False)
    parser = _Parser(prog=PROG, description="duraflows-pg-async: PostgreSQL workflow persistence")
    parser.json_mode = json_mode
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    _global_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser(
        "demo",
        parents=[common],
        help="run the demo end to end and print what it stored (on $DATABASE_URL it uses a "
        "temporary schema of its own, dropped afterwards)",
    )

    sql = commands.add_parser(
        "sql", parents=[common], help="print the fresh-install schema (generator output)"
    )
    sql.add_argument("--uuid-strategy", default="gen_random_uuid", help="gen_random_uuid|uuidv7")
    sql.add_argument("--schema", default=None, help="schema to create the tables in")
    sql.add_argument("--down", action="store_true", help="print the down (drop) script instead")

    migrate = commands.add_parser(
        "migrate", parents=[common], help="apply, roll back or list the dbmate migrations"
    )
    migrate.add_argument("action", choices=["up", "down", "status"])
    migrate.add_argument(
        "--schema",
        default=None,
        help="schema of the tables and of schema_migrations (created by `up` if missing)",
    )
    migrate.add_argument(
        "--yes", action="store_true", help="`down`: roll back without asking for confirmation"
    )

    insp = commands.add_parser(
        "inspect", parents=[common], help="show one instance and its history"
    )
    insp.add_argument("uuid", help="the instance's uuid")
    insp.add_argument("--limit", type=int, default=50, help="history rows to show (default 50)")
    insp.add_argument("--schema", default=None, help="schema of the tables")

    parked = commands.add_parser(
        "parked", parents=[common], help="list instances whose timeout retries are exhausted"
    )
    parked.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    parked.add_argument("--workflow", default=None, help="only this workflow name")
    parked.add_argument("--schema", default=None, help="schema of the tables")

    rearm = commands.add_parser(
        "rearm",
        parents=[common],
        help="clear an instance's timeout retry, parked state or sweep claim",
    )
    rearm.add_argument("uuid", nargs="?", default=None, help="the instance's uuid")
    rearm.add_argument(
        "--all",
        action="store_true",
        help="rearm every parked timeout of the workflow named by --workflow (asks first)",
    )
    rearm.add_argument("--workflow", default=None, help="with --all: the workflow's name")
    rearm.add_argument(
        "--yes", action="store_true", help="with --all: rearm without asking for confirmation"
    )
    rearm.add_argument("--schema", default=None, help="schema of the tables")

    listing_all = commands.add_parser(
        "list",
        parents=[common],
        help="list instances by workflow, state, definition version or timeout status, a page "
        "at a time",
    )
    listing_all.add_argument("--workflow", default=None, metavar="NAME", help="only this workflow")
    listing_all.add_argument(
        "--state", default=None, metavar="STATE", help="only this state (needs --workflow)"
    )
    listing_all.add_argument(
        "--version",
        type=int,
        default=None,
        metavar="N",
        help="only this definition version (needs --workflow)",
    )
    listing_all.add_argument(
        "--status",
        choices=["due", "retrying", "parked", "claimed"],
        default=None,
        help="only instances whose timeout has this status",
    )
    listing_all.add_argument(
        "--limit", type=int, default=50, help="instances per page, 1 to 1000 (default 50)"
    )
    listing_all.add_argument(
        "--after",
        default=None,
        metavar="CURSOR",
        help="the next page: the cursor the previous page printed (with the same filters)",
    )
    listing_all.add_argument("--schema", default=None, help="schema of the tables")

    stats = commands.add_parser(
        "stats",
        parents=[common],
        help="instances per workflow and state, with their due, retrying, parked and claimed "
        "timeouts",
    )
    stats.add_argument("--workflow", default=None, metavar="NAME", help="only this workflow")
    stats.add_argument(
        "--watch",
        nargs="?",
        const="2",
        default=None,
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until SIGINT/SIGTERM; with --json, one JSON "
        "document per line",
    )
    stats.add_argument("--schema", default=None, help="schema of the tables")

    execution = commands.add_parser(
        "execution",
        # The plural reads as the issue's and peers' CLIs name it (`dbos workflow list`); both work.
        aliases=["executions"],
        parents=[common],
        help="show, list, retry or cancel queued executions (enqueue_event)",
    )
    actions = execution.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show", parents=[common], help="one execution: status, attempts, lease, journal, result"
    )
    show.add_argument("uuid", help="the execution's uuid")
    listing = actions.add_parser(
        "list", parents=[common], help="list active executions (pending, running, parked)"
    )
    listing.add_argument(
        "--status",
        action="append",
        choices=["pending", "running", "parked"],
        default=None,
        help="only executions in this status (repeatable; default: all three)",
    )
    listing.add_argument("--workflow", default=None, help="only this workflow name")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    retry = actions.add_parser(
        "retry", parents=[common], help="make a parked execution pending again (attempts reset)"
    )
    retry.add_argument("uuid", help="the execution's uuid")
    cancel = actions.add_parser(
        "cancel",
        parents=[common],
        help="cancel an execution no worker holds; frees its instance, undoes nothing",
    )
    cancel.add_argument("uuid", help="the execution's uuid")
    for action in (show, listing, retry, cancel):
        action.add_argument("--schema", default=None, help="schema of the tables")

    worker = commands.add_parser(
        "worker",
        parents=[common],
        help="run timeout workers and execution workers until SIGINT/SIGTERM",
    )
    worker.add_argument(
        "app",
        metavar="APP",
        help="module:attr of a runtime factory (called with the persistence provider, "
        "sync or async) or of a WorkflowRuntime",
    )
    worker.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="look for APP's module in DIR first (default: the current directory)",
    )
    worker.add_argument(
        "--workers", type=int, default=1, help="concurrent workers of each kind (default 1)"
    )
    worker.add_argument(
        "--batch-size", type=int, default=100, help="per sweep or poll (default 100)"
    )
    worker.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        help="seconds between sweeps or polls when idle (default 1)",
    )
    worker.add_argument(
        "--wakeups",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sleep until the nearest due time and wake on LISTEN/NOTIFY, --poll-interval being "
        "the fallback (default: yes; a factory APP's provider only)",
    )
    worker.add_argument(
        "--listen-dsn",
        default=None,
        metavar="DSN",
        help="a direct connection for the wake-up listener (LISTEN cannot pass a pgbouncer in "
        "transaction mode; default: made as the pool's connections are)",
    )
    worker.add_argument(
        "--timeouts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run timeout workers (default: yes)",
    )
    worker.add_argument(
        "--executions",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run execution workers for queued executions (default: when the runtime's provider "
        "has an execution store, for a factory APP when the database has workflow_executions, "
        "and no --workflow is given)",
    )
    worker.add_argument(
        "--lease",
        default=None,
        metavar="SECONDS",
        help="how long a sweep claims its batch (default: $DURAFLOWS_WORKER_LEASE, else the "
        "runtime's sweep lease)",
    )
    worker.add_argument(
        "--batched",
        action="store_true",
        help="sweep each batch of timeouts in one transaction, a savepoint per instance (see "
        "docs/timeouts-and-workers.md, batched sweeps)",
    )
    worker.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="N",
        help="sweeps each timeout worker runs at once, each in a transaction of its own "
        "(default 2 with --batched, else 1)",
    )
    worker.add_argument(
        "--workflow",
        action="append",
        default=None,
        metavar="NAME",
        help="sweep only this workflow's timeouts (repeatable; must be registered in the runtime)",
    )
    worker.add_argument(
        "--lock-timeout",
        default=None,
        metavar="SECONDS",
        help="lock_timeout of the worker's transactions (default: $DURAFLOWS_LOCK_TIMEOUT, else "
        "none); only for a factory APP: a ready WorkflowRuntime keeps its own persistence",
    )
    worker.add_argument(
        "--statement-timeout",
        default=None,
        metavar="SECONDS",
        help="statement_timeout of the worker's transactions (default: "
        "$DURAFLOWS_STATEMENT_TIMEOUT, else none); only for a factory APP",
    )
    worker.add_argument("--schema", default=None, help="schema of the tables")
    worker.add_argument(
        "--log-level", default="INFO", help="logging level of the worker (default INFO)"
    )

    dev_db = commands.add_parser(
        "dev-db",
        parents=[common],
        help="start an embedded PostgreSQL in the foreground, migrate it and print its URL; "
        "Ctrl-C stops it",
    )
    dev_db.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="keep the data (and the server's password) in DIR between runs (default: a "
        "temporary directory deleted at the stop)",
    )
    dev_db.add_argument(
        "--port", type=int, default=None, help="listen on this port (default: a free one)"
    )
    dev_db.add_argument(
        "--database",
        default="duraflows",
        metavar="NAME",
        help="the database to create and migrate (default: duraflows)",
    )

    diagram = commands.add_parser(
        "diagram",
        parents=[common],
        help="print a workflow definition as a Mermaid state diagram (no database needed)",
    )
    diagram.add_argument(
        "app",
        metavar="APP",
        help="module:attr of a WorkflowDefinition, a DefinitionRegistry, a WorkflowRuntime or a "
        "runtime factory (called with in-memory providers)",
    )
    diagram.add_argument(
        "name",
        metavar="NAME",
        nargs="?",
        default=None,
        help="the workflow (default: the only one APP registers)",
    )
    diagram.add_argument(
        "--version",
        type=int,
        default=None,
        metavar="N",
        help="this version of the workflow (default: the latest)",
    )
    diagram.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="look for APP's module in DIR first (default: the current directory)",
    )
    diagram.add_argument(
        "--show-commands", action="store_true", help="add each event's commands to its label"
    )
    diagram.add_argument(
        "--direction",
        choices=["TB", "BT", "LR", "RL"],
        default="TB",
        help="top to bottom (default), bottom to top, left to right, right to left",
    )
    graph = commands.add_parser(
        "graph",
        parents=[common],
        help="draw a workflow as a Mermaid state diagram from its definition snapshot stored in "
        "the database (what the runtimes registered)",
    )
    graph.add_argument("name", metavar="WORKFLOW", help="the workflow's name")
    graph.add_argument(
        "--app",
        default=None,
        metavar="MODULE:ATTR",
        help="draw WORKFLOW from this application's definitions instead of the stored snapshot "
        "(what `diagram` loads: a definition, a registry, a runtime or a runtime factory; no "
        "database is opened)",
    )
    graph.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="with --app: look for its module in DIR first (default: the current directory)",
    )
    graph.add_argument(
        "--version",
        type=int,
        default=None,
        metavar="N",
        help="this stored version (default: the latest stored)",
    )
    graph.add_argument(
        "--show-commands", action="store_true", help="add each event's commands to its label"
    )
    graph.add_argument(
        "--direction",
        choices=["TB", "BT", "LR", "RL"],
        default="TB",
        help="top to bottom (default), bottom to top, left to right, right to left",
    )
    graph.add_argument("--schema", default=None, help="schema of the tables")

    dashboard = commands.add_parser(
        "dashboard",
        parents=[common],
        help="serve the web dashboard (needs the `dashboard` extra) until SIGINT/SIGTERM; it has "
        "no authentication: keep it on a private address or behind a proxy that has",
    )
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    dashboard.add_argument(
        "--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free one)"
    )
    dashboard.add_argument(
        "--read-only", action="store_true", help="show no action and refuse every POST"
    )
    dashboard.add_argument(
        "--root-path",
        default="",
        metavar="PATH",
        help="the path a proxy serves the dashboard under, e.g. /ops (default: none)",
    )
    dashboard.add_argument(
        "--pool-size", type=int, default=4, help="database connections at most (default 4)"
    )
    dashboard.add_argument("--schema", default=None, help="schema of the tables")
    return parser


def wants_json(argv: Sequence[str]) -> bool:
    """Whether --json was asked for, before the command line is parsed (for its own errors)."""
    end = argv.index("--") if "--" in argv else len(argv)
    return "--json" in argv[:end]
