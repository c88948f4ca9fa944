"""APScheduler wiring: periodic ticks only. Every piece of state they touch is a store row.

`Maintenance` holds the tick functions (plain coroutines, callable directly in tests with an
injected clock); `start_scheduler` runs them on an AsyncIOScheduler: a sweep that reaps expired
leases and wakes the worker for whatever became due, and a prune of events past retention.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from app.clock import Clock
from app.store import Store, StoreError
from app.worker import Worker

log = logging.getLogger("hookline.scheduler")

DAY = 86_400.0


@dataclass
class Maintenance:
    store: Store
    clock: Clock
    worker: Worker | None
    retention_days: float

    async def sweep(self) -> int:
        """Make expired leases claimable again and wake the worker."""
        try:
            reaped = await self.store.reap_expired(self.clock.now())
        except StoreError as exc:
            log.warning("lease sweep skipped: %s", exc)
            return 0
        if reaped:
            log.info("reaped %d expired leases", reaped)
        if self.worker is not None:
            self.worker.wake()
        return reaped

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


def start_scheduler(
    maintenance: Maintenance, sweep_seconds: float = 5.0, prune_seconds: float = 3600.0
) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler()
    common = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
    scheduler.add_job(maintenance.sweep, "interval", seconds=sweep_seconds, id="sweep", **common)
    scheduler.add_job(maintenance.prune, "interval", seconds=prune_seconds, id="prune", **common)
    scheduler.start()
    return scheduler
