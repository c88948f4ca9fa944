"""The SQLite backend (aiosqlite, WAL): the embedded default.

One connection writes and one reads, so readers never wait for the writer (WAL). Writes come in
batches from the intake's single writer: the whole batch goes in one transaction with
`synchronous=FULL`, so a commit is on disk before anyone is told it succeeded. If any row of a
batch fails, the batch is redone row by row under savepoints, so one bad row never undoes
another request's row.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, Literal, TypeVar

import aiosqlite

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

_INSERT_EVENT = """
INSERT INTO events (id, source, type, dedupe_key, status, received_at, occurred_at, job_id,
                    file_id, company_id, task_ids, handlers, headers, query, payload, body)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (source, dedupe_key) DO NOTHING
"""
# The whole batch as one JSON array bound to one statement: SQLite unpacks it in C, so a batch
# costs one statement step instead of one per row.
_INSERT_EVENTS_JSON = """
INSERT INTO events (id, source, type, dedupe_key, status, received_at, occurred_at, job_id,
                    file_id, company_id, task_ids, handlers, headers, query, payload, body)
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5,
       value ->> 6, value ->> 7, value ->> 8, value ->> 9, value -> 10, value -> 11,
       value -> 12, value ->> 13, value -> 14, CAST(value ->> 15 AS BLOB)
FROM json_each(?) WHERE true
ON CONFLICT (source, dedupe_key) DO NOTHING
RETURNING id
"""
# A finished batch arrives as a JSON array of [delivery_id, attempt, ended_at, outcome, error,
# http_status, status, next_attempt_at, owner]. Finished attempts take the next positions in
# `done_seq`, in the batch's order (the subquery is evaluated once per statement).
_FINISHED = """
SELECT key + 1 AS n, value ->> 0 AS delivery_id, value ->> 1 AS attempt, value ->> 2 AS ended_at,
       value ->> 3 AS outcome, value ->> 4 AS error, value ->> 5 AS http_status,
       value ->> 6 AS status, value ->> 7 AS next_attempt_at, value ->> 8 AS owner
FROM json_each(?)
"""
_FINISH_ATTEMPTS = f"""
UPDATE attempts SET ended_at = r.ended_at, outcome = r.outcome, error = r.error,
    http_status = r.http_status,
    done_seq = (SELECT coalesce(max(done_seq), 0) FROM attempts) + r.n
FROM ({_FINISHED}) AS r
WHERE attempts.delivery_id = r.delivery_id AND attempts.number = r.attempt
"""
_FINISH_DELIVERIES = f"""
UPDATE deliveries SET status = r.status, next_attempt_at = r.next_attempt_at, lease_owner = NULL,
    lease_expires_at = NULL, last_error = r.error, updated_at = r.ended_at
FROM ({_FINISHED}) AS r
WHERE deliveries.id = r.delivery_id AND deliveries.lease_owner = r.owner
    AND deliveries.attempts = r.attempt AND deliveries.status = 'running'
RETURNING deliveries.id, deliveries.attempts
"""
_INSERT_DELIVERY = """
INSERT INTO deliveries (id, event_id, handler, status, attempts, next_attempt_at, created_at,
                        updated_at)
