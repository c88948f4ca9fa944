"""Security properties across the whole server: secrets never leave, the API refuses strangers,
credential checks are constant-time, and `forward` goes only where it is allowed.

The secret leak test runs a real `hookline serve --log-format json` with a secret for every auth
scheme, API tokens and handler credentials (inline and through `*_env`), drives it through
successes, every kind of refusal, a credential sent to the wrong source, a failing handler and
replays, and then looks for every secret in everything the server said. test_auth.py proves the
schemes themselves and test_e2e.py that a query token is redacted from the access log; this
file covers the rest of the surface.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.routing import Route

from app import cli
from app.auth import sign, verify
from app.config import AuthSettings, settings_from_mapping
from app.main import create_app
from app.runtime import default_http
from app.worker import WorkerSettings
from handlers import Context, Permanent
from handlers.forward import ForwardHandler, ForwardOptions
from schemas.records import EventRecord

from conftest import FakeClock, base_config, sample, standard_body, standard_headers
from server import Sink, running_server, wait_until

PARTNER_SECRET = "whsec_" + base64.b64encode(b"S3CR3T-partner-current-5a1e").decode()
PARTNER_OLD_SECRET = "whsec_" + base64.b64encode(b"S3CR3T-partner-previous-77b").decode()
ALFRED_TOKEN = "S3CR3T-alfred-query-token-91c4"
FILECHECK_TOKEN = "S3CR3T-filecheck-header-token-2d8e"
HMAC_SECRET = "S3CR3T-filecheck-hmac-key-60fa"
ADMIN_TOKEN = "S3CR3T-api-admin-token-c3b0"
READ_TOKEN = "S3CR3T-api-read-token-4e19"
SLACK_PATH = "S3CR3T-slack-webhook-path-8a27"
DCYCLE_TOKEN = "S3CR3T-dcycle-bearer-token-1f5d"
FORWARD_SECRET = "whsec_" + base64.b64encode(b"S3CR3T-forward-signing-0b9c").decode()
FORWARD_HEADER = "S3CR3T-forward-header-value-e72a"

SECRETS = {
    "partner secret": PARTNER_SECRET, "partner key": PARTNER_SECRET.removeprefix("whsec_"),
    "partner old secret": PARTNER_OLD_SECRET,
    "partner old key": PARTNER_OLD_SECRET.removeprefix("whsec_"),
    "alfred token": ALFRED_TOKEN, "filecheck token": FILECHECK_TOKEN, "hmac secret": HMAC_SECRET,
    "admin token": ADMIN_TOKEN, "read token": READ_TOKEN, "slack path": SLACK_PATH,
    "dcycle token": DCYCLE_TOKEN, "forward secret": FORWARD_SECRET,
    "forward key": FORWARD_SECRET.removeprefix("whsec_"), "forward header": FORWARD_HEADER,
}
ENV = {
    "SEC_PARTNER_SECRETS": f"{PARTNER_OLD_SECRET},{PARTNER_SECRET}",
    "SEC_FILECHECK_TOKEN": FILECHECK_TOKEN,
    "SEC_ADMIN_TOKEN": ADMIN_TOKEN,
    "SEC_DCYCLE_TOKEN": DCYCLE_TOKEN,
    "SEC_FORWARD_SECRET": FORWARD_SECRET,
}


def assert_no_secret(text: str, where: str) -> None:
    leaked = [name for name, secret in SECRETS.items() if secret in text]
    assert not leaked, f"{', '.join(leaked)} found in {where}"


def config_toml(db: Path, slack_url: str, dcycle_url: str, forward_url: str) -> str:
    return f"""
[storage]
url = "sqlite:///{db}"

[worker]
sweep_seconds = 0.2

[[api.tokens]]
name = "ops"
token_env = "SEC_ADMIN_TOKEN"
scopes = ["admin"]

[[api.tokens]]
name = "dashboard"
token = "{READ_TOKEN}"
scopes = ["read"]

[sources.partner]
platform = "standard"
auth = {{ scheme = "standard_webhooks", secrets_env = "SEC_PARTNER_SECRETS" }}

[sources.alfred]
platform = "alfred"
auth = {{ scheme = "query_token", secrets = ["{ALFRED_TOKEN}"] }}

[sources.filecheck]
platform = "filecheck"
auth = {{ scheme = "header_token", header = "X-Hook-Token", secrets_env = "SEC_FILECHECK_TOKEN" }}

