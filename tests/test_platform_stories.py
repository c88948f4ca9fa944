"""Each platform's whole story through the real app, store and worker, against a fake of the
platform (httpx.MockTransport) that checks every request; time is the injected clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.config import settings_from_mapping
from app.main import create_app
from app.runtime import Runtime
from app.worker import WorkerSettings
from handlers.upstream import reset_breakers

from conftest import FakeClock, base_config, sample, standard_body, standard_headers

CORPUS = Path(__file__).parents[2] / "shared" / "corpus"
FILE_ID = "11111111-1111-1111-1111-111111111111"
ORG = "22222222-2222-2222-2222-222222222222"


class FakePlatform:
    """Records requests and answers them with `answer(request)`."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


@pytest.fixture(autouse=True)
def _breakers() -> None:
    reset_breakers()


async def started(tmp_path: Path, clock: FakeClock, platform: FakePlatform,
                  routes: list[dict[str, Any]], handlers: dict[str, Any]) -> Starlette:
    config = base_config(tmp_path / "stories.db")
    config["routes"] = routes
    config["handlers"] = handlers
    http = httpx.AsyncClient(transport=httpx.MockTransport(platform))
    return create_app(settings_from_mapping(config, {}), clock=clock, http=http,
                      worker_settings=WorkerSettings(background=False))


async def drive(app: Starlette) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client, app.state.runtime


async def post_alfred(client: httpx.AsyncClient, name: str, **changes: Any) -> str:
    event = json.loads(sample(f"alfred/{name}.json"))
    event["event"].update(changes.pop("event", {}))
    event.update(changes)
    response = await client.post("/webhooks/alfred?token=alfred-token", json=event)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def test_alfred_failed_job_is_resubmitted_once_within_budget(
    tmp_path: Path, clock: FakeClock
) -> None:
    platform = FakePlatform(lambda r: httpx.Response(200, json={"job_id": "new"}))
    app = await started(tmp_path, clock, platform,
                        [{"match": "alfred.job.*", "handler": "resubmit"}],
                        {"resubmit": {"use": "alfred_resubmit", "max_attempts": 1, "options": {
                            "base_url": "https://alfred.example", "api_key": "k-123",
                            "budget": 3}}})
    async for client, runtime in drive(app):
        job = json.loads(sample("alfred/alfred.job.retry.json"))["event"]["job_id"]
        ids = {"job_id": job}
        await post_alfred(client, "alfred.job.start", event=ids)
        await post_alfred(client, "alfred.job.retry", event=ids)  # Alfred still retrying
        await runtime.worker.run_once()
        assert platform.requests == []
        failures = []
        for n in range(4):
            failures.append(await post_alfred(client, "alfred.job.failed",
                                              event_id=f"failed-{n}", event=ids))
            await runtime.worker.run_once()
        assert platform.paths() == ["POST /api/file/upload"] * 3
        sent = json.loads(platform.requests[0].content)
        assert platform.requests[0].headers["x-tagshelfapi-key"] == "k-123"
        assert sent == {"urls": ["https://example.com/files/data1.xlsx",
                                 "https://example.com/files/data2.xlsx"], "merge": False}
        fourth = (await client.get(f"/api/events/{failures[3]}")).json()["deliveries"][0]
        assert fourth["status"] == "dead" and "budget" in fourth["last_error"]
        story = (await client.get(f"/api/jobs/{job}")).json()
        assert story["outcome"] == "failed" and story["upstream_retries"] == 3
        assert "k-123" not in json.dumps(story)


