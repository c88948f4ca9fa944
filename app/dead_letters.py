"""Dead letters: the open ones, each selected once, for a retry or for a replay.

A retry puts the same dead delivery back to `pending` (its attempts kept and counted on); a
replay makes fresh deliveries of the event. Both select from the *open* dead letters (a dead
delivery that no later delivery of its event and handler superseded), paged by position, so a
bulk run selects each once even while what it retried dies again, and the dead letters an earlier
replay already answered are not sent again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from app.errors import Conflict, NotFound
from app.store import DeadFilter, DeadLetter, Store

PAGE = 500
SAMPLE = 500


@dataclass(slots=True)
class RetryReport:
    """How many dead deliveries a bulk retry selected (and retried, unless a dry run), with the
    first `SAMPLE` of their ids."""

    deliveries: int = 0
    ids: list[str] = field(default_factory=list)


async def each_dead(store: Store, filters: DeadFilter) -> AsyncIterator[DeadLetter]:
    """Every open dead letter the filter selects, oldest first, each once."""
    after = 0
    while True:
        page = await store.dead_letters(filters, after, PAGE)
        for letter in page:
            yield letter
        if len(page) < PAGE:
            return
        after = page[-1].seq


async def retry_many(store: Store, filters: DeadFilter, now: float, dry_run: bool) -> RetryReport:
    """Retry every open dead letter the filter selects; a dry run only counts them."""
    report = RetryReport()
    batch: list[str] = []
    async for letter in each_dead(store, filters):
        batch.append(letter.id)
        if len(batch) == PAGE:
            await _retry_batch(store, batch, now, dry_run, report)
            batch = []
    await _retry_batch(store, batch, now, dry_run, report)
    return report


async def _retry_batch(
    store: Store, batch: list[str], now: float, dry_run: bool, report: RetryReport
) -> None:
    # A delivery retried meanwhile by someone else is no longer dead, and is not counted.
    done = batch if dry_run else await store.retry_dead(batch, now)
    report.deliveries += len(done)
    report.ids.extend(done[: SAMPLE - len(report.ids)])


async def retry_one(store: Store, delivery_id: str, now: float, dry_run: bool = False) -> None:
    """Retry one dead delivery (a dry run only checks it could be): NotFound for an unknown
    id, Conflict unless it is dead."""
    if not dry_run and await store.retry_dead([delivery_id], now):
        return
    delivery = await store.get_delivery(delivery_id)
    if dry_run and delivery is not None and delivery.status == "dead":
        return
    if delivery is None:
        raise NotFound("no such delivery")
    raise Conflict(f"delivery is {delivery.status}; only a dead delivery is retried")
