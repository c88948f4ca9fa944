"""Pure authentication of incoming webhooks, one function for every scheme.

Every source proves who it is differently (Standard Webhooks signatures, also under `svix-*`
header names and as Ed25519 `v1a` signatures checked against `whpk_` public keys; an HMAC of the
body; a static token in a header or in the URL), and the receiver must check all of them on the
hot path without I/O or a clock read of its own. `verify` looks only at the headers, query
parameters, raw body and the `now` it is given; every comparison is constant-time, and any
failure, malformed input included, is just `False`, so the caller answers one 401 that says
nothing about which part was wrong. `sign` produces what a sender attaches (for `hookline send`
and tests), and the redaction helpers keep tokens and signatures out of logs and the event log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks.webhooks import Webhook

from schemas.standard import message_prefix

if TYPE_CHECKING:
    from app.config import AuthSettings

REDACTED = "REDACTED"
PUBLIC_PREFIX = "whpk_"
_VERSIONS = {"v1": 0, "v1a": 1}  # HMAC-SHA256, Ed25519
TOKEN_PARAM = "token"
SECRET_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "webhook-signature", "svix-signature",
    "x-filecheck-signature", "x-api-key", "x-tagshelfapi-key", "x-hub-signature-256",
})
# A header whose name holds any of these is taken for a credential wherever it comes from, so a
# sender's own auth header (`x-acme-token`, `x-partner-signature`) is never stored either.
_SECRET_NAME = re.compile(
    r"auth|cookie|token|secret|signature|passw|credential|session|api[-_]?key|access[-_]?key"
    r"|private[-_]?key"
)
# Longer than any Unix timestamp for millennia; also keeps int() far from its digit limit.
_MAX_TIMESTAMP_DIGITS = 12


@lru_cache(maxsize=256)
def _webhook(secret: str) -> Webhook:
    # Webhook() base64-decodes the secret; doing that once per secret keeps it off the hot path.
    return Webhook(secret)


@lru_cache(maxsize=256)
def _standard_key(secret: str) -> bytes:
    # Derived as the reference library does (padding added, extra padding ignored); config has
    # already checked that the secret is base64.
    return base64.b64decode(secret.removeprefix("whsec_") + "==")


def _utf8(text: str) -> bytes:
    # surrogatepass never raises, even for secrets read from an environment with stray bytes.
    return text.encode("utf-8", "surrogatepass")


def _secrets(auth: AuthSettings) -> list[str]:
    return [secret.get_secret_value() for secret in auth.secrets]


def _same(a: bytes, b: bytes) -> bool:
    # Compare digests so neither the content nor the length of a secret leaks through timing.
    return hmac.compare_digest(hashlib.sha256(a).digest(), hashlib.sha256(b).digest())


def _parse_timestamp(stamp: str) -> int | None:
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > _MAX_TIMESTAMP_DIGITS:
        return None
    return int(stamp)


# A sender attaches a signature per secret it signs with (a few, while rotating): entries past
# the first _MAX_SIGNATURES are not looked at, and one longer than any signature is not decoded,
# so a huge header costs no more than a normal one.
_MAX_SIGNATURES = 10
_MAX_SIGNATURE_CHARS = 512


def _offered(header: str) -> tuple[list[bytes], list[bytes]]:
    """The decoded `v1` and `v1a` signatures among the first entries of a space-separated
    header; other versions are ignored."""
    offered: tuple[list[bytes], list[bytes]] = ([], [])
    for entry in header.split(maxsplit=_MAX_SIGNATURES)[:_MAX_SIGNATURES]:
        version, _, value = entry.partition(",")
        if version not in _VERSIONS or not value or len(value) > _MAX_SIGNATURE_CHARS:
            continue
        try:
            offered[_VERSIONS[version]].append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return offered


@lru_cache(maxsize=256)
def _public_key(secret: str) -> Ed25519PublicKey:
    # Config has already checked that a whpk_ key is the base64 of 32 bytes.
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(secret.removeprefix(PUBLIC_PREFIX)))


def _ed25519_ok(key: Ed25519PublicKey, signature: bytes, signed: bytes) -> bool:
    try:
        key.verify(signature, signed)
    except InvalidSignature:
        return False
    return True


def _standard_ok(
    auth: AuthSettings, headers: Mapping[str, str], body: bytes, now: float
) -> bool:
    # Svix-backed senders name the same three headers svix-*; the Svix libraries take either.
    prefix = message_prefix(headers)
    msg_id = headers.get(prefix + "id")
    stamp = _parse_timestamp(headers.get(prefix + "timestamp", ""))
    header = headers.get(prefix + "signature", "")
    if not msg_id or stamp is None:
        return False
    if abs(now - stamp) > auth.tolerance_seconds:
        return False
    try:
        signed_prefix = f"{msg_id}.{stamp}.".encode()
    except UnicodeEncodeError:  # a msg_id no sender could have signed
        return False
    # The spec signs the raw body bytes, so a body that is not UTF-8 still authenticates and
    # is then refused as invalid JSON (400), like with every other scheme.
    signed = signed_prefix + body
    hmac_secrets, public_keys = auth.keys
    v1, v1a = _offered(header)
    matched = _v1_ok(hmac_secrets, v1, signed)
    return matched | _v1a_ok(public_keys, v1a, signed) if v1a else matched


def _v1_ok(secrets: tuple[str, ...], offered: list[bytes], signed: bytes) -> bool:
    matched = False
    for secret in secrets if offered else ():
        expected = hmac.digest(_standard_key(secret), signed, "sha256")
        for candidate in offered:
            matched |= hmac.compare_digest(expected, candidate)
    return matched


def _v1a_ok(keys: tuple[str, ...], offered: list[bytes], signed: bytes) -> bool:
    # Verifying with a public key reveals nothing secret, so stopping at a match is fine.
    return any(
        _ed25519_ok(_public_key(key), candidate, signed) for key in keys for candidate in offered
    )


def _hmac_hex(secret: str, body: bytes) -> str:
    return hmac.digest(_utf8(secret), body, "sha256").hex()


def _hmac_ok(auth: AuthSettings, headers: Mapping[str, str], body: bytes) -> bool:
    if not auth.header:
        return False
    presented = headers.get(auth.header.lower(), "")
    if len(presented) > _MAX_SIGNATURE_CHARS:
        return False
    presented = presented.strip().lower().removeprefix("sha256=")
    if not presented:
        return False
    matched = False
    for secret in _secrets(auth):
        matched |= hmac.compare_digest(_utf8(_hmac_hex(secret, body)), _utf8(presented))
    return matched


def _token_ok(auth: AuthSettings, presented: str | None) -> bool:
    if not presented:
        return False
    matched = False
    for secret in _secrets(auth):
        matched |= _same(_utf8(secret), _utf8(presented))
    return matched


def verify(
    auth: AuthSettings,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    body: bytes,
    now: float,
) -> bool:
    """Whether the request carries valid credentials for this source (header names lower-case)."""
    scheme = auth.scheme
    if scheme == "standard_webhooks":
        return _standard_ok(auth, headers, body, now)
    if scheme == "hmac_sha256":
        return _hmac_ok(auth, headers, body)
    if scheme == "header_token":
        return bool(auth.header) and _token_ok(auth, headers.get(str(auth.header).lower()))
    if scheme == "query_token":
        return _token_ok(auth, query.get(TOKEN_PARAM))
    return scheme == "none"


def _sign_standard(secret: str, body: bytes, now: float, msg_id: str) -> dict[str, str]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("standard_webhooks signs text: the body is not UTF-8") from None
    stamp = int(now)
    signature = _webhook(secret).sign(msg_id, datetime.fromtimestamp(stamp, UTC), text)
    return {"webhook-id": msg_id, "webhook-timestamp": str(stamp), "webhook-signature": signature}


def sign(
    auth: AuthSettings, body: bytes, now: float, msg_id: str
) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and query parameters a sender attaches, signed with the first secret (for
    standard_webhooks, the first that is not a public key: a whpk_ key cannot sign)."""
    if auth.scheme == "none" or not auth.secrets:
        return {}, {}
    usable = auth.keys[0]
    if not usable:
        raise ValueError("this source holds only whpk_ public keys: the sender signs, not hookline")
    secret = usable[0]
    header = (auth.header or "").lower()
    if auth.scheme == "standard_webhooks":
        return _sign_standard(secret, body, now, msg_id), {}
    if auth.scheme == "hmac_sha256":
        return {header: f"sha256={_hmac_hex(secret, body)}"}, {}
    if auth.scheme == "header_token":
        return {header: secret}, {}
    return {}, {TOKEN_PARAM: secret}


