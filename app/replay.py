"""Replay: fresh deliveries for stored events, one at a time or in bulk, or only a plan of them.

A replay routes the event through the *current* routes (so a fixed route takes effect), or to
one named handler. A bulk replay selects either events (by source, type glob, time) or the
events of open dead letters (`status="dead"`: each such event once, with a fresh delivery for
each handler whose delivery of it is dead and not yet superseded; see `app.dead_letters`).
`plan_*` answers the same question without writing anything: which handlers would run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from app.dead_letters import each_dead
from app.routing import Route, handlers_for
from app.store import DeadFilter, EventFilter, Store

PAGE = 500


class ReplayError(Exception):
    """The replay cannot be done as asked (unknown event or handler)."""


@dataclass(frozen=True, slots=True)
class Planned:
    event_id: str
    event_type: str
    handlers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    source: str | None = None
    type: str | None = None
    status: str | None = None
    since: float | None = None
    until: float | None = None
    handler: str | None = None


async def plan_event(
    store: Store, routes: Sequence[Route], handlers: Mapping[str, object],
    event_id: str, handler: str | None = None,
) -> Planned:
    event = await store.get_event(event_id)
    if event is None:
        raise ReplayError(f"no event {event_id}")
    if handler is not None:
        if handler not in handlers:
            raise ReplayError(f"no handler named {handler!r} is configured")
        return Planned(event.id, event.type, (handler,))
    chosen = handlers_for(routes, event.source, event.type, event.payload)
    return Planned(event.id, event.type, chosen)


async def plan_many(
    store: Store, routes: Sequence[Route], handlers: Mapping[str, object], selection: ReplayFilter
) -> AsyncIterator[Planned]:
    """Every (event, handlers) a bulk replay would create, page by page."""
    if selection.status == "dead":
        for planned in await _dead_events(store, selection):
            yield planned
        return
    filters = EventFilter(
        source=selection.source, type=selection.type, status=selection.status,
        since=selection.since, until=selection.until,
    )
    cursor = None
    while True:
        events = await store.list_events(filters, PAGE, cursor)
        for item in events.items:
            yield await plan_event(store, routes, handlers, item.id, selection.handler)
        if events.next_cursor is None:
            return
        cursor = events.next_cursor


async def _dead_events(store: Store, selection: ReplayFilter) -> list[Planned]:
    """One plan per event with open dead letters, its dead handlers in order, gathered before
    anything is replayed (an event's dead deliveries may lie far apart)."""
    filters = DeadFilter(
        handler=selection.handler, source=selection.source, type=selection.type,
        since=selection.since, until=selection.until,
    )
    found: dict[str, tuple[str, list[str]]] = {}
    async for letter in each_dead(store, filters):
        _, handlers = found.setdefault(letter.event_id, (letter.event_type, []))
        if letter.handler not in handlers:
            handlers.append(letter.handler)
    return [Planned(event_id, event_type, tuple(handlers))
            for event_id, (event_type, handlers) in found.items()]


async def apply(store: Store, planned: Planned, now: float) -> list[str]:
    """Create the planned deliveries; their ids."""
    if not planned.handlers:
        return []
    return await store.add_deliveries(planned.event_id, planned.handlers, now)
