"""Opening the store at start, and waiting for it when it cannot be reached yet.

A receiver or worker often starts before its database (a container started beside PostgreSQL,
a machine rebooting). Exiting with a traceback makes the supervisor restart it in a loop; instead
the process starts serving at once (`/healthz` answers, `/readyz` and webhooks answer 503 with
`Retry-After`) and opens the store in the background, with backoff and one log line per try.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator

from app.store import Store, StoreError

log = logging.getLogger("hookline")

Wait = Callable[[float], Awaitable[None]]


def backoff(first: float = 1.0, most: float = 30.0) -> Iterator[float]:
    """Seconds to wait before each next try: doubling from `first`, capped at `most`."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, most)


async def open_store(store: Store, wait: Wait = asyncio.sleep,
                     delays: Iterator[float] | None = None) -> int:
    """Open `store`, trying again after each failure until it opens; return the tries it took."""
    tries = 0
    for delay in delays or backoff():
        tries += 1
        try:
            await store.open()
        except StoreError as exc:
            log.warning("store unreachable (try %d): %s; trying again in %g s", tries, exc, delay)
            await wait(delay)
        else:
            if tries > 1:
                log.info("store opened after %d tries", tries)
            return tries
    raise AssertionError("backoff never ends")
