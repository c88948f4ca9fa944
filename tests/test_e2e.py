"""End to end over TCP: `hookline serve` as a subprocess, `hookline send`, `hookline events`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from conftest import SAMPLES
from server import running_server


def hookline(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=cwd, capture_output=True, text=True,
        timeout=60, check=False,
    )


def test_demo_server_send_and_list(tmp_path: Path) -> None:
    sample = SAMPLES / "standard" / "file.processing_failed.json"
    with running_server([], cwd=tmp_path) as server:
        secret = (tmp_path / "hookline-demo.secret").read_text().strip()
        assert secret.startswith("whsec_")
        assert secret in server.output  # printed once at start

        sent = hookline("send", "demo", str(sample), "--url", f"{server.url}/webhooks/demo",
                        cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr
        status, body = sent.stdout.splitlines()[:2]
        assert status == "202"
        event_id = json.loads(body)["id"]

        again = hookline("send", "demo", str(sample), "--url", f"{server.url}/webhooks/demo",
                         cwd=tmp_path)
        assert again.stdout.splitlines()[0] == "202"  # a new webhook-id: a new event

        listing = httpx.get(f"{server.url}/api/events", timeout=5).json()
        assert event_id in [item["id"] for item in listing["items"]]
        assert len(listing["items"]) == 2

        table = hookline("events", "list", cwd=tmp_path)
        assert table.returncode == 0, table.stderr
        assert event_id in table.stdout
        assert "file.processing_failed" in table.stdout

        unsigned = httpx.post(f"{server.url}/webhooks/demo", content=sample.read_bytes(),
                              headers={"content-type": "application/json"}, timeout=5)
        assert unsigned.status_code == 401
        assert unsigned.json()["error"]["code"] == "unauthorized"
    assert f"event_id={event_id}" in server.output
    # The demo routes every event to the `log` handler: see it fire.
    assert f"event {event_id} file.processing_failed from demo" in server.output


def test_query_token_never_logged(tmp_path: Path) -> None:
    config = tmp_path / "hookline.toml"
    config.write_text(
        '[storage]\nurl = "sqlite:///hl.db"\n'
        '[sources.alfred]\nplatform = "alfred"\n'
        'auth = { scheme = "query_token", secrets = ["very-secret-token"] }\n'
    )
    body = (SAMPLES / "alfred" / "alfred.job.failed.json").read_bytes()
    with running_server(["--config", str(config), "--log-format", "json"], cwd=tmp_path) as server:
        ok = httpx.post(f"{server.url}/webhooks/alfred?token=very-secret-token", content=body,
                        headers={"content-type": "application/json"}, timeout=5)
        assert ok.status_code == 202
        bad = httpx.post(f"{server.url}/webhooks/alfred?token=very-secret-tokex", content=body,
                         headers={"content-type": "application/json"}, timeout=5)
        assert bad.status_code == 401
    assert "very-secret-tok" not in server.output
    lines = [json.loads(line) for line in server.output.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "hookline.access"]
    assert [line["status"] for line in access] == [202, 401]
    assert access[0]["type"] == "alfred.job.failed"
    assert access[0]["path"] == "/webhooks/alfred?token=REDACTED"


def test_live_tail_over_tcp_and_a_stop_that_does_not_wait_for_it(tmp_path: Path) -> None:
    sample = SAMPLES / "standard" / "file.processing_failed.json"
    with running_server([], cwd=tmp_path) as server, httpx.stream(
        "GET", f"{server.url}/api/stream", timeout=10
    ) as stream:
        lines = stream.iter_lines()
        assert next(lines) == "retry: 2000"
        sent = hookline("send", "demo", str(sample), "--url", f"{server.url}/webhooks/demo",
                        cwd=tmp_path)
        event_id = json.loads(sent.stdout.splitlines()[1])["id"]
        frame = []
        for line in lines:
            if line.startswith("data: ") and event_id in line:
                frame.append(json.loads(line.removeprefix("data: ")))
                break
        assert frame[0]["type"] == "file.processing_failed"
        # A stop ends the open tail instead of waiting out the 10 s grace period for it.
        # (uvicorn raises the signal again once it has shut down cleanly.)
        server.proc.terminate()
        assert server.proc.wait(timeout=5) in (0, -signal.SIGTERM)
        assert list(lines)[-1:] in ([], [""])


def test_json_mode_writes_only_json_lines_and_rejections_carry_their_code(tmp_path: Path) -> None:
    sample = SAMPLES / "standard" / "file.processing_failed.json"
    with running_server(["--log-format", "json"], cwd=tmp_path) as server:
        secret = (tmp_path / "hookline-demo.secret").read_text().strip()
        unsigned = httpx.post(f"{server.url}/webhooks/demo", content=sample.read_bytes(),
                              headers={"content-type": "application/json"}, timeout=5)
        assert unsigned.status_code == 401
        unknown = httpx.post(f"{server.url}/webhooks/nobody", content=b"{}",
                             headers={"content-type": "application/json"}, timeout=5)
        assert unknown.status_code == 404
    lines = [json.loads(line) for line in server.output.splitlines() if line.strip()]
    assert any(secret in line["message"] for line in lines)  # the demo banner, as JSON too
    access = [line for line in lines if line["logger"] == "hookline.access"]
    assert [(line["status"], line["error"]) for line in access] == [
        (401, "unauthorized"), (404, "unknown_source"),
    ]
    # The scheduler's per-job chatter stays below the log's level.
    assert not [line for line in lines if line["logger"].startswith("apscheduler")]
