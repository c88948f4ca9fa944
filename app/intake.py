"""Group commit for ingest: concurrent requests written by one writer, one transaction a batch.

Each request's event goes on a bounded queue and the request waits for its own result, which
arrives only after the transaction holding its row committed. When the queue is full, or the
store fails, the request is refused with 503 and Retry-After instead of anything being lost or
the backlog growing without bound.
"""

from __future__ import annotations

from collections.abc import Callable

from app.batching import Batcher, NotRunning, QueueFull
from app.errors import StoreUnavailable
from app.store import Store, StoreError
from schemas.records import NewEvent, Saved


class Intake:
    """The single writer in front of the store."""

    def __init__(self, store: Store, maxsize: int, batch_max: int, retry_after: int = 1) -> None:
        self.retry_after = retry_after
        self._on_stored: list[Callable[[NewEvent], None]] = []
        self._batcher: Batcher[NewEvent, Saved] = Batcher(
            store.save_events, maxsize, batch_max, "hookline-intake"
        )

    @property
    def depth(self) -> int:
        return self._batcher.depth

    def on_stored(self, callback: Callable[[NewEvent], None]) -> None:
        """Call `callback` with every new event once it is stored (not with duplicates)."""
        self._on_stored.append(callback)

    def start(self) -> None:
        self._batcher.start()

    async def stop(self) -> None:
        await self._batcher.stop()

    async def submit(self, event: NewEvent) -> Saved:
        """Queue one event and wait until it is durably stored; 503 when it cannot be."""
        try:
            saved = await self._batcher.submit(event)
        except QueueFull:
            raise self._unavailable("intake queue is full; retry later") from None
        except (StoreError, NotRunning):
            raise self._unavailable("event store is unavailable") from None
        if not saved.duplicate:
            for callback in self._on_stored:
                callback(event)
        return saved

    def _unavailable(self, message: str) -> StoreUnavailable:
        return StoreUnavailable(message, headers={"Retry-After": str(self.retry_after)})
