"""The handler plugin API: what a handler is, what it is given, and how it says "try again".

A handler is any object with a `name` and `async def handle(event, ctx)`. Returning means
success; raising `Retry(after=...)` asks for another try (after at least `after` seconds);
raising `Permanent(reason)` dead-letters the delivery at once; any other exception is a
transient failure and is retried with backoff. A handler may declare `Options`, a pydantic
model its config `options` are validated against when hookline starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx

from schemas.records import EventRecord

__all__ = ["Context", "Event", "Handler", "Permanent", "Retry", "HandlerError"]

Event = EventRecord


class HandlerError(Exception):
    """Base of the exceptions a handler raises on purpose."""

    def __init__(self, message: str = "", *, http_status: int | None = None) -> None:
        self.http_status = http_status
        super().__init__(message)


class Retry(HandlerError):
    """Try this delivery again, no sooner than `after` seconds from now when given."""

    def __init__(
        self, after: float | None = None, reason: str = "retry requested", *,
        http_status: int | None = None,
    ) -> None:
        self.after = after
        super().__init__(reason, http_status=http_status)


class Permanent(HandlerError):
    """This delivery can never succeed: dead-letter it now."""

    def __init__(self, reason: str, *, http_status: int | None = None) -> None:
        self.reason = reason
        super().__init__(reason, http_status=http_status)


class Clock(Protocol):
    def now(self) -> float: ...

    def monotonic(self) -> float: ...


@dataclass
class Context:
    """What a handler is given for one delivery."""

    http: httpx.AsyncClient
    options: Any
    log: logging.Logger | logging.LoggerAdapter[logging.Logger]
    clock: Clock
    handler_name: str
    attempt: int = 1
    extras: dict[str, Any] = field(default_factory=dict)
    emit: Callable[..., Any] | None = None


@runtime_checkable
class Handler(Protocol):
    name: str

    async def handle(self, event: Event, ctx: Context) -> None: ...
