"""The exit codes of ``duraflows-pg`` and the error that carries one to ``main()``."""

from __future__ import annotations

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_INTERRUPTED", "EXIT_USAGE", "CliError"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT; SIGTERM gives 128 + 15 the same way
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what the shell reports for a writer whose reader left


class CliError(Exception):
    """A failure reported as one stderr line and an exit code (1 unless said otherwise)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
