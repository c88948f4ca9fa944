"""The four upstream-retry handlers against `httpx.MockTransport` platforms that check every
request against PLATFORMS.md, with in-memory bookkeeping and a clock that moves only when told."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import HandlerSettings
from handlers import Context, Permanent, PollOutcome, Retry
from handlers.aitronos import AitronosRetry
from handlers.alfred import AlfredResubmit
from handlers.dcycle import DcycleRetry
from handlers.filecheck import FilecheckResubmit
from handlers.registry import HandlerLoadError, load_handlers
from handlers.upstream import lookup_path, reset_breakers
from schemas import Incoming, ParsedEvent, parse_event
from schemas.records import EventRecord

from conftest import START, FakeClock, sample

Responder = Callable[[httpx.Request], httpx.Response]
NO_BODY = object()

FILE_ID = "6f1d3c2a-9b47-4e85-a0d3-5c7e8f21b964"
ORG_ID = "2b8e4f60-1d3a-4c7b-9e25-7a6f0c3d8b19"
STORE_ID = "st_42"
TOKEN = "tok-s3cret-value"
ALFRED_JOB = "4f1c2b7e-8d3a-4c59-9e61-2a7b5d0c9f13"
FC_JOB = "job_01HV3K9Q2T7W8X4YB6N0CZ5D1E"
CORPUS = Path(__file__).parents[2] / "shared" / "corpus"

DCYCLE = {"token": TOKEN, "organization_id": ORG_ID}
AITRONOS = {"token": TOKEN, "organization_id": ORG_ID, "store_id": STORE_ID}
FILECHECK = {"token": "sk_live_123"}
ALFRED = {"base_url": "https://app.tagshelf.com", "api_key": "alfred-key-1"}
DCYCLE_SEND = "https://api.dcycle.io/v1/files/send-event"
DCYCLE_READINGS = f"https://api.dcycle.io/v1/files/readings?file_id={FILE_ID}"
AITRONOS_FILE = (f"https://api.aitronos.com/v1/organizations/{ORG_ID}/stores/{STORE_ID}"
                 f"/files/{FILE_ID}")


# In-memory bookkeeping, platforms and contexts.


@dataclass
class FakeUpstream:
    """`handlers.Upstream` over plain collections."""

    budgets: dict[str, int] = field(default_factory=dict)
    marks: set[str] = field(default_factory=set)
    polls: list[tuple[str, str, dict[str, Any], float, float]] = field(default_factory=list)
    related: list[EventRecord] = field(default_factory=list)
    refunds: list[str] = field(default_factory=list)

    async def take_budget(self, key: str, limit: int) -> int | None:
        used = self.budgets.get(key, 0)
        if used >= limit:
            return None
        self.budgets[key] = used + 1
        return used + 1

    async def refund_budget(self, key: str) -> None:
        self.budgets[key] = max(0, self.budgets.get(key, 0) - 1)
        self.refunds.append(key)

    async def once(self, key: str) -> bool:
        first = key not in self.marks
        self.marks.add(key)
        return first

    async def schedule_poll(
        self, kind: str, key: str, data: dict[str, Any], first_after: float, deadline_after: float
    ) -> str:
        self.polls.append((kind, key, data, first_after, deadline_after))
        return f"poll_{len(self.polls)}"

    async def related_events(
        self, *, job_id: str | None = None, file_id: str | None = None
    ) -> list[EventRecord]:
        return [e for e in self.related
                if (job_id is not None and e.job_id == job_id)
                or (file_id is not None and e.file_id == file_id)]


@dataclass
class Platform:
    """A fake upstream: records every request and answers with `responder`."""

    responder: Responder
    seen: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        return self.responder(request)


def expect(
    method: str, url: str, headers: dict[str, str | None], body: Any,
    status: int = 200, answer: Any = True,
) -> Responder:
    """A responder that asserts the exact request (a None header must be absent)."""

    def respond(request: httpx.Request) -> httpx.Response:
        assert request.method == method
        assert str(request.url) == url
        for name, value in headers.items():
            assert request.headers.get(name) == value, name
        if body is NO_BODY:
            assert request.content == b""
            assert "content-type" not in request.headers
        else:
            assert request.headers["content-type"] == "application/json"
            assert json.loads(request.content) == body
        return httpx.Response(status, json=answer)

    return respond


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Responder:
    return lambda request: httpx.Response(status, json=body, headers=headers)


def transport_error(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@dataclass
class Rig:
    clock: FakeClock = field(default_factory=FakeClock)
    upstream: FakeUpstream = field(default_factory=FakeUpstream)
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def ctx(self, handler: Any, options: dict[str, Any], platform: Platform,
            *, with_upstream: bool = True) -> Context:
        client = httpx.AsyncClient(transport=httpx.MockTransport(platform))
        self.clients.append(client)
        return Context(
            http=client, options=handler.Options.model_validate(options),
            log=logging.getLogger(f"hookline.handler.{handler.name}"), clock=self.clock,
            handler_name=handler.name, upstream=self.upstream if with_upstream else None,
        )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    reset_breakers()
    made = Rig()
    yield made
    for client in made.clients:
        await client.aclose()
    reset_breakers()


def record(source: str, payload: dict[str, Any], event_id: str = "evt_1") -> EventRecord:
    """An event as ingest would store it (canonical type and ids from the real parser)."""
    parsed = parse_event(source, Incoming(payload))
    assert isinstance(parsed, ParsedEvent)
    return EventRecord(
        id=event_id, source=source, type=parsed.type, upstream_id=parsed.upstream_id,
        status="pending", received_at=START, occurred_at=parsed.occurred_at,
        job_id=parsed.job_id, file_id=parsed.file_id, payload=payload,
    )


def loaded(path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(sample(path))
    return data


def file_event() -> EventRecord:
    return record("standard", loaded("standard/file.processing_failed.json"))


# Shared helpers.


def test_lookup_path_reads_keys_and_indexes_and_misses_as_none() -> None:
    payload = {"data": {"file_id": "f1", "tasks": [{"id": "t0"}, {"id": "t1"}]}}
    assert lookup_path(payload, "data.file_id") == "f1"
    assert lookup_path(payload, "data.tasks.1.id") == "t1"
    assert lookup_path(payload, "data.tasks.2.id") is None
    assert lookup_path(payload, "data.nope") is None
    assert lookup_path(payload, "data.file_id.deeper") is None


# Dcycle.


async def test_dcycle_sends_the_documented_request_and_schedules_a_poll(rig: Rig) -> None:
    platform = Platform(expect("POST", DCYCLE_SEND, {
        "authorization": f"Bearer {TOKEN}", "x-organization-id": ORG_ID, "x-partner": "acme",
    }, {"event_type": "PROCESS_DOCUMENT", "detail": {"file_id": FILE_ID}}))
    ctx = rig.ctx(DcycleRetry, {**DCYCLE, "partner": "acme", "poll_first_seconds": 30}, platform)
    await DcycleRetry().handle(file_event(), ctx)
    assert len(platform.seen) == 1
    assert rig.upstream.budgets == {f"dcycle:file:{FILE_ID}": 1}
    assert rig.upstream.polls == [
        ("dcycle.reading", f"dcycle:file:{FILE_ID}", {"file_id": FILE_ID}, 30.0, 3600.0)
    ]


async def test_dcycle_without_partner_sends_no_partner_header(rig: Rig) -> None:
    platform = Platform(expect("POST", DCYCLE_SEND, {"x-partner": None}, {
        "event_type": "PROCESS_DOCUMENT", "detail": {"file_id": FILE_ID}}))
    await DcycleRetry().handle(file_event(), rig.ctx(DcycleRetry, DCYCLE, platform))
    assert len(platform.seen) == 1


async def test_budget_of_three_is_used_up_on_the_fourth_call(rig: Rig) -> None:
    platform = Platform(answer(200, True))
    ctx = rig.ctx(DcycleRetry, {**DCYCLE, "budget": 3}, platform)
    for _ in range(3):
        await DcycleRetry().handle(file_event(), ctx)
    with pytest.raises(Permanent) as info:
        await DcycleRetry().handle(file_event(), ctx)
    assert info.value.reason == f"retry budget of 3 used up for dcycle:file:{FILE_ID}"
    assert len(platform.seen) == 3
    assert len(rig.upstream.polls) == 3


async def test_transport_error_refunds_the_unit_and_asks_for_a_retry(rig: Rig) -> None:
    platform = Platform(transport_error)
    with pytest.raises(Retry) as info:
        await DcycleRetry().handle(file_event(), rig.ctx(DcycleRetry, DCYCLE, platform))
    assert "ConnectError" in str(info.value)
    assert TOKEN not in str(info.value)
    assert rig.upstream.budgets == {f"dcycle:file:{FILE_ID}": 0}
    assert rig.upstream.refunds == [f"dcycle:file:{FILE_ID}"]
    assert rig.upstream.polls == []


async def test_server_error_keeps_the_unit_and_honours_retry_after(rig: Rig) -> None:
    platform = Platform(answer(503, {"message": "busy"}, {"retry-after": "17"}))
    with pytest.raises(Retry) as info:
        await DcycleRetry().handle(file_event(), rig.ctx(DcycleRetry, DCYCLE, platform))
    assert (info.value.after, info.value.http_status) == (17.0, 503)
    assert rig.upstream.budgets == {f"dcycle:file:{FILE_ID}": 1}


async def test_unauthorized_is_permanent_and_names_no_secret(rig: Rig) -> None:
    platform = Platform(answer(401, {"message": "Unauthorized"}))
    with pytest.raises(Permanent) as info:
        await DcycleRetry().handle(file_event(), rig.ctx(DcycleRetry, DCYCLE, platform))
    assert info.value.http_status == 401
    assert TOKEN not in info.value.reason


async def test_missing_file_id_is_permanent_and_names_the_path(rig: Rig) -> None:
    platform = Platform(answer(200, True))
    ctx = rig.ctx(DcycleRetry, {**DCYCLE, "file_id_path": "data.document"}, platform)
    with pytest.raises(Permanent, match="'data.document'"):
        await DcycleRetry().handle(file_event(), ctx)
    assert platform.seen == []


async def test_without_upstream_bookkeeping_nothing_is_sent(rig: Rig) -> None:
    platform = Platform(answer(200, True))
    ctx = rig.ctx(DcycleRetry, DCYCLE, platform, with_upstream=False)
    with pytest.raises(Permanent, match="needs the upstream bookkeeping"):
        await DcycleRetry().handle(file_event(), ctx)
    assert platform.seen == []


def reading(status: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": "it1", "name": "bill.pdf", "category": "invoices",
                            "linked": False}
    item["reading"] = None if status is None else {"id": "rd1", "status": status}
    return item


@pytest.mark.parametrize(("items", "expected"), [
    ([reading("success")], "success"),
    ([reading("success"), reading("error")], "error"),
    ([], None),
    ([reading(None)], None),
])
async def test_dcycle_poll_reads_the_outcome(
    rig: Rig, items: list[dict[str, Any]], expected: str | None
) -> None:
    platform = Platform(expect("GET", DCYCLE_READINGS, {
        "authorization": f"Bearer {TOKEN}", "x-organization-id": ORG_ID}, NO_BODY, answer=items))
    outcome = await DcycleRetry().poll({"file_id": FILE_ID},
                                       rig.ctx(DcycleRetry, DCYCLE, platform))
    if expected is None:
        assert outcome is None
    else:
        assert outcome == PollOutcome(expected, {"file_id": FILE_ID, "readings": items})
    assert len(platform.seen) == 1


async def test_dcycle_poll_waits_on_server_errors_and_stops_on_not_found(rig: Rig) -> None:
    down = rig.ctx(DcycleRetry, DCYCLE, Platform(answer(502)))
    assert await DcycleRetry().poll({"file_id": FILE_ID}, down) is None
    gone = rig.ctx(DcycleRetry, DCYCLE, Platform(answer(404, {"message": "no such file"})))
    with pytest.raises(Permanent, match="no such file"):
        await DcycleRetry().poll({"file_id": FILE_ID}, gone)


# Circuit breaker.


async def test_breaker_opens_after_five_server_errors_and_closes_after_a_good_trial(
    rig: Rig,
) -> None:
    failing = Platform(answer(500))
    ctx = rig.ctx(DcycleRetry, {**DCYCLE, "budget": 100}, failing)
    for _ in range(5):
        with pytest.raises(Retry):
            await DcycleRetry().handle(file_event(), ctx)
    assert len(failing.seen) == 5
    with pytest.raises(Retry) as info:
        await DcycleRetry().handle(file_event(), ctx)
    assert len(failing.seen) == 5  # refused without a request
    assert info.value.after == pytest.approx(60.0)
    assert rig.upstream.budgets[f"dcycle:file:{FILE_ID}"] == 5  # the refused unit came back
    rig.clock.advance(30)
    with pytest.raises(Retry) as info:
        await DcycleRetry().handle(file_event(), ctx)
    assert info.value.after == pytest.approx(30.0)
    rig.clock.advance(31)
    healthy = Platform(answer(200, True))
    ctx = rig.ctx(DcycleRetry, {**DCYCLE, "budget": 100}, healthy)
    await DcycleRetry().handle(file_event(), ctx)  # the half-open trial
    await DcycleRetry().handle(file_event(), ctx)  # closed again
    assert len(healthy.seen) == 2


async def test_failed_trial_reopens_the_breaker(rig: Rig) -> None:
    failing = Platform(transport_error)
    ctx = rig.ctx(DcycleRetry, {**DCYCLE, "budget": 100}, failing)
    for _ in range(5):
        with pytest.raises(Retry):
            await DcycleRetry().handle(file_event(), ctx)
    rig.clock.advance(61)
    with pytest.raises(Retry):
        await DcycleRetry().handle(file_event(), ctx)
    assert len(failing.seen) == 6
    with pytest.raises(Retry) as info:
        await DcycleRetry().handle(file_event(), ctx)
    assert len(failing.seen) == 6
    assert info.value.after == pytest.approx(60.0)
    assert rig.upstream.budgets[f"dcycle:file:{FILE_ID}"] == 0  # nothing ever reached it


async def test_client_errors_do_not_open_the_breaker(rig: Rig) -> None:
    platform = Platform(answer(429))
    ctx = rig.ctx(DcycleRetry, {**DCYCLE, "budget": 100}, platform)
    for _ in range(7):
        with pytest.raises(Retry):
            await DcycleRetry().handle(file_event(), ctx)
    assert len(platform.seen) == 7


# Aitronos.


async def test_aitronos_retries_with_no_body_and_schedules_a_poll(rig: Rig) -> None:
    status = {"status": "pending", "progress_percent": 0, "current_step": "queued",
              "error_message": None, "started_at": None, "completed_at": None}
    platform = Platform(expect("POST", f"{AITRONOS_FILE}/retry",
                               {"authorization": f"Bearer {TOKEN}"}, NO_BODY, answer=status))
    await AitronosRetry().handle(file_event(), rig.ctx(AitronosRetry, AITRONOS, platform))
    assert len(platform.seen) == 1
    assert rig.upstream.polls == [
        ("aitronos.file", f"aitronos:file:{FILE_ID}", {"file_id": FILE_ID}, 60.0, 3600.0)
    ]


def not_in_store(request: httpx.Request) -> httpx.Response:
    return httpx.Response(404, json={"success": False, "error": {
        "code": "FILE_NOT_IN_STORE", "message": "File is not in this store",
        "type": "client_error", "status": 404}})


async def test_aitronos_file_not_in_store_is_terminal_and_free(rig: Rig) -> None:
    platform = Platform(not_in_store)
    with pytest.raises(Permanent, match="file not in store"):
        await AitronosRetry().handle(file_event(), rig.ctx(AitronosRetry, AITRONOS, platform))
    assert rig.upstream.budgets == {f"aitronos:file:{FILE_ID}": 0}
    assert rig.upstream.polls == []


async def test_aitronos_other_not_found_costs_the_unit(rig: Rig) -> None:
    platform = Platform(answer(404, {"success": False, "error": {"code": "STORE_NOT_FOUND"}}))
    with pytest.raises(Permanent):
        await AitronosRetry().handle(file_event(), rig.ctx(AitronosRetry, AITRONOS, platform))
    assert rig.upstream.budgets == {f"aitronos:file:{FILE_ID}": 1}


@pytest.mark.parametrize(("status", "expected"), [
    ("completed", "completed"), ("failed", "failed"), ("processing", None), ("pending", None),
])
async def test_aitronos_poll_reads_the_status(
    rig: Rig, status: str, expected: str | None
) -> None:
    obj = {"status": status, "progress_percent": 100, "error_message": None}
    platform = Platform(expect("GET", f"{AITRONOS_FILE}/status",
                               {"authorization": f"Bearer {TOKEN}"}, NO_BODY, answer=obj))
    outcome = await AitronosRetry().poll({"file_id": FILE_ID},
                                         rig.ctx(AitronosRetry, AITRONOS, platform))
    if expected is None:
        assert outcome is None
    else:
        assert outcome == PollOutcome(expected, {"file_id": FILE_ID, **obj})


async def test_aitronos_poll_of_a_file_not_in_store_fails_it(rig: Rig) -> None:
    outcome = await AitronosRetry().poll(
        {"file_id": FILE_ID}, rig.ctx(AitronosRetry, AITRONOS, Platform(not_in_store)))
    assert outcome is not None and outcome.status == "failed"
    assert outcome.payload["error"]["code"] == "FILE_NOT_IN_STORE"
    assert TOKEN not in json.dumps(outcome.payload)


def aitronos_event(**data: Any) -> EventRecord:
    return record("standard", {"type": "file.processing_failed",
                               "timestamp": "2026-11-01T10:00:00Z", "data": data})


async def test_aitronos_ids_may_all_come_from_the_event_and_the_poll_keeps_them(
    rig: Rig,
) -> None:
    options = {"token": TOKEN, "organization_id_path": "data.org", "store_id_path": "data.store",
               "file_id_path": "data.doc"}
    platform = Platform(expect("POST", f"{AITRONOS_FILE}/retry",
                               {"authorization": f"Bearer {TOKEN}"}, NO_BODY,
                               answer={"status": "pending"}))
    ctx = rig.ctx(AitronosRetry, options, platform)
    await AitronosRetry().handle(aitronos_event(org=ORG_ID, store=STORE_ID, doc=FILE_ID), ctx)
    assert len(platform.seen) == 1
    ids = {"organization_id": ORG_ID, "store_id": STORE_ID, "file_id": FILE_ID}
    assert rig.upstream.polls == [
        ("aitronos.file", f"aitronos:file:{FILE_ID}", ids, 60.0, 3600.0)]
    status = Platform(expect("GET", f"{AITRONOS_FILE}/status",
                             {"authorization": f"Bearer {TOKEN}"}, NO_BODY,
                             answer={"status": "completed"}))
    outcome = await AitronosRetry().poll(ids, rig.ctx(AitronosRetry, options, status))
    assert outcome == PollOutcome("completed", {"file_id": FILE_ID, "status": "completed"})


async def test_aitronos_literal_file_id_and_escaped_ids(rig: Rig) -> None:
    options = {"token": TOKEN, "organization_id": "org 1", "store_id_path": "data.store",
               "file_id": "doc?x=1#y"}
    platform = Platform(answer(200, {"status": "pending"}))
    await AitronosRetry().handle(aitronos_event(store="vs:é"),
                                 rig.ctx(AitronosRetry, options, platform))
    [request] = platform.seen
    assert request.url.raw_path == (
        b"/v1/organizations/org%201/stores/vs%3A%C3%A9/files/doc%3Fx%3D1%23y/retry")
    assert request.url.query == b""


@pytest.mark.parametrize("file_id", [
    "..", ".", "%2e%2e", "%2E", "a/b", "a%2Fb", "..%2f..", "a\\b", "%5c", "%252e%252e",
])
async def test_aitronos_file_id_that_is_no_path_segment_makes_no_request(
    rig: Rig, file_id: str
) -> None:
    platform = Platform(answer(200, {"status": "pending"}))
    with pytest.raises(Permanent, match="not a single path segment"):
        await AitronosRetry().handle(aitronos_event(file_id=file_id),
                                     rig.ctx(AitronosRetry, AITRONOS, platform))
    assert platform.seen == []
    assert rig.upstream.budgets == {} and rig.upstream.polls == []


async def test_aitronos_poll_with_an_unsafe_recorded_id_makes_no_request(rig: Rig) -> None:
    platform = Platform(answer(200, {"status": "completed"}))
    with pytest.raises(Permanent, match="not a single path segment"):
        await AitronosRetry().poll({"file_id": ".."},
                                   rig.ctx(AitronosRetry, AITRONOS, platform))
    assert platform.seen == []


@pytest.mark.parametrize(("options", "problem"), [
    ({"organization_id": ORG_ID, "organization_id_path": "data.org", "store_id": STORE_ID},
     "handlers.a.options.organization_id: Value error, give organization_id or "
     "organization_id_path, not both"),
    ({"organization_id": ORG_ID},
     "handlers.a.options.store_id: Value error, give store_id (the id) or store_id_path"),
    ({"organization_id": "..", "store_id": STORE_ID},
     "handlers.a.options.organization_id: Value error, '..' is not a single path segment"),
    ({"organization_id": ORG_ID, "store_id": "a%2Fb"},
     "handlers.a.options.store_id: Value error, 'a%2Fb' is not a single path segment"),
    ({"organization_id": ORG_ID, "store_id": STORE_ID, "file_id": "x",
      "file_id_path": "data.file_id"},
     "handlers.a.options.file_id: Value error, give file_id or file_id_path, not both"),
])
def test_aitronos_id_options_are_checked_at_start(options: dict[str, Any], problem: str) -> None:
    [found] = problems(a={"use": "aitronos_retry", "options": {"token": TOKEN, **options}})
    assert found.startswith(problem)


# Filecheck.


def filecheck_event(payload: dict[str, Any] | None = None) -> EventRecord:
    return record("filecheck", payload or loaded("filecheck/filecheck.job.completed.json"))


async def test_filecheck_resubmits_the_errored_task_tagged(rig: Rig) -> None:
    body = {
        "sources": [{"fileRef": "cus_8841/inner.pdf", "steps": [{"type": "preflight"}]}],
        "ruleId": "rule_print_a4_cmyk", "policy": {"onFail": "manual_review"},
        "customerId": "cus_8841", "orderId": "ORD-2024-11873", "channel": "api",
        "metaData": {"shop": "printhaus-de", "attempt": 1,
                     "hookline_original_job_id": FC_JOB, "hookline_attempt": 1},
    }
    platform = Platform(expect("POST", "https://api.filecheck.io/jobs",
                               {"authorization": "Bearer sk_live_123"}, body, 201,
                               {"job": {"id": "job_new"}}))
    await FilecheckResubmit().handle(filecheck_event(),
                                     rig.ctx(FilecheckResubmit, FILECHECK, platform))
    assert len(platform.seen) == 1
    assert rig.upstream.budgets == {f"filecheck:job:{FC_JOB}": 1}
    assert rig.upstream.marks == {f"filecheck:resubmit:{FC_JOB}"}


def corpus_job(**changes: Any) -> dict[str, Any]:
    """Filecheck's own job.completed fixture (tasks with `source: null` and a `fileRef`)."""
    job: dict[str, Any] = json.loads((CORPUS / "filecheck/webhook.job-completed.json").read_text())
    job.update(changes)
    return job


