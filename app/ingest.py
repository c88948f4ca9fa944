"""The `POST /webhooks/{source}` endpoint: limit, authenticate, parse, route, store, answer.

Every step that can refuse a request runs before anything is written, each refusing with its
own documented status; only then is the event handed to the intake, and the answer is sent only
after the transaction holding it committed. The platform specifics live in `schemas/`, the
signature checks in `app.auth` and the routing in `app.routing`: this module only sequences them.
"""

from __future__ import annotations

import asyncio
import json
import math
import operator
import re
import time
from itertools import accumulate, count
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from app import auth
from app.config import SourceSettings
from app.errors import (
    HooklineError,
    InvalidJson,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    SchemaInvalid,
    Unauthorized,
    UnknownSource,
    UnsupportedMediaType,
)
from app.ids import new_id
from app.media import is_json_media_type
from app.intake import Reservation
from app.rejections import BODY_KEY
from app.routing import handlers_for
from app.runtime import Runtime
from app.tally import UNKNOWN_SOURCE
from schemas import EventInvalid, Handshake, Incoming, parse_event
from schemas.records import NewEvent


class WebhookEndpoint:
    """`POST /webhooks/{source}` as a plain ASGI app: the hot path skips the request and
    response wrappers it does not need. Errors are raised as HooklineErrors and rendered by the
    app's exception handlers like everywhere else."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = scope["app"].state.runtime
        started = time.perf_counter()
        try:
            status, answer = await receive_webhook(scope, receive)
        except Exception as exc:
            _count_rejection(runtime, scope["path_params"]["source"], exc)
            runtime.rejections.record(scope, exc, runtime.clock.now())
            raise
        finally:
            runtime.metrics.ingest_seconds.observe(time.perf_counter() - started)
        await _send_json(send, status, answer)


def _count_rejection(runtime: Runtime, name: str, exc: Exception) -> None:
    reason = exc.code if isinstance(exc, HooklineError) else "internal_error"
    source = name if name in runtime.settings.sources else UNKNOWN_SOURCE
    runtime.metrics.rejected(source, reason)
    runtime.tally.count(runtime.clock.now(), source, "rejected", reason)


async def receive_webhook(scope: Scope, receive: Receive) -> tuple[int, dict[str, Any]]:
    runtime: Runtime = scope["app"].state.runtime
    name = scope["path_params"]["source"]
    source = runtime.settings.sources.get(name)
    if source is None:
        raise UnknownSource(f"no source named {name!r}" if name.isprintable() else None)
    note = scope["state"]["log"]
    note["source"] = name

    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    _check_content_type(headers.get("content-type", ""))
    if runtime.intake.full:  # shed load before reading, verifying and parsing the body
        raise runtime.intake.unavailable()
    kept, kept_size = cap_headers(
        auth.strip_headers(headers, runtime.dropped_headers[name]),
        runtime.settings.server.max_stored_header_bytes)
    # The headers to store and the body's bytes are held in the intake's byte budget, the body
    # as it is read, until the answer: past the budget, a request is refused before its body is
    # parsed.
    reservation = runtime.intake.reservation()
    try:
        reservation.add(kept_size)
        body = await _read_body(
            receive, headers, source.max_body_bytes, runtime.settings.server, reservation)
        return await _accept(scope, runtime, name, source, headers, kept, body)
    finally:
        reservation.release()


async def _accept(
    scope: Scope, runtime: Runtime, name: str, source: SourceSettings, headers: dict[str, str],
    kept: dict[str, str], body: bytes,
) -> tuple[int, dict[str, Any]]:
    note = scope["state"]["log"]
    raw_query = scope["query_string"].decode("latin-1")
    query = dict(parse_qsl(raw_query)) if raw_query else {}
    now = runtime.clock.now()
    # The source's rate limit is charged only once the request is known to be the source's:
    # a flood of unsigned requests would otherwise lock the real sender out.
    if not auth.verify(source.auth, headers, query, body, now):
        wait = runtime.rate_limiter.check_failure(name, runtime.clock.monotonic())
        if wait > 0:
            raise RateLimited(
                "too many requests failed authentication; retry later",
                headers={"Retry-After": _seconds(wait), "Connection": "close"})
        raise Unauthorized()
    wait = runtime.rate_limiter.check(name, runtime.clock.monotonic())
    if wait > 0:
        raise RateLimited(headers={"Retry-After": _seconds(wait)})
    scope["state"][BODY_KEY] = body  # a refusal from here on is logged with the body

    payload = _parse_json(body)
    try:
        incoming = Incoming(payload, headers, source.paths)
        parsed = parse_event(source.platform, incoming, source.unknown_events)
    except EventInvalid as exc:
        details = [{"loc": list(d.loc), "msg": d.msg} for d in exc.details]
        raise SchemaInvalid(details=details) from None
    if isinstance(parsed, Handshake):
        return 200, {"challenge": parsed.challenge}
    note["type"] = parsed.type

    event = NewEvent(
        id=new_id("evt", now),
        source=name,
        type=parsed.type,
        dedupe_key=parsed.upstream_id,
        received_at=now,
        occurred_at=parsed.occurred_at,
        body=body,
        payload=payload,
        headers=kept,
        query=auth.redact_query(raw_query),
        job_id=parsed.job_id,
        file_id=parsed.file_id,
        company_id=parsed.company_id,
        task_ids=parsed.task_ids,
        handlers=handlers_for(runtime.routes, name, parsed.type, payload, parsed.model),
    )
    saved = await runtime.intake.submit(event, reserved=True)
    note["event_id"] = saved.id
    runtime.metrics.accepted(name, parsed.type, saved.duplicate)
    if saved.duplicate:
        runtime.tally.count(now, name, "duplicate")
        return 200, {"id": saved.id, "duplicate": True}
    return 202, {"id": saved.id, "type": parsed.type, "duplicate": False}


DROPPED_HEADERS = "hookline-dropped-headers"
_MAX_NOTE = 200


def cap_headers(headers: dict[str, str], limit: int) -> tuple[dict[str, str], int]:
    """The headers to store within `limit` bytes (names and values), and their size. Past the
    limit the largest are dropped, and their names noted under DROPPED_HEADERS."""
    sizes = {name: len(name) + len(value) for name, value in headers.items()}
    total = sum(sizes.values())
    if total <= limit:
        return headers, total
    kept = dict(headers)
    dropped: list[str] = []
    for name in sorted(sizes, key=sizes.__getitem__, reverse=True):
        del kept[name]
        dropped.append(name)
        total -= sizes[name]
        if total + len(DROPPED_HEADERS) + _MAX_NOTE <= limit:
            break
    note = ",".join(dropped)
    if len(note) > _MAX_NOTE:
        note = note[:_MAX_NOTE - 3] + "..."
    kept[DROPPED_HEADERS] = note
    return kept, total + len(DROPPED_HEADERS) + len(note)


def _seconds(wait: float) -> str:
    return str(max(1, math.ceil(wait)))


# Built once: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


async def _send_json(send: Send, status: int, answer: dict[str, Any]) -> None:
    body = _ENCODER.encode(answer).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


def _check_content_type(value: str) -> None:
    if not is_json_media_type(value):
        raise UnsupportedMediaType()


async def _read_body(
    receive: Receive, headers: dict[str, str], limit: int, server: Any, held: Reservation
) -> bytes:
    """The whole body, refused past `limit` bytes or when it is not in within the timeout, each
    chunk held in the intake's byte budget before it is kept (503 past the budget)."""
    # The declared length refuses early; the running count below is what enforces the cap.
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise PayloadTooLarge()
        held.check(int(declared))  # a body that could not be held is refused unread
    try:
        async with asyncio.timeout(server.body_timeout_seconds):
            message = await receive()
            body = _chunk(message, 0, limit, held)
            if not message.get("more_body", False):
                return body  # the usual case: the whole body in one message
            chunks = [body]
            size = len(body)
            while message.get("more_body", False):
                message = await receive()
                chunk = _chunk(message, size, limit, held)
                size += len(chunk)
                chunks.append(chunk)
            return b"".join(chunks)
    except TimeoutError:
        raise RequestTimeout() from None


