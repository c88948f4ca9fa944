"""Notices when the event loop stops turning, and says which task held it.

A handler that calls something blocking from its `async def handle` (time.sleep, a synchronous
HTTP client, a long computation) stops the whole process's event loop: ingest, the API and every
other delivery wait with it. Nothing in asyncio can take the loop back from it; what can be done
is to tell, so that the plugin gets fixed. The loop sets a heartbeat every `interval`; a thread
checks it, and when the beat is later than `threshold` it logs the task running at that moment
(a delivery's task is named after its delivery and handler), once per stall. When the loop turns
again, the stall's whole length is logged and counted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("hookline.watchdog")


class LoopWatchdog:
    """Watches one event loop from a thread of its own; `on_stall` gets each stall's length."""

    def __init__(
        self,
        threshold: float = 1.0,
        interval: float = 0.1,
        on_stall: Callable[[float], None] | None = None,
    ) -> None:
        self.threshold = threshold
        self.interval = interval
        self.on_stall = on_stall
        self._loop: asyncio.AbstractEventLoop | None = None
        self._beat_at = time.monotonic()
        self._beat: asyncio.TimerHandle | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._stalled_since: float | None = None
        self._held_by = ""

    def start(self) -> None:
        """Start watching the running loop."""
        self._loop = asyncio.get_running_loop()
        self._heartbeat()
        self._thread = threading.Thread(target=self._watch, name="hookline-watchdog",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeat and the thread (from the loop's own thread)."""
        self._stopping.set()
        if self._beat is not None:
            self._beat.cancel()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _heartbeat(self) -> None:
        now = time.monotonic()
        stalled_since = self._stalled_since
        if stalled_since is not None:
            self._stalled_since = None
            seconds = now - stalled_since
            log.warning("event loop was blocked for %.1f s by %s", seconds, self._held_by)
            if self.on_stall is not None:
                self.on_stall(seconds)
        self._beat_at = now
        assert self._loop is not None
        self._beat = self._loop.call_later(self.interval, self._heartbeat)

    def _watch(self) -> None:
        while not self._stopping.wait(self.interval):
            beat_at = self._beat_at
            late = time.monotonic() - beat_at
            if late <= self.threshold + self.interval or self._stalled_since is not None:
                continue
            task = asyncio.current_task(self._loop)
            if self._beat_at != beat_at:  # the loop turned meanwhile: not the task to blame
                continue
            self._held_by = f"task {task.get_name()!r}" if task is not None else "a callback"
            self._stalled_since = beat_at + self.interval
            log.warning(
                "event loop blocked for %.1f s so far by %s: it is calling something that "
                "blocks (a handler must await its I/O, or hand blocking work to a thread)",
                late - self.interval, self._held_by,
            )
