"""The built-in handlers against real local servers and `httpx.MockTransport`, and loading."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from standardwebhooks.webhooks import Webhook

from app.clock import SystemClock
from app.config import HandlerSettings, settings_from_mapping
from app.main import create_app
from app.worker import WorkerSettings, classify
from handlers import Clock, Context, Permanent, Retry
from handlers.email import EmailHandler
from handlers.forward import ForwardHandler
from handlers.log import LogHandler
from handlers.registry import HandlerLoadError, load_handlers
from handlers.slack import SlackHandler
from schemas import Incoming, ParsedEvent, parse_event
from schemas.records import EventRecord

from conftest import START, FakeClock, base_config, sample, standard_body, standard_headers

FORWARD_SECRET = "whsec_" + base64.b64encode(b"hookline-forward-secret-0123456").decode()
SLACK_URL = "https://hooks.slack.com/services/T0001/B0002/abcDEF123"
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")

Responder = Callable[[httpx.Request], httpx.Response]


# Events and contexts.


def standard_event(body: bytes | None = None) -> EventRecord:
    """A stored Standard Webhooks event whose body is deliberately not canonical JSON."""
    raw = body if body is not None else (
        b'{"type": "file.processing_failed",  "timestamp": "2026-11-01T10:00:00Z",\n'
        b' "data": {"platform": "dcycle", "name": "caf\\u00e9"}}'
    )
    return EventRecord(
        id="evt_forward_1", source="partner", type="file.processing_failed", upstream_id="m1",
        status="pending", received_at=START, occurred_at=None, payload=json.loads(raw), body=raw,
    )


def alfred_failed_event() -> EventRecord:
    """The recorded Alfred JobFailed sample, parsed as ingest would store it."""
    raw = sample("alfred/alfred.job.failed.json")
    payload = json.loads(raw)
    parsed = parse_event("alfred", Incoming(payload))
    assert isinstance(parsed, ParsedEvent)
    return EventRecord(
        id="evt_alfred_1", source="alfred", type=parsed.type, upstream_id=parsed.upstream_id,
        status="pending", received_at=START, occurred_at=parsed.occurred_at,
        job_id=parsed.job_id, file_id=parsed.file_id, company_id=parsed.company_id,
        payload=payload, body=raw,
    )


def make_ctx(
    http: httpx.AsyncClient, handler: Any, options: dict[str, Any], clock: Clock | None = None
) -> Context:
    """A Context as the worker builds it, with `options` validated by the handler's model."""
    return Context(
        http=http,
        options=handler.Options.model_validate(options),
        log=logging.getLogger(f"hookline.handler.{handler.name}"),
        clock=clock or FakeClock(),
        handler_name=handler.name,
    )