def _chunk(message: Any, size: int, limit: int, held: Reservation) -> bytes:
    if message["type"] == "http.disconnect":
        raise RequestTimeout("client went away before sending the whole body")
    chunk: bytes = message.get("body", b"")
    if size + len(chunk) > limit:
        raise PayloadTooLarge()
    held.add(len(chunk))
    return chunk


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e400 parses as inf, which has no JSON spelling: it could be neither stored nor forwarded.
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


class _DuplicateKey(ValueError):
    pass


def _distinct_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on a repeated key (Python keeps the last, others the first or refuse):
    # a signed body that two readers see differently is refused rather than guessed at.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey
    return obj


# Built once: json.loads with options builds a new decoder on every call, which cost more than
# the parse itself for a typical webhook body.
_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_distinct_keys
)


# Only a \u escape can put a lone surrogate or a NUL into a decoded string (raw UTF-8 cannot
# carry a surrogate, and JSON forbids raw control characters in strings).
_RISKY_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def _unstorable(payload: Any) -> bool:
    """Whether a string in `payload` holds a lone surrogate (not Unicode, so not UTF-8) or a NUL
    (which PostgreSQL's jsonb cannot hold): neither store could write such an event."""
    stack = [payload]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value or not value.isascii() and _has_surrogate(value):
                return True
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# Deeper payloads are refused before parsing: the parser, and every later reader of the stored
# payload (the read API, handlers, the dashboard), recurse once per level.
MAX_JSON_DEPTH = 64
# The closing quote is optional, so a match never fails: an unterminated string (a body with a
# run of escaped quotes and no end) is one linear match, not a scan from every quote in it.
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"?', re.DOTALL)
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
# An opening bracket steps 2, a closing one 0: after i brackets the running sum less i is the
# depth, computed by C-level iterators rather than a Python loop per bracket.
_BRACKET_STEP = bytes.maketrans(b"[]{}", b"\x02\x00\x02\x00")


def too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text in `body` opens more than `limit` arrays or objects inside each
    other (brackets inside strings do not count). Cheap for the usual body: one that holds at
    most `limit` opening brackets in all cannot be deeper, and is not scanned."""
    if body.count(b"{") + body.count(b"[") <= limit:
        return False
    steps = _STRING.sub(b"", body).translate(None, _NOT_BRACKET).translate(_BRACKET_STEP)
    return max(map(operator.sub, accumulate(steps), count(1)), default=0) > limit


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidJson("body is not UTF-8") from None
    if too_deep(body):
        raise InvalidJson(f"body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels")
    try:
        payload = _DECODER.decode(text)
    except _DuplicateKey:
        raise InvalidJson("body has a duplicate key in an object") from None
    except (ValueError, RecursionError):
        raise InvalidJson("body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidJson("body must be a JSON object")
    # A string the store cannot write would otherwise be refused as 503, which tells the sender
    # to retry an event that can never be stored.
    if _RISKY_ESCAPE.search(text) and _unstorable(payload):
        raise InvalidJson("body has a string with a NUL or an unpaired surrogate")
    return payload
