"""Pure authentication of incoming webhooks, one function for every scheme.

`verify` looks only at the headers, query parameters, raw body and the time it is given: no
I/O, no clock. Every comparison is constant-time, and a failure is just `False`: the caller
answers one 401 for all of them, so a client learns nothing about which part was wrong.
`sign` produces what a sender would attach, for `hookline send` and for tests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from standardwebhooks.webhooks import Webhook

if TYPE_CHECKING:
    from app.config import AuthSettings

REDACTED = "REDACTED"
SECRET_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "webhook-signature",
    "x-filecheck-signature", "x-api-key", "x-tagshelfapi-key", "x-hub-signature-256",
})


@lru_cache(maxsize=256)
def _webhook(secret: str) -> Webhook:
    return Webhook(secret)


def _secrets(auth: AuthSettings) -> list[str]:
    return [secret.get_secret_value() for secret in auth.secrets]


def _same(a: bytes, b: bytes) -> bool:
    # Compare digests so neither the content nor the length of a secret leaks through timing.
    return hmac.compare_digest(hashlib.sha256(a).digest(), hashlib.sha256(b).digest())


def _standard_ok(
    auth: AuthSettings, headers: Mapping[str, str], body: bytes, now: float
) -> bool:
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and stamp and signatures) or not stamp.isdigit():
        return False
    if abs(now - int(stamp)) > auth.tolerance_seconds:
        return False
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    offered = []
    for entry in signatures.split():
        version, _, value = entry.partition(",")
        if version == "v1" and value:
            try:
                offered.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                continue
    timestamp = datetime.fromtimestamp(int(stamp), UTC)
    matched = False
    for secret in _secrets(auth):
        expected = base64.b64decode(_webhook(secret).sign(msg_id, timestamp, text)[3:])
        for candidate in offered:
            matched |= hmac.compare_digest(expected, candidate)
    return matched


def _hmac_ok(auth: AuthSettings, headers: Mapping[str, str], body: bytes) -> bool:
    assert auth.header is not None
    value = headers.get(auth.header.lower(), "").strip()
    value = value.removeprefix("sha256=").lower()
    matched = False
    for secret in _secrets(auth):
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        matched |= hmac.compare_digest(expected.encode(), value.encode("latin-1", "replace"))
    return matched


def _token_ok(auth: AuthSettings, presented: str | None) -> bool:
    if not presented:
        return False
    matched = False
    for secret in _secrets(auth):
        matched |= _same(secret.encode(), presented.encode("utf-8", "replace"))
    return matched


def verify(
    auth: AuthSettings,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    body: bytes,
    now: float,
) -> bool:
    """Whether the request carries valid credentials for this source (headers lower-cased)."""
    scheme = auth.scheme
    if scheme == "standard_webhooks":
        return _standard_ok(auth, headers, body, now)
    if scheme == "hmac_sha256":
        return _hmac_ok(auth, headers, body)
    if scheme == "header_token":
        assert auth.header is not None
        return _token_ok(auth, headers.get(auth.header.lower()))
    if scheme == "query_token":
        return _token_ok(auth, query.get("token"))
    return scheme == "none"


def sign(
    auth: AuthSettings, body: bytes, now: float, msg_id: str
) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and query parameters a sender attaches, signed with the first secret."""
    if auth.scheme == "none":
        return {}, {}
    secret = _secrets(auth)[0]
    if auth.scheme == "standard_webhooks":
        stamp = int(now)
        signature = _webhook(secret).sign(
            msg_id, datetime.fromtimestamp(stamp, UTC), body.decode("utf-8")
        )
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": signature,
        }, {}
    assert auth.header is not None or auth.scheme == "query_token"
    if auth.scheme == "hmac_sha256":
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return {str(auth.header).lower(): f"sha256={digest}"}, {}
    if auth.scheme == "header_token":
        return {str(auth.header).lower(): secret}, {}
    return {}, {"token": secret}


def redact_query(query_string: str) -> str:
    """The query string with the value of any `token` parameter replaced by REDACTED."""
    if "token" not in query_string.lower():
        return query_string
    pairs = parse_qsl(query_string, keep_blank_values=True)
    return urlencode([(k, REDACTED if k.lower() == "token" else v) for k, v in pairs], safe="")


def redact_url(url: str) -> str:
    """The URL with any `token` query parameter redacted."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=redact_query(parts.query)))


def strip_secret_headers(headers: Mapping[str, str], auth: AuthSettings) -> dict[str, str]:
    """The headers worth keeping with an event: never signatures, tokens or cookies."""
    drop = SECRET_HEADERS | ({auth.header.lower()} if auth.header else set())
    return {name: value for name, value in headers.items() if name.lower() not in drop}
