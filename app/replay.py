"""Replay: fresh deliveries for stored events, one at a time or in bulk, or only a plan of them.

A replay routes the event through the *current* routes (so a fixed route takes effect), or to
one named handler. A bulk replay selects either events (by source, type glob, time) or the
events of open dead letters (`status="dead"`: each such event once, with a fresh delivery for
each handler whose delivery of it is dead and not yet superseded; see `app.dead_letters`).
`plan_*` answers the same question without writing anything: which handlers would run.

A bulk replay needs at least one filter (`ReplayFilter.narrowed`), and the API takes it in
bounded calls: `plan_pages` yields at most `limit` events from a cursor, page by page, each page
with the cursor that resumes after it, so the caller can stop between pages (say, when its client
went away) and tell where to go on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace

from app.routing import Route, handlers_for
from app.store import DeadFilter, EventFilter, Store
from app.store.base import decode_cursor, encode_cursor

PAGE = 500
# The most dead deliveries one event is looked at for (one per handler its routes reach).
MAX_HANDLERS = 1000


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

    def narrowed(self) -> bool:
        """True when something selects fewer than every event (`handler` alone only says where
        the selected events go)."""
        return any(v is not None for v in (self.source, self.type, self.status, self.since,
                                           self.until))


@dataclass(frozen=True, slots=True)
class PlanPage:
    planned: list[Planned]
    next_cursor: str | None
    """Resumes right after this page; None when nothing more matched."""


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


async def plan_pages(
    store: Store, routes: Sequence[Route], handlers: Mapping[str, object],
    selection: ReplayFilter, limit: int | None = None, cursor: str | None = None,
) -> AsyncIterator[PlanPage]:
    """The plan of a bulk replay, page by page: at most `limit` events (None: all), starting
    after `cursor` (a `next_cursor` of an earlier page). Raises ValueError for a bad cursor."""
    left = limit
    while left is None or left > 0:
        size = PAGE if left is None else min(PAGE, left)
        page = await _plan_page(store, routes, handlers, selection, size, cursor)
        yield page
        if left is not None:
            left -= len(page.planned)
        # A page of dead letters can plan no event (each one's was planned before) and still
        # have more after it: only the cursor says when the selection is done.
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


async def _plan_page(
    store: Store, routes: Sequence[Route], handlers: Mapping[str, object],
    selection: ReplayFilter, size: int, cursor: str | None,
) -> PlanPage:
    if selection.status == "dead":
        return await _dead_page(store, selection, size, cursor)
    filters = EventFilter(
        source=selection.source, type=selection.type, status=selection.status,
        since=selection.since, until=selection.until,
    )
    events = await store.list_events(filters, size, cursor)
    planned = [await plan_event(store, routes, handlers, item.id, selection.handler)
               for item in events.items]
    return PlanPage(planned, events.next_cursor)


async def plan_many(
    store: Store, routes: Sequence[Route], handlers: Mapping[str, object], selection: ReplayFilter
) -> AsyncIterator[Planned]:
    """Every (event, handlers) a bulk replay would create."""
    async for page in plan_pages(store, routes, handlers, selection):
        for planned in page.planned:
            yield planned


async def _dead_page(
    store: Store, selection: ReplayFilter, size: int, cursor: str | None
) -> PlanPage:
    """The events of the next `size` open dead letters, oldest first. An event is planned once,
    with every handler whose delivery of it is an open dead letter, by the page holding its
    earliest one: later pages (or later calls, for a dry run that changed nothing) pass it by."""
    filters = DeadFilter(
        handler=selection.handler, source=selection.source, type=selection.type,
        since=selection.since, until=selection.until,
    )
    letters = await store.dead_letters(filters, decode_cursor(cursor) if cursor else 0, size)
    planned = []
    for letter in letters:
        of_event = await store.dead_letters(
            replace(filters, event_id=letter.event_id), 0, MAX_HANDLERS)
        if of_event and of_event[0].seq == letter.seq:
            handlers = dict.fromkeys(other.handler for other in of_event)
            planned.append(Planned(letter.event_id, letter.event_type, tuple(handlers)))
    more = len(letters) == size
    return PlanPage(planned, encode_cursor(letters[-1].seq) if more else None)


async def apply(store: Store, planned: Planned, now: float) -> list[str]:
    """Create the planned deliveries; their ids."""
    if not planned.handlers:
        return []
    return await store.add_deliveries(planned.event_id, planned.handlers, now)