VALUES (?, ?, ?, 'pending', 0, ?, ?, ?)
"""
_EVENT_COLUMNS = (
    "seq, id, source, type, dedupe_key, status, received_at, occurred_at, job_id, file_id, "
    "company_id, task_ids"
)
_SQLITE_ERRORS = (sqlite3.Error, OverflowError, ValueError)
T = TypeVar("T")


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("app.store") / "migrations" / "sqlite"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


async def _fetchall(conn: aiosqlite.Connection, sql: str, params: Any = ()) -> list[sqlite3.Row]:
    """Every row of one statement, as a list (aiosqlite types its answer as an iterable)."""
    return list(await conn.execute_fetchall(sql, params))


class SQLiteStore(Store):
    def __init__(self, path: str) -> None:
        self.path = path
        # One connection writes; transactions on it must not interleave across awaits.
        self._tx = asyncio.Lock()
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._file: tuple[int, int] | None = None

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=FULL")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute("PRAGMA busy_timeout=5000")
        return conn

    async def open(self) -> None:
        try:
            self._writer = await self._connect()
            self.applied_migrations = tuple(await self.migrate())
            self._reader = await self._connect()
        except _SQLITE_ERRORS as exc:
            await self.close()
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        self._file = _identity(self.path)

    def _check_file(self) -> None:
        """Refuse to go on once the database file was removed or replaced: SQLite would keep
        writing to the open, unlinked file, and everything written would vanish on restart."""
        if self._file is not None and _identity(self.path) != self._file:
            raise StoreError(f"SQLite database {self.path} was removed or replaced")

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    @property
    def writer(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise StoreError("store is not open")
        return self._writer

    @property
    def reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreError("store is not open")
        return self._reader

    async def migrate(self) -> list[int]:
        conn = self.writer
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL DEFAULT (unixepoch()))"
        )
        rows = await _fetchall(conn, "SELECT version FROM schema_migrations")
        done = {row[0] for row in rows}
        applied = []
        for version, sql in _migrations():
            if version in done:
                continue
            # executescript commits first, so the script carries its own transaction.
            await conn.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\n"
                f"INSERT INTO schema_migrations (version) VALUES ({version});\nCOMMIT;"
            )
            applied.append(version)
        return applied

    async def backup(self, target: str) -> None:
        """SQLite's online backup: a consistent copy while the server goes on writing."""
        if os.path.exists(target):
            raise StoreError(f"{target} exists already: a backup is written to a new file")
        copy = sqlite3.connect(target, check_same_thread=False)
        try:
            async with self._tx:
                await self.writer.backup(copy)
        except _SQLITE_ERRORS as exc:
            raise StoreError(f"backup to {target} failed: {exc}") from exc
        finally:
            copy.close()

    async def ping(self) -> None:
        self._check_file()
        try:
            await _fetchall(self.reader, "SELECT 1 FROM schema_migrations LIMIT 1")
            await _fetchall(self.writer, "SELECT 1")
        except _SQLITE_ERRORS as exc:
            raise StoreError(str(exc)) from exc

    async def save_events(self, events: Sequence[NewEvent]) -> list[Saved | StoreError]:
        return await _to_the_end(self._save_batch(events))

    async def _save_batch(self, events: Sequence[NewEvent]) -> list[Saved | StoreError]:
        async with self._tx:
            self._check_file()
            results = await self._save_events(self.writer, events)
            # Checked again after the commit: rows that went to a file removed meanwhile are
            # not stored, and must not be acknowledged.
            self._check_file()
            return results

    async def _save_events(
        self, conn: aiosqlite.Connection, events: Sequence[NewEvent]
    ) -> list[Saved | StoreError]:
        # The whole batch is one autocommit statement (the trigger adds the deliveries), so it
        # costs one round trip to the connection's thread: under load each trip waits its turn
        # on a busy event loop, and those waits are most of a batch's latency.
        try:
            rows = await _fetchall(conn, _INSERT_EVENTS_JSON, (_events_json(events),))
            return list(await self._resolve(conn, events, {row[0] for row in rows}))
        except _SQLITE_ERRORS:
            await _rollback(conn)
        return await self._save_one_by_one(conn, events)

    async def _save_one_by_one(
        self, conn: aiosqlite.Connection, events: Sequence[NewEvent]
    ) -> list[Saved | StoreError]:
        results: list[Saved | StoreError] = []
        try:
            await conn.execute("BEGIN IMMEDIATE")
            for event in events:
                try:
                    await conn.execute("SAVEPOINT one")
                    cursor = await conn.execute(_INSERT_EVENT, _event_row(event))
                    inserted = {event.id} if cursor.rowcount == 1 else set()
                    [saved] = await self._resolve(conn, [event], inserted)
                    await conn.execute("RELEASE one")
                    results.append(saved)
                except _SQLITE_ERRORS as exc:
                    await conn.execute("ROLLBACK TO one")
                    await conn.execute("RELEASE one")
                    results.append(StoreError(f"event not stored: {exc}"))
            await conn.commit()
        except _SQLITE_ERRORS as exc:
            await _rollback(conn)
            return [StoreError(f"batch not stored: {exc}") for _ in events]
        return results

    async def _resolve(
        self, conn: aiosqlite.Connection, events: Sequence[NewEvent], inserted: set[str]
    ) -> list[Saved]:
        """Tell new rows from duplicates: a row not inserted lost to a dedupe conflict, and
        the first event's id is looked up by its key."""
        results = []
        for event in events:
            if event.id in inserted:
                results.append(Saved(event.id, duplicate=False))
                continue
            first = await _fetchall(conn,
                "SELECT id FROM events WHERE source = ? AND dedupe_key = ?",
                (event.source, event.dedupe_key),
            )
            results.append(Saved(first[0][0], duplicate=True))
        return results

    async def get_event(self, event_id: str) -> EventRecord | None:
        try:
            rows = await _fetchall(self.reader,
                f"SELECT {_EVENT_COLUMNS}, headers, query, payload FROM events WHERE id = ?",
                (event_id,),
            )
            if not rows:
                return None
            record = _event_record(rows[0], detail=True)
            record.deliveries = await self._deliveries(event_id)
            return record
        except _SQLITE_ERRORS as exc:
            raise StoreError(str(exc)) from exc

    async def _deliveries(self, event_id: str) -> list[DeliveryRecord]:
        rows = await _fetchall(self.reader,
            "SELECT * FROM deliveries WHERE event_id = ? ORDER BY created_at, handler",
            (event_id,),
        )
        deliveries = [_delivery_record(row) for row in rows]
        for delivery in deliveries:
            attempts = await _fetchall(self.reader,
                "SELECT number, started_at, ended_at, outcome, error, http_status "
                "FROM attempts WHERE delivery_id = ? ORDER BY number",
                (delivery.id,),
            )
            delivery.attempt_log = [AttemptRecord(**dict(row)) for row in attempts]
        return deliveries

    async def list_events(
        self, filters: EventFilter, limit: int, cursor: str | None = None
    ) -> EventPage:
        where, params = _event_where(filters)
        if cursor is not None:
            where.append("seq < ?")
            params.append(decode_cursor(cursor))
        # The page's positions are chosen from an index alone and only those rows are read:
        # a time window otherwise reads every row of the window in full, to sort them.
        window = f"SELECT seq FROM events{_and(where)} ORDER BY seq DESC LIMIT ?"
        floor = None
        if filters.q is None:
            sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq IN ({window})"
            params.append(limit + 1)
        else:
            # Only the newest Q_SCAN_ROWS rows that pass the other filters are searched.
            scanned = await self._read(
                f"SELECT count(*), min(seq) FROM ({window})", [*params, Q_SCAN_ROWS]
            )
            if scanned[0][0] == Q_SCAN_ROWS:
                floor = scanned[0][1]
            sql = (f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq IN ({window}) "
                   f"AND instr(body, CAST(? AS BLOB)) > 0")
            params += [Q_SCAN_ROWS, filters.q.encode()]
        rows = await self._read(sql + " ORDER BY seq DESC LIMIT ?", [*params, limit + 1])
        items = [_event_record(row) for row in rows[:limit]]
        if len(rows) > limit:
            return EventPage(items=items, next_cursor=encode_cursor(rows[limit - 1]["seq"]))
        return EventPage(items=items, next_cursor=encode_cursor(floor) if floor else None)

    async def raw_body(self, event_id: str) -> tuple[bytes, str] | None:
        rows = await self._read("SELECT body, headers FROM events WHERE id = ?", [event_id])
        if not rows:
            return None
        headers = json.loads(rows[0]["headers"])
        return bytes(rows[0]["body"]), headers.get("content-type", "application/json")

    # The live tail and dashboards.

    async def heads(self) -> tuple[int, int]:
        rows = await self._read(
            "SELECT (SELECT max(seq) FROM events), (SELECT max(done_seq) FROM attempts)", []
        )
        return rows[0][0] or 0, rows[0][1] or 0

    async def tail_events(
        self, filters: EventFilter, after: int, limit: int
    ) -> list[tuple[int, EventRecord]]:
        where, params = _event_where(filters)
        rows = await self._read(
            f"SELECT {_EVENT_COLUMNS} FROM events{_and([*where, 'seq > ?'])} "
            f"ORDER BY seq LIMIT ?",
            [*params, after, limit],
        )
        return [(row["seq"], _event_record(row)) for row in rows]

    async def tail_outcomes(
        self, filters: EventFilter, after: int, limit: int
    ) -> list[tuple[int, Outcome]]:
        where, params = _event_where(filters, "e.")
        rows = await self._read(
            f"SELECT a.done_seq, a.delivery_id, d.event_id, e.type, d.handler, a.number, "
            f"a.outcome, d.status, a.ended_at, a.error FROM attempts a "
            f"JOIN deliveries d ON d.id = a.delivery_id JOIN events e ON e.id = d.event_id"
            f"{_and([*where, 'a.done_seq > ?'])} ORDER BY a.done_seq LIMIT ?",
            [*params, after, limit],
        )
        return [(row[0], Outcome(*row[1:])) for row in rows]

    async def add_ingest_counts(self, counts: Sequence[IngestCount]) -> None:
        async def steps(conn: aiosqlite.Connection) -> None:
            await conn.executemany(
                "INSERT INTO ingest_counts (minute, source, outcome, reason, count) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (minute, source, outcome, reason) "
                "DO UPDATE SET count = count + excluded.count",
                [(c.minute, c.source, c.outcome, c.reason, c.count) for c in counts],
            )

        if counts:
            await self._write(steps)

    async def stats(self, since: float, until: float, minutes_from: int) -> StatsRows:
        window = (since, until)
        from_ = minutes_from * 60
        events = await self._read(
            "SELECT type, status, source, count(*) FROM events "
            "WHERE received_at >= ? AND received_at <= ? GROUP BY type, status, source", window)
        accepted = await self._read(
            "SELECT CAST(received_at / 60 AS INTEGER), count(*) FROM events "
            "WHERE received_at >= ? AND received_at <= ? GROUP BY 1", (from_, until))
        counts = await self._read(
            "SELECT minute, source, outcome, reason, count FROM ingest_counts "
            "WHERE minute >= ? AND minute <= ?",
            (min(int(since // 60), minutes_from), int(until // 60)))
        attempts = await self._read(
            "SELECT d.handler, a.outcome, count(*) FROM attempts a "
            "JOIN deliveries d ON d.id = a.delivery_id "
            "WHERE a.ended_at >= ? AND a.ended_at <= ? GROUP BY d.handler, a.outcome", window)
        failed = await self._read(
            "SELECT CAST(ended_at / 60 AS INTEGER), count(*) FROM attempts "
            "WHERE ended_at >= ? AND ended_at <= ? AND outcome NOT IN ('succeeded', 'running') "
            "GROUP BY 1", (from_, until))
        gauges = await self.gauges()
        return StatsRows.from_rows(events, accepted, counts, attempts, failed, gauges.dead)

    async def handler_rows(self, since: float, until: float) -> HandlerRows:
        backlog = await self._read(_BACKLOG, [])
        attempts = await self._read(_ATTEMPT_TIMES, [since, until])
        return HandlerRows([(r[0], r[1], r[2], r[3]) for r in backlog],
                           [(r[0], r[1], r[2], r[3]) for r in attempts])

    async def source_rows(self, sources: Sequence[str], since: float, until: float) -> SourceRows:
        accepted = await self._read(
            "SELECT source, count(*) FROM events WHERE received_at >= ? AND received_at <= ? "
            "GROUP BY source", [since, until])
        counts = await self._read(
            "SELECT minute, source, outcome, reason, count FROM ingest_counts "
            "WHERE minute >= ? AND minute <= ?", [int(since // 60), int(until // 60)])
        last: dict[str, float] = {}
        for source in sources:
            rows = await self._read(_LAST_OF_SOURCE, [source])
            if rows:
                last[source] = rows[0][0]
        return SourceRows({r[0]: r[1] for r in accepted}, [IngestCount(*r) for r in counts], last)

    async def gauges(self) -> Gauges:
        rows = await self._read(
            "SELECT status, count(*) FROM deliveries "
            "WHERE status IN ('pending', 'running', 'dead') GROUP BY status", [])
        found = {row[0]: row[1] for row in rows}
        return Gauges(found.get("pending", 0), found.get("running", 0), found.get("dead", 0))

    # Dispatch.

    async def _write(self, sql_steps: Any) -> Any:
        """Run `sql_steps(conn)` in one write transaction under the writer lock."""
        return await _to_the_end(self._transaction(sql_steps))

    async def _transaction(self, sql_steps: Any) -> Any:
        async with self._tx:
            self._check_file()
            conn = self.writer
            try:
                await conn.execute("BEGIN IMMEDIATE")
                result = await sql_steps(conn)
                await conn.commit()
                return result
            except _SQLITE_ERRORS as exc:
                await _rollback(conn)
                raise StoreError(str(exc)) from exc

    async def claim_due(
        self, owner: str, now: float, lease_seconds: float, limit: int,
        per_handler: Mapping[str, int] | None = None,
    ) -> list[Claim]:
        if per_handler is not None and not any(n > 0 for n in per_handler.values()):
            return []
        sql, params = _due(now, limit, per_handler)

        async def steps(conn: aiosqlite.Connection) -> list[Claim]:
            rows = await _fetchall(conn, sql, params)
            ids = [row[0] for row in rows]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            # The deliveries_claimed trigger opens each claim's attempt row (and marks an
            # attempt left open by an expired lease lost).
            await conn.execute(
                f"UPDATE deliveries SET status = 'running', lease_owner = ?, "
                f"lease_expires_at = ?, attempts = attempts + 1, updated_at = ? "
                f"WHERE id IN ({marks})",
                (owner, now + lease_seconds, now, *ids),
            )
            claimed = await _fetchall(conn,
                f"SELECT d.id AS delivery_id, d.handler, d.attempts, {_EVENT_COLUMNS_E}, "
                f"e.headers, e.query, e.payload, e.body FROM deliveries d "
                f"JOIN events e ON e.id = d.event_id WHERE d.id IN ({marks})",
                ids,
            )
            order = {delivery_id: n for n, delivery_id in enumerate(ids)}
            claims = [
                Claim(row["delivery_id"], row["handler"], row["attempts"],
                      _event_record(row, detail=True))
                for row in claimed
            ]
            return sorted(claims, key=lambda c: order[c.delivery_id])

        result: list[Claim] = await self._write(steps)
        return result

    async def finish(self, results: Sequence[Finished]) -> list[bool | StoreError]:
        # The whole batch in two statements rather than two per result: each statement is a
        # round trip to the connection's thread, taken while every other write waits.
        batch = json.dumps([
            [r.delivery_id, r.attempt, r.ended_at, r.outcome, r.error, r.http_status, r.status,
             r.next_attempt_at, r.owner]
            for r in results
        ])

        async def steps(conn: aiosqlite.Connection) -> list[bool | StoreError]:
            await conn.execute(_FINISH_ATTEMPTS, (batch,))
            rows = await _fetchall(conn, _FINISH_DELIVERIES, (batch,))
            held = {(row[0], row[1]) for row in rows}
            await _refresh_event_status(conn, [r.delivery_id for r in results])
            return [(r.delivery_id, r.attempt) in held for r in results]

        outcome: list[bool | StoreError] = await self._write(steps)
        return outcome

    async def release(self, owner: str, delivery_ids: Sequence[str], now: float) -> int:
        if not delivery_ids:
            return 0
        marks = ",".join("?" * len(delivery_ids))

        async def steps(conn: aiosqlite.Connection) -> int:
            await conn.execute(
                f"DELETE FROM attempts WHERE outcome = 'running' AND delivery_id IN "
                f"(SELECT id FROM deliveries WHERE lease_owner = ? AND id IN ({marks}))",
                (owner, *delivery_ids),
            )
            cursor = await conn.execute(
                f"UPDATE deliveries SET status = 'pending', attempts = attempts - 1, "
                f"next_attempt_at = ?, lease_owner = NULL, lease_expires_at = NULL, "
                f"updated_at = ? WHERE lease_owner = ? AND status = 'running' AND id IN ({marks})",
                (now, now, owner, *delivery_ids),
            )
            return cursor.rowcount

        released: int = await self._write(steps)
        return released

    async def reap_expired(self, now: float) -> int:
        async def steps(conn: aiosqlite.Connection) -> int:
            await conn.execute(
                "UPDATE attempts SET outcome = 'lost', ended_at = ?, error = 'lease expired' "
                "WHERE outcome = 'running' AND delivery_id IN (SELECT id FROM deliveries "
                "WHERE status = 'running' AND lease_expires_at <= ?)",
                (now, now),
            )
            cursor = await conn.execute(
                "UPDATE deliveries SET status = 'pending', next_attempt_at = ?, "
                "lease_owner = NULL, lease_expires_at = NULL, updated_at = ? "
                "WHERE status = 'running' AND lease_expires_at <= ?",
                (now, now, now),
            )
            return cursor.rowcount

        reaped: int = await self._write(steps)
        return reaped

    async def next_due_at(self) -> float | None:
        try:
            rows = await _fetchall(self.reader,
                "SELECT min(t) FROM (SELECT min(next_attempt_at) AS t FROM deliveries "
                "WHERE status = 'pending' UNION ALL SELECT min(lease_expires_at) FROM deliveries "
                "WHERE status = 'running')"
            )
        except _SQLITE_ERRORS as exc:
            raise StoreError(str(exc)) from exc
        value = rows[0][0]
        return None if value is None else float(value)

    async def add_deliveries(
        self, event_id: str, handlers: Sequence[str], now: float
    ) -> list[str]:
        ids = [new_id("dlv", now) for _ in handlers]

        async def steps(conn: aiosqlite.Connection) -> list[str]:
            await conn.executemany(
                _INSERT_DELIVERY,
                [(i, event_id, handler, now, now, now) for i, handler in zip(ids, handlers, strict=True)],
            )
            await conn.execute("UPDATE events SET status = 'pending' WHERE id = ?", (event_id,))
            return ids

        added: list[str] = await self._write(steps)
        return added

    async def list_deliveries(
        self,
        status: str | None,
        handler: str | None,
        limit: int,
        cursor: str | None = None,
        event_type: str | None = None,
        since: float | None = None,
    ) -> DeliveryPage:
        clauses: list[tuple[str, Any]] = [
            ("d.status = ?", status),
            ("d.handler = ?", handler),
            ("e.type GLOB ?", event_type),
            ("e.received_at >= ?", since),
            ("d.seq < ?", decode_cursor(cursor) if cursor else None),
        ]
        used = [(sql, value) for sql, value in clauses if value is not None]
        sql = "SELECT d.*, e.type AS event_type FROM deliveries d JOIN events e ON e.id = d.event_id"
        if used:
            sql += " WHERE " + " AND ".join(clause for clause, _ in used)
        sql += " ORDER BY d.seq DESC LIMIT ?"
        try:
            rows = await _fetchall(self.reader, sql, [v for _, v in used] + [limit + 1])
        except _SQLITE_ERRORS as exc:
            raise StoreError(str(exc)) from exc
        items = [_delivery_record(row) for row in rows[:limit]]
        next_cursor = encode_cursor(rows[limit - 1]["seq"]) if len(rows) > limit else None
        return DeliveryPage(items=items, next_cursor=next_cursor)

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        rows = await self._read(
            "SELECT d.*, e.type AS event_type FROM deliveries d JOIN events e ON e.id = d.event_id "
            "WHERE d.id = ?", [delivery_id])
        if not rows:
            return None
        delivery = _delivery_record(rows[0])
        attempts = await self._read(
            "SELECT number, started_at, ended_at, outcome, error, http_status "
            "FROM attempts WHERE delivery_id = ? ORDER BY number", [delivery_id])
        delivery.attempt_log = [AttemptRecord(**dict(row)) for row in attempts]
        return delivery

    async def dead_letters(
        self, filters: DeadFilter, after: int, limit: int
    ) -> list[DeadLetter]:
        clauses: list[tuple[str, Any]] = [
            ("d.handler = ?", filters.handler),
            ("e.source = ?", filters.source),
            ("e.type GLOB ?", filters.type),
            ("e.received_at >= ?", filters.since),
            ("e.received_at < ?", filters.until),
            ("d.event_id = ?", filters.event_id),
        ]
        used = [(sql, value) for sql, value in clauses if value is not None]
        rows = await self._read(
            _DEAD_LETTERS.format(where="".join(f" AND {sql}" for sql, _ in used)),
            [after, *(value for _, value in used), limit],
        )
        return [DeadLetter(*row) for row in rows]

    async def retry_dead(self, delivery_ids: Sequence[str], now: float) -> list[str]:
        if not delivery_ids:
            return []
        marks = ",".join("?" * len(delivery_ids))

        async def steps(conn: aiosqlite.Connection) -> list[str]:
            rows = await conn.execute_fetchall(
                f"UPDATE deliveries SET status = 'pending', next_attempt_at = ?, "
                f"lease_owner = NULL, lease_expires_at = NULL, updated_at = ? "
                f"WHERE status = 'dead' AND id IN ({marks}) RETURNING id",
                (now, now, *delivery_ids),
            )
            retried = [row[0] for row in rows]
            await _refresh_event_status(conn, retried)
            return retried

        retried: list[str] = await self._write(steps)
        return retried

    async def prune(self, before: float) -> int:
        async def steps(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute("DELETE FROM events WHERE received_at < ?", (before,))
            return cursor.rowcount

        pruned: int = await self._write(steps)
        return pruned

    # Alerts.

    async def note_alerts(self, notes: Sequence[AlertNote]) -> None:
        async def steps(conn: aiosqlite.Connection) -> None:
            await conn.executemany(
                _NOTE_ALERT, [(n.subject, n.type, n.count, n.at, n.at, json.dumps(n.data))
                              for n in notes])

        if notes:
            await self._write(steps)

    async def take_alerts(self, now: float, quiet_seconds: float) -> list[AlertDue]:
        async def steps(conn: aiosqlite.Connection) -> list[AlertDue]:
            rows = await conn.execute_fetchall(
                "SELECT subject, type, pending, first_at, last_at, data FROM alerts "
                "WHERE pending > 0 AND (sent_at IS NULL OR sent_at <= ?) ORDER BY first_at",
                (now - quiet_seconds,))
            due = [AlertDue(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]
            await conn.executemany(
                "UPDATE alerts SET pending = 0, first_at = NULL, sent_at = ? WHERE subject = ?",
                [(now, d.subject) for d in due])
            return due

        taken: list[AlertDue] = await self._write(steps)
        return taken

    async def alert_cursor(self, name: str) -> int | None:
        rows = await self._read("SELECT position FROM alert_cursors WHERE name = ?", [name])
        return int(rows[0][0]) if rows else None

    async def set_alert_cursor(self, name: str, position: int) -> None:
        async def steps(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT INTO alert_cursors (name, position) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position", (name, position))

        await self._write(steps)

    # Upstream bookkeeping.

    async def take_budget(self, key: str, limit: int, now: float) -> int | None:
        async def steps(conn: aiosqlite.Connection) -> int | None:
            rows = await _fetchall(conn,
                "INSERT INTO budgets (key, used, updated_at) SELECT ?, 1, ? WHERE ? > 0 "
                "ON CONFLICT (key) DO UPDATE SET used = used + 1, updated_at = excluded.updated_at "
                "WHERE used < ? RETURNING used",
                (key, now, limit, limit),
            )
            return int(rows[0][0]) if rows else None

        used: int | None = await self._write(steps)
        return used

    async def refund_budget(self, key: str, now: float) -> None:
        async def steps(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE budgets SET used = max(0, used - 1), updated_at = ? WHERE key = ?",
                (now, key),
            )

        await self._write(steps)

    async def budget_used(self, keys: Sequence[str]) -> dict[str, int]:
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        rows = await self._read(f"SELECT key, used FROM budgets WHERE key IN ({marks})", keys)
        return {row[0]: row[1] for row in rows}

    async def open_polls(self, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        marks = ",".join("?" * len(keys))
        rows = await self._read(
            f"SELECT DISTINCT key FROM polls WHERE key IN ({marks}) "
            "AND status IN ('waiting', 'running')", keys)
        return {row[0] for row in rows}

    async def mark_once(self, key: str, now: float) -> bool:
        async def steps(conn: aiosqlite.Connection) -> bool:
            cursor = await conn.execute(
                "INSERT INTO marks (key, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (key, now),
            )
            return cursor.rowcount == 1

        fresh: bool = await self._write(steps)
        return fresh

    async def add_poll(
        self, handler: str, kind: str, key: str, data: dict[str, Any], event_id: str | None,
        next_at: float, deadline: float, now: float,
    ) -> str:
        poll_id = new_id("pol", now)

        async def steps(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT INTO polls (id, handler, kind, key, data, event_id, status, next_at, "
                "deadline, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'waiting', ?, ?, ?, ?)",
                (poll_id, handler, kind, key, json.dumps(data), event_id, next_at, deadline,
                 now, now),
            )

        await self._write(steps)
        return poll_id

    async def claim_polls(
        self, owner: str, now: float, lease_seconds: float, limit: int
    ) -> list[PollClaim]:
        async def steps(conn: aiosqlite.Connection) -> list[PollClaim]:
            rows = await _fetchall(conn,
                "UPDATE polls SET status = 'running', lease_owner = ?, lease_expires_at = ?, "
                "attempts = attempts + 1, updated_at = ? WHERE id IN (SELECT id FROM polls "
                "WHERE (status = 'waiting' AND next_at <= ?) OR (status = 'running' "
                "AND lease_expires_at <= ?) ORDER BY next_at LIMIT ?) "
                "RETURNING id, handler, kind, key, data, event_id, attempts, deadline",
                (owner, now + lease_seconds, now, now, now, limit),
            )
            return [
                PollClaim(r["id"], r["handler"], r["kind"], r["key"], json.loads(r["data"]),
                          r["event_id"], r["attempts"], r["deadline"])
                for r in rows
            ]

        claims: list[PollClaim] = await self._write(steps)
        return claims

    async def finish_poll(
        self, poll_id: str, owner: str, next_at: float | None, outcome: str | None, now: float
    ) -> bool:
        status = "waiting" if next_at is not None else "done"

        async def steps(conn: aiosqlite.Connection) -> bool:
            cursor = await conn.execute(
                "UPDATE polls SET status = ?, next_at = coalesce(?, next_at), outcome = ?, "
                "lease_owner = NULL, lease_expires_at = NULL, updated_at = ? "
                "WHERE id = ? AND lease_owner = ? AND status = 'running'",
                (status, next_at, outcome, now, poll_id, owner),
            )
            return cursor.rowcount == 1

        held: bool = await self._write(steps)
        return held

    async def events_of(
        self, kind: Literal["job", "file"], entity_id: str, limit: int = 1000
    ) -> list[EventRecord]:
        column = "job_id" if kind == "job" else "file_id"
        rows = await self._read(
            f"SELECT {_EVENT_COLUMNS}, headers, query, payload FROM events "
            f"WHERE {column} = ? ORDER BY seq LIMIT ?",
            (entity_id, limit),
        )
        return [_event_record(row, detail=True) for row in rows]

    async def latest_events(
        self, kind: Literal["job", "file"], since: float, until: float
    ) -> list[LatestEvent]:
        column = "job_id" if kind == "job" else "file_id"
        rows = await self._read(
            f"SELECT e.{column} AS entity, e.id, e.source, e.type, e.received_at FROM events e "
            f"JOIN (SELECT max(seq) AS seq FROM events WHERE {column} IS NOT NULL "
            f"AND received_at >= ? GROUP BY {column}) newest ON newest.seq = e.seq "
            f"WHERE e.received_at < ?",
            (since, until),
        )
        return [LatestEvent(r["entity"], r["id"], r["source"], r["type"], r["received_at"])
                for r in rows]

    # The rejections log.

    async def add_rejections(self, rows: Sequence[NewRejection]) -> None:
        async def steps(conn: aiosqlite.Connection) -> None:
            await conn.executemany(rejections.INSERT, [
                rejections.insert_values(row, json.dumps(row.details), json.dumps(row.headers))
                for row in rows])

        if rows:
            await self._write(steps)

    async def list_rejections(
        self, filters: RejectionFilter, limit: int, cursor: str | None = None
    ) -> RejectionPage:
        sql, params = rejections.list_query(filters, limit, cursor)
        return rejections.page(await self._read(sql, params), limit)

    async def get_rejection(self, rejection_id: str) -> RejectionRecord | None:
        rows = await self._read(rejections.GET, [rejection_id])
        if not rows:
            return None
        row = rows[0]
        return rejections.record(row, json.loads(row["details"]), json.loads(row["headers"]))

    async def prune_rejections(self, before: float, keep: int) -> int:
        # The cap's boundary is found on the reader, so the writer (and ingest behind it) waits
        # only for the deletes. Rows added meanwhile are newer: the boundary still holds.
        first = await self._read(rejections.FIRST_OVER_CAP, [keep])

        async def steps(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(rejections.PRUNE_OLD, (before,))
            pruned = cursor.rowcount
            if first:
                at, seq = first[0]
                cursor = await conn.execute(rejections.PRUNE_FROM, (at, at, seq))
                pruned += cursor.rowcount
            return pruned

        pruned: int = await self._write(steps)
        return pruned

    async def _read(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        try:
            return list(await _fetchall(self.reader, sql, params))
        except _SQLITE_ERRORS as exc:
            raise StoreError(str(exc)) from exc


_DUE = """
SELECT id FROM (
    SELECT id, next_attempt_at AS due FROM deliveries
    WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?
) UNION ALL SELECT id FROM (
    SELECT id, lease_expires_at AS due FROM deliveries
    WHERE status = 'running' AND lease_expires_at <= ? ORDER BY lease_expires_at LIMIT ?
) LIMIT ?
"""

# The same for each handler on its own, each with its own limit: a handler whose due
# deliveries come first cannot take every slot of a worker that asked for others too.
_DUE_OF_HANDLER = """
SELECT id, due FROM (
    SELECT id, next_attempt_at AS due FROM deliveries
    WHERE status = 'pending' AND handler = ? AND next_attempt_at <= ? ORDER BY next_attempt_at
    LIMIT ?
) UNION ALL SELECT id, due FROM (
    SELECT id, lease_expires_at AS due FROM deliveries
    WHERE status = 'running' AND handler = ? AND lease_expires_at <= ? ORDER BY lease_expires_at
    LIMIT ?
)
"""


def _due(
    now: float, limit: int, per_handler: Mapping[str, int] | None
) -> tuple[str, list[Any]]:
    """The statement (and its parameters) picking the ids of the deliveries to claim."""
    if per_handler is None:
        return _DUE, [now, limit, now, limit, limit]
    wanted = [(handler, n) for handler, n in per_handler.items() if n > 0]
    union = " UNION ALL ".join(f"SELECT * FROM ({_DUE_OF_HANDLER})" for _ in wanted)
    params: list[Any] = [v for h, n in wanted for v in (h, now, n, h, now, n)]
    return f"SELECT id FROM ({union}) ORDER BY due LIMIT ?", [*params, limit]


# Health: each handler's backlog from deliveries_backlog (status, handler, created_at) alone;
# attempt times from attempts_ended (the window) with each attempt's delivery by its key; the
# newest event of a source from events_source (source, seq), one row read.
_BACKLOG = """
SELECT handler, status, count(*), min(created_at) FROM deliveries
WHERE status IN ('pending', 'running', 'dead') GROUP BY handler, status
"""
_ATTEMPT_TIMES = """
SELECT d.handler, a.outcome, CAST(round((a.ended_at - a.started_at) * 1000) AS INTEGER) AS ms,
       count(*)
FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
WHERE a.ended_at >= ? AND a.ended_at <= ? GROUP BY 1, 2, 3
"""
_LAST_OF_SOURCE = "SELECT received_at FROM events WHERE source = ? ORDER BY seq DESC LIMIT 1"

# A subject's first pending occurrence opens its span; later ones extend it.
_NOTE_ALERT = """
INSERT INTO alerts (subject, type, pending, first_at, last_at, data) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (subject) DO UPDATE SET pending = alerts.pending + excluded.pending,
    first_at = CASE WHEN alerts.pending = 0 THEN excluded.first_at ELSE alerts.first_at END,
    last_at = excluded.last_at, data = excluded.data, type = excluded.type
"""

# Open dead letters in position order (deliveries_status serves `status = 'dead' AND seq > ?`;
# deliveries_event serves the check for a later delivery of the same event and handler: named,
# because the planner otherwise takes deliveries_handler and reads the handler's whole history
# past each dead letter, minutes on a million deliveries).
_DEAD_LETTERS = """
SELECT d.seq, d.id, d.event_id, e.type, d.handler FROM deliveries d
JOIN events e ON e.id = d.event_id
WHERE d.status = 'dead' AND d.seq > ?{where}
AND NOT EXISTS (SELECT 1 FROM deliveries later INDEXED BY deliveries_event
                WHERE later.event_id = d.event_id
                AND later.handler = d.handler AND later.seq > d.seq)
ORDER BY d.seq LIMIT ?
"""

_EVENT_COLUMNS_E = ", ".join(f"e.{c.strip()}" for c in _EVENT_COLUMNS.split(","))

_REFRESH_STATUS = """
UPDATE events SET status = CASE
    WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id
                 AND d.status IN ('pending', 'running')) THEN 'pending'
    WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id AND d.status = 'dead'
                 AND NOT EXISTS (SELECT 1 FROM deliveries s WHERE s.event_id = d.event_id
                                 AND s.handler = d.handler AND s.status = 'succeeded'
                                 AND s.seq > d.seq)) THEN 'failed'
    ELSE 'delivered' END
WHERE id IN (SELECT event_id FROM deliveries WHERE id IN ({marks}))
"""


async def _refresh_event_status(conn: aiosqlite.Connection, delivery_ids: Sequence[str]) -> None:
    if delivery_ids:
        marks = ",".join("?" * len(delivery_ids))
        await conn.execute(_REFRESH_STATUS.format(marks=marks), list(delivery_ids))


async def _to_the_end(work: Coroutine[Any, Any, T]) -> T:
    """Run a write to its end even if the caller is cancelled meanwhile (the caller still is).

    Handlers write to the store (budgets, marks, polls) and a handler's timeout can strike in
    the middle: a transaction abandoned half-way would stay open on the one writer connection,
    failing every later write and taking ingest's rows in uncommitted, acknowledged or not."""
    task = asyncio.ensure_future(work)
    # A cancelled caller never reads the outcome; read it here so nothing is reported unread.
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    return await asyncio.shield(task)


def _identity(path: str) -> tuple[int, int] | None:
    """The device and inode of the file at `path`; None when there is none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


async def _rollback(conn: aiosqlite.Connection) -> None:
    try:
        await conn.rollback()
    except _SQLITE_ERRORS:
        pass


def _events_json(events: Sequence[NewEvent]) -> str:
    """The batch for _INSERT_EVENTS_JSON. Bodies are valid UTF-8 (ingest refuses anything
    else), so the text round-trips to the exact bytes received."""
    return json.dumps([
        [e.id, e.source, e.type, e.dedupe_key, "pending" if e.handlers else "unrouted",
         e.received_at, e.occurred_at, e.job_id, e.file_id, e.company_id, list(e.task_ids),
         list(e.handlers), e.headers, e.query, e.payload, e.body.decode("utf-8")]
        for e in events
    ], ensure_ascii=False)


def _event_row(e: NewEvent) -> tuple[Any, ...]:
    return (
        e.id, e.source, e.type, e.dedupe_key, "pending" if e.handlers else "unrouted",
        e.received_at, e.occurred_at, e.job_id, e.file_id, e.company_id,
        json.dumps(list(e.task_ids)), json.dumps(list(e.handlers)), json.dumps(e.headers), e.query,
        e.payload_json(), e.body,
    )


def _event_where(filters: EventFilter, prefix: str = "") -> tuple[list[str], list[Any]]:
    """The WHERE clauses of every filter but `q`, over columns of `events` named `prefix`."""
    clauses: list[tuple[str, Any]] = [
        ("source = ?", filters.source),
        ("type GLOB ?", filters.type),
        ("status = ?", filters.status),
        ("job_id = ?", filters.job_id),
        ("file_id = ?", filters.file_id),
        ("received_at >= ?", filters.since),
        ("received_at < ?", filters.until),
    ]
    used = [(prefix + sql, value) for sql, value in clauses if value is not None]
    return [sql for sql, _ in used], [value for _, value in used]


def _and(where: Sequence[str]) -> str:
    return " WHERE " + " AND ".join(where) if where else ""


def _event_record(row: sqlite3.Row, detail: bool = False) -> EventRecord:
    extra: dict[str, Any] = {}
    if detail:
        extra = {
            "headers": json.loads(row["headers"]),
            "query": row["query"],
            "payload": json.loads(row["payload"]),
        }
        if "body" in row.keys():
            extra["body"] = row["body"]
    return EventRecord(
        id=row["id"], source=row["source"], type=row["type"], upstream_id=row["dedupe_key"],
        status=row["status"], received_at=row["received_at"], occurred_at=row["occurred_at"],
        job_id=row["job_id"], file_id=row["file_id"], company_id=row["company_id"],
        task_ids=json.loads(row["task_ids"]), **extra,
    )


def _delivery_record(row: sqlite3.Row) -> DeliveryRecord:
    keys: Iterable[str] = DeliveryRecord.model_fields.keys() & set(row.keys())
    return DeliveryRecord(**{key: row[key] for key in keys})