def errored_corpus_job(**changes: Any) -> dict[str, Any]:
    """The fixture as it would come had its only task failed to process."""
    job = corpus_job(**{"status": "error", "outcome": None, **changes})
    task = job["tasks"][0]
    task.update(status="error", outcome=None)
    task["steps"][1].update(status="error", outcome=None, reason="Renderer crashed")
    return job


CORPUS_JOB = "job_01jf8n2q4vxw9k3m5p7r9t1v3x"
CORPUS_RESUBMISSION = {
    "sources": [{"fileRef": "upload_01jf8n2p3uvw8j2l4n6p8r0t2v",
                 "steps": [{"type": "preflight"}, {"type": "autofix"}]}],
    "ruleId": "rule_business_cards", "customerId": "cust_301", "orderId": "order_5512",
    "channel": "store", "policy": {"onFail": "reject"},
    "metaData": {"cartId": "cart_88112", "hookline_original_job_id": CORPUS_JOB,
                 "hookline_attempt": 1},
}


async def test_filecheck_resubmits_its_own_fixture_as_create_job_params(rig: Rig) -> None:
    options = {**FILECHECK, "webhook": {
        "url": "https://hooks.example/webhooks/filecheck", "headers": {"x-hook-token": "fc-t"}}}
    body = {**CORPUS_RESUBMISSION, "webhook": {
        "url": "https://hooks.example/webhooks/filecheck", "headers": {"x-hook-token": "fc-t"}}}
    platform = Platform(expect("POST", "https://api.filecheck.io/jobs", {
        "authorization": "Bearer sk_live_123", "content-type": "application/json"},
        body, 201, {"job": {"id": "job_new"}}))
    await FilecheckResubmit().handle(filecheck_event(errored_corpus_job()),
                                     rig.ctx(FilecheckResubmit, options, platform))
    assert len(platform.seen) == 1
    assert rig.upstream.marks == {f"filecheck:resubmit:{CORPUS_JOB}"}


