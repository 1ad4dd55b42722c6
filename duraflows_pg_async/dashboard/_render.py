"""Pages as HTML: the Jinja2 environment (autoescaped), its filters, flash messages, headers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from . import _csrf

__all__ = ["Renderer", "flash_redirect", "href"]

FLASH_COOKIE = "duraflows_flash"
_MAX_FLASH = 500

# Mermaid draws into inline SVG with <style> elements: styles need 'unsafe-inline'; scripts do
# not (no inline script on any page).
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def root(request: Request) -> str:
    return str(request.scope.get("root_path") or "").rstrip("/")


def href(request: Request, path: str, **query: object) -> str:
    """``path`` under the mount point, with the query parameters that are not None or empty."""
    params = {k: str(v) for k, v in query.items() if v is not None and v != ""}
    return root(request) + path + (f"?{urlencode(params)}" if params else "")


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(value: datetime | None, now: datetime) -> str:
    """``in 5m`` or ``3h ago``: a rough distance from ``now``."""
    if value is None:
        return ""
    seconds = (value - now).total_seconds()
    size = abs(seconds)
    if size < 1:
        return "now"
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if size >= length:
            amount = f"{int(size // length)}{unit}"
            break
    else:
        amount = f"{int(size)}s"
    return f"in {amount}" if seconds > 0 else f"{amount} ago"


def _pretty(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("duraflows_pg_async.dashboard", "templates"),
        # Every value a page shows may come from a user (context, names, errors): all escaped.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["when"] = _when
    environment.filters["pretty"] = _pretty
    environment.filters["number"] = lambda n: f"{n:,}"
    return environment


class Renderer:
    """Renders a template with what every page shows: navigation, flash message, CSRF token."""

    def __init__(self, *, read_only: bool, now: Any) -> None:
        self.environment = _environment()
        self.read_only = read_only
        self._now = now

    def page(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> Response:
        token, new = _csrf.token_for(request)
        flash = _read_flash(request)
        now: datetime = self._now()
        html = self.environment.get_template(template).render(
            request=request,
            read_only=self.read_only,
            csrf_field=_csrf.FIELD,
            csrf_token=token,
            flash=flash,
            href=lambda path, **query: href(request, path, **query),
            static=lambda name: href(request, f"/static/{name}"),
            here=_here(request),
            ago=lambda value: _ago(value, now),
            now=now,
            **context,
        )
        response = HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
        if new:
            _csrf.remember(request, response, token)
        if flash is not None:
            response.delete_cookie(FLASH_COOKIE, path=_csrf.cookie_path(request))
        return response


def _here(request: Request) -> str:
    """This page's path and query under the mount point: where a form comes back to."""
    path = str(request.scope.get("path", "/"))
    mount = root(request)
    if mount and path.startswith(mount):
        path = path[len(mount) :] or "/"
    query = request.url.query
    return path + (f"?{query}" if query else "")


def _read_flash(request: Request) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    kind, _, text = unquote(raw).partition(":")
    if kind not in ("ok", "error") or not text:
        return None
    return {"kind": kind, "text": text[:_MAX_FLASH]}


def flash_redirect(request: Request, back: str, kind: str, text: str) -> Response:
    """303 to ``back`` (a path under the mount point), carrying the message to the next page."""
    response = RedirectResponse(root(request) + back, status_code=303)
    response.set_cookie(
        FLASH_COOKIE,
        quote(f"{kind}:{text[:_MAX_FLASH]}"),
        path=_csrf.cookie_path(request),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response
