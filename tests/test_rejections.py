"""The rejections log: sampling and bounds as plain functions, then refused requests through the
real app, written by the maintenance tick and read back through the API, the stats and the CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app import cli
from app.config import RejectionSettings, settings_from_mapping
from app.errors import (
    ConfigError,
    HooklineError,
    PayloadTooLarge,
    SchemaInvalid,
    Unauthorized,
)
from app.rejections import (
    MAX_DETAILS,
    MAX_MESSAGE,
    MAX_NAME,
    RejectionLog,
    Sampler,
    bounded_name,
    capped,
    recorded,
)
from app.runtime import Runtime
from app.scheduler import Maintenance
from app.store import StoreError
from app.store.sqlite import SQLiteStore
from schemas.records import NewEvent, Saved

from conftest import FakeClock, sample, standard_body, standard_headers

FC = {"content-type": "application/json", "x-hook-token": "fc-token"}


# Plain functions.

def test_sampler_keeps_a_flood_one_in_n_and_counts_what_it_left_out() -> None:
    sampler = Sampler(flood_per_minute=3, one_in=4)
    kept = [sampler.admit("a", 100) for _ in range(11)]
    # 3 in full, then the 4th and 8th of the rest; each kept one says how many came before it.
    assert kept == [0, 0, 0, None, None, None, 3, None, None, None, 3]
    assert sampler.admit("b", 100) == 0  # per source
    assert sampler.admit("a", 101) == 0  # a new minute starts in full; the count carries on
    sampler.left_out("a", 2)
    assert sampler.pending("a") == 2


def test_bounds_of_names_and_bodies() -> None:
    assert bounded_name("x" * 500) == "x" * MAX_NAME
    assert bounded_name("a\x00b\nc") == "a?b?c"
    assert capped(b"abcdef", 4) == (b"abcd", True)
    assert capped(b"abc", 4) == (b"abc", False)
    assert recorded(Unauthorized()) and recorded(PayloadTooLarge())
    assert not recorded(HooklineError()) and not recorded(ValueError())


def _scope(source: str = "partner", body: bytes | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {} if body is None else {"authenticated_body": body}
    return {"path_params": {"source": source}, "client": ("10.1.2.3", 5555), "state": state,
            "headers": [(b"content-type", b"application/json"),
                        (b"webhook-signature", b"v1,secret"), (b"x-hook-token", b"fc-token"),
                        (b"authorization", b"Bearer t")]}


def _log(**changes: Any) -> RejectionLog:
    settings = settings_from_mapping({"sources": {
        "partner": {"platform": "standard", "auth": {"scheme": "none"}},
        "filecheck": {"platform": "filecheck", "auth": {
            "scheme": "header_token", "header": "x-hook-token", "secrets": ["fc-token"]}},
    }, "rejections": changes}, {})
    from app.auth import credential_headers

    return RejectionLog(settings.rejections, settings.sources,
                        credential_headers(s.auth for s in settings.sources.values()))


def test_a_row_keeps_no_secret_header_and_a_capped_body() -> None:
    rejections = _log(body_max_bytes=4)
    assert rejections.record(_scope("partner", b"0123456789"), SchemaInvalid(), 1000.0)
    [row] = rejections._rows
    assert row.headers == {"content-type": "application/json"}
    assert (row.body, row.body_bytes, row.truncated) == (b"0123", 10, True)
    assert (row.source, row.known, row.remote, row.status) == ("partner", True, "10.1.2.3", 422)


def test_the_buffer_is_bounded_in_rows_and_body_bytes() -> None:
    rejections = _log(buffer_rows=3, buffer_bytes=10, flood_per_minute=1000)
    for _ in range(5):
        rejections.record(_scope("partner", b"x" * 6), SchemaInvalid(), 1000.0)
    assert rejections.waiting == 3
    # The second body found no room: its row is kept without it.
    assert [(r.body, r.truncated) for r in rejections._rows] == [
        (b"x" * 6, False), (None, True), (None, True)]
    assert rejections.sampler.pending("partner") == 2  # the two with no room are counted


def test_messages_and_field_errors_are_bounded() -> None:
    rejections = _log()
    many = [{"loc": ["items", n], "msg": "bad"} for n in range(MAX_DETAILS + 50)]
    rejections.record(_scope("nobody" * 1000), SchemaInvalid("x" * 5000, details=many), 1.0)
    [row] = rejections._rows
    assert len(row.message) == MAX_MESSAGE and row.details == many[:MAX_DETAILS]
    assert len(row.source) == MAX_NAME and row.known is False and row.body is None


def test_recording_never_raises() -> None:
    rejections = _log()
    assert not rejections.record({"path_params": {"source": "partner"}}, Unauthorized(), 1.0)


class _Down:
    async def add_rejections(self, rows: Any) -> None:
        raise StoreError("down")


async def test_a_failed_write_keeps_the_rows_within_the_bound() -> None:
    rejections = _log(buffer_rows=2)
    for _ in range(2):
        rejections.record(_scope(), Unauthorized(), 1000.0)
    with pytest.raises(StoreError):
        await rejections.flush(_Down())  # type: ignore[arg-type]
    assert rejections.waiting == 2 and rejections.lost == 0


# Through the app.

def _maintenance(app: Starlette) -> Maintenance:
    runtime: Runtime = app.state.runtime
    return Maintenance(runtime.store, runtime.clock, None, 30, tally=runtime.tally,
                       rejections=runtime.rejections)


async def test_a_platform_payload_change_is_readable_with_its_field_errors(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    event = json.loads(sample("filecheck/filecheck.job.created.json"))
    event["taskCount"] = "two"  # the platform starts sending a string
    body = json.dumps(event).encode()
    refused = await client.post("/webhooks/filecheck", content=body, headers=FC)
    assert refused.status_code == 422
    field_errors = refused.json()["error"]["details"]
    assert field_errors

    assert (await client.get("/api/rejections")).json()["items"] == []  # not written yet
    assert await _maintenance(app).flush_rejections() == 1
    page = (await client.get("/api/rejections", params={"code": "schema_invalid"})).json()
    [item] = page["items"]
    assert (item["source"], item["status"], item["known"]) == ("filecheck", 422, True)
    assert item["details"] is None and item["body"] is None

    one = (await client.get(f"/api/rejections/{item['id']}")).json()
    assert one["details"] == field_errors
    assert json.loads(one["body"]) == event and one["body_bytes"] == len(body)
    assert one["truncated"] is False
    assert one["headers"]["content-type"] == "application/json"
    assert "x-hook-token" not in one["headers"]
    assert one["remote"] == "127.0.0.1"
    missing = await client.get("/api/rejections/rej_nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_a_flood_of_bad_signatures_is_sampled_and_counted_exactly(
    tmp_path: Path, clock: FakeClock, config: dict[str, Any]
) -> None:
    config["rejections"] = {"flood_per_minute": 5, "sample_one_in": 10}
    # The failed-authentication guard would answer 429 past its burst: out of this test's way.
    config.setdefault("server", {})["failed_auth_rate_limit"] = {"per_second": 1000, "burst": 1000}
    from app.main import create_app

    app = create_app(settings_from_mapping(config, {}), clock=clock)
    body = standard_body()
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://localhost"
    ) as client:
        for n in range(105):
            forged = {**standard_headers(body, clock.now(), f"m{n}"),
                      "webhook-signature": "v1,Zm9yZ2Vk"}
            response = await client.post("/webhooks/partner", content=body, headers=forged)
            assert response.status_code == 401
        maintenance = _maintenance(app)
        assert await maintenance.flush_rejections() == 15  # 5 in full, then 1 in 10 of 100
        await maintenance.flush_counts()
        rows = (await client.get("/api/rejections", params={"limit": 100})).json()["items"]
        stats = (await client.get("/api/stats")).json()
    assert len(rows) == 15
    assert {r["code"] for r in rows} == {"unauthorized"}
    # What the rows stand for adds up to every request, and so do the counts.
    assert sum(1 + r["dropped_before"] for r in rows) == 105
    assert stats["ingest"]["rejected_by_source"] == {"partner": {"unauthorized": 105}}
    # A request that failed authentication leaves no body.
    assert all(r["body_bytes"] is None for r in rows)


async def test_refusals_before_the_body_or_authentication_keep_no_body(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    body = json.dumps({"x": 1}).encode()
    assert (await client.post("/webhooks/filecheck", content=body,
                              headers={**FC, "x-hook-token": "wrong"})).status_code == 401
    assert (await client.post("/webhooks/filecheck", content=b"x" * 70_000,
                              headers=FC)).status_code == 413
    assert (await client.post("/webhooks/filecheck", content=body,
                              headers={**FC, "content-type": "text/plain"})).status_code == 415
    assert (await client.post("/webhooks/" + "n" * 300, content=body,
                              headers=FC)).status_code == 404
    assert (await client.post("/webhooks/filecheck", content=b"{nope",
                              headers=FC)).status_code == 400
    await _maintenance(app).flush_rejections()
    items = (await client.get("/api/rejections")).json()["items"]
    by_code = {item["code"]: item for item in items}
    assert list(by_code) == ["invalid_json", "unknown_source", "unsupported_media_type",
                             "payload_too_large", "unauthorized"]
    for code in ("unknown_source", "unsupported_media_type", "payload_too_large", "unauthorized"):
        assert by_code[code]["body_bytes"] is None
    unknown = by_code["unknown_source"]
    assert (unknown["source"], unknown["known"]) == ("n" * 64, False)
    # Only the request that passed authentication keeps its body.
    invalid = (await client.get(f"/api/rejections/{by_code['invalid_json']['id']}")).json()
    assert invalid["body"] == "{nope"
    filtered = (await client.get("/api/rejections", params={"source": "filecheck"})).json()
    assert len(filtered["items"]) == 4


async def test_the_api_pages_with_a_cursor_and_checks_its_parameters(
    client: httpx.AsyncClient, app: Starlette, clock: FakeClock
) -> None:
    for _ in range(3):
        await client.post("/webhooks/filecheck", content=b"{", headers=FC)
        clock.advance(1)
    await _maintenance(app).flush_rejections()
    first = (await client.get("/api/rejections", params={"limit": 2})).json()
    second = (await client.get("/api/rejections", params={
        "limit": 2, "cursor": first["next_cursor"]})).json()
    times = [i["received_at"] for i in first["items"] + second["items"]]
    assert times == sorted(times, reverse=True) and len(set(times)) == 3
    assert second["next_cursor"] is None
    since = (await client.get("/api/rejections", params={"since": times[1]})).json()
    assert len(since["items"]) == 2
    for params in ({"cursor": "bad"}, {"limit": "0"}, {"since": "soon"}):
        response = await client.get("/api/rejections", params=params)
        assert response.status_code == 400, params


async def test_the_log_is_pruned_by_age_and_row_cap(
    tmp_path: Path, clock: FakeClock, config: dict[str, Any]
) -> None:
    config["rejections"] = {"max_rows": 3, "retention_days": 1}
    from app.main import create_app

    app = create_app(settings_from_mapping(config, {}), clock=clock)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://localhost"
    ) as client:
        maintenance = _maintenance(app)
        for _ in range(5):
            await client.post("/webhooks/filecheck", content=b"{", headers=FC)
            clock.advance(1)
        # The flush trims to the row cap at once: the oldest go first.
        assert await maintenance.flush_rejections() == 5
        kept = (await client.get("/api/rejections")).json()["items"]
        assert [i["received_at"] for i in kept] == [clock.now() - n for n in (1, 2, 3)]
        clock.advance(86_400)
        assert await maintenance.prune_rejections() == 3
        assert (await client.get("/api/rejections")).json()["items"] == []


async def test_recording_failure_leaves_the_answer_as_it_was(
    client: httpx.AsyncClient, app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime: Runtime = app.state.runtime

    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(runtime.rejections, "_row", broken)
    response = await client.post("/webhooks/filecheck", content=b"{", headers=FC)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


async def test_disabled_records_nothing(
    tmp_path: Path, clock: FakeClock, config: dict[str, Any]
) -> None:
    config["rejections"] = {"enabled": False}
    from app.main import create_app

    app = create_app(settings_from_mapping(config, {}), clock=clock)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://localhost"
    ) as client:
        assert (await client.post("/webhooks/filecheck", content=b"{", headers=FC)
                ).status_code == 400
        assert app.state.runtime.rejections.waiting == 0


def test_config_is_validated_with_key_paths() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"rejections": {"max_rows": 0, "sample_one_in": "x",
                                              "flood": 3}}, {})
    problems = caught.value.problems
    assert any(p.startswith("rejections.max_rows:") for p in problems)
    assert any(p.startswith("rejections.sample_one_in:") for p in problems)
    assert "rejections.flood: unknown key" in problems
    assert RejectionSettings().body_max_bytes == 64 * 1024


async def test_cli_lists_and_shows_rejections(
    client: httpx.AsyncClient, app: Starlette, tmp_path: Path, config: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    await client.post("/webhooks/filecheck", content=b"{", headers=FC)
    await _maintenance(app).flush_rejections()
    path = tmp_path / "hookline.toml"
    path.write_text(f'[storage]\nurl = "{config["storage"]["url"]}"\n')
    assert await _in_thread(["rejections", "list", "--config", str(path), "--json"]) == 0
    page = json.loads(capsys.readouterr().out)
    [item] = page["items"]
    assert item["code"] == "invalid_json"
    assert await _in_thread(["rejections", "list", "--config", str(path),
                             "--code", "invalid_json"]) == 0
    table = capsys.readouterr().out
    assert item["id"] in table and "filecheck" in table
    assert await _in_thread(["rejections", "show", item["id"], "--config", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["body"] == "{" and shown["id"] == item["id"]
    assert await _in_thread(["rejections", "show", "rej_nope", "--config", str(path)]) == 1


async def _in_thread(argv: list[str]) -> int:
    """The CLI runs its own event loop: run it beside the test's."""
    import asyncio

    return await asyncio.to_thread(cli.main, argv)