async def test_filecheck_step_params_are_kept_and_run_details_dropped(rig: Rig) -> None:
    job = errored_corpus_job()
    job["tasks"][0]["steps"][0].update(params={"profileId": "default"}, runtimeParams=None,
                                       started="2026-07-29T10:15:05.000Z", duration=7000)
    job["tasks"][0]["steps"][1]["params"] = None
    platform = Platform(answer(201, {"job": {"id": "job_new"}}))
    await FilecheckResubmit().handle(filecheck_event(job),
                                     rig.ctx(FilecheckResubmit, FILECHECK, platform))
    [source] = json.loads(platform.seen[0].content)["sources"]
    assert source["steps"] == [{"type": "preflight", "params": {"profileId": "default"}},
                               {"type": "autofix"}]


async def test_filecheck_fixture_as_delivered_is_not_resubmitted(rig: Rig) -> None:
    platform = Platform(answer(201, {"job": {}}))
    await FilecheckResubmit().handle(filecheck_event(corpus_job()),
                                     rig.ctx(FilecheckResubmit, FILECHECK, platform))
    assert platform.seen == [] and rig.upstream.marks == set()


async def test_filecheck_task_rejected_by_policy_stays_out_of_the_resubmission(rig: Rig) -> None:
    job = errored_corpus_job(outcome="mixed")
    rejected = json.loads(json.dumps(job["tasks"][0]))
    rejected.update(id="task_rejected", status="done", outcome="fail", fileRef="upload_rejected")
    job["tasks"].append(rejected)
    platform = Platform(answer(201, {"job": {"id": "job_new"}}))
    await FilecheckResubmit().handle(filecheck_event(job),
                                     rig.ctx(FilecheckResubmit, FILECHECK, platform))
    sent = json.loads(platform.seen[0].content)
    assert [s["fileRef"] for s in sent["sources"]] == ["upload_01jf8n2p3uvw8j2l4n6p8r0t2v"]


