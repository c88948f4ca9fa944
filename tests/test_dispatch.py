"""Dispatch through the real app and SQLite store, with an injected clock: no real sleeping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.config import settings_from_mapping
from app.main import create_app
from app.runtime import Runtime
from app.worker import Worker, WorkerSettings

import fake_handlers
from conftest import FakeClock, base_config, standard_body, standard_headers


class FixedRandom:
    """Jitter pinned to the bottom of its range, so backoff times are exact."""

    def random(self) -> float:
        return 0.0


HANDLERS = {
    "rec": {"use": "fake_handlers:recorder"},
    "flaky": {"use": "fake_handlers:flaky", "max_attempts": 3, "backoff_base_seconds": 2},
    "later": {"use": "fake_handlers:ask_later"},
    "refuses": {"use": "fake_handlers:refuses"},
    "hangs": {"use": "fake_handlers:hangs", "timeout_seconds": 0.05},
    "hangs_long": {"use": "fake_handlers:hangs", "timeout_seconds": 30},
    "garbage": {"use": "fake_handlers:garbage"},
    "old_retry": {"use": "fake_handlers:old_retry"},
    "odd": {"use": "fake_handlers:odd_retries", "max_attempts": 5},
}


def config_for(tmp_path: Path, routes: list[dict[str, Any]]) -> dict[str, Any]:
    config = base_config(tmp_path / "dispatch.db")
    config["handlers"] = HANDLERS
    config["routes"] = routes
    return config


@pytest.fixture(autouse=True)
def _reset_fakes() -> None:
    fake_handlers.reset()


async def make(tmp_path: Path, clock: FakeClock, routes: list[dict[str, Any]]) -> Starlette:
    app = create_app(
        settings_from_mapping(config_for(tmp_path, routes), {}), clock=clock,
        worker_settings=WorkerSettings(background=False),
    )
    app.state.runtime.worker._rand = FixedRandom()
    return app


@pytest.fixture
async def env(tmp_path: Path, clock: FakeClock, request: pytest.FixtureRequest) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    routes = getattr(request, "param", [{"match": "*", "handler": "rec"}])
    app = await make(tmp_path, clock, routes)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client, app.state.runtime


async def post(client: httpx.AsyncClient, clock: FakeClock, msg_id: str = "m1", **data: Any) -> str:
    body = standard_body(**data)
    response = await client.post(
        "/webhooks/partner", content=body, headers=standard_headers(body, clock.now(), msg_id)
    )
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


def worker(runtime: Runtime) -> Worker:
    assert runtime.worker is not None
    return runtime.worker


async def deliveries(client: httpx.AsyncClient, event_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await client.get(f"/api/events/{event_id}")).json()["deliveries"]
    return items


async def test_event_runs_its_handler_once(env: Any, clock: FakeClock) -> None:
    client, runtime = env
    event_id = await post(client, clock)
    assert await worker(runtime).run_once() == 1
    assert fake_handlers.recorder.calls == [(event_id, 1)]
    [delivery] = await deliveries(client, event_id)
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 1
    assert delivery["attempt_log"][0]["outcome"] == "succeeded"
    assert (await client.get(f"/api/events/{event_id}")).json()["status"] == "delivered"
    assert await worker(runtime).run_once() == 0


@pytest.mark.parametrize("env", [[{"match": "*", "handler": "flaky"}]], indirect=True)
async def test_backoff_schedule_then_success(env: Any, clock: FakeClock) -> None:
    client, runtime = env
    event_id = await post(client, clock)
    start = clock.now()
    await worker(runtime).run_once()
    [d] = await deliveries(client, event_id)
    assert (d["status"], d["attempts"], d["next_attempt_at"]) == ("pending", 1, start + 1.0)
    assert "upstream down" in d["last_error"]

    clock.advance(0.5)
    assert await worker(runtime).run_once() == 0  # not due yet
    clock.advance(0.5)
    assert await worker(runtime).run_once() == 1
    [d] = await deliveries(client, event_id)
    assert (d["attempts"], d["next_attempt_at"]) == (2, clock.now() + 2.0)

    clock.advance(2.0)
    assert await worker(runtime).run_once() == 1
    [d] = await deliveries(client, event_id)
    assert d["status"] == "succeeded" and d["attempts"] == 3
    assert [a["outcome"] for a in d["attempt_log"]] == ["transient", "transient", "succeeded"]


@pytest.mark.parametrize("env", [[{"match": "*", "handler": "flaky"}]], indirect=True)
async def test_max_attempts_then_dead_letter(env: Any, clock: FakeClock) -> None:
    client, runtime = env
    fake_handlers.flaky.failures = 99
    event_id = await post(client, clock)
    for _ in range(3):
        assert await worker(runtime).run_once() == 1
        clock.advance(3600)
    assert await worker(runtime).run_once() == 0
    [d] = await deliveries(client, event_id)
    assert d["status"] == "dead" and d["attempts"] == 3
    assert "gave up after 3 attempts" in d["last_error"]
    dead = (await client.get("/api/deliveries", params={"status": "dead"})).json()["items"]
    assert [item["id"] for item in dead] == [d["id"]]
    assert (await client.get(f"/api/events/{event_id}")).json()["status"] == "failed"


@pytest.mark.parametrize(
    "env", [[{"match": "*", "handler": "later"}, {"match": "*", "handler": "refuses"}]],
    indirect=True,
)
async def test_retry_after_and_permanent(env: Any, clock: FakeClock) -> None:
    client, runtime = env
    event_id = await post(client, clock)
    await worker(runtime).run_once()
    by_handler = {d["handler"]: d for d in await deliveries(client, event_id)}
    assert by_handler["later"]["next_attempt_at"] == clock.now() + 30
    assert by_handler["refuses"]["status"] == "dead"
    assert by_handler["refuses"]["attempts"] == 1
    assert by_handler["refuses"]["last_error"] == "file was rejected upstream"
    clock.advance(29)
    assert await worker(runtime).run_once() == 0
    clock.advance(1)
    assert await worker(runtime).run_once() == 1


@pytest.mark.parametrize(
    "env", [[{"match": "*", "handler": "hangs"}, {"match": "*", "handler": "rec"},
             {"match": "*", "handler": "garbage"}]],
    indirect=True,
)
async def test_hanging_handler_times_out_without_delaying_others(env: Any, clock: FakeClock) -> None:
    client, runtime = env
    fake_handlers.hangs.watch = fake_handlers.recorder
    event_id = await post(client, clock)
    assert await worker(runtime).run_once() == 3
    assert fake_handlers.hangs.others_done_before_timeout is True
    by_handler = {d["handler"]: d for d in await deliveries(client, event_id)}
    assert by_handler["hangs"]["status"] == "pending"
    assert by_handler["hangs"]["attempt_log"][0]["outcome"] == "timeout"
    assert by_handler["rec"]["status"] == "succeeded"
    assert by_handler["garbage"]["status"] == "succeeded"


async def test_expired_lease_reruns_exactly_once_more(env: Any, clock: FakeClock) -> None:
    client, runtime = env
    event_id = await post(client, clock)
    crashed = await runtime.store.claim_due("crashed-worker", clock.now(), 60, 10)
    assert [c.event.id for c in crashed] == [event_id]
    assert await worker(runtime).run_once() == 0  # leased elsewhere
    clock.advance(61)
    assert await worker(runtime).run_once() == 1
    assert await worker(runtime).run_once() == 0
    assert fake_handlers.recorder.calls == [(event_id, 2)]
    [d] = await deliveries(client, event_id)
    assert d["status"] == "succeeded"
    assert [a["outcome"] for a in d["attempt_log"]] == ["lost", "succeeded"]
    # The crashed worker coming back late cannot overwrite the outcome.
    from app.store.base import Finished

    [held] = await runtime.store.finish([Finished(
        d["id"], "crashed-worker", 1, clock.now(), "transient", "pending", clock.now(), "late")])
    assert held is False
    [d] = await deliveries(client, event_id)
    assert d["status"] == "succeeded"


async def test_sweep_reaps_expired_leases(env: Any, clock: FakeClock) -> None:
    from app.scheduler import Maintenance

    client, runtime = env
    event_id = await post(client, clock)
    await runtime.store.claim_due("crashed-worker", clock.now(), 60, 10)
    maintenance = Maintenance(runtime.store, clock, runtime.worker, 30)
    assert await maintenance.sweep() == 0
    clock.advance(61)
    assert await maintenance.sweep() == 1
    [d] = await deliveries(client, event_id)
    assert d["status"] == "pending" and d["attempt_log"][0]["outcome"] == "lost"


async def test_prune_removes_old_events_with_deliveries(env: Any, clock: FakeClock) -> None:
    from app.scheduler import Maintenance

    client, runtime = env
    old = await post(client, clock, "old")
    clock.advance(29 * 86400)
    new = await post(client, clock, "new")
    clock.advance(2 * 86400)
    assert await Maintenance(runtime.store, clock, None, 30).prune() == 1
    assert (await client.get(f"/api/events/{old}")).status_code == 404
    assert (await client.get(f"/api/events/{new}")).status_code == 200
    assert len((await client.get("/api/deliveries")).json()["items"]) == 1


async def test_replay_one_event_and_dry_run(env: Any, clock: FakeClock) -> None:
    client, runtime = env
    event_id = await post(client, clock)
    await worker(runtime).run_once()
    plan = await client.post(f"/api/events/{event_id}/replay", json={"dry_run": True})
    assert plan.status_code == 200 and plan.json()["handlers"] == ["rec"]
    assert await worker(runtime).run_once() == 0
    replayed = await client.post(f"/api/events/{event_id}/replay", json={})
    assert replayed.status_code == 202
    assert len(replayed.json()["deliveries"]) == 1
    assert await worker(runtime).run_once() == 1
    assert [call[0] for call in fake_handlers.recorder.calls] == [event_id, event_id]
    assert len(await deliveries(client, event_id)) == 2
    unknown = await client.post("/api/events/evt_nope/replay", json={})
    assert unknown.status_code == 404
    bad_handler = await client.post(f"/api/events/{event_id}/replay", json={"handler": "nope"})
    assert bad_handler.status_code == 404


@pytest.mark.parametrize("env", [[{"match": "*", "handler": "refuses"}]], indirect=True)
async def test_bulk_replay_of_dead_deliveries(env: Any, clock: FakeClock) -> None:
    client, runtime = env
    ids = [await post(client, clock, f"m{n}") for n in range(3)]
    await worker(runtime).run_once()
    plan = await client.post("/api/replay", json={"status": "dead", "dry_run": True})
    assert plan.json()["events"] == 3 and plan.json()["deliveries"] == 3
    assert {p["event_id"] for p in plan.json()["plan"]} == set(ids)
    done = await client.post("/api/replay", json={"status": "dead", "handler": "refuses"})
    assert done.status_code == 202 and done.json()["deliveries"] == 3
    assert await worker(runtime).run_once() == 3


async def test_graceful_stop_releases_unfinished_leases(tmp_path: Path, clock: FakeClock) -> None:
    app = await make(tmp_path, clock, [{"match": "*", "handler": "hangs_long"}])
    runtime: Runtime = app.state.runtime
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            event_id = await post(client, clock)
            w = Worker(runtime.store, runtime.handlers, runtime.http, clock,
                       WorkerSettings(shutdown_grace_seconds=0.01))
            w.start()
            await fake_handlers.hangs.started.wait()
            await w.stop()
            [d] = await deliveries(client, event_id)
            assert d["status"] == "pending" and d["attempts"] == 0
            assert d["attempt_log"] == []


async def test_roles_split_receiving_from_dispatching(tmp_path: Path, clock: FakeClock) -> None:
    settings = settings_from_mapping(config_for(tmp_path, [{"match": "*", "handler": "rec"}]), {})
    receiver = create_app(settings, clock=clock, role="receiver")
    worker_only = create_app(settings, clock=clock, role="worker",
                             worker_settings=WorkerSettings(background=False))
    assert receiver.state.runtime.worker is None
    async with receiver.router.lifespan_context(receiver):
        transport = httpx.ASGITransport(app=receiver)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            event_id = await post(client, clock)
    async with worker_only.router.lifespan_context(worker_only):
        transport = httpx.ASGITransport(app=worker_only)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.post("/webhooks/partner", content=b"{}")).status_code == 404
            assert await worker(worker_only.state.runtime).run_once() == 1
    assert fake_handlers.recorder.calls == [(event_id, 1)]


@pytest.mark.parametrize("env", [[{"match": "*", "handler": "old_retry"}]], indirect=True)
async def test_a_positional_retry_fails_its_attempt_instead_of_stranding_the_delivery(
    env: Any, clock: FakeClock,
) -> None:
    client, runtime = env
    event_id = await post(client, clock)
    assert await worker(runtime).run_once() == 1
    [d] = await deliveries(client, event_id)
    assert (d["status"], d["attempts"]) == ("pending", 1)
    assert d["last_error"].startswith("TypeError")


@pytest.mark.parametrize("env", [[{"match": "*", "handler": "odd"}]], indirect=True)
async def test_odd_retries_and_unreadable_errors_are_ordinary_transient_failures(
    env: Any, clock: FakeClock,
) -> None:
    client, runtime = env
    event_id = await post(client, clock)
    start = clock.now()
    assert await worker(runtime).run_once() == 1
    [d] = await deliveries(client, event_id)
    # `after = "soon"` is no delay: the handler's own backoff applies (1 s at the first try).
    assert (d["status"], d["next_attempt_at"], d["last_error"]) == ("pending", start + 1.0, "later")
    clock.advance(1)
    assert await worker(runtime).run_once() == 1
    [d] = await deliveries(client, event_id)
    assert (d["status"], d["attempts"]) == ("pending", 2)
    assert d["last_error"] == "UnreadableError: <UnreadableError whose text could not be read>"


@pytest.mark.parametrize("env", [[{"match": "*", "handler": "flaky"}]], indirect=True)
async def test_retry_puts_the_same_dead_delivery_back_and_it_leaves_the_dead_letters(
    env: Any, clock: FakeClock
) -> None:
    client, runtime = env
    fake_handlers.flaky.failures = 3  # every attempt of its first round fails (max_attempts 3)
    event_id = await post(client, clock)
    for _ in range(3):
        await worker(runtime).run_once()
        clock.advance(3600)
    [dead] = await deliveries(client, event_id)
    assert dead["status"] == "dead" and dead["attempts"] == 3

    bare = await client.post(f"/api/deliveries/{dead['id']}/retry")  # no JSON content type
    assert bare.status_code == 415
    retried = await client.post(f"/api/deliveries/{dead['id']}/retry", json={})
    assert retried.status_code == 202 and retried.json() == {"id": dead["id"], "status": "pending"}
    assert (await client.get("/api/deliveries?status=dead")).json()["items"] == []
    [back] = await deliveries(client, event_id)
    assert (back["id"], back["status"], back["attempts"]) == (dead["id"], "pending", 3)
    assert back["next_attempt_at"] == clock.now()
    assert len(back["attempt_log"]) == 3

    again = await client.post(f"/api/deliveries/{dead['id']}/retry", json={})
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    assert await worker(runtime).run_once() == 1
    [done] = await deliveries(client, event_id)
    assert (done["id"], done["status"], done["attempts"]) == (dead["id"], "succeeded", 4)
    assert [a["number"] for a in done["attempt_log"]] == [1, 2, 3, 4]
    assert (await client.get(f"/api/events/{event_id}")).json()["status"] == "delivered"
    unknown = await client.post("/api/deliveries/dlv_nope/retry", json={})
    assert unknown.status_code == 404


@pytest.mark.parametrize("env", [[{"match": "*", "handler": "refuses"}]], indirect=True)
async def test_bulk_retry_selects_each_dead_delivery_once(env: Any, clock: FakeClock) -> None:
    client, runtime = env
    ids = [await post(client, clock, f"m{n}") for n in range(3)]
    await worker(runtime).run_once()
    plan = await client.post("/api/deliveries/retry", json={"status": "dead", "dry_run": True})
    assert plan.status_code == 200 and plan.json()["deliveries"] == 3
    assert (await client.get("/api/deliveries?status=dead")).json()["items"] != []
    none = await client.post("/api/deliveries/retry", json={"handler": "other", "dry_run": True})
    assert none.json()["deliveries"] == 0
    bad = await client.post("/api/deliveries/retry", json={"status": "pending"})
    assert bad.status_code == 400

    done = await client.post("/api/deliveries/retry", json={"type": "file.*"})
    assert done.status_code == 202 and done.json()["deliveries"] == 3
    assert len(done.json()["ids"]) == 3
    again = await client.post("/api/deliveries/retry", json={"status": "dead"})
    assert again.json()["deliveries"] == 0
    # Saying nothing retries nothing: an empty body is refused, as a bulk replay's is.
    assert (await client.post("/api/deliveries/retry", json={})).status_code == 400
    assert await worker(runtime).run_once() == 3  # each once, and each dead again
    for event_id in ids:
        [d] = await deliveries(client, event_id)
        assert d["status"] == "dead" and d["attempts"] == 2
    redo = await client.post("/api/deliveries/retry", json={"status": "dead", "dry_run": True})
    assert redo.json()["deliveries"] == 3


@pytest.mark.parametrize("env", [[{"match": "*", "handler": "refuses"}]], indirect=True)
async def test_bulk_replay_of_dead_letters_selects_each_event_once(
    env: Any, clock: FakeClock
) -> None:
    client, runtime = env
    first = await post(client, clock, "m1")
    second = await post(client, clock, "m2")
    await worker(runtime).run_once()
    # The first event is replayed by hand and dies again: two dead rows, one event.
    assert (await client.post(f"/api/events/{first}/replay", json={})).status_code == 202
    await worker(runtime).run_once()
    assert len(await deliveries(client, first)) == 2
    plan = await client.post("/api/replay", json={"status": "dead", "dry_run": True})
    assert plan.json()["events"] == 2 and plan.json()["deliveries"] == 2
    assert sorted(p["event_id"] for p in plan.json()["plan"]) == sorted([first, second])
    done = await client.post("/api/replay", json={"status": "dead"})
    assert done.json()["events"] == 2 and done.json()["deliveries"] == 2
    # Replayed and not yet run: nothing is open to replay again.
    after = await client.post("/api/replay", json={"status": "dead", "dry_run": True})
    assert after.json()["events"] == 0
    assert await worker(runtime).run_once() == 2


async def test_retry_needs_the_admin_scope(tmp_path: Path, clock: FakeClock) -> None:
    config = config_for(tmp_path, [{"match": "*", "handler": "rec"}])
    config["api"] = {"tokens": [{"name": "r", "token": "read-token-0123456789", "scopes": ["read"]}]}
    app = create_app(settings_from_mapping(config, {}), clock=clock,
                     worker_settings=WorkerSettings(background=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            auth = {"authorization": "Bearer read-token-0123456789"}
            for path in ("/api/deliveries/retry", "/api/deliveries/dlv_x/retry"):
                assert (await client.post(path, json={}, headers=auth)).status_code == 403
                assert (await client.post(path, json={})).status_code == 401


@pytest.mark.parametrize("env", [[{"match": "*", "handler": "refuses"},
                                  {"match": "*", "handler": "flaky"}]], indirect=True)
async def test_paged_replay_of_dead_letters_plans_each_event_once_across_pages(
    env: Any, clock: FakeClock
) -> None:
    client, runtime = env
    fake_handlers.flaky.failures = 100
    ids = [await post(client, clock, f"m{n}") for n in range(2)]
    for _ in range(3):
        await worker(runtime).run_once()
        clock.advance(3600)
    assert len((await client.get("/api/deliveries?status=dead")).json()["items"]) == 4

    async def pages(dry_run: bool) -> list[dict[str, Any]]:
        answers, cursor = [], None
        while True:
            body: dict[str, Any] = {"status": "dead", "limit": 1, "dry_run": dry_run}
            if cursor:
                body["cursor"] = cursor
            answer = (await client.post("/api/replay", json=body)).json()
            answers.append(answer)
            if not answer["more"]:
                return answers
            cursor = answer["next_cursor"]

    planned = [p for a in await pages(True) for p in a["plan"]]
    assert sorted(p["event_id"] for p in planned) == sorted(ids)
    assert all(sorted(p["handlers"]) == ["flaky", "refuses"] for p in planned)
    done = await pages(False)
    assert sum(a["events"] for a in done) == 2 and sum(a["deliveries"] for a in done) == 4
    assert (await pages(True))[0]["events"] == 0
