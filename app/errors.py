"""hookline's exceptions: one base class, subclasses that carry their HTTP status and code.

Every error a client can see is a `HooklineError` subclass carrying its status code and
snake_case code; `app.http_errors` renders all of them as the contract's JSON envelope
`{"error": {"code", "message", "details"}}`, so no endpoint formats an error of its own. This
module imports no web framework, so the store and the CLI can raise these too.
"""

from __future__ import annotations

from typing import Any, ClassVar


class HooklineError(Exception):
    """Base of every error hookline raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "internal error"
    default_headers: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        message: str | None = None,
        *,
        details: list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details = details or []
        self.headers = {**self.default_headers, **(headers or {})}
        super().__init__(self.message)


class ConfigError(HooklineError):
    """The configuration is unusable; `problems` lists each as `key.path: reason`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration: " + "; ".join(problems))


class BadRequest(HooklineError):
    status, code, default_message = 400, "bad_request", "bad request"


class InvalidJson(HooklineError):
    status, code, default_message = 400, "invalid_json", "body is not a JSON object"


class Unauthorized(HooklineError):
    status, code, default_message = 401, "unauthorized", "unauthorized"


class Forbidden(HooklineError):
    status, code, default_message = 403, "forbidden", "token lacks the scope for this"


class NotFound(HooklineError):
    status, code, default_message = 404, "not_found", "not found"


class Conflict(HooklineError):
    status, code, default_message = 409, "conflict", "not possible in the current state"


class UnknownSource(HooklineError):
    status, code, default_message = 404, "unknown_source", "no such source"


# After refusing a body the server wants none of the rest: closing the connection stops the
# upload, where keep-alive would read and discard it for as long as the sender keeps sending.
_CLOSE = {"Connection": "close"}


class PayloadTooLarge(HooklineError):
    status, code, default_message = 413, "payload_too_large", "body is over this source's limit"
    default_headers = _CLOSE


class UnsupportedMediaType(HooklineError):
    status, code = 415, "unsupported_media_type"
    default_message = "content type must be application/json"


class SchemaInvalid(HooklineError):
    status, code, default_message = 422, "schema_invalid", "event does not match its schema"


class RateLimited(HooklineError):
    status, code, default_message = 429, "rate_limited", "source is over its rate limit"


class StoreUnavailable(HooklineError):
    status, code, default_message = 503, "store_unavailable", "event store is unavailable"


class RequestTimeout(HooklineError):
    status, code, default_message = 408, "request_timeout", "body was not received in time"
    default_headers = _CLOSE


def envelope(code: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    """The contract's error body."""
    return {"error": {"code": code, "message": message, "details": details or []}}
