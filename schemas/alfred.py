"""Alfred's 24 webhook events as pydantic models, and the parser that turns a delivery into one.

Alfred's docs and its two SDKs disagree on how an event is named (`job_retry_event`,
`alfred_event_job_retry`, `JobRetryEvent`) and send most scalars as strings (`"merge": "false"`).
This module accepts every spelling, coerces the scalars, and normalises each event to one
canonical type, `alfred.<entity>.<action>`, so routing and storage never see the differences.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, create_model

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

UNKNOWN_TYPE = f"alfred.{UNRECOGNISED}"
JOB_STAGES = (
    "queued", "started", "downloading", "downloaded", "uploading", "uploaded", "in_progress",
    "completed", "failed", "invalid", "cancelled",
)

Metadata = str | dict[str, Any] | list[Any]
FileStatus = int | str


class AlfredEventBody(BaseModel):
    """What every event's `event` object carries; also the body of an unknown event."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    event_name: str | None = None
    event_type: str | None = None
    company_id: str | None = None
    company_name: str | None = None


class _Dated(AlfredEventBody):
    creation_date: datetime | None = None
    update_date: datetime | None = None


class _Job(_Dated):
    job_id: str


class _Submission(_Job):
    user_name: str | None = None
    merge: bool | None = None
    metadata: Metadata | None = None
    file_count: int | None = None
    file_urls: list[str] | None = None


class _RetryState(_Job):
    retries: int | None = None
    exceeded_retries: bool | None = None
    error_messages: list[str] | None = None


class JobCreate(_Submission):
    """A job was created."""


class JobStart(_Job):
    """A job started processing."""


class JobFinished(_Job):
    """A job finished: terminal success."""


class JobStageUpdate(_Job):
    """A job moved to another stage (one of JOB_STAGES)."""

    stage: str | None = None


class JobRetry(_Submission, _RetryState):
    """Alfred is retrying a job by itself (exceeded_retries false)."""


class JobExceededRetries(_Submission, _RetryState):
    """A job ran out of retries: terminal failure."""


class JobFailed(_RetryState):
    """A job failed: terminal failure."""


class JobInvalid(_RetryState):
    """A job was found invalid: terminal failure."""


class _File(_Dated):
    file_id: str


class FileAddToJob(_File):
    """A file was added to a job."""

    job_id: str


class _Blob(_File):
    blob_name: str | None = None
    blob_url: str | None = None


class FileDone(_Blob):
    """A file finished processing: terminal success."""

    tag_id: str | None = None
    tag_name: str | None = None
    file_status: FileStatus | None = None


class FileFailed(FileDone):
    """A file failed: terminal failure."""

    classification_score: float | None = None
    classification_status: str | None = None


class FileStatusUpdate(FileFailed):
    """A file's processing status changed."""

    manual_classification: bool | None = None


class _Named(_Blob):
    file_name: str | None = None
    file_name_without_extension: str | None = None


class FileMove(_Named):
    """A file moved to another directory."""

    previous_file_directory: str | None = None
    new_file_directory: str | None = None


class FileMoveToPending(_Named):
    """A file was moved to pending."""


class FileMoveToRecycleBin(_Named):
    """A file was moved to the recycle bin."""


class FileUpdate(_Named):
    """A file was updated."""

    file_log_id: str | None = None


class _FileLog(_Dated):
    file_log_id: str


class _Category(_FileLog):
    # The docs name these fields without a type or range: any JSON value is kept as sent.
    description: Any = None
    confidence: float | None = None


class FileCategoryCreate(_Category):
    """A category was attached to a file log."""


class FileCategoryDelete(_Category):
    """A category was removed from a file log."""


class _ExtractedData(_FileLog):
    content: Any = None
    provider: str | None = None


class FileExtractedDataCreate(_ExtractedData):
    """Extracted data was stored for a file log."""


class FileExtractedDataDelete(_ExtractedData):
    """Extracted data was deleted from a file log."""


class _Property(_FileLog):
    name: str | None = None
    value: Any = None


class FilePropertyCreate(_Property):
    """A property was set on a file log."""


class FilePropertyDelete(_Property):
    """A property was removed from a file log."""


class FileChangeTag(AlfredEventBody):
    """A file's tag changed."""

    file_id: str
    previous_tag_id: str | None = None
    previous_tag_name: str | None = None
    proposed_tag_id: str | None = None
    classification_score: float | None = None
    new_tag_id: str | None = None
    new_tag_name: str | None = None


class FileRemoveTag(AlfredEventBody):
    """A tag was removed from a file."""

    file_id: str
    tag_being_removed_id: str | None = None
    tag_being_removed_name: str | None = None
    classification_score: float | None = None


