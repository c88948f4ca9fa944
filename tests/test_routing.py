"""Pure route matching: globs, source filters and `where` conditions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from pydantic import BaseModel, Field

from app.config import settings_from_mapping
from app.main import create_app
from app.routing import (
    Route,
    condition_holds,
    handlers_for,
    lookup,
    route_matches,
    validated_view,
)
from app.worker import WorkerSettings
from schemas import Incoming, ParsedEvent, parse_event

from conftest import FakeClock, base_config, standard_headers

PAYLOAD = {
    "type": "file.processing_failed",
    "data": {"platform": "dcycle", "file_id": "f1", "tags": ["a", "b"], "n": 0},
}


def test_globs_over_the_canonical_type() -> None:
    assert route_matches(Route("alfred.job.*", "h"), "s", "alfred.job.failed", {})
    assert route_matches(Route("*.failed", "h"), "s", "alfred.file.failed", {})
    assert route_matches(Route("*", "h"), "s", "anything", {})
    assert not route_matches(Route("alfred.job.*", "h"), "s", "alfred.file.failed", {})
    assert not route_matches(Route("alfred.job.failed", "h"), "s", "alfred.job.failed.x", {})


def test_source_filter() -> None:
    route = Route("*", "h", source="partner")
    assert route_matches(route, "partner", "t", {})
    assert not route_matches(route, "other", "t", {})


def test_lookup_dotted_paths() -> None:
    assert lookup(PAYLOAD, "data.platform") == "dcycle"
    assert lookup(PAYLOAD, "data.tags.1") == "b"
    assert lookup(PAYLOAD, "data.missing") is lookup(PAYLOAD, "nope.deeper")
    assert lookup(PAYLOAD, "data.tags.9") is lookup(PAYLOAD, "nope")


def test_where_equality_in_exists_ne() -> None:
    value = lookup(PAYLOAD, "data.platform")
    missing = lookup(PAYLOAD, "data.absent")
    assert condition_holds(value, "dcycle")
    assert not condition_holds(value, "aitronos")
    assert condition_holds(value, ["aitronos", "dcycle"])
    assert condition_holds(value, {"in": ["dcycle"]})
    assert condition_holds(value, {"exists": True})
    assert condition_holds(missing, {"exists": False})
    assert not condition_holds(missing, {"exists": True})
    assert not condition_holds(missing, "dcycle")
    assert condition_holds(missing, {"ne": "dcycle"})
    assert condition_holds(lookup(PAYLOAD, "data.n"), 0)
    assert condition_holds(lookup(PAYLOAD, "data.n"), False) is not None


def test_handlers_in_route_order_each_once() -> None:
    routes = [
        Route("*.failed", "ops"),
        Route("file.*", "dcycle", where=(("data.platform", "dcycle"),)),
        Route("*", "ops"),
        Route("file.*", "aitronos", where=(("data.platform", "aitronos"),)),
        Route("*", "log"),
    ]
    assert handlers_for(routes, "s", "file.processing_failed", PAYLOAD) == ("dcycle", "ops", "log")
    assert handlers_for(routes, "s", "file.failed", PAYLOAD) == ("ops", "dcycle", "log")
    assert handlers_for(routes, "s", "job.done", PAYLOAD) == ("ops", "log")
    assert handlers_for([], "s", "job.done", PAYLOAD) == ()


# Conditions over the validated event (the sender's spelling does not matter).

CORPUS = Path(__file__).parents[2] / "shared" / "corpus" / "alfred"
SPELLINGS = ("docs", "python_sdk", "node_sdk")


def corpus_event(spelling: str, name: str) -> tuple[dict[str, Any], ParsedEvent]:
    payload = json.loads((CORPUS / spelling / f"{name}.json").read_text())
    parsed = parse_event("alfred", Incoming(payload))
    assert isinstance(parsed, ParsedEvent)
    return payload, parsed


def routed(where: dict[str, Any], spelling: str, name: str) -> tuple[str, ...]:
    payload, parsed = corpus_event(spelling, name)
    routes = [Route("alfred.*", "chosen", where=tuple(sorted(where.items())))]
    return handlers_for(routes, "alfred", parsed.type, payload, parsed.model)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_where_sees_validated_numbers_and_booleans(spelling: str) -> None:
    assert routed({"event.retries": 1}, spelling, "job_retry") == ("chosen",)
    assert routed({"event.exceeded_retries": False}, spelling, "job_retry") == ("chosen",)
    assert routed({"event.exceeded_retries": True}, spelling, "job_exceeded_retries") == (
        "chosen",)
    assert routed({"event.file_count": {"in": [2, 3]}, "event.merge": {"ne": True}},
                  spelling, "job_retry") == ("chosen",)
    assert routed({"event.classification_score": 0.42}, spelling, "file_failed") == ("chosen",)
    assert routed({"event_time": 1653645300}, spelling, "job_retry") == ("chosen",)
    # The validated value, not the text: "1" (a string) is not the number 1, and false is not 0.
    assert routed({"event.retries": "1"}, spelling, "job_retry") == ()
    assert routed({"event.exceeded_retries": 0}, spelling, "job_retry") == ()
    assert routed({"event.exceeded_retries": True}, spelling, "job_retry") == ()


def test_without_the_model_the_raw_spelling_is_compared() -> None:
    payload, parsed = corpus_event("docs", "job_retry")
    route = Route("*", "h", where=(("event.retries", 1),))
    assert not route_matches(route, "alfred", parsed.type, payload)
    assert route_matches(route, "alfred", parsed.type, payload, parsed.model)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_extra_fields_and_absent_ones(spelling: str) -> None:
    # error_messages is not a FileFailed field: it is read from the payload as sent.
    message = "Extraction stage failed: unreadable page 2"
    assert routed({"event.error_messages.0": message}, spelling, "file_failed") == ("chosen",)
    # A field the model has but the payload did not send does not exist (no default None).
    assert routed({"event.stage": {"exists": False}}, spelling, "job_start") == ("chosen",)
    assert routed({"event.user_name": {"exists": False}}, spelling, "job_failed") == ("chosen",)
    assert routed({"event.nothing.here": {"ne": 1}}, spelling, "job_retry") == ("chosen",)


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("moment", [
    "2023-05-26T23:20:00Z", "2023-05-26T23:20:00+00:00", "2023-05-27T01:20:00+02:00",
    datetime(2023, 5, 26, 23, 20, tzinfo=UTC), datetime(2023, 5, 26, 23, 20),
])
def test_datetimes_compare_as_instants(spelling: str, moment: Any) -> None:
    assert routed({"event.creation_date": moment}, spelling, "job_retry") == ("chosen",)
    assert routed({"event.creation_date": {"in": ["2020-01-01T00:00:00Z", moment]}},
                  spelling, "job_retry") == ("chosen",)
    assert routed({"event.creation_date": {"ne": moment}}, spelling, "job_retry") == ()


def test_datetime_against_text_that_is_no_instant() -> None:
    assert routed({"event.creation_date": "yesterday"}, "docs", "job_retry") == ()
    assert routed({"event.creation_date": 1685143200}, "docs", "job_retry") == ()
    # A TOML datetime against raw text (a path the model does not have) is an instant too.
    raw = {"data": {"at": "2026-11-01T10:00:00Z"}}
    route = Route("*", "h", where=(("data.at", datetime(2026, 11, 1, 10, tzinfo=UTC)),))
    assert route_matches(route, "s", "t", raw)
    assert not route_matches(Route("*", "h", where=(("data.at", "2026-11-01T10:00:00+00:00"),)),
                             "s", "t", raw)


def test_filecheck_and_standard_models() -> None:
    body = json.loads((CORPUS.parent / "filecheck" / "webhook.job-completed.json").read_text())
    parsed = parse_event("filecheck", Incoming(body))
    assert isinstance(parsed, ParsedEvent)
    when = datetime.fromisoformat(body["finalized"])
    route = Route("filecheck.*", "h", where=(("finalized", when.isoformat()),
                                             ("status", body["status"])))
    assert handlers_for([route], "fc", parsed.type, body, parsed.model) == ("h",)
    envelope = {"type": "file.processing_failed", "timestamp": "2026-11-01T10:00:00Z",
                "data": {"platform": "dcycle", "n": 0}}
    standard = parse_event("standard", Incoming(envelope))
    assert isinstance(standard, ParsedEvent)
    routes = [Route("*", "h", where=(("timestamp", "2026-11-01T12:00:00+02:00"),
                                     ("data.platform", "dcycle"), ("data.n", 0)))]
    assert handlers_for(routes, "p", standard.type, envelope, standard.model) == ("h",)


class _Aliased(BaseModel):
    count: int = Field(alias="Count")


def test_the_view_is_keyed_by_the_payload_names_and_built_only_when_needed() -> None:
    model = _Aliased.model_validate({"Count": "3"})
    assert validated_view(model) == {"Count": 3}
    assert route_matches(Route("*", "h", where=(("Count", 3),)), "s", "t", {"Count": "3"}, model)
    assert validated_view(None) is None

    class Counting(BaseModel):
        dumps: ClassVar[int] = 0

        def model_dump(self, **kwargs: Any) -> dict[str, Any]:
            Counting.dumps += 1
            return super().model_dump(**kwargs)

    routes = [Route("other.*", "a", where=(("x", 1),)), Route("*", "b"),
              Route("t", "c", source="elsewhere", where=(("x", 1),))]
    assert handlers_for(routes, "s", "t", {}, Counting()) == ("b",)
    assert Counting.dumps == 0
    routes += [Route("t", "d", where=(("x", {"exists": False}),)),
               Route("t", "e", where=(("y", {"exists": False}),))]
    assert handlers_for(routes, "s", "t", {}, Counting()) == ("b", "d", "e")
    assert Counting.dumps == 1


async def test_ingest_routes_on_the_validated_event(tmp_path: Path, clock: FakeClock) -> None:
    config = base_config(tmp_path / "routing.db")
    config["handlers"] = {"retrying": {"use": "log"}, "exceeded": {"use": "log"}}
    config["routes"] = [
        {"match": "alfred.job.*", "handler": "retrying",
         "where": {"event.retries": 1, "event.exceeded_retries": False}},
        {"match": "alfred.job.*", "handler": "exceeded",
         "where": {"event.exceeded_retries": True, "event.creation_date": "2023-05-26T23:20:00Z"}},
    ]
    app = create_app(settings_from_mapping(config, {}), clock=clock,
                     worker_settings=WorkerSettings(background=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            for spelling in SPELLINGS:
                for name, handler in (("job_retry", "retrying"),
                                      ("job_exceeded_retries", "exceeded")):
                    body = (CORPUS / spelling / f"{name}.json").read_bytes()
                    answer = await client.post("/webhooks/alfred?token=alfred-token", content=body,
                                               headers={"content-type": "application/json"})
                    assert answer.status_code == 202, answer.text
                    event_id = answer.json()["id"]
                    event = (await client.get(f"/api/events/{event_id}")).json()
                    assert [d["handler"] for d in event["deliveries"]] == [handler], spelling
                    # A replay routes the stored event as ingest did: on its validated values.
                    plan = await client.post(f"/api/events/{event_id}/replay",
                                             json={"dry_run": True})
                    assert plan.json()["handlers"] == [handler], spelling
            bulk = await client.post("/api/replay", json={"type": "alfred.job.*", "dry_run": True})
            assert sorted(item["handlers"][0] for item in bulk.json()["plan"]) == sorted(
                ["retrying", "exceeded"] * len(SPELLINGS))


def test_one_reader_of_dotted_paths_refuses_non_ascii_digits() -> None:
    # "²" is a digit to str.isdigit and not to int(): a path step of it is simply not there.
    from schemas.paths import lookup

    payload = {"items": [{"id": "a"}], "data": {"file_id": None}}
    assert lookup(payload, "items.0.id") == "a"
    assert lookup(payload, "items.²") is None
    assert lookup(payload, "items.²", "missing") == "missing"
    assert lookup(payload, "data.file_id", "missing") is None  # there, and null


async def test_a_standard_source_with_an_odd_type_path_answers_and_stores(
    tmp_path: Path, clock: FakeClock,
) -> None:
    config = base_config(tmp_path / "paths.db")
    config["sources"]["partner"]["type_path"] = "items.²"
    app = create_app(settings_from_mapping(config, {}), clock=clock,
                     worker_settings=WorkerSettings(background=False))
    body = json.dumps({"items": ["x"]}).encode()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            answer = await client.post("/webhooks/partner", content=body,
                                       headers=standard_headers(body, clock.now(), "odd"))
    assert answer.status_code == 202, answer.text
    assert answer.json()["type"] == "unknown"
