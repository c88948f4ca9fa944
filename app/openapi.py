"""`GET /openapi.json`: the read API described as OpenAPI 3.1, for clients and API fuzzers.

Paths are listed here beside the parameters each endpoint reads; the bodies' schemas come from
the same pydantic models the endpoints serialise, so the description cannot drift from them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.store.rejections import RejectionPage, RejectionRecord
from schemas.records import DeliveryPage, EventPage, EventRecord

_STRING = {"type": "string"}
_TIME = {"type": "number", "description": "unix seconds"}


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _STRING}


_EVENT_FILTERS = [
    _query("source", _STRING),
    _query("type", _STRING, "glob over the canonical type, e.g. alfred.job.*"),
    _query("status", {"enum": ["unrouted", "pending", "delivered", "failed"]}),
    _query("job_id", _STRING),
    _query("file_id", _STRING),
    _query("since", _TIME),
    _query("until", _TIME),
]
_PAGE = [
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}),
    _query("cursor", _STRING, "next_cursor of the previous page"),
]
_ERROR = {"$ref": "#/components/schemas/Error"}
_REPLAY_FIELDS: dict[str, Any] = {"handler": _STRING, "dry_run": {"type": "boolean"}}
_RETRY_ANSWER = {"type": "object", "properties": {
    "dry_run": {"type": "boolean"}, "deliveries": {"type": "integer"},
    "ids": {"type": "array", "items": _STRING, "description": "the first 500"}}}
_REPLAY_BODY = {"type": "object", "properties": _REPLAY_FIELDS, "additionalProperties": True}


def _answer(schema: dict[str, Any] | None, *errors: int, media: str = "application/json",
            status: str = "200", dry_run: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {
        status: {"description": "ok", "content": {media: {"schema": schema or {}}}},
        "401": {"description": "no valid bearer token", "content": {
            "application/json": {"schema": _ERROR}}},
        # Any parameter holding what no store can take (NUL) is refused.
        "400": {"description": "bad parameter", "content": {
            "application/json": {"schema": _ERROR}}},
    }
    if dry_run:
        responses["200"] = {"description": "dry run: the plan, nothing replayed",
                            "content": {media: {"schema": schema or {}}}}
    for code in errors:
        responses[str(code)] = {"description": "error", "content": {
            "application/json": {"schema": _ERROR}}}
    return responses


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation(summary: str, parameters: list[dict[str, Any]], responses: dict[str, Any],
               body: dict[str, Any] | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "parameters": parameters,
                                 "responses": responses, "security": [{"bearer": []}]}
    if body is not None:
        # Required, even if only `{}`: a state-changing call must declare application/json
        # (415 otherwise), which a web page cannot send cross-site without a preflight.
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": body}}}
        responses.setdefault("415", {"description": "not application/json", "content": {
            "application/json": {"schema": _ERROR}}})
    return operation


def _paths() -> dict[str, Any]:
    return {
        "/api/whoami": {"get": _operation("The caller's token name and scopes", [], _answer({
            "type": "object", "properties": {"name": {"type": ["string", "null"]},
                                             "scopes": {"type": "array", "items": _STRING},
                                             "open": {"type": "boolean"}}}))},
        "/api/events": {"get": _operation(
            "Events, newest first", [*_EVENT_FILTERS, _query(
                "q", {"type": "string", "minLength": 1, "maxLength": 200},
                "substring of the raw body (a bounded scan per page)"), *_PAGE],
            _answer(_ref(EventPage), 400))},
        "/api/events/{event_id}": {"get": _operation(
            "One event with its payload, headers, deliveries and attempts",
            [_path("event_id")], _answer(_ref(EventRecord), 404))},
        "/api/events/{event_id}/raw": {"get": _operation(
            "The exact bytes received, as a download (application/octet-stream); the "
            "X-Hookline-Content-Type header gives the content type they came with",
            [_path("event_id")], _answer({}, 404, media="application/octet-stream"))},
        "/api/events/{event_id}/replay": {"post": _operation(
            "Fresh deliveries for one event (admin)", [_path("event_id")],
            _answer({"type": "object"}, 400, 403, 404, status="202", dry_run=True),
            _REPLAY_BODY)},
        "/api/replay": {"post": _operation(
            "Fresh deliveries for every event a filter selects (admin)", [],
            _answer({"type": "object"}, 400, 403, status="202", dry_run=True), {
                **_REPLAY_BODY, "properties": {
                    **_REPLAY_FIELDS, "source": _STRING, "type": _STRING,
                    "status": _STRING, "since": _TIME, "until": _TIME,
                    "limit": {"type": "integer", "minimum": 1, "maximum": 10000,
                              "default": 1000},
                    "cursor": {**_STRING, "description": "next_cursor of the previous call"}}})},
        "/api/deliveries": {"get": _operation(
            "Deliveries, newest first",
            [_query("status", {"enum": ["pending", "running", "succeeded", "dead"]}),
             _query("handler", _STRING), _query("type", _STRING), _query("since", _TIME),
             *_PAGE],
            _answer(_ref(DeliveryPage), 400))},
        "/api/deliveries/retry": {"post": _operation(
            "The open dead letters a filter selects back to pending, each once (admin)", [],
            _answer(_RETRY_ANSWER, 400, 403, status="202", dry_run=True), {
                "type": "object", "additionalProperties": True, "properties": {
                    "status": {"enum": ["dead"]}, "handler": _STRING, "source": _STRING,
                    "type": _STRING, "since": _TIME, "until": _TIME,
                    "dry_run": {"type": "boolean"}}})},
        "/api/deliveries/{delivery_id}/retry": {"post": _operation(
            "The same dead delivery back to pending, its attempts kept (admin)",
            [_path("delivery_id")], _answer({"type": "object", "properties": {
                "id": _STRING, "status": {"const": "pending"}}}, 400, 403, 404, 409,
                status="202"),
            {"type": "object"})},
        "/api/jobs/{job_id}": {"get": _operation(
            "The lifecycle of one job", [_path("job_id")], _answer({"type": "object"}, 404))},
        "/api/files/{file_id}": {"get": _operation(
            "The lifecycle of one file", [_path("file_id")], _answer({"type": "object"}, 404))},
        "/api/stats": {"get": _operation(
            "Counts over a window and a per-minute histogram of the last hour",
            [_query("window", {"type": "integer", "minimum": 60, "maximum": 604800,
                               "default": 3600})],
            _answer({"type": "object"}, 400))},
        "/api/rejections": {"get": _operation(
            "Refused webhook requests, newest first (without details, headers or bodies)",
            [_query("source", _STRING, "a source's name, or the name an unknown one was sent to"),
             _query("code", _STRING, "the error code, e.g. schema_invalid"),
             _query("since", _TIME), _query("until", _TIME), *_PAGE],
            _answer(_ref(RejectionPage), 400))},
        "/api/rejections/{rejection_id}": {"get": _operation(
            "One refused request with its field errors, headers (less secrets) and kept body",
            [_path("rejection_id")], _answer(_ref(RejectionRecord), 404))},
        "/api/handlers": {"get": _operation(
            "Per handler: deliveries pending, running and dead, the oldest pending, attempts "
            "over the window (success rate, p50/p99 seconds), breaker state, routes",
            [_query("window", {"type": "integer", "minimum": 60, "maximum": 86400,
                               "default": 3600})],
            _answer({"type": "object", "properties": {"handlers": {"type": "array"}}}, 400))},
        "/api/sources": {"get": _operation(
            "Per source: platform, auth scheme (no secrets), requests accepted, duplicate and "
            "rejected over the window, the last event's time, routes",
            [_query("window", {"type": "integer", "minimum": 60, "maximum": 604800,
                               "default": 3600})],
            _answer({"type": "object", "properties": {"sources": {"type": "array"}}}, 400))},
        "/api/stream": {"get": _operation(
            "Live tail: server-sent events `event` and `delivery`; resume with Last-Event-ID",
            [*_EVENT_FILTERS, {"name": "last-event-id", "in": "header", "required": False,
                               "schema": _STRING}],
            _answer({"type": "string"}, 400, media="text/event-stream"))},
    }


def _components() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message", "details"],
            "properties": {"code": _STRING, "message": _STRING,
                           "details": {"type": "array"}}}}},
    }
    for model in (EventPage, EventRecord, DeliveryPage, RejectionPage, RejectionRecord):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}",
                                         mode="serialization")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return {"schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "hookline read API", "version": "1"},
        "paths": _paths(),
        "components": _components(),
    }


async def openapi_json(request: Request) -> Response:
    return JSONResponse(document())