async def test_dcycle_failure_retried_polled_and_tracked(tmp_path: Path, clock: FakeClock) -> None:
    readings: list[dict[str, Any]] = []

    def dcycle(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer dc-token"
        assert request.headers["x-organization-id"] == ORG
        if request.method == "POST":
            assert request.url.path == "/v1/files/send-event"
            assert json.loads(request.content) == {
                "event_type": "PROCESS_DOCUMENT", "detail": {"file_id": FILE_ID}}
            return httpx.Response(200, json=True)
        assert (request.url.path, request.url.params["file_id"]) == ("/v1/files/readings", FILE_ID)
        return httpx.Response(200, json=readings)

    platform = FakePlatform(dcycle)
    app = await started(tmp_path, clock, platform,
                        [{"match": "file.processing_failed", "where": {"data.platform": "dcycle"},
                          "handler": "dcycle"}],
                        {"dcycle": {"use": "dcycle_retry", "options": {
                            "base_url": "https://dcycle.example", "token": "dc-token",
                            "organization_id": ORG, "poll_first_seconds": 60}}})
    async for client, runtime in drive(app):
        body = standard_body()
        response = await client.post("/webhooks/partner", content=body,
                                     headers=standard_headers(body, clock.now(), "up-1"))
        assert response.status_code == 202
        assert await runtime.worker.run_once() == 1
        assert platform.paths() == ["POST /v1/files/send-event"]
        clock.advance(60)
        await runtime.worker.run_polls_once()  # no reading yet
        readings.append({"id": "r1", "name": "invoice.pdf", "category": "electricity",
                         "reading": {"id": "rd1", "status": "success"}, "linked": True})
        clock.advance(30)
        await runtime.worker.run_polls_once()
        assert platform.paths() == ["POST /v1/files/send-event"] + ["GET /v1/files/readings"] * 2
        story = (await client.get(f"/api/files/{FILE_ID}")).json()
        assert [s["type"] for s in story["timeline"]] == [
            "file.processing_failed", "dcycle.reading.success"]
        assert story["outcome"] == "succeeded" and story["upstream_retries"] == 1


async def test_aitronos_file_not_in_store_is_dead_at_once(tmp_path: Path, clock: FakeClock) -> None:
    platform = FakePlatform(lambda r: httpx.Response(404, json={
        "success": False, "error": {"code": "FILE_NOT_IN_STORE", "message": "not found",
                                    "type": "client_error", "status": 404}}))
    app = await started(tmp_path, clock, platform, [{"match": "*", "handler": "ai"}],
                        {"ai": {"use": "aitronos_retry", "options": {
                            "base_url": "https://aitronos.example", "token": "t",
                            "organization_id": "org_1", "store_id": "vs_1"}}})
    async for client, runtime in drive(app):
        body = standard_body(file_id="file_abc")
        response = await client.post("/webhooks/partner", content=body,
                                     headers=standard_headers(body, clock.now(), "ai-1"))
        await runtime.worker.run_once()
        assert platform.paths() == [
            "POST /v1/organizations/org_1/stores/vs_1/files/file_abc/retry"]
        [delivery] = (await client.get(f"/api/events/{response.json()['id']}")).json()["deliveries"]
        assert delivery["status"] == "dead" and delivery["attempts"] == 1
        clock.advance(7200)
        assert await runtime.worker.run_polls_once() == 0  # nothing to poll


async def test_aitronos_traversal_in_the_payload_never_reaches_the_platform(
    tmp_path: Path, clock: FakeClock
) -> None:
    platform = FakePlatform(lambda r: httpx.Response(200, json={"status": "pending"}))
    app = await started(tmp_path, clock, platform, [{"match": "*", "handler": "ai"}],
                        {"ai": {"use": "aitronos_retry", "options": {
                            "base_url": "https://aitronos.example", "token": "t",
                            "organization_id": "org_1", "store_id": "vs_1"}}})
    async for client, runtime in drive(app):
        body = standard_body(file_id="..")
        response = await client.post("/webhooks/partner", content=body,
                                     headers=standard_headers(body, clock.now(), "ai-dots"))
        assert response.status_code == 202
        await runtime.worker.run_once()
        assert platform.requests == []
        [delivery] = (await client.get(f"/api/events/{response.json()['id']}")).json()["deliveries"]
        assert delivery["status"] == "dead"
        assert "not a single path segment" in delivery["last_error"]


async def test_filecheck_reject_is_never_resubmitted(tmp_path: Path, clock: FakeClock) -> None:
    platform = FakePlatform(lambda r: httpx.Response(201, json={"job": {"id": "j2"}}))
    app = await started(tmp_path, clock, platform,
                        [{"match": "filecheck.job.completed", "handler": "fc"}],
                        {"fc": {"use": "filecheck_resubmit", "options": {"token": "sk_test"}}})
    async for client, runtime in drive(app):
        headers = {"content-type": "application/json", "x-hook-token": "fc-token"}
        rejected = await client.post("/webhooks/filecheck", headers=headers,
                                     content=sample("filecheck/filecheck.job.completed.reject.json"))
        assert rejected.status_code == 202
        await runtime.worker.run_once()
        assert platform.requests == []
        errored = await client.post("/webhooks/filecheck", headers=headers,
                                    content=sample("filecheck/filecheck.job.completed.json"))
        assert errored.status_code == 202
        await runtime.worker.run_once()
        replay = await client.post(f"/api/events/{errored.json()['id']}/replay", json={})
        assert replay.status_code == 202
        await runtime.worker.run_once()
        assert platform.paths() == ["POST /jobs"]  # the same failure is never resubmitted twice
        assert platform.requests[0].headers["authorization"] == "Bearer sk_test"


async def test_filecheck_own_fixture_errored_is_resubmitted_with_its_file_ref(
    tmp_path: Path, clock: FakeClock
) -> None:
    platform = FakePlatform(lambda r: httpx.Response(201, json={"job": {"id": "job_2"}}))
    webhook = {"url": "https://hooks.example/webhooks/filecheck",
               "headers": {"x-hook-token": "fc-token"}}
    app = await started(tmp_path, clock, platform,
                        [{"match": "filecheck.job.completed", "handler": "fc"}],
                        {"fc": {"use": "filecheck_resubmit", "options": {
                            "token": "sk_test", "webhook": webhook}}})
    job = json.loads((CORPUS / "filecheck/webhook.job-completed.json").read_text())
    job["status"] = job["tasks"][0]["status"] = "error"
    async for client, runtime in drive(app):
        headers = {"content-type": "application/json", "x-hook-token": "fc-token"}
        response = await client.post("/webhooks/filecheck", headers=headers, json=job)
        assert response.status_code == 202, response.text
        await runtime.worker.run_once()
        assert platform.paths() == ["POST /jobs"]
        assert json.loads(platform.requests[0].content) == {
            "sources": [{"fileRef": "upload_01jf8n2p3uvw8j2l4n6p8r0t2v",
                         "steps": [{"type": "preflight"}, {"type": "autofix"}]}],
            "ruleId": "rule_business_cards", "customerId": "cust_301", "orderId": "order_5512",
            "channel": "store", "policy": {"onFail": "reject"}, "webhook": webhook,
            "metaData": {"cartId": "cart_88112", "hookline_attempt": 1,
                         "hookline_original_job_id": job["id"]}}
