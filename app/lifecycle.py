"""Pure lifecycle folding: the story of one job or file, told from its events.

`fold` takes a job's (or file's) events as they were received and returns its state: where it
stands now, when it was first and last seen, its timeline, how it ended and how long that took.
The story follows the events' own times (`occurred_at`, Filecheck's `finalized` for a completed
job, the receipt time only when an event has none), so events received out of order fold as
they happened, and the time to done is measured between those times. An event hookline recorded
itself (a poll outcome, a stall) is stamped by hookline's clock, which a sender's clock cannot be
compared with, and is a consequence of what arrived before it: it never goes before an event
received earlier. Events that make no sense where they fall (a success after the story ended in
failure, an event that arrived after a later one) are recorded as anomalies, never raised.
State is derived from the event log on demand, so it can never disagree with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
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
# What hookline records after polling a platform it retried: the outcome of that retry.
POLLED = {
    "dcycle": frozenset({"dcycle.reading.success", "dcycle.reading.error",
                         "dcycle.reading.timeout"}),
    "aitronos": frozenset({"aitronos.file.completed", "aitronos.file.failed",
                           "aitronos.file.timeout"}),
}
POLLED_OUTCOMES = frozenset().union(*POLLED.values())
# The action words of other senders' types (a Standard Webhooks `file.processing_failed`).
FAILURE_ACTIONS = frozenset({"failed", "failure", "error", "errored"})
FAILURE_SUFFIXES = ("_failed", "_failure", "_error")


@dataclass(frozen=True, slots=True)
class Step:
    """One event as the fold sees it (`at`: received; `recorded`: hookline's own event)."""

    id: str
    type: str
    at: float
    occurred_at: float | None = None
    payload: Any = None
    recorded: bool = False


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
    started_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "id": self.id, "state": self.state,
            "first_seen": self.first_seen, "last_seen": self.last_seen,
            "outcome": self.outcome, "time_to_done": self.time_to_done,
            "restarts": self.restarts, "timeline": self.timeline, "anomalies": self.anomalies,
        }


def says_failed(event_type: str) -> bool:
    """Whether a type outside the known platforms' names a failure by its action word."""
    action = event_type.rsplit(".", 1)[-1]
    return action in FAILURE_ACTIONS or action.endswith(FAILURE_SUFFIXES)


def outcome_of(step: Step) -> Outcome | None:
    """Whether an event ends the story, and how."""
    if step.type in SUCCEEDED:
        return "succeeded"
    if step.type in FAILED:
        return "failed"
    if step.type == "filecheck.job.completed" and isinstance(step.payload, dict):
        return _filecheck_outcome(step.payload)
    if step.type == "alfred.job.retry":
        return "failed" if _retries_exceeded(step.payload) else None
    if step.type.startswith(("alfred.", "filecheck.", "hookline.")):
        return None
    return "failed" if says_failed(step.type) else None


def _filecheck_outcome(job: dict[str, Any]) -> Outcome:
    tasks = job.get("tasks")
    errored = job.get("status") == "error" or any(
        isinstance(t, dict) and t.get("status") == "error"
        for t in (tasks if isinstance(tasks, list) else [])
    )
    return "failed" if errored or job.get("outcome") == "fail" else "succeeded"


def _retries_exceeded(payload: Any) -> bool:
    """A JobRetry saying Alfred has given up (`true` or `"true"`)."""
    inner = payload.get("event") if isinstance(payload, Mapping) else None
    flag = inner.get("exceeded_retries") if isinstance(inner, Mapping) else None
    return flag is True or (isinstance(flag, str) and flag.strip().lower() == "true")


def own_time(step: Step) -> float | None:
    """When the event happened by its sender's account; Filecheck's `occurred_at` is the job's
    creation, so a completed job is timed by its `finalized`."""
    if step.type == "filecheck.job.completed" and isinstance(step.payload, Mapping):
        finalized = _instant(step.payload.get("finalized"))
        if finalized is not None:
            return finalized
    return step.occurred_at


