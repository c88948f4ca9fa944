"""APScheduler wiring: periodic ticks only. Every piece of state they touch is a store row.

`Maintenance` holds the tick functions (plain coroutines, callable directly in tests with an
injected clock); `start_scheduler` runs them on an AsyncIOScheduler: a sweep that reaps expired
leases and wakes the worker for whatever became due, a prune of events past retention, stall
detection, and the checks behind hookline's own alerts (`app.alerts`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from app import lifecycle
from app.alerts import Alerts
from app.clock import Clock
from app.config import SourceSettings
from app.rejections import RejectionLog
from app.store import Store, StoreError
from app.store.base import LatestEvent
from app.tally import Tally
from app.upstream import Recorded, Recorder
from app.worker import Worker

log = logging.getLogger("hookline.scheduler")

DAY = 86_400.0
STALL_LOOKBACK = 7 * DAY


@dataclass
class Maintenance:
    store: Store
    clock: Clock
    worker: Worker | None
    retention_days: float
    sources: Mapping[str, SourceSettings] | None = None
    recorder: Recorder | None = None
    tally: Tally | None = None
    rejections: RejectionLog | None = None
    alerts: Alerts | None = None

    async def sweep(self) -> int:
        """Make expired leases claimable again, wake the worker and run the status polls that
        are due (they are minutes apart, so the sweep's pace is enough for them)."""
        try:
            reaped = await self.store.reap_expired(self.clock.now())
        except StoreError as exc:
            log.warning("lease sweep skipped: %s", exc)
            return 0
        if reaped:
            log.info("reaped %d expired leases", reaped)
        if self.worker is not None:
            self.worker.wake()
            await self.worker.run_polls_once()
        return reaped

    async def statistics(self) -> int:
        """Keep the store's planner statistics fresh (one process at a time)."""
        try:
            analysed = await self.store.refresh_statistics()
        except StoreError as exc:
            log.warning("statistics skipped: %s", exc)
            return 0
        if analysed:
            log.info("statistics refreshed", extra={"fields": {"tables": analysed}})
        return len(analysed)

    async def flush_counts(self) -> int:
        """Add this receiver's counts of duplicates and rejections to the store."""
        if self.tally is None:
            return 0
        try:
            return await self.tally.flush(self.store)
        except StoreError as exc:
            log.warning("ingest counts kept for later: %s", exc)
            return 0

    async def flush_rejections(self) -> int:
        """Write this receiver's waiting rejections; after a write, trim the log to its cap
        (it is only over the cap when rows were added)."""
        if self.rejections is None:
            return 0
        try:
            written = await self.rejections.flush(self.store)
            if written:
                await self.rejections.prune(self.store, self.clock.now())
        except StoreError as exc:
            log.warning("rejections kept for later: %s", exc)
            return 0
        return written

    async def prune_rejections(self) -> int:
        """Delete rejections past their retention (and any past the row cap)."""
        if self.rejections is None:
            return 0
        try:
            pruned = await self.rejections.prune(self.store, self.clock.now())
        except StoreError as exc:
            log.warning("rejections prune skipped: %s", exc)
            return 0
        if pruned:
            log.info("pruned %d rejections", pruned)
        return pruned

    async def breakers(self) -> int:
        """Note this process's circuit breakers that opened or closed (every worker)."""
        if self.alerts is None:
            return 0
        try:
            return await self.alerts.observe_breakers()
        except StoreError as exc:
            log.warning("breaker check skipped: %s", exc)
            return 0

    async def alert_checks(self) -> int:
        """Dead letters, stalled workers, failing source auth, and the alerts now due."""
        if self.alerts is None:
            return 0
        return await self.alerts.check()

    async def prune(self) -> int:
        """Delete events older than the retention, with their deliveries and attempts."""
        try:
            pruned = await self.store.prune(self.clock.now() - self.retention_days * DAY)
        except StoreError as exc:
            log.warning("prune skipped: %s", exc)
            return 0
        if pruned:
            log.info("pruned %d events past retention", pruned)
        return pruned

    async def stalls(self) -> int:
        """Record `<platform>.<job|file>.stalled` once for every job or file whose newest event
        left it open for longer than its source's `stall_after_minutes`."""
        if not self.sources or self.recorder is None:
            return 0
        now = self.clock.now()
        shortest = min(s.stall_after_minutes for s in self.sources.values()) * 60
        found = 0
        for kind in ("job", "file"):
            try:
                latest = await self.store.latest_events(kind, now - STALL_LOOKBACK, now - shortest)
            except StoreError as exc:
                log.warning("stall sweep skipped: %s", exc)
                return found
            for item in latest:
                found += await self._stall(kind, item.entity_id, item, now)
        return found

    async def _stall(self, kind: str, entity_id: str, item: LatestEvent, now: float) -> int:
        source = self.sources.get(item.source) if self.sources else None
        if (source is None or not lifecycle.is_open(item.type)
                or now - item.received_at < source.stall_after_minutes * 60):
            return 0
        key = f"stall:{kind}:{entity_id}:{item.event_id}"
        if not await self.store.mark_once(key, now):
            return 0
        # Platform events are named by platform; a Standard Webhooks source names its own.
        platform = item.source if source.platform == "standard" else item.type.split(".", 1)[0]
        assert self.recorder is not None
        await self.recorder.record(Recorded(
            source=item.source, type=f"{platform}.{kind}.stalled",
            payload={"kind": kind, "id": entity_id, "last_event_id": item.event_id,
                     "last_event_type": item.type, "idle_seconds": round(now - item.received_at)},
            dedupe_key=key,
            job_id=entity_id if kind == "job" else None,
            file_id=entity_id if kind == "file" else None,
        ))
        return 1


def _singleton(store: Store, name: str, tick: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[int]]:
    """Run `tick` only in the one process that holds the store's lock for `name`: with many
    workers on one database each sweep runs once, and another process takes over when the
    holder dies."""

    async def guarded() -> int:
        try:
            async with store.exclusive(f"hookline:{name}") as held:
                return await tick() if held else 0
        except StoreError as exc:
            log.warning("%s skipped: %s", name, exc)
            return 0

    return guarded


def start_scheduler(
    maintenance: Maintenance, sweep_seconds: float = 5.0, prune_seconds: float = 3600.0,
    stall_seconds: float = 60.0, counts_seconds: float = 5.0, worker_ticks: bool = True,
    alert_seconds: float = 15.0,
) -> AsyncIOScheduler:
    """The ticks of one process: the counts and rejections flush wherever requests are
    received (a tally and a rejections log are given), the dispatch upkeep wherever a worker
    runs (`worker_ticks`)."""
    scheduler = AsyncIOScheduler()
    common = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
    store = maintenance.store
    if maintenance.tally is not None:
        scheduler.add_job(maintenance.flush_counts, "interval", seconds=counts_seconds,
                          id="counts", **common)
    if maintenance.rejections is not None:
        scheduler.add_job(maintenance.flush_rejections, "interval",
                          seconds=maintenance.rejections.settings.flush_seconds,
                          id="rejections", **common)
        scheduler.add_job(_singleton(store, "rejections-prune", maintenance.prune_rejections),
                          "interval", seconds=prune_seconds, id="rejections-prune", **common)
    if worker_ticks:
        # The sweep only reaps leases and wakes this process's worker: every worker runs it.
        scheduler.add_job(maintenance.sweep, "interval", seconds=sweep_seconds, id="sweep",
                          **common)
        scheduler.add_job(_singleton(store, "statistics", maintenance.statistics), "interval",
                          seconds=sweep_seconds, id="statistics", **common)
        scheduler.add_job(_singleton(store, "prune", maintenance.prune), "interval",
                          seconds=prune_seconds, id="prune", **common)
        scheduler.add_job(_singleton(store, "stalls", maintenance.stalls), "interval",
                          seconds=stall_seconds, id="stalls", **common)
        if maintenance.alerts is not None:
            # Breakers are per process: every worker looks at its own. The rest reads the
            # store, once for all of them.
            scheduler.add_job(maintenance.breakers, "interval", seconds=alert_seconds,
                              id="breakers", **common)
            scheduler.add_job(_singleton(store, "alerts", maintenance.alert_checks), "interval",
                              seconds=alert_seconds, id="alerts", **common)
    scheduler.start()
    return scheduler