class AlfredEnvelope(BaseModel):
    """The envelope every Alfred delivery shares; `event` is narrowed per event type."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True, allow_inf_nan=False)

    event_id: str = Field(min_length=1)
    event_type: str
    event_time: float
    event: AlfredEventBody


class UrlVerification(BaseModel):
    """The registration handshake Alfred posts before any event."""

    type: Literal["url_verification"]
    challenge: StrictStr
    token: str | None = None


BODIES: dict[str, type[AlfredEventBody]] = {
    "alfred.job.create": JobCreate,
    "alfred.job.start": JobStart,
    "alfred.job.finished": JobFinished,
    "alfred.job.stage_update": JobStageUpdate,
    "alfred.job.retry": JobRetry,
    "alfred.job.exceeded_retries": JobExceededRetries,
    "alfred.job.failed": JobFailed,
    "alfred.job.invalid": JobInvalid,
    "alfred.file.add_to_job": FileAddToJob,
    "alfred.file.category_create": FileCategoryCreate,
    "alfred.file.category_delete": FileCategoryDelete,
    "alfred.file.change_tag": FileChangeTag,
    "alfred.file.done": FileDone,
    "alfred.file.extracted_data_create": FileExtractedDataCreate,
    "alfred.file.extracted_data_delete": FileExtractedDataDelete,
    "alfred.file.failed": FileFailed,
    "alfred.file.move": FileMove,
    "alfred.file.move_to_pending": FileMoveToPending,
    "alfred.file.move_to_recycle_bin": FileMoveToRecycleBin,
    "alfred.file.property_create": FilePropertyCreate,
    "alfred.file.property_delete": FilePropertyDelete,
    "alfred.file.remove_tag": FileRemoveTag,
    "alfred.file.status_update": FileStatusUpdate,
    "alfred.file.update": FileUpdate,
}


def _envelope_for(body: type[AlfredEventBody]) -> type[AlfredEnvelope]:
    return create_model(
        f"{body.__name__}Event",
        __base__=AlfredEnvelope,
        __doc__=body.__doc__,
        event=(body, ...),
    )


EVENT_MODELS: dict[str, type[AlfredEnvelope]] = {
    name: _envelope_for(body) for name, body in BODIES.items()
}

# Verb forms the docs and SDKs use interchangeably, folded onto the canonical word.
_STEMS = {
    "added": "add", "created": "create", "started": "start", "finish": "finished",
    "updated": "update", "retried": "retry", "retrying": "retry", "exceed": "exceeded",
    "fail": "failed", "deleted": "delete", "changed": "change", "moved": "move",
    "removed": "remove", "invalidated": "invalid",
}
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[^a-z0-9]+")
_NOISE = frozenset({"alfred", "event"})


def _key(words: list[str]) -> str:
    return "_".join(_STEMS.get(word, word) for word in words)


_BY_KEY: dict[str, str] = {
    _key(name.removeprefix("alfred.").replace(".", "_").split("_")): name for name in BODIES
}


@lru_cache(maxsize=1024)
def canonical_type(name: str) -> str | None:
    """The canonical type for any known spelling of an Alfred event name, else None."""
    words = [w for w in _SEPARATORS.split(_CAMEL.sub("_", name).lower()) if w]
    while words and words[0] in _NOISE:
        words.pop(0)
    while words and words[-1] == "event":
        words.pop()
    return _BY_KEY.get(_key(words))


def _name_candidates(payload: Mapping[str, Any]) -> list[Any]:
    event = payload.get("event")
    inner = event if isinstance(event, dict) else {}
    return [
        inner.get("event_name"), payload.get("event_name"),
        inner.get("event_type"), payload.get("event_type"),
    ]


def original_name(payload: Mapping[str, Any]) -> str | None:
    """The event name a delivery carries, as sent: the first of its name fields that is text."""
    return next((raw for raw in _name_candidates(payload) if isinstance(raw, str)), None)


def _resolve(payload: Mapping[str, Any]) -> tuple[str | None, Any]:
    """The canonical type named by the payload (or None) and the primary raw name."""
    candidates = _name_candidates(payload)
    for raw in candidates:
        if isinstance(raw, str) and (found := canonical_type(raw)) is not None:
            return found, candidates[0]
    return None, candidates[0]


def _correlation(body: BaseModel, field: str) -> str | None:
    value = getattr(body, field, None)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)


def _parsed(event_type: str, model: AlfredEnvelope) -> ParsedEvent:
    body = model.event
    return ParsedEvent(
        type=event_type,
        upstream_id=model.event_id,
        occurred_at=model.event_time,
        job_id=_correlation(body, "job_id"),
        file_id=_correlation(body, "file_id"),
        company_id=_correlation(body, "company_id"),
        model=model,
    )


def _validate(model: type[AlfredEnvelope], payload: Mapping[str, Any]) -> AlfredEnvelope:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise EventInvalid(pydantic_details(exc)) from None


def _handshake(payload: Mapping[str, Any]) -> Handshake:
    try:
        return Handshake(UrlVerification.model_validate(payload).challenge)
    except ValidationError as exc:
        raise EventInvalid(pydantic_details(exc)) from None


def _unknown_name_error(raw: Any) -> ErrorDetail:
    msg = "Field required" if raw is None else "Input should be a known Alfred event name"
    return ErrorDetail(("event", "event_name"), msg)


def _parse_unknown(payload: Mapping[str, Any], raw: Any, unknown: UnknownPolicy) -> ParsedEvent:
    try:
        model = AlfredEnvelope.model_validate(payload)
    except ValidationError as exc:
        details = pydantic_details(exc)
        if unknown == "reject" and isinstance(payload.get("event"), dict):
            details.append(_unknown_name_error(raw))
        raise EventInvalid(details) from None
    if unknown == "reject":
        raise EventInvalid([_unknown_name_error(raw)])
    return _parsed(UNKNOWN_TYPE, model)


def parse(incoming: Incoming, unknown: UnknownPolicy) -> ParsedEvent | Handshake:
    """Validate one Alfred delivery: an event of a canonical type, the handshake, or (unless
    `unknown` is "reject") a well-formed envelope of an unknown name as `alfred.unrecognised`,
    its payload kept as sent."""
    payload = incoming.payload
    if payload.get("type") == "url_verification":
        return _handshake(payload)
    event_type, raw = _resolve(payload)
    if event_type is None:
        return _parse_unknown(payload, raw, unknown)
    return _parsed(event_type, _validate(EVENT_MODELS[event_type], payload))
