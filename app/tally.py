"""Per-minute counts of the requests that store no event: duplicates and rejections by reason.

Accepted events are counted from the event log itself; what was refused or deduplicated leaves
no row there, so the receiver counts it in memory (a dict increment on the request path) and a
scheduler tick adds the counts to the store, where every receiver's counts meet for
`/api/stats` and the dashboard's chart.
"""

from __future__ import annotations

from collections import Counter

from app.store import Store, StoreError
from app.store.base import IngestCount

# A source name from the URL that names no configured source is the caller's text: it is
# counted under one label, so callers cannot grow the table.
UNKNOWN_SOURCE = "(unknown)"


class Tally:
    def __init__(self) -> None:
        self._counts: Counter[tuple[int, str, str, str]] = Counter()
        self.version = 0
        """Grows with every count: tells a cached answer whether anything was counted since."""

    def count(self, now: float, source: str, outcome: str, reason: str = "") -> None:
        self._counts[(int(now // 60), source, outcome, reason)] += 1
        self.version += 1

    def pending(self) -> list[IngestCount]:
        return [IngestCount(*key, count) for key, count in self._counts.items()]

    async def flush(self, store: Store) -> int:
        """Add the counts so far to the store; on failure they are kept for the next flush."""
        taken, self._counts = self._counts, Counter()
        try:
            await store.add_ingest_counts([IngestCount(*k, n) for k, n in taken.items()])
        except StoreError:
            self._counts.update(taken)
            raise
        return len(taken)
