"""uvicorn's server, taught to end hookline's live tails when it is asked to stop.

uvicorn lets open responses finish before it shuts down, and a live tail never finishes by
itself: without this, every open dashboard would hold a stop for the whole grace period.
"""

from __future__ import annotations

import asyncio
import socket
from types import FrameType

import uvicorn

from app.stream import Changes


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, changes: Changes) -> None:
        super().__init__(config)
        self.changes = changes
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.changes.close)