class _RefusingStore(SQLiteStore):
    """A real SQLite store that cannot write events (rejections still go in)."""

    async def save_events(self, events: Sequence[NewEvent]) -> list[Saved | StoreError]:
        return [StoreError("disk full") for _ in events]


async def test_the_intakes_503_and_a_429_are_recorded(
    tmp_path: Path, clock: FakeClock, config: dict[str, Any]
) -> None:
    from app.main import create_app

    config["sources"]["partner"]["rate_limit"] = {"per_second": 1, "burst": 1}
    settings = settings_from_mapping(config, {})
    app = create_app(settings, store=_RefusingStore(str(tmp_path / "refusing.db")), clock=clock)
    body = standard_body()
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://localhost"
    ) as client:
        for msg_id, status in (("a", 503), ("b", 429)):
            response = await client.post("/webhooks/partner", content=body,
                                         headers=standard_headers(body, clock.now(), msg_id))
            assert response.status_code == status
        await _maintenance(app).flush_rejections()
        limited, unavailable = (await client.get("/api/rejections")).json()["items"]
        assert (limited["code"], limited["body_bytes"]) == ("rate_limited", None)
        assert unavailable["code"] == "store_unavailable" and unavailable["status"] == 503
        # The 503 came after authentication: its body is kept to read.
        one = (await client.get(f"/api/rejections/{unavailable['id']}")).json()
        assert one["body"] == body.decode()
        assert "webhook-signature" not in one["headers"] and "webhook-id" in one["headers"]


