"""The `forward` handler: POST the original payload to a URL, signed as Standard Webhooks.

2xx is success; 408, 429 and 5xx (and timeouts, connection errors) are worth another try, with
the receiver's Retry-After honoured; any other 4xx (410 included) means the receiver will never
take it, so the delivery is dead-lettered. The webhook-id is the delivery's hookline event id,
so a receiver can deduplicate our retries.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, Field, SecretStr, field_validator
from standardwebhooks.webhooks import Webhook

from handlers import Context, Event, Permanent, Retry

TRANSIENT_4XX = frozenset({408, 425, 429})


class ForwardOptions(BaseModel):
    url: str
    secret: SecretStr | None = None
    headers: dict[str, str] = {}
    timeout: float = Field(default=10.0, gt=0)
    allowed_hosts: list[str] | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


def payload_bytes(event: Event) -> bytes:
    """The bytes hookline received, or the payload re-encoded when they are not at hand."""
    if event.body is not None:
        return event.body
    return json.dumps(event.payload, separators=(",", ":"), ensure_ascii=False).encode()


def signed_headers(secret: str, msg_id: str, now: float, body: bytes) -> dict[str, str]:
    stamp = int(now)
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(stamp, UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(stamp), "webhook-signature": signature}


def raise_for_outcome(response: httpx.Response) -> None:
    """Map an HTTP answer to success, Retry or Permanent (shared by outbound handlers)."""
    status = response.status_code
    if 200 <= status < 300:
        return
    if status in TRANSIENT_4XX or status >= 500:
        after = response.headers.get("retry-after", "")
        raise Retry(float(after) if after.isascii() and after.isdigit() else None,
                    f"HTTP {status} from {response.request.url.host}", http_status=status)
    raise Permanent(f"HTTP {status} from {response.request.url.host}", http_status=status)


class ForwardHandler:
    name = "forward"
    Options = ForwardOptions

    async def handle(self, event: Event, ctx: Context) -> None:
        options: ForwardOptions = ctx.options
        host = httpx.URL(options.url).host
        if options.allowed_hosts is not None and host not in options.allowed_hosts:
            raise Permanent(f"host {host!r} is not in allowed_hosts")
        body = payload_bytes(event)
        headers: dict[str, Any] = {"content-type": "application/json", **options.headers}
        # The id and time always travel, so a receiver can deduplicate our retries; the
        # signature only when there is a secret to sign with.
        stamp = int(ctx.clock.now())
        headers.update({"webhook-id": event.id, "webhook-timestamp": str(stamp)})
        if options.secret is not None:
            headers.update(
                signed_headers(options.secret.get_secret_value(), event.id, stamp, body)
            )
        response = await ctx.http.post(
            options.url, content=body, headers=headers, timeout=options.timeout
        )
        raise_for_outcome(response)
