"""The storage interface: named operations every backend implements, and the factory.

Endpoints, workers and the CLI talk to a `Store` and never to SQL. `store_from_url` picks the
backend by URL scheme and imports it lazily, so the PostgreSQL driver is loaded only when a
`postgresql://` URL asks for it.
"""

from __future__ import annotations

import abc
import base64
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from app.store.rejections import NewRejection, RejectionFilter, RejectionPage, RejectionRecord
from app.store.urls import sqlite_path
from schemas.records import (
    DeliveryPage,
    DeliveryRecord,
    EventPage,
    EventRecord,
    NewEvent,
    Saved,
)


class StoreError(Exception):
    """The store could not do what was asked (unreachable, disk full, read-only, locked)."""


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Filters of `list_events`; `type` is a glob over the canonical type."""

    source: str | None = None
    type: str | None = None
    status: str | None = None
    job_id: str | None = None
    file_id: str | None = None
    since: float | None = None
    until: float | None = None
    q: str | None = None
    """A substring of the raw body; searched over at most `Q_SCAN_ROWS` rows per page."""


# How many rows one page of a `q` search reads at most: a search never turns into a scan of the
# whole log. A page that reached the bound without filling up still has a next cursor.
Q_SCAN_ROWS = 20_000


@dataclass(frozen=True, slots=True)
class DeadFilter:
    """Which dead deliveries a bulk retry or a replay of dead letters selects; `type` is a glob,
    `since`/`until` bound the event's arrival, as in every other filter."""

    handler: str | None = None
    source: str | None = None
    type: str | None = None
    since: float | None = None
    until: float | None = None
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One open dead letter: a dead delivery that no later delivery of the same event and
    handler (a replay) superseded. A retried delivery that died again is the same row, so it
    is still one dead letter."""

    seq: int
    id: str
    event_id: str
    event_type: str
    handler: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt of a delivery ended, for the live tail."""

    delivery_id: str
    event_id: str
    event_type: str
    handler: str
    attempt: int
    outcome: str
    status: str
    ended_at: float
    error: str | None


@dataclass(frozen=True, slots=True)
class IngestCount:
    """Requests of one minute that stored no event: duplicates, and rejections by reason."""

    minute: int
    source: str
    outcome: str
    reason: str
    count: int


@dataclass(slots=True)
class StatsRows:
    """The raw aggregates behind `/api/stats`, shaped by `app.stats`."""

    events: list[tuple[str, str, str, int]]
    """(type, status, source, count) of events received in the window."""
    accepted_per_minute: dict[int, int]
    counts: list[IngestCount]
    attempts: list[tuple[str, str, int]]
    """(handler, outcome, count) of attempts that ended in the window."""
    failed_per_minute: dict[int, int]
    dead: int

    @classmethod
    def from_rows(
        cls, events: Sequence[Sequence[Any]], accepted: Sequence[Sequence[Any]],
        counts: Sequence[Sequence[Any]], attempts: Sequence[Sequence[Any]],
        failed: Sequence[Sequence[Any]], dead: int,
    ) -> StatsRows:
        """From the rows of the backend's queries, in the order of the fields."""
        return cls(
            events=[(r[0], r[1], r[2], r[3]) for r in events],
            accepted_per_minute={r[0]: r[1] for r in accepted},
            counts=[IngestCount(*r) for r in counts],
            attempts=[(r[0], r[1], r[2]) for r in attempts],
            failed_per_minute={r[0]: r[1] for r in failed},
            dead=dead,
        )


@dataclass(slots=True)
class HandlerRows:
    """The raw aggregates behind `/api/handlers`, shaped by `app.health`."""

    backlog: list[tuple[str, str, int, float]]
    """(handler, status, count, oldest created_at) of pending, running and dead deliveries."""
    attempts: list[tuple[str, str, int, int]]
    """(handler, outcome, duration in whole milliseconds, count) of attempts ended in the
    window: a histogram exact to the millisecond, whatever the number of attempts."""