@pytest.mark.parametrize(("locators", "sent"), [
    ({"url": "https://files.example/a.pdf", "fileRef": "upload_1", "source": "s3://b/a.pdf"},
     {"url": "https://files.example/a.pdf"}),
    ({"fileRef": None, "source": "s3://b/a.pdf"}, {"source": "s3://b/a.pdf"}),
    ({"fileRef": "upload_1", "source": None}, {"fileRef": "upload_1"}),
])
async def test_filecheck_sends_exactly_one_locator_per_source(
    rig: Rig, locators: dict[str, Any], sent: dict[str, Any]
) -> None:
    job = errored_corpus_job()
    job["tasks"][0].update(locators)
    platform = Platform(answer(201, {"job": {"id": "job_new"}}))
    await FilecheckResubmit().handle(filecheck_event(job),
                                     rig.ctx(FilecheckResubmit, FILECHECK, platform))
    [source] = json.loads(platform.seen[0].content)["sources"]
    assert source == {**sent, "steps": [{"type": "preflight"}, {"type": "autofix"}]}


@pytest.mark.parametrize(("task", "reason"), [
    ({"fileRef": None, "source": None}, "has none of url, fileRef, source"),
    ({"steps": []}, "has 0 steps"),
])
async def test_filecheck_task_that_cannot_be_resubmitted_burns_no_mark(
    rig: Rig, task: dict[str, Any], reason: str
) -> None:
    job = errored_corpus_job()
    job["tasks"][0].update(task)
    platform = Platform(answer(201, {"job": {}}))
    with pytest.raises(Permanent, match=reason):
        await FilecheckResubmit().handle(filecheck_event(job),
                                         rig.ctx(FilecheckResubmit, FILECHECK, platform))
    assert platform.seen == [] and rig.upstream.marks == set() and rig.upstream.budgets == {}


