"""The loop watchdog: a handler blocking the event loop is named in the log and counted."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.config import settings_from_mapping
from app.main import create_app
from app.watchdog import LoopWatchdog
from app.worker import WorkerSettings

import fake_handlers
from conftest import FakeClock, base_config, standard_body, standard_headers


async def until(done: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def watchdog_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hookline.watchdog"]


async def test_a_blocking_task_is_named_while_it_blocks_and_its_stall_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stalls: list[float] = []
    watchdog = LoopWatchdog(threshold=0.2, interval=0.02, on_stall=stalls.append)

    async def culprit() -> None:
        time.sleep(0.6)  # noqa: ASYNC251 (the blocking call under test)

    with caplog.at_level(logging.WARNING, logger="hookline.watchdog"):
        watchdog.start()
        try:
            await asyncio.create_task(culprit(), name="culprit")
            await until(lambda: bool(stalls))  # the first heartbeat after the stall
        finally:
            watchdog.stop()
    during, after = watchdog_lines(caplog)
    assert "blocked for" in during and "so far by task 'culprit'" in during
    assert after.startswith("event loop was blocked for") and "task 'culprit'" in after
    [stall] = stalls
    assert 0.45 <= stall < 3


async def test_a_loop_that_keeps_turning_raises_nothing(caplog: pytest.LogCaptureFixture) -> None:
    stalls: list[float] = []
    watchdog = LoopWatchdog(threshold=0.5, interval=0.02, on_stall=stalls.append)
    with caplog.at_level(logging.WARNING, logger="hookline.watchdog"):
        watchdog.start()
        try:
            for _ in range(8):  # busy in short stretches, each well under the threshold
                time.sleep(0.05)  # noqa: ASYNC251
                await asyncio.sleep(0.01)
        finally:
            watchdog.stop()
    assert stalls == [] and watchdog_lines(caplog) == []


async def test_a_handler_blocking_the_loop_shows_in_the_log_and_metrics(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = base_config(tmp_path / "hookline.db")
    config["handlers"] = {"careless": {"use": "fake_handlers:blocks_the_loop"}}
    config["routes"] = [{"match": "*", "handler": "careless"}]
    app = create_app(settings_from_mapping(config, {}), clock=clock,
                     worker_settings=WorkerSettings(background=False))
    fake_handlers.blocks_the_loop.seconds = 1.3  # over the default threshold of 1 s
    with caplog.at_level(logging.WARNING, logger="hookline.watchdog"):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                body = standard_body()
                response = await client.post("/webhooks/partner", content=body,
                                             headers=standard_headers(body, clock.now()))
                assert response.status_code == 202
                assert await app.state.runtime.worker.run_once() == 1
                registry = app.state.runtime.metrics.registry
                await until(lambda: bool(registry.get_sample_value(
                    "hookline_event_loop_blocked_seconds_total")))
                metrics = (await client.get("/metrics")).text
    [blocked] = [line for line in metrics.splitlines()
                 if line.startswith("hookline_event_loop_blocked_seconds_total ")]
    assert 1.0 <= float(blocked.split()[1]) < 5
    during = watchdog_lines(caplog)[0]
    assert "(handler careless)" in during and "delivery dlv_" in during
