"""Store failures and a full intake answer 503 with Retry-After; rate limits answer 429."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx

from app.config import settings_from_mapping
from app.main import create_app
from app.store import StoreError
from app.store.sqlite import SQLiteStore
from conftest import FakeClock, base_config, standard_body, standard_headers
from schemas.records import NewEvent, Saved


async def post(client: httpx.AsyncClient, clock: FakeClock, msg_id: str) -> httpx.Response:
    body = standard_body()
    return await client.post(
        "/webhooks/partner", content=body, headers=standard_headers(body, clock.now(), msg_id)
    )


async def test_store_gone_answers_503_and_readyz_fails(
    client: httpx.AsyncClient, clock: FakeClock, store: SQLiteStore
) -> None:
    await store.close()
    response = await post(client, clock, "m1")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "store_unavailable"
    ready = await client.get("/readyz")
    assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
    listing = await client.get("/api/events")
    assert listing.status_code == 503


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


async def test_full_intake_answers_503_and_nothing_grows(tmp_path: Any, clock: FakeClock) -> None:
    config = base_config(tmp_path / "gated.db")
    config["server"] = {"intake_queue": 2, "batch_max": 1}
    settings = settings_from_mapping(config, {})
    store = GatedStore(str(tmp_path / "gated.db"))
    app = create_app(settings, store=store, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            first = asyncio.create_task(post(client, clock, "m0"))
            await store.entered.wait()  # the writer holds m0
            queued = [asyncio.create_task(post(client, clock, f"m{n}")) for n in (1, 2)]
            for _ in range(10_000):  # let the two requests reach the queue
                if app.state.runtime.intake.depth == 2:
                    break
                await asyncio.sleep(0)
            assert app.state.runtime.intake.depth == 2
            refused = await post(client, clock, "m3")
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "store_unavailable"
            assert "Retry-After" in refused.headers
            # While the queue is full, a request is refused before its body is read: even one
            # whose body would be refused later (here, an unsigned one) costs no parsing.
            shed = await client.post("/webhooks/partner", content=b"{not json",
                                     headers={"content-type": "application/json"})
            store.gate.set()
            assert shed.status_code == 503 and "Retry-After" in shed.headers
            done = await asyncio.gather(first, *queued)
            assert [r.status_code for r in done] == [202, 202, 202]
            ids = [item["upstream_id"] for item in (await client.get("/api/events")).json()["items"]]
            assert sorted(ids) == ["m0", "m1", "m2"]


async def test_intake_bounds_queued_body_bytes(tmp_path: Any, clock: FakeClock) -> None:
    """Large bodies fill the intake by their bytes before its event count: the event past the
    byte bound is refused, and the bytes are given back once the writer answered."""
    config = base_config(tmp_path / "bytes.db")
    config["server"] = {"intake_queue": 100, "batch_max": 1}
    settings = settings_from_mapping(config, {})
    store = GatedStore(str(tmp_path / "bytes.db"))
    app = create_app(settings, store=store, clock=clock)
    intake = app.state.runtime.intake
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            try:
                first = asyncio.create_task(post(client, clock, "m0"))
                await store.entered.wait()  # the writer holds m0, and its bytes count
                # One event's bytes: its body and the headers stored with it.
                unit = intake.queued_bytes
                assert unit > len(standard_body())
                intake.max_bytes = 2 * unit + unit // 2
                second = asyncio.create_task(post(client, clock, "m1"))
                for _ in range(10_000):
                    if intake.depth == 1:
                        break
                    await asyncio.sleep(0)
                assert intake.depth == 1 and intake.queued_bytes == 2 * unit
                # Bounded: were m2 queued, it would wait for the gate.
                refused = await asyncio.wait_for(post(client, clock, "m2"), 5)
            finally:
                store.gate.set()  # else a failure above would hold the shutdown's drain
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "store_unavailable"
            assert refused.headers["retry-after"] == "1"
            assert [r.status_code for r in await asyncio.gather(first, second)] == [202, 202]
            assert intake.queued_bytes == 0
            assert (await post(client, clock, "m2")).status_code == 202
            items = (await client.get("/api/events")).json()["items"]
            assert sorted(item["upstream_id"] for item in items) == ["m0", "m1", "m2"]


async def test_a_body_over_the_byte_bound_gets_in_alone(tmp_path: Any, clock: FakeClock) -> None:
    config = base_config(tmp_path / "big.db")
    config["server"] = {"intake_queue_bytes": 10}
    app = create_app(settings_from_mapping(config, {}), clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            assert (await post(client, clock, "big")).status_code == 202
            assert app.state.runtime.intake.queued_bytes == 0


async def test_rate_limit_answers_429_and_stores_nothing(tmp_path: Any, clock: FakeClock) -> None:
    config = base_config(tmp_path / "rl.db")
    config["sources"]["partner"]["rate_limit"] = {"per_second": 1, "burst": 2}
    app = create_app(settings_from_mapping(config, {}), clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            assert (await post(client, clock, "a")).status_code == 202
            assert (await post(client, clock, "b")).status_code == 202
            limited = await post(client, clock, "c")
            assert limited.status_code == 429
            assert limited.json()["error"]["code"] == "rate_limited"
            assert limited.headers["retry-after"] == "1"
            clock.advance(1.0)
            assert (await post(client, clock, "d")).status_code == 202
            ids = [item["upstream_id"] for item in (await client.get("/api/events")).json()["items"]]
            assert sorted(ids) == ["a", "b", "d"]
