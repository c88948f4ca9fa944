"""The rejections log's rows: what a backend is given, what it hands back, and the SQL both share.

A refused webhook request leaves no event, so it is kept in a table of its own, bounded by a
retention and a row cap. The statements are written once here with `?` placeholders; each
backend runs them as they are (SQLite) or numbered (PostgreSQL), and differs only in how it
binds JSON and booleans.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True, slots=True)
class NewRejection:
    """One refused request, as the receiver recorded it."""

    id: str
    received_at: float
    source: str
    """The source's name; for an unknown one, the name from the URL (bounded), `known` False."""
    known: bool
    status: int
    code: str
    message: str
    details: list[Any] = field(default_factory=list)
    remote: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    """The body (capped) of a request that passed authentication; None otherwise."""
    body_bytes: int | None = None
    """The whole body's size, when `body` is kept."""
    truncated: bool = False
    dropped_before: int = 0
    """Rejections of the same source not recorded (flood sampling) since the previous row."""


@dataclass(frozen=True, slots=True)
class RejectionFilter:
    source: str | None = None
    code: str | None = None
    since: float | None = None
    until: float | None = None


class RejectionRecord(BaseModel):
    """A recorded rejection; `details`, `headers` and `body` only when read one at a time."""

    id: str
    received_at: float
    source: str
    known: bool
    status: int
    code: str
    message: str
    remote: str | None = None
    body_bytes: int | None = None
    truncated: bool = False
    dropped_before: int = 0
    details: list[Any] | None = None
    headers: dict[str, str] | None = None
    body: str | None = None
    """The kept body as text (invalid UTF-8 shown as U+FFFD)."""


class RejectionPage(BaseModel):
    items: list[RejectionRecord]
    next_cursor: str | None = None


SUMMARY_COLUMNS = ("seq, id, received_at, source, known, status, code, message, remote, "
                   "body_bytes, truncated, dropped_before")
DETAIL_COLUMNS = SUMMARY_COLUMNS + ", details, headers, body"
INSERT = (
    "INSERT INTO rejections (id, received_at, source, known, status, code, message, details, "
    "remote, headers, body, body_bytes, truncated, dropped_before) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
GET = f"SELECT {DETAIL_COLUMNS} FROM rejections WHERE id = ?"
PRUNE_OLD = "DELETE FROM rejections WHERE received_at < ?"
# The row cap in two steps over the (received_at, seq) index: the newest row past the newest
# `keep` (in the order the list shows them), then it and everything older.
FIRST_OVER_CAP = (
    "SELECT received_at, seq FROM rejections ORDER BY received_at DESC, seq DESC LIMIT 1 OFFSET ?"
)
PRUNE_FROM = "DELETE FROM rejections WHERE received_at < ? OR (received_at = ? AND seq <= ?)"


def insert_values(row: NewRejection, details: Any, headers: Any) -> tuple[Any, ...]:
    """The INSERT's parameters; `details` and `headers` as the backend binds JSON."""
    return (row.id, row.received_at, row.source, row.known, row.status, row.code, row.message,
            details, row.remote, headers, row.body, row.body_bytes, row.truncated,
            row.dropped_before)


def list_query(filters: RejectionFilter, limit: int, cursor: str | None) -> tuple[str, list[Any]]:
    """A page of rejections newest first (by time, then by position), `limit + 1` rows so the
    caller can tell whether there is a next page. ValueError for a cursor not handed out here."""
    clauses: list[tuple[str, Any]] = [
        ("source = ?", filters.source), ("code = ?", filters.code),
        ("received_at >= ?", filters.since), ("received_at < ?", filters.until),
    ]
    where = [sql for sql, value in clauses if value is not None]
    params = [value for _, value in clauses if value is not None]
    if cursor is not None:
        at, seq = decode_cursor(cursor)
        where.append("(received_at < ? OR (received_at = ? AND seq < ?))")
        params += [at, at, seq]
    sql = f"SELECT {SUMMARY_COLUMNS} FROM rejections"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + " ORDER BY received_at DESC, seq DESC LIMIT ?", [*params, limit + 1]


def page(rows: Sequence[Any], limit: int) -> RejectionPage:
    """The page of `list_query`'s rows."""
    items = [record(row) for row in rows[:limit]]
    if len(rows) <= limit:
        return RejectionPage(items=items)
    last = rows[limit - 1]
    return RejectionPage(items=items, next_cursor=encode_cursor(last["received_at"], last["seq"]))


def record(row: Any, details: Any = None, headers: Any = None) -> RejectionRecord:
    """A record from a row (sqlite3.Row or asyncpg.Record); the detail columns given already
    decoded."""
    body = row["body"] if "body" in row.keys() else None  # noqa: SIM118 (rows are not dicts)
    return RejectionRecord(
        id=row["id"], received_at=row["received_at"], source=row["source"],
        known=bool(row["known"]), status=row["status"], code=row["code"],
        message=row["message"], remote=row["remote"], body_bytes=row["body_bytes"],
        truncated=bool(row["truncated"]), dropped_before=row["dropped_before"],
        details=details, headers=headers,
        body=None if body is None else bytes(body).decode("utf-8", "replace"),
    )


# As app.store.base.MAX_POSITION (which imports this module): a BIGINT's largest value.
_MAX_POSITION = 2**63 - 1


def encode_cursor(at: float, seq: int) -> str:
    return base64.urlsafe_b64encode(f"r{at!r}:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, seq = text.removeprefix("r").split(":")
        # A position as the events' cursors bound it, and a finite time: anything else is not
        # a cursor this store handed out (and a huge one would fail in the query as a 503).
        if (not text.startswith("r") or not (seq.isascii() and seq.isdigit()) or len(seq) > 19
                or int(seq) > _MAX_POSITION or not math.isfinite(float(at))):
            raise ValueError
        return float(at), int(seq)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("invalid cursor") from None
