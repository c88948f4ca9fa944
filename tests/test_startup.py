"""A process whose store cannot be opened at start serves 503 meanwhile and opens it later."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.startup import backoff, open_store
from app.store import StoreError

from conftest import SAMPLES, STANDARD_SECRET, standard_headers
from server import running_server, wait_until


class FlakyStore:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.opens = 0

    async def open(self) -> None:
        self.opens += 1
        if self.opens <= self.failures:
            raise StoreError("connection refused")


def test_backoff_doubles_up_to_its_cap() -> None:
    delays = backoff(first=1, most=10)
    assert [next(delays) for _ in range(6)] == [1, 2, 4, 8, 10, 10]


async def test_open_store_tries_again_after_each_failure_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    waited: list[float] = []

    async def wait(seconds: float) -> None:
        waited.append(seconds)

    store = FlakyStore(failures=3)
    with caplog.at_level("WARNING", logger="hookline"):
        tries = await open_store(store, wait, backoff(first=0.5, most=1))  # type: ignore[arg-type]
    assert (tries, store.opens, waited) == (4, 4, [0.5, 1, 1])
    retries = [r.getMessage() for r in caplog.records if "store unreachable" in r.getMessage()]
    assert len(retries) == 3 and "connection refused" in retries[0]


def test_a_server_started_before_its_database_answers_503_then_recovers(tmp_path: Path) -> None:
    later = tmp_path / "later"  # SQLite cannot create a file in a folder that is not there yet
    config = tmp_path / "hookline.toml"
    config.write_text(f"""
[storage]
url = "sqlite:///{later / 'hl.db'}"
[sources.partner]
platform = "standard"
auth = {{ scheme = "standard_webhooks", secrets = ["{STANDARD_SECRET}"] }}
""")
    body = (SAMPLES / "standard" / "file.processing_failed.json").read_bytes()

    def post(client: httpx.Client, url: str, msg_id: str) -> httpx.Response:
        headers: dict[str, Any] = standard_headers(body, time.time(), msg_id=msg_id)
        return client.post(f"{url}/webhooks/partner", content=body, headers=headers)

    with running_server(["--config", str(config)], cwd=tmp_path) as server, \
            httpx.Client(timeout=5) as client:
        assert client.get(f"{server.url}/healthz").status_code == 200
        assert client.get(f"{server.url}/readyz").status_code == 503
        refused = post(client, server.url, "msg_before")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "store_unavailable"
        assert "store unreachable at start" in server.output

        later.mkdir()
        wait_until(lambda: client.get(f"{server.url}/readyz").status_code == 200, timeout=15)
        accepted = post(client, server.url, "msg_after")
        assert accepted.status_code == 202, accepted.text
        assert json.loads(accepted.text)["type"] == "file.processing_failed"
    assert "store unreachable (try 1)" in server.output
    assert "Traceback" not in server.output


@pytest.mark.parametrize("role", ["receiver", "worker"])
def test_a_process_whose_postgresql_refuses_connections_keeps_serving_health(
    tmp_path: Path, role: str,
) -> None:
    config = tmp_path / "hookline.toml"
    config.write_text('[storage]\nurl = "postgresql://hookline@127.0.0.1:1/hookline"\n')
    with running_server(["--config", str(config), "--role", role], cwd=tmp_path) as server, \
            httpx.Client(timeout=5) as client:
        assert client.get(f"{server.url}/healthz").status_code == 200
        not_ready = client.get(f"{server.url}/readyz")
        assert (not_ready.status_code, not_ready.headers["retry-after"]) == (503, "1")
    assert "store unreachable at start" in server.output
    assert "Traceback" not in server.output
