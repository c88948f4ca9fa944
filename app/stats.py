"""Pure shaping of `/api/stats`: counts over a window and a per-minute histogram of the last hour.

The store hands over raw aggregates (`StatsRows`); this module names them for the answer and
fills the minutes in which nothing happened, so a chart gets exactly one bar per minute.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from app.store.base import IngestCount, StatsRows

HISTOGRAM_MINUTES = 60
OUTCOMES = ("accepted", "duplicate", "rejected", "delivery_failed")


def minutes_from(now: float) -> int:
    """The first minute of the histogram that ends with the current minute."""
    return int(now // 60) - HISTOGRAM_MINUTES + 1


def shape(rows: StatsRows, since: float, until: float, extra: list[IngestCount]) -> dict[str, Any]:
    """The answer of `/api/stats`; `extra` are this process's counts not yet in the store."""
    by_type: Counter[str] = Counter()
    by_status: Counter[str] = Counter()
    by_source: Counter[str] = Counter()
    for event_type, status, source, n in rows.events:
        by_type[event_type] += n
        by_status[status] += n
        by_source[source] += n

    first = minutes_from(until)
    window = (int(since // 60), int(until // 60))
    ingest: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    rejected_by_source: defaultdict[str, Counter[str]] = defaultdict(Counter)
    per_minute = {m: dict.fromkeys(OUTCOMES, 0) for m in range(first, first + HISTOGRAM_MINUTES)}
    for count in [*rows.counts, *extra]:
        if window[0] <= count.minute <= window[1]:
            ingest[count.outcome] += count.count
            if count.outcome == "rejected":
                reasons[count.reason] += count.count
                rejected_by_source[count.source][count.reason] += count.count
        if count.minute in per_minute:
            per_minute[count.minute][count.outcome] += count.count
    for minute, n in rows.accepted_per_minute.items():
        if minute in per_minute:
            per_minute[minute]["accepted"] += n
    for minute, n in rows.failed_per_minute.items():
        if minute in per_minute:
            per_minute[minute]["delivery_failed"] += n

    handlers: defaultdict[str, dict[str, int]] = defaultdict(dict)
    for handler, outcome, n in rows.attempts:
        handlers[handler][outcome] = n
    return {
        "since": since,
        "until": until,
        "window_seconds": until - since,
        "events": {
            "total": sum(by_type.values()),
            "by_type": dict(by_type.most_common()),
            "by_status": dict(by_status.most_common()),
            "by_source": dict(by_source.most_common()),
        },
        "ingest": {
            "accepted": sum(by_type.values()),
            "duplicate": ingest["duplicate"],
            "rejected": ingest["rejected"],
            "rejected_by_reason": dict(reasons.most_common()),
            "rejected_by_source": {source: dict(codes.most_common())
                                   for source, codes in sorted(rejected_by_source.items())},
        },
        "deliveries": {"by_handler": dict(handlers), "dead": rows.dead},
        "per_minute": [{"minute": m * 60, **counts} for m, counts in per_minute.items()],
    }
