"""uvicorn's server, taught to end hookline's live tails when it is asked to stop, and to close
connections whose request head does not arrive in time.

uvicorn lets open responses finish before it shuts down, and a live tail never finishes by
itself: without this, every open dashboard would hold a stop for the whole grace period.

uvicorn also sets no deadline on a request's head: a client that connects and sends nothing, or
sends its headers a byte at a time (slow loris), holds a connection, and its file descriptor,
for as long as it likes. Here each connection notes when its current head began, and the server
looks over its connections a few times per timeout: one whose head is older than
`header_timeout_seconds` is answered 408 (with the error envelope) and closed. A note and a
periodic look cost the request path next to nothing, unlike a timer per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from types import FrameType

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.errors import envelope
from app.stream import Changes

log = logging.getLogger("hookline.http")

_BODY = json.dumps(envelope("request_timeout", "request headers were not received in time"),
                   separators=(",", ":")).encode()
HEAD_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_BODY), _BODY)
)


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, noting when the head of the request it waits for began:
    at the connection's start, and at a keep-alive connection's next request's first byte."""

    head_since: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_since = self.loop.time()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.head_since is None:
            self.head_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self.head_since = None
        super().on_headers_complete()


class Server(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, changes: Changes, header_timeout: float = 10.0
    ) -> None:
        super().__init__(config)
        self.changes = changes
        self.header_timeout = header_timeout
        self.loop: asyncio.AbstractEventLoop | None = None
        self._watch: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if not self.should_exit:
            self._watch = asyncio.create_task(self._close_slow_heads(), name="hookline-heads")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.changes.close)

    async def _close_slow_heads(self) -> None:
        loop = asyncio.get_running_loop()
        every = min(1.0, self.header_timeout / 4)
        while True:
            await asyncio.sleep(every)
            late = loop.time() - self.header_timeout
            for connection in list(self.server_state.connections):
                since = getattr(connection, "head_since", None)
                if since is not None and since < late:
                    try:
                        close_slow_head(connection)  # type: ignore[arg-type]
                    except Exception:  # one odd connection must not end the watch for all
                        log.exception("closing a connection with a late request head failed")


def close_slow_head(connection: Protocol) -> None:
    """Answer 408 and close, unless an earlier request's response is still being written on
    this connection (a 408 then would land inside it): that connection is looked at again."""
    transport = connection.transport
    cycle = connection.cycle
    if transport.is_closing() or (cycle is not None and not cycle.response_complete):
        return
    connection.head_since = None
    transport.write(HEAD_TIMEOUT_RESPONSE)
    transport.close()
