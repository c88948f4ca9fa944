"""The one place errors become HTTP responses: every one as the contract's JSON envelope.

Registered as the app's exception handlers, so an endpoint raises a `HooklineError` and never
formats an error body itself; Starlette's own HTTP errors (404, 405) and anything unexpected get
the same envelope, and an unexpected error never shows a traceback to the client.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.errors import HooklineError, StoreUnavailable, envelope
from app.store import StoreError

log = logging.getLogger("hookline.http")

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def _note(request: Request, code: str) -> None:
    # The access log line of a refused request carries the refusal's code.
    log_fields = request.scope.get("state", {}).get("log")
    if log_fields is not None:
        log_fields["error"] = code


def error_response(error: HooklineError) -> JSONResponse:
    """Render a HooklineError as the JSON error envelope."""
    body = envelope(error.code, error.message, error.details)
    return JSONResponse(body, status_code=error.status, headers=error.headers)


async def _hookline_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HooklineError)
    _note(request, exc.code)
    return error_response(exc)


async def _store_error(request: Request, exc: Exception) -> Response:
    # Any read or write the store could not do: the client may try again shortly.
    log.warning("store unavailable on %s %s: %s", request.method, request.url.path, exc)
    retry_after = request.app.state.runtime.settings.server.retry_after_seconds
    _note(request, StoreUnavailable.code)
    return error_response(StoreUnavailable(headers={"Retry-After": str(retry_after)}))


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    _note(request, code)
    return JSONResponse(
        envelope(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    _note(request, "internal_error")
    return JSONResponse(envelope("internal_error", "internal error"), status_code=500)


EXCEPTION_HANDLERS = {
    HooklineError: _hookline_error,
    StoreError: _store_error,
    HTTPException: _http_exception,
    Exception: _unexpected,
}


async def error_for(request: Request, exc: Exception) -> Response:
    """The response the app's exception handlers make of `exc` (the most specific one's)."""
    handler = next(EXCEPTION_HANDLERS[kind] for kind in type(exc).__mro__
                   if kind in EXCEPTION_HANDLERS)  # Exception is always there
    return await handler(request, exc)
