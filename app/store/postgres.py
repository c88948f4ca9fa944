"""The PostgreSQL backend (asyncpg): one database shared by many receivers and workers.

The same named operations as the SQLite store, written for concurrency between processes:
an ingest batch is one statement (events inserted, duplicates skipped by the unique key,
deliveries fanned out in the same statement); claims take rows with `FOR UPDATE SKIP LOCKED`, so
workers never wait for each other; new deliveries `NOTIFY` listening workers; migrations and
singleton jobs run under advisory locks. Every driver or network failure becomes a StoreError,
which the web layer answers with 503 and the worker with a back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from importlib import resources
from typing import Any, Literal

import asyncpg

from app.ids import new_id
from app.store import rejections
from app.store.base import (
    Q_SCAN_ROWS,
    AlertDue,
    AlertNote,
    Claim,
    DeadFilter,
    DeadLetter,
    EventFilter,
    Finished,
    Gauges,
    HandlerRows,
    IngestCount,
    LatestEvent,
    Outcome,
    PollClaim,
    SourceRows,
    StatsRows,
    Store,
    StoreError,
    decode_cursor,
    encode_cursor,
)
from app.store.rejections import NewRejection, RejectionFilter, RejectionPage, RejectionRecord
from schemas.records import (
    AttemptRecord,
    DeliveryPage,
    DeliveryRecord,
    EventPage,
    EventRecord,
    NewEvent,
    Saved,
)

log = logging.getLogger("hookline.store")

_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
_MIGRATION_LOCK = 7_264_155_001
IDLE_IN_TRANSACTION_MS = "60000"
# Every statement here reaches its rows by a key or an index range under a LIMIT. Without
# statistics (autovacuum off, a table never analysed) or with a generic plan made while a table
# was small, the planner's estimates are guesses, and a guess that favours a scan or a hash of
# a whole table makes a claim or a finish read the entire backlog each time. These settings
# leave it the index paths (they only price the others out: a statement with no other way
# still runs), so a plan's cost follows the rows it touches, not the size of the tables.
PLANNER_SETTINGS = {"enable_seqscan": "off", "enable_bitmapscan": "off",
                    "enable_hashjoin": "off", "enable_mergejoin": "off"}
NOTIFY_CHANNEL = "hookline_deliveries"
# Seconds between tries to LISTEN again after the connection dropped (the first is at once).
LISTEN_RETRY_MIN = 0.5
LISTEN_RETRY_MAX = 10.0

# The tables every batch reads and writes, analysed by the maintenance sweep once this many rows
# changed, and at least this share of the rows they had (statistics cost a sample, not a scan).
# On a server without autovacuum they are vacuumed too once that many rows are dead: every claim
# and finish leaves dead index entries at the low end of the due-order indexes, which each claim
# would otherwise step over, more with every delivery drained.
_ANALYSED = ("events", "deliveries", "attempts")
ANALYZE_MIN_CHANGES = 1000
ANALYZE_SHARE = 0.2
VACUUM_TIMEOUT = 600.0
_STALE_TABLES = """
SELECT s.relname, s.n_dead_tup >= $2 AND s.n_dead_tup >= $3 * greatest(c.reltuples, 0)
                  AND current_setting('autovacuum') = 'off' AS vacuum
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = current_schema() AND s.relname = ANY($1::text[])
  AND ((s.n_mod_since_analyze >= $2 AND s.n_mod_since_analyze >= $3 * greatest(c.reltuples, 0))
       OR (s.n_dead_tup >= $2 AND s.n_dead_tup >= $3 * greatest(c.reltuples, 0)
           AND current_setting('autovacuum') = 'off'))
ORDER BY s.relname
"""

_EVENT_COLUMNS = (
    "seq, id, source, type, dedupe_key, status, received_at, occurred_at, job_id, file_id, "
    "company_id, task_ids"
)
_SAVE_BATCH = """
WITH rows AS (
    SELECT * FROM jsonb_to_recordset($1::text::jsonb) AS r(
        id text, source text, type text, dedupe_key text, status text,
        received_at double precision, occurred_at double precision, job_id text, file_id text,
        company_id text, task_ids jsonb, handlers jsonb, headers jsonb, query text,
        payload jsonb, body text)
), inserted AS (
    INSERT INTO events (id, source, type, dedupe_key, status, received_at, occurred_at, job_id,
                        file_id, company_id, task_ids, handlers, headers, query, payload, body)
    SELECT id, source, type, dedupe_key, status, received_at, occurred_at, job_id, file_id,
           company_id, task_ids, handlers, headers, query, payload, convert_to(body, 'UTF8')
    FROM rows
    ON CONFLICT (source, dedupe_key) DO NOTHING
    RETURNING id, handlers, received_at
), fanned AS (
    INSERT INTO deliveries (id, event_id, handler, status, attempts, next_attempt_at,
                            created_at, updated_at)
    SELECT 'dlv_' || md5(random()::text || inserted.id || h.value), inserted.id, h.value,
           'pending', 0, inserted.received_at, inserted.received_at, inserted.received_at
    FROM inserted, jsonb_array_elements_text(inserted.handlers) AS h(value)
    RETURNING 1
)
SELECT id FROM inserted
"""
# A claim in one statement (one round trip): due deliveries first, then expired leases, each
# locked with SKIP LOCKED so workers never wait for each other; the expired ones' running
# attempts are marked lost and every claimed delivery gets its new attempt.
_DUE_ANY = """
WITH pending AS (
    SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= $1
    ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED
), expired AS (
    SELECT id FROM deliveries WHERE status = 'running' AND lease_expires_at <= $1
    ORDER BY lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED
)"""
# The same for each handler on its own ($5 names, $6 limits): a handler whose due deliveries
# come first cannot take every slot of a worker that asked for others too.
_DUE_PER_HANDLER = """
WITH wanted AS (
    SELECT * FROM unnest($5::text[], $6::int[]) AS w(handler, n)
), pending AS (
    SELECT p.id FROM wanted CROSS JOIN LATERAL (
        SELECT id FROM deliveries WHERE status = 'pending' AND handler = wanted.handler
        AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT wanted.n
        FOR UPDATE SKIP LOCKED) p
), expired AS (
    SELECT e.id FROM wanted CROSS JOIN LATERAL (
        SELECT id FROM deliveries WHERE status = 'running' AND handler = wanted.handler
        AND lease_expires_at <= $1 ORDER BY lease_expires_at LIMIT wanted.n
        FOR UPDATE SKIP LOCKED) e
)"""
_CLAIM_REST = f"""
, due AS (
    SELECT id FROM (SELECT id, 0 AS rank FROM pending
                    UNION ALL SELECT id, 1 FROM expired) picked
    ORDER BY rank LIMIT $2
), lost AS (
    UPDATE attempts SET outcome = 'lost', ended_at = $1, error = 'lease expired'
    WHERE outcome = 'running' AND delivery_id IN (SELECT id FROM due)
), claimed AS (
    UPDATE deliveries d SET status = 'running', lease_owner = $3, lease_expires_at = $4,
                            attempts = d.attempts + 1, updated_at = $1
    FROM due WHERE d.id = due.id
    RETURNING d.id, d.handler, d.attempts, d.event_id
), started AS (
    INSERT INTO attempts (delivery_id, number, started_at, outcome)
    SELECT id, attempts, $1, 'running' FROM claimed
)
SELECT c.id AS delivery_id, c.handler, c.attempts,
       {", ".join("e." + c.strip() for c in _EVENT_COLUMNS.split(","))},
       e.headers, e.query, e.payload, e.body
