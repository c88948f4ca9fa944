"""Hostile input against `POST /webhooks/{source}`, over TCP against one real `hookline serve`.

Every case asserts the status the contract documents and the JSON error envelope, never a 5xx.
After every case a good signed event must still get 202; when the module ends, the store must
hold exactly the events that were acknowledged, and the server's log must show no traceback, no
unhandled error and no 5xx. Malformed HTTP that uvicorn's parser (httptools) refuses before the
app runs gets uvicorn's plain-text 400 or a closed connection, never the envelope: those cases
assert "4xx or closed". The parser-level cases at the end call `_parse_json` directly.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from conftest import STANDARD_SECRET, sample, standard_body, standard_headers
from server import ServerProcess, running_server

from app.errors import InvalidJson
from app.ingest import _parse_json

ALFRED = "/webhooks/alfred?token=alfred-token"
FILECHECK_SECRET = b"fc-hmac"
FILECHECK_LIMIT = 64 * 1024
API_TOKEN = "battery-read-token"
JSON = {"content-type": "application/json"}

CONFIG = f"""
[server]
body_timeout_seconds = 1

[storage]
url = "sqlite:///hostile.db"

[[api.tokens]]
name = "battery"
token = "{API_TOKEN}"
scopes = ["read"]

[sources.partner]
platform = "standard"
auth = {{ scheme = "standard_webhooks", secrets = ["{STANDARD_SECRET}"], tolerance_seconds = 300 }}

[sources.alfred]
platform = "alfred"
auth = {{ scheme = "query_token", secrets = ["alfred-token"] }}

[sources.filecheck]
platform = "filecheck"
auth = {{ scheme = "hmac_sha256", header = "x-filecheck-signature", secrets = ["fc-hmac"] }}
max_body_bytes = {FILECHECK_LIMIT}

[[routes]]
match = "*"
handler = "log"

