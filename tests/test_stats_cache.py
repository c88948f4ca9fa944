"""The stats cache shares one computation per window and keeps a bounded number of answers."""

from __future__ import annotations

from typing import Any

from app.stats_cache import StatsCache
from app.tally import Tally

from conftest import FakeClock


class CountingStore:
    def __init__(self) -> None:
        self.computed: list[float] = []

    async def heads(self) -> tuple[int, int]:
        return (0, 0)

    async def stats(self, since: float, until: float, minutes_from: int) -> None:
        self.computed.append(until - since)  # the rows are not looked at: shape is replaced


async def test_answers_for_many_windows_are_bounded_least_recently_asked_first(
    monkeypatch: Any,
) -> None:
    from app import stats

    monkeypatch.setattr(stats, "shape", lambda rows, since, now, pending: {"window": now - since})
    store = CountingStore()
    cache = StatsCache(store, FakeClock(), Tally(), keep=3)  # type: ignore[arg-type]
    for window in (60, 120, 180):
        assert await cache.get(window) == {"window": window}
    await cache.get(60)  # asked again: now the most recent
    await cache.get(240)  # a fourth window drops the least recently asked, 120
    assert list(cache._answers) == [180, 60, 240]
    computed = len(store.computed)
    await cache.get(60)
    await cache.get(120)
    assert len(store.computed) == computed + 1  # 60 was kept, 120 had to be computed again
