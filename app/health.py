"""Handler and source health for `/api/handlers` and `/api/sources`: pure shaping of the store's
aggregates, with the breaker states and the configuration they are read against.

A handler's answer: its deliveries waiting, running and dead now (and how old the oldest
waiting one is), its attempts over the window (by outcome, the success rate, the median and
99th percentile of their duration, exact to the millisecond), the state of the circuit breaker
of the upstream it calls (as this process sees it), and the routes that reach it. A source's
answer: its platform and auth scheme (never a secret), what its requests came to over the window
and when its last event arrived.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from app.config import HandlerSettings, RouteSettings, SourceSettings
from app.store.base import HandlerRows, IngestCount, SourceRows
from handlers.registry import LoadedHandler
from handlers.upstream import UpstreamOptions, breaker_for

BreakerState = Literal["closed", "open", "half_open"]
# Attempts cut short by an expired lease say nothing of the handler's speed.
UNTIMED = frozenset({"lost", "running"})


def percentile(histogram: Mapping[int, int], fraction: float) -> int | None:
    """The smallest value at or below which `fraction` of the counted values lie."""
    total = sum(histogram.values())
    if total == 0:
        return None
    wanted = fraction * total
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= wanted:
            return value
    return max(histogram)


def breaker_state(opened_at: float | None, cooldown: float, now: float) -> BreakerState:
    """A consecutive-failure breaker's state: open while cooling down, then half-open (one
    trial call at a time) until a call succeeds."""
    if opened_at is None:
        return "closed"
    return "open" if now < opened_at + cooldown else "half_open"


def breakers_of(loaded: Mapping[str, LoadedHandler], now: float) -> dict[str, dict[str, Any]]:
    """The breaker of the upstream each upstream-retry handler calls, as this process sees it
    (`now` on the monotonic clock the breakers keep)."""
    found = {}
    for name, handler in loaded.items():
        if isinstance(handler.options, UpstreamOptions):
            breaker = breaker_for(handler.options.base_url)
            found[name] = {
                "upstream": breaker.name,
                "state": breaker_state(breaker.opened_at, breaker.cooldown_seconds, now),
                "consecutive_failures": breaker.failures,
            }
    return found


def routes_of(routes: Iterable[RouteSettings]) -> dict[str, list[dict[str, Any]]]:
    """The routes reaching each handler, in config order."""
    found: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for route in routes:
        found[route.handler].append(
            {"match": route.match, "source": route.source, "where": route.where})
    return found


def shape_handlers(
    rows: HandlerRows, handlers: Mapping[str, HandlerSettings],
    routes: Iterable[RouteSettings], breakers: Mapping[str, dict[str, Any]],
    window: float, now: float,
) -> list[dict[str, Any]]:
    """One answer per configured handler, in name order."""
    backlog: defaultdict[str, dict[str, int]] = defaultdict(dict)
    oldest: dict[str, float] = {}
    for handler, status, count, created in rows.backlog:
        backlog[handler][status] = count
        if status == "pending":
            oldest[handler] = created
    outcomes: defaultdict[str, Counter[str]] = defaultdict(Counter)
    times: defaultdict[str, Counter[int]] = defaultdict(Counter)
    for handler, outcome, ms, count in rows.attempts:
        outcomes[handler][outcome] += count
        if outcome not in UNTIMED:
            times[handler][ms] += count
    reaching = routes_of(routes)
    answer = []
    for name in sorted(handlers):
        ended = {k: v for k, v in outcomes[name].items() if k != "running"}
        total = sum(ended.values())
        p50, p99 = percentile(times[name], 0.5), percentile(times[name], 0.99)
        answer.append({
            "name": name,
            "use": handlers[name].use,
            "deliveries": {s: backlog[name].get(s, 0) for s in ("pending", "running", "dead")},
            "oldest_pending_at": oldest.get(name),
            "oldest_pending_seconds": round(now - oldest[name], 3) if name in oldest else None,
            "window_seconds": window,
            "attempts": {"total": total, "by_outcome": dict(sorted(ended.items()))},
            "success_rate": round(ended.get("succeeded", 0) / total, 4) if total else None,
            "attempt_seconds": {"p50": None if p50 is None else p50 / 1000,
                                "p99": None if p99 is None else p99 / 1000},
            "breaker": breakers.get(name),
            "routes": reaching.get(name, []),
        })
    return answer


def auth_summary(source: SourceSettings) -> dict[str, Any]:
    """What a source's authentication is, never what its secrets are."""
    auth = source.auth
    summary: dict[str, Any] = {"scheme": auth.scheme, "secrets": len(auth.secrets)}
    if auth.header is not None:
        summary["header"] = auth.header
    if auth.scheme == "standard_webhooks":
        summary["tolerance_seconds"] = auth.tolerance_seconds
    return summary


def shape_sources(
    rows: SourceRows, sources: Mapping[str, SourceSettings], extra: Sequence[IngestCount],
    routes: Iterable[RouteSettings], window: float,
) -> list[dict[str, Any]]:
    """One answer per configured source, in name order; `extra` are this process's counts not
    yet in the store."""
    refused: defaultdict[str, Counter[str]] = defaultdict(Counter)
    reasons: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for count in [*rows.counts, *extra]:
        refused[count.source][count.outcome] += count.count
        if count.outcome == "rejected":
            reasons[count.source][count.reason] += count.count
    answer = []
    for name in sorted(sources):
        source = sources[name]
        answer.append({
            "name": name,
            "platform": source.platform,
            "auth": auth_summary(source),
            "window_seconds": window,
            "requests": {
                "accepted": rows.accepted.get(name, 0),
                "duplicate": refused[name]["duplicate"],
                "rejected": refused[name]["rejected"],
                "rejected_by_reason": dict(reasons[name].most_common()),
            },
            "last_event_at": rows.last_received.get(name),
            "routes": [{"match": r.match, "handler": r.handler, "where": r.where}
                       for r in routes if r.source in (None, name)],
        })
    return answer