async def test_filecheck_rejected_by_policy_is_never_resubmitted(rig: Rig) -> None:
    platform = Platform(answer(201, {"job": {}}))
    event = filecheck_event(loaded("filecheck/filecheck.job.completed.reject.json"))
    await FilecheckResubmit().handle(event, rig.ctx(FilecheckResubmit, FILECHECK, platform))
    assert platform.seen == []
    assert rig.upstream.budgets == {} and rig.upstream.marks == set()


async def test_filecheck_same_failure_twice_is_resubmitted_once(rig: Rig) -> None:
    platform = Platform(answer(201, {"job": {"id": "job_new"}}))
    ctx = rig.ctx(FilecheckResubmit, FILECHECK, platform)
    await FilecheckResubmit().handle(filecheck_event(), ctx)
    await FilecheckResubmit().handle(filecheck_event(), ctx)
    assert len(platform.seen) == 1


async def test_filecheck_without_processing_errors_does_nothing(rig: Rig) -> None:
    job = loaded("filecheck/filecheck.job.completed.json")
    job["status"] = "done"
    for task in job["tasks"]:
        task["status"] = "done"
    platform = Platform(answer(201, {"job": {}}))
    await FilecheckResubmit().handle(filecheck_event(job),
                                     rig.ctx(FilecheckResubmit, FILECHECK, platform))
    assert platform.seen == []


