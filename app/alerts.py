"""Alerts as events: hookline raises events about itself (source `hookline`) that route like any
other, so a `match = "hookline.*"` route sends them to `slack`, `email` or `forward`.

Types: `hookline.delivery.dead` (a handler's deliveries died), `hookline.breaker.opened` and
`hookline.breaker.closed` (an upstream's circuit breaker), `hookline.source.auth_failing` (the
authenticated share of a source's requests fell under the threshold) and
`hookline.worker.stalled` (due deliveries left unclaimed). Checks note *occurrences* per subject
in the store; one event per subject per quiet period reports them, with their count, so a flood
of a thousand dead letters is one message saying 1000.

Where state lives, and why: the counts and quiet periods are store rows (`note_alerts`,
`take_alerts`), shared by every worker on one store, and the dead-letter check reads on from a
cursor kept there too, under the store's singleton lock; a breaker's last seen state is kept per
process, because a breaker is itself per process (each process alerts on what it saw, and the
shared quiet period keeps that to one message per breaker).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from app import health
from app.clock import Clock
from app.config import RESERVED_SOURCE, AlertSettings, SourceSettings
from app.store import EventFilter, Store
from app.store.base import AlertDue, AlertNote, Outcome, SourceRows
from app.upstream import Recorded, Recorder
from handlers.registry import LoadedHandler

log = logging.getLogger("hookline.alerts")

DEAD_CURSOR = "dead_letters"
PAGE = 1000
UNAUTHORIZED = "unauthorized"


# Pure decisions.


def dead_notes(outcomes: Iterable[Outcome], at: float) -> list[AlertNote]:
    """One note per handler whose deliveries died among `outcomes` (each delivery once; the
    deaths of hookline's own alert events are left out, so a failing alert channel cannot feed
    itself)."""
    dead: dict[str, dict[str, Outcome]] = {}
    for outcome in outcomes:
        if outcome.status == "dead" and not outcome.event_type.startswith("hookline."):
            dead.setdefault(outcome.handler, {})[outcome.delivery_id] = outcome
    notes = []
    for handler, deliveries in dead.items():
        last = list(deliveries.values())[-1]
        notes.append(AlertNote(f"delivery.dead:{handler}", "hookline.delivery.dead",
                               len(deliveries), at, {
                                   "handler": handler, "last_delivery_id": last.delivery_id,
                                   "last_event_id": last.event_id,
                                   "last_event_type": last.event_type, "last_error": last.error}))
    return notes


def auth_failing_notes(rows: SourceRows, settings: AlertSettings, at: float) -> list[AlertNote]:
    """A note for each source whose authenticated share of requests over the window is under
    the threshold, once it had enough requests to tell."""
    refused: dict[str, int] = {}
    other: dict[str, int] = {}
    for count in rows.counts:
        into = refused if count.outcome == "rejected" and count.reason == UNAUTHORIZED else other
        into[count.source] = into.get(count.source, 0) + count.count
    notes = []
    for source in sorted({*refused, *rows.accepted} - {RESERVED_SOURCE}):
        failed = refused.get(source, 0)
        total = failed + other.get(source, 0) + rows.accepted.get(source, 0)
        share = (total - failed) / total if total else 1.0
        if total >= settings.auth_failing_min_requests and share < settings.auth_failing_below:
            notes.append(AlertNote(f"source.auth_failing:{source}", "hookline.source.auth_failing",
                                   1, at, {
                                       "source": source, "requests": total, "unauthorized": failed,
                                       "authenticated_share": round(share, 4),
                                       "threshold": settings.auth_failing_below,
                                       "window_seconds": settings.auth_failing_window_seconds}))
    return notes


def stalled_note(due_at: float | None, settings: AlertSettings, at: float) -> AlertNote | None:
    """A note when the earliest due delivery has waited unclaimed past `stalled_seconds`."""
    if due_at is None or at - due_at < settings.stalled_seconds:
        return None
    return AlertNote("worker.stalled", "hookline.worker.stalled", 1, at, {
        "due_since": due_at, "overdue_seconds": round(at - due_at, 3),
        "threshold_seconds": settings.stalled_seconds})


def breaker_notes(seen: dict[str, str], now_states: Mapping[str, Mapping[str, object]],
                  at: float) -> list[AlertNote]:
    """Notes for breakers that opened or closed since `seen` (updated in place): a breaker
    first seen is taken as having been closed."""
    notes = []
    handlers_of: dict[str, list[str]] = {}
    states: dict[str, str] = {}
    for handler, breaker in now_states.items():
        host = str(breaker["upstream"])
        handlers_of.setdefault(host, []).append(handler)
        states[host] = str(breaker["state"])
    for host, state in states.items():
        was_closed = seen.get(host, "closed") == "closed"
        seen[host] = state
        if was_closed == (state == "closed"):
            continue
        kind = "closed" if state == "closed" else "opened"
        notes.append(AlertNote(f"breaker.{kind}:{host}", f"hookline.breaker.{kind}", 1, at, {
            "upstream": host, "state": state, "handlers": sorted(handlers_of[host])}))
    return notes


def payload(due: AlertDue, quiet_seconds: float) -> dict[str, object]:
    """The event an alert is: what it stands for (`count` occurrences from `first_at` to
    `last_at`) and the details of the latest."""
    return {"subject": due.subject, "count": due.count, "first_at": due.first_at,
            "last_at": due.last_at, "quiet_seconds": quiet_seconds, **due.data}


# The checks, run by the scheduler.


@dataclass
class Alerts:
    settings: AlertSettings
    store: Store
    clock: Clock
    recorder: Recorder
    handlers: Mapping[str, LoadedHandler]
    sources: Mapping[str, SourceSettings]
    _breakers_seen: dict[str, str] = field(default_factory=dict)

    async def observe_breakers(self) -> int:
        """Note this process's breakers that opened or closed since the last look."""
        states = health.breakers_of(self.handlers, self.clock.monotonic())
        notes = breaker_notes(self._breakers_seen, states, self.clock.now())
        await self.store.note_alerts(notes)
        return len(notes)

    async def check(self) -> int:
        """The store-wide checks and the alerts now due (one process at a time): the events
        recorded."""
        now = self.clock.now()
        notes, dead_read_to = await self._dead_letters(now)
        window = self.settings.auth_failing_window_seconds
        rows = await self.store.source_rows([], now - window, now)
        notes += auth_failing_notes(rows, self.settings, now)
        stalled = stalled_note(await self.store.next_due_at(), self.settings, now)
        notes += [stalled] if stalled is not None else []
        await self.store.note_alerts(notes)
        # Only once the deaths are noted: a check that fails before reads them again next time.
        if dead_read_to is not None:
            await self.store.set_alert_cursor(DEAD_CURSOR, dead_read_to)
        return await self.send_due(now)

    async def send_due(self, now: float) -> int:
        quiet = self.settings.quiet_seconds
        sent = 0
        for due in await self.store.take_alerts(now, quiet):
            try:
                await self.recorder.record(Recorded(
                    source=RESERVED_SOURCE, type=due.type, payload=payload(due, quiet),
                    dedupe_key=f"{due.subject}@{now}"))
            except Exception as exc:  # a full intake, a store that failed: not sent
                # Its occurrences go back, to be reported with the next ones after the quiet
                # period, rather than lost.
                log.warning("alert %s not recorded, kept for later: %s", due.subject, exc)
                await self.store.note_alerts([
                    AlertNote(due.subject, due.type, due.count, due.last_at, due.data)])
                continue
            sent += 1
        return sent

    async def _dead_letters(self, now: float) -> tuple[list[AlertNote], int | None]:
        """Deliveries that died since the last check, read on from the stored cursor (the first
        check starts from now: history is not alerted on), and the position read to, for the
        cursor once they are noted."""
        after = await self.store.alert_cursor(DEAD_CURSOR)
        if after is None:
            _, head = await self.store.heads()
            await self.store.set_alert_cursor(DEAD_CURSOR, head)
            return [], None
        # Only the deaths are kept, by delivery: a delivery whose attempts all ended since the
        # last check shows as dead on each of them, and died once.
        dead: dict[str, Outcome] = {}
        while True:
            page = await self.store.tail_outcomes(EventFilter(), after, PAGE)
            dead.update((o.delivery_id, o) for _, o in page if o.status == "dead")
            if page:
                after = page[-1][0]
            if len(page) < PAGE:
                break
        return dead_notes(dead.values(), now), after

