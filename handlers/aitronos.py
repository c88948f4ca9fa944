"""The `aitronos_retry` handler: retry a file's processing in an Aitronos knowledge store.

Aitronos sends no webhooks, so after the retry call the handler schedules status polls whose
outcome hookline records as `aitronos.file.completed` or `aitronos.file.failed`. A 404
`FILE_NOT_IN_STORE` is terminal on Aitronos' own word: it is never retried, costs no budget and
starts no poll.

Each id in the URL (`organization_id`, `store_id`, `file_id`) is either a literal option or read
from the event through `<name>_path` (exactly one of the two, checked at start; `file_id` is read
at `data.file_id` when neither is given). An id that is not a single path segment (empty, `.`,
`..`, a `/` or `\\`, also percent-escaped) is refused as Permanent before any call, and every id
is percent-encoded into the path, so no payload can steer the call to another resource.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import Field, SecretStr, ValidationInfo, field_validator

from handlers import Context, Event, Permanent, PollOutcome
from handlers.upstream import (
    Call, PollingOptions, budget_unit, check_response, error_code, error_message, json_body,
    needs_upstream, poll_send, segment_problem, send, value_at,
)

POLL_KIND = "aitronos.file"
NOT_IN_STORE = "FILE_NOT_IN_STORE"
TERMINAL = frozenset({"completed", "failed"})


IDS = ("organization_id", "store_id", "file_id")
DEFAULT_PATHS = {"file_id": "data.file_id"}


class AitronosOptions(PollingOptions):
    base_url: str = "https://api.aitronos.com"
    token: SecretStr = Field(min_length=1)
    # Each id: a literal, or `<name>_path` into the event. A path is declared before its
    # literal, so the literal's check sees whether the path was given.
    organization_id_path: str | None = Field(default=None, min_length=1)
    organization_id: str | None = Field(default=None, validate_default=True)
    store_id_path: str | None = Field(default=None, min_length=1)
    store_id: str | None = Field(default=None, validate_default=True)
    file_id_path: str | None = Field(default=None, min_length=1)
    file_id: str | None = Field(default=None, validate_default=True)

    @field_validator(*IDS)
    @classmethod
    def _literal_or_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        name = info.field_name or ""
        path = info.data.get(f"{name}_path")
        if value is not None and path is not None:
            raise ValueError(f"give {name} or {name}_path, not both")
        if value is None and path is None and name not in DEFAULT_PATHS:
            raise ValueError(f"give {name} (the id) or {name}_path (where the event has it)")
        problem = segment_problem(value) if value is not None else None
        if problem:
            raise ValueError(f"{value!r} {problem}")
        return value

    def id_path(self, name: str) -> str:
        """Where in the event the id `name` is (for an id not given as a literal)."""
        path: str | None = getattr(self, f"{name}_path")
        return path if path is not None else DEFAULT_PATHS[name]


def safe_id(name: str, value: str) -> str:
    """`value`, or Permanent when it could take the URL outside its own path segment."""
    problem = segment_problem(value)
    if problem:
        raise Permanent(f"{name} {value!r} {problem}; no request made")
    return value


def event_ids(event: Event, options: AitronosOptions) -> dict[str, str]:
    """The three ids of the URL: the literal options, and the rest read from the event."""
    ids: dict[str, str] = {}
    for name in IDS:
        literal: str | None = getattr(options, name)
        value = literal if literal is not None else value_at(event, options.id_path(name), name)
        ids[name] = safe_id(name, value)
    return ids


def poll_ids(data: Mapping[str, Any], options: AitronosOptions) -> dict[str, str]:
    """The ids of a scheduled poll: those it recorded, the literal options for the rest."""
    ids: dict[str, str] = {}
    for name in IDS:
        value = data.get(name, getattr(options, name))
        if value is None:
            raise Permanent(f"the poll recorded no {name} and the options give none")
        ids[name] = safe_id(name, str(value))
    return ids


def file_url(options: AitronosOptions, ids: Mapping[str, str], action: str) -> str:
    """`{base}/v1/organizations/{org}/stores/{store}/files/{file}/{action}`, ids escaped."""
    org, store, file = (quote(ids[name], safe="") for name in IDS)
    return f"{options.base_url}/v1/organizations/{org}/stores/{store}/files/{file}/{action}"


def auth_headers(options: AitronosOptions) -> dict[str, str]:
    return {"Authorization": f"Bearer {options.token.get_secret_value()}"}


def not_in_store(response: httpx.Response) -> bool:
    return response.status_code == 404 and error_code(response) == NOT_IN_STORE


class AitronosRetry:
    name = "aitronos_retry"
    Options = AitronosOptions

    async def handle(self, event: Event, ctx: Context[AitronosOptions]) -> None:
        options = ctx.options
        upstream = needs_upstream(ctx)
        ids = event_ids(event, options)
        file_id = ids["file_id"]
        key = f"aitronos:file:{file_id}"
        call = Call("POST", file_url(options, ids, "retry"), auth_headers(options),
                    options.timeout)
        async with budget_unit(upstream, key, options.budget) as count:
            response = await send(ctx, options.base_url, call)
        if not_in_store(response):
            # Terminal on Aitronos' word, not a retry spent: give the unit back.
            await upstream.refund_budget(key)
            raise Permanent(f"file not in store: {file_id}", http_status=404)
        check_response(response)
        ctx.log.info("aitronos file %s queued for processing (retry %d of %d)",
                     file_id, count, options.budget)
        # The poll keeps the ids read from the event; literal ones come from the options.
        data = {name: ids[name] for name in IDS
                if name == "file_id" or getattr(options, name) is None}
        await upstream.schedule_poll(
            POLL_KIND, key, data, options.poll_first_seconds, options.poll_deadline_seconds,
        )

    async def poll(self, data: dict[str, Any], ctx: Context[AitronosOptions]) -> PollOutcome | None:
        """`completed` or `failed` once processing ends (None: pending, processing, or down)."""
        options = ctx.options
        ids = poll_ids(data, options)
        file_id = ids["file_id"]
        call = Call("GET", file_url(options, ids, "status"), auth_headers(options),
                    options.timeout)
        response = await poll_send(ctx, options.base_url, call)
        if response is None:
            return None
        if not_in_store(response):
            return PollOutcome("failed", {"file_id": file_id, "status": "failed", "error": {
                "code": NOT_IN_STORE, "message": error_message(response)}})
        check_response(response)
        body = json_body(response)
        status = body.get("status") if isinstance(body, Mapping) else None
        if status not in TERMINAL:
            return None
        return PollOutcome(str(status), {"file_id": file_id, **body})
