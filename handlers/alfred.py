"""The `alfred_resubmit` handler: upload a failed Alfred job's files again once Alfred gave up.

Alfred retries a job by itself (JobRetry with `exceeded_retries` false); the handler steps in
only at a terminal failure (JobFailed, JobInvalid, JobExceededRetries, or a JobRetry that says
the retries are exceeded). Failure events often carry no file URLs, so the URLs, `merge` and
`metadata` come from this event when it has them, else from the newest earlier event of the
same job that had them (JobCreate, JobRetry).

Alfred has no retry endpoint. Both official SDKs send a list of remote file URLs to
`POST /api/file/upload` (`urls`, up to 100, with `merge` and `metadata`), which starts a new
job; `POST /api/job/create` only takes a deferred-upload `session_id`. Events spell scalars as
text ("merge": "false"), so the body is built from real values: `merge` a boolean, `metadata`
the JSON object (or one object per URL) the upload takes. Job metadata that is plain text, not
JSON, has no place in that body and is left out (and logged).
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
MAX_URLS = 100  # the most `urls` one upload takes


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


def decoded(value: Any) -> Any:
    """Metadata as Alfred keeps it: JSON text is decoded, anything else is returned as it is."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def metadata_fields(value: Any, urls: int, merge: bool) -> dict[str, Any] | None:
    """`metadata` (and `propagate_metadata`) in a shape the upload takes; None if there is none.

    One object goes with `merge` as it is, and without `merge` is propagated to every file; a
    list goes as it is when it has one object per URL and nothing is merged."""
    found = decoded(value)
    if isinstance(found, Mapping):
        return {"metadata": dict(found)} if merge else {"metadata": dict(found),
                                                        "propagate_metadata": True}
    objects = isinstance(found, list) and all(isinstance(item, Mapping) for item in found)
    if objects and not merge and len(found) == urls:
        return {"metadata": found}
    return None


def upload_body(source: Mapping[str, Any]) -> dict[str, Any]:
    """The body of `POST /api/file/upload` that runs the job of `source` (its fields) again."""
    urls = [str(url) for url in source["file_urls"]]
    if len(urls) > MAX_URLS:
        raise Permanent(f"{len(urls)} file URLs; one upload takes at most {MAX_URLS}")
    merge = truthy(source.get("merge"))
    body: dict[str, Any] = {"urls": urls, "merge": merge}
    body.update(metadata_fields(source.get("metadata"), len(urls), merge) or {})
    return body


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

    async def handle(self, event: Event, ctx: Context[AlfredOptions]) -> None:
        options = ctx.options
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
        body = upload_body(source)
        if source.get("metadata") not in (None, "") and "metadata" not in body:
            ctx.log.info("alfred job %s: its metadata is not the JSON the upload takes; "
                         "uploaded without it", job_id)
        headers = {"X-TagshelfAPI-Key": options.api_key.get_secret_value(),
                   "content-type": "application/json"}
        call = Call("POST", f"{options.base_url}/api/file/upload", headers, options.timeout,
                    json=body)
        async with budget_unit(upstream, f"alfred:job:{job_id}", options.budget) as count:
            response = await send(ctx, options.base_url, call)
        check_response(response)
        ctx.log.info("alfred job %s uploaded again as a new job (attempt %d of %d)",
                     job_id, count, options.budget)
