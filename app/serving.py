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

Nor does httptools bound a request's head: one header of 50 MB is buffered (and grown by
repeated copies) before the app sees it. Here the head is counted while it is parsed, in
headers (`max_headers`) and in bytes (`max_header_bytes`, request line included): the raw bytes
of a head still being received are counted as they arrive, so a head over the limit is refused
before it is whole, with 431 and the error envelope, and the connection is closed.
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
_HEAD_BODY = json.dumps(
    envelope("request_header_fields_too_large", "request headers are over the server's limit"),
    separators=(",", ":")).encode()
HEAD_TOO_LARGE_RESPONSE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_HEAD_BODY), _HEAD_BODY)
)
DEFAULT_MAX_HEADER_BYTES = 32 * 1024
DEFAULT_MAX_HEADERS = 100


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, noting when the head of the request it waits for began
    (at the connection's start, and at a keep-alive connection's next request's first byte),
    and refusing a head over `max_header_bytes` or `max_headers`."""

    head_since: float | None = None
    max_header_bytes = DEFAULT_MAX_HEADER_BYTES
    max_headers = DEFAULT_MAX_HEADERS
    _in_head = False  # between a request's first byte and the end of its headers
    _begun = 0  # requests begun on this connection
    _parsed = 0  # bytes of the current head's request target and headers, as parsed
    _received = 0  # raw bytes of the current head received after the chunk it began in
    _fields = 0
    _over = False  # the current head is over a limit: it is not handed to the app

    @classmethod
    def limited(cls, max_header_bytes: int, max_headers: int) -> type[Protocol]:
        """This protocol with other limits, for one server."""
        return type(cls.__name__, (cls,), {
            "max_header_bytes": max_header_bytes, "max_headers": max_headers})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_since = self.loop.time()

    def data_received(self, data: bytes) -> None:
        if self._over:
            return  # refused and closing: nothing more is parsed
        begun, in_head = self._begun, self._in_head
        super().data_received(data)
        if in_head and self._in_head and self._begun == begun:
            # All of this chunk belongs to the head still being received (the chunk a head
            # begins in is left out: it may hold the end of an earlier request).
            self._received += len(data)
            if self._received > self.max_header_bytes:
                self._over = True
        if self._over:
            self._refuse_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun += 1
        self._in_head = True
        self._parsed = self._received = self._fields = 0
        if self.head_since is None:
            self.head_since = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self._count(len(url), 0)
        if not self._over:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, 1)  # with ": " and CRLF
        if not self._over:
            super().on_header(name, value)

    def _count(self, size: int, fields: int) -> None:
        self._parsed += size
        self._fields += fields
        if self._parsed > self.max_header_bytes or self._fields > self.max_headers:
            self._over = True

    def on_headers_complete(self) -> None:
        self.head_since = None
        self._in_head = False
        if not self._over:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._over:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._over:
            super().on_message_complete()

    def _refuse_head(self) -> None:
        self.head_since = None
        transport = self.transport
        if transport.is_closing():
            return
        # While an earlier request's response is still being written, a 431 would land inside
        # it: then the connection is only closed.
        if self.cycle is None or self.cycle.response_complete:
            transport.write(HEAD_TOO_LARGE_RESPONSE)
        transport.close()


class Server(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, changes: Changes, header_timeout: float = 10.0,
        head_limits: tuple[int, int] | None = None,
    ) -> None:
        """`head_limits`: max_header_bytes and max_headers for `Protocol` connections."""
        if head_limits is not None and isinstance(config.http, type) and issubclass(
                config.http, Protocol):
            config.http = config.http.limited(*head_limits)
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
