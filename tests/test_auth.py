"""Pure authentication: every scheme accepts the right credentials and refuses everything else."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from app.auth import (
    REDACTED,
    SECRET_HEADERS,
    redact_query,
    redact_url,
    sign,
    dropped_headers,
    strip_headers,
    strip_secret_headers,
    verify,
)
from app.config import AuthSettings

NOW = 1_790_000_000.0
BODY = b'{"type": "file.processing_failed", "data": {"file_id": "f1"}}'
SECRET = "whsec_" + base64.b64encode(b"current-standard-secret-0123").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"previous-standard-secret-987").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"somebody-else-entirely-00000").decode()
MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"


def settings(
    scheme: str, *secrets: str, header: str | None = None, tolerance: int = 300
) -> AuthSettings:
    return AuthSettings(
        scheme=scheme,  # type: ignore[arg-type]
        secrets=[SecretStr(s) for s in secrets],
        header=header,
        tolerance_seconds=tolerance,
    )


def standard_headers(
    secret: str = SECRET, stamp: float = NOW, body: bytes = BODY, msg_id: str = MSG_ID
) -> dict[str, str]:
    when = datetime.fromtimestamp(int(stamp), UTC)
    signature = Webhook(secret).sign(msg_id, when, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(stamp)),
        "webhook-signature": signature,
    }


def check(auth: AuthSettings, headers: dict[str, str], query: dict[str, str] | None = None,
          body: bytes = BODY, now: float = NOW) -> bool:
    return verify(auth, headers, query or {}, body, now)


# --- standard_webhooks -------------------------------------------------------------------------

STANDARD = settings("standard_webhooks", SECRET)
ROTATED = settings("standard_webhooks", OLD_SECRET, SECRET)


def test_standard_valid_and_wrong_secret() -> None:
    assert check(STANDARD, standard_headers())
    assert not check(STANDARD, standard_headers(secret=OTHER_SECRET))


def test_standard_rotation_accepts_each_configured_secret() -> None:
    assert check(ROTATED, standard_headers(secret=SECRET))
    assert check(ROTATED, standard_headers(secret=OLD_SECRET))
    assert not check(ROTATED, standard_headers(secret=OTHER_SECRET))


def test_standard_unprefixed_secret_signs_the_same_key() -> None:
    bare = settings("standard_webhooks", SECRET.removeprefix("whsec_"))
    assert check(bare, standard_headers(secret=SECRET))


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_standard_missing_header(missing: str) -> None:
    headers = standard_headers()
    del headers[missing]
    assert not check(STANDARD, headers)


@pytest.mark.parametrize(("offset", "ok"), [
    (-300, True), (-301, False), (300, True), (301, False), (0, True), (-86_400, False),
])
def test_standard_timestamp_tolerance(offset: int, ok: bool) -> None:
    # A sender whose clock is `offset` seconds off ours: both directions are bounded.
    assert check(STANDARD, standard_headers(stamp=NOW + offset)) is ok


def test_standard_fractional_now_just_outside_tolerance() -> None:
    assert not check(STANDARD, standard_headers(stamp=NOW), now=NOW + 300.5)


def test_standard_custom_tolerance() -> None:
    tight = settings("standard_webhooks", SECRET, tolerance=10)
    assert check(tight, standard_headers(stamp=NOW - 10))
    assert not check(tight, standard_headers(stamp=NOW - 11))
    assert not check(tight, standard_headers(stamp=NOW + 11))
    assert check(STANDARD, standard_headers(stamp=NOW - 11))


def test_standard_signature_of_another_body_or_id_fails() -> None:
    assert not check(STANDARD, standard_headers(body=b'{"type": "other"}'))
    headers = standard_headers()
    headers["webhook-id"] = "msg_other"
    assert not check(STANDARD, headers)
    headers = standard_headers()
    headers["webhook-timestamp"] = str(int(NOW) + 1)
    assert not check(STANDARD, headers)


def test_standard_one_matching_signature_among_several() -> None:
    good = standard_headers()["webhook-signature"]
    wrong = standard_headers(secret=OTHER_SECRET)["webhook-signature"]
    headers = standard_headers()
    headers["webhook-signature"] = f"{wrong} {good} v1,{base64.b64encode(b'x' * 32).decode()}"
    assert check(STANDARD, headers)
    headers["webhook-signature"] = f"{wrong} v1,{base64.b64encode(b'x' * 32).decode()}"
    assert not check(STANDARD, headers)


def test_standard_other_versions_are_ignored() -> None:
    good = standard_headers()["webhook-signature"]
    value = good.removeprefix("v1,")
    headers = standard_headers()
    headers["webhook-signature"] = f"v2,{value}"
    assert not check(STANDARD, headers)
    headers["webhook-signature"] = f"v1a,{value} v2,{value}"
    assert not check(STANDARD, headers)
    headers["webhook-signature"] = f"v2,{value} {good}"
    assert check(STANDARD, headers)


@pytest.mark.parametrize(("name", "value"), [
    ("webhook-timestamp", "not-a-number"),
    ("webhook-timestamp", f"{NOW}"),  # fractional: Standard Webhooks timestamps are integers
    ("webhook-timestamp", "-1790000000"),
    ("webhook-timestamp", "9" * 5000),  # would exceed int()'s digit limit and raise
    ("webhook-timestamp", ""),
    ("webhook-signature", "v1,not base64!!"),
    ("webhook-signature", "v1,%%%%"),
    ("webhook-signature", "v1"),
    ("webhook-signature", "v1,"),
    ("webhook-signature", "no-comma-at-all"),
    ("webhook-signature", ",,,"),
    ("webhook-signature", "   "),
    ("webhook-id", ""),
    ("webhook-id", "msg_\ud800"),  # a lone surrogate cannot be encoded for signing
])
def test_standard_malformed_headers_fail_without_raising(name: str, value: str) -> None:
    headers = standard_headers()
    headers[name] = value
    assert check(STANDARD, headers) is False


def test_standard_timestamp_must_be_ascii_digits() -> None:
    # int() reads Arabic-Indic digits as NOW, but no signer writes them: refuse, even if signed.
    headers = standard_headers()
    headers["webhook-timestamp"] = str(int(NOW)).translate(str.maketrans("0123456789",
                                                                         "٠١٢٣٤٥٦٧٨٩"))
    assert check(STANDARD, headers) is False


def test_standard_body_must_be_utf8() -> None:
    body = b'{"a": "\xff"}'
    headers = standard_headers(body=b'{"a": "x"}')
    assert check(STANDARD, headers, body=body) is False


# --- hmac_sha256 -------------------------------------------------------------------------------

def test_standard_looks_at_the_first_ten_signature_entries_only() -> None:
    good = standard_headers()
    decoy = "v1," + base64.b64encode(b"x" * 32).decode()
    for before, ok in ((9, True), (10, False)):
        entries = [decoy] * before + [good["webhook-signature"]]
        headers = {**good, "webhook-signature": " ".join(entries)}
        assert check(STANDARD, headers) is ok, before
    # An entry longer than any signature is skipped, not decoded.
    long = "v1," + base64.b64encode(b"y" * 1024).decode()
    assert check(STANDARD, {**good, "webhook-signature": f"{long} {good['webhook-signature']}"})


HMAC = settings("hmac_sha256", "fc-secret", header="X-Filecheck-Signature")


def hex_of(secret: str, body: bytes = BODY) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("value", [
    hex_of("fc-secret"),
    f"sha256={hex_of('fc-secret')}",
    hex_of("fc-secret").upper(),
    f"sha256={hex_of('fc-secret').upper()}",
    f"  {hex_of('fc-secret')}  ",
])
def test_hmac_valid_forms(value: str) -> None:
    assert check(HMAC, {"x-filecheck-signature": value})


def test_hmac_header_longer_than_any_signature_is_refused_unread() -> None:
    padded = f"sha256={hex_of('fc-secret')}" + " " * 600
    assert check(HMAC, {"x-filecheck-signature": padded[:500]})
    assert not check(HMAC, {"x-filecheck-signature": padded})


def test_hmac_wrong_secret_body_or_header() -> None:
    assert not check(HMAC, {"x-filecheck-signature": hex_of("other")})
    assert not check(HMAC, {"x-filecheck-signature": hex_of("fc-secret", b"{}")})
    assert not check(HMAC, {"x-other": hex_of("fc-secret")})
    assert not check(HMAC, {})


@pytest.mark.parametrize("value", [
    "", "sha256=", "zz", "sha256=" + "g" * 64, hex_of("fc-secret")[:-1], "é" * 64,
    "md5=" + hex_of("fc-secret"),
])
def test_hmac_malformed_fails_without_raising(value: str) -> None:
    assert check(HMAC, {"x-filecheck-signature": value}) is False


def test_hmac_rotation() -> None:
    rotated = settings("hmac_sha256", "old", "new", header="x-filecheck-signature")
    assert check(rotated, {"x-filecheck-signature": hex_of("new")})
    assert check(rotated, {"x-filecheck-signature": hex_of("old")})
    assert not check(rotated, {"x-filecheck-signature": hex_of("other")})


# --- header_token and query_token --------------------------------------------------------------

HEADER = settings("header_token", "fc-token", header="X-Hook-Token")
QUERY = settings("query_token", "alfred-token")


def test_header_token() -> None:
    assert check(HEADER, {"x-hook-token": "fc-token"})
    assert not check(HEADER, {"x-hook-token": "fc-token2"})
    assert not check(HEADER, {"x-hook-token": "fc-toke"})
    assert not check(HEADER, {"x-hook-token": ""})
    assert not check(HEADER, {"authorization": "fc-token"})
    assert not check(HEADER, {}, {"token": "fc-token"})


def test_header_token_rotation() -> None:
    rotated = settings("header_token", "old", "new", header="x-hook-token")
    assert check(rotated, {"x-hook-token": "new"})
    assert check(rotated, {"x-hook-token": "old"})
    assert not check(rotated, {"x-hook-token": "older"})


def test_query_token() -> None:
    assert check(QUERY, {}, {"token": "alfred-token"})
    assert not check(QUERY, {}, {"token": "alfred-token "})
    assert not check(QUERY, {}, {"token": ""})
    assert not check(QUERY, {}, {"TOKEN": "alfred-token"})
    assert not check(QUERY, {"token": "alfred-token"}, {})
    assert not check(QUERY, {}, {})


def test_query_token_rotation() -> None:
    rotated = settings("query_token", "old", "new")
    assert check(rotated, {}, {"token": "new"})
    assert check(rotated, {}, {"token": "old"})
    assert not check(rotated, {}, {"token": "neww"})


def test_tokens_with_unusual_characters_do_not_raise() -> None:
    assert not check(QUERY, {}, {"token": "\ud800\udfff"})
    assert check(settings("query_token", "pässwörd"), {}, {"token": "pässwörd"})


def test_none_always_passes() -> None:
    assert check(settings("none"), {}, {}, body=b"\xff")


# --- sign() round trips ------------------------------------------------------------------------

@pytest.mark.parametrize("auth", [
    STANDARD, ROTATED, HMAC, HEADER, QUERY, settings("none"),
], ids=["standard", "standard-rotated", "hmac", "header", "query", "none"])
def test_sign_round_trips_through_verify(auth: AuthSettings) -> None:
    headers, query = sign(auth, BODY, NOW, MSG_ID)
    assert verify(auth, headers, query, BODY, NOW + 1.7)


@pytest.mark.parametrize("auth", [STANDARD, HMAC], ids=["standard", "hmac"])
def test_signed_credentials_do_not_cover_another_body(auth: AuthSettings) -> None:
    headers, query = sign(auth, BODY, NOW, MSG_ID)
    assert not verify(auth, headers, query, BODY + b" ", NOW)


def test_sign_shapes() -> None:
    headers, query = sign(STANDARD, BODY, NOW + 0.9, MSG_ID)
    assert query == {}
    assert headers == standard_headers()
    assert sign(HMAC, BODY, NOW, MSG_ID) == (
        {"x-filecheck-signature": f"sha256={hex_of('fc-secret')}"}, {}
    )
    assert sign(HEADER, BODY, NOW, MSG_ID) == ({"x-hook-token": "fc-token"}, {})
    assert sign(QUERY, BODY, NOW, MSG_ID) == ({}, {"token": "alfred-token"})
    assert sign(settings("none"), BODY, NOW, MSG_ID) == ({}, {})


def test_sign_uses_the_first_secret() -> None:
    headers, _ = sign(ROTATED, BODY, NOW, MSG_ID)
    assert check(settings("standard_webhooks", OLD_SECRET), headers)
    assert not check(STANDARD, headers)


def test_sign_refuses_a_non_utf8_body_without_leaking_the_secret() -> None:
    with pytest.raises(ValueError) as info:
        sign(STANDARD, b"\xff", NOW, MSG_ID)
    assert SECRET not in str(info.value)


def test_secrets_do_not_appear_in_reprs() -> None:
    for auth in (STANDARD, HMAC, HEADER, QUERY):
        secret = auth.secrets[0].get_secret_value()
        assert secret not in repr(auth) and secret not in str(auth)


# --- redaction ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("query", "expected"), [
    ("token=s3cret", f"token={REDACTED}"),
    ("a=1&token=s3cret&b=x%20y", f"a=1&token={REDACTED}&b=x%20y"),
    ("TOKEN=s3cret&Token=again", f"TOKEN={REDACTED}&Token={REDACTED}"),
    ("%74oken=s3cret", f"%74oken={REDACTED}"),
    ("token=a%3Db&token=c", f"token={REDACTED}&token={REDACTED}"),
    # Credential-like names are redacted by the words they are made of, not only `token`.
    ("tokens=s3cret&my_token=s3cret&b=token", f"tokens={REDACTED}&my_token={REDACTED}&b=token"),
    ("access_token=s3cret&accessToken=s3cret&%61ccess_token=s3cret",
     f"access_token={REDACTED}&accessToken={REDACTED}&%61ccess_token={REDACTED}"),
    ("api_key=s3cret&apiKey=s3cret&apikey=s3cret&api-key=s3cret&key=s3cret",
     f"api_key={REDACTED}&apiKey={REDACTED}&apikey={REDACTED}&api-key={REDACTED}&key={REDACTED}"),
    ("X-Amz-Signature=s3cret&X-Amz-Credential=s3cret&sig=s3cret&signature=s3cret",
     f"X-Amz-Signature={REDACTED}&X-Amz-Credential={REDACTED}&sig={REDACTED}"
     f"&signature={REDACTED}"),
    ("client_secret=s3cret&password=s3cret&passwd=s3cret&auth=s3cret&code=s3cret",
     f"client_secret={REDACTED}&password={REDACTED}&passwd={REDACTED}&auth={REDACTED}"
     f"&code={REDACTED}"),
    ("page=2&keyword=keep&monkey=keep&author=keep&state=keep",
     "page=2&keyword=keep&monkey=keep&author=keep&state=keep"),
    ("a=1&&b&c=", "a=1&&b&c="),
    ("", ""),
])
def test_redact_query(query: str, expected: str) -> None:
    assert redact_query(query) == expected


@pytest.mark.parametrize(("url", "expected"), [
    ("https://h.example/webhooks/alfred?token=s3cret",
     f"https://h.example/webhooks/alfred?token={REDACTED}"),
    ("http://h:8000/w/a?x=1&Token=s3cret#frag", f"http://h:8000/w/a?x=1&Token={REDACTED}#frag"),
    ("http://h/w/a#token=not-a-query", "http://h/w/a#token=not-a-query"),
    ("http://h/w/a", "http://h/w/a"),
    ("http://[::1/w?token=s3cret", f"http://[::1/w?token={REDACTED}"),
])
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert "s3cret" not in redact_url(url)


# --- headers kept with an event ----------------------------------------------------------------

def test_strip_secret_headers() -> None:
    headers = {
        "content-type": "application/json",
        "user-agent": "alfred/1.0",
        "webhook-id": MSG_ID,
        "webhook-timestamp": "1",
        "webhook-signature": "v1,abc",
        "authorization": "Bearer x",
        "Cookie": "session=1",
        "x-api-key": "k",
        "x-tagshelfapi-key": "k",
        "x-filecheck-signature": "sig",
        "proxy-authorization": "Basic x",
        "x-hook-token": "fc-token",
    }
    kept = strip_secret_headers(headers, HEADER)
    assert kept == {
        "content-type": "application/json",
        "user-agent": "alfred/1.0",
        "webhook-id": MSG_ID,
        "webhook-timestamp": "1",
    }
    # Another source's token header is dropped too: its name says it holds a token.
    assert "x-hook-token" not in strip_secret_headers(headers, QUERY)
    custom = settings("hmac_sha256", "s", header="X-Custom-Sig")
    assert strip_secret_headers({"x-custom-sig": "v", "a": "b"}, custom) == {"a": "b"}


def test_secret_header_names_are_lower_case() -> None:
    required = {"authorization", "cookie", "webhook-signature", "x-filecheck-signature",
                "x-api-key", "x-tagshelfapi-key", "proxy-authorization"}
    assert required <= SECRET_HEADERS
    assert all(name == name.lower() for name in SECRET_HEADERS)


# --- Svix header names and Ed25519 (v1a) signatures --------------------------------------------

SEED = b"hookline-test-ed25519-seed-00000"  # 32 bytes
OTHER_SEED = b"hookline-other-ed25519-seed-0000"


def keypair(seed: bytes = SEED) -> tuple[Ed25519PrivateKey, str]:
    private = Ed25519PrivateKey.from_private_bytes(seed)
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, "whpk_" + base64.b64encode(raw).decode()


def v1a(private: Ed25519PrivateKey, body: bytes = BODY, stamp: float = NOW,
        msg_id: str = MSG_ID) -> str:
    signed = f"{msg_id}.{int(stamp)}.".encode() + body
    return "v1a," + base64.b64encode(private.sign(signed)).decode()


def test_svix_header_names_carry_the_same_scheme() -> None:
    headers = {name.replace("webhook-", "svix-"): value
               for name, value in standard_headers().items()}
    assert check(STANDARD, headers)
    assert not check(settings("standard_webhooks", OTHER_SECRET), headers)
    headers["svix-timestamp"] = str(int(NOW) - 301)
    assert not check(STANDARD, headers)


def test_a_partial_webhook_set_does_not_borrow_svix_headers() -> None:
    # The family is chosen by its signature header, as the Svix libraries do.
    headers = {name.replace("webhook-", "svix-"): value
               for name, value in standard_headers().items()}
    headers["webhook-signature"] = "v1,bm9wZQ=="
    assert not check(STANDARD, headers)


def test_v1a_verifies_against_a_public_key() -> None:
    private, public = keypair()
    auth = settings("standard_webhooks", public)
    headers = {**standard_headers(), "webhook-signature": v1a(private)}
    assert check(auth, headers)
    assert not check(auth, headers, body=BODY + b" ")
    assert not check(auth, headers, now=NOW + 301)
    assert not check(settings("standard_webhooks", keypair(OTHER_SEED)[1]), headers)
    # A v1a signature is never taken for a v1 one, nor checked against an HMAC secret.
    assert not check(STANDARD, headers)
    headers["webhook-signature"] = v1a(private).replace("v1a,", "v1,")
    assert not check(auth, headers)


def test_v1a_rotation_and_mixed_sources() -> None:
    old_private, old_public = keypair(OTHER_SEED)
    private, public = keypair()
    auth = settings("standard_webhooks", SECRET, old_public, public)
    for signature in (v1a(private), v1a(old_private), standard_headers()["webhook-signature"],
                      f"v1,{base64.b64encode(b'x' * 32).decode()} {v1a(private)}"):
        assert check(auth, {**standard_headers(), "webhook-signature": signature}), signature


@pytest.mark.parametrize("signature", [
    "v1a,", "v1a,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=", "v1a,%%%", "v1a",
    "v1a," + base64.b64encode(b"x" * 64).decode(),
])
def test_v1a_malformed_fails_without_raising(signature: str) -> None:
    auth = settings("standard_webhooks", keypair()[1])
    assert check(auth, {**standard_headers(), "webhook-signature": signature}) is False


def test_v1a_known_answer_from_the_reference_go_library() -> None:
    # libraries/go/webhook_asymmetric_test.go TestAsymmetricWebhookSign (standard-webhooks#253).
    private = Ed25519PrivateKey.from_private_bytes(
        base64.b64decode("VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk="))
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    auth = settings("standard_webhooks", "whpk_" + base64.b64encode(raw).decode(),
                    tolerance=2_000_000_000)
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
        "webhook-signature": "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqt"
                             "aiHeYGb7KaaBRdM5WqyeFiL8Ag==",
    }
    assert check(auth, headers, body=b'{"test": 2432232314}')


def test_sign_skips_public_keys_and_refuses_when_only_keys() -> None:
    public = keypair()[1]
    headers, _ = sign(settings("standard_webhooks", public, SECRET), BODY, NOW, MSG_ID)
    assert headers["webhook-signature"] == standard_headers()["webhook-signature"]
    with pytest.raises(ValueError, match="public keys"):
        sign(settings("standard_webhooks", public), BODY, NOW, MSG_ID)


def test_svix_signature_is_a_secret_header() -> None:
    assert "svix-signature" in SECRET_HEADERS


@pytest.mark.parametrize("name", [
    "X-Acme-Token", "x-partner-signature", "x-hub-signature", "x-csrftoken", "set-cookie",
    "x-amz-security-token", "x-client-secret", "x-auth", "x-apikey", "x-api_key", "api-key",
    "x-password", "x-session-id", "x-access-key", "x-credentials", "x-private-key",
])
def test_headers_named_like_credentials_are_not_kept(name: str) -> None:
    kept = strip_secret_headers({name: "v", "user-agent": "u", "webhook-id": "m"}, QUERY)
    assert kept == {"user-agent": "u", "webhook-id": "m"}


def test_a_source_may_name_more_secret_headers() -> None:
    headers = {"x-partner-key": "k", "x-trace": "t", "content-type": "application/json"}
    assert strip_secret_headers(headers, QUERY) == headers
    kept = strip_secret_headers(headers, QUERY, extra=("x-partner-key",))
    assert kept == {"x-trace": "t", "content-type": "application/json"}


def test_a_sender_cannot_store_headers_hookline_uses_for_its_own_events() -> None:
    # `x-hookline-recorded: 1` marks an event hookline recorded itself (a polled outcome); a
    # sender's copy would let its event jump the lifecycle's order and hide as an anomaly.
    headers = {"x-hookline-recorded": "1", "hookline-dropped-headers": "x", "user-agent": "u"}
    assert strip_secret_headers(headers, QUERY) == {"user-agent": "u"}
    assert strip_headers(headers, dropped_headers(QUERY)) == {"user-agent": "u"}