[sources.signed]
platform = "filecheck"
auth = {{ scheme = "hmac_sha256", header = "x-filecheck-signature", secrets = ["{HMAC_SECRET}"] }}

[[routes]]
match = "alfred.job.failed"
handler = "ops"

[[routes]]
source = "partner"
match = "file.processing_failed"
handler = "dcycle"

[[routes]]
match = "*"
handler = "out"

[handlers.ops]
use = "slack"
max_attempts = 1
options = {{ webhook_url = "{slack_url}" }}

[handlers.dcycle]
use = "dcycle_retry"
max_attempts = 1
options = {{ base_url = "{dcycle_url}", token_env = "SEC_DCYCLE_TOKEN", organization_id = "org-1" }}

[handlers.out]
use = "forward"
options = {{ url = "{forward_url}", secret_env = "SEC_FORWARD_SECRET", headers = {{ x-forward-key = "{FORWARD_HEADER}" }} }}
"""


class Transcript:
    """Every answer the server gave, as text to search."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.texts: list[str] = []

    def record(self, response: httpx.Response) -> httpx.Response:
        self.texts.append(f"{response.request.method} {response.request.url.path} "
                          f"{response.status_code} {dict(response.headers)} {response.text}")
        return response

    def get(self, path: str, token: str = ADMIN_TOKEN, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"}
        return self.record(httpx.get(self.base + path, headers=headers, timeout=10, **kwargs))

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        headers = {"content-type": "application/json", **headers}
        return self.record(httpx.post(self.base + path, content=body, headers=headers,
                                      timeout=10))


def hmac_hex(body: bytes, secret: str = HMAC_SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def drive(t: Transcript) -> list[str]:
    """Successes, refusals of every kind, misdirected credentials; the stored event ids."""
    now = time.time()
    partner = standard_body()
    alfred = sample("alfred/alfred.job.failed.json")
    filecheck = sample("filecheck/filecheck.job.completed.json")
    accepted = [
        t.post("/webhooks/partner", partner,
               standard_headers(partner, now, "msg_sec_1", PARTNER_SECRET)),
        t.post("/webhooks/partner", standard_body("file.other"),
               standard_headers(standard_body("file.other"), now, "msg_sec_2",
                                PARTNER_OLD_SECRET)),
        t.post(f"/webhooks/alfred?token={ALFRED_TOKEN}", alfred, {}),
        t.post("/webhooks/filecheck", filecheck, {"x-hook-token": FILECHECK_TOKEN}),
        t.post("/webhooks/signed", filecheck,
               {"x-filecheck-signature": "sha256=" + hmac_hex(filecheck)}),
        # Credentials sent where they do not belong must not be stored with the event.
        t.post(f"/webhooks/partner?token={ALFRED_TOKEN}&Token={ALFRED_TOKEN}",
               standard_body("file.misdirected"),
               {**standard_headers(standard_body("file.misdirected"), now, "msg_sec_3",
                                   PARTNER_SECRET),
                "x-hook-token": FILECHECK_TOKEN, "authorization": f"Bearer {ADMIN_TOKEN}",
                "x-filecheck-signature": hmac_hex(b"{}")}),
    ]
    assert [r.status_code for r in accepted] == [202] * len(accepted), [r.text for r in accepted]
    refused = [
        t.post("/webhooks/partner", partner, {}),
        t.post("/webhooks/partner", partner,
               standard_headers(partner, now - 3600, "msg_sec_old", PARTNER_SECRET)),
        t.post("/webhooks/partner", partner,
               {**standard_headers(partner, now, "msg_sec_x", PARTNER_SECRET),
                "webhook-signature": f"v1,{base64.b64encode(b'x' * 32).decode()}"}),
        t.post(f"/webhooks/alfred?token={ALFRED_TOKEN}x", alfred, {}),
        t.post(f"/webhooks/alfred?token={ALFRED_TOKEN[:-1]}", alfred, {}),
        t.post("/webhooks/filecheck", filecheck, {"x-hook-token": FILECHECK_TOKEN + "x"}),
        t.post("/webhooks/signed", filecheck, {"x-filecheck-signature": HMAC_SECRET}),
        t.post("/webhooks/signed", filecheck, {"x-filecheck-signature": hmac_hex(b"other")}),
    ]
    assert {r.status_code for r in refused} == {401}
    invalid = [
        t.post(f"/webhooks/alfred?token={ALFRED_TOKEN}", b"{not json", {}),
        t.post(f"/webhooks/alfred?token={ALFRED_TOKEN}", b'{"event_id": 1}', {}),
        t.post(f"/webhooks/nowhere?token={ALFRED_TOKEN}", alfred, {}),
    ]
    assert [r.status_code for r in invalid] == [400, 422, 404]
    duplicate = t.post("/webhooks/filecheck", filecheck, {"x-hook-token": FILECHECK_TOKEN})
    assert duplicate.status_code == 200
    return [r.json()["id"] for r in accepted]


def dead_ops(t: Transcript) -> int:
    page = t.get("/api/deliveries", params={"status": "dead", "handler": "ops"}).json()
    return len(page["items"])


def test_no_secret_leaves_a_real_server(tmp_path: Path) -> None:
    with Sink([500] * 20) as slack, Sink() as dcycle, Sink() as forward:
        slack_url = slack.url.removesuffix("/hook") + f"/services/T0/B0/{SLACK_PATH}"
        config = tmp_path / "hookline.toml"
        config.write_text(config_toml(tmp_path / "sec.db", slack_url,
                                      dcycle.url.removesuffix("/hook"), forward.url))
        with running_server(["--config", str(config), "--log-format", "json"], cwd=tmp_path,
                            env=ENV) as server:
            t = Transcript(server.url)
            ids = drive(t)
            wait_until(lambda: dead_ops(t) == 1 and forward.count() >= len(ids))
            replayed = t.record(httpx.post(
                f"{server.url}/api/events/{ids[2]}/replay", json={},
                headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10))
            assert replayed.status_code == 202
            t.record(httpx.post(f"{server.url}/api/replay", json={"type": "*", "dry_run": True},
                                headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10))
            t.record(httpx.post(f"{server.url}/api/replay", json={"type": "*", "dry_run": True},
                                headers={"authorization": f"Bearer {READ_TOKEN}"}, timeout=10))
            wait_until(lambda: dead_ops(t) == 2 and dcycle.count() >= 1)
            for event_id in ids:
                record = t.get(f"/api/events/{event_id}", token=READ_TOKEN).json()
                assert record["deliveries"], record
                assert t.get(f"/api/events/{event_id}/raw").status_code == 200
            misdirected = t.get(f"/api/events/{ids[-1]}").json()
            assert "x-hook-token" not in misdirected["headers"]
            assert misdirected["query"] == "token=REDACTED&Token=REDACTED"
            for path in ("/metrics", "/openapi.json", "/api/stats", "/api/events",
                         "/api/deliveries", "/api/whoami", "/healthz", "/readyz", "/"):
                assert t.get(path).status_code == 200, path
            t.get("/api/events", token="wrong")
        # The failing handler really failed, and its error is on record.
        lines = [json.loads(line) for line in server.output.splitlines() if line.startswith("{")]
        dead = [line for line in lines if line["message"] == "delivery dead"]
        assert {line["handler"] for line in dead} >= {"ops"}
        assert any("HTTP 500" in str(line["error"]) for line in dead)
        assert [line["status"] for line in lines
                if line["logger"] == "hookline.access"].count(401) >= 9
        # The upstreams did get their credentials: the absence below is redaction, not silence.
        assert slack.count() == 2
        assert dcycle.requests[0][0]["authorization"] == f"Bearer {DCYCLE_TOKEN}"
        assert forward.requests[0][0]["x-forward-key"] == FORWARD_HEADER
    for text in t.texts:
        assert_no_secret(text, text[:80])
    assert_no_secret(server.output, "the server's log")


# check-config.

BAD_CONFIGS = {
    "bad scheme and port": f"""
[server]
port = 700000
[sources.alfred]
platform = "alfred"
auth = {{ scheme = "query-token", secrets = ["{ALFRED_TOKEN}"] }}
""",
    "standard secret not base64": f"""
[sources.partner]
platform = "standard"
auth = {{ scheme = "standard_webhooks", secrets = ["{ALFRED_TOKEN}!"] }}
""",
    "token with unknown key": f"""
[[api.tokens]]
name = "ops"
token = "{ADMIN_TOKEN}"
scopes = ["everything"]
secret = "{READ_TOKEN}"
""",
    "handler options wrong": f"""
[handlers.ops]
use = "slack"
options = {{ webhook_url = "https://hooks.example/{SLACK_PATH}", timeout = -1, extra = "{HMAC_SECRET}" }}
[handlers.dcycle]
use = "dcycle_retry"
options = {{ token = "{DCYCLE_TOKEN}", base_url = "ftp://{FORWARD_HEADER}" }}
[handlers.out]
use = "forward"
options = {{ url = "mailto:{FORWARD_HEADER}", secret = "{FORWARD_SECRET}", allowed_hosts = ["receiver.example/"] }}
""",
    "env and inline both": f"""
[sources.filecheck]
platform = "filecheck"
auth = {{ scheme = "header_token", header = "x-hook-token", secrets = ["{FILECHECK_TOKEN}"], secrets_env = "SEC_FILECHECK_TOKEN" }}
""",
    "not toml": f'[sources.alfred]\nauth = {{ scheme = "query_token", secrets = ["{ALFRED_TOKEN}" }}\n',
}


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_check_config_names_problems_without_printing_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    name: str,
) -> None:
    for variable, value in ENV.items():
        monkeypatch.setenv(variable, value)
    config = tmp_path / "bad.toml"
    config.write_text(BAD_CONFIGS[name])
    assert cli.main(["check-config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out.strip(), err
    assert_no_secret(out + err, f"check-config output for {name}")


# Every /api route refuses strangers.

API_TOKENS = {"tokens": [{"name": "ops", "token": ADMIN_TOKEN, "scopes": ["admin"]},
                         {"name": "dashboard", "token": READ_TOKEN, "scopes": ["read"]}]}


@pytest.fixture
async def guarded(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Starlette]:
    config = base_config(tmp_path / "guarded.db")
    config["api"] = API_TOKENS
    application = create_app(settings_from_mapping(config, {}), clock=clock,
                             worker_settings=WorkerSettings(background=False))
    async with application.router.lifespan_context(application):
        yield application


def api_routes(app: Starlette) -> list[tuple[str, str]]:
    """Every (method, path) the app serves under /api, with path parameters filled in."""
    found = []
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith("/api/"):
            path = route.path.replace("{event_id}", "evt_x").replace("{job_id}", "j")
            for method in sorted((route.methods or set()) - {"HEAD"}):
                found.append((method, path.replace("{file_id}", "f")))
    assert len(found) >= 11
    return found


WRONG_CREDENTIALS: list[dict[str, str]] = [
    {},
    {"authorization": "Bearer"},
    {"authorization": "Bearer "},
    {"authorization": f"Bearer {ADMIN_TOKEN}x"},
    {"authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
    {"authorization": f"Bearer {ADMIN_TOKEN.upper()}"},
    {"authorization": f"Bearer  {ADMIN_TOKEN}"},
    {"authorization": f"Basic {ADMIN_TOKEN}"},
    {"authorization": ADMIN_TOKEN},
    {"authorization": f"Token {ADMIN_TOKEN}"},
    {"x-api-key": ADMIN_TOKEN},
    {"cookie": f"token={ADMIN_TOKEN}"},
]


async def test_every_api_route_refuses_wrong_credentials_and_scopes(guarded: Starlette) -> None:
    transport = httpx.ASGITransport(app=guarded)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        for method, path in api_routes(guarded):
            for headers in WRONG_CREDENTIALS:
                response = await client.request(method, path, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.json()["error"]["code"] == "unauthorized"
                assert response.headers["www-authenticate"] == "Bearer"
            for query in ({"token": ADMIN_TOKEN}, {"access_token": ADMIN_TOKEN}):
                response = await client.request(method, path, params=query)
                assert response.status_code == 401, (method, path, query)
            if path == "/api/stream":
                continue  # a tail the token opens never ends; test_read_api covers it
            as_reader = await client.request(method, path, headers={
                "authorization": f"Bearer {READ_TOKEN}"})
            if method == "POST":
                assert as_reader.status_code == 403, (path, as_reader.text)
                assert as_reader.json()["error"]["code"] == "forbidden"
            else:
                assert as_reader.status_code in (200, 404), (path, as_reader.text)
            if method == "POST":
                as_admin = await client.request(method, path, json={"type": "*", "dry_run": True},
                                                headers={
                    "authorization": f"bearer {ADMIN_TOKEN}"})
                assert as_admin.status_code in (200, 404), (path, as_admin.text)


async def test_no_tokens_off_loopback_means_no_api(tmp_path: Path, clock: FakeClock) -> None:
    config = base_config(tmp_path / "public.db")
    del config["sources"]["open"]  # auth none is refused off loopback
    config["server"] = {"host": "0.0.0.0"}
    application = create_app(settings_from_mapping(config, {}), clock=clock,
                             worker_settings=WorkerSettings(background=False))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            for method, path in api_routes(application):
                for headers in ({}, {"authorization": "Bearer anything"}):
                    response = await client.request(method, path, headers=headers)
                    assert response.status_code == 401, (method, path)


# The timing-safe compare is what decides.


class Compares:
    """A stand-in for hmac.compare_digest that records its calls and answers `verdict`."""

    def __init__(self, verdict: bool) -> None:
        self.verdict = verdict
        self.calls: list[tuple[bytes, bytes]] = []

    def __call__(self, a: Any, b: Any) -> bool:
        self.calls.append((bytes(a), bytes(b)))
        return self.verdict


def install(monkeypatch: pytest.MonkeyPatch, verdict: bool) -> Compares:
    compares = Compares(verdict)
    monkeypatch.setattr(hmac, "compare_digest", compares)
    return compares


NOW = 1_790_000_000.0
BODY = standard_body()
SCHEMES = {
    "standard_webhooks": AuthSettings(scheme="standard_webhooks", secrets=[
        SecretStr(PARTNER_OLD_SECRET), SecretStr(PARTNER_SECRET)]),
    "hmac_sha256": AuthSettings(scheme="hmac_sha256", header="x-sig",
                                secrets=[SecretStr("old-key"), SecretStr(HMAC_SECRET)]),
    "header_token": AuthSettings(scheme="header_token", header="x-hook-token",
                                 secrets=[SecretStr("old-token"), SecretStr(FILECHECK_TOKEN)]),
    "query_token": AuthSettings(scheme="query_token",
                                secrets=[SecretStr("old-token"), SecretStr(ALFRED_TOKEN)]),
}


def forged(scheme: str, auth: AuthSettings) -> tuple[dict[str, str], dict[str, str]]:
    """Well-formed credentials signed with no configured secret."""
    headers, query = sign(auth, BODY, NOW, "msg_forged")
    if scheme == "standard_webhooks":
        headers["webhook-signature"] = "v1," + base64.b64encode(b"f" * 32).decode()
    elif scheme == "hmac_sha256":
        headers["x-sig"] = "0" * 64
    elif scheme == "header_token":
        headers["x-hook-token"] = "forged-token"
    else:
        query["token"] = "forged-token"
    return headers, query


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_decides_with_compare_digest_against_every_secret(
    monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    auth = SCHEMES[scheme]
    headers, query = sign(auth, BODY, NOW, "msg_real")  # signed with the first (old) secret
    assert verify(auth, headers, query, BODY, NOW)
    refusing = install(monkeypatch, False)
    assert not verify(auth, headers, query, BODY, NOW)
    # Every configured secret is compared, even after the first one matched.
    assert len(refusing.calls) == len(auth.secrets)
    forged_headers, forged_query = forged(scheme, auth)
    monkeypatch.undo()
    assert not verify(auth, forged_headers, forged_query, BODY, NOW)
    install(monkeypatch, True)
    assert verify(auth, forged_headers, forged_query, BODY, NOW)


async def test_api_tokens_are_decided_by_compare_digest(
    monkeypatch: pytest.MonkeyPatch, guarded: Starlette
) -> None:
    transport = httpx.ASGITransport(app=guarded)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        real = {"authorization": f"Bearer {READ_TOKEN}"}
        wrong = {"authorization": "Bearer not-a-token-at-all"}
        assert (await client.get("/api/whoami", headers=real)).status_code == 200
        refusing = install(monkeypatch, False)
        assert (await client.get("/api/whoami", headers=real)).status_code == 401
        assert len(refusing.calls) == len(API_TOKENS["tokens"])
        # Digests are compared, never the tokens: 32 bytes whatever a token's length.
        read_digest = hashlib.sha256(READ_TOKEN.encode()).digest()
        assert all(presented == read_digest for _, presented in refusing.calls)
        assert {hashlib.sha256(t["token"].encode()).digest()
                for t in API_TOKENS["tokens"]} == {configured for configured, _ in refusing.calls}
        monkeypatch.undo()
        assert (await client.get("/api/whoami", headers=wrong)).status_code == 401
        install(monkeypatch, True)
        assert (await client.get("/api/whoami", headers=wrong)).status_code == 200


def test_api_token_match_compares_fixed_size_digests_of_every_token(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.api import matching_token
    from app.config import ApiToken

    tokens = [ApiToken(name=name, token=SecretStr(value)) for name, value in (
        ("short", "s"), ("long", "S3CR3T-" + "x" * 200), ("mid", READ_TOKEN))]
    assert matching_token(tokens, READ_TOKEN) is tokens[2]
    assert matching_token(tokens, "s") is tokens[0]
    for wrong in ("", "S", READ_TOKEN[:-1], READ_TOKEN + "x", "y" * 5000):
        assert matching_token(tokens, wrong) is None
    compares = install(monkeypatch, False)
    for presented in ("", "s", "x" * 5000):
        compares.calls.clear()
        assert matching_token(tokens, presented) is None
        # Every token, in order, with both sides 32 bytes: no early exit, no length to time.
        assert len(compares.calls) == len(tokens)
        assert {(len(a), len(b)) for a, b in compares.calls} == {(32, 32)}
        assert [a for a, _ in compares.calls] == [
            hashlib.sha256(t.token.get_secret_value().encode()).digest() for t in tokens]
    monkeypatch.undo()
    # The compare reads no token's length: nothing in it could stop early on one.
    import inspect

    from app import api
    source = inspect.getsource(api.matching_token) + inspect.getsource(api._digest)
    assert "len(" not in source and "compare_digest" in source


# forward goes only where it is allowed.


class Redirector:
    """A local server that answers every POST with a redirect (`status`) to `location`."""

    def __init__(self, location: str) -> None:
        outer = self
        self.hits = 0
        self.status = 307

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.hits += 1
                self.send_response(outer.status)
                self.send_header("location", location)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def forward_event() -> EventRecord:
    return EventRecord(id="evt_sec_1", source="partner", type="file.processing_failed",
                       upstream_id="m1", status="pending", received_at=NOW, occurred_at=None,
                       payload=json.loads(BODY), body=BODY)


async def run_forward(http: httpx.AsyncClient, options: dict[str, Any]) -> None:
    handler = ForwardHandler()
    ctx = Context(http=http, options=ForwardOptions.model_validate(options),
                  log=logging.getLogger("hookline.handler.forward"), clock=FakeClock(),
                  handler_name="out")
    await handler.handle(forward_event(), ctx)


@pytest.mark.parametrize("follow", [False, True], ids=["runtime client", "following client"])
async def test_forward_never_follows_a_redirect_to_another_host(follow: bool) -> None:
    with Sink() as elsewhere:
        target = elsewhere.url.replace("127.0.0.1", "localhost")
        with Redirector(target) as redirector:
            options = {"url": f"http://127.0.0.1:{redirector.port}/hook",
                       "allowed_hosts": ["127.0.0.1"]}
            http = (httpx.AsyncClient(follow_redirects=True, trust_env=False) if follow
                    else default_http())
            async with http:
                for status in (301, 302, 303, 307, 308):
                    redirector.status = status
                    with pytest.raises(Permanent, match=f"HTTP {status}"):
                        await run_forward(http, options)
        assert redirector.hits == 5
        assert elsewhere.count() == 0


ALLOWED_CASES: list[tuple[list[str], str, bool]] = [
    (["receiver.example"], "https://receiver.example/h", True),
    (["receiver.example"], "https://RECEIVER.Example:8443/h", True),
    (["Receiver.Example"], "http://receiver.example/h", True),
    (["receiver.example"], "https://evil.receiver.example/h", False),
    (["receiver.example"], "https://receiver.example.evil.test/h", False),
    (["receiver.example"], "https://receiver.examplex/h", False),
    (["receiver.example"], "https://receiver.example@evil.test/h", False),
    (["receiver.example"], "https://evil.test/receiver.example", False),
    (["receiver.example"], "https://evil.test/?receiver.example", False),
    (["receiver.example:8443"], "https://receiver.example:8443/h", True),
    (["receiver.example:8443"], "https://receiver.example/h", False),
    (["receiver.example:8443"], "https://receiver.example:9443/h", False),
    (["receiver.example:443"], "https://receiver.example/h", True),
    (["receiver.example:80"], "https://receiver.example/h", False),
    (["[::1]:8080"], "http://[::1]:8080/h", True),
    (["[::1]:8080"], "http://[::1]:8081/h", False),
    (["xn--bcher-kva.example"], "https://bücher.example/h", True),
    ([], "https://receiver.example/h", False),
]


@pytest.mark.parametrize(("allowed", "url", "ok"), ALLOWED_CASES)
async def test_forward_allowed_hosts(allowed: list[str], url: str, ok: bool) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        if ok:
            await run_forward(http, {"url": url, "allowed_hosts": allowed})
            assert len(seen) == 1
        else:
            with pytest.raises(Permanent, match="allowed_hosts"):
                await run_forward(http, {"url": url, "allowed_hosts": allowed})
            assert seen == []


@pytest.mark.parametrize("entry", ["https://receiver.example", "receiver.example/h", "",
                                   "user@receiver.example", "receiver.example:99999", "::1",
                                   "receiver.example:"])
def test_forward_refuses_allowed_host_entries_it_cannot_read(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed_hosts"):
        ForwardOptions.model_validate({"url": "https://receiver.example/h",
                                       "allowed_hosts": [entry]})



# Credentials in a query string are redacted wherever the URL is logged or stored.

CREDENTIAL_QUERY = (
    "token=alfred-token&access_token=S3CR3T-q1&api_key=S3CR3T-q2&apiKey=S3CR3T-q3"
    "&X-Amz-Signature=S3CR3T-q4&sig=S3CR3T-q5&client_secret=S3CR3T-q6&password=S3CR3T-q7"
    "&code=S3CR3T-q8&auth=S3CR3T-q9&page=2&keyword=kept"
)
REDACTED_QUERY = (
    "token=REDACTED&access_token=REDACTED&api_key=REDACTED&apiKey=REDACTED"
    "&X-Amz-Signature=REDACTED&sig=REDACTED&client_secret=REDACTED&password=REDACTED"
    "&code=REDACTED&auth=REDACTED&page=2&keyword=kept"
)


async def test_credential_query_keys_never_reach_the_access_log_or_the_store(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hookline.access")
    body = sample("alfred/alfred.job.failed.json")
    accepted = await client.post(f"/webhooks/alfred?{CREDENTIAL_QUERY}", content=body,
                                 headers={"content-type": "application/json"})
    assert accepted.status_code == 202, accepted.text
    listed = await client.get(f"/api/events?{CREDENTIAL_QUERY}")
    stored = (await client.get(f"/api/events/{accepted.json()['id']}")).json()
    assert stored["query"] == REDACTED_QUERY
    access = [record for record in caplog.records if record.name == "hookline.access"]
    paths = [record.fields["path"] for record in access]  # type: ignore[attr-defined]
    assert paths[0] == f"/webhooks/alfred?{REDACTED_QUERY}"
    assert paths[1] == f"/api/events?{REDACTED_QUERY}"
    assert listed.status_code in (200, 400)
    assert "S3CR3T" not in caplog.text + " ".join(paths)
    assert "alfred-token" not in caplog.text + " ".join(paths)


# Options that become headers are checked when the config loads; a failed request is recorded
# by its exception's type and host, never by its message.

NEWLINE_SECRET = "S3CR3T-newline-token-7c1d"


def handler_problems(handlers: dict[str, Any], environ: dict[str, str]) -> list[str]:
    from handlers.registry import HandlerLoadError, load_handlers

    settings = settings_from_mapping({"handlers": handlers}, environ)
    with pytest.raises(HandlerLoadError) as info:
        load_handlers(settings.handlers)
    return info.value.problems


def test_options_that_become_headers_are_checked_when_the_config_loads() -> None:
    secret = NEWLINE_SECRET
    upstream = {"base_url": "https://platform.example", "organization_id": "org-1",
                "store_id": "store-1"}
    handlers = {
        "out": {"use": "forward", "options": {"url": "https://r.example/h", "headers": {
            "x-forward-key": f"{secret}\n", "x ok": "v", "x-nul": f"a\x00{secret}",
            "x-padded": f" {secret}", "x-fine": "a b\tc"}}},
        "dc": {"use": "dcycle_retry", "options": {
            "base_url": "https://api.dcycle.example", "token_env": "DC_TOKEN",
            "organization_id": "org\r\nx-injected: 1", "partner": "p"}},
        "ai": {"use": "aitronos_retry", "options": {**upstream, "token_env": "AI_TOKEN"}},
        "fc": {"use": "filecheck_resubmit", "options": {
            "base_url": "https://api.filecheck.example\n", "token": f"{secret} "}},
        "al": {"use": "alfred_resubmit", "options": {
            "base_url": "https://alfred.example", "api_key": f"{secret}\x00"}},
        "ops": {"use": "slack", "options": {"webhook_url_env": "SLACK_URL"}},
    }
    environ = {"DC_TOKEN": f"{secret}\n", "AI_TOKEN": f"\t{secret}",
               "SLACK_URL": f"https://hooks.slack.example/services/{secret}\n"}
    found = handler_problems(handlers, environ)
    keys = sorted(problem.split(":", 1)[0] for problem in found)
    assert keys == sorted([
        "handlers.out.options.headers.x-forward-key",
        "handlers.out.options.headers.x ok.[key]",
        "handlers.out.options.headers.x-nul",
        "handlers.out.options.headers.x-padded",
        "handlers.dc.options.token",
        "handlers.dc.options.organization_id",
        "handlers.ai.options.token",
        "handlers.fc.options.base_url",
        "handlers.fc.options.token",
        "handlers.al.options.api_key",
        "handlers.ops.options.webhook_url",
    ]), found
    assert all(secret not in problem and "\n" not in problem for problem in found), found
    assert any("no line breaks" in problem for problem in found)
    assert any("leading or trailing whitespace" in problem for problem in found)


def test_check_config_reports_a_token_with_a_newline_by_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SEC_DCYCLE_TOKEN", f"{NEWLINE_SECRET}\n")
    config = tmp_path / "hookline.toml"
    config.write_text('[handlers.dcycle]\nuse = "dcycle_retry"\noptions = { token_env = '
                      '"SEC_DCYCLE_TOKEN", organization_id = "org-1" }\n')
    assert cli.main(["check-config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("handlers.dcycle.options.token: "), out
    assert NEWLINE_SECRET not in out + err


class SendsKeyHeader:
    """A plugin that sends its `key` option as a header without checking it, as a third-party
    handler may: the HTTP library refuses the request with an error that quotes the value."""

    name = "sends_key"

    async def handle(self, event: Any, ctx: Context) -> None:
        response = await ctx.http.post(ctx.options["url"], content=b"{}",
                                       headers={"x-key": ctx.options["key"]})
        response.raise_for_status()


async def test_a_transport_failure_records_no_request_secret(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with Sink() as sink:
        config = base_config(tmp_path / "leak.db")
        config["routes"] = [{"match": "*", "handler": "plugin"}]
        config["handlers"] = {"plugin": {"use": "test_security:SendsKeyHeader", "options": {
            "url": sink.url, "key_env": "PLUGIN_KEY"}}}
        settings = settings_from_mapping(config, {"PLUGIN_KEY": f"{NEWLINE_SECRET}\n"})
        application = create_app(settings, clock=clock,
                                 worker_settings=WorkerSettings(background=False))
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                body = standard_body()
                posted = await client.post("/webhooks/partner", content=body,
                                           headers=standard_headers(body, clock.now(), "m1"))
                assert posted.status_code == 202
                await application.state.runtime.worker.run_once()
                event = await client.get(f"/api/events/{posted.json()['id']}")
                pending = await client.get("/api/deliveries", params={"status": "pending"})
        assert sink.requests == []  # the request never left: the header was refused
    record = event.json()
    [delivery] = record["deliveries"]
    assert delivery["last_error"] == "LocalProtocolError calling 127.0.0.1", record
    assert [a["error"] for a in delivery["attempt_log"]] == [delivery["last_error"]]
    said = event.text + pending.text + caplog.text + " ".join(
        str(getattr(r, "fields", "")) for r in caplog.records)
    assert "LocalProtocolError calling 127.0.0.1" in said
    assert NEWLINE_SECRET not in said


async def test_forward_and_upstream_transport_errors_name_type_and_host_only() -> None:
    from app.worker import classify
    from handlers.upstream import Call, send

    request = httpx.Request("POST", f"https://h.example/x?token={NEWLINE_SECRET}",
                            headers={"authorization": f"Bearer {NEWLINE_SECRET}"})
    refused = httpx.LocalProtocolError(f"Illegal header value b'{NEWLINE_SECRET}\\n'",
                                       request=request)
    assert classify(refused).error == "LocalProtocolError calling h.example"
    assert classify(httpx.InvalidURL(f"bad {NEWLINE_SECRET}")).error == "InvalidURL"
    assert classify(httpx.ConnectError(NEWLINE_SECRET)).error == "ConnectError"

    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused {request.headers['authorization']}", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(fail)) as http:
        ctx = Context(http=http, options={}, log=logging.getLogger("t"), clock=FakeClock(),
                      handler_name="t")
        call = Call("GET", "https://up.example/v1", {"authorization": NEWLINE_SECRET}, 5)
        with pytest.raises(Exception) as info:
            await send(ctx, "https://up.example", call)
    assert str(info.value) == "ConnectError calling up.example"
    assert info.value.__cause__ is None and info.value.__suppress_context__
