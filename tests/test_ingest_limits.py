"""Ingest hardening through the real ASGI app: credential headers, nesting, rate limits that
unauthenticated traffic cannot drain, byte admission before parsing, and header caps."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from app import ingest
from app.config import ConfigError, settings_from_mapping
from app.main import create_app
from app.serving import Protocol, Server
from app.store import StoreError
from app.store.sqlite import SQLiteStore
from app.stream import Changes
from conftest import FakeClock, base_config, sample, standard_body, standard_headers
from schemas.records import NewEvent, Saved
from server import running_server


@asynccontextmanager
async def serving(
    tmp_path: Path, clock: FakeClock, change: Callable[[dict[str, Any]], None]
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    config = base_config(tmp_path / "limits.db")
    change(config)
    app = create_app(settings_from_mapping(config, {}), clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield app, client


async def post_signed(
    client: httpx.AsyncClient, clock: FakeClock, msg_id: str, body: bytes | None = None,
    **extra: str,
) -> httpx.Response:
    body = standard_body() if body is None else body
    headers = {**standard_headers(body, clock.now(), msg_id), **extra}
    return await client.post("/webhooks/partner", content=body, headers=headers)


# --- credential headers ---------------------------------------------------------------------

async def test_credential_like_and_configured_headers_are_not_stored(
    tmp_path: Path, clock: FakeClock
) -> None:
    def change(config: dict[str, Any]) -> None:
        config["sources"]["partner"]["secret_headers"] = ["X-Partner-Key"]

    async with serving(tmp_path, clock, change) as (_, client):
        response = await post_signed(
            client, clock, "m1", **{"x-acme-token": "t", "x-partner-key": "k",
                                    "x-upstream-signature": "s", "x-trace": "kept"})
        assert response.status_code == 202, response.text
        stored = (await client.get(f"/api/events/{response.json()['id']}")).json()["headers"]
    assert stored["x-trace"] == "kept" and stored["webhook-id"] == "m1"
    assert not {"x-acme-token", "x-partner-key", "x-upstream-signature",
                "webhook-signature"} & set(stored)


def test_secret_headers_config_is_validated_with_its_key_path() -> None:
    config = base_config(Path("unused.db"))
    config["sources"]["partner"]["secret_headers"] = ["x-ok", "no spaces"]
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(config, {})
    assert info.value.problems == [
        "sources.partner.secret_headers[1]: 'no spaces' is not an HTTP header name"]


# --- rate limits: charged for authenticated requests only -----------------------------------

def limited(config: dict[str, Any]) -> None:
    config["sources"]["partner"]["rate_limit"] = {"per_second": 1, "burst": 2}
    config["server"] = {"failed_auth_rate_limit": {"per_second": 1, "burst": 5}}


def forged(clock: FakeClock, msg_id: str) -> dict[str, str]:
    headers = standard_headers(standard_body(), clock.now(), msg_id)
    headers["webhook-signature"] = "v1,Zm9yZ2VkIHNpZ25hdHVyZSBvZiAzMiBieXRlcyBoZXJlIQ=="
    return headers


async def test_a_flood_of_bad_signatures_does_not_lock_out_the_sender(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with serving(tmp_path, clock, limited) as (_, client):
        statuses = [
            (await client.post("/webhooks/partner", content=standard_body(),
                               headers=forged(clock, f"junk{n}"))).status_code
            for n in range(200)
        ]
        # The first failures are 401; past the failure bucket, failing requests get 429.
        assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
        # Same instant, nothing refilled: the signed sender still has its whole burst.
        assert (await post_signed(client, clock, "real1")).status_code == 202
        assert (await post_signed(client, clock, "real2")).status_code == 202
        over = await post_signed(client, clock, "real3")
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "rate_limited"
    assert over.headers["retry-after"] == "1"


async def test_failing_requests_over_their_limit_get_429_and_the_connection_closed(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with serving(tmp_path, clock, limited) as (app, client):
        for n in range(5):
            response = await client.post("/webhooks/partner", content=standard_body(),
                                         headers=forged(clock, f"junk{n}"))
            assert response.status_code == 401
        refused = await client.post("/webhooks/partner", content=standard_body(),
                                    headers=forged(clock, "junk5"))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close"
        # Another source's failures are counted apart.
        other = await client.post("/webhooks/alfred?token=wrong", content=b"{}",
                                  headers={"content-type": "application/json"})
        assert other.status_code == 401
        clock.advance(1.0)
        again = await client.post("/webhooks/partner", content=standard_body(),
                                  headers=forged(clock, "junk6"))
        assert again.status_code == 401
        assert (await client.get("/api/events")).json()["items"] == []


# --- bytes admitted before parsing ----------------------------------------------------------

class GatedStore(SQLiteStore):
    """A real SQLite store whose writes wait for a gate, to hold the writer busy."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def save_events(self, events: Sequence[NewEvent]) -> list[Saved | StoreError]:
        self.entered.set()
        await self.gate.wait()
        return await super().save_events(events)


