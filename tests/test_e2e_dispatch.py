"""Dispatch end to end over TCP: `hookline serve` forwarding to a local sink, retries, kill -9."""

from __future__ import annotations

import base64
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
from standardwebhooks.webhooks import Webhook

from conftest import STANDARD_SECRET, standard_body
from server import ServerProcess, Sink, running_server, wait_until

FORWARD_SECRET = "whsec_" + base64.b64encode(b"forward-secret-0123456789abcdef").decode()


def write_config(path: Path, sink_url: str) -> Path:
    config = path / "hookline.toml"
    config.write_text(f"""
[storage]
url = "sqlite:///{path / 'hl.db'}"

[worker]
sweep_seconds = 0.2
lease_margin_seconds = 1

[sources.partner]
platform = "standard"
unknown_events = "accept"
auth = {{ scheme = "standard_webhooks", secrets = ["{STANDARD_SECRET}"] }}

[[routes]]
match = "*"
handler = "out"

[handlers.out]
use = "forward"
max_attempts = 5
backoff_base_seconds = 0.05
timeout_seconds = 1

[handlers.out.options]
url = "{sink_url}"
secret = "{FORWARD_SECRET}"
""")
    return config


def post(url: str, msg_id: str, **data: object) -> httpx.Response:
    body = standard_body(**data) if data else standard_body()
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(STANDARD_SECRET).sign(msg_id, now, body.decode()),
    }
    return httpx.post(f"{url}/webhooks/partner", content=body, headers=headers, timeout=10)


def test_forward_fails_twice_then_succeeds(tmp_path: Path) -> None:
    with Sink([500, 503]) as sink, running_server(
        ["--config", str(write_config(tmp_path, sink.url))], cwd=tmp_path
    ) as server:
        accepted = post(server.url, "msg-1")
        assert accepted.status_code == 202
        event_id = accepted.json()["id"]
        wait_until(lambda: sink.count() >= 3)

        def delivery() -> dict[str, object]:
            event = httpx.get(f"{server.url}/api/events/{event_id}", timeout=5).json()
            return event["deliveries"][0]  # type: ignore[no-any-return]

        wait_until(lambda: delivery()["status"] == "succeeded")
        final = delivery()
        assert [a["outcome"] for a in final["attempt_log"]] == [  # type: ignore[index]
            "transient", "transient", "succeeded"]
        assert [a["http_status"] for a in final["attempt_log"]] == [500, 503, None]  # type: ignore[index]

    assert sink.count() == 3
    original = standard_body()
    for headers, body in sink.requests:
        assert body == original
        assert headers["webhook-id"] == event_id
        Webhook(FORWARD_SECRET).verify(body, headers)


def test_kill_9_loses_no_acknowledged_event(tmp_path: Path) -> None:
    with Sink() as sink:
        config = write_config(tmp_path, sink.url)
        acked: set[str] = set()
        first = ServerProcess(["--config", str(config)], cwd=tmp_path)
        first.wait_ready()

        def send(n: int) -> str | None:
            try:
                response = post(first.url, f"crash-{n}", n=n)
            except httpx.HTTPError:
                return None
            return response.json()["id"] if response.status_code == 202 else None

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(send, n) for n in range(300)]
            for n, future in enumerate(futures):
                if n == 150:
                    first.stop(signal.SIGKILL)
                event_id = future.result()
                if event_id:
                    acked.add(event_id)
        assert 150 <= len(acked) < 300  # killed mid-way: some acknowledged, some refused

        with running_server(["--config", str(config)], cwd=tmp_path):
            def delivered() -> set[str]:
                with sink.lock:
                    return {headers["webhook-id"] for headers, _ in sink.requests}

            wait_until(lambda: acked <= delivered(), timeout=30)
