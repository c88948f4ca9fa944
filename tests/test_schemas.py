"""The platform schemas: every sample validates, names normalise, bad payloads say where."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from schemas import (
    EventInvalid,
    Handshake,
    Incoming,
    ParsedEvent,
    PayloadPaths,
    UnknownPolicy,
    event_models,
    export_json_schemas,
    parse_event,
)
from schemas.alfred import JobRetry, canonical_type

SAMPLES = Path(__file__).parent / "samples"
PLATFORMS_MD = Path(__file__).parents[2] / "shared" / "PLATFORMS.md"
ALFRED_TYPES = sorted(p.stem for p in (SAMPLES / "alfred").glob("alfred.*.json"))
ALFRED_EVENT_COUNT = 24


def load(path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / path).read_text())
    return data


def parse(
    platform: str, payload: dict[str, Any], unknown: UnknownPolicy = "reject",
    headers: dict[str, str] | None = None,
) -> ParsedEvent:
    result = parse_event(platform, Incoming(payload, headers or {}), unknown)
    assert isinstance(result, ParsedEvent)
    return result


def invalid(
    platform: str, payload: dict[str, Any], unknown: UnknownPolicy = "reject"
) -> EventInvalid:
    with pytest.raises(EventInvalid) as caught:
        parse_event(platform, Incoming(payload), unknown)
    return caught.value


def sample_cases() -> list[tuple[str, Path, str]]:
    cases: list[tuple[str, Path, str]] = []
    for platform in ("alfred", "filecheck", "standard"):
        for path in sorted((SAMPLES / platform).glob("*.json")):
            if path.stem != "url_verification":
                cases.append((platform, path, path.stem.removesuffix(".reject")))
    return cases


@pytest.mark.parametrize(("platform", "path", "expected"), sample_cases(), ids=lambda v: str(v))
def test_every_sample_validates_to_its_canonical_type(
    platform: str, path: Path, expected: str
) -> None:
    payload = json.loads(path.read_text())
    parsed = parse(platform, payload, headers={"webhook-id": "msg_1"})
    assert parsed.type == expected
    assert parsed.upstream_id
    assert parsed.model is not None


def test_there_is_a_sample_for_every_alfred_event() -> None:
    assert ALFRED_TYPES == sorted(event_models())[:ALFRED_EVENT_COUNT]
    assert len(ALFRED_TYPES) == ALFRED_EVENT_COUNT


def documented_job_retry() -> str:
    if not PLATFORMS_MD.exists():
        return (SAMPLES / "alfred" / "alfred.job.retry.json").read_text()
    after = PLATFORMS_MD.read_text().split("must validate as it is", 1)[1]
    found = re.search(r"```json\n(.*?)```", after, re.S)
    assert found is not None
    return found.group(1)


def test_documented_job_retry_example_validates_as_is() -> None:
    text = documented_job_retry()
    assert (SAMPLES / "alfred" / "alfred.job.retry.json").read_text() == text
    parsed = parse("alfred", json.loads(text))
    assert parsed.type == "alfred.job.retry"
    assert parsed.upstream_id == "z1x2c3v4-b5n6-m7q8-w9e0-r1t2y3u4i5o6"
    assert parsed.job_id == "90123456-1234-1234-1234-1234567890kl"
    assert parsed.company_id == "09876543-4321-4321-4321-432143214323"
    assert parsed.file_id is None


def test_alfred_scalars_are_coerced() -> None:
    parsed = parse("alfred", load("alfred/alfred.job.retry.json"))
    event = parsed.model.event
    assert isinstance(event, JobRetry)
    assert event.merge is False
    assert event.exceeded_retries is False
    assert event.retries == 2
    assert event.file_count == 120
    assert event.update_date is None
    assert parsed.occurred_at == 1653443100.0
    category = parse("alfred", load("alfred/alfred.file.category_create.json")).model.event
    assert category.confidence == 0.93


def test_alfred_extra_fields_are_kept() -> None:
    payload = load("alfred/alfred.file.done.json")
    payload["event"]["page_count"] = "4"
    assert parse("alfred", payload).model.event.model_extra == {"page_count": "4"}


@pytest.mark.parametrize(
    "name",
    ["job_retry_event", "alfred_event_job_retry", "JobRetryEvent", "JobRetry", "alfred.job.retry"],
)
def test_job_retry_spellings_share_one_type(name: str) -> None:
    payload = load("alfred/alfred.job.retry.json")
    payload["event"]["event_name"] = name
    assert parse("alfred", payload).type == "alfred.job.retry"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("file_added_to_job_event", "alfred.file.add_to_job"),
        ("file_add_to_job_event", "alfred.file.add_to_job"),
        ("FileAddToJob", "alfred.file.add_to_job"),
        ("job_exceeded_retries_event", "alfred.job.exceeded_retries"),
        ("alfred_event_file_done", "alfred.file.done"),
        ("job_created_event", "alfred.job.create"),
        ("JobStartedEvent", "alfred.job.start"),
        ("job_event_type", None),
        ("file_teleported_event", None),
    ],
)
def test_name_spellings_normalise(name: str, expected: str | None) -> None:
    assert canonical_type(name) == expected


def test_unknown_alfred_event_is_rejected_or_accepted() -> None:
    payload = load("alfred/alfred.file.done.json")
    payload["event"]["event_name"] = "file_teleported_event"
    error = invalid("alfred", payload)
    assert [d.loc for d in error.details] == [("event", "event_name")]
    accepted = parse("alfred", payload, "accept")
    assert accepted.type == "alfred.unrecognised"
    assert accepted.model.event.event_name == "file_teleported_event"
    assert parse_event("alfred", Incoming(payload)) == accepted  # accept is the default
    assert accepted.file_id == payload["event"]["file_id"]
    del payload["event_id"]
    assert ("event_id",) in [d.loc for d in invalid("alfred", payload, "accept").details]


def test_category_fields_take_what_docs_and_sdks_send() -> None:
    # The docs give no range for confidence nor a type for description.
    payload = load("alfred/alfred.file.category_create.json")
    payload["event"]["confidence"] = 97
    payload["event"]["description"] = {"label": "Invoice", "lang": "en"}
    event = parse("alfred", payload, "reject").model.event
    assert (event.confidence, event.description) == (97, {"label": "Invoice", "lang": "en"})


def test_unknown_filecheck_shape_is_kept_by_default() -> None:
    accepted = parse_event("filecheck", Incoming({"id": "job_7", "status": "done"}))
    assert isinstance(accepted, ParsedEvent)
    assert (accepted.type, accepted.upstream_id) == (
        "filecheck.unrecognised", "filecheck.unrecognised:job_7")


def test_wrong_scalar_gives_its_location() -> None:
    payload = load("alfred/alfred.job.retry.json")
    payload["event"]["retries"] = "two"
    details = invalid("alfred", payload).details
    assert [d.loc for d in details] == [("event", "retries")]
    assert "integer" in details[0].msg


@pytest.mark.parametrize("field", ["event_id", "event_time", "event"])
def test_missing_envelope_field_is_rejected(field: str) -> None:
    payload = load("alfred/alfred.job.failed.json")
    del payload[field]
    assert (field,) in [d.loc for d in invalid("alfred", payload).details]


def test_empty_event_id_and_missing_job_id_are_rejected() -> None:
    payload = load("alfred/alfred.job.failed.json")
    broken = copy.deepcopy(payload)
    broken["event_id"] = ""
    assert [d.loc for d in invalid("alfred", broken).details] == [("event_id",)]
    del payload["event"]["job_id"]
    assert [d.loc for d in invalid("alfred", payload).details] == [("event", "job_id")]


def test_handshake_returns_challenge() -> None:
    payload = load("alfred/url_verification.json")
    result = parse_event("alfred", Incoming(payload))
    assert result == Handshake(payload["challenge"])
    payload["challenge"] = 42
    assert [d.loc for d in invalid("alfred", payload).details] == [("challenge",)]


def test_filecheck_shapes_and_correlation_keys() -> None:
    completed = parse("filecheck", load("filecheck/filecheck.job.completed.json"))
    assert completed.type == "filecheck.job.completed"
    assert completed.upstream_id == "filecheck.job.completed:job_01HV3K9Q2T7W8X4YB6N0CZ5D1E"
    assert completed.job_id == "job_01HV3K9Q2T7W8X4YB6N0CZ5D1E"
    assert completed.company_id == "cus_8841"
    assert completed.task_ids == ("tsk_01HV3K9QA1", "tsk_01HV3K9QA2")
    assert completed.file_id is None
    assert completed.occurred_at == 1710408413.512
    assert completed.model.status == "error"
    created = parse("filecheck", load("filecheck/filecheck.job.created.json"))
    assert (created.type, created.task_ids) == ("filecheck.job.created", ())
    assert created.upstream_id == "filecheck.job.created:job_01HV3K9Q2T7W8X4YB6N0CZ5D1E"


def test_filecheck_reject_sample_reads_as_rejected_file() -> None:
    job = parse("filecheck", load("filecheck/filecheck.job.completed.reject.json")).model
    assert (job.outcome, job.policy.onFail) == ("fail", "reject")


def test_filecheck_unknown_shape_and_bad_enum() -> None:
    body = {"id": "job_9", "status": "done"}
    assert invalid("filecheck", body).details[0].loc == ()
    accepted = parse("filecheck", body, "accept")
    assert (accepted.type, accepted.job_id) == ("filecheck.unrecognised", "job_9")
    payload = load("filecheck/filecheck.job.completed.json")
    payload["status"] = "exploded"
    assert [d.loc for d in invalid("filecheck", payload).details] == [("status",)]


def test_standard_envelope() -> None:
    payload = load("standard/file.processing_failed.json")
    parsed = parse("standard", payload, headers={"webhook-id": "msg_2b"})
    assert (parsed.type, parsed.upstream_id) == ("file.processing_failed", "msg_2b")
    assert parsed.file_id == payload["data"]["file_id"]
    assert parsed.occurred_at == 1793527200.0
    # A payload without a type is still an event (the spec's envelope is a recommendation).
    del payload["type"]
    assert parse("standard", payload, headers={"webhook-id": "msg_2c"}).type == "unknown"


def test_standard_takes_any_object_with_paths_for_type_id_and_time() -> None:
    payload = {"action": "opened", "delivery": {"guid": 72}, "at": 1_793_527_200_123,
               "job_id": "j1", "file_id": 5, "company_id": True}
    paths = PayloadPaths(type="action", id="delivery.guid", occurred_at="at")
    parsed = parse_event("standard", Incoming(payload, {"webhook-id": "m1"}, paths))
    assert isinstance(parsed, ParsedEvent)
    assert (parsed.type, parsed.upstream_id) == ("opened", "72")
    assert parsed.occurred_at == 1_793_527_200.123  # milliseconds
    assert (parsed.job_id, parsed.file_id, parsed.company_id) == ("j1", "5", None)
    # The payload's own type wins over type_path; a missing id falls back to the header.
    parsed = parse_event("standard", Incoming(
        {"type": "pr.opened", "action": "x"}, {"webhook-id": "m2"}, paths))
    assert (parsed.type, parsed.upstream_id, parsed.occurred_at) == ("pr.opened", "m2", None)
    # A type that is not a string falls through to the path, then to "unknown".
    assert parse("standard", {"type": 3, "action": "closed"}, headers={}).type == "unknown"
    parsed = parse_event("standard", Incoming({"type": 3, "action": "closed"}, {}, paths))
    assert parsed.type == "closed"
    bad = {"action": "a\nb"}
    with pytest.raises(EventInvalid) as caught:
        parse_event("standard", Incoming(bad, {}, paths))
    assert [d.loc for d in caught.value.details] == [("action",)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2022-11-03T20:26:10.344522Z", 1667507170.344522),
        ("2022-11-03T20:26:10", 1667507170.0),
        (1_667_507_170, 1_667_507_170.0),
        ("1667507170.5", 1_667_507_170.5),
        (1_667_507_170_344, 1_667_507_170.344),
        ("yesterday", None), (True, None), (-5, None), ({"at": 1}, None), ("nan", None),
    ],
)
def test_standard_event_time_forms(value: Any, expected: float | None) -> None:
    parsed = parse_event(
        "standard", Incoming({"t": value}, {}, PayloadPaths(occurred_at="t")))
    assert isinstance(parsed, ParsedEvent)
    assert parsed.occurred_at == expected


def test_standard_correlation_keys_from_data_else_top_level() -> None:
    both = {"type": "t", "job_id": "top", "data": {"job_id": "inner"}}
    assert parse("standard", both).job_id == "inner"
    assert parse("standard", {"type": "t", "job_id": "top", "data": [1]}).job_id == "top"


def test_standard_dedupe_key_from_svix_id() -> None:
    headers = {"svix-id": "msg_s", "svix-timestamp": "1", "svix-signature": "v1,x"}
    assert parse("standard", {"type": "t"}, headers=headers).upstream_id == "msg_s"
    headers["webhook-signature"] = "v1,y"
    headers["webhook-id"] = "msg_w"
    assert parse("standard", {"type": "t"}, headers=headers).upstream_id == "msg_w"


def test_unknown_platform_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="nope"):
        parse_event("nope", Incoming({}))


def test_export_writes_one_loadable_schema_per_type(tmp_path: Path) -> None:
    written = export_json_schemas(tmp_path / "out")
    assert len(written) == ALFRED_EVENT_COUNT + 2 + 1
    names = {path.name for path in written}
    assert {"alfred.job.retry.json", "filecheck.job.completed.json", "standard.json"} <= names
    for path in written:
        schema = json.loads(path.read_text())
        assert schema["type"] == "object"
        assert "properties" in schema


CORPUS_ALFRED = Path(__file__).parents[2] / "shared" / "corpus" / "alfred"
TYPED_FIELDS = {"merge": bool, "exceeded_retries": bool, "retries": int, "file_count": int}


def _typed(raw: Any, kind: type) -> Any:
    if not isinstance(raw, str):
        return raw
    return raw == "true" if kind is bool else int(raw)


@pytest.mark.parametrize("spelling", ["docs", "python_sdk", "node_sdk"])
@pytest.mark.parametrize(
    "stem", ["job_create", "job_retry", "job_exceeded_retries", "job_failed", "job_invalid"])
def test_corpus_job_events_give_typed_values(spelling: str, stem: str) -> None:
    # What a resubmission carries upstream (merge, counts) must be real booleans and integers,
    # whichever spelling the event came in: the docs send "merge": "false", "retries": "2".
    payload = json.loads((CORPUS_ALFRED / spelling / f"{stem}.json").read_text())
    event = parse("alfred", payload, "reject").model.event
    raw = payload["event"]
    for name, kind in TYPED_FIELDS.items():
        if name in raw:
            value = getattr(event, name)
            assert type(value) is kind and value == _typed(raw[name], kind), (name, value)
    for name in ("error_messages", "file_urls"):
        assert getattr(event, name, None) == raw.get(name)
