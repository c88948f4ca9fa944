"""The `filecheck_resubmit` handler: resubmit the failed part of a Filecheck job as a new job.

Filecheck has no retry endpoint and no idempotency key: a resubmission is a new `POST /jobs`,
and sending it twice makes two jobs. So the handler acts only on processing failures
(`status: error`, never a file the policy rejected), marks each failure once before sending,
and tags the new job's `metaData` with the root job id and the attempt number, so
resubmissions of resubmissions share one budget and can be told apart.

Because the mark is taken before the call and cannot be given back, a resubmission that fails
(the platform unreachable, 5xx, 429) is dead-lettered with the reason rather than retried: a
retry would find the mark and do nothing, and could not know whether a job was created.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr

from handlers import Context, Event, Permanent, Retry, Upstream
from handlers.upstream import (
    Call, NotReached, UpstreamOptions, breaker_for, budget_unit, check_response,
    needs_upstream, send,
)

COPIED_FIELDS = ("ruleId", "policy", "customerId", "orderId", "channel")
ORIGINAL_KEY = "hookline_original_job_id"


class FilecheckOptions(UpstreamOptions):
    base_url: str = "https://api.filecheck.io"
    token: SecretStr = Field(min_length=1, description="an sk_... API key")
    channel: Literal["api", "store", "admin"] | None = None


def is_rejected(job: Mapping[str, Any]) -> bool:
    """A failed file under `onFail: reject`: terminal, never resubmitted."""
    policy = job.get("policy")
    on_fail = policy.get("onFail") if isinstance(policy, Mapping) else None
    return job.get("outcome") == "fail" and on_fail == "reject"


def tasks_of(job: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    tasks = job.get("tasks")
    return [t for t in tasks if isinstance(t, Mapping)] if isinstance(tasks, list) else []


def errored(job: Mapping[str, Any]) -> bool:
    """Whether the job or any of its tasks ended in a processing error."""
    return job.get("status") == "error" or any(t.get("status") == "error" for t in tasks_of(job))


def failed_sources(job: Mapping[str, Any]) -> list[str]:
    """The sources of the errored tasks; of every task when none errored by itself."""
    tasks = tasks_of(job)
    chosen = [t for t in tasks if t.get("status") == "error"] or tasks
    return [str(t["source"]) for t in chosen if t.get("source")]


def root_job_id(job: Mapping[str, Any]) -> str:
    """The first job of a chain of resubmissions (the one whose budget they all share)."""
    meta = job.get("metaData")
    root = meta.get(ORIGINAL_KEY) if isinstance(meta, Mapping) else None
    return str(root) if root else str(job["id"])


def resubmission(
    job: Mapping[str, Any], options: FilecheckOptions, attempt: int
) -> dict[str, Any]:
    """The body of `POST /jobs` that resubmits the failed part of `job`."""
    body: dict[str, Any] = {"sources": failed_sources(job)}
    body.update({name: job[name] for name in COPIED_FIELDS if job.get(name) is not None})
    if options.channel is not None:
        body["channel"] = options.channel
    meta = job.get("metaData")
    body["metaData"] = {**(meta if isinstance(meta, Mapping) else {}),
                        ORIGINAL_KEY: root_job_id(job), "hookline_attempt": attempt}
    return body


class FilecheckResubmit:
    name = "filecheck_resubmit"
    Options = FilecheckOptions

    async def handle(self, event: Event, ctx: Context) -> None:
        options: FilecheckOptions = ctx.options
        upstream = needs_upstream(ctx)
        job = event.payload
        if not isinstance(job, Mapping) or not job.get("id"):
            raise Permanent("the event is not a Filecheck job (no id)")
        job_id = str(job["id"])
        if is_rejected(job):
            ctx.log.info("filecheck job %s rejected by policy; not resubmitted", job_id)
            return
        if not errored(job):
            ctx.log.info("filecheck job %s has no processing error; nothing to resubmit", job_id)
            return
        if not failed_sources(job):
            raise Permanent(f"no task sources known for filecheck job {job_id}")
        # An open breaker is checked before the one-time mark, which it would otherwise burn.
        wait = breaker_for(options.base_url).wait_time(ctx.clock.monotonic())
        if wait is not None:
            raise Retry(wait, "circuit open for filecheck: too many failures")
        if not await upstream.once(f"filecheck:resubmit:{job_id}"):
            ctx.log.info("filecheck job %s was already resubmitted; not again", job_id)
            return
        await self._resubmit(job, job_id, options, upstream, ctx)

    async def _resubmit(
        self, job: Mapping[str, Any], job_id: str, options: FilecheckOptions,
        upstream: Upstream, ctx: Context,
    ) -> None:
        key = f"filecheck:job:{root_job_id(job)}"
        try:
            async with budget_unit(upstream, key, options.budget) as count:
                response = await self._post(resubmission(job, options, count), options, ctx)
            check_response(response)
        except Retry as exc:
            reached = "" if isinstance(exc, NotReached) else "; a job may have been created"
            raise Permanent(f"resubmission of filecheck job {job_id} failed ({exc}){reached}; "
                            "not retried: Filecheck cannot deduplicate jobs",
                            http_status=exc.http_status) from exc
        ctx.log.info("filecheck job %s resubmitted (attempt %d of %d)",
                     job_id, count, options.budget)

    async def _post(
        self, body: dict[str, Any], options: FilecheckOptions, ctx: Context
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {options.token.get_secret_value()}",
                   "content-type": "application/json"}
        call = Call("POST", f"{options.base_url}/jobs", headers, options.timeout, json=body)
        return await send(ctx, options.base_url, call)
