"""The read API under `/api`: thin endpoints that parse parameters, call the store, shape JSON.

Every endpoint needs a bearer token from `[[api.tokens]]` with the right scope; with no tokens
configured and the server on loopback the API is open (the start-up log says so).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app import dead_letters, health, replay, stream, tracking
from app.config import ApiToken
from app.errors import (
    BadRequest,
    Forbidden,
    InvalidJson,
    NotFound,
    Unauthorized,
    UnsupportedMediaType,
)
from app.media import is_json_media_type
from app.runtime import Runtime
from app.store import DeadFilter, EventFilter
from app.store.rejections import RejectionFilter
from app.when import (
    DELIVERY_STATUSES,
    EVENT_STATUSES,
    REPLAY_STATUSES,
    BadValue,
    check_choice,
    parse_when,
)
from schemas.records import EventRecord

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
MAX_Q = 200
DEFAULT_WINDOW = 3600
MAX_WINDOW = 7 * 86_400
MAX_HEALTH_WINDOW = 86_400
# Events one `POST /api/replay` call takes at most; the answer's `next_cursor` goes on.
REPLAY_DEFAULT_LIMIT = 1000
REPLAY_MAX_LIMIT = 10_000

log = logging.getLogger("hookline.api")


def _digest(text: str) -> bytes:
    # surrogatepass: a header or an environment variable with stray bytes still hashes.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def matching_token(tokens: Sequence[ApiToken], presented: str) -> ApiToken | None:
    """The configured token equal to `presented`, or None. Fixed-size SHA-256 digests are
    compared, never the tokens themselves, so timing tells neither a token's content nor its
    length; every token is compared, so it tells nothing of which one matched either."""
    offered = _digest(presented)
    found = None
    for token in tokens:
        if hmac.compare_digest(_digest(token.token.get_secret_value()), offered):
            found = token
    return found


def require_scope(request: Request, scope: str) -> ApiToken | None:
    """The caller's token; 401 without a known bearer token, 403 when its scopes lack `scope`.
    None when the API is open (no tokens configured, server on loopback)."""
    runtime: Runtime = request.app.state.runtime
    tokens = runtime.settings.api.tokens
    if not tokens and runtime.settings.server.on_loopback:
        _storable(request)
        return None
    header = request.headers.get("authorization", "")
    kind, _, presented = header.partition(" ")
    if kind.lower() != "bearer" or not presented:
        raise Unauthorized(headers={"WWW-Authenticate": "Bearer"})
    found = matching_token(tokens, presented)
    if found is None:
        raise Unauthorized(headers={"WWW-Authenticate": "Bearer"})
    if scope not in found.scopes and "admin" not in found.scopes:
        raise Forbidden()
    request.scope["state"]["log"]["token"] = found.name
    _storable(request)
    return found


_UNSTORABLE = "{name} holds a character no store can take (NUL or a lone surrogate)"


def storable_text(value: str) -> bool:
    """True when every store can take `value` as a parameter: PostgreSQL refuses NUL in text and
    UTF-8 has no lone surrogates (a JSON body can spell both)."""
    if "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _storable(request: Request) -> None:
    # Every API endpoint passes its path and query parameters to the store; one no store can
    # take is a bad request, not a store outage.
    for name, value in [*request.path_params.items(), *request.query_params.multi_items()]:
        if isinstance(value, str) and not storable_text(value):
            raise BadRequest(_UNSTORABLE.format(name=name))


async def whoami(request: Request) -> Response:
    """The caller's token name and scopes, so a page can tell what to offer."""
    token = require_scope(request, "read")
    if token is None:
        return JSONResponse({"name": None, "scopes": ["read", "admin"], "open": True})
    scopes = ["read", "admin"] if "admin" in token.scopes else ["read"]
    return JSONResponse({"name": token.name, "scopes": scopes, "open": False})


def _model_json(model: BaseModel) -> Response:
    # Serialised by pydantic's core in one step: a page of 500 events costs a fraction of
    # model_dump followed by json.dumps.
    return Response(model.model_dump_json(), media_type="application/json")


def _when(params: Mapping[str, Any], name: str, now: float) -> float | None:
    """A time filter as the CLI reads it: unix seconds, ISO 8601, or an age such as `2h`."""
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str | int | float):
        raise BadRequest(f"{name} must be unix seconds, an ISO 8601 time or an age such as 2h")
    try:
        return parse_when(value, now)
    except BadValue as exc:
        raise BadRequest(f"{name}: {exc}") from None


