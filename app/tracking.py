"""The state of one job or file, as the API and the CLI show it: the pure lifecycle fold over
its events, checked against its job's story, with the upstream retries counted in the store and
the status polls still waiting there (a failed story whose retry awaits its outcome is
`retrying`)."""

from __future__ import annotations

from typing import Any, Literal

from app import lifecycle
from app.store import Store


async def entity_state(
    store: Store, kind: Literal["job", "file"], entity_id: str
) -> dict[str, Any] | None:
    """The lifecycle of a job or file, or None when no event names it."""
    events = await store.events_of(kind, entity_id)
    if not events:
        return None
    waiting = await store.open_polls(lifecycle.poll_keys(kind, entity_id))
    life = lifecycle.fold(kind, entity_id, lifecycle.steps_from(events),
                          lifecycle.retry_under_way(kind, entity_id, waiting))
    if kind == "file":
        for job_id in sorted({e.job_id for e in events if e.job_id}):
            job_events = await store.events_of("job", job_id)
            job = lifecycle.fold("job", job_id, lifecycle.steps_from(job_events))
            anomaly = lifecycle.job_failed_before_file_done(life, job)
            if anomaly:
                life.anomalies.append(anomaly)
    # Budgets are counted per "<platform>:<kind>:<id>" by the upstream handlers; a polling
    # platform's retry is counted before any event of that platform is in the log.
    platforms = ({e.type.split(".", 1)[0] for e in events} | {e.source for e in events}
                 | set(lifecycle.POLLED))
    used = await store.budget_used([f"{p}:{kind}:{entity_id}" for p in sorted(platforms)])
    answer = life.as_dict()
    answer["upstream_retries"] = sum(used.values())
    answer["job_ids"] = sorted({e.job_id for e in events if e.job_id})
    answer["file_ids"] = sorted({e.file_id for e in events if e.file_id})
    return answer
