"""`{error}` in templates: the latest error an event reports, in each platform's shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from handlers.error_text import error_text, failing_reasons
from handlers.slack import render
from schemas.records import EventRecord

from conftest import START, sample

CORPUS = Path(__file__).parents[2] / "shared" / "corpus"


def record(event_type: str, payload: Any) -> EventRecord:
    return EventRecord(id="evt_1", source="s", type=event_type, upstream_id=None,
                       status="pending", received_at=START, occurred_at=None, payload=payload)


@pytest.mark.parametrize("spelling", ["docs", "python_sdk", "node_sdk"])
def test_alfred_latest_error_is_the_last_message(spelling: str) -> None:
    failed = json.loads((CORPUS / "alfred" / spelling / "job_failed.json").read_text())
    assert failed["event"]["error_messages"] == ["Network connection lost", "Timeout"]
    assert error_text(failed) == "Timeout"
    assert render("{type}: {error}", record("alfred.job.failed", failed)) == (
        "alfred.job.failed: Timeout")
    file_failed = json.loads((CORPUS / "alfred" / spelling / "file_failed.json").read_text())
    assert error_text(file_failed) == "Extraction stage failed: unreadable page 2"


def test_messages_blank_or_elsewhere() -> None:
    assert error_text({"event": {"error_messages": ["first", " ", ""]}}) == "first"
    assert error_text({"event": {"error_messages": []}, "error_messages": ["a", "b"]}) == "b"
    assert error_text({"event": {"job_id": "j"}}) == ""
    assert error_text(["not", "an", "object"]) == ""


def test_filecheck_reasons_of_the_failing_steps() -> None:
    job = json.loads(sample("filecheck/filecheck.job.completed.json"))
    assert error_text(job) == "Renderer crashed: timeout after 120s"
    rejected = json.loads(sample("filecheck/filecheck.job.completed.reject.json"))
    assert error_text(rejected) == "Image resolution 96 dpi below minimum 300 dpi"
    assert render("{error}", record("filecheck.job.completed", rejected)) == (
        "Image resolution 96 dpi below minimum 300 dpi")
    # Filecheck's own fixture passed: its warnings and fixes are no errors.
    passed = json.loads((CORPUS / "filecheck" / "webhook.job-completed.json").read_text())
    assert error_text(passed) == ""


def test_filecheck_reasons_in_order_once_each() -> None:
    step = {"status": "done", "outcome": "fail", "reason": "bleed missing"}
    job = {"tasks": [
        {"steps": [{"status": "done", "outcome": "warn", "reason": "low ink"}, step]},
        {"steps": [{"status": "error", "outcome": None, "reason": "crashed"}, step,
                   {"status": "error", "reason": None}, "junk"]},
        {"steps": None}, "junk",
    ]}
    assert failing_reasons(job) == ["bleed missing", "crashed"]
    assert error_text(job) == "bleed missing; crashed"


def test_polled_outcomes() -> None:
    not_in_store = {"file_id": "f", "status": "failed",
                    "error": {"code": "FILE_NOT_IN_STORE", "message": "File not in store"}}
    assert error_text(not_in_store) == "File not in store"
    assert error_text({"status": "failed", "error_message": "OCR failed"}) == "OCR failed"
    assert error_text({"status": "failed", "error_message": None}) == ""
