"""The `slack` handler: an incoming-webhook message built from a template over the event.

The template is `str.format` over the event's fields (`id`, `type`, `source`, `job_id`,
`file_id`, `company_id`) plus the top-level payload keys and a few conveniences (`error`: the
latest error the event reports, see handlers/error_text.py). Unknown fields render as empty,
never as a crash.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from handlers import Context, Event
from handlers.error_text import error_text
from handlers.forward import raise_for_outcome
from handlers.headers import url_problem


class SlackOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook_url: SecretStr
    template: str = "{type} from {source}: job {job_id} file {file_id}"
    timeout: float = Field(default=10.0, gt=0)

    @field_validator("webhook_url")
    @classmethod
    def _sendable_url(cls, value: SecretStr) -> SecretStr:
        # The URL is the credential: checked here so that no error ever has to quote it.
        url = value.get_secret_value()
        if not url.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        problem = url_problem(url)
        if problem:
            raise ValueError(problem)
        return value


class _Fields(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""


class _Formatter(string.Formatter):
    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        try:
            return super().get_field(field_name, args, kwargs)
        except (KeyError, AttributeError, IndexError, TypeError):
            return "", field_name


def template_fields(event: Event) -> dict[str, Any]:
    payload = event.payload if isinstance(event.payload, Mapping) else {}
    nested = payload.get("event")
    inner: Mapping[str, Any] = nested if isinstance(nested, Mapping) else {}
    fields = _Fields({**payload, **inner})
    fields.update(
        id=event.id, type=event.type, source=event.source, job_id=event.job_id or "",
        file_id=event.file_id or "", company_id=event.company_id or "",
        error=error_text(payload),
        data=payload.get("data", {}),
    )
    return fields


def render(template: str, event: Event) -> str:
    return _Formatter().vformat(template, (), template_fields(event))


class SlackHandler:
    name = "slack"
    Options = SlackOptions

    async def handle(self, event: Event, ctx: Context[SlackOptions]) -> None:
        options = ctx.options
        response = await ctx.http.post(
            options.webhook_url.get_secret_value(),
            json={"text": render(options.template, event)},
            timeout=options.timeout,
        )
        raise_for_outcome(response)