FROM claimed c JOIN events e ON e.id = c.event_id
"""
_CLAIM_ANY = _DUE_ANY + _CLAIM_REST
_CLAIM_PER_HANDLER = _DUE_PER_HANDLER + _CLAIM_REST

# A whole batch of outcomes in one statement: the attempts, each with its position in the tail
# (see _HORIZONS), and the deliveries whose lease the finishing worker still holds. Being the
# transaction's first statement, it locks `attempts` before the transaction has an id.
_FINISH_BATCH = """
WITH r AS (
    SELECT *, 'running'::text AS leased
    FROM unnest($1::text[], $2::text[], $3::int[], $4::float8[], $5::text[],
                $6::text[], $7::float8[], $8::text[], $9::int[])
        AS r(delivery_id, owner, attempt, ended_at, outcome, status, next_at, error, http_status)
), attempt_rows AS (
    UPDATE attempts a SET ended_at = r.ended_at, outcome = r.outcome, error = r.error,
                          http_status = r.http_status,
                          done_seq = (pg_current_xact_id()::text::bigint << 20)
                                     + (nextval('attempts_done_seq') & 1048575)
    FROM r WHERE a.delivery_id = r.delivery_id AND a.number = r.attempt
)
UPDATE deliveries d SET status = r.status, next_attempt_at = r.next_at, lease_owner = NULL,
                        lease_expires_at = NULL, last_error = r.error, updated_at = r.ended_at
FROM r WHERE d.id = r.delivery_id AND d.lease_owner = r.owner AND d.attempts = r.attempt
             AND d.status = r.leased  -- not a literal: each row by its id, not the index of
                                      -- every running delivery (a partial index on status)
RETURNING d.id, d.attempts
"""
# How far a tail may read. Positions (events.seq, attempts.done_seq) start with the id of the
# transaction that drew them, shifted left by 20 bits (migration 0007). A transaction that
# draws positions locks its table before it has an id (the insert, or the finish, is its first
# statement). So any position that can still appear is at or above the smallest of: the ids of
# transactions holding a write lock on the table now (pg_locks), and the next id to be assigned
# (this statement's snapshot, taken before pg_locks is read). The rows are then read by a later
# statement, whose snapshot holds everything committed below that. Transactions on other tables
# or in other databases do not hold a tail back, and writers never wait for each other.
_HORIZONS = """
WITH next AS (
    SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xid
), writers AS (
    SELECT w.relation, next.xid + (x.transactionid::text::bigint - (next.xid & 4294967295)
                                   + 6442450944) % 4294967296 - 2147483648 AS xid
    FROM next, pg_locks w JOIN pg_locks x ON x.virtualtransaction = w.virtualtransaction
    WHERE w.locktype = 'relation' AND w.mode = 'RowExclusiveLock'
      AND w.relation IN ('events'::regclass, 'attempts'::regclass)
      AND x.locktype = 'transactionid' AND w.pid IS DISTINCT FROM pg_backend_pid()
)
SELECT least(next.xid, (SELECT min(xid) FROM writers WHERE relation = 'events'::regclass)) << 20,
       least(next.xid, (SELECT min(xid) FROM writers WHERE relation = 'attempts'::regclass)) << 20
