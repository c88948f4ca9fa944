"""The rejections log: every refused webhook request kept with its reason, cheaply and bounded.

A refused request leaves no event, yet it is what an operator needs to read when a platform
changes its payload or a secret goes wrong. Recording one costs a sampling decision and, when
kept, a row in memory: nothing touches the store on the request path. The maintenance tick
writes the waiting rows in one transaction and trims the table to its retention and row cap.
It is bounded everywhere: past `flood_per_minute` rejections of one source in a minute only
one in `sample_one_in` is kept (each kept row says how many were left out before it, and the
per-minute counts in `app.tally` count every one), the rows waiting in memory are bounded in
number and in body bytes, and a failed write keeps them only up to the same bound.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from app import auth
from app.config import RejectionSettings, SourceSettings
from app.errors import HooklineError
from app.ids import new_id
from app.store import Store, StoreError
from app.store.rejections import NewRejection
from app.tally import UNKNOWN_SOURCE

log = logging.getLogger("hookline.rejections")

DAY = 86_400.0
MAX_NAME = 64
"""Characters of an unknown source's name kept: the name is the caller's text."""
MAX_MESSAGE = 500
MAX_DETAILS = 100
"""Field errors kept of one 422: a payload with thousands of bad fields keeps the first ones."""
BODY_KEY = "authenticated_body"
"""Where ingest leaves a body that passed authentication, in the request's `scope["state"]`."""


def recorded(exc: BaseException) -> bool:
    """Whether a refusal goes to the log: every 4xx, and the intake's 503."""
    return isinstance(exc, HooklineError) and (
        400 <= exc.status < 500 or exc.code == "store_unavailable")


def bounded_name(name: str) -> str:
    """An unknown source's name as kept: at most MAX_NAME printable characters."""
    return "".join(c if c.isprintable() else "?" for c in name[:MAX_NAME])


def capped(body: bytes, limit: int) -> tuple[bytes, bool]:
    """The first `limit` bytes of `body`, and whether anything was cut."""
    return (body, False) if len(body) <= limit else (body[:limit], True)


class Sampler:
    """Per-source flood sampling over calendar minutes: the first `flood_per_minute` of a
    minute are kept, then one in `one_in`. Pure: the minute is given."""

    def __init__(self, flood_per_minute: int, one_in: int) -> None:
        self.flood_per_minute = flood_per_minute
        self.one_in = one_in
        self._minute: dict[str, int] = {}
        self._seen: dict[str, int] = {}
        self._dropped: dict[str, int] = {}

    def admit(self, key: str, minute: int) -> int | None:
        """None to leave this one out (it is counted); otherwise how many of `key` were left
        out since the last one kept."""
        if self._minute.get(key) != minute:
            self._minute[key] = minute
            self._seen[key] = 0
        seen = self._seen[key] = self._seen[key] + 1
        over = seen - self.flood_per_minute
        if over > 0 and over % self.one_in:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return None
        return self._dropped.pop(key, 0)

    def left_out(self, key: str, n: int) -> None:
        """Count `n` of `key` as left out after all (a kept row that found no room)."""
        self._dropped[key] = self._dropped.get(key, 0) + n

    def pending(self, key: str) -> int:
        return self._dropped.get(key, 0)


class RejectionLog:
    """This receiver's rejections waiting to be written."""

    def __init__(
        self, settings: RejectionSettings, sources: Mapping[str, SourceSettings],
        secret_headers: frozenset[str] = auth.SECRET_HEADERS,
    ) -> None:
        self.settings = settings
        self.sources = sources
        self.secret_headers = secret_headers
        self.sampler = Sampler(settings.flood_per_minute, settings.sample_one_in)
        self.lost = 0
        """Rows kept but never written (the store failed while the buffer was full)."""
        self._rows: list[NewRejection] = []
        self._bytes = 0

    @property
    def waiting(self) -> int:
        return len(self._rows)

    def record(self, scope: Mapping[str, Any], exc: BaseException, now: float) -> bool:
        """Keep the refusal of one `POST /webhooks/{source}` request, unless sampled out or
        out of room. Never raises for a request it cannot read: it is best effort."""
        if not self.settings.enabled or not recorded(exc):
            return False
        assert isinstance(exc, HooklineError)
        try:
            return self._record(scope, exc, now)
        except Exception:  # the refusal is answered as it is, whatever happens here
            log.exception("rejection not recorded")
            return False

    def _record(self, scope: Mapping[str, Any], exc: HooklineError, now: float) -> bool:
        name: str = scope["path_params"]["source"]
        source = self.sources.get(name)
        key = name if source is not None else UNKNOWN_SOURCE
        dropped_before = self.sampler.admit(key, int(now // 60))
        if dropped_before is None:
            return False
        if len(self._rows) >= self.settings.buffer_rows:
            self.sampler.left_out(key, dropped_before + 1)
            return False
        self._rows.append(self._row(scope, exc, now, name, source, dropped_before))
        return True

    def _row(
        self, scope: Mapping[str, Any], exc: HooklineError, now: float, name: str,
        source: SourceSettings | None, dropped_before: int,
    ) -> NewRejection:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        # Stripped as a stored event's are, whether or not the source exists: a sender that
        # posts to a mistyped source still sends its real credentials.
        drop = (auth.dropped_headers(source.auth, self.secret_headers, source.secret_headers)
                if source is not None else self.secret_headers)
        headers = auth.strip_headers(headers, drop)
        whole = scope.get("state", {}).get(BODY_KEY) if source is not None else None
        body = body_bytes = None
        truncated = False
        if whole is not None:
            body_bytes = len(whole)
            body, truncated = capped(whole, self.settings.body_max_bytes)
            if self._bytes + len(body) > self.settings.buffer_bytes:
                body, truncated = None, True  # no room for the body: the reason is still kept
            else:
                self._bytes += len(body)
        client = scope.get("client")
        return NewRejection(
            id=new_id("rej", now), received_at=now,
            source=name if source is not None else bounded_name(name), known=source is not None,
            status=exc.status, code=exc.code, message=exc.message[:MAX_MESSAGE],
            details=list(exc.details[:MAX_DETAILS]),
            remote=client[0] if client else None, headers=headers, body=body,
            body_bytes=body_bytes, truncated=truncated, dropped_before=dropped_before,
        )

    async def flush(self, store: Store) -> int:
        """Write the waiting rows; on failure they wait for the next flush, within the bound."""
        taken, self._rows, self._bytes = self._rows, [], 0
        if not taken:
            return 0
        try:
            await store.add_rejections(taken)
        except StoreError:
            kept = (taken + self._rows)[: self.settings.buffer_rows]
            self.lost += len(taken) + len(self._rows) - len(kept)
            self._rows = kept
            self._bytes = sum(len(row.body or b"") for row in kept)
            raise
        return len(taken)

    async def prune(self, store: Store, now: float) -> int:
        """Delete rows past the retention, then the oldest past the row cap."""
        before = now - self.settings.retention_days * DAY
        return await store.prune_rejections(before, self.settings.max_rows)
