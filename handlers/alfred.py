"""The `alfred_resubmit` handler: run a failed Alfred job again once Alfred itself has given up.

Alfred retries a job by itself (JobRetry with `exceeded_retries` false); the handler steps in
only at a terminal failure (JobFailed, JobInvalid, JobExceededRetries, or a JobRetry that says
the retries are exceeded). Failure events often carry no file URLs, so the URLs, `merge` and
`metadata` come from this event when it has them, else from the newest earlier event of the
same job that had them (JobCreate, JobRetry).

The call shape is an inference: Alfred documents no retry endpoint, so a re-run is a new
`POST /api/job/create` with the same URLs (PLATFORMS.md: "inference: a re-run is a new
POST /api/job/create"). Confirm it against your Alfred instance before relying on it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field, SecretStr

from handlers import Context, Event, Permanent
from handlers.upstream import (
    Call, UpstreamOptions, budget_unit, check_response, needs_upstream, require_path, send,
)

RETRY = "alfred.job.retry"
ACTED_ON = frozenset({
    RETRY, "alfred.job.failed", "alfred.job.invalid", "alfred.job.exceeded_retries",
})


class AlfredOptions(UpstreamOptions):
    base_url: str = Field(description="the Alfred host, e.g. https://app.tagshelf.com")
    api_key: SecretStr = Field(min_length=1)
    job_id_path: str = "event.job_id"


def inner(payload: Any) -> Mapping[str, Any]:
    """The `event` object of an Alfred envelope ({} when there is none)."""
    found = payload.get("event") if isinstance(payload, Mapping) else None
    return found if isinstance(found, Mapping) else {}


def truthy(value: Any) -> bool:
    """Alfred sends booleans as strings ("true"/"false") as often as as booleans."""
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def still_retrying(event: Event) -> bool:
    """A JobRetry whose retries are not exceeded: Alfred is still at it."""
    return event.type == RETRY and not truthy(inner(event.payload).get("exceeded_retries"))


def original_metadata(value: Any) -> Any:
    """The job's metadata as it was sent: an object (also when it came as JSON text)."""
    if isinstance(value, str) and value.strip():
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, Mapping) else value
    return value if isinstance(value, Mapping) else {}


def job_create_body(source: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "urls": [str(url) for url in source["file_urls"]],
        "merge": truthy(source.get("merge")),
        "metadata": original_metadata(source.get("metadata")),
    }


def with_urls(fields: Mapping[str, Any]) -> bool:
    urls = fields.get("file_urls")
    return isinstance(urls, list) and bool(urls)


def newest_with_urls(related: Sequence[Event], current_id: str) -> Mapping[str, Any] | None:
    """The `event` fields of the newest related event (oldest first) that has file URLs."""
    for record in reversed(related):
        fields = inner(record.payload)
        if record.id != current_id and with_urls(fields):
            return fields
    return None


class AlfredResubmit:
    name = "alfred_resubmit"
    Options = AlfredOptions

    async def handle(self, event: Event, ctx: Context) -> None:
        options: AlfredOptions = ctx.options
        upstream = needs_upstream(ctx)
        if event.type.startswith("alfred.") and event.type not in ACTED_ON:
            ctx.log.info("%s is not a job failure; nothing to resubmit", event.type)
            return
        job_id = require_path(event, options, "job_id")
        if still_retrying(event):
            ctx.log.info("alfred job %s is still being retried by Alfred; not resubmitted", job_id)
            return
        source = inner(event.payload)
        if not with_urls(source):
            related = await upstream.related_events(job_id=job_id)
            source = newest_with_urls(related, event.id) or {}
        if not with_urls(source):
            raise Permanent(f"no file URLs known for job {job_id}")
        headers = {"X-TagshelfAPI-Key": options.api_key.get_secret_value(),
                   "content-type": "application/json"}
        call = Call("POST", f"{options.base_url}/api/job/create", headers, options.timeout,
                    json=job_create_body(source))
        async with budget_unit(upstream, f"alfred:job:{job_id}", options.budget) as count:
            response = await send(ctx, options.base_url, call)
        check_response(response)
        ctx.log.info("alfred job %s resubmitted as a new job (attempt %d of %d)",
                     job_id, count, options.budget)
