"""What every platform's parser produces: one normalised event, whatever the sender.

The ingest path never looks inside a platform's payload itself. It hands the parsed JSON (and the
request headers, for platforms whose event id travels in a header) to `parse_event`, which picks
the platform's parser and gets back a `ParsedEvent`: the canonical type, the dedupe key and the
correlation keys to index, or a `Handshake` to answer without storing anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

UnknownPolicy = Literal["reject", "accept"]
# An authenticated, well-formed event of a type its platform's schema does not know is kept
# under this suffix (`alfred.unrecognised`), its original type left in the stored payload.
UNRECOGNISED = "unrecognised"


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """A validated event, ready to be stored."""

    type: str
    upstream_id: str | None
    occurred_at: float | None = None
    job_id: str | None = None
    file_id: str | None = None
    company_id: str | None = None
    task_ids: tuple[str, ...] = ()
    model: Any = None


@dataclass(frozen=True, slots=True)
class Handshake:
    """A registration handshake to be answered with its challenge and not stored."""

    challenge: str


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    loc: tuple[str | int, ...]
    msg: str


class EventInvalid(Exception):
    """The payload fails its platform's schema; `details` says where and why."""

    def __init__(self, details: list[ErrorDetail]) -> None:
        self.details = details
        super().__init__("; ".join(f"{'.'.join(map(str, d.loc))}: {d.msg}" for d in details))


@dataclass(frozen=True, slots=True)
class PayloadPaths:
    """Where a source's payload keeps what its platform has no fixed place for: dotted paths
    (`event.kind`, `items.0.id`) to the type, the dedupe key and the event time."""

    type: str | None = None
    id: str | None = None
    occurred_at: str | None = None


NO_PATHS = PayloadPaths()


@dataclass(frozen=True, slots=True)
class Incoming:
    """What a parser may look at: the JSON object, the request headers (lower-cased) and the
    source's payload paths."""

    payload: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)
    paths: PayloadPaths = NO_PATHS


Parser = Callable[[Incoming, UnknownPolicy], "ParsedEvent | Handshake"]


def pydantic_details(exc: Any) -> list[ErrorDetail]:
    """Turn a pydantic ValidationError into ErrorDetails."""
    return [ErrorDetail(tuple(e["loc"]), e["msg"]) for e in exc.errors(include_url=False)]
