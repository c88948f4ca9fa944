"""The built-in dashboard: one page and its assets, served from `app/static/` as they are.

The page needs no build step and loads nothing from elsewhere; it talks to the read API with the
token the person gives it, so serving it needs no authentication of its own. Everything served
here carries `PAGE_HEADERS`: a Content-Security-Policy allowing only this server's own script,
style sheet and API (the page has no inline script or style, and builds its DOM from text
nodes), no framing by any other page, no MIME sniffing and no referrer.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = resources.files("app") / "static"
CSP = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "connect-src 'self'",
    "img-src 'self' data:",  # the page's empty `data:,` icon
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
PAGE_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


async def index(request: Request) -> Response:
    return FileResponse(str(STATIC / "index.html"),
                        headers={"cache-control": "no-cache", **PAGE_HEADERS})


class _Assets(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


def assets() -> StaticFiles:
    """`/static/*`: the page's script and style sheet."""
    return _Assets(directory=str(STATIC))
