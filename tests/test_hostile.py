"""Hostile input against `POST /webhooks/{source}`, over TCP against one real `hookline serve`.

Every case asserts the status the contract documents and the JSON error envelope, never a 5xx.
After every case a good signed event must still get 202; when the module ends, the store must
hold exactly the events that were acknowledged, and the server's log must show no traceback, no
unhandled error and no 5xx. Malformed HTTP that uvicorn's parser (httptools) refuses before the
app runs gets uvicorn's plain-text 400 or a closed connection, never the envelope: those cases
assert "4xx or closed". The parser-level cases at the end call `_parse_json` directly.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import re
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from conftest import STANDARD_SECRET, sample, standard_body, standard_headers
from server import ServerProcess, running_server, wait_until

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
header_timeout_seconds = 1

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


def test_declared_length_over_the_limit_with_expect_continue_gets_no_continue(
    hookline: Hookline,
) -> None:
    head = request_head("/webhooks/filecheck", "Expect: 100-continue", length=FILECHECK_LIMIT + 1)
    with connect(hookline, head) as sock:
        reply = read_reply(sock, timeout=2)
        assert reply is not None and reply.status == 413  # not "100 Continue" first
        assert reply.error_code() == "payload_too_large"


def test_body_of_exactly_the_limit_is_accepted_and_one_byte_more_is_413(
    hookline: Hookline,
) -> None:
    event = json.loads(sample("filecheck/filecheck.job.created.json"))
    event["id"] = unique("job")
    event["padding"] = ""
    event["padding"] = "x" * (FILECHECK_LIMIT - len(json.dumps(event).encode()))
    body = json.dumps(event).encode()
    assert len(body) == FILECHECK_LIMIT
    assert hookline.post("/webhooks/filecheck", body, filecheck_headers(body)).status_code == 202
    over = body[:-1] + b' }'
    response = hookline.post("/webhooks/filecheck", over, filecheck_headers(over))
    assert_error(response, 413, "payload_too_large")


def test_chunked_body_streamed_over_the_limit_is_413(hookline: Hookline) -> None:
    head = request_head("/webhooks/filecheck", "Transfer-Encoding: chunked",
                        "x-filecheck-signature: sha256=" + "0" * 64)
    chunk = b"%x\r\n%s\r\n" % (8192, b" " * 8192)
    with connect(hookline, head) as sock:
        # Paced, so the server has read everything sent when it answers: a close with unread
        # data would be a reset, which can discard the answer before it is read.
        for _ in range(2 * FILECHECK_LIMIT // 8192):
            sock.sendall(chunk)
            if select.select([sock], [], [], 0.05)[0]:
                break
        reply = read_reply(sock)
    assert reply is not None and reply.status == 413
    assert reply.error_code() == "payload_too_large"


def test_content_length_shorter_than_the_body(hookline: Hookline) -> None:
    body = json.dumps(alfred_event()).encode()
    with connect(hookline, request_head(ALFRED, length=10) + body[:10]) as sock:
        reply = read_reply(sock)
        assert reply is not None and reply.status == 400  # the 10 bytes declared are cut JSON
        assert reply.error_code() == "invalid_json"
        # The rest of the body arrives as if it were the next request.
        sock.sendall(body[10:] + b"\r\n\r\n")
        assert_refused_by_http_layer(read_reply(sock))


def test_content_length_longer_than_the_body_times_out_with_408(hookline: Hookline) -> None:
    body = json.dumps(alfred_event()).encode()
    started = time.monotonic()
    with connect(hookline, request_head(ALFRED, length=len(body) + 100) + body) as sock:
        reply = read_reply(sock, timeout=4)
        assert reply is not None and reply.status == 408
        assert reply.error_code() == "request_timeout"
        assert reply.headers["connection"] == "close"
    assert time.monotonic() - started < 4


@pytest.mark.parametrize(
    "framing",
    [("Content-Length: abc",), ("Content-Length: 5", "Content-Length: 6"),
     ("Content-Length: 5", "Transfer-Encoding: chunked"), ("Content-Length: -5",)],
    ids=["not-a-number", "two-lengths", "length-and-chunked", "negative"],
)
def test_ambiguous_body_framing_is_refused_by_the_http_layer(
    hookline: Hookline, framing: tuple[str, ...]
) -> None:
    with connect(hookline, request_head(ALFRED, *framing) + b'{"a": 1}') as sock:
        assert_refused_by_http_layer(read_reply(sock))


def test_a_huge_string_within_the_limit_is_accepted_and_kept_exactly(hookline: Hookline) -> None:
    event = alfred_event()
    event["event"]["metadata"] = "\u00e9" * 400_000  # 800 KB of two-byte UTF-8, under 1 MiB
    body = json.dumps(event, ensure_ascii=False).encode()
    response = hookline.post(ALFRED, body, JSON)
    assert response.status_code == 202, response.text
    raw = hookline.http.get(f"/api/events/{response.json()['id']}/raw",
                            headers={"authorization": f"Bearer {API_TOKEN}"})
    assert raw.content == body


# --- bodies that are not a JSON object ----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [json.dumps(alfred_event()).encode()[:-7], b"\xff\xfe{\x00}\x00", b"", b"   ",
     b'{"event_id": NaN}', b'{"event_id": Infinity}', b'{"a": 1} {"b": 2}', b"\xef\xbb\xbf"],
    ids=["truncated", "not-utf8", "empty", "only-whitespace", "nan", "infinity",
         "two-documents", "only-a-bom"],
)
def test_not_json_is_400(hookline: Hookline, body: bytes) -> None:
    assert_error(hookline.post(ALFRED, body, JSON), 400, "invalid_json")


def test_not_utf8_says_so(hookline: Hookline) -> None:
    body = json.dumps(alfred_event()).encode().replace(b"alex_case", b"alex_\xe9")
    error = assert_error(hookline.post(ALFRED, body, JSON), 400, "invalid_json")
    assert "UTF-8" in error["message"]


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"42", b"null", b"true"],
                         ids=["array", "string", "number", "null", "bool"])
def test_json_that_is_not_an_object_is_400(hookline: Hookline, body: bytes) -> None:
    error = assert_error(hookline.post(ALFRED, body, JSON), 400, "invalid_json")
    assert "object" in error["message"]


def test_utf8_bom_is_accepted(hookline: Hookline) -> None:
    body = b"\xef\xbb\xbf" + json.dumps(alfred_event()).encode()
    response = hookline.post(ALFRED, body, JSON)
    assert response.status_code == 202, response.text


def test_ten_thousand_levels_of_nesting_is_400(hookline: Hookline) -> None:
    body = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    assert_error(hookline.post(ALFRED, body, JSON), 400, "invalid_json")


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"9" * 10_000],
                         ids=["1e400", "-1e400", "ten-thousand-digits"])
def test_a_number_python_cannot_hold_is_400(hookline: Hookline, number: bytes) -> None:
    body = json.dumps(alfred_event()).encode().replace(b'"1653443100.00"', number)
    assert number in body
    assert_error(hookline.post(ALFRED, body, JSON), 400, "invalid_json")


def test_a_repeated_key_is_400_duplicate_key(hookline: Hookline) -> None:
    # One reader would see the first event id, another the second: refused, not guessed.
    event = json.dumps(alfred_event()).encode()
    body = b'{"event_id": "first",' + event[1:]
    error = assert_error(hookline.post(ALFRED, body, JSON), 400, "invalid_json")
    assert "duplicate key" in error["message"]


@pytest.mark.parametrize("value", [b'"\\ud800"', b'"a\\u0000b"'], ids=["lone-surrogate", "nul"])
def test_a_string_no_store_can_write_is_400_not_503(hookline: Hookline, value: bytes) -> None:
    body = json.dumps(alfred_event()).encode().replace(b'"alex_case"', value)
    assert value in body
    error = assert_error(hookline.post(ALFRED, body, JSON), 400, "invalid_json")
    assert "surrogate" in error["message"]


# --- bodies that fail the schema ----------------------------------------------------------------

WRONG_TYPES: dict[tuple[str, ...], Any] = {
    ("event_id",): ["an", "array"],
    ("event_type",): {"an": "object"},
    ("event_time",): "yesterday",
    ("event",): "job_retry_event",
    ("event", "event_name"): {"an": "object"},
    ("event", "event_type"): ["job_event_type"],
    ("event", "job_id"): ["an", "array"],
    ("event", "user_name"): {"an": "object"},
    ("event", "merge"): "perhaps",
    ("event", "metadata"): True,
    ("event", "file_count"): "many",
    ("event", "retries"): "two",
    ("event", "exceeded_retries"): [False],
    ("event", "error_messages"): "one message, not a list",
    ("event", "company_id"): ["an", "array"],
    ("event", "company_name"): {"an": "object"},
    ("event", "file_urls"): "https://example.com/files/data1.xlsx",
    ("event", "creation_date"): "not a date",
}


def test_the_wrong_type_table_covers_every_field_of_the_sample() -> None:
    event = json.loads(sample("alfred/alfred.job.retry.json"))
    fields = {(name,) for name in event} | {("event", name) for name in event["event"]}
    assert set(WRONG_TYPES) == fields


@pytest.mark.parametrize("loc", list(WRONG_TYPES), ids=".".join)
def test_a_wrong_type_in_any_field_is_422_naming_it(
    hookline: Hookline, loc: tuple[str, ...]
) -> None:
    event = alfred_event()
    parent = event if len(loc) == 1 else event["event"]
    parent[loc[-1]] = copy.deepcopy(WRONG_TYPES[loc])
    error = assert_error(hookline.post(ALFRED, json.dumps(event).encode(), JSON),
                         422, "schema_invalid")
    assert any(tuple(d["loc"][:len(loc)]) == loc and d["msg"] for d in error["details"]), error


@pytest.mark.parametrize("name", ["event_id", "event_type", "event_time", "event"])
def test_a_missing_envelope_field_is_422_naming_it(hookline: Hookline, name: str) -> None:
    event = alfred_event()
    del event[name]
    error = assert_error(hookline.post(ALFRED, json.dumps(event).encode(), JSON),
                         422, "schema_invalid")
    assert [name] in [d["loc"] for d in error["details"]], error


def test_a_handshake_with_a_non_string_challenge_is_422(hookline: Hookline) -> None:
    body = json.dumps({"type": "url_verification", "challenge": {"a": 1}}).encode()
    error = assert_error(hookline.post(ALFRED, body, JSON), 422, "schema_invalid")
    assert ["challenge"] in [d["loc"] for d in error["details"]]


def test_a_handshake_is_answered_and_stores_nothing(hookline: Hookline) -> None:
    body = json.dumps({"type": "url_verification", "challenge": "c-123"}).encode()
    response = hookline.post(ALFRED, body, JSON)
    assert (response.status_code, response.json()) == (200, {"challenge": "c-123"})
    # The module's final check proves nothing was stored for it.


# --- authentication -----------------------------------------------------------------------------


def test_a_replayed_standard_webhook_is_200_duplicate_never_a_second_event(
    hookline: Hookline,
) -> None:
    body = standard_body()
    headers = standard_headers(body, time.time(), unique("replayed"))
    first = hookline.post("/webhooks/partner", body, headers)
    assert first.status_code == 202
    again = hookline.post("/webhooks/partner", body, headers)
    assert (again.status_code, again.json()) == (200, {"id": first.json()["id"], "duplicate": True})

    other = standard_body(data={"platform": "dcycle", "file_id": "forged"})
    assert_error(hookline.post("/webhooks/partner", other, headers), 401, "unauthorized")


@pytest.mark.parametrize(
    "stamp", ["stale", "future", "huge", "negative", "not-a-number", "empty", "fraction"]
)
def test_a_bad_standard_timestamp_is_401(hookline: Hookline, stamp: str) -> None:
    body = standard_body()
    now = time.time()
    if stamp in ("stale", "future"):
        headers = standard_headers(body, now - 301 if stamp == "stale" else now + 301,
                                   unique("stamp"))
    else:
        headers = standard_headers(body, now, unique("stamp"))
        headers["webhook-timestamp"] = {"huge": "9" * 40, "negative": "-1", "empty": "",
                                        "not-a-number": "soon", "fraction": f"{now:.3f}"}[stamp]
    error = assert_error(hookline.post("/webhooks/partner", body, headers), 401, "unauthorized")
    assert error["message"] == "unauthorized"  # no hint which part failed


def test_a_signature_for_another_body_is_401(hookline: Hookline) -> None:
    body = standard_body()
    headers = standard_headers(standard_body("other.type"), time.time(), unique("other"))
    assert_error(hookline.post("/webhooks/partner", body, headers), 401, "unauthorized")


@pytest.mark.parametrize(
    "signature",
    [b"v1,not-base64!", b"v1,", b"v2," + b"A" * 44, b"v1,\xff\xfe\xfd", b"v1," + b"QUFB" * 4000],
    ids=["not-base64", "empty", "unknown-version", "latin-1-bytes", "16-kb"],
)
def test_a_malformed_standard_signature_is_401(hookline: Hookline, signature: bytes) -> None:
    body = standard_body()
    headers: dict[str, Any] = standard_headers(body, time.time(), unique("sig"))
    headers["webhook-signature"] = signature
    assert_error(hookline.post("/webhooks/partner", body, headers), 401, "unauthorized")


@pytest.mark.parametrize(
    "signature", [b"sha256=" + b"0" * 64, b"sha256=", b"sha256=zz", b"\xff" * 64],
    ids=["wrong", "empty", "not-hex", "latin-1-bytes"],
)
def test_a_bad_hmac_signature_is_401(hookline: Hookline, signature: bytes) -> None:
    body = sample("filecheck/filecheck.job.created.json")
    headers = {**JSON, "x-filecheck-signature": signature}
    assert_error(hookline.post("/webhooks/filecheck", body, headers), 401, "unauthorized")


@pytest.mark.parametrize(
    "query",
    ["", "?token=", "?token=alfred-tokex", "?TOKEN=alfred-token", "?token=alfred-token%00"],
    ids=["missing", "empty", "wrong", "wrong-case-name", "nul-suffix"],
)
def test_a_bad_query_token_is_401(hookline: Hookline, query: str) -> None:
    body = json.dumps(alfred_event()).encode()
    assert_error(hookline.post("/webhooks/alfred" + query, body, JSON), 401, "unauthorized")


# --- paths, methods, content types --------------------------------------------------------------


def test_unknown_source_is_404(hookline: Hookline) -> None:
    assert_error(hookline.post("/webhooks/nope", b"{}", JSON), 404, "unknown_source")


@pytest.mark.parametrize(
    ("path", "code"),
    [("/webhooks/..%2f..%2fapi%2fevents", "not_found"),  # decoded to slashes: no route matches
     ("/webhooks/%2e%2e", "unknown_source"),  # a source named ".."
     ("/webhooks/%2e%2e%2fapi%2fevents", "not_found")],
)
def test_path_traversal_in_the_source_is_404(hookline: Hookline, path: str, code: str) -> None:
    assert_error(hookline.post(path, b"{}", JSON), 404, code)


def test_dot_segments_on_the_wire_are_not_resolved(hookline: Hookline) -> None:
    # httpx would resolve "..": send the request line as is.
    with connect(hookline, request_head("/webhooks/../api/events", "Connection: close", length=2)
                 + b"{}") as sock:
        reply = read_reply(sock)
    assert reply is not None and reply.status == 404
    assert reply.error_code() == "not_found"


def test_crlf_in_the_source_is_not_reflected_into_headers(hookline: Hookline) -> None:
    response = hookline.post("/webhooks/x%0d%0aSet-Cookie:%20stolen=1", b"{}", JSON)
    assert_error(response, 404, "unknown_source")
    assert "set-cookie" not in response.headers
    assert "stolen" not in response.text


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_a_wrong_method_is_405(hookline: Hookline, method: str) -> None:
    response = hookline.http.request(method, ALFRED, content=b"{}", headers=JSON)
    assert_error(response, 405, "method_not_allowed")


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/jsonx", "json", "application/json\xff"],
)
def test_a_wrong_content_type_is_415(hookline: Hookline, content_type: str | None) -> None:
    body = json.dumps(alfred_event()).encode()
    headers = {} if content_type is None else {"content-type": content_type.encode("latin-1")}
    assert_error(hookline.post(ALFRED, body, headers), 415, "unsupported_media_type")


# --- malformed HTTP, sent over a raw socket -----------------------------------------------------


def test_a_well_formed_raw_request_is_accepted(hookline: Hookline) -> None:
    # The control for the raw-socket cases: what they change is all that is wrong with them.
    body = json.dumps(alfred_event()).encode()
    head = request_head(ALFRED, length=len(body))[:-2] + b"X-Note: one two\r\n\r\n"
    with connect(hookline, head + body) as sock:
        reply = read_reply(sock)
    assert reply is not None and reply.status == 202
    hookline.acknowledged.append(json.loads(reply.body)["id"])


@pytest.mark.parametrize(
    "header",
    [b"X-Note: one\nInjected: two", b"X-Note: one\rInjected: two", b"X-Note: one\x00two",
     b"X-Note: one\r\n folded: two", b"Bad Name: one", b"X-Note one"],
    ids=["bare-lf", "bare-cr", "nul", "obs-fold", "space-in-name", "no-colon"],
)
def test_header_injection_is_refused_by_the_http_layer(hookline: Hookline, header: bytes) -> None:
    body = json.dumps(alfred_event()).encode()
    head = request_head(ALFRED, length=len(body))[:-2] + header + b"\r\n\r\n"
    with connect(hookline, head + body) as sock:
        assert_refused_by_http_layer(read_reply(sock))


def test_a_garbage_request_line_is_refused_by_the_http_layer(hookline: Hookline) -> None:
    with connect(hookline, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n") as sock:
        assert_refused_by_http_layer(read_reply(sock))


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


@pytest.mark.parametrize("how", ["fin", "reset"])
def test_a_connection_dropped_mid_body_leaves_the_server_up(hookline: Hookline, how: str) -> None:
    def timeouts() -> int:
        return sum("status=408" in line for line in list(hookline.server.lines))

    before = timeouts()
    body = json.dumps(alfred_event()).encode()
    sock = connect(hookline, request_head(ALFRED, length=len(body)) + body[: len(body) // 2])
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    # The app saw the client go away (and answered into the void) before the good event is sent.
    wait_until(lambda: timeouts() > before, timeout=5)


def test_many_connections_stuck_in_their_headers_do_not_block_good_events(
    hookline: Hookline,
) -> None:
    stuck = [connect(hookline, b"POST /webhooks/alfred HTTP/1.1\r\nHost: 127.0.0.1\r\n")
             for _ in range(50)]
    try:
        started = time.monotonic()
        hookline.post_good()
        assert time.monotonic() - started < 2
    finally:
        for sock in stuck:
            sock.close()


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /webhooks/alfred HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"GET /hea"],
    ids=["nothing", "part-of-the-headers", "part-of-the-request-line"],
)
def test_a_connection_slow_to_send_its_headers_is_answered_408_and_closed(
    hookline: Hookline, sent: bytes
) -> None:
    started = time.monotonic()
    with connect(hookline, sent) as sock:
        hookline.post_good()  # served meanwhile
        reply = read_reply(sock, timeout=4)
        assert reply is not None and reply.status == 408
        assert reply.error_code() == "request_timeout"
        assert 1 <= time.monotonic() - started < 3  # header_timeout_seconds is 1
        assert closed_by_server(sock, timeout=2, keep_sending=True)


def test_a_keep_alive_connection_gets_the_header_timeout_for_each_request(
    hookline: Hookline,
) -> None:
    body = json.dumps(alfred_event()).encode()
    with connect(hookline, request_head(ALFRED, length=len(body)) + body) as sock:
        first = read_reply(sock)
        assert first is not None and first.status == 202
        hookline.acknowledged.append(json.loads(first.body)["id"])
        started = time.monotonic()
        sock.sendall(b"POST /webhooks/alfred HTTP/1.1\r\n")  # the next request, left unfinished
        reply = read_reply(sock, timeout=4)
        assert reply is not None and reply.status == 408
        assert time.monotonic() - started < 3


# --- request head limits (max_header_bytes 32 KiB, max_headers 100 by default) -----------------


def assert_431(reply: Reply | None) -> None:
    assert reply is not None and reply.status == 431, reply
    assert reply.error_code() == "request_header_fields_too_large"
    assert reply.headers["connection"] == "close"


@pytest.mark.parametrize(
    "extra",
    [[f"X-Big: {'a' * 40_000}"], [f"X-N{i}: v" for i in range(101)],
     [f"X-Part{i}: {'b' * 1000}" for i in range(40)]],
    ids=["one-40k-header", "101-headers", "40-headers-of-1k"],
)
def test_a_head_over_the_limits_is_431_and_closed(hookline: Hookline, extra: list[str]) -> None:
    body = json.dumps(alfred_event()).encode()
    with connect(hookline, request_head(ALFRED, *extra, length=len(body)) + body) as sock:
        assert_431(read_reply(sock))
        assert closed_by_server(sock, timeout=2)


def test_a_head_just_within_the_limits_is_accepted(hookline: Hookline) -> None:
    body = json.dumps(alfred_event()).encode()
    extra = [f"X-Part{i}: {'c' * 1000}" for i in range(28)] + [f"X-N{i}: v" for i in range(60)]
    with connect(hookline, request_head(ALFRED, *extra, length=len(body)) + body) as sock:
        reply = read_reply(sock)
    assert reply is not None and reply.status == 202, reply
    hookline.acknowledged.append(json.loads(reply.body)["id"])


def test_a_header_over_the_limit_is_refused_before_it_ends(hookline: Hookline) -> None:
    # The header never ends: the server must answer from the bytes received so far, not after
    # buffering a whole head of whatever size the client likes.
    head = b"POST /webhooks/alfred?token=alfred-token HTTP/1.1\r\nHost: h\r\nX-Big: "
    with connect(hookline, head) as sock:
        reply = None
        for _ in range(16):  # 64 KiB at most, in 4 KiB pieces
            sock.sendall(b"a" * 4096)
            if select.select([sock], [], [], 0.05)[0]:
                reply = read_reply(sock)
                break
        else:
            reply = read_reply(sock, timeout=2)
        assert_431(reply)


def test_a_50_mb_header_is_cut_off_early(hookline: Hookline) -> None:
    head = b"POST /webhooks/alfred?token=alfred-token HTTP/1.1\r\nHost: h\r\nX-Big: "
    sent = 0
    with connect(hookline, head) as sock:
        try:
            while sent < 50 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        else:
            assert closed_by_server(sock, timeout=2)
    assert sent < 8 * 1024 * 1024  # the kernel's buffers, not the whole header


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

