"""`GET /api/stream`: the live tail of the event log as server-sent events.

A tail reads the store, not a process's memory: it follows the positions of stored events and of
finished attempts, so it shows what every receiver and worker on the store did and resumes from
`Last-Event-ID` after a reconnect. This process's intake and worker wake its tails when they write
(`Changes`); without a wake-up a tail looks again every `stream_poll_seconds`, but reads only
when the store's heads moved since its last read: one `heads()` query per interval, shared by
every tail (`Tails.heads`), keeps a thousand idle tails from being a thousand readers. Idle
streams get a heartbeat comment so proxies keep them open. `[server] sse_max_connections` caps
the tails open at once (503 past it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from app.errors import BadRequest, TooManyStreams
from app.store import EventFilter, Store
from app.store.base import MAX_POSITION

PAGE = 500
# Under a burst of writes, wake-ups come faster than reads are worth: a tail reads at most this
# often, and each read takes everything since the last one.
MIN_READ_GAP = 0.05
_POSITION = re.compile(r"(\d{1,19})\.(\d{1,19})")


class Tails:
    """The live tails of one app: how many are open (at most `limit`), and the store's heads
    read at most once per `max_age` seconds for all of them."""

    def __init__(self, store: Store, limit: int, max_age: float) -> None:
        self.store = store
        self.limit = limit
        self.max_age = max_age
        self.open = 0
        self._heads: tuple[int, int] | None = None
        self._read_at = 0.0
        self._reading: asyncio.Future[None] | None = None

    def take(self, retry_after: int) -> None:
        """Count a new tail in, or refuse it (503) when `limit` are open."""
        if self.open >= self.limit:
            raise TooManyStreams(headers={"Retry-After": str(retry_after)})
        self.open += 1

    def give_back(self) -> None:
        self.open -= 1

    async def heads(self) -> tuple[int, int]:
        """The store's heads, as read at most `max_age` seconds ago."""
        loop = asyncio.get_running_loop()
        if self._reading is None and (
            self._heads is None or loop.time() - self._read_at >= self.max_age
        ):
            self._reading = asyncio.ensure_future(self._read())
        reading = self._reading
        if reading is not None:
            await asyncio.shield(reading)
        assert self._heads is not None
        return self._heads

    async def _read(self) -> None:
        try:
            self._heads = await self.store.heads()
            self._read_at = asyncio.get_running_loop().time()
        finally:
            self._reading = None


class Changes:
    """Wakes every waiting tail when this process wrote events or outcomes."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.closed = False

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def close(self) -> None:
        """End every tail: the server is shutting down and should not wait for them."""
        self.closed = True
        self.notify()

    def token(self) -> asyncio.Event:
        """Take before reading the store; `wait` then returns at once if anything was written
        since, so no write falls between a read and the wait."""
        return self._event

    @staticmethod
    async def wait(token: asyncio.Event, timeout: float) -> bool:
        """True when woken by a write, False when `timeout` passed first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(token.wait(), timeout)
        return token.is_set()


def parse_position(text: str | None) -> tuple[int, int] | None:
    """A `Last-Event-ID` this server handed out, or None; ValueError for one in our format
    whose numbers no store position can hold."""
    if not text:
        return None
    match = _POSITION.fullmatch(text.strip())
    if match is None:
        return None
    position = (int(match[1]), int(match[2]))
    if max(position) > MAX_POSITION:
        raise ValueError("Last-Event-ID is out of range")
    return position


def _frame(kind: str, position: str, data: dict[str, Any]) -> str:
    return f"id: {position}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def tail(
    store: Store, filters: EventFilter, start: tuple[int, int], changes: Changes,
    poll_seconds: float, heartbeat_seconds: float, tails: Tails | None = None,
) -> AsyncIterator[str]:
    """SSE frames of events and attempt outcomes after `start`, until the client goes away or
    the server shuts down. With `tails`, a look after a quiet poll interval reads only when the
    store's shared heads moved since this tail's last read."""
    loop = asyncio.get_running_loop()
    events_head, outcomes_head = start
    yield "retry: 2000\n\n"
    quiet_since = loop.time()
    seen: tuple[int, int] | None = None  # the heads as of this tail's last read
    read = True
    while not changes.closed:
        token = changes.token()
        read_at = loop.time()
        if tails is None:
            read = True
        else:
            # Positions commit in order (app.store): heads taken before a read are covered by
            # it, and unchanged heads mean nothing new anywhere.
            heads = await tails.heads()
            read = read or heads != seen
            seen = heads
        new_events: list[tuple[int, Any]] = []
        new_outcomes: list[tuple[int, Any]] = []
        if read:
            new_events = await store.tail_events(filters, events_head, PAGE)
            new_outcomes = await store.tail_outcomes(filters, outcomes_head, PAGE)
        # Each frame's id resumes right after it: events first, then outcomes.
        outcomes_before = outcomes_head
        for seq, record in new_events:
            events_head = seq
            yield _frame("event", f"{seq}.{outcomes_before}", record.model_dump(mode="json"))
        for seq, outcome in new_outcomes:
            outcomes_head = seq
            yield _frame("delivery", f"{events_head}.{seq}", asdict(outcome))
        if new_events or new_outcomes:
            quiet_since = loop.time()
        if len(new_events) == PAGE or len(new_outcomes) == PAGE:
            read = True
            continue
        if loop.time() - quiet_since >= heartbeat_seconds:
            yield ": ping\n\n"
            quiet_since = loop.time()
        wait = min(poll_seconds, heartbeat_seconds - (loop.time() - quiet_since))
        read = await changes.wait(token, max(0.0, wait))
        gap = MIN_READ_GAP - (loop.time() - read_at)
        if read and gap > 0:  # only a wake-up by a write comes sooner than the gap
            await asyncio.sleep(gap)


class _Stream(StreamingResponse):
    """A streaming answer that calls `on_close` once it is over, however it ended (even when
    the client was gone before its first frame)."""

    def __init__(self, frames: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(frames, media_type="text/event-stream",
                         headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def stream_response(
    frames: AsyncIterator[str], on_close: Callable[[], None] = lambda: None
) -> Response:
    return _Stream(frames, on_close)


async def start_of(request: Request, store: Store) -> tuple[int, int]:
    """Where a stream starts: after `Last-Event-ID` when it is one of ours, else at the heads;
    400 for one out of range."""
    given = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    try:
        position = parse_position(given)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return position or await store.heads()
