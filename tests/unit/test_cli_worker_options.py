"""duraflows-pg worker's wake-up options: parsed as documented (docs/cli.md)."""

from __future__ import annotations

from duraflows_pg_async._cli.parser import build_parser


def test_wakeups_are_on_by_default_without_a_listener_dsn() -> None:
    args = build_parser().parse_args(["worker", "app:make"])
    assert args.wakeups is True
    assert args.listen_dsn is None


def test_no_wakeups_and_a_listener_dsn() -> None:
    args = build_parser().parse_args(
        ["worker", "app:make", "--no-wakeups", "--listen-dsn", "postgresql://db:5432/orders"]
    )
    assert args.wakeups is False
    assert args.listen_dsn == "postgresql://db:5432/orders"
