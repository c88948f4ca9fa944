"""The `dcycle_retry` handler: ask Dcycle to process a document again, then poll for its reading.

Dcycle sends no webhooks, so a retry is only half the job: after `POST /v1/files/send-event`
(safe to repeat) the handler schedules status polls of `GET /v1/files/readings`, whose outcome
hookline records as `dcycle.reading.success` or `dcycle.reading.error`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, SecretStr

from handlers import Context, Event, PollOutcome
from handlers.upstream import (
    Call, PollingOptions, budget_unit, check_response, json_body, needs_upstream, poll_send,
    require_path, send,
)

POLL_KIND = "dcycle.reading"
READING_KEYS = ("id", "name", "category", "reading", "linked")


class DcycleOptions(PollingOptions):
    base_url: str = "https://api.dcycle.io"
    token: SecretStr = Field(min_length=1)
    organization_id: str = Field(min_length=1)
    partner: str | None = None
    file_id_path: str = "data.file_id"


def auth_headers(options: DcycleOptions) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {options.token.get_secret_value()}",
        "x-organization-id": options.organization_id,
    }
    if options.partner:
        headers["x-partner"] = options.partner
    return headers


def reading_outcome(file_id: str, body: Any) -> PollOutcome | None:
    """`error` if any reading failed, `success` once every item has a successful reading."""
    raw = body.get("items") if isinstance(body, Mapping) else body
    items = [item for item in raw if isinstance(item, Mapping)] if isinstance(raw, list) else []
    statuses = [_status(item) for item in items]
    if not items or ("error" not in statuses and any(s != "success" for s in statuses)):
        return None
    readings = [{k: item[k] for k in READING_KEYS if k in item} for item in items]
    status = "error" if "error" in statuses else "success"
    return PollOutcome(status, {"file_id": file_id, "readings": readings})


def _status(item: Mapping[str, Any]) -> str | None:
    reading = item.get("reading")
    status = reading.get("status") if isinstance(reading, Mapping) else None
    return status if isinstance(status, str) else None


class DcycleRetry:
    name = "dcycle_retry"
    Options = DcycleOptions

    async def handle(self, event: Event, ctx: Context[DcycleOptions]) -> None:
        options = ctx.options
        upstream = needs_upstream(ctx)
        file_id = require_path(event, options, "file_id")
        key = f"dcycle:file:{file_id}"
        call = Call(
            "POST", f"{options.base_url}/v1/files/send-event",
            {**auth_headers(options), "content-type": "application/json"}, options.timeout,
            json={"event_type": "PROCESS_DOCUMENT", "detail": {"file_id": file_id}},
        )
        async with budget_unit(upstream, key, options.budget) as count:
            response = await send(ctx, options.base_url, call)
        check_response(response)
        ctx.log.info("dcycle file %s sent for processing (retry %d of %d)",
                     file_id, count, options.budget)
        await upstream.schedule_poll(
            POLL_KIND, key, {"file_id": file_id},
            options.poll_first_seconds, options.poll_deadline_seconds,
        )

    async def poll(self, data: dict[str, Any], ctx: Context[DcycleOptions]) -> PollOutcome | None:
        """The reading of the file, once Dcycle has one (None: not yet, or not reachable)."""
        options = ctx.options
        file_id = str(data["file_id"])
        call = Call("GET", f"{options.base_url}/v1/files/readings", auth_headers(options),
                    options.timeout, params={"file_id": file_id})
        response = await poll_send(ctx, options.base_url, call)
        if response is None:
            return None
        check_response(response)
        return reading_outcome(file_id, json_body(response))
