"""A web dashboard of the workflows: an ASGI app to mount in any ASGI application or server.

Server-rendered pages (no front-end build step; Mermaid's JavaScript ships inside the package):
the workflows as state diagrams with live counts, instances filtered and paged, one instance with
its history, parked and retrying timeouts, queued executions. Actions (re-arm a timeout, retry or
cancel an execution) are POST forms guarded against cross-site requests, and absent with
``read_only=True``. The dashboard has no authentication of its own: protect it with the host
application's (see docs/dashboard.md). Needs the ``dashboard`` extra (Starlette and Jinja2).
"""

from __future__ import annotations

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:
    raise ImportError(
        "duraflows_pg_async.dashboard needs Starlette and Jinja2; install the extra: "
        "pip install 'duraflows-pg-async[dashboard]'"
    ) from exc

from ._app import dashboard_app

__all__ = ["dashboard_app"]