async def test_rejections_waiting_at_shutdown_are_written(
    tmp_path: Path, clock: FakeClock, config: dict[str, Any]
) -> None:
    from app.main import create_app
    from app.store import store_from_url
    from app.store.rejections import RejectionFilter

    settings = settings_from_mapping(config, {})
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://localhost"
    ) as client:
        assert (await client.post("/webhooks/filecheck", content=b"{", headers=FC)
                ).status_code == 400
        assert app.state.runtime.rejections.waiting == 1
    store = store_from_url(settings.storage.url)
    await store.open()
    try:
        [row] = (await store.list_rejections(RejectionFilter(), 10)).items
    finally:
        await store.close()
    assert row.code == "invalid_json"


async def test_receivers_tick_the_flush_and_the_prune(app: Starlette) -> None:
    from app.scheduler import start_scheduler

    maintenance = _maintenance(app)
    ticks = start_scheduler(maintenance, worker_ticks=False)
    try:
        jobs = {job.id: job for job in ticks.get_jobs()}
        assert {"counts", "rejections", "rejections-prune"} <= set(jobs)
        assert jobs["rejections"].trigger.interval.total_seconds() == 5
    finally:
        ticks.shutdown(wait=False)
    maintenance.rejections = None
    ticks = start_scheduler(maintenance, worker_ticks=False)
    try:
        assert "rejections" not in {job.id for job in ticks.get_jobs()}
    finally:
        ticks.shutdown(wait=False)


