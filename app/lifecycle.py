"""Pure lifecycle folding: the story of one job or file, told from its events.

`fold` takes a job's (or file's) events in the order they were received and returns its state:
where it stands now, when it was first and last seen, its timeline, how it ended and how long
that took. Events that make no sense where they fall (a success after the story ended in
failure, an event older than the one before it) are recorded as anomalies, never raised.
State is derived from the event log on demand, so it can never disagree with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["succeeded", "failed"]

SUCCEEDED = frozenset({
    "alfred.job.finished", "alfred.file.done", "dcycle.reading.success",
    "aitronos.file.completed",
})
FAILED = frozenset({
    "alfred.job.failed", "alfred.job.invalid", "alfred.job.exceeded_retries",
    "alfred.file.failed", "dcycle.reading.error", "dcycle.reading.timeout",
    "aitronos.file.failed", "aitronos.file.timeout",
})
# Events that say work is (again) under way: a story that ended may start over with these.
RESTARTS = frozenset({
    "alfred.job.create", "alfred.job.start", "alfred.job.retry", "filecheck.job.created",
    "alfred.file.add_to_job",
})


@dataclass(frozen=True, slots=True)
class Step:
    """One event as the fold sees it."""

    id: str
    type: str
    at: float
    occurred_at: float | None = None
    payload: Any = None


@dataclass
class Lifecycle:
    kind: str
    id: str
    state: str = "unknown"
    first_seen: float | None = None
    last_seen: float | None = None
    outcome: Outcome | None = None
    time_to_done: float | None = None
    restarts: int = 0
    timeline: list[dict[str, Any]] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "id": self.id, "state": self.state,
            "first_seen": self.first_seen, "last_seen": self.last_seen,
            "outcome": self.outcome, "time_to_done": self.time_to_done,
            "restarts": self.restarts, "timeline": self.timeline, "anomalies": self.anomalies,
        }


def outcome_of(step: Step) -> Outcome | None:
    """Whether an event ends the story, and how."""
    if step.type in SUCCEEDED:
        return "succeeded"
    if step.type in FAILED:
        return "failed"
    if step.type == "filecheck.job.completed" and isinstance(step.payload, dict):
        return _filecheck_outcome(step.payload)
    return None


def _filecheck_outcome(job: dict[str, Any]) -> Outcome:
    tasks = job.get("tasks") if isinstance(job.get("tasks"), list) else []
    errored = job.get("status") == "error" or any(
        isinstance(t, dict) and t.get("status") == "error" for t in tasks
    )
    return "failed" if errored or job.get("outcome") == "fail" else "succeeded"


def _state_after(step: Step, outcome: Outcome | None) -> str:
    if outcome is not None:
        return outcome
    if step.type.endswith(".stalled"):
        return "stalled"
    if step.type.endswith(".retry"):
        return "retrying"
    return "in_progress"


def fold(kind: str, entity_id: str, steps: Iterable[Step]) -> Lifecycle:
    """The lifecycle of one job or file from its events, oldest first."""
    life = Lifecycle(kind, entity_id)
    previous: Step | None = None
    for step in steps:
        _apply(life, step, previous)
        previous = step
    return life


def _apply(life: Lifecycle, step: Step, previous: Step | None) -> None:
    if life.first_seen is None:
        life.first_seen = step.at
    life.last_seen = step.at
    life.timeline.append({"id": step.id, "type": step.type, "at": step.at})
    if (previous is not None and step.occurred_at is not None
            and previous.occurred_at is not None and step.occurred_at < previous.occurred_at):
        life.anomalies.append(f"{step.type} ({step.id}) occurred before {previous.type}, "
                              "which arrived earlier")
    outcome = outcome_of(step)
    if life.outcome is not None:
        if step.type in RESTARTS or step.type.endswith(".retry"):
            life.restarts += 1
            life.outcome = life.time_to_done = None
        elif outcome is not None and outcome != life.outcome:
            life.anomalies.append(f"{step.type} ({step.id}) after the story ended {life.outcome}")
        else:
            life.anomalies.append(f"{step.type} ({step.id}) after the story ended {life.outcome}")
            return
    life.state = _state_after(step, outcome)
    if outcome is not None and life.outcome is None:
        life.outcome = outcome
        life.time_to_done = step.at - (life.first_seen or step.at)


def job_failed_before_file_done(file_life: Lifecycle, job_life: Lifecycle) -> str | None:
    """An anomaly when a file reports success after its job already failed."""
    failed_at = next((s["at"] for s in job_life.timeline if s["type"] in FAILED), None)
    if failed_at is None:
        return None
    done = [s for s in file_life.timeline if s["type"] in SUCCEEDED and s["at"] > failed_at]
    if not done:
        return None
    return f"{done[0]['type']} ({done[0]['id']}) after job {job_life.id} failed"


def is_open(event_type: str) -> bool:
    """Whether a job/file whose newest event has this type is still waiting for an end."""
    return (event_type not in SUCCEEDED and event_type not in FAILED
            and event_type != "filecheck.job.completed" and not event_type.endswith(".stalled"))


def steps_from(events: Sequence[Any]) -> list[Step]:
    """Steps from stored event records (anything with id, type, received_at, payload)."""
    return [Step(e.id, e.type, e.received_at, e.occurred_at, e.payload) for e in events]
