"""One computation of `/api/stats` serves every caller that asks for the same thing at once.

Stats are aggregates over thousands of rows and every open dashboard asks for them, so callers
share: concurrent requests for one window wait for a single computation, and an answer is reused
for up to `fresh_seconds` while no event was stored, no attempt finished and no request was
counted since (the store's heads and the tally's version say so). At most `keep` windows'
answers are kept, the least recently asked for dropped first, so callers asking for many
different windows cannot grow it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from app import stats
from app.clock import Clock
from app.store import Store
from app.tally import Tally

Key = tuple[int, tuple[int, int], int]


@dataclass(frozen=True, slots=True)
class _Answer:
    key: Key
    at: float
    body: dict[str, Any]


class StatsCache:
    def __init__(self, store: Store, clock: Clock, tally: Tally, fresh_seconds: float = 1.0,
                 keep: int = 16):
        self.store = store
        self.clock = clock
        self.tally = tally
        self.fresh_seconds = fresh_seconds
        self.keep = keep
        self._answers: OrderedDict[int, _Answer] = OrderedDict()
        self._running: dict[Key, asyncio.Future[dict[str, Any]]] = {}

    async def get(self, window: int) -> dict[str, Any]:
        """The answer of `/api/stats?window=...` as of now (or of at most `fresh_seconds` ago,
        when nothing changed since)."""
        now = self.clock.now()
        key: Key = (window, await self.store.heads(), self.tally.version)
        kept = self._answers.get(window)
        if kept is not None and kept.key == key and now - kept.at < self.fresh_seconds:
            self._answers.move_to_end(window)
            return kept.body
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(self._compute(window, now))
            self._running[key] = running
            running.add_done_callback(lambda done: self._settle(key, window, now, done))
        # A caller that goes away does not cancel the others' computation.
        return await asyncio.shield(running)

    async def _compute(self, window: int, now: float) -> dict[str, Any]:
        since = now - window
        rows = await self.store.stats(since, now, stats.minutes_from(now))
        return stats.shape(rows, since, now, self.tally.pending())

    def _settle(self, key: Key, window: int, at: float,
                done: asyncio.Future[dict[str, Any]]) -> None:
        self._running.pop(key, None)
        if done.cancelled() or done.exception() is not None:
            return  # every waiter got the error (a 503); nothing is kept
        self._answers[window] = _Answer(key, at, done.result())
        self._answers.move_to_end(window)
        while len(self._answers) > self.keep:
            self._answers.popitem(last=False)
