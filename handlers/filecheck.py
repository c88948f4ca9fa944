"""The `filecheck_resubmit` handler: resubmit the failed part of a Filecheck job as a new job.

Filecheck has no retry endpoint and no idempotency key: a resubmission is a new `POST /jobs`,
and sending it twice makes two jobs. So the handler acts only on processing failures
(`status: error`, never a file the policy rejected), marks each failure once before sending,
and tags the new job's `metaData` with the root job id and the attempt number, so
resubmissions of resubmissions share one budget and can be told apart.

The new job carries what the API's `CreateJobParams` defines and nothing else (unknown keys
are refused): one `sources` item per failed task, with the task's own locator (`url`, `fileRef`
or `source`, whichever it has: a completed job's tasks often have only `fileRef`) and the steps
it ran as step specs (`type`, `params`); the job's ruleId, channel, customerId, orderId and
policy; the operator's `webhook` (the event does not carry the original one); the tagged metaData.

Because the mark is taken before the call and cannot be given back, a resubmission that fails
(the platform unreachable, 5xx, 429) is dead-lettered with the reason rather than retried: a
retry would find the mark and do nothing, and could not know whether a job was created.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from handlers import Context, Event, Permanent, Retry, Upstream
from handlers.upstream import (
    Call, NotReached, UpstreamOptions, breaker_for, budget_unit, check_response,
    needs_upstream, send,
)

ORIGINAL_KEY = "hookline_original_job_id"
ATTEMPT_KEY = "hookline_attempt"
# What `POST /jobs` defines (the SDK's CreateJobParams; the API refuses unknown keys).
LOCATORS = ("url", "fileRef", "source")  # exactly one per source; the first the task has
MAX_SOURCES = 50
MAX_STEPS = 16
CHANNELS = frozenset({"api", "store", "admin"})
ON_FAIL = frozenset({"reject", "accept_with_warnings", "manual_review"})
TEXT_FIELDS = ("ruleId", "customerId", "orderId")


class FilecheckWebhook(BaseModel):
    """The `webhook` of the resubmitted job, so its outcome is posted back to hookline."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://")
    headers: dict[str, SecretStr] = {}


class FilecheckOptions(UpstreamOptions):
    base_url: str = "https://api.filecheck.io"
    token: SecretStr = Field(min_length=1, description="an sk_... API key")
    channel: Literal["api", "store", "admin"] | None = None
    webhook: FilecheckWebhook | None = None


def on_fail(job: Mapping[str, Any]) -> str | None:
    policy = job.get("policy")
    value = policy.get("onFail") if isinstance(policy, Mapping) else None
    return value if value in ON_FAIL else None


def is_rejected(job: Mapping[str, Any]) -> bool:
    """A failed file under `onFail: reject`: terminal, never resubmitted."""
    return job.get("outcome") == "fail" and on_fail(job) == "reject"


