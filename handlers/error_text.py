"""The error an event reports, as `{error}` in the slack and email templates shows it.

Platforms report errors in their own shapes. Alfred lists one message per attempt in
`error_messages`, oldest first, so the latest error is the last one. Filecheck gives a `reason`
on each step of each task; the failing steps are those whose outcome is `fail` or whose status
is `error`, and their reasons are joined in task and step order. The outcomes hookline records
after polling Aitronos carry `error.message` or the platform's `error_message`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def error_text(payload: Any) -> str:
    """The latest error an event's payload reports, or "" when it reports none."""
    if not isinstance(payload, Mapping):
        return ""
    inner = payload.get("event")
    for holder in (inner, payload):
        if isinstance(holder, Mapping):
            latest = _latest_message(holder.get("error_messages"))
            if latest:
                return latest
    reasons = failing_reasons(payload)
    if reasons:
        return "; ".join(reasons)
    return _polled_error(payload)


def _latest_message(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    texts = [str(m) for m in messages if isinstance(m, str | int | float) and str(m).strip()]
    return texts[-1] if texts else ""


def failing_reasons(job: Mapping[str, Any]) -> list[str]:
    """The reasons of a Filecheck job's failing steps (outcome fail or status error), once each."""
    tasks = job.get("tasks")
    found: dict[str, None] = {}
    for task in tasks if isinstance(tasks, list) else []:
        steps = task.get("steps") if isinstance(task, Mapping) else None
        for step in steps if isinstance(steps, list) else []:
            if not isinstance(step, Mapping):
                continue
            failing = step.get("outcome") == "fail" or step.get("status") == "error"
            reason = step.get("reason")
            if failing and isinstance(reason, str) and reason.strip():
                found[reason.strip()] = None
    return list(found)


def _polled_error(payload: Mapping[str, Any]) -> str:
    error = payload.get("error")
    message = error.get("message") if isinstance(error, Mapping) else payload.get("error_message")
    return message.strip() if isinstance(message, str) else ""
