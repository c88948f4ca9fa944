"""Upstream bookkeeping through the real app and store: budgets, polls recorded as events,
stall detection; time is the injected clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import settings_from_mapping
from app.main import create_app
from app.runtime import Runtime
from app.scheduler import Maintenance
from app.store import store_from_url
from app.worker import WorkerSettings
from handlers import PollOutcome

import fake_handlers
from conftest import FakeClock, base_config, sample, standard_body, standard_headers

FILE_ID = "11111111-1111-1111-1111-111111111111"


@pytest.fixture(autouse=True)
def _reset() -> None:
    fake_handlers.reset()


@pytest.fixture
async def env(tmp_path: Path, clock: FakeClock) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    config = base_config(tmp_path / "flow.db")
    config["handlers"] = {"poller": {"use": "fake_handlers:poller"},
                          "rec": {"use": "fake_handlers:recorder"}}
    config["routes"] = [{"match": "file.processing_failed", "handler": "poller"},
                        {"match": "fake.reading.*", "handler": "rec"}]
    config["sources"]["alfred"]["stall_after_minutes"] = 30
    app = create_app(settings_from_mapping(config, {}), clock=clock,
                     worker_settings=WorkerSettings(background=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client, app.state.runtime


async def post_failure(client: httpx.AsyncClient, clock: FakeClock) -> str:
    body = standard_body()
    response = await client.post("/webhooks/partner", content=body,
                                 headers=standard_headers(body, clock.now(), "m1"))
    assert response.status_code == 202
    return str(response.json()["id"])


async def test_budget_counts_survive_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path / 'budget.db'}"
    first = store_from_url(url)
    await first.open()
    assert [await first.take_budget("dcycle:file:f", 3, clock.now()) for _ in range(3)] == [1, 2, 3]
    await first.close()
    again = store_from_url(url)
    await again.open()
    assert await again.take_budget("dcycle:file:f", 3, clock.now()) is None
    await again.refund_budget("dcycle:file:f", clock.now())
    assert await again.take_budget("dcycle:file:f", 3, clock.now()) == 3
    assert await again.take_budget("other", 0, clock.now()) is None
    assert await again.mark_once("k", clock.now()) is True
    assert await again.mark_once("k", clock.now()) is False
    await again.close()


async def test_poll_outcome_is_recorded_routed_and_tracked(env: Any, clock: FakeClock) -> None:
    client, runtime = env
    worker = runtime.worker
    event_id = await post_failure(client, clock)
    assert await worker.run_once() == 1
    assert await worker.run_polls_once() == 0  # the first poll is 60 s out
    clock.advance(60)
    assert await worker.run_polls_once() == 1  # not finished yet: polled again in 30 s
    assert fake_handlers.poller.polled == [{"file_id": FILE_ID}]
    clock.advance(29)
    assert await worker.run_polls_once() == 0
    fake_handlers.poller.answers = [PollOutcome("success", {"reading": "r1"})]
    clock.advance(1)
    assert await worker.run_polls_once() == 1
    assert await worker.run_polls_once() == 0

    recorded = (await client.get("/api/events", params={"type": "fake.reading.*"})).json()
    [item] = recorded["items"]
    assert item["type"] == "fake.reading.success" and item["file_id"] == FILE_ID
    detail = (await client.get(f"/api/events/{item['id']}")).json()
    assert detail["payload"]["caused_by"] == event_id
    assert detail["payload"]["reading"] == "r1"
    assert await worker.run_once() == 1  # the recorded event routes like any other
    assert fake_handlers.recorder.calls == [(item["id"], 1)]

    story = (await client.get(f"/api/files/{FILE_ID}")).json()
    assert [step["type"] for step in story["timeline"]] == [
        "file.processing_failed", "fake.reading.success"]


async def test_poll_deadline_records_a_timeout(env: Any, clock: FakeClock) -> None:
    client, runtime = env
    await post_failure(client, clock)
    await runtime.worker.run_once()
    for _ in range(12):  # keeps answering "not yet" with a growing interval, up to the deadline
        clock.advance(600)
        await runtime.worker.run_polls_once()
    types = [i["type"] for i in (await client.get("/api/events")).json()["items"]]
    assert types.count("fake.reading.timeout") == 1


async def test_stall_is_detected_once(env: Any, clock: FakeClock) -> None:
    client, runtime = env
    start = json.loads(sample("alfred/alfred.job.start.json"))
    job_id = start["event"]["job_id"]
    response = await client.post("/webhooks/alfred?token=alfred-token", json=start)
    assert response.status_code == 202
    sources = runtime.settings.sources
    sweep = Maintenance(runtime.store, clock, None, 30, sources, runtime.recorder)
    clock.advance(29 * 60)
    assert await sweep.stalls() == 0
    clock.advance(2 * 60)
    assert await sweep.stalls() == 1
    assert await sweep.stalls() == 0
    stalled = (await client.get("/api/events", params={"type": "*.stalled"})).json()["items"]
    assert [(s["type"], s["job_id"]) for s in stalled] == [("alfred.job.stalled", job_id)]
    story = (await client.get(f"/api/jobs/{job_id}")).json()
    assert story["state"] == "stalled"
    missing = await client.get("/api/jobs/nope")
    assert missing.status_code == 404
