"""The Standard Webhooks envelope, for any platform that signs its deliveries that way.

Standard Webhooks fixes only the envelope (`type`, `timestamp`, `data`) and carries the event id
in the `webhook-id` header, so any sender can post to hookline without a platform-specific schema.
The payload's own `type` is the canonical type; correlation keys are read from `data` by name.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from schemas.envelope import (
    EventInvalid,
    Handshake,
    Incoming,
    ParsedEvent,
    UnknownPolicy,
    pydantic_details,
)


class StandardEnvelope(BaseModel):
    """A Standard Webhooks payload: a type, when it happened, and the event's data."""

    model_config = ConfigDict(extra="allow")

    # The type names the event in logs, metrics and route globs: printable, and of a sane length.
    type: StrictStr = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
    timestamp: datetime
    data: dict[str, Any]


EVENT_MODELS: dict[str, type[BaseModel]] = {"standard": StandardEnvelope}


def _key(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)


def _seconds(moment: datetime) -> float:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.timestamp()


def parse(incoming: Incoming, unknown: UnknownPolicy) -> ParsedEvent | Handshake:
    """Validate one Standard Webhooks delivery; every type is allowed, so `unknown` is unused."""
    try:
        envelope = StandardEnvelope.model_validate(incoming.payload)
    except ValidationError as exc:
        raise EventInvalid(pydantic_details(exc)) from None
    return ParsedEvent(
        type=envelope.type,
        upstream_id=incoming.headers.get("webhook-id"),
        occurred_at=_seconds(envelope.timestamp),
        job_id=_key(envelope.data, "job_id"),
        file_id=_key(envelope.data, "file_id"),
        company_id=_key(envelope.data, "company_id"),
        model=envelope,
    )
