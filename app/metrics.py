"""Prometheus metrics: what ingest and the worker count, and what the store knows at scrape time.

Each app has its own registry (two apps in one process, as in tests, never share counts).
Counters and histograms are updated where things happen; the gauges that describe the store
(deliveries waiting, leased, dead) are read from it when `/metrics` is scraped, since several
processes share one store and none of them alone knows the totals.

`/metrics` needs no token, and senders choose event types: every label value a sender can pick
goes through a `BoundedLabel`, which keeps the values known up front (the canonical types of the
schemas, the literal types of the routes) and the first `OTHER_VALUES_CAP` others, and counts
every later one as `other`. Twenty thousand invented types cost as many series as a hundred.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from app.store import StoreError
from app.store.base import Gauges
from schemas import event_models

OTHER = "other"
OTHER_VALUES_CAP = 100


class BoundedLabel:
    """The values one label may take: every known one, the first `cap` others as they come,
    then `other`."""

    def __init__(self, cap: int = OTHER_VALUES_CAP, known: Iterable[str] = ()) -> None:
        self.cap = cap
        self.known = set(known)
        self.others: set[str] = set()

    def know(self, values: Iterable[str]) -> None:
        self.known.update(values)

    def __call__(self, value: str) -> str:
        if value in self.known or value in self.others:
            return value
        if len(self.others) < self.cap:
            self.others.add(value)
            return value
        return OTHER


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter(
            "hookline_events_received", "Webhook requests by source, type and outcome "
            "(accepted, duplicate, rejected); reason is the error code of a rejection.",
            ["source", "type", "outcome", "reason"], registry=r)
        self.ingest_seconds = Histogram(
            "hookline_ingest_seconds", "Time from request to answer on /webhooks.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.deliveries = Counter(
            "hookline_deliveries", "Finished attempts by handler, outcome (succeeded, transient, "
            "permanent, timeout) and the delivery's status after it (succeeded, pending, dead).",
            ["handler", "outcome", "status"], registry=r)
        self.attempt_seconds = Histogram(
            "hookline_attempt_seconds", "Time one handler attempt took.", ["handler"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.intake_depth = Gauge(
            "hookline_intake_queue_depth", "Events waiting for this process's writer.",
            registry=r)
        self.queue_depth = Gauge(
            "hookline_deliveries_pending", "Deliveries waiting for their first or next try.",
            registry=r)
        self.leases = Gauge("hookline_leases_held", "Deliveries leased to a worker now.",
                            registry=r)
        self.dead = Gauge("hookline_dead_letters", "Deliveries that are dead.", registry=r)
        self.store_up = Gauge("hookline_store_up", "1 when the store answered this scrape.",
                              registry=r)
        self.loop_blocked = Counter(
            "hookline_event_loop_blocked_seconds", "Time this process's event loop was blocked "
            "(by a handler calling something that blocks), counted in stalls over a second.",
            registry=r)
        # labels() checks and locks on every call; each request needs only a lookup.
        self._received: dict[tuple[str, ...], Counter] = {}
        self.types = BoundedLabel(known=event_models())
        self.sources = BoundedLabel()
        self.reasons = BoundedLabel()

    def accepted(self, source: str, event_type: str, duplicate: bool) -> None:
        outcome = "duplicate" if duplicate else "accepted"
        self._received_child(self.sources(source), self.types(event_type), outcome, "").inc()

    def rejected(self, source: str, reason: str) -> None:
        self._received_child(self.sources(source), "", "rejected", self.reasons(reason)).inc()

    def _received_child(self, *labels: str) -> Counter:
        child = self._received.get(labels)
        if child is None:
            child = self._received[labels] = self.received.labels(*labels)
        return child

    def finished(self, handler: str, outcome: str, status: str, seconds: float) -> None:
        self.deliveries.labels(handler, outcome, status).inc()
        self.attempt_seconds.labels(handler).observe(seconds)

    def render(self, intake_depth: int, gauges: Gauges | None) -> Response:
        self.intake_depth.set(intake_depth)
        self.store_up.set(0 if gauges is None else 1)
        if gauges is not None:
            self.queue_depth.set(gauges.pending)
            self.leases.set(gauges.running)
            self.dead.set(gauges.dead)
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


async def metrics_endpoint(request: Request) -> Response:
    """`GET /metrics`: Prometheus text format."""
    runtime = request.app.state.runtime
    try:
        gauges: Gauges | None = await runtime.store.gauges()
    except StoreError:
        gauges = None
    metrics: Metrics = runtime.metrics
    return metrics.render(runtime.intake.depth, gauges)