def _instant(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def in_story_order(steps: Iterable[Step]) -> tuple[list[Step], list[str]]:
    """The steps ordered by their own times (`occurred_at` set to the time used), and an
    anomaly for each event that arrived after one that, by its sender, happened later."""
    timed: list[tuple[float, int, Step]] = []
    anomalies: list[str] = []
    latest = float("-inf")
    latest_own: tuple[float, Step] | None = None
    for n, step in enumerate(steps):
        when = own_time(step)
        time = step.at if when is None else when
        if step.recorded:
            time = max(time, latest)
        elif when is not None:
            if latest_own is not None and when < latest_own[0]:
                anomalies.append(f"{step.type} ({step.id}) occurred before "
                                 f"{latest_own[1].type}, which arrived earlier")
            if latest_own is None or when >= latest_own[0]:
                latest_own = (when, step)
        latest = max(latest, time)
        timed.append((time, n, replace(step, occurred_at=time)))
    timed.sort(key=lambda item: (item[0], item[1]))
    return [step for _, _, step in timed], anomalies


def _state_after(step: Step, outcome: Outcome | None) -> str:
    if outcome is not None:
        return outcome
    if step.type.endswith(".stalled"):
        return "stalled"
    if step.type.endswith(".retry"):
        return "retrying"
    return "in_progress"


def fold(
    kind: str, entity_id: str, steps: Iterable[Step], retry_under_way: bool = False
) -> Lifecycle:
    """The lifecycle of one job or file from its events, as received. `retry_under_way`: an
    upstream retry hookline triggered has no outcome yet, so a failed story is `retrying`."""
    life = Lifecycle(kind, entity_id)
    received = list(steps)
    if received:
        life.first_seen = min(step.at for step in received)
        life.last_seen = max(step.at for step in received)
    ordered, life.anomalies = in_story_order(received)
    for step in ordered:
        _apply(life, step)
    if retry_under_way and life.state == "failed":
        life.state, life.outcome, life.time_to_done = "retrying", None, None
    return life


def _apply(life: Lifecycle, step: Step) -> None:
    at = step.at if step.occurred_at is None else step.occurred_at
    if life.started_at is None:
        life.started_at = at
    life.timeline.append({"id": step.id, "type": step.type, "at": step.at, "occurred_at": at})
    outcome = outcome_of(step)
    if life.outcome is not None:
        if step.type in RESTARTS or step.type.endswith(".retry") or step.type in POLLED_OUTCOMES:
            # Work started over (or hookline's retry of it reported back): a new chapter.
            life.restarts += 1
            life.outcome = life.time_to_done = None
        elif outcome is None or outcome != life.outcome:
            life.anomalies.append(f"{step.type} ({step.id}) after the story ended {life.outcome}")
            return
    life.state = _state_after(step, outcome)
    if outcome is not None:
        # A repeated ending of the same kind (a second failure report) moves the end later.
        life.outcome = outcome
        life.time_to_done = at - life.started_at


def retry_under_way(kind: str, entity_id: str, open_polls: Iterable[str]) -> bool:
    """Whether an upstream retry of this job or file waits for its polled outcome (the poll
    keys are the retry budget keys, `<platform>:<kind>:<id>`)."""
    waiting = set(open_polls)
    return any(key in waiting for key in poll_keys(kind, entity_id))


def poll_keys(kind: str, entity_id: str) -> list[str]:
    """The keys under which the polling platforms' retries of this job or file are polled."""
    return [f"{platform}:{kind}:{entity_id}" for platform in sorted(POLLED)]


def job_failed_before_file_done(file_life: Lifecycle, job_life: Lifecycle) -> str | None:
    """An anomaly when a file reports success after its job already failed."""
    failed_at = next((s["occurred_at"] for s in job_life.timeline if s["type"] in FAILED), None)
    if failed_at is None:
        return None
    done = [s for s in file_life.timeline
            if s["type"] in SUCCEEDED and s["occurred_at"] > failed_at]
    if not done:
        return None
    return f"{done[0]['type']} ({done[0]['id']}) after job {job_life.id} failed"


def is_open(event_type: str) -> bool:
    """Whether a job/file whose newest event has this type is still waiting for an end."""
    return (event_type != "filecheck.job.completed" and not event_type.endswith(".stalled")
            and outcome_of(Step("", event_type, 0.0)) is None)


def steps_from(events: Sequence[Any]) -> list[Step]:
    """Steps from stored event records (anything with id, type, received_at, occurred_at,
    payload and headers)."""
    return [
        Step(e.id, e.type, e.received_at, e.occurred_at, e.payload,
             recorded=(getattr(e, "headers", None) or {}).get("x-hookline-recorded") == "1")
        for e in events
    ]
