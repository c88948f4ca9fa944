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
import re
import time
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from app import auth
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

    wait = runtime.rate_limiter.check(name, runtime.clock.monotonic())
    if wait > 0:
        raise RateLimited(headers={"Retry-After": str(max(1, math.ceil(wait)))})
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    _check_content_type(headers.get("content-type", ""))
    if runtime.intake.full:  # shed load before reading, verifying and parsing the body
        raise runtime.intake.unavailable()
    body = await _read_body(receive, headers, source.max_body_bytes, runtime.settings.server)

    raw_query = scope["query_string"].decode("latin-1")
    query = dict(parse_qsl(raw_query)) if raw_query else {}
    now = runtime.clock.now()
    if not auth.verify(source.auth, headers, query, body, now):
        raise Unauthorized()

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
        headers=auth.strip_secret_headers(headers, source.auth, runtime.secret_headers),
        query=auth.redact_query(raw_query),
        job_id=parsed.job_id,
        file_id=parsed.file_id,
        company_id=parsed.company_id,
        task_ids=parsed.task_ids,
        handlers=handlers_for(runtime.routes, name, parsed.type, payload, parsed.model),
    )
    saved = await runtime.intake.submit(event)
    note["event_id"] = saved.id
    runtime.metrics.accepted(name, parsed.type, saved.duplicate)
    if saved.duplicate:
        runtime.tally.count(now, name, "duplicate")
        return 200, {"id": saved.id, "duplicate": True}
    return 202, {"id": saved.id, "type": parsed.type, "duplicate": False}


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
    media = value.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise UnsupportedMediaType()


async def _read_body(
    receive: Receive, headers: dict[str, str], limit: int, server: Any
) -> bytes:
    """The whole body, refused past `limit` bytes or when it is not in within the timeout."""
    # The declared length refuses early; the running count below is what enforces the cap.
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge()
    try:
        async with asyncio.timeout(server.body_timeout_seconds):
            message = await receive()
            body = _chunk(message, 0, limit)
            if not message.get("more_body", False):
                return body  # the usual case: the whole body in one message
            chunks = [body]
            size = len(body)
            while message.get("more_body", False):
                message = await receive()
                chunk = _chunk(message, size, limit)
                size += len(chunk)
                chunks.append(chunk)
            return b"".join(chunks)
    except TimeoutError:
        raise RequestTimeout() from None


def _chunk(message: Any, size: int, limit: int) -> bytes:
    if message["type"] == "http.disconnect":
        raise RequestTimeout("client went away before sending the whole body")
    chunk: bytes = message.get("body", b"")
    if size + len(chunk) > limit:
        raise PayloadTooLarge()
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


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidJson("body is not UTF-8") from None
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