# Query keys that carry credentials, recognised by the words their name is made of, so
# `access_token`, `apiKey`, `X-Amz-Signature`, `client_secret` or `sig` are all caught while
# `keyword` or `page` stay readable. A word containing one of _CREDENTIAL_STEMS counts too
# (`accesstoken`, `clientsecret`, `passwd`).
_CREDENTIAL_WORDS = frozenset({
    "token", "key", "apikey", "secret", "signature", "sig", "password", "passwd", "pwd", "pass",
    "auth", "authorization", "code", "credential", "credentials", "session", "sessionid", "sid",
    "jwt", "otp", "hmac", "bearer",
})
_CREDENTIAL_STEMS = ("token", "secret", "passw", "signature", "credential", "apikey")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")


def is_credential_key(name: str) -> bool:
    """Whether a query parameter of this (decoded) name may carry a credential."""
    words = _WORD_SPLIT.split(_CAMEL.sub(r"\1_\2", name).lower())
    return any(word in _CREDENTIAL_WORDS or any(stem in word for stem in _CREDENTIAL_STEMS)
               for word in words if word)


def _redact_pair(pair: str) -> str:
    name, equals, _ = pair.partition("=")
    # Decode the name as the query parser does, so `%74oken=` or `TOKEN=` cannot slip through.
    if equals and is_credential_key(unquote_plus(name)):
        return f"{name}={REDACTED}"
    return pair


