"""One reading of times and filter values for the CLI and the API: ages, ISO 8601 and unix
seconds alike, and unknown statuses refused with the allowed ones named."""

from __future__ import annotations

import httpx
import pytest

from app.when import BadValue, check_choice, parse_when
from conftest import FakeClock, standard_body, standard_headers

NOW = 1_790_000_000.0


@pytest.mark.parametrize(("text", "expected"), [
    ("90s", NOW - 90), ("30m", NOW - 1800), ("2h", NOW - 7200), ("7d", NOW - 7 * 86400),
    ("1.5h", NOW - 5400), ("1790000000", 1_790_000_000.0), (1_780_000_000, 1_780_000_000.0),
    ("2026-11-01T00:00:00Z", 1793491200.0), ("2026-11-01T00:00:00", 1793491200.0),
    ("2026-11-01T01:00:00+01:00", 1793491200.0),
])
def test_parse_when_reads_ages_iso_and_unix_seconds(text: str | float, expected: float) -> None:
    assert parse_when(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "", "2w", "-2h", "nan", "inf", "٣h", True])
def test_parse_when_refuses_what_is_not_a_time(text: str | bool) -> None:
    with pytest.raises(BadValue, match="not a time.*an age: 90s, 30m, 2h, 7d"):
        parse_when(text, NOW)


def test_check_choice_names_the_allowed_values() -> None:
    assert check_choice("status", None, ("a", "b")) is None
    assert check_choice("status", "b", ("a", "b")) == "b"
    with pytest.raises(BadValue, match="status must be one of a, b; got 'c'"):
        check_choice("status", "c", ("a", "b"))


async def _post(client: httpx.AsyncClient, clock: FakeClock, msg_id: str) -> str:
    body = standard_body()
    answer = await client.post("/webhooks/partner", content=body,
                               headers=standard_headers(body, clock.now(), msg_id))
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


async def test_api_filters_take_ages_like_the_cli(client: httpx.AsyncClient,
                                                  clock: FakeClock) -> None:
    old = await _post(client, clock, "m1")
    clock.advance(3 * 3600)
    new = await _post(client, clock, "m2")

    async def ids(**params: str) -> list[str]:
        answer = await client.get("/api/events", params=params)
        assert answer.status_code == 200, answer.text
        return [item["id"] for item in answer.json()["items"]]

    assert await ids() == [new, old]
    assert await ids(since="2h") == [new]
    assert await ids(until="2h") == [old]
    assert await ids(since="4h", until="1h") == [old]
    # Before: a 400, "since must be a unix timestamp in seconds".
    plan = await client.post("/api/replay", json={"since": "2h", "dry_run": True})
    assert plan.status_code == 200, plan.text
    assert [p["event_id"] for p in plan.json()["plan"]] == [new]
    plan = await client.post("/api/replay", json={"since": clock.now() - 60, "dry_run": True})
    assert plan.json()["events"] == 1
    deliveries = await client.get("/api/deliveries", params={"since": "1d"})
    assert deliveries.status_code == 200, deliveries.text


@pytest.mark.parametrize(("method", "path", "where", "allowed"), [
    ("GET", "/api/events", "params", "unrouted, pending, delivered, failed"),
    ("GET", "/api/stream", "params", "unrouted, pending, delivered, failed"),
    ("GET", "/api/deliveries", "params", "pending, running, succeeded, dead"),
    ("POST", "/api/replay", "json", "unrouted, pending, delivered, failed, dead"),
])
async def test_api_refuses_unknown_statuses_naming_the_allowed(
    client: httpx.AsyncClient, method: str, path: str, where: str, allowed: str
) -> None:
    # Before: a 200 with nothing in it.
    answer = await client.request(method, path, **{where: {"status": "bogus"}})  # type: ignore[arg-type]
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "bad_request"
    assert error["message"] == f"status must be one of {allowed}; got 'bogus'"


@pytest.mark.parametrize("value", ["yesterday", True, ["2h"]])
async def test_api_time_errors_say_what_is_accepted(client: httpx.AsyncClient,
                                                    value: object) -> None:
    answer = await client.post("/api/replay", json={"since": value, "dry_run": True})
    assert answer.status_code == 400
    assert "since" in answer.json()["error"]["message"]
    assert "an age" in answer.json()["error"]["message"]
