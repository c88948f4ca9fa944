"""POST /webhooks/{source} through the real ASGI app: every row of the contract's table."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import settings_from_mapping
from app.main import create_app
from conftest import (
    OLD_STANDARD_SECRET,
    FakeClock,
    sample,
    standard_body,
    standard_headers,
)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], list)
    return body["error"]


async def post_standard(
    client: httpx.AsyncClient, clock: FakeClock, body: bytes | None = None, msg_id: str = "msg_1"
) -> httpx.Response:
    body = standard_body() if body is None else body
    headers = standard_headers(body, clock.now(), msg_id)
    return await client.post("/webhooks/partner", content=body, headers=headers)


async def test_new_event_is_stored_and_answered_202(client: httpx.AsyncClient, clock: FakeClock) -> None:
    response = await post_standard(client, clock)
    assert response.status_code == 202
    body = response.json()
    assert body["type"] == "file.processing_failed"
    assert body["duplicate"] is False
    assert body["id"].startswith("evt_")

    stored = (await client.get(f"/api/events/{body['id']}")).json()
    assert stored["source"] == "partner"
    assert stored["upstream_id"] == "msg_1"
    assert stored["file_id"] == "11111111-1111-1111-1111-111111111111"
    assert stored["payload"]["data"]["platform"] == "dcycle"
    assert stored["received_at"] == clock.now()
    assert "webhook-signature" not in stored["headers"]
    assert stored["headers"]["webhook-id"] == "msg_1"


async def test_duplicate_answers_200_with_first_id(client: httpx.AsyncClient, clock: FakeClock) -> None:
    first = (await post_standard(client, clock)).json()
    again = await post_standard(client, clock)
    assert again.status_code == 200
    assert again.json() == {"id": first["id"], "duplicate": True}
    listing = (await client.get("/api/events")).json()
    assert [item["id"] for item in listing["items"]] == [first["id"]]


async def test_fifty_concurrent_posts_of_one_id_store_one(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    responses = await asyncio.gather(*(post_standard(client, clock) for _ in range(50)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 49 + [202]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    listing = (await client.get("/api/events", params={"limit": 100})).json()
    assert len(listing["items"]) == 1


async def test_same_id_from_another_source_is_not_a_duplicate(
    client: httpx.AsyncClient,
) -> None:
    body = sample("alfred/alfred.job.retry.json")
    first = await client.post(
        "/webhooks/alfred?token=alfred-token", content=body,
        headers={"content-type": "application/json"},
    )
    second = await client.post(
        "/webhooks/open", content=body, headers={"content-type": "application/json"}
    )
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["id"] != second.json()["id"]


async def test_alfred_handshake_answers_challenge_and_stores_nothing(
    client: httpx.AsyncClient,
) -> None:
    body = json.dumps({"token": "t", "challenge": "c-123", "type": "url_verification"})
    response = await client.post(
        "/webhooks/alfred?token=alfred-token", content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200
    assert response.json() == {"challenge": "c-123"}
    assert (await client.get("/api/events")).json()["items"] == []


async def test_unknown_source_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/webhooks/nope", content=b"{}", headers={"content-type": "application/json"})
    assert_error(response, 404, "unknown_source")


async def test_declared_oversize_body_is_413(client: httpx.AsyncClient) -> None:
    body = b'{"x": "' + b"a" * (64 * 1024) + b'"}'
    response = await client.post(
        "/webhooks/filecheck", content=body,
        headers={"content-type": "application/json", "x-hook-token": "fc-token"},
    )
    assert_error(response, 413, "payload_too_large")


async def test_streamed_oversize_body_without_length_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> Any:
        for _ in range(100):
            yield b"a" * 1024

    response = await client.post(
        "/webhooks/filecheck", content=chunks(),
        headers={"content-type": "application/json", "x-hook-token": "fc-token"},
    )
    assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize("content_type", ["text/plain", "", "application/x-www-form-urlencoded"])
async def test_wrong_content_type_is_415(client: httpx.AsyncClient, clock: FakeClock, content_type: str) -> None:
    body = standard_body()
    headers = standard_headers(body, clock.now())
    headers["content-type"] = content_type
    response = await client.post("/webhooks/partner", content=body, headers=headers)
    assert_error(response, 415, "unsupported_media_type")


async def test_json_content_type_with_charset_is_accepted(client: httpx.AsyncClient, clock: FakeClock) -> None:
    body = standard_body()
    headers = standard_headers(body, clock.now())
    headers["content-type"] = "application/json; charset=utf-8"
    response = await client.post("/webhooks/partner", content=body, headers=headers)
    assert response.status_code == 202


@pytest.mark.parametrize(
    "content_type",
    ["application/a,text/html,x+json", "application/json, text/html", "application /json",
     "application/ json", "application/+json", "application/json; charset=utf 8",
     "application/json; a=\"open", "application/json;=x", "application/json@",
     "application/jsonp", "text/json", "application/json/x"],
)
async def test_content_type_must_parse_as_one_json_media_type(
    client: httpx.AsyncClient, clock: FakeClock, content_type: str
) -> None:
    body = standard_body()
    headers = standard_headers(body, clock.now())
    headers["content-type"] = content_type
    response = await client.post("/webhooks/partner", content=body, headers=headers)
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "content_type",
    ["APPLICATION/JSON", "application/cloudevents+json", "application/json;charset=\"utf-8\"",
     " application/json ; charset=utf-8 ; q=1"],
)
async def test_json_media_types_with_parameters_are_accepted(
    client: httpx.AsyncClient, clock: FakeClock, content_type: str
) -> None:
    body = standard_body()
    headers = standard_headers(body, clock.now())
    headers["content-type"] = content_type
    response = await client.post("/webhooks/partner", content=body, headers=headers)
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'"text"', b"", b"\xff\xfe{}", b'{"a": NaN}', b"null",
     b'{"a": 1e400}', b'{"a": ' + b"9" * 5000 + b"}"],
    ids=["truncated", "array", "string", "empty", "not-utf8", "nan", "null", "inf", "huge-int"],
)
async def test_bad_json_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(
        "/webhooks/open", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_json")


async def test_deeply_nested_json_is_400_not_500(client: httpx.AsyncClient) -> None:
    body = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    response = await client.post(
        "/webhooks/open", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_json")


def nested(levels: int) -> Any:
    value: Any = 1
    for level in range(levels):
        value = {"k": value} if level % 2 else [value]
    return value


@pytest.mark.parametrize(("levels", "status"), [(62, 202), (63, 400), (300, 400)])
async def test_nesting_past_64_levels_is_refused_before_storing(
    client: httpx.AsyncClient, clock: FakeClock, levels: int, status: int
) -> None:
    # The envelope object and its `data` object are two levels: data nesting 62 more is 64.
    body = standard_body(platform="dcycle", deep=nested(levels))
    response = await post_standard(client, clock, body)
    if status == 202:
        assert response.status_code == 202, response.text
    else:
        error = assert_error(response, 400, "invalid_json")
        assert "64" in error["message"]
        assert (await client.get("/api/events")).json()["items"] == []


def test_depth_scan_skips_brackets_inside_strings() -> None:
    from app.ingest import too_deep

    assert not too_deep(json.dumps({"a": "[" * 500, "b": '\\"{' * 200}).encode())
    assert too_deep(b"[" * 65 + b"]" * 65)
    assert not too_deep(b"[" * 64 + b"]" * 64 + b"[[]]" * 100)
    # An unterminated string counts as running to the end, whatever it holds.
    assert not too_deep(b'{"a": "' + b"[" * 100)


# Hostile inputs whose cost must not grow faster than their length: each must finish at once (a
# backtracking pattern took hours on them), so each runs in a child process with a deadline far
# above any honest run and far below the old behaviour.
TERMINATES = [
    "from app.media import is_json_media_type as f; f('application/json' + '; ' * 40 + 'x')",
    "from app.media import is_json_media_type as f; f('application/json;' + ' ' * 30000 + 'x')",
    "from app.ingest import too_deep as f; f(b'[' * 65 + b'\"' + b'\\\\\"' * 200000)",
]


@pytest.mark.parametrize("code", TERMINATES)
def test_hostile_headers_and_bodies_are_read_in_linear_time(code: str) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "mutate",
    ["wrong-secret", "missing-signature", "missing-id", "stale", "future", "other-body"],
)
async def test_standard_webhooks_failures_are_401(
    client: httpx.AsyncClient, clock: FakeClock, mutate: str
) -> None:
    body = standard_body()
    headers = standard_headers(body, clock.now())
    if mutate == "wrong-secret":
        headers = standard_headers(body, clock.now(), secret="whsec_" + "QUFBQUFBQUFBQUFB")
    elif mutate == "missing-signature":
        del headers["webhook-signature"]
    elif mutate == "missing-id":
        del headers["webhook-id"]
    elif mutate == "stale":
        headers = standard_headers(body, clock.now() - 301)
    elif mutate == "future":
        headers = standard_headers(body, clock.now() + 301)
    elif mutate == "other-body":
        headers = standard_headers(standard_body("other.type"), clock.now())
    response = await client.post("/webhooks/partner", content=body, headers=headers)
    error = assert_error(response, 401, "unauthorized")
    assert error["message"] == "unauthorized"


async def test_rotated_standard_secret_still_accepted(client: httpx.AsyncClient, clock: FakeClock) -> None:
    body = standard_body()
    headers = standard_headers(body, clock.now(), secret=OLD_STANDARD_SECRET)
    response = await client.post("/webhooks/partner", content=body, headers=headers)
    assert response.status_code == 202


async def test_hmac_source_accepts_prefixed_and_bare_hex(client: httpx.AsyncClient) -> None:
    body = sample("filecheck/filecheck.job.completed.json")
    digest = hmac.new(b"fc-hmac", body, hashlib.sha256).hexdigest()
    ok = await client.post(
        "/webhooks/signed", content=body,
        headers={"content-type": "application/json", "x-filecheck-signature": f"sha256={digest}"},
    )
    assert ok.status_code == 202
    assert ok.json()["type"] == "filecheck.job.completed"
    bad = await client.post(
        "/webhooks/signed", content=body,
        headers={"content-type": "application/json", "x-filecheck-signature": "0" * 64},
    )
    assert_error(bad, 401, "unauthorized")


async def test_query_token_and_header_token(client: httpx.AsyncClient) -> None:
    body = sample("alfred/alfred.file.done.json")
    headers = {"content-type": "application/json"}
    wrong = await client.post("/webhooks/alfred?token=nope", content=body, headers=headers)
    assert_error(wrong, 401, "unauthorized")
    missing = await client.post("/webhooks/alfred", content=body, headers=headers)
    assert_error(missing, 401, "unauthorized")
    ok = await client.post("/webhooks/alfred?token=alfred-token", content=body, headers=headers)
    assert ok.status_code == 202
    stored = (await client.get(f"/api/events/{ok.json()['id']}")).json()
    assert "alfred-token" not in json.dumps(stored)

    fc = sample("filecheck/filecheck.job.created.json")
    no_header = await client.post("/webhooks/filecheck", content=fc, headers=headers)
    assert_error(no_header, 401, "unauthorized")
    good = await client.post(
        "/webhooks/filecheck", content=fc, headers={**headers, "x-hook-token": "fc-token"}
    )
    assert good.status_code == 202
    stored = (await client.get(f"/api/events/{good.json()['id']}")).json()
    assert "x-hook-token" not in stored["headers"]


async def test_schema_invalid_is_422_with_details(client: httpx.AsyncClient) -> None:
    event = json.loads(sample("alfred/alfred.job.retry.json"))
    event["event"]["retries"] = "two"
    response = await client.post(
        "/webhooks/alfred?token=alfred-token", content=json.dumps(event),
        headers={"content-type": "application/json"},
    )
    error = assert_error(response, 422, "schema_invalid")
    assert any(d["loc"][-1] == "retries" and d["msg"] for d in error["details"])


async def test_unknown_event_policy(
    client: httpx.AsyncClient, config: dict[str, Any], clock: FakeClock, tmp_path: Path
) -> None:
    event = json.loads(sample("alfred/alfred.file.done.json"))
    event["event"]["event_name"] = "file_teleported_event"
    body = json.dumps(event)
    headers = {"content-type": "application/json"}
    # Accepting is the default: the alfred source does not set unknown_events.
    accepted = await client.post(
        "/webhooks/alfred?token=alfred-token", content=body, headers=headers)
    assert accepted.status_code == 202
    assert accepted.json()["type"] == "alfred.unrecognised"
    stored = (await client.get(f"/api/events/{accepted.json()['id']}")).json()
    assert stored["payload"]["event"]["event_name"] == "file_teleported_event"
    assert stored["original_type"] == "file_teleported_event"
    listed = (await client.get("/api/events", params={"type": "*.unrecognised"})).json()
    assert [item["id"] for item in listed["items"]] == [accepted.json()["id"]]
    metrics = (await client.get("/metrics")).text
    assert 'type="alfred.unrecognised"' in metrics

    config["sources"]["alfred"]["unknown_events"] = "reject"
    config["storage"]["url"] = f"sqlite:///{tmp_path / 'strict.db'}"
    strict = create_app(settings_from_mapping(config, {}), clock=clock)
    async with strict.router.lifespan_context(strict), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=strict), base_url="http://localhost"
    ) as strict_client:
        rejected = await strict_client.post(
            "/webhooks/alfred?token=alfred-token", content=body, headers=headers
        )
    error = assert_error(rejected, 422, "schema_invalid")
    assert error["details"][0]["loc"] == ["event", "event_name"]


async def test_every_alfred_and_filecheck_sample_is_accepted(client: httpx.AsyncClient) -> None:
    from conftest import SAMPLES

    headers = {"content-type": "application/json"}
    for path in sorted((SAMPLES / "alfred").glob("alfred.*.json")):
        response = await client.post(
            "/webhooks/alfred?token=alfred-token", content=path.read_bytes(), headers=headers
        )
        assert response.status_code == 202, (path.name, response.text)
        assert response.json()["type"] == path.stem.split(".", 3)[0] + "." + ".".join(
            path.stem.split(".")[1:3]
        )
    for path in sorted((SAMPLES / "filecheck").glob("*.json")):
        response = await client.post(
            "/webhooks/filecheck", content=path.read_bytes(),
            headers={**headers, "x-hook-token": "fc-token"},
        )
        assert response.status_code in (200, 202), (path.name, response.text)


async def test_raw_body_is_kept_exactly(client: httpx.AsyncClient, store: Any) -> None:
    body = sample("alfred/alfred.job.retry.json")
    response = await client.post(
        "/webhooks/alfred?token=alfred-token", content=body,
        headers={"content-type": "application/json"},
    )
    rows = await store.reader.execute_fetchall(
        "SELECT body, query FROM events WHERE id = ?", (response.json()["id"],)
    )
    assert rows[0]["body"] == body
    assert rows[0]["query"] == "token=REDACTED"


async def test_bom_prefixed_json_is_accepted_and_kept_exactly(
    client: httpx.AsyncClient, store: Any
) -> None:
    body = b"\xef\xbb\xbf" + sample("alfred/alfred.job.failed.json")
    response = await client.post(
        "/webhooks/open", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 202
    rows = await store.reader.execute_fetchall(
        "SELECT body FROM events WHERE id = ?", (response.json()["id"],)
    )
    assert rows[0]["body"] == body


async def test_healthz_and_readyz(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_wrong_method_and_unknown_path_use_the_envelope(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/webhooks/partner"), 405, "method_not_allowed")
    assert_error(await client.get("/nowhere"), 404, "not_found")


async def test_an_unexpected_error_answers_500_with_the_envelope_and_is_logged(
    app: Any, client: httpx.AsyncClient, clock: FakeClock, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.store import StoreError

    intake = app.state.runtime.intake
    real_submit = intake.submit

    async def broken(event: Any, reserved: bool = False) -> Any:
        raise RuntimeError("intake exploded at /var/lib/secret")

    monkeypatch.setattr(intake, "submit", broken)
    with caplog.at_level("ERROR", logger="hookline.http"):
        response = await post_standard(client, clock)
    error = assert_error(response, 500, "internal_error")
    assert "exploded" not in response.text and "Traceback" not in response.text
    assert error["message"] == "internal error"
    [logged] = [r for r in caplog.records if r.name == "hookline.http"]
    assert logged.exc_info is not None and "POST /webhooks/partner" in logged.getMessage()

    async def store_down(event: Any, reserved: bool = False) -> Any:
        raise StoreError("database is locked")

    monkeypatch.setattr(intake, "submit", store_down)
    response = await post_standard(client, clock, msg_id="msg_2")
    assert_error(response, 503, "store_unavailable")
    assert response.headers["retry-after"].isdigit()
    assert "locked" not in response.text

    monkeypatch.setattr(intake, "submit", real_submit)
    assert (await post_standard(client, clock, msg_id="msg_3")).status_code == 202
