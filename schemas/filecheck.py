"""Filecheck's two webhook bodies as pydantic models, and the parser that tells them apart.

Filecheck posts a bare job object with no envelope and no event name: the type is read from the
body's shape (`taskIds` + `finalized` + `tasks` is a completed job, `taskCount` a created one),
and the dedupe key is the canonical type plus the job id, since nothing else identifies a delivery.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from schemas.envelope import (
    UNRECOGNISED,
    ErrorDetail,
    EventInvalid,
    Handshake,
    Incoming,
    ParsedEvent,
    UnknownPolicy,
    pydantic_details,
)

COMPLETED = "filecheck.job.completed"
CREATED = "filecheck.job.created"
UNKNOWN_TYPE = f"filecheck.{UNRECOGNISED}"
COMPLETED_KEYS = ("taskIds", "finalized", "tasks")

Status = Literal["pending", "running", "done", "skipped", "error"]
Outcome = Literal["pass", "warn", "fail", "fixed", "unchanged", "na", "mixed"]
OnFail = Literal["reject", "accept_with_warnings", "manual_review"]
# Documented, but lists that grow with the product: kept as plain strings in the models.
STEP_TYPES = (
    "preflight", "autofix", "repreflight", "validate", "previews", "optimize", "convert",
    "upscale", "removebg", "split_pages", "deliver", "proof",
)
FILE_TYPES = ("pdf", "raster", "vector", "office", "archive", "font", "other")
Created = float | datetime
_SHAPE_MSG = (
    "Input should be a Filecheck job.completed (taskIds, finalized, tasks)"
    " or job.created (taskCount) body"
)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)


class Policy(_Lenient):
    onFail: OnFail | None = None


class SourceRef(_Lenient):
    taskId: str | None = None
    bucket: str | None = None
    key: str | None = None


class Artifact(_Lenient):
    kind: str | None = None
    role: str | None = None
    bucket: str | None = None
    key: str | None = None
    downloadUrl: str | None = None
    expiresIn: int | None = None


class Step(_Lenient):
    id: str | None = None
    type: str | None = None
    status: Status | None = None
    outcome: Outcome | None = None
    reason: str | None = None
    outputs: list[Any] | None = None
    ended: str | None = None


class Task(_Lenient):
    id: str
    status: Status | None = None
    outcome: Outcome | None = None
    mimeType: str | None = None
    fileType: str | None = None
    clientRef: str | None = None
    source: Any = None
    fileRef: str | None = None
    sourceRef: SourceRef | None = None
    originalArtifact: Any = None
    outputArtifacts: list[Artifact] | None = None
    steps: list[Step] | None = None


class _Job(_Lenient):
    id: str
    status: Status
    channel: str | None = None
    ruleId: str | None = None
    customerId: str | None = None
    orderId: str | None = None
    created: Created | None = None


class JobCompleted(_Job):
    """A job reached a terminal status; `status: error` is worth resubmitting."""

    domainIdx: int | None = None
    outcome: Outcome | None = None
    policy: Policy | None = None
    metaData: dict[str, Any] | None = None
    taskIds: list[str]
    sourceRefs: list[SourceRef] | None = None
    finalized: datetime | None
    tasks: list[Task]


class JobCreated(_Job):
    """A job was accepted and its tasks queued."""

    taskCount: int


EVENT_MODELS: dict[str, type[_Job]] = {COMPLETED: JobCompleted, CREATED: JobCreated}


def detect_type(payload: Mapping[str, Any]) -> str | None:
    """The canonical type a Filecheck body's shape says it is, else None."""
    if all(key in payload for key in COMPLETED_KEYS):
        return COMPLETED
    if "taskCount" in payload:
        return CREATED
    return None


def _seconds(created: Created | None) -> float | None:
    if created is None:
        return None
    if isinstance(created, datetime):
        aware = created if created.tzinfo else created.replace(tzinfo=UTC)
        return aware.timestamp()
    return created / 1000


def _task_ids(job: _Job) -> tuple[str, ...]:
    if not isinstance(job, JobCompleted):
        return ()
    return tuple(dict.fromkeys([*job.taskIds, *(task.id for task in job.tasks)]))


def _parsed(event_type: str, job: _Job) -> ParsedEvent:
    return ParsedEvent(
        type=event_type,
        upstream_id=f"{event_type}:{job.id}",
        occurred_at=_seconds(job.created),
        job_id=job.id,
        company_id=job.customerId or None,
        task_ids=_task_ids(job),
        model=job,
    )


def _unknown(payload: Mapping[str, Any], unknown: UnknownPolicy) -> ParsedEvent:
    if unknown == "reject":
        raise EventInvalid([ErrorDetail((), _SHAPE_MSG)])
    raw = payload.get("id")
    job_id = str(raw) if isinstance(raw, str | int) and not isinstance(raw, bool) else None
    return ParsedEvent(
        type=UNKNOWN_TYPE,
        upstream_id=f"{UNKNOWN_TYPE}:{job_id}" if job_id else None,
        job_id=job_id,
    )


def parse(incoming: Incoming, unknown: UnknownPolicy) -> ParsedEvent | Handshake:
    """Validate one Filecheck delivery, typed by its shape."""
    payload = incoming.payload
    event_type = detect_type(payload)
    if event_type is None:
        return _unknown(payload, unknown)
    try:
        job = EVENT_MODELS[event_type].model_validate(payload)
    except ValidationError as exc:
        raise EventInvalid(pydantic_details(exc)) from None
    return _parsed(event_type, job)