@dataclass(slots=True)
class SourceRows:
    """The raw aggregates behind `/api/sources`, shaped by `app.health`."""

    accepted: dict[str, int]
    """Events stored per source in the window."""
    counts: list[IngestCount]
    """Duplicates and rejections per minute of the window."""
    last_received: dict[str, float]
    """When each source's newest event arrived (sources with none are absent)."""


@dataclass(frozen=True, slots=True)
class AlertNote:
    """`count` occurrences of an alert's subject at `at`; `data` describes the latest."""

    subject: str
    type: str
    count: int
    at: float
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AlertDue:
    """A subject's occurrences since its last alert, taken to be reported as one."""

    subject: str
    type: str
    count: int
    first_at: float
    last_at: float
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Gauges:
    pending: int
    running: int
    dead: int


@dataclass(frozen=True, slots=True)
class Claim:
    """A delivery leased to one worker for one attempt, with the event it carries."""

    delivery_id: str
    handler: str
    attempt: int
    event: EventRecord


@dataclass(frozen=True, slots=True)
class Finished:
    """How one attempt ended and what the retry decision made of it."""

    delivery_id: str
    owner: str
    attempt: int
    ended_at: float
    outcome: str
    status: str
    next_attempt_at: float | None = None
    error: str | None = None
    http_status: int | None = None


@dataclass(frozen=True, slots=True)
class PollClaim:
    """A status poll leased to one worker."""

    id: str
    handler: str
    kind: str
    key: str
    data: dict[str, Any]
    event_id: str | None
    attempts: int
    deadline: float


@dataclass(frozen=True, slots=True)
class LatestEvent:
    """The newest event of one job or file (for stall detection)."""

    entity_id: str
    event_id: str
    source: str
    type: str
    received_at: float


