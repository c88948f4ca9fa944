"""Standard Webhooks deliveries, and any other JSON object a signed sender posts.

Standard Webhooks recommends the envelope `{type, timestamp, data}` and carries the event id in
the `webhook-id` header (`svix-id` from Svix-backed senders), but the spec also shows payloads
without `data`, and a plain HMAC-signed sender (GitHub's `X-Hub-Signature-256`) has no envelope
at all. So any JSON object is an event: its type is the payload's own `type` (a string), else the
value at the source's `type_path`, else `unknown`; the dedupe key is the value at `id_path`, else
the message id header; the event time is `occurred_at_path` or `timestamp` (ISO 8601 or Unix
seconds or milliseconds). Correlation keys are read from `data` by name, or from the top level
when there is no `data` object.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.envelope import (
    ErrorDetail,
    EventInvalid,
    Handshake,
    Incoming,
    ParsedEvent,
    UnknownPolicy,
)
from schemas.paths import lookup

UNKNOWN_TYPE = "unknown"
# The type names the event in logs, metrics and route globs: printable, and of a sane length.
TYPE_PATTERN = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
_TYPE_MSG = "String should be 1 to 200 printable characters"
# Past this a number is taken as milliseconds: 1e11 seconds is the year 5138.
_MILLISECONDS_FROM = 1e11


class StandardEnvelope(BaseModel):
    """A Standard Webhooks payload: a type, when it happened, and the event's data. Every field
    is optional and any other key is kept: a sender may post any JSON object."""

    model_config = ConfigDict(extra="allow")

    type: str | None = Field(default=None, min_length=1, max_length=200)
    timestamp: datetime | float | None = None
    data: dict[str, Any] | None = None


EVENT_MODELS: dict[str, type[BaseModel]] = {"standard": StandardEnvelope}


class LazyEnvelope:
    """A standard payload as `StandardEnvelope`, validated only when asked for its values (a
    route's `where` reads `timestamp` as a time): most events are never asked, and ingest does
    not pay for it. A payload that does not fit the envelope reads as it came."""

    __slots__ = ("payload",)

    def __init__(self, payload: Mapping[str, Any]) -> None:
        self.payload = payload

    def model_dump(self, **options: Any) -> Any:
        try:
            return StandardEnvelope.model_validate(self.payload).model_dump(**options)
        except ValidationError:
            return dict(self.payload)


def message_prefix(headers: Mapping[str, str]) -> str:
    """`webhook-` or `svix-`: the header family a delivery is signed with, as the Svix
    libraries choose it (the unbranded one unless only the Svix one is there)."""
    if "webhook-signature" not in headers and "svix-signature" in headers:
        return "svix-"
    return "webhook-"


def _key(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)


def _checked(value: str, loc: tuple[str | int, ...]) -> str:
    if not TYPE_PATTERN.fullmatch(value):
        raise EventInvalid([ErrorDetail(loc, _TYPE_MSG)])
    return value


def _event_type(incoming: Incoming) -> str:
    payload, path = incoming.payload, incoming.paths.type
    own = payload.get("type")
    if isinstance(own, str):
        return _checked(own, ("type",))
    if path:
        found = lookup(payload, path)
        if isinstance(found, str):
            return _checked(found, tuple(path.split(".")))
    return UNKNOWN_TYPE


def moment(value: Any) -> float | None:
    """Unix seconds from ISO 8601 text or Unix seconds/milliseconds (number or numeric text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return _iso(value)
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return value / 1000 if value >= _MILLISECONDS_FROM else float(value)


def _iso(text: str) -> float | None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _correlation_scope(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    data = payload.get("data")
    return data if isinstance(data, dict) else payload


def parse(incoming: Incoming, unknown: UnknownPolicy) -> ParsedEvent | Handshake:
    """Type and key one delivery; every type is allowed, so `unknown` is unused."""
    payload, paths = incoming.payload, incoming.paths
    upstream_id = _key(lookup(payload, paths.id)) if paths.id else None
    if upstream_id is None:
        upstream_id = incoming.headers.get(message_prefix(incoming.headers) + "id")
    when = lookup(payload, paths.occurred_at) if paths.occurred_at else payload.get("timestamp")
    scope = _correlation_scope(payload)
    return ParsedEvent(
        type=_event_type(incoming),
        upstream_id=upstream_id,
        occurred_at=moment(when),
        job_id=_key(scope.get("job_id")),
        file_id=_key(scope.get("file_id")),
        company_id=_key(scope.get("company_id")),
        model=LazyEnvelope(payload),
    )
