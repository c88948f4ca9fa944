"""Alerts as events: the pure checks, and the events they become through the real app, store
and routes, with an injected clock (no sleeping)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import alerts
from app.alerts import Alerts
from app.config import AlertSettings, ConfigError, settings_from_mapping
from app.main import create_app
from app.runtime import Runtime
from app.store.base import IngestCount, Outcome, SourceRows
from app.worker import WorkerSettings
from handlers.upstream import FAILURE_THRESHOLD, breaker_for, reset_breakers

import fake_handlers
from conftest import FakeClock, base_config, standard_body, standard_headers

DCYCLE = "https://dcycle.test"
SETTINGS = AlertSettings()


def outcome(delivery: str, status: str, handler: str = "ops", event_type: str = "a.b.c",
            error: str | None = "no") -> Outcome:
    return Outcome(delivery, f"evt_{delivery}", event_type, handler, 1, "permanent", status,
                   0.0, error)


def test_dead_notes_count_each_dead_delivery_once_per_handler() -> None:
    notes = alerts.dead_notes([
        outcome("d1", "dead"), outcome("d1", "dead"), outcome("d2", "dead", error="last"),
        outcome("d3", "pending"), outcome("d4", "dead", handler="mail"),
        outcome("d5", "dead", event_type="hookline.delivery.dead"),  # an alert's own death
    ], 10.0)
    by_subject = {n.subject: n for n in notes}
    assert {s: n.count for s, n in by_subject.items()} == {
        "delivery.dead:ops": 2, "delivery.dead:mail": 1}
    ops = by_subject["delivery.dead:ops"]
    assert ops.type == "hookline.delivery.dead" and ops.data["last_error"] == "last"


def test_auth_failing_needs_enough_requests_and_a_low_authenticated_share() -> None:
    def rows(accepted: int, unauthorized: int, schema: int = 0) -> SourceRows:
        counts = [IngestCount(1, "s", "rejected", "unauthorized", unauthorized),
                  IngestCount(1, "s", "rejected", "schema_invalid", schema)]
        return SourceRows({"s": accepted}, counts, {})

    assert alerts.auth_failing_notes(rows(5, 14), SETTINGS, 0) == []  # 19 < 20 requests
    [note] = alerts.auth_failing_notes(rows(5, 16), SETTINGS, 0)
    assert note.subject == "source.auth_failing:s"
    assert (note.data["requests"], note.data["unauthorized"]) == (21, 16)
    assert note.data["authenticated_share"] == round(5 / 21, 4)
    # A schema rejection passed authentication.
    assert alerts.auth_failing_notes(rows(0, 10, schema=10), SETTINGS, 0) == []


def test_stalled_and_breaker_notes() -> None:
    assert alerts.stalled_note(None, SETTINGS, 1000) is None
    assert alerts.stalled_note(900, SETTINGS, 1000) is None
    note = alerts.stalled_note(800, SETTINGS, 1000)
    assert note is not None and note.data["overdue_seconds"] == 200

    seen: dict[str, str] = {}
    opened = {"h": {"upstream": "x.test", "state": "open"}}
    [note] = alerts.breaker_notes(seen, opened, 1)
    assert (note.type, note.data["handlers"]) == ("hookline.breaker.opened", ["h"])
    assert alerts.breaker_notes(seen, {"h": {"upstream": "x.test", "state": "half_open"}}, 2) == []
    [closed] = alerts.breaker_notes(seen, {"h": {"upstream": "x.test", "state": "closed"}}, 3)
    assert closed.type == "hookline.breaker.closed"
    assert alerts.breaker_notes({}, {"h": {"upstream": "x.test", "state": "closed"}}, 4) == []


def test_config_reserves_the_hookline_source_and_validates_thresholds(tmp_path: Path) -> None:
    config = base_config(tmp_path / "c.db")
    config["sources"]["hookline"] = config["sources"]["partner"]
    with pytest.raises(ConfigError, match="reserved"):
        settings_from_mapping(config, {})
    for bad in ({"quiet_seconds": 0}, {"auth_failing_below": 1.5}, {"stalled_seconds": -1},
                {"auth_failing_window_seconds": 10}):
        config = base_config(tmp_path / "c.db")
        config["alerts"] = bad
        with pytest.raises(ConfigError, match="alerts"):
            settings_from_mapping(config, {})
    config = base_config(tmp_path / "c.db")
    config["handlers"] = {"ops": {"use": "log"}}
    config["routes"] = [{"match": "hookline.*", "source": "hookline", "handler": "ops"}]
    config["alerts"] = {"quiet_seconds": 60}
    assert settings_from_mapping(config, {}).alerts.quiet_seconds == 60


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    fake_handlers.reset()
    reset_breakers()
    yield
    reset_breakers()


@pytest.fixture
async def env(tmp_path: Path, clock: FakeClock) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime,
                                                                          Alerts]]:
    config = base_config(tmp_path / "alerts.db")
    config["handlers"] = {
        "no": {"use": "fake_handlers:refuses"},
        "ops": {"use": "fake_handlers:recorder"},
        "dcycle": {"use": "dcycle_retry", "options": {
            "base_url": DCYCLE, "token": "t", "organization_id": "org"}},
    }
    config["routes"] = [{"match": "file.*", "handler": "no"},
                        {"match": "hookline.*", "handler": "ops"},
                        {"match": "dcycle.*", "handler": "dcycle"}]
    settings = settings_from_mapping(config, {})
    app = create_app(settings, clock=clock, worker_settings=WorkerSettings(background=False))
    runtime: Runtime = app.state.runtime
    async with app.router.lifespan_context(app):
        checks = Alerts(settings.alerts, runtime.store, clock, runtime.recorder,
                        runtime.handlers, settings.sources)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client, runtime, checks


async def post(client: httpx.AsyncClient, clock: FakeClock, msg_id: str) -> int:
    body = standard_body()
    response = await client.post(
        "/webhooks/partner", content=body, headers=standard_headers(body, clock.now(), msg_id))
    return response.status_code


async def alert_events(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    page = (await client.get("/api/events?source=hookline&limit=100")).json()["items"]
    found = []
    for item in reversed(page):
        found.append((await client.get(f"/api/events/{item['id']}")).json())
    return found


async def test_a_flood_of_dead_letters_is_one_alert_with_its_count_routed_like_any_event(
    env: Any, clock: FakeClock
) -> None:
    client, runtime, checks = env
    assert await checks.check() == 0  # the first check starts from now
    for n in range(40):
        assert await post(client, clock, f"m{n}") == 202
    while await runtime.worker.run_once():
        pass
    assert await checks.check() == 1
    [event] = await alert_events(client)
    assert event["source"] == "hookline" and event["type"] == "hookline.delivery.dead"
    assert event["payload"]["count"] == 40 and event["payload"]["handler"] == "no"
    assert event["payload"]["last_error"] == "file was rejected upstream"
    assert [d["handler"] for d in event["deliveries"]] == ["ops"]
    await runtime.worker.run_once()
    assert [call[0] for call in fake_handlers.recorder.calls] == [event["id"]]

    # More deaths within the quiet period are counted, and reported once it has passed.
    clock.advance(10)
    for n in range(3):
        assert await post(client, clock, f"again{n}") == 202
    await runtime.worker.run_once()
    assert await checks.check() == 0
    clock.advance(300)
    assert await checks.check() == 1
    later = (await alert_events(client))[-1]
    assert later["payload"]["count"] == 3
    # Noted by the check that found them, sent by the first check past the quiet period.
    assert later["payload"]["first_at"] == later["payload"]["last_at"] == clock.now() - 300
    await runtime.worker.run_once()  # the alert's own delivery (else the worker is stalled)
    clock.advance(600)
    assert await checks.check() == 0  # nothing new: nothing sent


async def test_failing_auth_and_a_stalled_worker_raise_alerts(env: Any, clock: FakeClock) -> None:
    client, runtime, checks = env
    await checks.check()
    for _ in range(25):
        refused = await client.post("/webhooks/partner", content=standard_body(),
                                    headers={"content-type": "application/json"})
        assert refused.status_code == 401
    await runtime.tally.flush(runtime.store)
    assert await post(client, clock, "due") == 202  # due now, and no worker runs
    assert await checks.check() == 1
    clock.advance(121)
    assert await checks.check() == 1
    auth, stalled = await alert_events(client)
    assert auth["type"] == "hookline.source.auth_failing"
    assert auth["payload"]["source"] == "partner" and auth["payload"]["unauthorized"] == 25
    assert stalled["type"] == "hookline.worker.stalled"
    assert stalled["payload"]["overdue_seconds"] >= 121


async def test_breaker_opened_and_closed(env: Any, clock: FakeClock) -> None:
    client, _, checks = env
    await checks.check()
    assert await checks.observe_breakers() == 0
    for _ in range(FAILURE_THRESHOLD):
        breaker_for(DCYCLE).record_failure(clock.monotonic())
    assert await checks.observe_breakers() == 1
    assert await checks.observe_breakers() == 0  # still open: nothing new
    breaker_for(DCYCLE).record_success()
    assert await checks.observe_breakers() == 1
    assert await checks.check() == 2
    opened, closed = await alert_events(client)
    assert opened["type"] == "hookline.breaker.opened" and opened["payload"]["handlers"] == ["dcycle"]
    assert closed["type"] == "hookline.breaker.closed" and closed["payload"]["upstream"] == "dcycle.test"


async def test_every_worker_watches_its_breakers_and_one_runs_the_checks(
    env: Any, clock: FakeClock
) -> None:
    from app.scheduler import Maintenance, start_scheduler

    _, runtime, checks = env
    with_alerts = start_scheduler(Maintenance(runtime.store, clock, runtime.worker, 30,
                                              alerts=checks), alert_seconds=7)
    without = start_scheduler(Maintenance(runtime.store, clock, runtime.worker, 30))
    try:
        jobs = {job.id: job for job in with_alerts.get_jobs()}
        assert {"breakers", "alerts"} <= set(jobs)
        assert jobs["alerts"].trigger.interval.total_seconds() == 7
        assert not {"breakers", "alerts"} & {job.id for job in without.get_jobs()}
    finally:
        with_alerts.shutdown(wait=False)
        without.shutdown(wait=False)
    assert await Maintenance(runtime.store, clock, None, 30, alerts=checks).alert_checks() == 0


async def test_an_alert_that_cannot_be_recorded_is_kept_for_later(
    env: Any, clock: FakeClock
) -> None:
    client, runtime, checks = env
    assert await checks.check() == 0
    for n in range(5):
        assert await post(client, clock, f"lost{n}") == 202
    while await runtime.worker.run_once():
        pass
    record = checks.recorder.record

    async def refuse(event: Any) -> Any:
        raise OSError("intake full")

    checks.recorder.record = refuse  # type: ignore[method-assign]
    assert await checks.check() == 0  # not sent, and not lost
    assert await alert_events(client) == []
    checks.recorder.record = record  # type: ignore[method-assign]
    clock.advance(300)
    assert await checks.check() == 1
    [event] = await alert_events(client)
    assert event["type"] == "hookline.delivery.dead" and event["payload"]["count"] == 5
