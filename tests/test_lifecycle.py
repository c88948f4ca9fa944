"""Pure lifecycle folding over event sequences."""

from __future__ import annotations

from app.lifecycle import Step, fold, is_open, job_failed_before_file_done


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
    assert is_open("alfred.job.start") and is_open("file.processing_failed")
    assert not is_open("alfred.job.finished") and not is_open("alfred.job.stalled")
    assert not is_open("filecheck.job.completed")
