"""The handler plugin API: what a handler is, what it is given, and how it says "try again".

A handler is any object with `async def handle(event, ctx)` (a `name` attribute is allowed and
not needed: the config names each handler). Returning means success; raising
`Retry(after=..., reason=...)` asks for another try (after at least `after` seconds);
raising `Permanent(reason)` dead-letters the delivery at once; any other exception is a
transient failure and is retried with backoff. A handler may declare `Options`, a pydantic
model its config `options` are validated against when hookline starts, and a handler that acts on
an upstream platform may declare `async def poll(data, ctx) -> PollOutcome | None` to be asked
for the status of what it started (None: not finished yet).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import httpx

from schemas.records import EventRecord

__all__ = [
    "Context", "Event", "Handler", "HandlerError", "Permanent", "PollOutcome", "Retry", "Upstream",
]

Event = EventRecord


class HandlerError(Exception):
    """Base of the exceptions a handler raises on purpose."""

    def __init__(self, message: str = "", *, http_status: int | None = None) -> None:
        self.http_status = http_status
        super().__init__(message)


class Retry(HandlerError):
    """Try this delivery again, no sooner than `after` seconds from now when given.

    Keyword-only, so `Retry("busy")` fails where it is written instead of passing a reason off
    as a delay."""

    def __init__(
        self, *, after: float | None = None, reason: str = "retry requested",
        http_status: int | None = None,
    ) -> None:
        if after is not None and (isinstance(after, bool) or not isinstance(after, int | float)
                                  or not math.isfinite(after) or after < 0):
            raise ValueError(f"Retry(after=...) takes seconds >= 0 or None, not {after!r}")
        self.after = None if after is None else float(after)
        super().__init__(reason, http_status=http_status)


class Permanent(HandlerError):
    """This delivery can never succeed: dead-letter it now."""

    def __init__(self, reason: str, *, http_status: int | None = None) -> None:
        self.reason = reason
        super().__init__(reason, http_status=http_status)


class Clock(Protocol):
    def now(self) -> float: ...

    def monotonic(self) -> float: ...


class Upstream(Protocol):
    """Durable bookkeeping for handlers that act on an upstream platform. Every count lives in
    the store, so it holds across restarts and across workers."""

    async def take_budget(self, key: str, limit: int) -> int | None:
        """Count one more upstream retry for `key` (e.g. "dcycle:file:<id>"): the new count,
        or None (nothing counted) when `limit` retries were already used."""
        ...

    async def refund_budget(self, key: str) -> None:
        """Give back one count taken for `key` (the upstream call never reached the platform)."""
        ...

    async def once(self, key: str) -> bool:
        """True the first time `key` is seen, False ever after: for actions that must never be
        repeated (a resubmission that the platform cannot deduplicate)."""
        ...

    async def schedule_poll(
        self, kind: str, key: str, data: dict[str, Any], first_after: float, deadline_after: float
    ) -> str:
        """Ask for status polls about `key`: the poll runner calls this handler's
        `poll(data, ctx)` the first time in `first_after` seconds and then with backoff, and
        records the outcome as an event of type `<kind>.<outcome>`; at `deadline_after` seconds
        from now it gives up and records `<kind>.timeout`. Returns the poll's id."""
        ...

    async def related_events(
        self, *, job_id: str | None = None, file_id: str | None = None
    ) -> list[EventRecord]:
        """Stored events of one job or file, oldest first, with payloads."""
        ...


@dataclass(frozen=True)
class PollOutcome:
    """What one status poll found: `status` is a terminal outcome name (the recorded event's
    type is `<kind>.<status>`), `payload` what the event carries."""

    status: str
    payload: dict[str, Any]


OptionsT = TypeVar("OptionsT")


@dataclass
class Context(Generic[OptionsT]):
    """What a handler is given for one delivery. `options` is an instance of the handler's
    `Options` model (annotate `ctx: Context[MyHandler.Options]`), or a plain dict without one."""

    http: httpx.AsyncClient
    options: OptionsT
    log: logging.Logger | logging.LoggerAdapter[logging.Logger]
    clock: Clock
    handler_name: str
    attempt: int = 1
    upstream: Upstream | None = None


@runtime_checkable
class Handler(Protocol):
    """Anything with `async def handle(event, ctx)`; the config's `[handlers.NAME]` names it."""

    async def handle(self, event: Event, ctx: Context[Any]) -> None: ...