def tasks_of(job: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    tasks = job.get("tasks")
    return [t for t in tasks if isinstance(t, Mapping)] if isinstance(tasks, list) else []


def errored(job: Mapping[str, Any]) -> bool:
    """Whether the job or any of its tasks ended in a processing error."""
    return job.get("status") == "error" or any(t.get("status") == "error" for t in tasks_of(job))


def failed_tasks(job: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The errored tasks; every task when none errored by itself. A task the policy rejected
    (`outcome: fail` under `onFail: reject`) is never among them."""
    rejecting = on_fail(job) == "reject"
    tasks = [t for t in tasks_of(job) if not (rejecting and t.get("outcome") == "fail")]
    return [t for t in tasks if t.get("status") == "error"] or tasks


def step_spec(step: Any) -> dict[str, Any] | None:
    """A step the task ran, as the step spec `POST /jobs` takes: `type` and `params` only."""
    if not isinstance(step, Mapping) or not isinstance(step.get("type"), str):
        return None
    spec: dict[str, Any] = {"type": step["type"]}
    if isinstance(step.get("params"), Mapping) and step["params"]:
        spec["params"] = dict(step["params"])
    return spec


def source_item(task: Mapping[str, Any]) -> dict[str, Any]:
    """One `sources` item: the task's locator and steps, or Permanent saying what is missing."""
    name = str(task.get("id") or "?")
    locator = next((key for key in LOCATORS if isinstance(task.get(key), str) and task[key]), None)
    if locator is None:
        raise Permanent(f"task {name} has none of {', '.join(LOCATORS)} to resubmit")
    steps = task.get("steps")
    specs = [spec for spec in map(step_spec, steps if isinstance(steps, list) else [])
             if spec is not None]
    if not 1 <= len(specs) <= MAX_STEPS:
        raise Permanent(f"task {name} has {len(specs)} steps; a source takes 1 to {MAX_STEPS}")
    return {locator: task[locator], "steps": specs}


def root_job_id(job: Mapping[str, Any]) -> str:
    """The first job of a chain of resubmissions (the one whose budget they all share)."""
    meta = job.get("metaData")
    root = meta.get(ORIGINAL_KEY) if isinstance(meta, Mapping) else None
    return str(root) if root else str(job["id"])


def job_fields(job: Mapping[str, Any], options: FilecheckOptions) -> dict[str, Any]:
    """The job-level parameters carried over, each only in a shape `POST /jobs` accepts."""
    fields: dict[str, Any] = {name: job[name] for name in TEXT_FIELDS
                              if isinstance(job.get(name), str) and job[name]}
    channel = options.channel or job.get("channel")
    if channel in CHANNELS:
        fields["channel"] = channel
    if on_fail(job) is not None:
        fields["policy"] = {"onFail": on_fail(job)}
    if options.webhook is not None:
        webhook: dict[str, Any] = {"url": options.webhook.url}
        if options.webhook.headers:
            webhook["headers"] = {name: value.get_secret_value()
                                  for name, value in options.webhook.headers.items()}
        fields["webhook"] = webhook
    return fields


def failed_sources(job: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The `sources` that resubmit the failed tasks, or Permanent saying why there are none."""
    sources = [source_item(task) for task in failed_tasks(job)]
    if not 1 <= len(sources) <= MAX_SOURCES:
        raise Permanent(f"{len(sources)} sources to resubmit; a job takes 1 to {MAX_SOURCES}")
    return sources


def resubmission(
    job: Mapping[str, Any], options: FilecheckOptions, attempt: int
) -> dict[str, Any]:
    """The body of `POST /jobs` that resubmits the failed part of `job`."""
    sources = failed_sources(job)
    meta = job.get("metaData")
    return {"sources": sources, **job_fields(job, options),
            "metaData": {**(meta if isinstance(meta, Mapping) else {}),
                         ORIGINAL_KEY: root_job_id(job), ATTEMPT_KEY: attempt}}


class FilecheckResubmit:
    name = "filecheck_resubmit"
    Options = FilecheckOptions

    async def handle(self, event: Event, ctx: Context[FilecheckOptions]) -> None:
        options = ctx.options
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
        failed_sources(job)  # a job that cannot be resubmitted fails before the one-time mark
        # An open breaker is checked before the one-time mark, which it would otherwise burn.
        wait = breaker_for(options.base_url).wait_time(ctx.clock.monotonic())
        if wait is not None:
            raise Retry(after=wait, reason="circuit open for filecheck: too many failures")
        if not await upstream.once(f"filecheck:resubmit:{job_id}"):
            ctx.log.info("filecheck job %s was already resubmitted; not again", job_id)
            return
        await self._resubmit(job, job_id, options, upstream, ctx)

    async def _resubmit(
        self, job: Mapping[str, Any], job_id: str, options: FilecheckOptions,
        upstream: Upstream, ctx: Context[FilecheckOptions],
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
        self, body: dict[str, Any], options: FilecheckOptions, ctx: Context[FilecheckOptions]
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {options.token.get_secret_value()}",
                   "content-type": "application/json"}
        call = Call("POST", f"{options.base_url}/jobs", headers, options.timeout, json=body)
        return await send(ctx, options.base_url, call)