async def test_filecheck_resubmission_chain_shares_the_root_budget(rig: Rig) -> None:
    job = loaded("filecheck/filecheck.job.completed.json")
    job.update(id="job_second", channel=None,
               metaData={"hookline_original_job_id": FC_JOB, "hookline_attempt": 1})
    for task in job["tasks"]:
        task["status"] = "done"  # only the job itself errored: every source goes again
    rig.upstream.budgets[f"filecheck:job:{FC_JOB}"] = 1
    platform = Platform(answer(201, {"job": {}}))
    ctx = rig.ctx(FilecheckResubmit, {**FILECHECK, "channel": "admin"}, platform)
    await FilecheckResubmit().handle(filecheck_event(job), ctx)
    sent = json.loads(platform.seen[0].content)
    assert sent["sources"] == [
        {"fileRef": "cus_8841/cover.pdf", "steps": [{"type": "preflight"}]},
        {"fileRef": "cus_8841/inner.pdf", "steps": [{"type": "preflight"}]}]
    assert sent["channel"] == "admin"
    assert sent["metaData"] == {"hookline_original_job_id": FC_JOB, "hookline_attempt": 2}
    assert rig.upstream.budgets == {f"filecheck:job:{FC_JOB}": 2}
    assert rig.upstream.marks == {"filecheck:resubmit:job_second"}


async def test_filecheck_unreachable_is_dead_lettered_with_the_unit_back(rig: Rig) -> None:
    platform = Platform(transport_error)
    with pytest.raises(Permanent, match="cannot deduplicate"):
        await FilecheckResubmit().handle(filecheck_event(),
                                         rig.ctx(FilecheckResubmit, FILECHECK, platform))
    assert rig.upstream.budgets == {f"filecheck:job:{FC_JOB}": 0}


async def test_filecheck_error_body_message_is_in_the_reason(rig: Rig) -> None:
    platform = Platform(answer(400, {"error": True, "message": "sources must not be empty"}))
    with pytest.raises(Permanent, match="sources must not be empty") as info:
        await FilecheckResubmit().handle(filecheck_event(),
                                         rig.ctx(FilecheckResubmit, FILECHECK, platform))
    assert info.value.http_status == 400
    assert "sk_live_123" not in info.value.reason