def padded(size: int) -> bytes:
    body = standard_body(platform="dcycle", pad="")
    return standard_body(platform="dcycle", pad="x" * (size - len(body)))


async def until(predicate: Callable[[], bool]) -> None:
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("not reached")


async def test_large_bodies_past_the_byte_budget_are_refused_before_parsing(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[int] = []
    real_parse = ingest._parse_json

    def counting(body: bytes) -> Any:
        parsed.append(len(body))
        return real_parse(body)

    monkeypatch.setattr(ingest, "_parse_json", counting)
    config = base_config(tmp_path / "budget.db")
    config["server"] = {"intake_queue_bytes": 100_000, "batch_max": 1}
    store = GatedStore(str(tmp_path / "budget.db"))
    app = create_app(settings_from_mapping(config, {}), store=store, clock=clock)
    intake = app.state.runtime.intake
    large, small = padded(60_000), padded(2_000)

    async def streamed(body: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(body), 16_384):
            yield body[start:start + 16_384]

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            try:
                first = asyncio.create_task(post_signed(client, clock, "big0", large))
                await store.entered.wait()  # the writer holds big0 and its bytes
                assert intake.queued_bytes >= len(large)
                # A declared length that cannot be held is refused unread; a streamed one as
                # soon as its chunks take the budget past its bound. Neither is parsed.
                declared = await post_signed(client, clock, "big1", large)
                chunked = await client.post(
                    "/webhooks/partner", content=streamed(large),
                    headers=standard_headers(large, clock.now(), "big2"))
                assert parsed == [len(large)]
                # A small body fits beside big0 and waits for the writer.
                queued = asyncio.create_task(post_signed(client, clock, "small", small))
                await until(lambda: intake.depth == 1)
            finally:
                store.gate.set()
            for refused in (declared, chunked):
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "store_unavailable"
                assert refused.headers["retry-after"] == "1"
            assert [(await t).status_code for t in (first, queued)] == [202, 202]
            assert intake.queued_bytes == 0
            # The budget is free again: a large body gets in.
            assert (await post_signed(client, clock, "big3", large)).status_code == 202


# --- headers stored with an event -----------------------------------------------------------

async def test_stored_headers_are_capped_dropping_the_largest_with_a_note(
    tmp_path: Path, clock: FakeClock
) -> None:
    big = {f"x-big-{n}": "v" * 1500 for n in range(10)}  # 15 kB, under the server's head cap
    async with serving(tmp_path, clock, lambda config: None) as (app, client):
        response = await post_signed(client, clock, "m1", **{**big, "x-big-0": "v" * 3000})
        assert response.status_code == 202, response.text
        stored = (await client.get(f"/api/events/{response.json()['id']}")).json()["headers"]
    limit = app.state.runtime.settings.server.max_stored_header_bytes
    assert limit == 8 * 1024
    assert sum(len(k) + len(v) for k, v in stored.items()) <= limit
    dropped = stored[ingest.DROPPED_HEADERS].split(",")
    assert dropped[0] == "x-big-0"  # the largest goes first
    assert not set(dropped) & set(stored)
    assert set(dropped) | {k for k in stored if k.startswith("x-big-")} == set(big)
    assert stored["webhook-id"] == "m1" and stored["content-type"] == "application/json"


def test_cap_headers_keeps_what_fits() -> None:
    headers = {"a": "1", "b": "x" * 2000, "c": "y" * 900}
    assert ingest.cap_headers(headers, 4096) == (headers, 2904)
    kept, size = ingest.cap_headers(headers, 1200)
    assert kept == {"a": "1", "c": "y" * 900, ingest.DROPPED_HEADERS: "b"}
    assert size == sum(len(k) + len(v) for k, v in kept.items()) <= 1200
    many = {f"x-{'n' * 60}-{i}": "v" * 100 for i in range(40)}
    kept, size = ingest.cap_headers(many, 1024)
    assert size <= 1024 and kept[ingest.DROPPED_HEADERS].endswith("...")


async def test_stored_headers_count_in_the_byte_budget(tmp_path: Path, clock: FakeClock) -> None:
    config = base_config(tmp_path / "held.db")
    store = GatedStore(str(tmp_path / "held.db"))
    app = create_app(settings_from_mapping(config, {}), store=store, clock=clock)
    intake = app.state.runtime.intake
    body = standard_body()
    extra = {f"x-note-{n}": "n" * 500 for n in range(8)}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            try:
                task = asyncio.create_task(post_signed(client, clock, "m1", body, **extra))
                await store.entered.wait()
                held = intake.queued_bytes
            finally:
                store.gate.set()
            response = await task
            assert response.status_code == 202
            stored = (await client.get(f"/api/events/{response.json()['id']}")).json()
    assert held == len(body) + sum(len(k) + len(v) for k, v in stored["headers"].items())
    assert held > len(body) + 8 * 500


# --- head limits from config, over TCP ------------------------------------------------------

def raw_post(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def test_configured_head_limits_are_enforced_by_the_server(tmp_path: Path) -> None:
    config = tmp_path / "hookline.toml"
    config.write_text(f"""
[server]
max_header_bytes = 2048
max_headers = 10

[storage]
url = "sqlite:///{tmp_path / 'head.db'}"

[sources.open]
platform = "alfred"
auth = {{ scheme = "none" }}
unknown_events = "accept"
""")
    body = sample("alfred/alfred.job.retry.json")

    def head(*extra: str) -> bytes:
        lines = ["POST /webhooks/open HTTP/1.1", "Host: h", "Content-Type: application/json",
                 f"Content-Length: {len(body)}", "Connection: close", *extra]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    with running_server(["--config", str(config)], cwd=tmp_path) as server:
        many = raw_post(server.port, head(*(f"X-N{i}: v" for i in range(7))))  # 11 fields
        big = raw_post(server.port, head(f"X-Big: {'a' * 2100}"))
        # 10 fields, about 1.7 kB: within both limits.
        fine = raw_post(server.port, head(*(f"X-N{i}: v" for i in range(5)), "X-M: " + "m" * 1500))
    for answer in (many, big):
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
        assert b'"code":"request_header_fields_too_large"' in answer
    assert fine.startswith(b"HTTP/1.1 202 "), fine[:300]


def test_server_takes_head_limits_for_its_protocol() -> None:
    config = uvicorn.Config(Starlette(), http=Protocol)
    Server(config, Changes(), 10.0, (4096, 20))
    assert isinstance(config.http, type) and issubclass(config.http, Protocol)
    assert (config.http.max_header_bytes, config.http.max_headers) == (4096, 20)
    assert (Protocol.max_header_bytes, Protocol.max_headers) == (32 * 1024, 100)