def mock_http(responder: Responder, seen: list[httpx.Request]) -> httpx.AsyncClient:
    """An AsyncClient whose every request is recorded in `seen` and answered by `responder`."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responder(request)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# A real local HTTP receiver.


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpSink:
    """A minimal HTTP/1.1 server on 127.0.0.1 that records each request and answers `status`."""

    status: int = 204
    requests: list[Received] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Received(method, target, headers, body))
            writer.write(
                f"HTTP/1.1 {self.status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                .encode()
            )
            await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()


@pytest.fixture
async def sink() -> AsyncIterator[HttpSink]:
    receiver = HttpSink()
    server = await asyncio.start_server(receiver.serve, "127.0.0.1", 0)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        await server.wait_closed()


# forward


async def test_forward_posts_signed_original_bytes_to_a_real_receiver(sink: HttpSink) -> None:
    event = standard_event()
    handler = ForwardHandler()
    options = {
        "url": f"{sink.url}/in/hook?tenant=acme",
        "secret": FORWARD_SECRET,
        "headers": {"x-tenant": "acme", "authorization": "Bearer out-token"},
    }
    async with httpx.AsyncClient(trust_env=False) as http:
        await handler.handle(event, make_ctx(http, handler, options, SystemClock()))

    [received] = sink.requests
    assert received.method == "POST"
    assert received.target == "/in/hook?tenant=acme"
    assert event.body is not None and received.body == event.body
    assert received.headers["content-type"] == "application/json"
    assert received.headers["x-tenant"] == "acme"
    assert received.headers["authorization"] == "Bearer out-token"
    assert received.headers["webhook-id"] == event.id
    signed = {name: received.headers[name] for name in SIGNATURE_HEADERS}
    Webhook(FORWARD_SECRET).verify(received.body, signed)


async def test_forward_signature_is_over_the_clock_time_and_exact_bytes() -> None:
    event = standard_event()
    handler = ForwardHandler()
    seen: list[httpx.Request] = []
    clock = FakeClock()
    async with mock_http(lambda r: httpx.Response(200), seen) as http:
        await handler.handle(event, make_ctx(http, handler, {"url": "https://r.example/h",
                                                             "secret": FORWARD_SECRET}, clock))
    [request] = seen
    assert request.content == event.body
    assert request.headers["webhook-timestamp"] == str(int(START))
    expected = Webhook(FORWARD_SECRET).sign(
        event.id, datetime.fromtimestamp(int(START), UTC), request.content.decode()
    )
    assert request.headers["webhook-signature"] == expected


async def test_forward_without_secret_sends_no_signature() -> None:
    handler = ForwardHandler()
    seen: list[httpx.Request] = []
    async with mock_http(lambda r: httpx.Response(204), seen) as http:
        await handler.handle(standard_event(), make_ctx(http, handler, {"url": "http://r.example"}))
    [request] = seen
    assert "webhook-signature" not in request.headers
    assert request.headers["webhook-id"] == standard_event().id  # for the receiver's dedupe


@pytest.mark.parametrize("status", [200, 204])
async def test_forward_2xx_is_success(status: int) -> None:
    handler = ForwardHandler()
    seen: list[httpx.Request] = []
    async with mock_http(lambda r: httpx.Response(status), seen) as http:
        result = await handler.handle(
            standard_event(), make_ctx(http, handler, {"url": "https://r.example/h"})
        )
    assert result is None and len(seen) == 1


@pytest.mark.parametrize("status", [500, 503, 408, 429])
async def test_forward_retryable_statuses_raise_retry(status: int) -> None:
    handler = ForwardHandler()
    async with mock_http(lambda r: httpx.Response(status), []) as http:
        with pytest.raises(Retry) as info:
            await handler.handle(
                standard_event(), make_ctx(http, handler, {"url": "https://r.example/h"})
            )
    assert info.value.http_status == status
    assert info.value.after is None


@pytest.mark.parametrize(
    ("status", "retry_after", "after"),
    [(429, "7", 7.0), (503, "120", 120.0), (503, "Wed, 21 Oct 2015 07:28:00 GMT", None)],
)
async def test_forward_retry_after_header(
    status: int, retry_after: str, after: float | None
) -> None:
    handler = ForwardHandler()
    answer = httpx.Response(status, headers={"retry-after": retry_after})
    async with mock_http(lambda r: answer, []) as http:
        with pytest.raises(Retry) as info:
            await handler.handle(
                standard_event(), make_ctx(http, handler, {"url": "https://r.example/h"})
            )
    assert info.value.after == after
    assert info.value.http_status == status
    assert classify(info.value).retry_after == after


@pytest.mark.parametrize("status", [400, 404, 410])
async def test_forward_other_4xx_are_permanent(status: int) -> None:
    handler = ForwardHandler()
    async with mock_http(lambda r: httpx.Response(status), []) as http:
        with pytest.raises(Permanent) as info:
            await handler.handle(
                standard_event(), make_ctx(http, handler, {"url": "https://r.example/h"})
            )
    assert info.value.http_status == status
    assert classify(info.value).outcome == "permanent"


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def _time_out(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


@pytest.mark.parametrize("responder", [_refuse, _time_out])
async def test_forward_network_failures_are_transient(responder: Responder) -> None:
    handler = ForwardHandler()
    async with mock_http(responder, []) as http:
        with pytest.raises(httpx.TransportError) as info:
            await handler.handle(
                standard_event(), make_ctx(http, handler, {"url": "https://r.example/h"})
            )
    assert not isinstance(info.value, Permanent)
    assert classify(info.value).outcome == "transient"


async def test_forward_to_a_closed_port_is_transient() -> None:
    handler = ForwardHandler()
    url = f"http://127.0.0.1:{free_port()}/hook"
    async with httpx.AsyncClient(trust_env=False) as http:
        with pytest.raises(httpx.ConnectError) as info:
            await handler.handle(standard_event(), make_ctx(http, handler, {"url": url}))
    assert classify(info.value).outcome == "transient"


async def test_forward_allowed_hosts_refuses_other_hosts_without_a_request() -> None:
    handler = ForwardHandler()
    seen: list[httpx.Request] = []
    options = {"url": "https://evil.example/h", "allowed_hosts": ["receiver.example"]}
    async with mock_http(lambda r: httpx.Response(200), seen) as http:
        with pytest.raises(Permanent, match="allowed_hosts"):
            await handler.handle(standard_event(), make_ctx(http, handler, options))
        assert seen == []
        allowed = {**options, "url": "https://receiver.example/h"}
        await handler.handle(standard_event(), make_ctx(http, handler, allowed))
    assert [r.url.host for r in seen] == ["receiver.example"]


# slack


async def test_slack_posts_the_rendered_template() -> None:
    event = alfred_failed_event()
    handler = SlackHandler()
    seen: list[httpx.Request] = []
    options = {"webhook_url": SLACK_URL, "template": "{type} job {job_id}: {error}"}
    async with mock_http(lambda r: httpx.Response(200, text="ok"), seen) as http:
        await handler.handle(event, make_ctx(http, handler, options))
    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == SLACK_URL
    assert request.url.path == "/services/T0001/B0002/abcDEF123"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "text": "alfred.job.failed job 4f1c2b7e-8d3a-4c59-9e61-2a7b5d0c9f13: "
                "Unsupported file format: .heic"
    }


async def test_slack_unknown_template_fields_render_empty() -> None:
    handler = SlackHandler()
    seen: list[httpx.Request] = []
    options = {"webhook_url": SLACK_URL,
               "template": "{type}|{nope}|{nope.deeper}|{data[missing]}|{company_name}|{0}"}
    async with mock_http(lambda r: httpx.Response(200), seen) as http:
        await handler.handle(alfred_failed_event(), make_ctx(http, handler, options))
    [request] = seen
    assert json.loads(request.content) == {"text": "alfred.job.failed||||Innovation Works|"}


@pytest.mark.parametrize(("status", "raised"), [(404, Permanent), (500, Retry)])
async def test_slack_error_statuses(status: int, raised: type[Exception]) -> None:
    handler = SlackHandler()
    async with mock_http(lambda r: httpx.Response(status), []) as http:
        with pytest.raises(raised):
            await handler.handle(
                alfred_failed_event(), make_ctx(http, handler, {"webhook_url": SLACK_URL})
            )


# email


class Mailbox:
    """An aiosmtpd handler that keeps every envelope it is given."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, server_hostname="localhost")
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


