"""The ``duraflows-pg`` command (also ``python -m duraflows_pg_async``); see ``_cli``."""

from __future__ import annotations

import sys

from ._cli.main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