FROM next
"""
# Each touched event's status from that event's own deliveries only (reached by event id,
# whatever the statistics, never by a scan of every open delivery): open while any delivery is
# pending or running; failed when some handler's newest dead delivery has no later success;
# else delivered. A row is rewritten only when its status changes.
_REFRESH_STATUS = """
WITH touched AS (
    SELECT DISTINCT event_id FROM deliveries WHERE id = ANY($1::text[])
), verdict AS (
    SELECT t.event_id, CASE WHEN bool_or(h.open) THEN 'pending'
                            WHEN bool_or(h.dead_seq > coalesce(h.ok_seq, 0)) THEN 'failed'
                            ELSE 'delivered' END AS status
    FROM touched t CROSS JOIN LATERAL (
        SELECT bool_or(d.status IN ('pending', 'running')) AS open,
               max(d.seq) FILTER (WHERE d.status = 'dead') AS dead_seq,
               max(d.seq) FILTER (WHERE d.status = 'succeeded') AS ok_seq
        FROM deliveries d WHERE d.event_id = t.event_id GROUP BY d.handler) h
    GROUP BY t.event_id
)
UPDATE events e SET status = verdict.status FROM verdict
WHERE e.id = verdict.event_id AND e.status <> verdict.status
"""

# Open dead letters in position order (deliveries_status serves `status = 'dead' AND seq > $1`;
# deliveries_event serves the check for a later delivery of the same event and handler).
_DEAD_LETTERS = """
SELECT d.seq, d.id, d.event_id, e.type, d.handler FROM deliveries d
JOIN events e ON e.id = d.event_id
WHERE d.status = 'dead' AND {where}
AND NOT EXISTS (SELECT 1 FROM deliveries later WHERE later.event_id = d.event_id
                AND later.handler = d.handler AND later.seq > d.seq)
