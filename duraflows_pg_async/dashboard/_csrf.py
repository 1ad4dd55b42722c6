"""Cross-site request refusal for the dashboard's POST forms.

Three checks, each enough on its own against a plain cross-site form: the cookie holding the
token is ``SameSite=Strict`` (a browser does not send it with a request another site starts);
the form must carry the same token (double submit: another site can neither read the cookie nor
guess the token); and the ``Origin`` header (else ``Referer``) must name this host. The token
lives in the cookie only, not in the process, so several server processes accept each other's.
"""

from __future__ import annotations

import hmac
import re
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["COOKIE", "FIELD", "CrossSiteRequestError", "check", "token_for"]

COOKIE = "duraflows_csrf"
FIELD = "csrf_token"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


class CrossSiteRequestError(Exception):
    """A POST without this site's origin or token: refused with 403."""


def cookie_path(request: Request) -> str:
    """The mount point, so that the cookie goes to the dashboard only."""
    return str(request.scope.get("root_path") or "") or "/"


def token_for(request: Request) -> tuple[str, bool]:
    """The request's token, and whether it is new (then ``remember`` must set the cookie)."""
    current = request.cookies.get(COOKIE, "")
    if _TOKEN.fullmatch(current):
        return current, False
    return secrets.token_urlsafe(32), True


def remember(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        COOKIE,
        token,
        path=cookie_path(request),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _same_host(request: Request, url: str) -> bool:
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return False
    host = request.headers.get("host", "")
    return bool(netloc) and netloc.lower() == host.lower()


def check(request: Request, form_token: str | None) -> None:
    """Raise CrossSiteRequestError unless the POST comes from a page of this dashboard."""
    origin = request.headers.get("origin")
    if origin is not None:
        if not _same_host(request, origin):
            raise CrossSiteRequestError("the request comes from another site (Origin)")
    else:
        referer = request.headers.get("referer")
        if referer is None or not _same_host(request, referer):
            raise CrossSiteRequestError("the request names no page of this site (Referer)")
    cookie = request.cookies.get(COOKIE, "")
    if not _TOKEN.fullmatch(cookie) or form_token is None:
        raise CrossSiteRequestError("the form's token is missing")
    if not hmac.compare_digest(cookie.encode(), form_token.encode()):
        raise CrossSiteRequestError("the form's token does not match")
