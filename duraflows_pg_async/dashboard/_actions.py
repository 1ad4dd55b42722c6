"""The dashboard's actions (POST): re-arm a timeout, retry or cancel a queued execution.

Each checks the request comes from a page of the dashboard (``_csrf``), runs one runtime call,
and redirects back (303) with a flash message: the runtime's refusal (busy, not parked, ...) is
that message, not an error page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from duraflows_pg_async._runtime.runtime import WorkflowRuntime
from duraflows_pg_async.errors import WorkflowError

from . import _csrf
from ._pages import parse_uuid
from ._render import flash_redirect

__all__ = ["Actions"]

_MAX_FORM = 4096
_FORM_TYPE = "application/x-www-form-urlencoded"


async def _form(request: Request) -> dict[str, str]:
    """The urlencoded form, small and single-valued (our forms are a token and a path)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != _FORM_TYPE:
        raise HTTPException(415, f"a form must be sent as {_FORM_TYPE}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            raise HTTPException(413, "the form is too large")
    try:
        fields = parse_qs(body.decode("ascii"), max_num_fields=10, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, "the form cannot be read") from exc
    return {name: values[0] for name, values in fields.items()}


def _back(form: dict[str, str], default: str) -> str:
    """Where to go after the action: the form's page if it is one of ours (a path under the
    mount point, never another host), else ``default``."""
    back = form.get("next", "")
    ours = back.startswith("/") and not back.startswith("//") and "\\" not in back
    if ours and all(32 <= ord(char) < 127 for char in back):
        return back
    return default


class Actions:
    """The POST handlers, bound to one runtime."""

    def __init__(self, runtime: WorkflowRuntime) -> None:
        self.runtime = runtime

    async def _run(
        self,
        request: Request,
        default_back: str,
        action: Callable[[], Awaitable[object]],
        done: str,
    ) -> Response:
        form = await _form(request)
        try:
            _csrf.check(request, form.get(_csrf.FIELD))
        except _csrf.CrossSiteRequestError as exc:
            raise HTTPException(403, f"cross-site request refused: {exc}") from exc
        back = _back(form, default_back)
        try:
            await action()
        except WorkflowError as exc:
            return flash_redirect(request, back, "error", str(exc))
        return flash_redirect(request, back, "ok", done)

    async def rearm(self, request: Request) -> Response:
        key = parse_uuid(request.path_params["uuid"], "instance")
        return await self._run(
            request,
            f"/instances/{key}",
            lambda: self.runtime.rearm_timeout(key),
            f"Re-armed the timeout of instance {key}",
        )

    async def retry(self, request: Request) -> Response:
        key = parse_uuid(request.path_params["uuid"], "execution")
        return await self._run(
            request,
            f"/executions/{key}",
            lambda: self.runtime.retry_execution(key),
            f"Execution {key} is pending again",
        )

    async def cancel(self, request: Request) -> Response:
        key = parse_uuid(request.path_params["uuid"], "execution")
        return await self._run(
            request,
            f"/executions/{key}",
            lambda: self.runtime.cancel_execution(key),
            f"Cancelled execution {key}",
        )
