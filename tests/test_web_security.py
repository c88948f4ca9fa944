"""The read API and the page against a hostile web page and hostile input: raw bodies that would
render, cross-site and DNS-rebinding requests to the open API, unbounded bulk replays, bad input
answered as a store outage, stored payloads too deep to serialise, and live tails without end.

Each test here failed on the code before the fix it covers. test_security.py covers secrets,
tokens and the forward allow-list; test_dashboard.py that the page puts text in text nodes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.config import settings_from_mapping
from app.ids import new_id
from app.main import create_app
from app.metrics import OTHER_VALUES_CAP, Metrics
from app.runtime import Runtime
from app.web_guard import is_loopback_host, is_loopback_origin
from app.worker import WorkerSettings
from schemas.records import NewEvent

from conftest import FakeClock, base_config, standard_body, standard_headers

ADMIN = "web-admin-token-0123456789"


def make_app(config: dict[str, Any], clock: FakeClock) -> Starlette:
    return create_app(settings_from_mapping(config, {}), clock=clock,
                      worker_settings=WorkerSettings(background=False))


@pytest.fixture
async def open_app(store_url: str, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Starlette]:
    """No API tokens, on loopback: the open API, on each store."""
    config = base_config(tmp_path / "unused.db")
    config["storage"] = {"url": store_url}
    config["handlers"] = {"log": {"use": "log"}}
    config["routes"] = [{"match": "*", "handler": "log"}]
    application = make_app(config, clock)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(open_app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=open_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost:8000") as c:
        yield c


async def post_event(client: httpx.AsyncClient, clock: FakeClock, msg_id: str,
                     body: bytes | None = None, content_type: str | None = None) -> str:
    body = body or standard_body()
    headers = standard_headers(body, clock.now(), msg_id)
    if content_type:
        headers["content-type"] = content_type
    response = await client.post("/webhooks/partner", content=body, headers=headers)
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert set(response.json()["error"]) == {"code", "message", "details"}


# /raw never renders.

async def test_raw_is_a_download_no_browser_renders(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    body = standard_body(note="<script>alert(1)</script>")
    event_id = await post_event(client, clock, "raw-xss", body,
                                "application/json; charset=utf-8")
    raw = await client.get(f"/api/events/{event_id}/raw")
    assert raw.status_code == 200 and raw.content == body
    assert raw.headers["content-type"] == "application/octet-stream"
    assert raw.headers["content-disposition"] == "attachment"
    assert raw.headers["x-content-type-options"] == "nosniff"
    assert raw.headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert raw.headers["x-hookline-content-type"] == "application/json; charset=utf-8"


# The page may not be framed, sniffed or made to run anything but its own script.

@pytest.mark.parametrize("path", ["/", "/static/app.js", "/static/style.css"])
async def test_the_page_and_its_assets_carry_a_strict_policy(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    policy = {d.split()[0]: d.split()[1:]
              for d in response.headers["content-security-policy"].split("; ")}
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_the_page_needs_nothing_inline() -> None:
    # What the policy would block: inline script or style, handlers in markup.
    static = Path(__file__).parents[1] / "app" / "static"
    page = (static / "index.html").read_text()
    script = (static / "app.js").read_text()
    assert re.findall(r"<script\b[^>]*>", page) == [
        '<script type="module" src="/static/app.js">']
    assert "<style" not in page and " style=" not in page
    assert not re.search(r"\son[a-z]+=", page)
    for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "new Function",
                  "document.write", '"style"', ".cssText"):
        assert risky not in script, risky


# The open API serves loopback only, and state changes need a JSON body.

@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1", "127.0.0.1:80",
                                  "127.9.8.7:1", "[::1]", "[::1]:8000", "LOCALHOST:8000"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["", "evil.example", "evil.example:8000", "localhost.evil.example",
                                  "127.0.0.1.evil.example", "10.0.0.1", "[::2]:80", "[::1",
                                  "localhost:80x", "0.0.0.0", "[::1]x", "127.0.0.1:8000:1"])
def test_other_hosts(host: str) -> None:
    assert not is_loopback_host(host)


@pytest.mark.parametrize(("origin", "ok"), [
    ("http://localhost:8000", True), ("http://127.0.0.1", True), ("https://[::1]:9", True),
    ("null", False), ("http://evil.example", False), ("file://", False),
    ("http://localhost.evil.example", False), ("http://user@localhost", False),
    ("http://localhost/path", False),
])
def test_loopback_origins(origin: str, ok: bool) -> None:
    assert is_loopback_origin(origin) is ok


@pytest.mark.parametrize("path", ["/api/events", "/api/whoami", "/api/stats", "/", "/openapi.json",
                                  "/static/app.js"])
async def test_open_api_refuses_a_foreign_host(client: httpx.AsyncClient, path: str) -> None:
    # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1.
    assert_error(await client.get(path, headers={"host": "evil.example:8000"}), 403, "forbidden")
    assert (await client.get(path, headers={"host": "127.0.0.1:8000"})).status_code == 200


async def test_open_api_refuses_a_foreign_origin(client: httpx.AsyncClient) -> None:
    for origin in ("http://evil.example", "null"):
        refused = await client.post("/api/replay", json={"type": "*"},
                                    headers={"origin": origin})
        assert_error(refused, 403, "forbidden")
        assert "access-control-allow-origin" not in refused.headers
    ok = await client.get("/api/events", headers={"origin": "http://localhost:8000"})
    assert ok.status_code == 200 and "access-control-allow-origin" not in ok.headers


async def test_open_api_answers_no_preflight(client: httpx.AsyncClient) -> None:
    preflight = await client.options("/api/replay", headers={
        "origin": "http://localhost:3000", "access-control-request-method": "POST",
        "access-control-request-headers": "content-type"})
    assert preflight.status_code == 405
    assert not any(h.startswith("access-control-") for h in preflight.headers)


async def test_webhooks_and_probes_take_any_host(client: httpx.AsyncClient,
                                                 clock: FakeClock) -> None:
    body = standard_body()
    headers = {**standard_headers(body, clock.now(), "tunnel"), "host": "abc.tunnel.example"}
    assert (await client.post("/webhooks/partner", content=body, headers=headers)).status_code \
        == 202
    for path in ("/healthz", "/readyz", "/metrics"):
        response = await client.get(path, headers={"host": "abc.tunnel.example",
                                                   "origin": "http://evil.example"})
        assert response.status_code == 200, path


async def test_with_tokens_any_host_is_served(tmp_path: Path, clock: FakeClock) -> None:
    config = base_config(tmp_path / "tokens.db")
    config["api"] = {"tokens": [{"name": "ops", "token": ADMIN, "scopes": ["admin"]}]}
    application = make_app(config, clock)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://hookline.example") as c:
            answer = await c.get("/api/events", headers={"authorization": f"Bearer {ADMIN}"})
            assert answer.status_code == 200


async def test_a_token_holder_may_post_an_empty_body_without_a_type(
    tmp_path: Path, clock: FakeClock,
) -> None:
    # `curl -X POST -H "Authorization: Bearer ..." .../replay`: no page can forge the token, so
    # the JSON type that fences the open API is not asked of an empty body here.
    config = base_config(tmp_path / "curl.db")
    config["api"] = {"tokens": [{"name": "ops", "token": ADMIN, "scopes": ["admin"]}]}
    application = make_app(config, clock)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            event_id = await post_event(c, clock, "curl")
            auth = {"authorization": f"Bearer {ADMIN}"}
            replayed = await c.post(f"/api/events/{event_id}/replay", headers=auth)
            assert replayed.status_code == 202, replayed.text
            typed = await c.post(f"/api/events/{event_id}/replay", content=b"x=1",
                                 headers={**auth, "content-type": "text/plain"})
            assert typed.status_code == 415
            assert (await c.post(f"/api/events/{event_id}/replay")).status_code == 401


@pytest.mark.parametrize("headers", [{}, {"content-type": "text/plain"},
                                     {"content-type": "application/x-www-form-urlencoded"},
                                     {"content-type": "multipart/form-data; boundary=x"},
                                     {"content-type": "application/jsonx"}])
async def test_state_changes_need_a_json_body(
    client: httpx.AsyncClient, clock: FakeClock, headers: dict[str, str]
) -> None:
    # What a `no-cors` fetch or a form can send cross-site without a preflight.
    event_id = await post_event(client, clock, "json-only")
    for path in (f"/api/events/{event_id}/replay", "/api/replay"):
        refused = await client.post(path, content=b'{"type": "*"}', headers=headers)
        assert_error(refused, 415, "unsupported_media_type")
    record = (await client.get(f"/api/events/{event_id}")).json()
    assert len(record["deliveries"]) == 1  # nothing was replayed
    ok = await client.post("/api/replay", content=b'{"type": "*"}',
                           headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 202


# Bulk replay: a filter, a cap per call, a cursor, and no work for a client that left.

async def test_bulk_replay_needs_a_filter(client: httpx.AsyncClient, clock: FakeClock) -> None:
    await post_event(client, clock, "nofilter")
    for body in ({}, {"dry_run": True}, {"handler": "log"}):
        assert_error(await client.post("/api/replay", json=body), 400, "bad_request")
    for limit in (0, 10_001, "5", 1.5, True):
        refused = await client.post("/api/replay", json={"type": "*", "limit": limit})
        assert_error(refused, 400, "bad_request")
    refused = await client.post("/api/replay", json={"type": "*", "cursor": "bm9wZQ"})
    assert_error(refused, 400, "bad_request")


async def test_bulk_replay_is_capped_and_goes_on_from_its_cursor(
    client: httpx.AsyncClient, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.replay.PAGE", 2)
    ids = [await post_event(client, clock, f"cap{n}") for n in range(7)]
    seen: list[str] = []
    cursor = None
    calls = 0
    while True:
        body: dict[str, Any] = {"type": "*", "dry_run": True, "limit": 3}
        if cursor:
            body["cursor"] = cursor
        answer = (await client.post("/api/replay", json=body)).json()
        calls += 1
        assert answer["events"] <= 3
        seen += [p["event_id"] for p in answer["plan"]]
        cursor = answer["next_cursor"]
        assert answer["more"] is (cursor is not None)
        if cursor is None:
            break
    assert calls == 3 and seen == ids[::-1]
    done = (await client.post("/api/replay", json={"type": "*", "limit": 5})).json()
    assert (done["events"], done["more"]) == (5, True) and done["next_cursor"]


async def test_bulk_replay_stops_when_the_client_goes_away(
    open_app: Starlette, client: httpx.AsyncClient, clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("app.replay.PAGE", 2)
    ids = [await post_event(client, clock, f"gone{n}") for n in range(10)]
    call = Call(open_app, "POST", "/api/replay", json.dumps({"type": "*"}).encode())
    call.gone.set()  # the body arrives, then the client is gone
    await call.task
    runtime: Runtime = open_app.state.runtime
    replayed = 0
    for event_id in ids:
        record = await runtime.store.get_event(event_id)
        assert record is not None
        replayed += len(record.deliveries) - 1
    assert replayed == 2  # one page, then it saw the client had gone


# Bad input is a 400, never a store outage.

def _cursor(number: str) -> str:
    return base64.urlsafe_b64encode(f"s{number}".encode()).decode().rstrip("=")


@pytest.mark.parametrize("number", ["9223372036854775808", "99999999999999999999999999"])
async def test_a_cursor_past_any_position_is_400(client: httpx.AsyncClient, number: str) -> None:
    for path in ("/api/events", "/api/deliveries"):
        response = await client.get(path, params={"cursor": _cursor(number)})
        assert_error(response, 400, "bad_request")
    biggest = await client.get("/api/events", params={"cursor": _cursor("9223372036854775807")})
    assert biggest.status_code == 200


@pytest.mark.parametrize("name", ["source", "type", "status", "job_id", "file_id", "q"])
async def test_a_nul_in_a_filter_is_400(client: httpx.AsyncClient, name: str) -> None:
    response = await client.get("/api/events", params={name: "a\x00b"})
    assert_error(response, 400, "bad_request")
    for path in ("/api/events/evt%00x", "/api/jobs/j%00", "/api/files/f%00",
                 "/api/deliveries?handler=h%00", "/api/stream?type=a%00"):
        assert_error(await client.get(path), 400, "bad_request")
    for body in (b'{"type": "a\\u0000"}', b'{"source": "\\ud800"}'):
        refused = await client.post("/api/replay", content=body,
                                    headers={"content-type": "application/json"})
        assert_error(refused, 400, "bad_request")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
async def test_a_time_that_is_no_number_is_400(client: httpx.AsyncClient, value: str) -> None:
    assert_error(await client.get("/api/events", params={"since": value}), 400, "bad_request")


@pytest.mark.parametrize("last", ["9223372036854775808.0", "1.9999999999999999999"])
async def test_an_out_of_range_last_event_id_is_400(
    client: httpx.AsyncClient, last: str, caplog: pytest.LogCaptureFixture
) -> None:
    response = await client.get("/api/stream", headers={"last-event-id": last})
    assert_error(response, 400, "bad_request")
    assert not [r for r in caplog.records if r.exc_info]


# A stored payload too deep for pydantic is still shown.

async def test_a_deeply_nested_stored_payload_is_served(
    open_app: Starlette, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    deep: dict[str, Any] = {"leaf": True}
    for _ in range(300):
        deep = {"a": deep}
    body = json.dumps({"type": "file.deep", "timestamp": "2026-11-01T10:00:00Z",
                       "data": deep}).encode()
    runtime: Runtime = open_app.state.runtime
    event = NewEvent(id=new_id("evt", clock.now()), source="partner", type="file.deep",
                     dedupe_key=None, received_at=clock.now(), occurred_at=None, body=body,
                     payload=json.loads(body), headers={})
    # Stored straight through the store: ingest may refuse such a body, but one stored earlier
    # (or by another version) must still be readable.
    await runtime.store.save_events([event])
    response = await client.get(f"/api/events/{event.id}")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == event.id and answer["payload"] == json.loads(body)


# Live tails are capped.

class Call:
    """One request driven at the ASGI level, so a test decides when its client goes away."""

    def __init__(self, app: Starlette, method: str, path: str, body: bytes = b"") -> None:
        self.started = asyncio.Event()
        self.gone = asyncio.Event()
        self.status = 0
        self.messages = [{"type": "http.request", "body": body, "more_body": False}]
        headers = [(b"host", b"localhost"), (b"content-type", b"application/json")]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "headers": headers,
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
        self.task = asyncio.ensure_future(app(scope, self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        if self.messages:
            return self.messages.pop(0)
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = dict(message["headers"])
            self.started.set()

    async def leave(self) -> None:
        self.gone.set()
        await self.task


async def test_live_tails_are_capped(tmp_path: Path, clock: FakeClock) -> None:
    config = base_config(tmp_path / "tails.db")
    config["server"] = {"sse_max_connections": 2}
    application = make_app(config, clock)
    async with application.router.lifespan_context(application):
        tails = [Call(application, "GET", "/api/stream") for _ in range(2)]
        for tail in tails:
            await tail.started.wait()
            assert tail.status == 200
        refused = Call(application, "GET", "/api/stream")
        await refused.leave()
        assert refused.status == 503 and refused.headers[b"retry-after"]
        await tails[0].leave()  # a closed tail gives its place back
        again = Call(application, "GET", "/api/stream")
        await again.started.wait()
        assert again.status == 200
        for tail in (tails[1], again):
            await tail.leave()
        assert application.state.tails.open == 0


# /metrics stays small whatever types senders invent.

def test_metrics_size_is_bounded_by_label_caps() -> None:
    metrics = Metrics()
    for n in range(20_000):
        metrics.accepted("partner", f"invented.type.{n}", duplicate=False)
        metrics.rejected(f"source-{n}", f"reason_{n}")
    metrics.accepted("partner", "alfred.job.failed", duplicate=False)
    text = metrics.render(0, None).body.decode()
    assert len(text) < 100_000
    series = [line for line in text.splitlines()
              if line.startswith("hookline_events_received_total")]
    assert len(series) <= 2 * (OTHER_VALUES_CAP + 1) + 1
    assert 'type="other"' in text and 'source="other"' in text and 'reason="other"' in text
    assert 'type="alfred.job.failed"' in text  # a schema's type is never lumped in
    assert 'type="invented.type.0"' in text  # the first ones keep their names


async def test_metrics_keep_the_types_routes_name(tmp_path: Path, clock: FakeClock) -> None:
    config = base_config(tmp_path / "metrics.db")
    config["handlers"] = {"log": {"use": "log"}}
    config["routes"] = [{"match": "file.routed", "handler": "log"},
                        {"match": "file.*", "handler": "log"}]
    application = make_app(config, clock)
    async with application.router.lifespan_context(application):
        application.state.runtime.metrics.types.cap = 2
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            for n, event_type in enumerate(["a.one", "a.two", "a.three", "a.four", "file.routed"]):
                body = standard_body(event_type)
                response = await c.post("/webhooks/partner", content=body,
                                        headers=standard_headers(body, clock.now(), f"m{n}"))
                assert response.status_code == 202
            text = (await c.get("/metrics")).text
    counts = {labels: value for labels, value in re.findall(
        r'hookline_events_received_total\{[^}]*type="([^"]*)"[^}]*\} (\S+)', text)}
    assert counts == {"a.one": "1.0", "a.two": "1.0", "other": "2.0", "file.routed": "1.0"}


# Filters are parameters of the statements, never part of them.

SQL_HOSTILE = ["' OR '1'='1", "x'; DROP TABLE events; --", '" OR ""="', "\\", "%", "_", "[a-z]",
               "'); DELETE FROM deliveries; --", "1 UNION SELECT * FROM events"]


@pytest.mark.parametrize("value", SQL_HOSTILE)
async def test_sql_in_a_filter_is_only_a_value(
    client: httpx.AsyncClient, clock: FakeClock, value: str
) -> None:
    bodies = [standard_body(), standard_body(note=f"has {value} inside")]
    for n, body in enumerate(bodies):
        await post_event(client, clock, f"sql-{n}", body)
    for name in ("source", "type", "job_id", "file_id"):
        page = await client.get("/api/events", params={name: value})
        assert page.status_code == 200 and page.json()["items"] == [], (name, page.text)
    # A status is one of a known few: anything else is refused before any query.
    assert (await client.get("/api/events", params={"status": value})).status_code == 400
    found = await client.get("/api/events", params={"q": value})
    literal = [body for body in bodies if value.encode() in body]  # not a LIKE pattern
    assert len(found.json()["items"]) == len(literal)
    dead = await client.get("/api/deliveries", params={"handler": value, "type": value})
    assert dead.status_code == 200 and dead.json()["items"] == []
    everything = await client.get("/api/events")
    assert len(everything.json()["items"]) == 2


async def test_idle_tails_share_one_look_at_the_store(tmp_path: Path, clock: FakeClock) -> None:
    config = base_config(tmp_path / "idle.db")
    config["server"] = {"stream_poll_seconds": 0.01, "stream_heartbeat_seconds": 60}
    application = make_app(config, clock)
    async with application.router.lifespan_context(application):
        store = application.state.runtime.store
        calls = {"heads": 0, "tail_events": 0}
        waiters: list[tuple[str, int, asyncio.Event]] = []

        def counted(name: str) -> Any:
            original = getattr(store, name)

            async def call(*args: Any) -> Any:
                calls[name] += 1
                for wanted, count, event in waiters:
                    if wanted == name and calls[name] >= count:
                        event.set()
                return await original(*args)
            return call

        async def until(name: str, count: int) -> None:
            event = asyncio.Event()
            waiters.append((name, count, event))
            if calls[name] < count:  # bounded, so a store that is never asked fails the test
                await asyncio.wait_for(event.wait(), 30)

        monkey = pytest.MonkeyPatch()
        monkey.setattr(store, "heads", counted("heads"))
        monkey.setattr(store, "tail_events", counted("tail_events"))
        try:
            tails = [Call(application, "GET", "/api/stream") for _ in range(20)]
            await until("tail_events", 20)  # every tail's first read
            quiet_from = calls["heads"]
            await until("heads", quiet_from + 10)  # ten poll intervals, nothing written
            assert calls["tail_events"] == 20
            # A write by another process (no wake-up here): every tail reads it.
            body = standard_body()
            event = NewEvent(id=new_id("evt", clock.now()), source="partner", type="file.x",
                             dedupe_key=None, received_at=clock.now(), occurred_at=None,
                             body=body, payload=json.loads(body), headers={})
            await store.save_events([event])
            await until("tail_events", 40)
            for tail in tails:
                await tail.leave()
        finally:
            monkey.undo()


async def test_a_time_too_large_for_a_float_is_a_400(client: httpx.AsyncClient) -> None:
    for path in ("/api/replay", "/api/deliveries/retry"):
        answer = await client.post(path, json={"since": 10 ** 400, "dry_run": True})
        assert_error(answer, 400, "bad_request")


async def test_a_forged_rejections_cursor_is_a_400(client: httpx.AsyncClient) -> None:
    import base64

    for text in (f"r1.0:{10 ** 30}", "rnan:1", "rinf:1", "r1.0:²"):
        cursor = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
        answer = await client.get("/api/rejections", params={"cursor": cursor})
        assert_error(answer, 400, "bad_request")
