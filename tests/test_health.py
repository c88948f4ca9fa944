"""Handler and source health: the pure shaping, and `/api/handlers` and `/api/sources` through
the app with an injected clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import fake_handlers
from app import health
from app.config import settings_from_mapping
from app.main import create_app
from app.runtime import Runtime
from app.worker import WorkerSettings
from conftest import FakeClock, base_config, standard_body, standard_headers
from handlers.upstream import FAILURE_THRESHOLD, breaker_for, reset_breakers

DCYCLE = "https://dcycle.test"


def test_percentile_is_exact_over_a_histogram() -> None:
    assert health.percentile({}, 0.5) is None
    assert health.percentile({10: 1}, 0.99) == 10
    histogram = {5: 50, 7: 49, 900: 1}
    assert health.percentile(histogram, 0.5) == 5
    assert health.percentile(histogram, 0.99) == 7
    assert health.percentile({5: 98, 900: 2}, 0.99) == 900


def test_breaker_state() -> None:
    assert health.breaker_state(None, 60, 100) == "closed"
    assert health.breaker_state(90, 60, 100) == "open"
    assert health.breaker_state(30, 60, 100) == "half_open"


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    fake_handlers.reset()
    reset_breakers()
    yield
    reset_breakers()


@pytest.fixture
async def env(tmp_path: Path, clock: FakeClock) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    config = base_config(tmp_path / "health.db")
    config["handlers"] = {
        "ok": {"use": "fake_handlers:recorder"},
        "no": {"use": "fake_handlers:refuses"},
        "unused": {"use": "log"},
        "dcycle": {"use": "dcycle_retry", "options": {
            "base_url": DCYCLE, "token": "dcycle-secret-token", "organization_id": "org"}},
    }
    config["routes"] = [
        {"match": "file.*", "handler": "ok"},
        {"match": "file.*", "source": "partner", "handler": "no", "where": {"data.n": 1}},
        {"match": "dcycle.*", "handler": "dcycle"},
    ]
    app = create_app(settings_from_mapping(config, {}), clock=clock,
                     worker_settings=WorkerSettings(background=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client, app.state.runtime


async def post(client: httpx.AsyncClient, clock: FakeClock, msg_id: str, **data: Any) -> int:
    body = standard_body(**data)
    response = await client.post(
        "/webhooks/partner", content=body, headers=standard_headers(body, clock.now(), msg_id))
    return response.status_code


async def test_handlers_answer_backlog_attempts_breaker_and_routes(
    env: Any, clock: FakeClock
) -> None:
    client, runtime = env
    for n in range(3):
        assert await post(client, clock, f"m{n}", n=n) == 202
    assert runtime.worker is not None
    await runtime.worker.run_once()
    clock.advance(10)
    assert await post(client, clock, "m9", n=9) == 202  # waits: no worker run after it
    for _ in range(FAILURE_THRESHOLD):
        breaker_for(DCYCLE).record_failure(clock.monotonic())

    answer = (await client.get("/api/handlers")).json()["handlers"]
    by_name = {h["name"]: h for h in answer}
    assert list(by_name) == ["dcycle", "no", "ok", "unused"]
    ok, no = by_name["ok"], by_name["no"]
    assert ok["deliveries"] == {"pending": 1, "running": 0, "dead": 0}
    assert ok["oldest_pending_seconds"] == 0 and ok["oldest_pending_at"] == clock.now()
    assert ok["attempts"] == {"total": 3, "by_outcome": {"succeeded": 3}}
    assert ok["success_rate"] == 1.0
    assert ok["attempt_seconds"] == {"p50": 0.0, "p99": 0.0}  # the fake clock stood still
    assert ok["routes"] == [{"match": "file.*", "source": None, "where": {}}]
    assert no["deliveries"] == {"pending": 0, "running": 0, "dead": 1}
    assert no["success_rate"] == 0.0 and no["attempts"]["by_outcome"] == {"permanent": 1}
    assert no["routes"] == [{"match": "file.*", "source": "partner", "where": {"data.n": 1}}]
    assert no["breaker"] is None
    assert by_name["dcycle"]["breaker"] == {
        "upstream": "dcycle.test", "state": "open", "consecutive_failures": FAILURE_THRESHOLD}
    assert by_name["unused"]["success_rate"] is None
    assert by_name["unused"]["attempt_seconds"] == {"p50": None, "p99": None}
    assert "dcycle-secret-token" not in (await client.get("/api/handlers")).text

    clock.advance(3600)
    later = {h["name"]: h for h in (await client.get("/api/handlers")).json()["handlers"]}
    assert later["ok"]["attempts"]["total"] == 0 and later["ok"]["oldest_pending_seconds"] == 3600
    assert later["dcycle"]["breaker"]["state"] == "half_open"
    bad = await client.get("/api/handlers?window=5")
    assert bad.status_code == 400


async def test_sources_answer_counts_scheme_and_last_event(env: Any, clock: FakeClock) -> None:
    client, _ = env
    assert await post(client, clock, "m1") == 202
    assert await post(client, clock, "m1") == 200  # duplicate
    unsigned = await client.post("/webhooks/partner", content=standard_body(),
                                 headers={"content-type": "application/json"})
    assert unsigned.status_code == 401
    answer = await client.get("/api/sources")
    by_name = {s["name"]: s for s in answer.json()["sources"]}
    partner = by_name["partner"]
    assert partner["platform"] == "standard"
    assert partner["auth"] == {"scheme": "standard_webhooks", "secrets": 2,
                               "tolerance_seconds": 300}
    assert partner["requests"] == {"accepted": 1, "duplicate": 1, "rejected": 1,
                                   "rejected_by_reason": {"unauthorized": 1}}
    assert partner["last_event_at"] == clock.now()
    assert {r["handler"] for r in partner["routes"]} == {"ok", "no", "dcycle"}
    assert by_name["filecheck"]["auth"] == {"scheme": "header_token", "secrets": 1,
                                            "header": "x-hook-token"}
    assert by_name["alfred"]["last_event_at"] is None
    assert by_name["alfred"]["requests"]["accepted"] == 0
    assert {r["handler"] for r in by_name["alfred"]["routes"]} == {"ok", "dcycle"}
    for secret in ("whsec_", "fc-token", "alfred-token", "fc-hmac"):
        assert secret not in answer.text


async def test_sqlite_health_and_dead_letter_queries_are_served_by_indexes(tmp_path: Path) -> None:
    import sqlite3

    from app.store import sqlite as backend
    from app.store import store_from_url

    store = store_from_url(f"sqlite:///{tmp_path / 'plan.db'}")
    await store.open()
    await store.close()
    conn = sqlite3.connect(tmp_path / "plan.db")

    def plan(sql: str) -> str:
        return " | ".join(row[-1] for row in conn.execute(
            "EXPLAIN QUERY PLAN " + sql, [1] * sql.count("?")))

    assert "COVERING INDEX deliveries_backlog" in plan(backend._BACKLOG)
    assert "INDEX attempts_ended" in plan(backend._ATTEMPT_TIMES)
    assert "INDEX events_source" in plan(backend._LAST_OF_SOURCE)
    dead = plan(backend._DEAD_LETTERS.format(where=""))
    assert "d USING INDEX deliveries_status" in dead and "later USING INDEX deliveries_event" in dead
    of_handler = plan(backend._DEAD_LETTERS.format(where=" AND d.handler = ?"))
    assert "d USING INDEX deliveries_handler" in of_handler  # (handler, seq)
    assert "later USING INDEX deliveries_event" in of_handler
    for found in (plan(backend._BACKLOG), plan(backend._ATTEMPT_TIMES),
                  plan(backend._LAST_OF_SOURCE), dead, of_handler):
        assert "SCAN" not in found
    conn.close()
