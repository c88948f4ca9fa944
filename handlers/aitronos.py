"""The `aitronos_retry` handler: retry a file's processing in an Aitronos knowledge store.

Aitronos sends no webhooks, so after the retry call the handler schedules status polls whose
outcome hookline records as `aitronos.file.completed` or `aitronos.file.failed`. A 404
`FILE_NOT_IN_STORE` is terminal on Aitronos' own word: it is never retried, costs no budget and
starts no poll.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import Field, SecretStr

from handlers import Context, Event, Permanent, PollOutcome
from handlers.upstream import (
    Call, PollingOptions, budget_unit, check_response, error_code, error_message, json_body,
    needs_upstream, poll_send, require_path, send,
)

POLL_KIND = "aitronos.file"
NOT_IN_STORE = "FILE_NOT_IN_STORE"
TERMINAL = frozenset({"completed", "failed"})


class AitronosOptions(PollingOptions):
    base_url: str = "https://api.aitronos.com"
    token: SecretStr = Field(min_length=1)
    organization_id: str = Field(min_length=1)
    store_id: str = Field(min_length=1)
    file_id_path: str = "data.file_id"


def file_url(options: AitronosOptions, file_id: str, action: str) -> str:
    """`{base}/v1/organizations/{org}/stores/{store}/files/{file}/{action}`, ids escaped."""
    org, store, file = (quote(part, safe="") for part in
                        (options.organization_id, options.store_id, file_id))
    return f"{options.base_url}/v1/organizations/{org}/stores/{store}/files/{file}/{action}"


def auth_headers(options: AitronosOptions) -> dict[str, str]:
    return {"Authorization": f"Bearer {options.token.get_secret_value()}"}


def not_in_store(response: httpx.Response) -> bool:
    return response.status_code == 404 and error_code(response) == NOT_IN_STORE


class AitronosRetry:
    name = "aitronos_retry"
    Options = AitronosOptions

    async def handle(self, event: Event, ctx: Context) -> None:
        options: AitronosOptions = ctx.options
        upstream = needs_upstream(ctx)
        file_id = require_path(event, options, "file_id")
        key = f"aitronos:file:{file_id}"
        call = Call("POST", file_url(options, file_id, "retry"), auth_headers(options),
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
        await upstream.schedule_poll(
            POLL_KIND, key, {"file_id": file_id},
            options.poll_first_seconds, options.poll_deadline_seconds,
        )

    async def poll(self, data: dict[str, Any], ctx: Context) -> PollOutcome | None:
        """`completed` or `failed` once processing ends (None: pending, processing, or down)."""
        options: AitronosOptions = ctx.options
        file_id = str(data["file_id"])
        call = Call("GET", file_url(options, file_id, "status"), auth_headers(options),
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