class Store(abc.ABC):
    """Durable event log. Every method raises StoreError when the backend fails."""

    # The schema versions the last `open` applied (so `hookline migrate` can say what it did).
    applied_migrations: tuple[int, ...] = ()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreError unless the store answers."""

    async def backup(self, target: str) -> None:
        """Copy the whole store, consistent as of one moment, to a new file at `target`."""
        raise StoreError("only a SQLite store is copied to a file; back PostgreSQL up with pg_dump")

    async def listen(self, callback: Callable[[], None]) -> None:
        """Call `callback` when another process adds deliveries. A store used by one process
        (SQLite) has nothing to listen to: the in-process wake-up covers it."""

    async def refresh_statistics(self) -> list[str]:
        """Update the planner's statistics of tables whose size changed a lot since they were
        last taken; the tables analysed. A store that needs none (SQLite) does nothing."""
        return []

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        """Whether this process may run the singleton job `name` now (held for the block).
        One process per store (SQLite) always may."""
        yield True

    @abc.abstractmethod
    async def save_events(self, events: Sequence[NewEvent]) -> list[Saved | StoreError]:
        """Write events and their deliveries in one transaction, deduplicating on
        (source, dedupe_key). One result per event, in order; a row that cannot be written gets
        a StoreError without undoing the others."""

    @abc.abstractmethod
    async def get_event(self, event_id: str) -> EventRecord | None: ...

    @abc.abstractmethod
    async def list_events(
        self, filters: EventFilter, limit: int, cursor: str | None = None
    ) -> EventPage:
        """Newest first, keyset-paginated by an opaque cursor."""

    @abc.abstractmethod
    async def raw_body(self, event_id: str) -> tuple[bytes, str] | None:
        """The exact bytes received for an event and their content type."""

    # The live tail and dashboards. Positions become visible in order: once a reader has seen
    # position N, no position below N appears later (a tail reads on from the last it sent).

    @abc.abstractmethod
    async def heads(self) -> tuple[int, int]:
        """The newest event's position and the newest finished attempt's, for starting a tail."""

    @abc.abstractmethod
    async def tail_events(
        self, filters: EventFilter, after: int, limit: int
    ) -> list[tuple[int, EventRecord]]:
        """Events past position `after`, oldest first, each with its position."""

    @abc.abstractmethod
    async def tail_outcomes(
        self, filters: EventFilter, after: int, limit: int
    ) -> list[tuple[int, Outcome]]:
        """Attempts that ended past position `after`, in the order they ended; `filters` apply
        to their events."""

    @abc.abstractmethod
    async def add_ingest_counts(self, counts: Sequence[IngestCount]) -> None:
        """Add to the per-minute counts of duplicates and rejections."""

    @abc.abstractmethod
    async def stats(self, since: float, until: float, minutes_from: int) -> StatsRows:
        """Aggregates over events received and attempts ended in [since, until], the end
        included; the per-minute figures start at minute `minutes_from` (unix seconds // 60)."""

    @abc.abstractmethod
    async def handler_rows(self, since: float, until: float) -> HandlerRows:
        """Every handler's backlog now, and its attempts that ended in [since, until]."""

    @abc.abstractmethod
    async def source_rows(self, sources: Sequence[str], since: float, until: float) -> SourceRows:
        """Per source: events stored and requests refused in [since, until], and when the
        newest event of each of `sources` arrived."""

    @abc.abstractmethod
    async def gauges(self) -> Gauges:
        """Deliveries waiting, leased and dead right now."""

    # Dispatch: deliveries, leases and attempts.

    @abc.abstractmethod
    async def claim_due(
        self, owner: str, now: float, lease_seconds: float, limit: int,
        per_handler: Mapping[str, int] | None = None,
    ) -> list[Claim]:
        """Lease up to `limit` deliveries that are due (or whose lease expired) to `owner`,
        counting an attempt for each; oldest due first. With `per_handler`, only deliveries
        of the handlers it names, no more than its number of each handler's due deliveries
        (and as many of its expired leases)."""

    @abc.abstractmethod
    async def finish(self, results: Sequence[Finished]) -> list[bool | StoreError]:
        """Record attempt outcomes and the deliveries' next state. False for a delivery whose
        lease `owner` no longer holds (its outcome is kept on the attempt, the state is not)."""

    @abc.abstractmethod
    async def release(self, owner: str, delivery_ids: Sequence[str], now: float) -> int:
        """Give leased deliveries back, due now, their unfinished attempt not counted."""

    @abc.abstractmethod
    async def reap_expired(self, now: float) -> int:
        """Make deliveries whose lease expired due again; their attempt is marked lost."""

    @abc.abstractmethod
    async def next_due_at(self) -> float | None:
        """When the earliest pending delivery is due, if any."""

    @abc.abstractmethod
    async def add_deliveries(self, event_id: str, handlers: Sequence[str], now: float) -> list[str]:
        """Fresh pending deliveries of an existing event (replay); their ids."""

    @abc.abstractmethod
    async def list_deliveries(
        self,
        status: str | None,
        handler: str | None,
        limit: int,
        cursor: str | None = None,
        event_type: str | None = None,
        since: float | None = None,
    ) -> DeliveryPage:
        """Deliveries newest first, keyset-paginated."""

    @abc.abstractmethod
    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        """One delivery with its event's type and its attempts."""

    @abc.abstractmethod
    async def dead_letters(
        self, filters: DeadFilter, after: int, limit: int
    ) -> list[DeadLetter]:
        """Open dead letters past position `after`, oldest first: dead deliveries with no later
        delivery of the same event and handler. Paging on from the last one's `seq` selects
        each once, even while the ones already selected are retried and die again."""

    @abc.abstractmethod
    async def retry_dead(self, delivery_ids: Sequence[str], now: float) -> list[str]:
        """Put the named deliveries that are dead back to `pending`, due at `now`, their
        attempts kept and counted on; the ids that were dead (and now are pending)."""

    @abc.abstractmethod
    async def prune(self, before: float) -> int:
        """Delete events received before `before`, with their deliveries and attempts."""


    # Alerts hookline raises about itself.

    @abc.abstractmethod
    async def note_alerts(self, notes: Sequence[AlertNote]) -> None:
        """Add occurrences to their subjects' counts (the latest `data` kept)."""

    @abc.abstractmethod
    async def take_alerts(self, now: float, quiet_seconds: float) -> list[AlertDue]:
        """The subjects with occurrences whose last alert is at least `quiet_seconds` old (or
        that never had one): their counts reset and their alert marked sent at `now`."""

    @abc.abstractmethod
    async def alert_cursor(self, name: str) -> int | None: ...

    @abc.abstractmethod
    async def set_alert_cursor(self, name: str, position: int) -> None: ...

    # Upstream bookkeeping.

    @abc.abstractmethod
    async def take_budget(self, key: str, limit: int, now: float) -> int | None:
        """Count one more use of `key` unless `limit` uses were counted: the new count or None."""

    @abc.abstractmethod
    async def refund_budget(self, key: str, now: float) -> None: ...

    @abc.abstractmethod
    async def budget_used(self, keys: Sequence[str]) -> dict[str, int]: ...

    @abc.abstractmethod
    async def open_polls(self, keys: Sequence[str]) -> set[str]:
        """The keys among `keys` with a status poll not closed yet (waiting or running)."""

    @abc.abstractmethod
    async def mark_once(self, key: str, now: float) -> bool:
        """True if `key` was not marked before (and is now)."""

    @abc.abstractmethod
    async def add_poll(
        self, handler: str, kind: str, key: str, data: dict[str, Any], event_id: str | None,
        next_at: float, deadline: float, now: float,
    ) -> str: ...

    @abc.abstractmethod
    async def claim_polls(
        self, owner: str, now: float, lease_seconds: float, limit: int
    ) -> list[PollClaim]: ...

    @abc.abstractmethod
    async def finish_poll(
        self, poll_id: str, owner: str, next_at: float | None, outcome: str | None, now: float
    ) -> bool:
        """Reschedule (next_at) or close (next_at None, with its outcome) a claimed poll."""

    @abc.abstractmethod
    async def events_of(
        self, kind: Literal["job", "file"], entity_id: str, limit: int = 1000
    ) -> list[EventRecord]:
        """The events of one job or file, oldest first, with payloads."""

    @abc.abstractmethod
    async def latest_events(
        self, kind: Literal["job", "file"], since: float, until: float
    ) -> list[LatestEvent]:
        """For every job (or file) seen since `since`, its newest event if that is older than
        `until`."""

    # The rejections log (app.rejections): refused webhook requests.

    @abc.abstractmethod
    async def add_rejections(self, rows: Sequence[NewRejection]) -> None:
        """Write recorded rejections, in one transaction."""

    @abc.abstractmethod
    async def list_rejections(
        self, filters: RejectionFilter, limit: int, cursor: str | None = None
    ) -> RejectionPage:
        """Newest first (by time), keyset-paginated; without details, headers or bodies.
        ValueError for a cursor this store did not hand out."""

    @abc.abstractmethod
    async def get_rejection(self, rejection_id: str) -> RejectionRecord | None:
        """One rejection with its details, headers and body."""

    @abc.abstractmethod
    async def prune_rejections(self, before: float, keep: int) -> int:
        """Delete rejections received before `before`, then all but the newest `keep`."""


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


# Positions are BIGINT / INTEGER columns: a number past them is no cursor of ours, and a driver
# would refuse it as an error of the store rather than of the request.
MAX_POSITION = 2**63 - 1


def decode_cursor(cursor: str) -> int:
    """Raise ValueError for a cursor this store did not hand out."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError("invalid cursor") from None
    digits = text[1:]
    if not text.startswith("s") or not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
        raise ValueError("invalid cursor")
    seq = int(digits)
    if seq > MAX_POSITION:
        raise ValueError("invalid cursor")
    return seq


def store_from_url(url: str) -> Store:
    """The backend for a storage URL: sqlite:///path, or postgresql://..."""
    if url.startswith("sqlite://"):
        from app.store.sqlite import SQLiteStore

        path = sqlite_path(url)
        if path in ("", ":memory:"):
            raise StoreError("a sqlite:// url needs a file path, as sqlite:///hookline.db")
        return SQLiteStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from app.store.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                "PostgreSQL storage needs asyncpg: pip install 'hookline[postgres]'"
            ) from exc
        return PostgresStore(url)
    raise StoreError(f"unsupported storage URL scheme in {url.split(':', 1)[0]!r}")
