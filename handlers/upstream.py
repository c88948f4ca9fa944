"""What the four upstream-retry handlers (Dcycle, Aitronos, Filecheck, Alfred) share.

Each of them reads an id out of the event, spends one unit of a durable retry budget, calls a
platform through a circuit breaker and maps the answer to success, `Retry` or `Permanent`. The
rules live here once: a unit is refunded when the call never reached the platform (the breaker
refused it, or the transport failed), and a platform that keeps answering 5xx or timing out is
left alone for a cool-down instead of being hammered by every worker's retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from handlers import Context, Event, HandlerError, Permanent, Retry, Upstream
from handlers.forward import TRANSIENT_4XX, raise_for_outcome
from handlers.headers import header_value_problem, transport_error, url_problem

FAILURE_THRESHOLD = 5
COOLDOWN_SECONDS = 60.0
MESSAGE_MAX = 200


class UpstreamOptions(BaseModel):
    """Options every upstream-retry handler takes; unknown keys are refused (typos)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str
    budget: int = Field(default=3, ge=0, description="upstream retries per job/file, ever")
    timeout: float = Field(default=10.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _http_base(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("*")
    @classmethod
    def _sendable(cls, value: Any, info: ValidationInfo) -> Any:
        # Every text option of an upstream handler but a `*_path` ends up in the platform's
        # requests (the URL, a token or id in a header): a stray newline fails the config here,
        # naming the key, instead of failing each call with an error that quotes the value.
        name = info.field_name or ""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(text, str) or name.endswith("_path"):
            return value
        problem = url_problem(text) if name == "base_url" else header_value_problem(text)
        if problem:
            raise ValueError(problem)
        return value


class PollingOptions(UpstreamOptions):
    """Options of the handlers whose platform sends nothing back, so its status is polled."""

    poll_first_seconds: float = Field(default=60.0, ge=0)
    poll_deadline_seconds: float = Field(default=3600.0, gt=0)

    @field_validator("poll_deadline_seconds")
    @classmethod
    def _after_first(cls, value: float, info: ValidationInfo) -> float:
        first = info.data.get("poll_first_seconds")
        if first is not None and value <= first:
            raise ValueError("must be greater than poll_first_seconds")
        return value


# Reading the event.


def lookup_path(payload: Any, dotted: str) -> Any:
    """The value at a dotted path (`data.file_id`, `tasks.0.id`), or None when missing."""
    node = payload
    for part in dotted.split("."):
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and part.isascii() and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
        if node is None:
            return None
    return node


def value_at(event: Event, path: str, name: str) -> str:
    """The scalar at `path` in the event's payload, or Permanent naming `name` and the path."""
    value = lookup_path(event.payload, path)
    if value is None or value == "" or isinstance(value, (Mapping, list)):
        raise Permanent(f"no {name} at {path!r} in the event payload")
    return str(value)


def require_path(event: Event, options: BaseModel, name: str) -> str:
    """The value the option `<name>_path` points at, or Permanent naming that path."""
    return value_at(event, getattr(options, f"{name}_path"), name)


def segment_problem(value: str) -> str | None:
    """Why `value` cannot be one segment of a URL path (None: it can, once percent-encoded).

    Refused: empty, `.` or `..`, or holding `/` or `\\`, as written or once percent-escapes
    (`%2e`, `%2F`, `%252F`, ...) are undone, since a server or proxy may undo them too."""
    seen = value
    for _ in range(4):  # undo nested escapes; four levels is more than any server undoes
        if seen in ("", ".", "..") or "/" in seen or "\\" in seen:
            return "is not a single path segment (empty, '.', '..', or holds '/' or '\\')"
        unescaped = unquote(seen)
        if unescaped == seen:
            return None
        seen = unescaped
    return "is escaped too many times to be a single path segment"


def needs_upstream(ctx: Context[Any]) -> Upstream:
    """The durable bookkeeping, which every upstream-retry handler requires."""
    if ctx.upstream is None:
        raise Permanent("needs the upstream bookkeeping")
    return ctx.upstream


# The circuit breaker.


class NotReached(Retry):
    """The call never reached the platform: the breaker refused it or the transport failed."""


@dataclass
class CircuitBreaker:
    """Consecutive-failure breaker over a monotonic clock: closed, open, then half-open."""

    name: str
    failure_threshold: int = FAILURE_THRESHOLD
    cooldown_seconds: float = COOLDOWN_SECONDS
    failures: int = 0
    opened_at: float | None = None
    trial_started: float | None = None

    def wait_time(self, now: float) -> float | None:
        """Seconds before a call may go out, or None when one may go now (no state change)."""
        if self.opened_at is None:
            return None
        remaining = self.opened_at + self.cooldown_seconds - now
        if remaining > 0:
            return remaining
        if self.trial_started is not None:
            # One trial at a time; a trial that never reported frees its slot after a cool-down.
            trial_left = self.trial_started + self.cooldown_seconds - now
            if trial_left > 0:
                return trial_left
        return None

    def acquire(self, now: float) -> None:
        """Let one call through, or raise NotReached with the time until one may go."""
        wait = self.wait_time(now)
        if wait is not None:
            raise NotReached(after=wait, reason=f"circuit open for {self.name}: too many failures")
        if self.opened_at is not None:
            self.trial_started = now

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.trial_started = None

    def record_failure(self, now: float) -> None:
        self.failures += 1
        half_open_trial = self.trial_started is not None
        if half_open_trial or (self.opened_at is None and self.failures >= self.failure_threshold):
            self.opened_at = now
            self.trial_started = None


# One breaker per upstream base URL, in this process: a breaker is what this process has seen
# of a remote platform's health, shared by every handler and delivery that calls that platform,
# not state of a delivery, so it is neither per-handler nor kept in the store.
_BREAKERS: dict[str, CircuitBreaker] = {}


def breaker_for(base_url: str) -> CircuitBreaker:
    """The breaker of the platform at `base_url`, created closed on first use."""
    key = base_url.rstrip("/")
    breaker = _BREAKERS.get(key)
    if breaker is None:
        breaker = _BREAKERS[key] = CircuitBreaker(httpx.URL(key).host or key)
    return breaker


def reset_breakers() -> None:
    """Forget every breaker (tests, or an operator's reload)."""
    _BREAKERS.clear()


# Calling the platform.


@dataclass(frozen=True)
class Call:
    """One outbound request; headers may carry secrets, so a Call is never logged."""

    method: str
    url: str
    headers: Mapping[str, str]
    timeout: float
    json: Any = None
    params: Mapping[str, str] | None = None


async def send(ctx: Context[Any], base_url: str, call: Call) -> httpx.Response:
    """Make `call` through the breaker of `base_url`: any answer, or NotReached."""
    breaker = breaker_for(base_url)
    breaker.acquire(ctx.clock.monotonic())
    try:
        response = await ctx.http.request(
            call.method, call.url, headers=dict(call.headers), json=call.json,
            params=call.params, timeout=call.timeout,
        )
    except httpx.TransportError as exc:
        breaker.record_failure(ctx.clock.monotonic())
        # Not chained: the transport's message may quote a header (a token) or the URL.
        raise NotReached(reason=transport_error(exc)) from None
    except asyncio.CancelledError:  # the worker's timeout: as good as a platform timeout
        breaker.record_failure(ctx.clock.monotonic())
        raise
    if response.status_code >= 500:
        breaker.record_failure(ctx.clock.monotonic())
    else:
        breaker.record_success()
    return response


async def take_budget(upstream: Upstream, key: str, budget: int) -> int:
    """Count one upstream retry for `key`: the new count, or Permanent when used up."""
    count = await upstream.take_budget(key, budget)
    if count is None:
        raise Permanent(f"retry budget of {budget} used up for {key}")
    return count


@asynccontextmanager
async def budget_unit(upstream: Upstream, key: str, budget: int) -> AsyncIterator[int]:
    """Take one unit for the call made inside; give it back if the call never got through."""
    count = await take_budget(upstream, key, budget)
    try:
        yield count
    except NotReached:
        await upstream.refund_budget(key)
        raise


def error_message(response: httpx.Response) -> str | None:
    """The platform's own error message (`message` or `error.message`), trimmed."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    message = error.get("message") if isinstance(error, Mapping) else body.get("message")
    return str(message)[:MESSAGE_MAX] if message else None


def error_code(response: httpx.Response) -> str | None:
    """`error.code` of a JSON error envelope, if the answer is one."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, Mapping) else None
    code = error.get("code") if isinstance(error, Mapping) else None
    return code if isinstance(code, str) else None


def check_response(response: httpx.Response) -> None:
    """`raise_for_outcome`, with the platform's error message added to the reason."""
    try:
        raise_for_outcome(response)
    except HandlerError as exc:
        message = error_message(response)
        if message is None:
            raise
        reason = f"{exc}: {message}"
        if isinstance(exc, Retry):
            raise Retry(after=exc.after, reason=reason, http_status=exc.http_status) from None
        raise Permanent(reason, http_status=exc.http_status) from None


async def poll_send(ctx: Context[Any], base_url: str, call: Call) -> httpx.Response | None:
    """A status request: the answer, or None when the platform cannot answer now."""
    try:
        response = await send(ctx, base_url, call)
    except NotReached:
        return None
    if response.status_code in TRANSIENT_4XX or response.status_code >= 500:
        return None
    return response


def json_body(response: httpx.Response) -> Any:
    """The decoded JSON of a 2xx answer, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None
