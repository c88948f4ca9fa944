"""The `forward` handler: POST the original payload to a URL, signed as Standard Webhooks.

2xx is success; 408, 429 and 5xx (and timeouts, connection errors) are worth another try, with
the receiver's Retry-After honoured; any other 4xx (410 included) means the receiver will never
take it, so the delivery is dead-lettered. The webhook-id is the delivery's hookline event id,
so a receiver can deduplicate our retries. With `allowed_hosts`, the URL's host must be one of
them exactly (no subdomains; an entry `host:port` also fixes the port), and redirects are never
followed, whatever the shared HTTP client does, so a receiver cannot send us elsewhere.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from standardwebhooks.webhooks import Webhook

from handlers import Context, Event, Permanent, Retry
from handlers.headers import HeaderName, HeaderValue, url_problem

TRANSIENT_4XX = frozenset({408, 425, 429})
DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_ENTRY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:/?#@\[\]]+)(?::([0-9]{1,5}))?")


def host_entry(entry: str) -> tuple[str, int | None] | None:
    """An `allowed_hosts` entry as (host as httpx spells it, port or None), or None if bad."""
    match = _HOST_ENTRY.fullmatch(entry)
    if match is None:
        return None
    host, port = match.groups()
    try:  # the same spelling as httpx.URL(...).host: lower case, IDNA decoded, no brackets
        canonical = httpx.URL(f"http://{host}/").host
    except httpx.InvalidURL:
        return None
    number = int(port) if port else None
    if not canonical or (number is not None and not 0 < number < 65536):
        return None
    return canonical, number


def host_allowed(url: httpx.URL, allowed: list[str]) -> bool:
    """Whether `url` goes to one of the `allowed` hosts (and port, where an entry names one)."""
    port = url.port or DEFAULT_PORTS.get(url.scheme)
    for entry in allowed:
        parsed = host_entry(entry)
        if parsed is not None and parsed[0] == url.host and parsed[1] in (None, port):
            return True
    return False


class ForwardOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    secret: SecretStr | None = None
    headers: dict[HeaderName, HeaderValue] = {}
    timeout: float = Field(default=10.0, gt=0)
    allowed_hosts: list[str] | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        problem = url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_entries(cls, value: list[str] | None) -> list[str] | None:
        for entry in value or []:
            if host_entry(entry) is None:
                raise ValueError(f"{entry!r} is not a host name or host:port")
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
        raise Retry(after=float(after) if after.isascii() and after.isdigit() else None,
                    reason=f"HTTP {status} from {response.request.url.host}", http_status=status)
    raise Permanent(f"HTTP {status} from {response.request.url.host}", http_status=status)


class ForwardHandler:
    name = "forward"
    Options = ForwardOptions

    async def handle(self, event: Event, ctx: Context[ForwardOptions]) -> None:
        options = ctx.options
        url = httpx.URL(options.url)
        if options.allowed_hosts is not None and not host_allowed(url, options.allowed_hosts):
            raise Permanent(f"host {url.host!r} is not in allowed_hosts")
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
            url, content=body, headers=headers, timeout=options.timeout, follow_redirects=False
        )
        raise_for_outcome(response)