async def test_reading_rejections_needs_the_read_scope(
    tmp_path: Path, clock: FakeClock, config: dict[str, Any]
) -> None:
    from app.main import create_app

    config["api"] = {"tokens": [{"name": "dashboard", "token": "read-0123456789"}]}
    app = create_app(settings_from_mapping(config, {}), clock=clock)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://localhost"
    ) as client:
        for path in ("/api/rejections", "/api/rejections/rej_x"):
            assert (await client.get(path)).status_code == 401
        read = {"authorization": "Bearer read-0123456789"}
        assert (await client.get("/api/rejections", headers=read)).status_code == 200


def test_a_rejection_keeps_no_credential_header_even_for_an_unknown_source() -> None:
    from app.config import RejectionSettings
    from app.errors import UnknownSource
    from app.rejections import RejectionLog

    log = RejectionLog(RejectionSettings(), {})
    scope = {"path_params": {"source": "typo"}, "client": ("127.0.0.1", 1), "state": {},
             "headers": [(b"x-acme-token", b"SUPERSECRET"), (b"x-partner-signature", b"sig"),
                         (b"x-hookline-recorded", b"1"), (b"user-agent", b"u")]}
    assert log.record(scope, UnknownSource(), 1_790_000_000.0)
    [row] = log._rows
    assert row.headers == {"user-agent": "u"}
