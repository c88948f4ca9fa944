"""The stored records: what the event log holds and what the read API and handlers see.

`NewEvent` is what ingest hands the store (a plain dataclass: it is built once per request on
the hot path); `EventRecord`, `DeliveryRecord` and `AttemptRecord` are what the store returns.
They live here, beside the platform schemas, so handler plugins and dashboards can use them
without importing the server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

from schemas.alfred import original_name
from schemas.envelope import UNRECOGNISED

DeliveryStatus = Literal["pending", "running", "succeeded", "dead"]
EventStatus = Literal["unrouted", "pending", "delivered", "failed"]


@dataclass(slots=True)
class NewEvent:
    """One accepted request, ready for the durable write."""

    id: str
    source: str
    type: str
    dedupe_key: str | None
    received_at: float
    occurred_at: float | None
    body: bytes
    payload: dict[str, Any]
    headers: dict[str, str]
    query: str = ""
    job_id: str | None = None
    file_id: str | None = None
    company_id: str | None = None
    task_ids: tuple[str, ...] = ()
    handlers: tuple[str, ...] = field(default=())

    def payload_json(self) -> str:
        return json.dumps(self.payload, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Saved:
    """The store's answer for one NewEvent: its id, or the first id if it was a duplicate."""

    id: str
    duplicate: bool


class AttemptRecord(BaseModel):
    number: int
    started_at: float
    ended_at: float | None
    outcome: str
    error: str | None = None
    http_status: int | None = None


class DeliveryRecord(BaseModel):
    id: str
    event_id: str
    event_type: str | None = None
    handler: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float | None
    created_at: float
    updated_at: float
    last_error: str | None = None
    attempt_log: list[AttemptRecord] = []


class EventRecord(BaseModel):
    id: str
    source: str
    type: str
    upstream_id: str | None
    status: EventStatus
    received_at: float
    occurred_at: float | None
    job_id: str | None = None
    file_id: str | None = None
    company_id: str | None = None
    task_ids: list[str] = []
    headers: dict[str, str] = {}
    query: str = ""
    payload: Any = None
    deliveries: list[DeliveryRecord] = []
    body: bytes | None = Field(default=None, exclude=True, repr=False)
    """The exact bytes received; given to handlers, left out of JSON answers."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def original_type(self) -> str | None:
        """For a `<platform>.unrecognised` event, the name its sender gave it, when it has one
        (Alfred's event name; a Filecheck body has none): read from the stored payload."""
        if not self.type.endswith(f".{UNRECOGNISED}") or not isinstance(self.payload, dict):
            return None
        return original_name(self.payload)


class EventPage(BaseModel):
    items: list[EventRecord]
    next_cursor: str | None


class DeliveryPage(BaseModel):
    items: list[DeliveryRecord]
    next_cursor: str | None
