"""Every platform's event schemas behind one entry point, `parse_event`.

Ingest knows only a source's platform name; this package maps it to that platform's parser and
gathers every event model in one place so the CLI can export them as JSON Schema. It imports
nothing from `app/` or `handlers/`, so plugins can use the models without the server.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas import alfred, filecheck, standard
from schemas.envelope import (
    ErrorDetail,
    EventInvalid,
    Handshake,
    Incoming,
    ParsedEvent,
    Parser,
    PayloadPaths,
    UnknownPolicy,
    pydantic_details,
)

__all__ = [
    "PARSERS",
    "ErrorDetail",
    "EventInvalid",
    "Handshake",
    "Incoming",
    "ParsedEvent",
    "Parser",
    "PayloadPaths",
    "UnknownPolicy",
    "event_models",
    "export_json_schemas",
    "parse_event",
    "pydantic_details",
]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

PARSERS: dict[str, Parser] = {
    "alfred": alfred.parse,
    "filecheck": filecheck.parse,
    "standard": standard.parse,
}


def parse_event(
    platform: str, incoming: Incoming, unknown: UnknownPolicy = "accept"
) -> ParsedEvent | Handshake:
    """Validate one delivery with its platform's parser."""
    try:
        parser = PARSERS[platform]
    except KeyError:
        raise ValueError(f"unknown platform {platform!r}") from None
    return parser(incoming, unknown)


def event_models() -> dict[str, type[BaseModel]]:
    """Every event type's model across platforms, keyed by canonical type."""
    return {**alfred.EVENT_MODELS, **filecheck.EVENT_MODELS, **standard.EVENT_MODELS}


def export_json_schemas(directory: Path) -> list[Path]:
    """Write one `<canonical type>.json` JSON Schema per event type into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for event_type, model in sorted(event_models().items()):
        path = directory / f"{event_type}.json"
        schema = {"$schema": JSON_SCHEMA_DIALECT, **model.model_json_schema()}
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written
