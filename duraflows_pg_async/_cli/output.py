"""What ``duraflows-pg`` writes: escaped text, tables, JSON, errors on stderr, a closed stdout.

Text read from the database can hold terminal control sequences: every human-readable line shows
them as visible escapes (``\\x1b``), and JSON escapes them as ``\\uXXXX``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from .exits import EXIT_BROKEN_PIPE, CliError

__all__ = [
    "confirm",
    "PROG",
    "OutputError",
    "safe_text",
    "json_text",
    "one_line",
    "table",
    "emit",
    "emit_json",
    "stderr",
    "notice",
    "fail",
    "output_failed",
]

PROG = "duraflows-pg"


class OutputError(Exception):
    """Standard output could not be written. Not an OSError: never taken for a database error."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


# --- terminal safety -------------------------------------------------------------------------

# C0 controls, DEL, C1 controls, and the bidi marks, embeddings, overrides and isolates (and the
# line/paragraph separators) that can reorder or hide text on a terminal.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# What json.dumps(ensure_ascii=False) leaves raw: it escapes C0 itself.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control or bidi character shown as a visible escape (``\\x1b``)."""
    if keep_newlines:
        return "\n".join(_UNSAFE.sub(_escape, line) for line in text.split("\n"))
    return _UNSAFE.sub(_escape, text)


def _json_default(value: object) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def json_text(data: object, *, indent: int | None = 2) -> str:
    """JSON for a terminal: readable non-ASCII text, but no raw control or bidi character."""
    text = json.dumps(data, default=_json_default, indent=indent, ensure_ascii=False)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def one_line(text: str | None, width: int = 60) -> str:
    """``text`` on one line, escaped, cut to ``width`` characters."""
    if not text:
        return ""
    flat = safe_text(" ".join(text.split()))
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns under a header and a rule; every cell escaped."""
    cells = [[safe_text(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


# --- writing ---------------------------------------------------------------------------------


def emit(text: str = "", *, flush: bool = False) -> None:
    """Write one line to stdout; a failing stdout raises OutputError."""
    try:
        sys.stdout.write(text + "\n")
        if flush:
            sys.stdout.flush()
    except OSError as exc:
        raise OutputError(exc) from exc


def emit_json(data: object) -> None:
    """``data`` as indented JSON on stdout."""
    emit(json_text(data))


def stderr(text: str) -> None:
    """Write one line to stderr, if anything can still be written there."""
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except OSError:  # nowhere left to report to
        pass


def notice(message: str, as_json: bool, **fields: object) -> None:
    """A line on stderr for a human or, with --json, a JSON object with the same message."""
    if as_json:
        stderr(json_text({"message": message, **fields}, indent=None))
    else:
        stderr(safe_text(f"{PROG} {message}"))


def fail(error: CliError, as_json: bool) -> int:
    """Report ``error`` on stderr (one line, or one JSON object); returns its exit code."""
    if as_json:
        stderr(json_text({"error": str(error), "exit_code": error.code}, indent=None))
    else:
        stderr(safe_text(f"{PROG}: {error}"))
    return error.code


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null, so that the interpreter's last flush at exit cannot fail too."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (an embedding host)
        pass


def output_failed(error: OSError, as_json: bool) -> int:
    """The exit code once stdout failed: a reader that left is quiet, anything else reported."""
    _silence_stdout()
    if isinstance(error, BrokenPipeError) or error.errno == errno.EPIPE:
        return EXIT_BROKEN_PIPE  # the reader has all it wanted: nothing to report
    return fail(CliError(f"cannot write to standard output: {error}"), as_json)


def confirm(question: str) -> bool:
    """Ask on the terminal; anything but y/yes (or end of input) is a no."""
    try:
        sys.stderr.write(f"{question} [y/N] ")
        sys.stderr.flush()
    except OSError:
        return False
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")
