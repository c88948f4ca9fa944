"""Handlers for the dispatch benchmark: report each invocation to the benchmark over UDP."""

from __future__ import annotations

import socket

from pydantic import BaseModel

from handlers import Context, Event


class StampOptions(BaseModel):
    port: int


class Stamp:
    """Sends `<event id> <seconds from receipt to this call>` to 127.0.0.1:port."""

    name = "stamp"
    Options = StampOptions

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def handle(self, event: Event, ctx: Context) -> None:
        latency = ctx.clock.now() - event.received_at
        self._socket.sendto(f"{event.id} {latency:.6f}".encode(), ("127.0.0.1", ctx.options.port))