async def test_email_sends_one_rendered_message(smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    event = alfred_failed_event()
    handler = EmailHandler()
    options = {
        "host": "127.0.0.1", "port": port, "sender": "hookline@example.com",
        "to": ["ops@example.com", "dev@example.com"],
        "subject": "[{source}] {type} {job_id}",
        "template": "Job {job_id} of {company_name} failed: {error}\nevent {id}",
        "timeout": 5,
    }
    async with httpx.AsyncClient() as http:
        await handler.handle(event, make_ctx(http, handler, options))

    [envelope] = mailbox.envelopes
    assert envelope.mail_from == "hookline@example.com"
    assert envelope.rcpt_tos == ["ops@example.com", "dev@example.com"]
    assert isinstance(envelope.content, bytes)
    message = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert message["From"] == "hookline@example.com"
    assert message["To"] == "ops@example.com, dev@example.com"
    assert message["Subject"] == (
        "[alfred] alfred.job.failed 4f1c2b7e-8d3a-4c59-9e61-2a7b5d0c9f13"
    )
    body = message.get_body(("plain",))
    assert body is not None
    assert body.get_content().splitlines() == [
        "Job 4f1c2b7e-8d3a-4c59-9e61-2a7b5d0c9f13 of Innovation Works failed: "
        "Unsupported file format: .heic",
        "event evt_alfred_1",
    ]


# log


async def test_log_handler_logs_the_event_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hookline.handler.log")
    event = alfred_failed_event()
    handler = LogHandler()
    async with httpx.AsyncClient() as http:
        await handler.handle(event, make_ctx(http, handler, {"level": "warning"}))
    [record] = [r for r in caplog.records if r.name == "hookline.handler.log"]
    assert record.levelno == logging.WARNING
    assert event.id in record.getMessage()
    assert "alfred.job.failed" in record.getMessage()


# Loading and option validation.


class NoHandle:
    name = "no_handle"


class SyncHandle:
    name = "sync_handle"

    def handle(self, event: Any, ctx: Any) -> None:
        return None


class TooFewParams:
    name = "too_few"

    async def handle(self, event: Any) -> None:
        return None


class TooManyParams:
    name = "too_many"

    async def handle(self, event: Any, ctx: Any, extra: Any) -> None:
        return None


class SyncPoll:
    async def handle(self, event: Any, ctx: Any) -> None:
        return None

    def poll(self, data: Any, ctx: Any) -> None:
        return None


class PollWithoutCtx:
    async def handle(self, event: Any, ctx: Any) -> None:
        return None

    async def poll(self, data: Any) -> None:
        return None


class Nameless:
    async def handle(self, event: Any, ctx: Any) -> None:
        return None


def configured(**handlers: dict[str, Any]) -> dict[str, HandlerSettings]:
    return {name: HandlerSettings.model_validate(raw) for name, raw in handlers.items()}


def load_problems(**handlers: dict[str, Any]) -> list[str]:
    with pytest.raises(HandlerLoadError) as info:
        load_handlers(configured(**handlers))
    return info.value.problems


def test_builtins_load_with_validated_options() -> None:
    loaded = load_handlers(configured(
        out={"use": "forward", "options": {"url": "https://r.example/h", "secret": "whsec_x"}},
        chat={"use": "slack", "options": {"webhook_url": SLACK_URL}},
        audit={"use": "log"},
    ))
    assert isinstance(loaded["out"].handler, ForwardHandler)
    assert loaded["out"].options.url == "https://r.example/h"
    assert isinstance(loaded["chat"].handler, SlackHandler)
    assert loaded["audit"].options.level == "info"


def test_bad_forward_url_names_its_key_path() -> None:
    [problem] = load_problems(out={"use": "forward", "options": {"url": "ftp://x"}})
    assert problem.startswith("handlers.out.options.url: ")
    assert "http:// or https://" in problem


def test_missing_slack_webhook_url_names_its_key_path() -> None:
    [problem] = load_problems(chat={"use": "slack", "options": {"template": "{type}"}})
    assert problem == "handlers.chat.options.webhook_url: Field required"


@pytest.mark.parametrize(
    ("use", "options"),
    [
        ("forward", {"url": "https://r.example/h"}),
        ("slack", {"webhook_url": SLACK_URL}),
        ("email", {"host": "smtp.example", "sender": "a@example", "to": ["b@example"]}),
        ("log", {}),
    ],
)
def test_a_misspelt_option_of_a_builtin_is_refused_with_its_key_path(
    use: str, options: dict[str, Any]
) -> None:
    load_handlers(configured(it={"use": use, "options": options}))
    [problem] = load_problems(it={"use": use, "options": {**options, "temlpate": "{type}"}})
    assert problem.startswith("handlers.it.options.temlpate: ")


@pytest.mark.parametrize(
    ("use", "message"),
    [
        ("carrier_pigeon", "no built-in handler or entry point named 'carrier_pigeon'"),
        ("no_such_module_xyz:thing", "cannot load 'no_such_module_xyz:thing'"),
        ("test_handlers:NoHandle", "'test_handlers:NoHandle' has no handle(event, ctx) method"),
        ("test_handlers:SyncHandle", "'test_handlers:SyncHandle' handle must be an async function"),
        ("test_handlers:TooFewParams",
         "'test_handlers:TooFewParams' handle must take (event, ctx)"),
        ("test_handlers:TooManyParams",
         "'test_handlers:TooManyParams' handle must take (event, ctx)"),
        ("test_handlers:SyncPoll", "'test_handlers:SyncPoll' poll must be an async function"),
        ("test_handlers:PollWithoutCtx",
         "'test_handlers:PollWithoutCtx' poll must take (data, ctx)"),
    ],
)
def test_unusable_handlers_are_refused(use: str, message: str) -> None:
    [problem] = load_problems(bad={"use": use})
    assert problem.startswith("handlers.bad.use: ")
    assert message in problem


def test_a_handler_needs_no_name_of_its_own() -> None:
    loaded = load_handlers(configured(plain={"use": "test_handlers:Nameless"}))
    assert loaded["plain"].name == "plain"


@pytest.mark.parametrize("after", [-1, float("nan"), float("inf"), True, "30"])
def test_retry_refuses_a_delay_that_is_not_seconds(after: Any) -> None:
    with pytest.raises(ValueError, match="seconds >= 0"):
        Retry(after=after)


def test_retry_takes_keywords_only() -> None:
    with pytest.raises(TypeError):
        Retry("busy")  # type: ignore[misc]
    retry = Retry(after=2, reason="busy", http_status=429)
    assert (retry.after, str(retry), retry.http_status) == (2.0, "busy", 429)


def test_every_problem_is_reported_at_once() -> None:
    problems = load_problems(
        good={"use": "log"},
        out={"use": "forward", "options": {"url": "ftp://x", "timeout": 0}},
        chat={"use": "slack"},
        pigeon={"use": "carrier_pigeon"},
        sync={"use": "test_handlers:SyncHandle"},
    )
    assert [p.split(":")[0] for p in problems] == [
        "handlers.out.options.url",
        "handlers.out.options.timeout",
        "handlers.chat.options.webhook_url",
        "handlers.pigeon.use",
        "handlers.sync.use",
    ]


# End to end through the app.


async def test_forward_route_end_to_end(tmp_path: Path, clock: FakeClock) -> None:
    config = base_config(tmp_path / "forward.db")
    config["handlers"] = {"out": {"use": "forward", "options": {
        "url": "https://receiver.example/hooks/in", "secret": FORWARD_SECRET,
        "headers": {"x-hookline-route": "out"},
    }}}
    config["routes"] = [{"match": "*", "handler": "out"}]
    seen: list[httpx.Request] = []
    async with mock_http(lambda r: httpx.Response(204), seen) as http:
        app = create_app(
            settings_from_mapping(config, {}), clock=clock, http=http,
            worker_settings=WorkerSettings(background=False),
        )
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                body = standard_body(file_id="22222222-2222-2222-2222-222222222222")
                posted = await client.post(
                    "/webhooks/partner", content=body,
                    headers=standard_headers(body, clock.now(), "msg_e2e"),
                )
                assert posted.status_code == 202, posted.text
                event_id = posted.json()["id"]
                assert seen == []
                clock.advance(5)
                assert await app.state.runtime.worker.run_once() == 1
                event = (await client.get(f"/api/events/{event_id}")).json()

    [request] = seen
    assert request.method == "POST" and str(request.url) == "https://receiver.example/hooks/in"
    assert request.content == body
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-hookline-route"] == "out"
    assert request.headers["webhook-id"] == event_id
    assert request.headers["webhook-timestamp"] == str(int(clock.now()))
    expected = Webhook(FORWARD_SECRET).sign(
        event_id, datetime.fromtimestamp(int(clock.now()), UTC), body.decode()
    )
    assert request.headers["webhook-signature"] == expected
    [delivery] = event["deliveries"]
    assert delivery["handler"] == "out"
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 1
    assert event["status"] == "delivered"
