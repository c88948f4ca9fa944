"""The read API through the real app: scopes, every filter, raw bodies, stats and metrics after a
known sequence of requests, and the live tail over a real TCP connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

import fake_handlers
from app.config import settings_from_mapping
from app.main import create_app
from app.runtime import Runtime
from app.worker import Worker, WorkerSettings
from conftest import FakeClock, base_config, sample, standard_body, standard_headers

READ = "read-token-0123456789"
ADMIN = "admin-token-0123456789"
AUTH = {"authorization": f"Bearer {READ}"}
ADMIN_AUTH = {"authorization": f"Bearer {ADMIN}"}


def api_config(tmp_path: Path) -> dict[str, Any]:
    config = base_config(tmp_path / "read.db")
    config["api"] = {"tokens": [
        {"name": "dashboard", "token": READ, "scopes": ["read"]},
        {"name": "ops", "token": ADMIN, "scopes": ["admin"]},
    ]}
    config["handlers"] = {"rec": {"use": "fake_handlers:recorder"},
                          "refuses": {"use": "fake_handlers:refuses"}}
    config["routes"] = [{"match": "file.*", "handler": "rec"},
                        {"match": "file.processing_failed", "handler": "refuses"}]
    config["server"] = {"stream_heartbeat_seconds": 0.2, "stream_poll_seconds": 0.05}
    return config


@pytest.fixture(autouse=True)
def _reset_fakes() -> None:
    fake_handlers.reset()


@pytest.fixture
async def app(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Starlette]:
    application = create_app(settings_from_mapping(api_config(tmp_path), {}), clock=clock,
                             worker_settings=WorkerSettings(background=False))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def runtime(app: Starlette) -> Runtime:
    found: Runtime = app.state.runtime
    return found


def worker(runtime: Runtime) -> Worker:
    assert runtime.worker is not None
    return runtime.worker


async def post(client: httpx.AsyncClient, clock: FakeClock, msg_id: str,
               event_type: str = "file.processing_failed", **data: Any) -> httpx.Response:
    body = standard_body(event_type, **data)
    return await client.post("/webhooks/partner", content=body,
                             headers=standard_headers(body, clock.now(), msg_id))


# Tokens and scopes.

async def test_every_api_route_needs_a_token(client: httpx.AsyncClient) -> None:
    for path in ("/api/events", "/api/events/evt_x", "/api/events/evt_x/raw", "/api/deliveries",
                 "/api/stats", "/api/stream", "/api/whoami", "/api/jobs/j", "/api/files/f"):
        response = await client.get(path)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
        wrong = await client.get(path, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401, path
    for path in ("/api/events/evt_x/replay", "/api/replay"):
        assert (await client.post(path)).status_code == 401
        forbidden = await client.post(path, headers=AUTH)
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["code"] == "forbidden"


async def test_whoami_names_the_token_and_its_scopes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/whoami", headers=AUTH)).json() == {
        "name": "dashboard", "scopes": ["read"], "open": False}
    assert (await client.get("/api/whoami", headers=ADMIN_AUTH)).json() == {
        "name": "ops", "scopes": ["read", "admin"], "open": False}
    # An admin token reads too; a token in another scheme is not a bearer token.
    assert (await client.get("/api/events", headers=ADMIN_AUTH)).status_code == 200
    basic = await client.get("/api/events", headers={"authorization": f"Basic {READ}"})
    assert basic.status_code == 401


async def test_open_api_on_loopback_without_tokens(tmp_path: Path, clock: FakeClock) -> None:
    application = create_app(settings_from_mapping(base_config(tmp_path / "o.db"), {}),
                             clock=clock, worker_settings=WorkerSettings(background=False))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            assert (await client.get("/api/whoami")).json()["open"] is True
            assert (await client.get("/api/events")).status_code == 200


# Events: filters, search, pages, raw bytes.

async def test_every_event_filter(client: httpx.AsyncClient, clock: FakeClock) -> None:
    alfred = sample("alfred/alfred.job.failed.json")
    for n in range(3):
        assert (await post(client, clock, f"m{n}", "file.processing_failed",
                           file_id=f"file-{n}", platform="dcycle")).status_code == 202
        clock.advance(10)
    response = await client.post("/webhooks/alfred?token=alfred-token", content=alfred,
                                 headers={"content-type": "application/json"})
    assert response.status_code == 202
    job_id = json.loads(alfred)["event"]["job_id"]
    await post(client, clock, "m9", "invoice.paid", amount=3)

    async def ids(**params: Any) -> list[str]:
        page = await client.get("/api/events", params=params, headers=AUTH)
        assert page.status_code == 200, page.text
        return [item["type"] for item in page.json()["items"]]

    assert await ids() == ["invoice.paid", "alfred.job.failed"] + ["file.processing_failed"] * 3
    assert await ids(source="alfred") == ["alfred.job.failed"]
    assert await ids(type="alfred.*") == ["alfred.job.failed"]
    assert await ids(type="*.paid") == ["invoice.paid"]
    assert await ids(status="unrouted") == ["invoice.paid", "alfred.job.failed"]
    assert await ids(status="pending") == ["file.processing_failed"] * 3
    assert await ids(job_id=job_id) == ["alfred.job.failed"]
    assert await ids(file_id="file-1") == ["file.processing_failed"]
    t0 = clock.now() - 30
    assert len(await ids(since=t0 + 10)) == 4
    assert len(await ids(until=t0 + 10)) == 1
    assert len(await ids(since=t0 + 10, until=t0 + 20)) == 1
    assert await ids(q='"amount": 3') == ["invoice.paid"]
    assert await ids(q="file-2") == ["file.processing_failed"]
    assert await ids(q="nowhere") == []
    assert len(await ids(limit=2)) == 2

    for params, message in [({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"),
                            ({"limit": "x"}, "limit"), ({"since": "yesterday"}, "since"),
                            ({"q": "x" * 201}, "q"), ({"q": ""}, "q"),
                            ({"cursor": "not-a-cursor"}, "cursor")]:
        bad = await client.get("/api/events", params=params, headers=AUTH)
        assert bad.status_code == 400, params
        assert bad.json()["error"]["code"] == "bad_request"
        assert message in bad.json()["error"]["message"]


async def test_pages_follow_the_cursor_newest_first(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    for n in range(7):
        await post(client, clock, f"m{n}", "file.uploaded", n=n)
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/events", params=params, headers=AUTH)).json()
        for item in page["items"]:
            detail = (await client.get(f"/api/events/{item['id']}", headers=AUTH)).json()
            seen.append(detail["payload"]["data"]["n"])
        # Arrivals between pages do not shift the pages already handed out.
        await post(client, clock, f"late{len(seen)}", "file.uploaded", n=100 + len(seen))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [6, 5, 4, 3, 2, 1, 0]


async def test_raw_returns_the_exact_bytes(client: httpx.AsyncClient, clock: FakeClock) -> None:
    body = b'{"type":"file.uploaded",  "timestamp":"2026-11-01T10:00:00Z","data":{"x":"\\u00e9"}}'
    response = await client.post(
        "/webhooks/partner", content=body,
        headers={**standard_headers(body, clock.now(), "raw1"),
                 "content-type": "application/json; charset=utf-8"})
    event_id = response.json()["id"]
    raw = await client.get(f"/api/events/{event_id}/raw", headers=AUTH)
    assert raw.status_code == 200
    assert raw.content == body
    assert raw.headers["x-hookline-content-type"] == "application/json; charset=utf-8"
    assert raw.headers["x-content-type-options"] == "nosniff"
    missing = await client.get("/api/events/evt_nope/raw", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_deliveries_filter_by_status_and_handler(
    client: httpx.AsyncClient, clock: FakeClock, runtime: Runtime
) -> None:
    await post(client, clock, "m1")
    await worker(runtime).run_once()

    async def handlers(**params: Any) -> list[tuple[str, str]]:
        page = (await client.get("/api/deliveries", params=params, headers=AUTH)).json()
        return sorted((d["handler"], d["status"]) for d in page["items"])

    assert await handlers() == [("rec", "succeeded"), ("refuses", "dead")]
    assert await handlers(status="dead") == [("refuses", "dead")]
    assert await handlers(handler="rec") == [("rec", "succeeded")]
    assert await handlers(status="dead", handler="rec") == []


# Stats and metrics after a known sequence.

async def known_sequence(client: httpx.AsyncClient, clock: FakeClock, runtime: Runtime) -> None:
    """2 accepted (one routed to a handler that refuses), 1 duplicate, 2 rejected (a bad
    signature, an unknown source), then the worker runs: 2 succeed, 1 dies."""
    assert (await post(client, clock, "a")).status_code == 202
    assert (await post(client, clock, "b", "file.uploaded")).status_code == 202
    assert (await post(client, clock, "a")).status_code == 200
    body = standard_body()
    forged = {**standard_headers(body, clock.now(), "c"), "webhook-signature": "v1,Zm9yZ2Vk"}
    assert (await client.post("/webhooks/partner", content=body, headers=forged)).status_code == 401
    assert (await client.post("/webhooks/nobody", content=body,
                              headers={"content-type": "application/json"})).status_code == 404
    assert await worker(runtime).run_once() == 3


async def test_stats_after_a_known_sequence(
    client: httpx.AsyncClient, clock: FakeClock, runtime: Runtime
) -> None:
    await known_sequence(client, clock, runtime)
    clock.advance(60)
    await runtime.tally.flush(runtime.store)  # half of the counts in the store, half in memory
    assert (await post(client, clock, "a")).status_code == 200
    stats = (await client.get("/api/stats", headers=AUTH)).json()
    assert stats["events"]["total"] == 2
    assert stats["events"]["by_type"] == {"file.processing_failed": 1, "file.uploaded": 1}
    assert stats["events"]["by_status"] == {"failed": 1, "delivered": 1}
    assert stats["events"]["by_source"] == {"partner": 2}
    assert stats["ingest"] == {"accepted": 2, "duplicate": 2, "rejected": 2,
                               "rejected_by_reason": {"unauthorized": 1, "unknown_source": 1},
                               "rejected_by_source": {"(unknown)": {"unknown_source": 1},
                                                      "partner": {"unauthorized": 1}}}
    assert stats["deliveries"] == {"by_handler": {"rec": {"succeeded": 2},
                                                  "refuses": {"permanent": 1}}, "dead": 1}
    minutes = stats["per_minute"]
    assert len(minutes) == 60
    assert minutes[-1]["minute"] == int(clock.now() // 60) * 60
    assert [m["minute"] for m in minutes] == sorted(m["minute"] for m in minutes)
    assert minutes[-2] == {"minute": minutes[-1]["minute"] - 60, "accepted": 2, "duplicate": 1,
                           "rejected": 2, "delivery_failed": 1}
    assert minutes[-1] == {"minute": minutes[-1]["minute"], "accepted": 0, "duplicate": 1,
                           "rejected": 0, "delivery_failed": 0}
    assert sum(m["accepted"] for m in minutes[:-2]) == 0

    short = (await client.get("/api/stats", params={"window": 60}, headers=AUTH)).json()
    assert short["window_seconds"] == 60
    for window in ("59", "604801", "hour"):
        bad = await client.get("/api/stats", params={"window": window}, headers=AUTH)
        assert bad.status_code == 400


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


async def test_metrics_after_a_known_sequence(
    client: httpx.AsyncClient, clock: FakeClock, runtime: Runtime
) -> None:
    await known_sequence(client, clock, runtime)
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    m = samples_of(response.text)

    def received(type_: str, outcome: str, reason: str = "", source: str = "partner") -> float:
        labels = (("outcome", outcome), ("reason", reason), ("source", source), ("type", type_))
        return m[("hookline_events_received_total", labels)]

    assert received("file.processing_failed", "accepted") == 1
    assert received("file.uploaded", "accepted") == 1
    assert received("file.processing_failed", "duplicate") == 1
    assert received("", "rejected", "unauthorized") == 1
    assert received("", "rejected", "unknown_source", "(unknown)") == 1
    assert m[("hookline_ingest_seconds_count", ())] == 5
    assert m[("hookline_deliveries_total", (("handler", "rec"), ("outcome", "succeeded"),
                                           ("status", "succeeded")))] == 2
    assert m[("hookline_deliveries_total", (("handler", "refuses"), ("outcome", "permanent"),
                                           ("status", "dead")))] == 1
    assert m[("hookline_attempt_seconds_count", (("handler", "rec"),))] == 2
    assert m[("hookline_dead_letters", ())] == 1
    assert m[("hookline_deliveries_pending", ())] == 0
    assert m[("hookline_leases_held", ())] == 0
    assert m[("hookline_intake_queue_depth", ())] == 0
    assert m[("hookline_store_up", ())] == 1
    # No secret of any kind shows in the metrics.
    for secret in (READ, ADMIN, "alfred-token", "fc-token", "whsec_"):
        assert secret not in response.text


# The live tail, over a real connection.

@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    """Serve `app` (its lifespan already running) with uvicorn on a free loopback port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_config=None,
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    started = asyncio.Event()
    original = server.startup

    async def startup(sockets: Any = None) -> None:
        await original(sockets)
        started.set()

    server.startup = startup  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    await asyncio.wait_for(started.wait(), 10)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class Frames:
    """Reads server-sent events frame by frame from an open response."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    async def next(self, timeout: float = 5) -> dict[str, str]:
        frame: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            async for line in self.lines:
                if line == "":
                    if frame:
                        return frame
                    continue
                key, _, value = line.partition(":")
                frame[key or "comment"] = value.removeprefix(" ")
        raise AssertionError("stream ended")

    async def next_of(self, kind: str) -> dict[str, str]:
        while True:
            frame = await self.next()
            if frame.get("event") == kind:
                return frame


async def test_live_tail_streams_events_and_outcomes_and_resumes(
    app: Starlette, clock: FakeClock, runtime: Runtime
) -> None:
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        async with client.stream("GET", "/api/stream", headers=AUTH) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            frames = Frames(response)
            assert (await frames.next())["retry"] == "2000"
            first_id = (await post(client, clock, "s1")).json()["id"]
            frame = await frames.next_of("event")
            event = json.loads(frame["data"])
            assert (event["id"], event["type"]) == (first_id, "file.processing_failed")
            resume_from = frame["id"]
            await worker(runtime).run_once()
            outcomes = [json.loads((await frames.next_of("delivery"))["data"]) for _ in range(2)]
            assert sorted((o["handler"], o["outcome"], o["status"]) for o in outcomes) == [
                ("rec", "succeeded", "succeeded"), ("refuses", "permanent", "dead")]
            assert {o["event_id"] for o in outcomes} == {first_id}
            assert (await frames.next())["comment"] == "ping"  # heartbeat while idle

        # Away for a while: another event arrives. Resuming from the first event's frame gets
        # what was missed since, and nothing before it.
        second_id = (await post(client, clock, "s2", "file.uploaded")).json()["id"]
        resumed = {"last-event-id": resume_from, **AUTH}
        async with client.stream("GET", "/api/stream", headers=resumed) as response:
            frames = Frames(response)
            missed = [await frames.next_of("event")]
            deliveries = [json.loads((await frames.next_of("delivery"))["data"]) for _ in range(2)]
            assert [json.loads(f["data"])["id"] for f in missed] == [second_id]
            assert {d["event_id"] for d in deliveries} == {first_id}


async def test_live_tail_applies_the_filters(
    app: Starlette, clock: FakeClock, runtime: Runtime
) -> None:
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        params = {"type": "file.uploaded"}
        async with client.stream("GET", "/api/stream", params=params, headers=AUTH) as response:
            frames = Frames(response)
            await post(client, clock, "f1")  # file.processing_failed: filtered out
            wanted = (await post(client, clock, "f2", "file.uploaded")).json()["id"]
            frame = await frames.next_of("event")
            assert json.loads(frame["data"])["id"] == wanted
            await worker(runtime).run_once()
            outcome = json.loads((await frames.next_of("delivery"))["data"])
            assert (outcome["event_id"], outcome["handler"]) == (wanted, "rec")
        bad = await client.get("/api/stream", params={"since": "soon"}, headers=AUTH)
        assert bad.status_code == 400


async def test_openapi_describes_every_api_route(app: Starlette, client: httpx.AsyncClient) -> None:
    from starlette.routing import Route

    spec = (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    served = {(route.path, method.lower()) for route in app.routes
              if isinstance(route, Route) and route.path.startswith("/api/")
              for method in (route.methods or ()) if method != "HEAD"}
    described = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert served == described
    refs = json.dumps(spec).count('"$ref": "#/components/schemas/')
    assert refs > 0
    for name in ("EventPage", "EventRecord", "DeliveryPage", "DeliveryRecord", "Error"):
        assert name in spec["components"]["schemas"]


async def test_stats_are_computed_once_for_concurrent_callers_and_never_stale(
    client: httpx.AsyncClient, clock: FakeClock, runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    computed = 0
    original = runtime.store.stats

    async def counting(*args: Any) -> Any:
        nonlocal computed
        computed += 1
        return await original(*args)

    monkeypatch.setattr(runtime.store, "stats", counting)
    await post(client, clock, "a")
    answers = await asyncio.gather(*(client.get("/api/stats", headers=AUTH) for _ in range(8)))
    assert computed == 1
    assert {a.json()["events"]["total"] for a in answers} == {1}
    await client.get("/api/stats", headers=AUTH)
    assert computed == 1  # nothing changed and it is fresh
    await client.get("/api/stats", params={"window": 600}, headers=AUTH)
    assert computed == 2  # another window is another answer

    await post(client, clock, "b", "file.uploaded")  # a stored event: recomputed at once
    assert (await client.get("/api/stats", headers=AUTH)).json()["events"]["total"] == 2
    await post(client, clock, "b", "file.uploaded")  # a duplicate is counted, not stored
    assert (await client.get("/api/stats", headers=AUTH)).json()["ingest"]["duplicate"] == 1
    assert computed == 4
    clock.advance(1)  # stale by time alone: the window moved
    await client.get("/api/stats", headers=AUTH)
    assert computed == 5