# Alfred.


def alfred_event(path: str, event_id: str, **changes: Any) -> EventRecord:
    payload = loaded(path)
    payload["event"].update(changes)
    return record("alfred", payload, event_id)


async def test_alfred_job_still_retrying_is_left_to_alfred(rig: Rig) -> None:
    platform = Platform(answer(200, {}))
    ctx = rig.ctx(AlfredResubmit, ALFRED, platform)
    await AlfredResubmit().handle(alfred_event("alfred/alfred.job.retry.json", "evt_r"), ctx)
    await AlfredResubmit().handle(
        alfred_event("alfred/alfred.job.retry.json", "evt_r2", exceeded_retries=False), ctx)
    assert platform.seen == []
    assert rig.upstream.budgets == {}


ALFRED_UPLOAD = "https://app.tagshelf.com/api/file/upload"
ALFRED_HEADERS: dict[str, str | None] = {
    "x-tagshelfapi-key": "alfred-key-1", "content-type": "application/json"}


async def test_alfred_failed_job_is_uploaded_again_with_earlier_file_urls(rig: Rig) -> None:
    urls = ["https://example.com/files/acme-0312.pdf", "https://example.com/files/acme-0313.pdf"]
    rig.upstream.related = [
        alfred_event("alfred/alfred.job.create.json", "evt_create"),
        alfred_event("alfred/alfred.job.retry.json", "evt_retry", job_id=ALFRED_JOB,
                     file_urls=urls, merge="true", metadata='{"batch": "2024-03-14"}'),
        alfred_event("alfred/alfred.job.start.json", "evt_start", job_id=ALFRED_JOB),
    ]
    body = {"urls": urls, "merge": True, "metadata": {"batch": "2024-03-14"}}
    platform = Platform(expect("POST", ALFRED_UPLOAD, ALFRED_HEADERS, body, 200,
                               {"file_id": "n"}))
    failed = alfred_event("alfred/alfred.job.failed.json", "evt_failed")
    await AlfredResubmit().handle(failed, rig.ctx(AlfredResubmit, ALFRED, platform))
    assert len(platform.seen) == 1
    assert rig.upstream.budgets == {f"alfred:job:{ALFRED_JOB}": 1}


async def test_alfred_object_metadata_of_separate_files_is_propagated(rig: Rig) -> None:
    body = {"urls": ["https://example.com/files/acme-0311.pdf",
                     "https://example.com/files/acme-0312.pdf",
                     "https://example.com/files/acme-0313.pdf"],
            "merge": False, "metadata": {"source": "sftp", "batch": "2024-03-14"},
            "propagate_metadata": True}
    rig.upstream.related = [alfred_event("alfred/alfred.job.create.json", "evt_create")]
    platform = Platform(expect("POST", ALFRED_UPLOAD, ALFRED_HEADERS, body))
    failed = alfred_event("alfred/alfred.job.failed.json", "evt_failed")
    await AlfredResubmit().handle(failed, rig.ctx(AlfredResubmit, ALFRED, platform))
    assert len(platform.seen) == 1


async def test_alfred_exceeded_retry_uses_its_own_urls(rig: Rig) -> None:
    event = alfred_event("alfred/alfred.job.retry.json", "evt_x", exceeded_retries="true")
    body = {"urls": ["https://example.com/files/data1.xlsx",
                     "https://example.com/files/data2.xlsx"], "merge": False}
    platform = Platform(expect("POST", ALFRED_UPLOAD, ALFRED_HEADERS, body))
    await AlfredResubmit().handle(event, rig.ctx(AlfredResubmit, ALFRED, platform))
    assert len(platform.seen) == 1


def alfred_corpus(spelling: str, name: str, **changes: Any) -> EventRecord:
    """One of the Alfred events in the shared corpus, in the docs' or an SDK's spelling."""
    payload = json.loads((CORPUS / "alfred" / spelling / f"{name}.json").read_text())
    payload["event"].update(changes)
    return record("alfred", payload, f"{spelling}-{name}")


SPELLINGS = ["docs", "python_sdk", "node_sdk"]
CORPUS_URLS = ["https://storage.example.com/documents/invoice-001.pdf",
               "https://storage.example.com/documents/invoice-002.pdf"]


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_alfred_corpus_exceeded_retries_is_uploaded_with_real_values(
    rig: Rig, spelling: str
) -> None:
    # merge arrives as "false" or false; the text metadata is no JSON the upload takes
    body = {"urls": CORPUS_URLS, "merge": False}
    platform = Platform(expect("POST", ALFRED_UPLOAD, ALFRED_HEADERS, body, 200,
                               {"file_id": "f-new"}))
    event = alfred_corpus(spelling, "job_exceeded_retries")
    assert event.type == "alfred.job.exceeded_retries"
    await AlfredResubmit().handle(event, rig.ctx(AlfredResubmit, ALFRED, platform))
    assert len(platform.seen) == 1
    assert rig.upstream.budgets == {"alfred:job:12345678-1234-1234-1234-123456789abc": 1}


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_alfred_corpus_retry_is_left_to_alfred(rig: Rig, spelling: str) -> None:
    platform = Platform(answer(200, {}))
    event = alfred_corpus(spelling, "job_retry")
    assert event.type == "alfred.job.retry"
    await AlfredResubmit().handle(event, rig.ctx(AlfredResubmit, ALFRED, platform))
    assert platform.seen == [] and rig.upstream.budgets == {}


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_alfred_corpus_failed_job_takes_the_create_events_files(
    rig: Rig, spelling: str
) -> None:
    failed = alfred_corpus(spelling, "job_failed")
    job_id = failed.payload["event"]["job_id"]
    rig.upstream.related = [alfred_corpus(spelling, "job_create", job_id=job_id,
                                          metadata='{"quarter": "Q2"}')]
    # the create event merged its files ("merge": "true"), so the metadata is one object
    body = {"urls": CORPUS_URLS, "merge": True, "metadata": {"quarter": "Q2"}}
    platform = Platform(expect("POST", ALFRED_UPLOAD, ALFRED_HEADERS, body))
    await AlfredResubmit().handle(failed, rig.ctx(AlfredResubmit, ALFRED, platform))
    assert len(platform.seen) == 1
    assert rig.upstream.budgets == {f"alfred:job:{job_id}": 1}


