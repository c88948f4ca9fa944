"""Group commit for ingest: concurrent requests written by one writer, one transaction a batch.

Each request's event goes on a bounded queue and the request waits for its own result, which
arrives only after the transaction holding its row committed. When the queue is full, or the
store fails, the request is refused with 503 and Retry-After instead of anything being lost or
the backlog growing without bound. The queue is bounded twice: in events, and in the bytes of
their bodies, since events of up to `max_body_bytes` each (and their parsed payloads, a few
times the size of the body) would otherwise let a full queue take gigabytes.

A request's bytes count from the moment they are read, not only once its event is queued: a
`Reservation` holds them while the body is read, verified and parsed, so a burst of large
bodies is refused 503 as it arrives instead of being parsed all at once first.
"""

from __future__ import annotations

from collections.abc import Callable

from app.batching import Batcher, NotRunning, QueueFull
from app.errors import StoreUnavailable
from app.store import Store, StoreError
from schemas.records import NewEvent, Saved


class Reservation:
    """The bytes one request holds in the intake's byte budget, until `release`."""

    def __init__(self, intake: Intake) -> None:
        self._intake = intake
        self.size = 0

    def add(self, size: int) -> None:
        """Hold `size` more bytes; 503 when they would take the budget past its bound (a
        request that is alone in the budget always gets them)."""
        self._intake._take(size, self.size)
        self.size += size

    def check(self, size: int) -> None:
        """503 now when `size` more bytes could not be held (holding nothing more)."""
        if not self._intake._room(size, self.size):
            raise self._intake.unavailable()

    def release(self) -> None:
        self._intake._bytes -= self.size
        self.size = 0


class Intake:
    """The single writer in front of the store."""

    def __init__(
        self, store: Store, maxsize: int, batch_max: int, retry_after: int = 1,
        max_bytes: int | None = None,
    ) -> None:
        self.retry_after = retry_after
        self.max_bytes = max_bytes
        self._bytes = 0
        self._on_stored: list[Callable[[NewEvent], None]] = []
        self._batcher: Batcher[NewEvent, Saved] = Batcher(
            store.save_events, maxsize, batch_max, "hookline-intake"
        )

    @property
    def depth(self) -> int:
        return self._batcher.depth

    @property
    def full(self) -> bool:
        """Whether an event submitted now would be refused for want of room. Checked before a
        request's body is read and parsed, so that under overload a refusal costs next to
        nothing; `submit` still decides."""
        return self._batcher.full or (
            self.max_bytes is not None and self._bytes >= self.max_bytes)

    @property
    def queued_bytes(self) -> int:
        """Bytes held by the requests being read and the events submitted and not yet
        answered."""
        return self._bytes

    def reservation(self) -> Reservation:
        return Reservation(self)

    def _room(self, size: int, held: int) -> bool:
        # A request always gets in when nothing else is held, so a body over the byte bound on
        # its own is not refused for good.
        return (self.max_bytes is None or self._bytes <= held
                or self._bytes + size <= self.max_bytes)

    def _take(self, size: int, held: int) -> None:
        if not self._room(size, held):
            raise self.unavailable()
        self._bytes += size

    def on_stored(self, callback: Callable[[NewEvent], None]) -> None:
        """Call `callback` with every new event once it is stored (not with duplicates)."""
        self._on_stored.append(callback)

    def start(self) -> None:
        self._batcher.start()

    async def stop(self) -> None:
        await self._batcher.stop()

    async def submit(self, event: NewEvent, reserved: bool = False) -> Saved:
        """Queue one event and wait until it is durably stored; 503 when it cannot be. With
        `reserved`, the caller already holds the event's bytes in a `Reservation`."""
        held = Reservation(self)
        if not reserved:
            held.add(len(event.body))
        try:
            saved = await self._batcher.submit(event)
        except QueueFull:
            raise self.unavailable() from None
        except (StoreError, NotRunning):
            raise self.unavailable("event store is unavailable") from None
        finally:
            held.release()
        if not saved.duplicate:
            for callback in self._on_stored:
                callback(event)
        return saved

    def unavailable(self, message: str = "intake queue is full; retry later") -> StoreUnavailable:
        return StoreUnavailable(message, headers={"Retry-After": str(self.retry_after)})
