"""A single-writer batcher: many producers, one consumer that handles whatever is waiting at once.

Producers `submit` an item and await its own result; one task takes everything queued (up to
`batch_max`), hands it to `write` in one call and resolves each producer's future with its own
result or exception. The queue is bounded: `submit` raises `QueueFull` at once rather than
letting a backlog grow without limit. Ingest uses it for group commit, the worker for recording
delivery outcomes, so both pay one transaction (one fsync) per batch instead of one per item.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("hookline.batching")

WriteBatch = Callable[[Sequence[T]], Awaitable[Sequence["R | Exception"]]]


class QueueFull(Exception):
    """The batcher's queue is at its bound."""


class NotRunning(Exception):
    """The batcher's writer task is not running."""


class Batcher(Generic[T, R]):
    def __init__(self, write: WriteBatch[T, R], maxsize: int, batch_max: int, name: str) -> None:
        self._write = write
        self.batch_max = batch_max
        self.name = name
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue(maxsize)
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def full(self) -> bool:
        return self._queue.full()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Write everything queued, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def submit_nowait(self, item: T) -> asyncio.Future[R]:
        """Queue one item; the future resolves when its batch was written."""
        if not self.running:
            raise NotRunning(self.name)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise QueueFull(self.name) from None
        return future

    async def submit(self, item: T) -> R:
        return await self.submit_nowait(item)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._flush(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _flush(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results: Sequence[R | Exception] = await self._write([item for item, _ in batch])
        except Exception as exc:  # a failed write answers every waiter; the writer lives on
            log.error("%s: batch of %d not written: %s", self.name, len(batch), exc)
            results = [exc for _ in batch]
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # the waiter went away
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
