"""Pure lifecycle folding over event sequences."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

from app.config import settings_from_mapping
from app.lifecycle import (
    Step,
    fold,
    is_open,
    job_failed_before_file_done,
    outcome_of,
    own_time,
    poll_keys,
    retry_under_way,
    steps_from,
)
from app.main import create_app
from app.runtime import Runtime
from app.worker import WorkerSettings

from conftest import FakeClock, base_config, standard_body, standard_headers


def steps(*types: str, start: float = 100.0) -> list[Step]:
    return [Step(f"e{n}", t, start + n * 10) for n, t in enumerate(types)]


def test_alfred_job_story_to_failure() -> None:
    life = fold("job", "j1", steps("alfred.job.start", "alfred.job.retry", "alfred.job.failed"))
    assert life.state == "failed" and life.outcome == "failed"
    assert (life.first_seen, life.last_seen, life.time_to_done) == (100.0, 120.0, 20.0)
    assert [s["type"] for s in life.timeline] == [
        "alfred.job.start", "alfred.job.retry", "alfred.job.failed"]
    assert life.anomalies == []


def test_in_progress_and_retrying_states() -> None:
    assert fold("job", "j", steps("alfred.job.start")).state == "in_progress"
    assert fold("job", "j", steps("alfred.job.start", "alfred.job.retry")).state == "retrying"
    assert fold("job", "j", []).state == "unknown"


def test_restart_after_failure_then_success() -> None:
    life = fold("job", "j", steps("alfred.job.start", "alfred.job.failed", "alfred.job.start",
                                  "alfred.job.finished"))
    assert life.outcome == "succeeded" and life.restarts == 1 and life.anomalies == []
    assert life.time_to_done == 30.0


def test_impossible_transitions_are_anomalies() -> None:
    life = fold("file", "f", steps("alfred.file.failed", "alfred.file.done"))
    assert life.outcome == "failed"
    assert life.anomalies == ["alfred.file.done (e1) after the story ended failed"]
    late = fold("file", "f", steps("alfred.file.done", "alfred.file.update"))
    assert late.state == "succeeded" and len(late.anomalies) == 1


def test_out_of_order_occurrence_is_an_anomaly() -> None:
    life = fold("job", "j", [Step("a", "alfred.job.start", 1, occurred_at=50),
                             Step("b", "alfred.job.stage_update", 2, occurred_at=40)])
    assert life.anomalies and "occurred before" in life.anomalies[0]


def test_filecheck_outcomes_from_the_job_body() -> None:
    ok = fold("job", "fc", [Step("a", "filecheck.job.completed", 1,
                                 payload={"status": "done", "outcome": "pass", "tasks": []})])
    bad = fold("job", "fc", [Step("a", "filecheck.job.completed", 1,
                                  payload={"status": "done", "tasks": [{"status": "error"}]})])
    assert (ok.outcome, bad.outcome) == ("succeeded", "failed")


def test_polled_outcomes_end_the_story() -> None:
    life = fold("file", "d", steps("file.processing_failed", "dcycle.reading.success"))
    assert life.outcome == "succeeded"
    assert fold("file", "d", steps("file.processing_failed",
                                   "dcycle.reading.timeout")).outcome == "failed"


def test_file_done_after_job_failed() -> None:
    job = fold("job", "j", steps("alfred.job.start", "alfred.job.failed"))
    file_ = fold("file", "f", steps("alfred.file.add_to_job", "alfred.file.done", start=105))
    assert job_failed_before_file_done(file_, job) == "alfred.file.done (e1) after job j failed"
    early = fold("file", "f", steps("alfred.file.done", start=101))
    assert job_failed_before_file_done(early, job) is None


def test_is_open() -> None:
    assert is_open("alfred.job.start") and is_open("file.processing_started")
    assert is_open("alfred.job.retry")
    # A sender's own failure report ends the story (failed) unless a retry reopens it.
    assert not is_open("file.processing_failed") and not is_open("invoice.sync.error")
    assert not is_open("alfred.job.finished") and not is_open("alfred.job.stalled")
    assert not is_open("filecheck.job.completed")


# The story follows the events' own times; failures are failures until something succeeds.


def test_repeated_failures_without_a_success_are_failed() -> None:
    life = fold("file", "f", steps("file.processing_failed", "file.processing_failed"))
    assert (life.state, life.outcome, life.anomalies) == ("failed", "failed", [])
    assert life.time_to_done == 10.0  # the story ended again, later
    once = fold("file", "f", steps("file.uploaded", "file.processing_failed"))
    assert (once.state, once.outcome) == ("failed", "failed")
    assert fold("job", "j", steps("alfred.job.failed", "alfred.job.failed")).anomalies == []
    assert fold("job", "s", steps("sync.started", "sync.error")).outcome == "failed"
    assert fold("job", "s", steps("sync.started", "sync.upload_failed")).outcome == "failed"
    assert fold("job", "s", steps("sync.started", "sync.failing_over")).state == "in_progress"


def test_failure_words_of_known_platforms_are_not_guessed() -> None:
    # Only the listed Alfred/Filecheck/hookline types end a story, whatever their words say.
    assert fold("job", "j", steps("alfred.job.stage_update")).state == "in_progress"
    assert outcome_of(Step("a", "hookline.delivery.failed", 1)) is None


def test_a_retry_under_way_reopens_a_failed_story() -> None:
    failed = steps("file.processing_failed")
    life = fold("file", "f", failed, retry_under_way=True)
    assert (life.state, life.outcome, life.time_to_done) == ("retrying", None, None)
    twice = fold("file", "f", steps("file.processing_failed", "dcycle.reading.error",
                                    "file.processing_failed"), retry_under_way=True)
    assert twice.state == "retrying" and twice.restarts == 1
    done = fold("file", "f", steps("file.processing_failed", "dcycle.reading.success"),
                retry_under_way=True)
    assert (done.state, done.outcome, done.restarts) == ("succeeded", "succeeded", 1)
    assert fold("file", "f", failed).state == "failed"


def test_retry_under_way_from_open_polls() -> None:
    assert poll_keys("file", "f1") == ["aitronos:file:f1", "dcycle:file:f1"]
    assert retry_under_way("file", "f1", {"dcycle:file:f1"})
    assert not retry_under_way("file", "f1", {"dcycle:file:f2", "dcycle:job:f1"})
    assert not retry_under_way("file", "f1", [])


def test_alfred_retry_with_retries_exceeded_is_a_failure() -> None:
    def retry(flag: object) -> Step:
        return Step("r", "alfred.job.retry", 2, payload={"event": {"exceeded_retries": flag}})

    start = Step("s", "alfred.job.start", 1)
    for flag in (True, "true", "True"):
        assert fold("job", "j", [start, retry(flag)]).state == "failed"
    for flag in (False, "false", None):
        assert fold("job", "j", [start, retry(flag)]).state == "retrying"


def test_events_received_out_of_order_fold_by_their_own_times() -> None:
    finished_first = [Step("b", "alfred.job.finished", 1000, occurred_at=300),
                      Step("a", "alfred.job.start", 1010, occurred_at=100)]
    life = fold("job", "j", finished_first)
    assert (life.state, life.outcome, life.restarts) == ("succeeded", "succeeded", 0)
    assert [s["id"] for s in life.timeline] == ["a", "b"]
    assert [s["occurred_at"] for s in life.timeline] == [100, 300]
    assert life.time_to_done == 200  # own times, not the 10 s between receipts
    assert (life.first_seen, life.last_seen) == (1000, 1010)  # receipts
    assert life.anomalies == [
        "alfred.job.start (a) occurred before alfred.job.finished, which arrived earlier"]
    late_retry = fold("job", "j", [Step("f", "alfred.job.failed", 1000, occurred_at=200),
                                   Step("r", "alfred.job.retry", 1010, occurred_at=100)])
    assert (late_retry.state, late_retry.restarts) == ("failed", 0)


def test_receipt_time_is_the_fallback() -> None:
    mixed = [Step("a", "job.started", 50), Step("b", "job.failed", 60, occurred_at=40)]
    life = fold("job", "j", mixed)
    assert [s["id"] for s in life.timeline] == ["b", "a"]
    assert life.state == "failed"
    assert life.anomalies == ["job.started (a) after the story ended failed"]


def test_hookline_records_never_go_before_what_arrived_earlier() -> None:
    # The sender's clock runs ahead of ours: its report "happened" after our poll's outcome.
    story = [Step("a", "file.processing_failed", 100, occurred_at=5000),
             Step("b", "dcycle.reading.success", 190, occurred_at=190, recorded=True)]
    life = fold("file", "f", story)
    assert [s["id"] for s in life.timeline] == ["a", "b"]
    assert (life.state, life.anomalies, life.time_to_done) == ("succeeded", [], 0.0)
    # Unflagged, the same times would put the success first and the failure after its end.
    unflagged = fold("file", "f", [story[0], Step("b", "dcycle.reading.success", 190,
                                                  occurred_at=190)])
    assert [s["id"] for s in unflagged.timeline] == ["b", "a"] and unflagged.anomalies


def test_a_success_after_the_story_failed_changes_nothing() -> None:
    life = fold("file", "f", steps("alfred.file.failed", "alfred.file.done"))
    assert (life.state, life.outcome) == ("failed", "failed")


def test_filecheck_completed_is_timed_by_finalized() -> None:
    created = Step("c", "filecheck.job.created", 1000, occurred_at=500)
    completed = Step("d", "filecheck.job.completed", 1001, occurred_at=500, payload={
        "status": "done", "outcome": "pass", "tasks": [], "finalized": "1970-01-01T00:10:00Z"})
    life = fold("job", "fc", [created, completed])
    assert (life.outcome, life.time_to_done) == ("succeeded", 100.0)
    assert own_time(completed) == 600.0
    assert own_time(replace(completed, payload={"finalized": "soon"})) == 500


def test_file_done_after_job_failed_by_own_times() -> None:
    job = fold("job", "j", [Step("x", "alfred.job.failed", 200, occurred_at=50)])
    file_ = fold("file", "f", [Step("y", "alfred.file.done", 100, occurred_at=60)])
    assert job_failed_before_file_done(file_, job) == "alfred.file.done (y) after job j failed"
    early = fold("file", "f", [Step("y", "alfred.file.done", 300, occurred_at=40)])
    assert job_failed_before_file_done(early, job) is None


def test_steps_from_records_flags_hookline_records() -> None:
    record = SimpleNamespace(id="e", type="dcycle.reading.error", received_at=5.0,
                             occurred_at=5.0, payload={}, headers={"x-hookline-recorded": "1"})
    received = SimpleNamespace(id="r", type="t", received_at=5.0, occurred_at=None, payload={},
                               headers={})
    assert [s.recorded for s in steps_from([record, received])] == [True, False]


# Through the API: GET /api/jobs/{id} and /api/files/{id} over the real app, store and worker.

CORPUS = Path(__file__).parents[2] / "shared" / "corpus" / "alfred" / "docs"
FILE_ID = "11111111-1111-1111-1111-111111111111"


@asynccontextmanager
async def serve(
    tmp_path: Path, clock: FakeClock, platform: Callable[[httpx.Request], httpx.Response],
    routes: list[dict[str, Any]], handlers: dict[str, Any],
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    config = base_config(tmp_path / "lifecycle.db")
    config["routes"], config["handlers"] = routes, handlers
    app = create_app(settings_from_mapping(config, {}), clock=clock,
                     http=httpx.AsyncClient(transport=httpx.MockTransport(platform)),
                     worker_settings=WorkerSettings(background=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client, app.state.runtime


def refuse(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no upstream call expected: {request.url}")


async def test_api_folds_alfred_events_received_out_of_order(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with serve(tmp_path, clock, refuse, [], {}) as (client, _):
        for name, at in (("job_finished", "1653645400.00"), ("job_start", "1653645300.00")):
            event = json.loads((CORPUS / f"{name}.json").read_text())
            event["event_time"], event["event"]["job_id"] = at, "job-1"
            answer = await client.post("/webhooks/alfred?token=alfred-token", json=event)
            assert answer.status_code == 202, answer.text
            clock.advance(5)
        story = (await client.get("/api/jobs/job-1")).json()
        assert [s["type"] for s in story["timeline"]] == [
            "alfred.job.start", "alfred.job.finished"]
        assert (story["state"], story["outcome"], story["restarts"]) == (
            "succeeded", "succeeded", 0)
        assert story["time_to_done"] == 100.0


async def test_api_repeated_failures_then_a_retry_under_way(
    tmp_path: Path, clock: FakeClock
) -> None:
    readings: list[dict[str, Any]] = []

    def dcycle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json=True)
        return httpx.Response(200, json=readings)

    routes = [{"source": "partner", "match": "file.processing_failed",
               "where": {"data.retry": True}, "handler": "dcycle"}]
    handlers = {"dcycle": {"use": "dcycle_retry", "options": {
        "base_url": "https://dcycle.example", "token": "t", "organization_id": "org",
        "poll_first_seconds": 60}}}
    async with serve(tmp_path, clock, dcycle, routes, handlers) as (client, runtime):
        async def report(msg_id: str, retry: bool) -> None:
            body = standard_body(file_id=FILE_ID, platform="dcycle", retry=retry)
            answer = await client.post("/webhooks/partner", content=body,
                                       headers=standard_headers(body, clock.now(), msg_id))
            assert answer.status_code == 202, answer.text

        await report("f-1", False)
        await report("f-2", False)
        story = (await client.get(f"/api/files/{FILE_ID}")).json()
        assert (story["state"], story["outcome"], story["anomalies"]) == ("failed", "failed", [])
        await report("f-3", True)
        assert await runtime.worker.run_once() == 1  # Dcycle asked to process it again
        story = (await client.get(f"/api/files/{FILE_ID}")).json()
        assert (story["state"], story["outcome"]) == ("retrying", None)
        assert story["upstream_retries"] == 1
        readings.append({"id": "r1", "reading": {"id": "rd1", "status": "error"}})
        clock.advance(60)
        await runtime.worker.run_polls_once()
        story = (await client.get(f"/api/files/{FILE_ID}")).json()
        assert [s["type"] for s in story["timeline"]][-1] == "dcycle.reading.error"
        assert (story["state"], story["outcome"], story["upstream_retries"]) == (
            "failed", "failed", 1)