@pytest.mark.parametrize(("metadata", "merge", "sent"), [
    ('[{"n": 1}, {"n": 2}]', "false", {"metadata": [{"n": 1}, {"n": 2}]}),
    ('[{"n": 1}]', "false", {}),  # not one object per URL
    ('[{"n": 1}, {"n": 2}]', "true", {}),  # a merged file takes one object
    ("{'DocumentType': 'Invoice'}", "false", {}),  # not JSON
    ({"k": "v"}, False, {"metadata": {"k": "v"}, "propagate_metadata": True}),
])
async def test_alfred_metadata_goes_only_in_a_shape_the_upload_takes(
    rig: Rig, metadata: Any, merge: Any, sent: dict[str, Any]
) -> None:
    event = alfred_corpus("docs", "job_exceeded_retries", metadata=metadata, merge=merge)
    platform = Platform(answer(200, {"file_id": "f-new"}))
    await AlfredResubmit().handle(event, rig.ctx(AlfredResubmit, ALFRED, platform))
    assert json.loads(platform.seen[0].content) == {
        "urls": CORPUS_URLS, "merge": merge in ("true", True), **sent}


async def test_alfred_more_urls_than_one_upload_takes_is_permanent(rig: Rig) -> None:
    urls = [f"https://storage.example.com/documents/{n}.pdf" for n in range(101)]
    event = alfred_corpus("docs", "job_exceeded_retries", file_urls=urls)
    platform = Platform(answer(200, {}))
    with pytest.raises(Permanent, match="101 file URLs"):
        await AlfredResubmit().handle(event, rig.ctx(AlfredResubmit, ALFRED, platform))
    assert platform.seen == [] and rig.upstream.budgets == {}


async def test_alfred_without_known_file_urls_is_permanent(rig: Rig) -> None:
    platform = Platform(answer(200, {}))
    failed = alfred_event("alfred/alfred.job.failed.json", "evt_failed")
    with pytest.raises(Permanent, match=f"no file URLs known for job {ALFRED_JOB}"):
        await AlfredResubmit().handle(failed, rig.ctx(AlfredResubmit, ALFRED, platform))
    assert platform.seen == [] and rig.upstream.budgets == {}


# Options, through the registry as at start.


def problems(**handlers: dict[str, Any]) -> list[str]:
    configured = {name: HandlerSettings.model_validate(raw) for name, raw in handlers.items()}
    with pytest.raises(HandlerLoadError) as info:
        load_handlers(configured)
    return info.value.problems


def test_builtins_load_by_name() -> None:
    configured = {name: HandlerSettings.model_validate(raw) for name, raw in {
        "d": {"use": "dcycle_retry", "options": DCYCLE},
        "a": {"use": "aitronos_retry", "options": AITRONOS},
        "f": {"use": "filecheck_resubmit", "options": FILECHECK},
        "r": {"use": "alfred_resubmit", "options": {**ALFRED, "base_url": "https://a.example/"}},
    }.items()}
    loaded_handlers = load_handlers(configured)
    assert isinstance(loaded_handlers["d"].handler, DcycleRetry)
    assert loaded_handlers["d"].options.budget == 3
    assert loaded_handlers["r"].options.base_url == "https://a.example"
    assert TOKEN not in repr(loaded_handlers["d"].options)


def test_missing_and_bad_options_are_named() -> None:
    found = problems(
        d={"use": "dcycle_retry", "options": {"organization_id": ORG_ID, "budget": -1}},
        a={"use": "aitronos_retry", "options": {"token": TOKEN, "organization_id": ORG_ID}},
        f={"use": "filecheck_resubmit", "options": {**FILECHECK, "channel": "fax"}},
        r={"use": "alfred_resubmit", "options": {"api_key": "k", "tokne": "x"}},
    )
    joined = "\n".join(found)
    assert "handlers.d.options.token: Field required" in joined
    assert "handlers.d.options.budget: " in joined
    assert ("handlers.a.options.store_id: Value error, give store_id (the id) or store_id_path"
            in joined)
    assert "handlers.f.options.channel: " in joined
    assert "handlers.r.options.base_url: Field required" in joined
    assert "handlers.r.options.tokne: " in joined


def test_poll_deadline_must_come_after_the_first_poll() -> None:
    [problem] = problems(d={"use": "dcycle_retry", "options": {
        **DCYCLE, "poll_first_seconds": 600, "poll_deadline_seconds": 60}})
    assert problem.startswith("handlers.d.options.poll_deadline_seconds: ")
