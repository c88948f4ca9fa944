"""`GET /api/stream`: the live tail of the event log as server-sent events.

A tail reads the store, not a process's memory: it follows the positions of stored events and of
finished attempts, so it shows what every receiver and worker on the store did and resumes from
`Last-Event-ID` after a reconnect. This process's intake and worker wake its tails when they write
(`Changes`); without a wake-up a tail looks again every `stream_poll_seconds`. Idle streams get a
heartbeat comment so proxies keep them open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from app.store import EventFilter, Store

PAGE = 500
# Under a burst of writes, wake-ups come faster than reads are worth: a tail reads at most this
# often, and each read takes everything since the last one.
MIN_READ_GAP = 0.05
_POSITION = re.compile(r"(\d{1,19})\.(\d{1,19})")


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
    async def wait(token: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(token.wait(), timeout)


def parse_position(text: str | None) -> tuple[int, int] | None:
    """A `Last-Event-ID` this server handed out, or None."""
    if not text:
        return None
    match = _POSITION.fullmatch(text.strip())
    return (int(match[1]), int(match[2])) if match else None


def _frame(kind: str, position: str, data: dict[str, Any]) -> str:
    return f"id: {position}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def tail(
    store: Store, filters: EventFilter, start: tuple[int, int], changes: Changes,
    poll_seconds: float, heartbeat_seconds: float,
) -> AsyncIterator[str]:
    """SSE frames of events and attempt outcomes after `start`, until the client goes away or
    the server shuts down."""
    loop = asyncio.get_running_loop()
    events_head, outcomes_head = start
    yield "retry: 2000\n\n"
    quiet_since = loop.time()
    while not changes.closed:
        token = changes.token()
        read_at = loop.time()
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
            continue
        if loop.time() - quiet_since >= heartbeat_seconds:
            yield ": ping\n\n"
            quiet_since = loop.time()
        wait = min(poll_seconds, heartbeat_seconds - (loop.time() - quiet_since))
        await changes.wait(token, max(0.0, wait))
        gap = MIN_READ_GAP - (loop.time() - read_at)
        if gap > 0:
            await asyncio.sleep(gap)


def stream_response(frames: AsyncIterator[str]) -> Response:
    return StreamingResponse(
        frames, media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


async def start_of(request: Request, store: Store) -> tuple[int, int]:
    """Where a stream starts: after `Last-Event-ID` when it is one of ours, else at the heads."""
    given = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    return parse_position(given) or await store.heads()
