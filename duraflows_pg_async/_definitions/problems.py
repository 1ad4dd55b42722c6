"""How definition problems are worded: names quoted, long lists cut, all in one message."""

from __future__ import annotations

from duraflows_pg_async._core.echo import echo

# An error lists at most this many problems (and a message names at most LISTED of a list of
# names): a generated definition with thousands of bad states still gives a readable message.
MAX_PROBLEMS = 100
LISTED = 5


def quoted(name: object) -> str:
    """A name as messages quote it, ``"ship"``, cut if long (echo)."""
    return f'"{echo(name, raw=True)}"'


def summary(what: str, problems: list[str]) -> str:
    """``what (N problems):`` then one problem a line, at most MAX_PROBLEMS of them."""
    count = len(problems)
    lines = "\n".join(f"  - {problem}" for problem in problems[:MAX_PROBLEMS])
    if count > MAX_PROBLEMS:
        lines += f"\n  - ... and {count - MAX_PROBLEMS} more"
    return f"{what} ({count} problem{'s' if count != 1 else ''}):\n{lines}"
