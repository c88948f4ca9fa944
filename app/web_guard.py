"""What a web page the operator happens to visit can make this server do: as little as possible.

A browser sends "simple" cross-site requests (a form or `no-cors` POST with a text/plain body)
without asking first, and after a DNS rebinding a hostile page's requests reach 127.0.0.1 under
the page's own host name. Two rules close both:

- every state-changing request to `/api` must carry an `application/json` body type (415
  otherwise; checked by the endpoints after the token, see `app.api.json_body`): a cross-site
  page can send that only after a CORS preflight, and this server answers no preflight (it sends
  no CORS headers at all);
- while the API is open (no `[[api.tokens]]`, server on loopback), a request is served only when
  its `Host` is a loopback name or address and its `Origin`, when present, is a loopback origin
  (403 otherwise). With tokens configured a request needs its bearer token, which no page has.

Webhook ingest, `/healthz`, `/readyz` and `/metrics` are left alone: senders and probes reach
them through proxies and tunnels under any host name, and they change nothing a page could
abuse (ingest authenticates every request itself).

The decisions are pure functions over header values; `WebGuard` is the ASGI shell.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import Forbidden, HooklineError
from app.http_errors import error_response

UNGUARDED = ("/webhooks/", "/healthz", "/readyz", "/metrics")


def is_loopback_host(host: str) -> bool:
    """True for `localhost`, 127.x.y.z and [::1], with or without a port."""
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not _port(rest)):
            return False
    else:
        name, colon, port = host.partition(":")
        if colon and not port.isdigit():
            return False
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _port(rest: str) -> bool:
    return rest.startswith(":") and rest[1:].isascii() and rest[1:].isdigit()


def is_loopback_origin(origin: str) -> bool:
    """True for an http(s) origin whose host is a loopback name or address."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or parts.path or parts.query or parts.username:
        return False
    return is_loopback_host(parts.netloc)


def refusal(path: str, headers: Headers, open_api: bool) -> HooklineError | None:
    """Why a request must not be served, or None."""
    if not open_api or path.startswith(UNGUARDED):
        return None
    if not is_loopback_host(headers.get("host", "")):
        return Forbidden("the API is open (no tokens): only a loopback Host is served")
    origin = headers.get("origin")
    if origin is not None and not is_loopback_origin(origin):
        return Forbidden("the API is open (no tokens): only loopback origins are served")
    return None


class WebGuard:
    """ASGI middleware applying `refusal` to every HTTP request it sees."""

    def __init__(self, app: ASGIApp, open_api: bool) -> None:
        self.app = app
        self.open_api = open_api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.open_api:
            error = refusal(scope["path"], Headers(scope=scope), self.open_api)
            if error is not None:
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
