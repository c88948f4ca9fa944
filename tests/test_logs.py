"""Log lines cannot be forged through callers' text, in either format."""

from __future__ import annotations

import json
import logging

import pytest

from app.logs import JsonFormatter, TextFormatter
from schemas import EventInvalid, Incoming, parse_event


def record(message: str, *args: object, **fields: object) -> logging.LogRecord:
    made = logging.LogRecord("hookline.test", logging.INFO, "", 0, message, args, None)
    made.fields = fields  # type: ignore[attr-defined]
    return made


def test_text_lines_escape_control_characters_in_messages_and_fields() -> None:
    line = TextFormatter().format(record(
        "event %s from %s", "evt_1\nFORGED line", "src\x00", path="/webhooks/x\r\nFORGED",
        type="a\x1b[31mred", empty=None))
    assert "\n" not in line and "\r" not in line and "\x00" not in line and "\x1b" not in line
    assert line.endswith(
        "event evt_1\\x0aFORGED line from src\\x00 path=/webhooks/x\\x0d\\x0aFORGED "
        "type=a\\x1b[31mred")


def test_text_lines_keep_tracebacks_readable() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        made = record("failed")
        made.exc_info = sys.exc_info()
    line = TextFormatter().format(made)
    assert "Traceback (most recent call last)" in line and "\nValueError: boom" in line


def test_json_lines_are_one_line_each() -> None:
    line = JsonFormatter().format(record("event %s", "a\nb", path="/x\r\ny"))
    assert "\n" not in line
    assert json.loads(line)["message"] == "event a\nb"


@pytest.mark.parametrize("event_type", ["a\nforged", "tab\there", "x" * 201, "nul\x00"])
def test_standard_types_must_be_printable_and_short(event_type: str) -> None:
    payload = {"type": event_type, "timestamp": "2026-11-01T10:00:00Z", "data": {}}
    with pytest.raises(EventInvalid):
        parse_event("standard", Incoming(payload, {"webhook-id": "m"}), "reject")


def test_ordinary_standard_types_pass() -> None:
    payload = {"type": "invoice.paid/v2:eu-west", "timestamp": "2026-11-01T10:00:00Z",
               "data": {}}
    parsed = parse_event("standard", Incoming(payload, {"webhook-id": "m"}), "reject")
    assert parsed.type == "invoice.paid/v2:eu-west"  # type: ignore[union-attr]


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_access_lines_are_the_lines_their_records_would_make(
    formatter: TextFormatter | JsonFormatter,
) -> None:
    fields = {"method": "POST", "path": "/webhooks/a\nb", "status": 202, "duration_ms": 1.25,
              "source": "a", "type": None, "event_id": "evt_1"}
    for created in (1_764_000_000.0, 1_764_000_000.999, 1_764_000_061.5):
        made = logging.LogRecord("hookline.access", logging.INFO, "", 0, "request", (), None)
        made.created, made.msecs = created, (created - int(created)) * 1000
        made.fields = fields  # type: ignore[attr-defined]
        assert formatter.access_line(created, fields) == formatter.format(made)


def test_the_writer_writes_every_queued_line_in_order_and_flushes_on_stop() -> None:
    import io
    import queue

    from app.logs import _Writer

    records: queue.SimpleQueue[object] = queue.SimpleQueue()
    stream = io.StringIO()
    writer = _Writer(records, stream, TextFormatter())
    for n in range(1200):  # more than one batch
        records.put((1_764_000_000.0 + n / 1000, {"status": n}))
    records.put(record("plain %s", "record"))
    records.put((1_764_000_002.0, {"status": object.__new__(_Unprintable)}))
    writer.start()
    writer.stop()
    lines = stream.getvalue().splitlines()
    assert [line.rsplit("=", 1)[1] for line in lines[:1200]] == [str(n) for n in range(1200)]
    assert lines[1200].endswith("hookline.test plain record")
    assert lines[1201] == "hookline: a log record could not be formatted (RuntimeError)"
    assert len(lines) == 1202


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")