def _choice(name: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    try:
        return check_choice(name, value, allowed)
    except BadValue as exc:
        raise BadRequest(str(exc)) from None


def _whole(raw: str) -> int | None:
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    return int(raw) if raw.isascii() and raw.isdigit() else None


def _limit(params: Any) -> int:
    limit = _whole(params.get("limit", str(DEFAULT_LIMIT)))
    if limit is None or not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return limit


def event_filter(
    params: Mapping[str, Any], now: float, searchable: bool = True
) -> EventFilter:
    """The event filters of a query string; `q` only where a search is offered."""
    q = params.get("q") if searchable else None
    if q is not None and not 1 <= len(q) <= MAX_Q:
        raise BadRequest(f"q must be 1 to {MAX_Q} characters")
    return EventFilter(
        source=params.get("source"),
        type=params.get("type"),
        status=_choice("status", params.get("status"), EVENT_STATUSES),
        job_id=params.get("job_id"),
        file_id=params.get("file_id"),
        since=_when(params, "since", now),
        until=_when(params, "until", now),
        q=q,
    )


async def list_events(request: Request) -> Response:
    """Events newest first; filters, `q` (substring of the raw body), `limit`, `cursor`."""
    require_scope(request, "read")
    runtime: Runtime = request.app.state.runtime
    params = request.query_params
    filters = event_filter(params, runtime.clock.now())
    try:
        page = await runtime.store.list_events(filters, _limit(params), params.get("cursor"))
    except ValueError:
        raise BadRequest("invalid cursor") from None
    return _model_json(page)


# The raw bytes are whatever a sender sent: never let a browser render them. A fixed
# application/octet-stream (not the stored type, not even application/json, since the body
# need not be valid JSON or UTF-8) plus `attachment` means a link opened in a tab downloads
# instead of running; nosniff and a sandboxing CSP cover browsers that look anyway. The type
# the body came with is still told, in its own header.
RAW_HEADERS = {
    "content-type": "application/octet-stream",
    "content-disposition": "attachment",
    "x-content-type-options": "nosniff",
    "content-security-policy": "default-src 'none'; sandbox",
}


async def raw_event(request: Request) -> Response:
    """The exact bytes received for an event, as a download; `X-Hookline-Content-Type` says the
    content type they came with."""
    require_scope(request, "read")
    runtime: Runtime = request.app.state.runtime
    found = await runtime.store.raw_body(request.path_params["event_id"])
    if found is None:
        raise NotFound("no such event")
    body, content_type = found
    return Response(body, media_type=None, headers={
        **RAW_HEADERS, "x-hookline-content-type": _header_safe(content_type),
    })


def _header_safe(value: str) -> str:
    # Stored as received; a header value must be visible ASCII and spaces.
    return "".join(c for c in value if " " <= c <= "~")


async def get_stats(request: Request) -> Response:
    """Counts over `window` seconds (default an hour) and a per-minute histogram of the last
    hour."""
    require_scope(request, "read")
    runtime: Runtime = request.app.state.runtime
    return JSONResponse(await runtime.stats.get(_window(request)))


def _window(request: Request, maximum: int = MAX_WINDOW) -> int:
    window = _whole(request.query_params.get("window", str(DEFAULT_WINDOW)))
    if window is None or not 60 <= window <= maximum:
        raise BadRequest(f"window must be a whole number of seconds from 60 to {maximum}")
    return window


async def get_handlers(request: Request) -> Response:
    """Per configured handler: backlog, attempts over `window` seconds (success rate, p50/p99
    time), breaker state and the routes that reach it."""
    require_scope(request, "read")
    runtime: Runtime = request.app.state.runtime
    # Attempt times are read one attempt at a time: a day at most, not a week.
    window = _window(request, MAX_HEALTH_WINDOW)
    now = runtime.clock.now()
    rows = await runtime.store.handler_rows(now - window, now)
    settings = runtime.settings
    breakers = health.breakers_of(runtime.handlers, runtime.clock.monotonic())
    return JSONResponse({"handlers": health.shape_handlers(
        rows, settings.handlers, settings.routes, breakers, window, now)})


async def get_sources(request: Request) -> Response:
    """Per configured source: platform, auth scheme (no secrets), requests accepted, duplicate
    and rejected over `window` seconds, the last event's time and the routes it can take."""
    require_scope(request, "read")
    runtime: Runtime = request.app.state.runtime
    window = _window(request)
    now = runtime.clock.now()
    sources = runtime.settings.sources
    rows = await runtime.store.source_rows(list(sources), now - window, now)
    first_minute = int((now - window) // 60)
    extra = [c for c in runtime.tally.pending() if c.minute >= first_minute]
    return JSONResponse({"sources": health.shape_sources(
        rows, sources, extra, runtime.settings.routes, window)})


async def live_tail(request: Request) -> Response:
    """Server-sent events of new events and delivery outcomes, with the event filters."""
    require_scope(request, "read")
    runtime: Runtime = request.app.state.runtime
    filters = event_filter(request.query_params, runtime.clock.now(), searchable=False)
    start = await stream.start_of(request, runtime.store)
    server = runtime.settings.server
    tails: stream.Tails = request.app.state.tails
    tails.take(server.retry_after_seconds)
    return stream.stream_response(stream.tail(
        runtime.store, filters, start, runtime.changes,
        server.stream_poll_seconds, server.stream_heartbeat_seconds, tails,
    ), on_close=tails.give_back)


async def get_event(request: Request) -> Response:
    require_scope(request, "read")
    runtime: Runtime = request.app.state.runtime
    record = await runtime.store.get_event(request.path_params["event_id"])
    if record is None:
        raise NotFound("no such event")
    try:
        return _model_json(record)
    except ValueError:  # pydantic's serialiser stops at a depth a stored payload can pass
        return Response(_deep_record_json(record), media_type="application/json")


def _deep_record_json(record: EventRecord) -> str:
    """An event whose payload nests deeper than pydantic serialises: the rest by pydantic, the
    payload by the json module (or, failing that too, `null`)."""
    rest = record.model_dump_json(exclude={"payload"})
    try:
        payload = json.dumps(record.payload, ensure_ascii=False)
    except (RecursionError, ValueError):
        payload = "null"
    return f'{rest[:-1]},"payload":{payload}}}'


async def json_body(request: Request) -> dict[str, Any]:
    """The JSON object a state-changing endpoint was sent ({} for an empty body).

    The body must be declared `application/json` (415 otherwise), even when empty, while the
    API is open: a web page can send any other type cross-site without a CORS preflight (see
    app.web_guard). With tokens configured the caller has shown one, which no page can forge,
    so an empty body may come without a type (`curl -X POST -H "Authorization: ..."`)."""
    body = await request.body()
    declared = request.headers.get("content-type")
    tokens = request.app.state.runtime.settings.api.tokens
    if declared is None and tokens and not body.strip():
        return {}
    if not is_json_media_type(declared or ""):
        raise UnsupportedMediaType()
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except ValueError:
        raise InvalidJson() from None
    if not isinstance(parsed, dict):
        raise InvalidJson("body must be a JSON object")
    return parsed


def _str_or_none(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    if value is not None and not storable_text(value):
        raise BadRequest(_UNSTORABLE.format(name=name))
    return value


async def replay_event(request: Request) -> Response:
    """Fresh deliveries for one event, through the current routes or to one handler."""
    require_scope(request, "admin")
    runtime: Runtime = request.app.state.runtime
    body = await json_body(request)
    try:
        planned = await replay.plan_event(
            runtime.store, runtime.routes, runtime.handlers,
            request.path_params["event_id"], _str_or_none(body, "handler"),
            sources=runtime.settings.sources,
        )
        if body.get("dry_run"):
            return JSONResponse({"event_id": planned.event_id, "handlers": planned.handlers})
        ids = await replay.apply(runtime.store, planned, runtime.clock.now())
    except replay.ReplayError as exc:
        raise NotFound(str(exc)) from None
    runtime.wake_worker()
    return JSONResponse(
        {"event_id": planned.event_id, "handlers": planned.handlers, "deliveries": ids}, 202
    )


async def replay_many(request: Request) -> Response:
    """Bulk replay by filter, at most `limit` events a call from `cursor`; `dry_run` only counts
    and lists the plan. Work stops when the client goes away."""
    require_scope(request, "admin")
    runtime: Runtime = request.app.state.runtime
    body = await json_body(request)
    now = runtime.clock.now()
    selection = replay.ReplayFilter(
        source=_str_or_none(body, "source"), type=_str_or_none(body, "type"),
        status=_choice("status", _str_or_none(body, "status"), REPLAY_STATUSES),
        since=_when(body, "since", now), until=_when(body, "until", now),
        handler=_str_or_none(body, "handler"),
    )
    if not selection.narrowed():
        raise BadRequest("name at least one filter: source, type, status, since or until")
    limit = _replay_limit(body)
    dry_run = bool(body.get("dry_run"))
    events = deliveries = 0
    plan: list[dict[str, Any]] = []
    next_cursor = None
    try:
        async for page in replay.plan_pages(
            runtime.store, runtime.routes, runtime.handlers, selection, limit,
            _str_or_none(body, "cursor"), sources=runtime.settings.sources,
        ):
            for planned in page.planned:
                events += 1
                deliveries += len(planned.handlers)
                if dry_run:
                    if len(plan) < MAX_LIMIT:
                        plan.append({"event_id": planned.event_id, "handlers": planned.handlers})
                else:
                    await replay.apply(runtime.store, planned, runtime.clock.now())
            next_cursor = page.next_cursor
            if await request.is_disconnected():
                log.info("bulk replay stopped after %d events: the client went away", events)
                break
    except replay.ReplayError as exc:
        raise BadRequest(str(exc)) from None
    except ValueError:
        raise BadRequest("invalid cursor") from None
    if not dry_run and deliveries:
        runtime.wake_worker()
    answer: dict[str, Any] = {
        "dry_run": dry_run, "events": events, "deliveries": deliveries,
        "more": next_cursor is not None and events >= limit, "next_cursor": None,
    }
    if answer["more"]:
        answer["next_cursor"] = next_cursor
    if dry_run:
        answer["plan"] = plan
    return JSONResponse(answer, status_code=200 if dry_run else 202)


def _replay_limit(body: Mapping[str, Any]) -> int:
    value = body.get("limit", REPLAY_DEFAULT_LIMIT)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= REPLAY_MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {REPLAY_MAX_LIMIT}")
    return value


async def list_deliveries(request: Request) -> Response:
    require_scope(request, "read")
    runtime: Runtime = request.app.state.runtime
    params = request.query_params
    try:
        page = await runtime.store.list_deliveries(
            _choice("status", params.get("status"), DELIVERY_STATUSES), params.get("handler"),
            _limit(params), params.get("cursor"), params.get("type"),
            _when(params, "since", runtime.clock.now()),
        )
    except ValueError:
        raise BadRequest("invalid cursor") from None
    return _model_json(page)


async def get_entity(request: Request) -> Response:
    """`/api/jobs/{job_id}` and `/api/files/{file_id}`: the lifecycle of one job or file."""
    require_scope(request, "read")
    kind: Literal["job", "file"] = "job" if "job_id" in request.path_params else "file"
    entity_id = request.path_params[f"{kind}_id"]
    answer = await tracking.entity_state(request.app.state.runtime.store, kind, entity_id)
    if answer is None:
        raise NotFound(f"no events of that {kind}")
    return JSONResponse(answer)


async def list_rejections(request: Request) -> Response:
    """Refused webhook requests newest first; filters `source`, `code`, `since`, `until`."""
    require_scope(request, "read")
    runtime: Runtime = request.app.state.runtime
    params = request.query_params
    now = runtime.clock.now()
    filters = RejectionFilter(
        source=params.get("source"), code=params.get("code"),
        since=_when(params, "since", now), until=_when(params, "until", now),
    )
    try:
        page = await runtime.store.list_rejections(filters, _limit(params), params.get("cursor"))
    except ValueError:
        raise BadRequest("invalid cursor") from None
    return _model_json(page)


async def get_rejection(request: Request) -> Response:
    """One refused request with its field errors, headers (less secrets) and kept body."""
    require_scope(request, "read")
    runtime: Runtime = request.app.state.runtime
    record = await runtime.store.get_rejection(request.path_params["rejection_id"])
    if record is None:
        raise NotFound("no such rejection")
    return _model_json(record)


def dead_filter(body: Mapping[str, Any], now: float) -> DeadFilter:
    """The filter of a bulk retry; `status`, if given, can only be `dead`. Something must be
    said: an empty body (a bare `curl -X POST`) retries nothing, as with a bulk replay; every
    dead letter is `{"status": "dead"}`."""
    status = _str_or_none(body, "status")
    if status not in (None, "dead"):
        raise BadRequest("status must be dead: only dead deliveries are retried")
    selection = DeadFilter(
        handler=_str_or_none(body, "handler"), source=_str_or_none(body, "source"),
        type=_str_or_none(body, "type"), since=_when(body, "since", now),
        until=_when(body, "until", now),
    )
    if status is None and selection == DeadFilter():
        raise BadRequest("say which dead deliveries to retry: a filter (handler, source, type, "
                         'since, until), or {"status": "dead"} for all of them')
    return selection


async def retry_delivery(request: Request) -> Response:
    """The same dead delivery back to `pending`, due now; 409 unless it is dead."""
    require_scope(request, "admin")
    runtime: Runtime = request.app.state.runtime
    await json_body(request)
    delivery_id = request.path_params["delivery_id"]
    await dead_letters.retry_one(runtime.store, delivery_id, runtime.clock.now())
    runtime.wake_worker()
    return JSONResponse({"id": delivery_id, "status": "pending"}, 202)


async def retry_deliveries(request: Request) -> Response:
    """Every open dead letter a filter selects back to `pending`; `dry_run` only counts."""
    require_scope(request, "admin")
    runtime: Runtime = request.app.state.runtime
    body = await json_body(request)
    now = runtime.clock.now()
    filters = dead_filter(body, now)
    dry_run = bool(body.get("dry_run"))
    report = await dead_letters.retry_many(runtime.store, filters, now, dry_run)
    if not dry_run and report.deliveries:
        runtime.wake_worker()
    return JSONResponse(
        {"dry_run": dry_run, "deliveries": report.deliveries, "ids": report.ids},
        status_code=200 if dry_run else 202,
    )