ORDER BY d.seq LIMIT {limit}
"""


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("app.store") / "migrations" / "postgres"
    found = [(int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8"))
             for entry in folder.iterdir() if entry.name.endswith(".sql")]
    return sorted(found)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                              schema="pg_catalog")


class PostgresStore(Store):
    def __init__(self, url: str, min_size: int = 1, max_size: int = 10) -> None:
        self.url = url
        self.min_size = min_size
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._on_deliveries: Callable[[], None] | None = None
        self._relisten: asyncio.Task[None] | None = None

    # Connection management.

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=self.min_size, max_size=self.max_size,
                init=_init_connection, command_timeout=30,
                # A process frozen in a transaction (stopped, partitioned) must not hold row and
                # ordering locks, and with them every other receiver and worker, for long.
                server_settings={"idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_MS,
                                 **PLANNER_SETTINGS},
            )
            self.applied_migrations = tuple(await self.migrate())
        except _ERRORS as exc:
            await self.close()
            raise StoreError(f"cannot open PostgreSQL store: {exc}") from exc

    async def close(self) -> None:
        self._on_deliveries = None
        if self._relisten is not None:
            self._relisten.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relisten
            self._relisten = None
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(*_ERRORS):
                await listener.close()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("store is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self.pool.acquire() as conn:
                yield conn
        except _ERRORS as exc:
            raise StoreError(str(exc)) from exc

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._conn() as conn, conn.transaction():
            yield conn

    async def migrate(self) -> list[int]:
        applied = []
        async with self._conn() as conn:
            # Several processes starting at once: one migrates, the others wait and find it done.
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                    "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
                done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
                for version, sql in _migrations():
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version) VALUES ($1)", version)
                    applied.append(version)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        return applied

    async def ping(self) -> None:
        async with self._conn() as conn:
            await conn.fetchval("SELECT 1")

    async def listen(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever any process adds deliveries. A dropped connection (a server
        restart, a terminated backend) is opened again, and `callback` called once then for what
        was added meanwhile; until it is back, the worker's periodic sweep finds what is due."""
        self._on_deliveries = callback
        try:
            await self._listen_once()
        except _ERRORS as exc:
            raise StoreError(str(exc)) from exc

    async def _listen_once(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            await conn.add_listener(NOTIFY_CHANNEL, lambda *_: self._notified())
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._listener_lost)
        self._listener = conn

    def _notified(self) -> None:
        if self._on_deliveries is not None:
            self._on_deliveries()

    def _listener_lost(self, conn: asyncpg.Connection) -> None:
        # close() forgets its listener before closing it: only a drop gets here with it.
        if conn is not self._listener or self._on_deliveries is None:
            return
        self._listener = None
        log.warning("LISTEN connection lost; opening it again")
        self._relisten = asyncio.get_running_loop().create_task(
            self._listen_again(), name="hookline-listen-again")

    async def _listen_again(self) -> None:
        delay = 0.0
        while self._on_deliveries is not None:
            await asyncio.sleep(delay)
            try:
                await self._listen_once()
            except _ERRORS as exc:
                delay = min(LISTEN_RETRY_MAX, max(LISTEN_RETRY_MIN, delay * 2))
                log.warning("cannot LISTEN again (next try in %g s): %s", delay, exc)
                continue
            log.info("listening for new deliveries again")
            self._notified()  # whatever was added while no one listened
            return

    async def refresh_statistics(self) -> list[str]:
        """ANALYZE the busy tables whose rows changed by a good share since their last ANALYZE,
        and on a server without autovacuum VACUUM those with as many dead rows. Servers often
        run with autovacuum off; without statistics, or with a table's from when it was small,
        plans drift (and cached generic plans stay frozen until the next ANALYZE)."""
        async with self._conn() as conn:
            stale = await conn.fetch(_STALE_TABLES, list(_ANALYSED), ANALYZE_MIN_CHANGES,
                                     ANALYZE_SHARE)
            for row in stale:  # names from _ANALYSED
                if row["vacuum"]:
                    await conn.execute(f"VACUUM (ANALYZE) {row['relname']}",
                                       timeout=VACUUM_TIMEOUT)
                else:
                    await conn.execute(f"ANALYZE {row['relname']}")
        return [row["relname"] for row in stale]

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        """Whether this process holds the advisory lock `name` (held for the block)."""
        async with self._conn() as conn:
            held = await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", name)
            try:
                yield bool(held)
            finally:
                if held:
                    await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", name)

    # Events.

    async def save_events(self, events: Sequence[NewEvent]) -> list[Saved | StoreError]:
        try:
            async with self._conn() as conn:
                rows = await conn.fetch(_SAVE_BATCH, _batch_json(events))
                inserted = {row["id"] for row in rows}
                return list(await _resolve(conn, events, inserted))
        except StoreError:
            pass
        return await self._save_one_by_one(events)

    async def _save_one_by_one(self, events: Sequence[NewEvent]) -> list[Saved | StoreError]:
        results: list[Saved | StoreError] = []
        for event in events:
            try:
                async with self._conn() as conn:
                    rows = await conn.fetch(_SAVE_BATCH, _batch_json([event]))
                    [saved] = await _resolve(conn, [event], {row["id"] for row in rows})
                    results.append(saved)
            except StoreError as exc:
                results.append(StoreError(f"event not stored: {exc}"))
        return results

    async def get_event(self, event_id: str) -> EventRecord | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"SELECT {_EVENT_COLUMNS}, headers, query, payload FROM events WHERE id = $1",
                event_id)
            if row is None:
                return None
            record = _event_record(row, detail=True)
            deliveries = await conn.fetch(
                "SELECT * FROM deliveries WHERE event_id = $1 ORDER BY created_at, handler",
                event_id)
            record.deliveries = [_delivery_record(d) for d in deliveries]
            for delivery in record.deliveries:
                attempts = await conn.fetch(
                    "SELECT number, started_at, ended_at, outcome, error, http_status "
                    "FROM attempts WHERE delivery_id = $1 ORDER BY number", delivery.id)
                delivery.attempt_log = [AttemptRecord(**dict(a)) for a in attempts]
            return record

    async def list_events(
        self, filters: EventFilter, limit: int, cursor: str | None = None
    ) -> EventPage:
        clauses = _event_clauses(filters)
        if cursor is not None:
            clauses.append(("seq < ?", decode_cursor(cursor)))
        where, params = _numbered(clauses)
        sql = f"SELECT {_EVENT_COLUMNS} FROM events" + _and(where)
        floor = None
        async with self._conn() as conn:
            if filters.q is not None:
                # Only the newest Q_SCAN_ROWS rows that pass the other filters are searched.
                params.append(Q_SCAN_ROWS)
                window = f"SELECT seq FROM events{_and(where)} ORDER BY seq DESC LIMIT ${len(params)}"
                scanned = await conn.fetchrow(f"SELECT count(*), min(seq) FROM ({window}) w",
                                              *params)
                if scanned is not None and scanned[0] == Q_SCAN_ROWS:
                    floor = scanned[1]
                params.append(filters.q.encode())
                sql = (f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq IN ({window}) "
                       f"AND position(${len(params)}::bytea in body) > 0")
            params.append(limit + 1)
            rows = await conn.fetch(f"{sql} ORDER BY seq DESC LIMIT ${len(params)}", *params)
        items = [_event_record(row) for row in rows[:limit]]
        if len(rows) > limit:
            return EventPage(items=items, next_cursor=encode_cursor(rows[limit - 1]["seq"]))
        return EventPage(items=items, next_cursor=encode_cursor(floor) if floor else None)

    async def raw_body(self, event_id: str) -> tuple[bytes, str] | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT body, headers ->> 'content-type' FROM events WHERE id = $1", event_id)
        if row is None:
            return None
        return bytes(row[0]), row[1] or "application/json"

    # The live tail and dashboards.

    async def heads(self) -> tuple[int, int]:
        async with self._conn() as conn:
            events, outcomes = await _horizons(conn)
            row = await conn.fetchrow(
                "SELECT (SELECT max(seq) FROM events WHERE seq < $1), "
                "(SELECT max(done_seq) FROM attempts WHERE done_seq < $2)", events, outcomes)
        assert row is not None
        return row[0] or 0, row[1] or 0

    async def tail_events(
        self, filters: EventFilter, after: int, limit: int
    ) -> list[tuple[int, EventRecord]]:
        async with self._conn() as conn:
            below, _ = await _horizons(conn)
            where, params = _numbered(
                [*_event_clauses(filters), ("seq > ?", after), ("seq < ?", below)])
            params.append(limit)
            rows = await conn.fetch(
                f"SELECT {_EVENT_COLUMNS} FROM events{_and(where)} "
                f"ORDER BY seq LIMIT ${len(params)}", *params)
        return [(row["seq"], _event_record(row)) for row in rows]

    async def tail_outcomes(
        self, filters: EventFilter, after: int, limit: int
    ) -> list[tuple[int, Outcome]]:
        clauses = [("e." + sql, value) for sql, value in _event_clauses(filters)]
        async with self._conn() as conn:
            _, below = await _horizons(conn)
            where, params = _numbered(
                [*clauses, ("a.done_seq > ?", after), ("a.done_seq < ?", below)])
            params.append(limit)
            rows = await conn.fetch(
                f"SELECT a.done_seq, a.delivery_id, d.event_id, e.type, d.handler, a.number, "
                f"a.outcome, d.status, a.ended_at, a.error FROM attempts a "
                f"JOIN deliveries d ON d.id = a.delivery_id JOIN events e ON e.id = d.event_id"
                f"{_and(where)} ORDER BY a.done_seq LIMIT ${len(params)}", *params)
        return [(row[0], Outcome(*row[1:])) for row in rows]

    async def add_ingest_counts(self, counts: Sequence[IngestCount]) -> None:
        if not counts:
            return
        async with self._conn() as conn:
            await conn.executemany(
                "INSERT INTO ingest_counts (minute, source, outcome, reason, count) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (minute, source, outcome, reason) "
                "DO UPDATE SET count = ingest_counts.count + excluded.count",
                [(c.minute, c.source, c.outcome, c.reason, c.count) for c in counts])

    async def stats(self, since: float, until: float, minutes_from: int) -> StatsRows:
        from_ = minutes_from * 60.0
        async with self._conn() as conn:
            events = await conn.fetch(
                "SELECT type, status, source, count(*) FROM events "
                "WHERE received_at >= $1 AND received_at <= $2 GROUP BY type, status, source",
                since, until)
            accepted = await conn.fetch(
                "SELECT floor(received_at / 60)::bigint, count(*) FROM events "
                "WHERE received_at >= $1 AND received_at <= $2 GROUP BY 1", from_, until)
            counts = await conn.fetch(
                "SELECT minute, source, outcome, reason, count FROM ingest_counts "
                "WHERE minute >= $1 AND minute <= $2",
                min(int(since // 60), minutes_from), int(until // 60))
            attempts = await conn.fetch(
                "SELECT d.handler, a.outcome, count(*) FROM attempts a "
                "JOIN deliveries d ON d.id = a.delivery_id "
                "WHERE a.ended_at >= $1 AND a.ended_at <= $2 GROUP BY d.handler, a.outcome",
                since, until)
            failed = await conn.fetch(
                "SELECT floor(ended_at / 60)::bigint, count(*) FROM attempts "
                "WHERE ended_at >= $1 AND ended_at <= $2 "
                "AND outcome NOT IN ('succeeded', 'running') GROUP BY 1", from_, until)
        gauges = await self.gauges()
        return StatsRows.from_rows(events, accepted, counts, attempts, failed, gauges.dead)

    async def handler_rows(self, since: float, until: float) -> HandlerRows:
        async with self._conn() as conn:
            backlog = await conn.fetch(
                "SELECT handler, status, count(*), min(created_at) FROM deliveries "
                "WHERE status IN ('pending', 'running', 'dead') GROUP BY handler, status")
            attempts = await conn.fetch(
                "SELECT d.handler, a.outcome, "
                "round((a.ended_at - a.started_at) * 1000)::bigint AS ms, count(*) "
                "FROM attempts a JOIN deliveries d ON d.id = a.delivery_id "
                "WHERE a.ended_at >= $1 AND a.ended_at <= $2 GROUP BY 1, 2, 3", since, until)
        return HandlerRows([(r[0], r[1], r[2], r[3]) for r in backlog],
                           [(r[0], r[1], r[2], r[3]) for r in attempts])

    async def source_rows(self, sources: Sequence[str], since: float, until: float) -> SourceRows:
        async with self._conn() as conn:
            accepted = await conn.fetch(
                "SELECT source, count(*) FROM events WHERE received_at >= $1 "
                "AND received_at <= $2 GROUP BY source", since, until)
            counts = await conn.fetch(
                "SELECT minute, source, outcome, reason, count FROM ingest_counts "
                "WHERE minute >= $1 AND minute <= $2", int(since // 60), int(until // 60))
            # One probe of events_source per source. Written as a range ordered by (source,
            # seq), which only that index yields: with `source = ...` the planner walks the
            # primary key backwards instead, through the whole log for a quiet source.
            last = await conn.fetch(
                "SELECT s.name, (SELECT received_at FROM events WHERE source >= s.name "
                "AND source <= s.name ORDER BY source DESC, seq DESC LIMIT 1) "
                "FROM unnest($1::text[]) AS s(name)", list(sources))
        return SourceRows({r[0]: r[1] for r in accepted}, [IngestCount(*r) for r in counts],
                          {r[0]: r[1] for r in last if r[1] is not None})

    async def gauges(self) -> Gauges:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT status, count(*) FROM deliveries "
                "WHERE status IN ('pending', 'running', 'dead') GROUP BY status")
        found = {row[0]: row[1] for row in rows}
        return Gauges(found.get("pending", 0), found.get("running", 0), found.get("dead", 0))

    # Dispatch.

    async def claim_due(
        self, owner: str, now: float, lease_seconds: float, limit: int,
        per_handler: Mapping[str, int] | None = None,
    ) -> list[Claim]:
        args: list[Any] = [now, limit, owner, now + lease_seconds]
        sql = _CLAIM_ANY
        if per_handler is not None:
            wanted = {handler: n for handler, n in per_handler.items() if n > 0}
            if not wanted:
                return []
            sql = _CLAIM_PER_HANDLER
            args += [list(wanted), list(wanted.values())]
        async with self._conn() as conn:
            rows = await conn.fetch(sql, *args)
        return [Claim(r["delivery_id"], r["handler"], r["attempts"], _event_record(r, detail=True))
                for r in rows]

    async def finish(self, results: Sequence[Finished]) -> list[bool | StoreError]:
        columns = [
            [r.delivery_id for r in results], [r.owner for r in results],
            [r.attempt for r in results], [r.ended_at for r in results],
            [r.outcome for r in results], [r.status for r in results],
            [r.next_attempt_at for r in results], [r.error for r in results],
            [r.http_status for r in results],
        ]
        async with self._tx() as conn:
            rows = await conn.fetch(_FINISH_BATCH, *columns)
            await conn.execute(_REFRESH_STATUS, columns[0])
        updated = {(row["id"], row["attempts"]) for row in rows}
        return [(r.delivery_id, r.attempt) in updated for r in results]

    async def release(self, owner: str, delivery_ids: Sequence[str], now: float) -> int:
        if not delivery_ids:
            return 0
        async with self._tx() as conn:
            await conn.execute(
                "DELETE FROM attempts WHERE outcome = 'running' AND delivery_id IN "
                "(SELECT id FROM deliveries WHERE lease_owner = $1 AND id = ANY($2::text[]))",
                owner, list(delivery_ids))
            status = await conn.execute(
                "UPDATE deliveries SET status = 'pending', attempts = attempts - 1, "
                "next_attempt_at = $1, lease_owner = NULL, lease_expires_at = NULL, "
                "updated_at = $1 WHERE lease_owner = $2 AND status = 'running' "
                "AND id = ANY($3::text[])", now, owner, list(delivery_ids))
        return int(status.split()[-1])

    async def reap_expired(self, now: float) -> int:
        async with self._tx() as conn:
            await conn.execute(
                "UPDATE attempts SET outcome = 'lost', ended_at = $1, error = 'lease expired' "
                "WHERE outcome = 'running' AND delivery_id IN (SELECT id FROM deliveries "
                "WHERE status = 'running' AND lease_expires_at <= $1)", now)
            status = await conn.execute(
                "UPDATE deliveries SET status = 'pending', next_attempt_at = $1, "
                "lease_owner = NULL, lease_expires_at = NULL, updated_at = $1 "
                "WHERE status = 'running' AND lease_expires_at <= $1", now)
        return int(status.split()[-1])

    async def next_due_at(self) -> float | None:
        async with self._conn() as conn:
            value = await conn.fetchval(
                "SELECT least((SELECT min(next_attempt_at) FROM deliveries "
                "WHERE status = 'pending'), (SELECT min(lease_expires_at) FROM deliveries "
                "WHERE status = 'running'))")
        return None if value is None else float(value)

    async def add_deliveries(self, event_id: str, handlers: Sequence[str], now: float) -> list[str]:
        ids = [new_id("dlv", now) for _ in handlers]
        async with self._tx() as conn:
            await conn.executemany(
                "INSERT INTO deliveries (id, event_id, handler, status, attempts, "
                "next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, 'pending', 0, "
                "$4, $4, $4)", [(i, event_id, h, now) for i, h in zip(ids, handlers, strict=True)])
            await conn.execute("UPDATE events SET status = 'pending' WHERE id = $1", event_id)
        return ids

    async def list_deliveries(
        self, status: str | None, handler: str | None, limit: int, cursor: str | None = None,
        event_type: str | None = None, since: float | None = None,
    ) -> DeliveryPage:
        clauses: list[tuple[str, Any]] = [
            ("d.status = ?", status), ("d.handler = ?", handler),
            ("e.type LIKE ?", _glob_to_like(event_type) if event_type else None),
            ("e.received_at >= ?", since),
            ("d.seq < ?", decode_cursor(cursor) if cursor else None),
        ]
        where, params = _numbered([(sql, v) for sql, v in clauses if v is not None])
        sql = "SELECT d.*, e.type AS event_type FROM deliveries d JOIN events e ON e.id = d.event_id"
        if where:
            sql += " WHERE " + " AND ".join(where)
        params.append(limit + 1)
        sql += f" ORDER BY d.seq DESC LIMIT ${len(params)}"
        async with self._conn() as conn:
            rows = await conn.fetch(sql, *params)
        items = [_delivery_record(r) for r in rows[:limit]]
        next_cursor = encode_cursor(rows[limit - 1]["seq"]) if len(rows) > limit else None
        return DeliveryPage(items=items, next_cursor=next_cursor)

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT d.*, e.type AS event_type FROM deliveries d "
                "JOIN events e ON e.id = d.event_id WHERE d.id = $1", delivery_id)
            if row is None:
                return None
            attempts = await conn.fetch(
                "SELECT number, started_at, ended_at, outcome, error, http_status "
                "FROM attempts WHERE delivery_id = $1 ORDER BY number", delivery_id)
        delivery = _delivery_record(row)
        delivery.attempt_log = [AttemptRecord(**dict(a)) for a in attempts]
        return delivery

    async def dead_letters(
        self, filters: DeadFilter, after: int, limit: int
    ) -> list[DeadLetter]:
        clauses: list[tuple[str, Any]] = [
            ("d.seq > ?", after),
            ("d.handler = ?", filters.handler),
            ("e.source = ?", filters.source),
            ("e.type LIKE ?", _glob_to_like(filters.type) if filters.type else None),
            ("e.received_at >= ?", filters.since),
            ("e.received_at < ?", filters.until),
            ("d.event_id = ?", filters.event_id),
        ]
        where, params = _numbered([(sql, v) for sql, v in clauses if v is not None])
        params.append(limit)
        sql = _DEAD_LETTERS.format(where=" AND ".join(where), limit=f"${len(params)}")
        async with self._conn() as conn:
            rows = await conn.fetch(sql, *params)
        return [DeadLetter(*row) for row in rows]

    async def retry_dead(self, delivery_ids: Sequence[str], now: float) -> list[str]:
        if not delivery_ids:
            return []
        async with self._tx() as conn:
            rows = await conn.fetch(
                "UPDATE deliveries SET status = 'pending', next_attempt_at = $1, "
                "lease_owner = NULL, lease_expires_at = NULL, updated_at = $1 "
                "WHERE status = 'dead' AND id = ANY($2::text[]) RETURNING id",
                now, list(delivery_ids))
            retried = [row["id"] for row in rows]
            await conn.execute(_REFRESH_STATUS, retried)
            if retried:  # workers elsewhere wake as for new deliveries
                await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
        return retried

    async def prune(self, before: float) -> int:
        async with self._tx() as conn:
            status = await conn.execute("DELETE FROM events WHERE received_at < $1", before)
        return int(status.split()[-1])

    # Alerts.

    async def note_alerts(self, notes: Sequence[AlertNote]) -> None:
        if not notes:
            return
        async with self._tx() as conn:
            await conn.executemany(
                "INSERT INTO alerts (subject, type, pending, first_at, last_at, data) "
                "VALUES ($1, $2, $3, $4, $4, $5) ON CONFLICT (subject) DO UPDATE SET "
                "pending = alerts.pending + excluded.pending, first_at = CASE "
                "WHEN alerts.pending = 0 THEN excluded.first_at ELSE alerts.first_at END, "
                "last_at = excluded.last_at, data = excluded.data, type = excluded.type",
                [(n.subject, n.type, n.count, n.at, json.dumps(n.data)) for n in notes])

    async def take_alerts(self, now: float, quiet_seconds: float) -> list[AlertDue]:
        async with self._conn() as conn:
            # The rows are locked by the update, so two processes never take the same count.
            rows = await conn.fetch(
                "WITH due AS (SELECT subject, type, pending, first_at, last_at, data "
                "FROM alerts WHERE pending > 0 AND (sent_at IS NULL OR sent_at <= $2) "
                "FOR UPDATE) UPDATE alerts a SET pending = 0, first_at = NULL, sent_at = $1 "
                "FROM due WHERE a.subject = due.subject RETURNING due.subject, due.type, "
                "due.pending, due.first_at, due.last_at, due.data",
                now, now - quiet_seconds)
        rows = sorted(rows, key=lambda r: r["first_at"])
        return [AlertDue(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    async def alert_cursor(self, name: str) -> int | None:
        async with self._conn() as conn:
            value = await conn.fetchval(
                "SELECT position FROM alert_cursors WHERE name = $1", name)
        return None if value is None else int(value)

    async def set_alert_cursor(self, name: str, position: int) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO alert_cursors (name, position) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position", name, position)

    # Upstream bookkeeping.

    async def take_budget(self, key: str, limit: int, now: float) -> int | None:
        async with self._conn() as conn:
            value = await conn.fetchval(
                "INSERT INTO budgets (key, used, updated_at) SELECT $1, 1, $2 WHERE $3 > 0 "
                "ON CONFLICT (key) DO UPDATE SET used = budgets.used + 1, "
                "updated_at = excluded.updated_at WHERE budgets.used < $3 RETURNING used",
                key, now, limit)
        return None if value is None else int(value)

    async def refund_budget(self, key: str, now: float) -> None:
        async with self._conn() as conn:
            await conn.execute("UPDATE budgets SET used = greatest(0, used - 1), "
                               "updated_at = $1 WHERE key = $2", now, key)

    async def budget_used(self, keys: Sequence[str]) -> dict[str, int]:
        async with self._conn() as conn:
            rows = await conn.fetch("SELECT key, used FROM budgets WHERE key = ANY($1::text[])",
                                    list(keys))
        return {r["key"]: r["used"] for r in rows}

    async def open_polls(self, keys: Sequence[str]) -> set[str]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT key FROM polls WHERE key = ANY($1::text[]) "
                "AND status IN ('waiting', 'running')", list(keys))
        return {r["key"] for r in rows}

    async def mark_once(self, key: str, now: float) -> bool:
        async with self._conn() as conn:
            status = await conn.execute(
                "INSERT INTO marks (key, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                key, now)
        return bool(status == "INSERT 0 1")

    async def add_poll(
        self, handler: str, kind: str, key: str, data: dict[str, Any], event_id: str | None,
        next_at: float, deadline: float, now: float,
    ) -> str:
        poll_id = new_id("pol", now)
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO polls (id, handler, kind, key, data, event_id, status, next_at, "
                "deadline, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'waiting', "
                "$7, $8, $9, $9)", poll_id, handler, kind, key, json.dumps(data), event_id,
                next_at, deadline, now)
        return poll_id

    async def claim_polls(
        self, owner: str, now: float, lease_seconds: float, limit: int
    ) -> list[PollClaim]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "UPDATE polls SET status = 'running', lease_owner = $1, lease_expires_at = $2, "
                "attempts = attempts + 1, updated_at = $3 WHERE id IN (SELECT id FROM polls "
                "WHERE (status = 'waiting' AND next_at <= $3) OR (status = 'running' "
                "AND lease_expires_at <= $3) ORDER BY next_at LIMIT $4 FOR UPDATE SKIP LOCKED) "
                "RETURNING id, handler, kind, key, data, event_id, attempts, deadline",
                owner, now + lease_seconds, now, limit)
        return [PollClaim(r["id"], r["handler"], r["kind"], r["key"], json.loads(r["data"]),
                          r["event_id"], r["attempts"], r["deadline"]) for r in rows]

    async def finish_poll(
        self, poll_id: str, owner: str, next_at: float | None, outcome: str | None, now: float
    ) -> bool:
        async with self._conn() as conn:
            status = await conn.execute(
                "UPDATE polls SET status = $1, next_at = coalesce($2, next_at), outcome = $3, "
                "lease_owner = NULL, lease_expires_at = NULL, updated_at = $4 "
                "WHERE id = $5 AND lease_owner = $6 AND status = 'running'",
                "waiting" if next_at is not None else "done", next_at, outcome, now, poll_id,
                owner)
        return bool(status == "UPDATE 1")

    async def events_of(
        self, kind: Literal["job", "file"], entity_id: str, limit: int = 1000
    ) -> list[EventRecord]:
        column = "job_id" if kind == "job" else "file_id"
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {_EVENT_COLUMNS}, headers, query, payload FROM events "
                f"WHERE {column} = $1 ORDER BY seq LIMIT $2", entity_id, limit)
        return [_event_record(r, detail=True) for r in rows]

    async def latest_events(
        self, kind: Literal["job", "file"], since: float, until: float
    ) -> list[LatestEvent]:
        column = "job_id" if kind == "job" else "file_id"
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT e.{column} AS entity, e.id, e.source, e.type, e.received_at "
                f"FROM events e JOIN (SELECT max(seq) AS seq FROM events WHERE {column} IS NOT "
                f"NULL AND received_at >= $1 GROUP BY {column}) newest ON newest.seq = e.seq "
                f"WHERE e.received_at < $2", since, until)
        return [LatestEvent(r["entity"], r["id"], r["source"], r["type"], r["received_at"])
                for r in rows]


    # The rejections log.

    async def add_rejections(self, rows: Sequence[NewRejection]) -> None:
        if not rows:
            return
        async with self._tx() as conn:
            await conn.executemany(_numbered_sql(rejections.INSERT), [
                rejections.insert_values(row, row.details, row.headers) for row in rows])

    async def list_rejections(
        self, filters: RejectionFilter, limit: int, cursor: str | None = None
    ) -> RejectionPage:
        sql, params = rejections.list_query(filters, limit, cursor)
        async with self._conn() as conn:
            rows = await conn.fetch(_numbered_sql(sql), *params)
        return rejections.page(rows, limit)

    async def get_rejection(self, rejection_id: str) -> RejectionRecord | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(_numbered_sql(rejections.GET), rejection_id)
        if row is None:
            return None
        return rejections.record(row, row["details"], row["headers"])

    async def prune_rejections(self, before: float, keep: int) -> int:
        async with self._tx() as conn:
            status = await conn.execute(_numbered_sql(rejections.PRUNE_OLD), before)
            pruned = int(status.split()[-1])
            first = await conn.fetchrow(_numbered_sql(rejections.FIRST_OVER_CAP), keep)
            if first is not None:
                at, seq = first
                status = await conn.execute(_numbered_sql(rejections.PRUNE_FROM), at, at, seq)
                pruned += int(status.split()[-1])
        return pruned


async def _horizons(conn: asyncpg.Connection) -> tuple[int, int]:
    """The positions below which events and outcomes are final (see _HORIZONS)."""
    row = await conn.fetchrow(_HORIZONS)
    assert row is not None
    return int(row[0]), int(row[1])


async def _resolve(
    conn: asyncpg.Connection, events: Sequence[NewEvent], inserted: set[str]
) -> list[Saved]:
    results = []
    for event in events:
        if event.id in inserted:
            results.append(Saved(event.id, duplicate=False))
            continue
        first = await conn.fetchval(
            "SELECT id FROM events WHERE source = $1 AND dedupe_key = $2",
            event.source, event.dedupe_key)
        results.append(Saved(first, duplicate=True))
    return results


def _batch_json(events: Sequence[NewEvent]) -> str:
    return json.dumps([{
        "id": e.id, "source": e.source, "type": e.type, "dedupe_key": e.dedupe_key,
        "status": "pending" if e.handlers else "unrouted", "received_at": e.received_at,
        "occurred_at": e.occurred_at, "job_id": e.job_id, "file_id": e.file_id,
        "company_id": e.company_id, "task_ids": list(e.task_ids), "handlers": list(e.handlers),
        "headers": e.headers, "query": e.query, "payload": e.payload,
        "body": e.body.decode("utf-8"),
    } for e in events], ensure_ascii=False)


def _glob_to_like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _event_clauses(filters: EventFilter) -> list[tuple[str, Any]]:
    clauses: list[tuple[str, Any]] = [
        ("source = ?", filters.source),
        ("type LIKE ?", _glob_to_like(filters.type) if filters.type else None),
        ("status = ?", filters.status),
        ("job_id = ?", filters.job_id),
        ("file_id = ?", filters.file_id),
        ("received_at >= ?", filters.since),
        ("received_at < ?", filters.until),
    ]
    return [(sql, value) for sql, value in clauses if value is not None]


def _and(where: Sequence[str]) -> str:
    return " WHERE " + " AND ".join(where) if where else ""


def _numbered_sql(sql: str) -> str:
    """A statement written with `?` placeholders, numbered as PostgreSQL wants them."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))


def _numbered(clauses: list[tuple[str, Any]]) -> tuple[list[str], list[Any]]:
    where, params = [], []
    for sql, value in clauses:
        params.append(value)
        where.append(sql.replace("?", f"${len(params)}"))
    return where, params


def _event_record(row: Any, detail: bool = False) -> EventRecord:
    extra: dict[str, Any] = {}
    keys = row.keys()
    if detail:
        extra = {"headers": row["headers"], "query": row["query"], "payload": row["payload"]}
        if "body" in keys:
            extra["body"] = bytes(row["body"])
    return EventRecord(
        id=row["id"], source=row["source"], type=row["type"], upstream_id=row["dedupe_key"],
        status=row["status"], received_at=row["received_at"], occurred_at=row["occurred_at"],
        job_id=row["job_id"], file_id=row["file_id"], company_id=row["company_id"],
        task_ids=row["task_ids"], **extra,
    )


def _delivery_record(row: Any) -> DeliveryRecord:
    keys = DeliveryRecord.model_fields.keys() & set(row.keys())
    return DeliveryRecord(**{key: row[key] for key in keys})