[handlers.log]
use = "log"
"""

_ids = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{time.time_ns()}-{next(_ids)}"


@dataclass
class Hookline:
    """The server under attack, an HTTP client for it, and every event it acknowledged."""

    server: ServerProcess
    http: httpx.Client
    acknowledged: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    def post(self, path: str, content: bytes, headers: dict[str, Any]) -> httpx.Response:
        response = self.http.post(path, content=content, headers=headers)
        assert response.status_code < 500, response.text
        if response.status_code == 202:
            self.acknowledged.append(response.json()["id"])
        return response

    def post_good(self) -> httpx.Response:
        body = standard_body()
        headers = standard_headers(body, time.time(), unique("good"))
        response = self.post("/webhooks/partner", body, headers)
        assert response.status_code == 202, response.text
        return response

    def stored_ids(self) -> set[str]:
        auth = {"authorization": f"Bearer {API_TOKEN}"}
        ids: set[str] = set()
        params: dict[str, Any] = {"limit": 500}
        for _ in range(100):
            page = self.http.get("/api/events", params=params, headers=auth).json()
            ids.update(item["id"] for item in page["items"])
            if not page["next_cursor"]:
                return ids
            params["cursor"] = page["next_cursor"]
        raise AssertionError("more pages of events than the battery could have stored")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hookline]:
    """One server for the whole module; when it ends, the store and the log are checked."""
    workdir = tmp_path_factory.mktemp("hostile")
    config = workdir / "hookline.toml"
    config.write_text(CONFIG)
    with running_server(["--config", str(config)], cwd=workdir) as process, httpx.Client(
        base_url=process.url, timeout=10
    ) as http:
        target = Hookline(process, http)
        yield target
        assert target.stored_ids() == set(target.acknowledged)
    assert "Traceback" not in process.output
    assert "unhandled error" not in process.output
    assert re.search(r"status=5\d\d", process.output) is None


@pytest.fixture
def hookline(server: Hookline) -> Iterator[Hookline]:
    """The server, proven to still take a good signed event after the case ran."""
    yield server
    assert server.server.proc.poll() is None, "the server died"
    server.post_good()


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], list)
    error: dict[str, Any] = body["error"]
    return error


def alfred_event(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(sample("alfred/alfred.job.retry.json"))
    event["event_id"] = unique("alfred")
    event.update(changes)
    return event


def filecheck_headers(body: bytes) -> dict[str, str]:
    digest = hmac.new(FILECHECK_SECRET, body, hashlib.sha256).hexdigest()
    return {**JSON, "x-filecheck-signature": f"sha256={digest}"}


# --- raw sockets, for what an HTTP client library would refuse to send -------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def error_code(self) -> str:
        code: str = json.loads(self.body)["error"]["code"]
        return code


def connect(hookline: Hookline, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", hookline.port), timeout=5)
    if data:
        sock.sendall(data)
    return sock


def read_reply(sock: socket.socket, timeout: float = 5) -> Reply | None:
    """The next response on `sock`, or None when the server closed the connection instead."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(rest) >= length:
                return Reply(int(lines[0].split()[1]), headers, rest[:length])
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no answer within {timeout} s: {data[:200]!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return None
        data += chunk


def closed_by_server(sock: socket.socket, timeout: float, keep_sending: bool = False) -> bool:
    """Whether the server closes `sock` within `timeout`, even while the client keeps sending."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            if keep_sending:
                sock.sendall(b"x")
            readable, _, _ = select.select([sock], [], [], min(left, 0.2))
            if readable and not sock.recv(65536):
                return True
        except (BrokenPipeError, ConnectionResetError):
            return True
    return False


def request_head(path: str, *extra: str, length: int | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", *extra]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def assert_refused_by_http_layer(reply: Reply | None) -> None:
    # httptools refuses malformed HTTP before the ASGI app is called, so the answer is uvicorn's
    # own plain-text 400 (or just a closed connection), never the app's envelope.
    assert reply is None or 400 <= reply.status < 500, reply


# --- body size ----------------------------------------------------------------------------------


def test_declared_length_over_the_limit_is_413_before_any_body(hookline: Hookline) -> None:
    with connect(hookline, request_head("/webhooks/filecheck", length=100 * 1024 * 1024)) as sock:
        reply = read_reply(sock, timeout=2)  # no body was sent: only the declared length counts
        assert reply is not None and reply.status == 413
        assert reply.error_code() == "payload_too_large"
        assert reply.headers["connection"] == "close"
        assert closed_by_server(sock, timeout=2)


def test_content_length_longer_than_the_body_times_out_with_408(hookline: Hookline) -> None:
    body = json.dumps(alfred_event()).encode()
    started = time.monotonic()
    with connect(hookline, request_head(ALFRED, length=len(body) + 100) + body) as sock:
        reply = read_reply(sock, timeout=4)
        assert reply is not None and reply.status == 408
        assert reply.error_code() == "request_timeout"
        assert reply.headers["connection"] == "close"
    assert time.monotonic() - started < 4


# --- slow and vanishing clients -----------------------------------------------------------------


def test_a_slow_loris_body_is_cut_off_and_its_connection_closed(hookline: Hookline) -> None:
    body = json.dumps(alfred_event()).encode()
    started = time.monotonic()
    with connect(hookline, request_head(ALFRED, length=len(body))) as sock:
        hookline.post_good()  # others are served while the slow body trickles in
        for byte in itertools.islice(body, 40):  # one byte per 0.2 s: at most 8 s
            sock.sendall(bytes([byte]))
            if select.select([sock], [], [], 0.2)[0]:
                break
        reply = read_reply(sock, timeout=2)
        assert reply is None or (reply.status == 408 and reply.error_code() == "request_timeout")
        assert time.monotonic() - started < 3  # body_timeout_seconds is 1
        # Trickling on must not keep the connection open.
        assert closed_by_server(sock, timeout=2, keep_sending=True)


# --- the parser itself --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b'{"a": 1, "a": 2}', b'{"a": 1, "\\u0061": 2}', b'{"x": {"b": 1, "c": 2, "b": 3}}',
     b'{"x": [{"k": 1}, {"k": 1, "k": 1}]}'],
    ids=["top-level", "escaped-spelling", "nested", "in-array"],
)
def test_a_repeated_key_is_invalid_json(body: bytes) -> None:
    with pytest.raises(InvalidJson, match="duplicate key"):
        _parse_json(body)


def test_the_same_key_in_different_objects_is_fine() -> None:
    body = b'{"a": {"a": {"a": 1}}, "b": [{"a": 1}, {"a": 2}]}'
    assert _parse_json(body) == {"a": {"a": {"a": 1}}, "b": [{"a": 1}, {"a": 2}]}


@pytest.mark.parametrize(
    "body",
    [b'{"a": "\\ud800"}', b'{"a": ["x", {"b": "x\\udfff"}]}', b'{"\\udbff": 1}',
     b'{"a": "x\\u0000y"}'],
    ids=["lone-high-surrogate", "lone-low-surrogate-nested", "in-a-key", "nul"],
)
def test_a_string_no_store_can_write_is_invalid_json(body: bytes) -> None:
    with pytest.raises(InvalidJson, match="NUL or an unpaired surrogate"):
        _parse_json(body)


def test_escapes_that_only_look_risky_are_fine() -> None:
    body = b'{"emoji": "\\ud83d\\ude00", "text": "\\\\ud800 \\\\u0000", "u": "\\u00fc"}'
    assert _parse_json(body) == {"emoji": "\U0001f600", "text": "\\ud800 \\u0000", "u": "\u00fc"}