def redact_query(query_string: str) -> str:
    """The query string with the value of every credential-like parameter (`token`,
    `access_token`, `api_key`, `signature`, `password`, `code`...) replaced by REDACTED."""
    return "&".join(_redact_pair(pair) for pair in query_string.split("&"))


def redact_url(url: str) -> str:
    """The URL with every credential-like query parameter redacted, everything else untouched."""
    # Split by hand rather than with urlsplit, which raises on some malformed hosts.
    head, hash_sign, fragment = url.partition("#")
    base, question_mark, query = head.partition("?")
    if not question_mark:
        return url
    return f"{base}?{redact_query(query)}{hash_sign}{fragment}"


def credential_headers(auths: Iterable[AuthSettings]) -> frozenset[str]:
    """The usual credential headers and the one each of these sources authenticates with."""
    return SECRET_HEADERS | {auth.header.lower() for auth in auths if auth.header}


@lru_cache(maxsize=1024)
def is_secret_header(name: str) -> bool:
    """Whether a header name (any case) looks like it carries a credential."""
    lowered = name.lower()
    return lowered in SECRET_HEADERS or _SECRET_NAME.search(lowered) is not None


# Names hookline gives its own annotations of a stored event (`x-hookline-recorded` marks an
# event it recorded itself): a sender's header of that name is never stored.
_RESERVED_PREFIXES = ("x-hookline-", "hookline-")


def dropped_headers(
    auth: AuthSettings, secret: frozenset[str] = SECRET_HEADERS, extra: Iterable[str] = (),
) -> frozenset[str]:
    """The lower-case header names never stored with a source's events, besides every name that
    looks like a credential: `secret` (for instance every source's token header: a sender that
    presents another source's token by mistake must not have it stored), the source's own auth
    header and the names its config adds (`extra`). Computed once per source."""
    names = set(secret) | {name.lower() for name in extra}
    if auth.header:
        names.add(auth.header.lower())
    return frozenset(names)


def strip_headers(headers: Mapping[str, str], drop: frozenset[str]) -> dict[str, str]:
    """The headers worth keeping with an event (ASGI header names, lower case): never those in
    `drop`, nor signatures, tokens, cookies or anything named like them, nor hookline's own."""
    return {name: value for name, value in headers.items()
            if name not in drop and not is_secret_header(name)
            and not name.startswith(_RESERVED_PREFIXES)}


def strip_secret_headers(
    headers: Mapping[str, str], auth: AuthSettings, secret: frozenset[str] = SECRET_HEADERS,
    extra: Iterable[str] = (),
) -> dict[str, str]:
    """`strip_headers` with the names `dropped_headers` gives, for headers of any case."""
    drop = dropped_headers(auth, secret, extra)
    return {name: value for name, value in headers.items()
            if strip_headers({name.lower(): value}, drop)}
