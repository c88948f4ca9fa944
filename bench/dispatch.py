"""Dispatch benchmark: acknowledged -> handler-invoked latency, and deliveries per second.

1. Latency: `hookline serve` with a route to a handler that reports each call over UDP; events
   are posted at a steady rate (default 1,000/s for 10 s) and the handler reports the time from
   the event's receipt to its own invocation. Receipt is before the acknowledgement, so the
   figure slightly overstates acknowledged -> invoked.
2. Throughput: 20,000 events are stored by a `--role receiver` server (no worker), then a
   `--role worker` server on the same database delivers them to the same no-op handler; the
   figure is deliveries per second from the first report to the last.

    python bench/dispatch.py [--rate 1000] [--seconds 10] [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, free_port, print_table, process, python, scratch  # noqa: E402

TOKEN = "bench-token"


class Reports(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.first = self.last = 0.0

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.latencies.append(float(data.split()[1]))
        self.last = time.perf_counter()
        if len(self.latencies) == 1:
            self.first = self.last


def write_config(work: Path, udp_port: int, storage: str | None = None) -> Path:
    """A header-token source routed to the UDP-reporting handler (SQLite in `work` by default)."""
    config = work / "hookline.toml"
    config.write_text(f"""
[storage]
url = "{storage or f'sqlite:///{work / "dispatch.db"}'}"
[sources.load]
platform = "standard"
unknown_events = "accept"
auth = {{ scheme = "header_token", header = "x-token", secrets = ["{TOKEN}"] }}
[[routes]]
match = "*"
handler = "stamp"
[handlers.stamp]
use = "bench_handlers:Stamp"
options = {{ port = {udp_port} }}
""")
    return config


def body(n: int) -> bytes:
    return (b'{"type":"file.processing_failed","timestamp":"2026-11-01T00:00:00Z",'
            b'"data":{"file_id":"f-%d"}}' % n)


async def post_at_rate(url: str, total: int, rate: float | None, offset: int) -> int:
    """Post `total` events, paced at `rate` per second (None: as fast as 32 connections go)."""
    headers = {"content-type": "application/json", "x-token": TOKEN}
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    slots = asyncio.Semaphore(32)
    accepted = 0

    async def one(client: httpx.AsyncClient, n: int) -> None:
        nonlocal accepted
        try:
            response = await client.post(url, content=body(offset + n), headers=headers)
            accepted += response.status_code == 202
        finally:
            slots.release()

    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        start = time.perf_counter()
        tasks = set()
        for n in range(total):
            if rate is not None:
                delay = start + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await slots.acquire()
            task = asyncio.create_task(one(client, n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*tasks)
    return accepted


async def latency_run(work: Path, rate: float, seconds: float) -> tuple[list[float], int]:
    loop = asyncio.get_running_loop()
    udp_port = free_port()
    transport, reports = await loop.create_datagram_endpoint(
        Reports, local_addr=("127.0.0.1", udp_port))
    config = write_config(work, udp_port)
    port = free_port()
    env = {"PYTHONPATH": str(Path(__file__).parent)}
    cmd = [python(), "-m", "app.cli", "serve", "--config", str(config), "--port", str(port)]
    with process(cmd, port, cwd=ROOT, env=env):
        accepted = await post_at_rate(
            f"http://127.0.0.1:{port}/webhooks/load", int(rate * seconds), rate, 0)
        deadline = time.perf_counter() + 30
        while len(reports.latencies) < accepted and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
    transport.close()
    return reports.latencies, accepted


async def throughput_run(work: Path, events: int) -> tuple[float, int]:
    loop = asyncio.get_running_loop()
    udp_port = free_port()
    transport, reports = await loop.create_datagram_endpoint(
        Reports, local_addr=("127.0.0.1", udp_port))
    config = write_config(work, udp_port)
    (work / "dispatch.db").unlink(missing_ok=True)
    env = {"PYTHONPATH": str(Path(__file__).parent)}
    port = free_port()
    receiver = [python(), "-m", "app.cli", "serve", "--config", str(config), "--port", str(port),
                "--role", "receiver"]
    with process(receiver, port, cwd=ROOT, env=env):
        stored = await post_at_rate(
            f"http://127.0.0.1:{port}/webhooks/load", events, None, 10_000_000)
    port = free_port()
    worker = [python(), "-m", "app.cli", "serve", "--config", str(config), "--port", str(port),
              "--role", "worker"]
    start = time.perf_counter()
    with process(worker, port, cwd=ROOT, env=env):
        deadline = start + 120
        while len(reports.latencies) < stored and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
    transport.close()
    # From the first delivery to the last: the worker process's start-up is not dispatch.
    return (len(reports.latencies) - 1) / (reports.last - reports.first), stored


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")

    latencies, accepted = asyncio.run(latency_run(scratch(), args.rate, args.seconds))
    rate, stored = asyncio.run(throughput_run(scratch(), args.events))
    ms = [v * 1000 for v in latencies]
    print(f"dispatch: {accepted} events at {args.rate:.0f}/s for {args.seconds:.0f} s; "
          f"{stored} stored events then delivered by a worker alone")
    print_table([
        ("figure", "measured", "target"),
        ("received -> handler p50", f"{percentile(ms, 0.5):.1f} ms", "<= 10 ms"),
        ("received -> handler p99", f"{percentile(ms, 0.99):.1f} ms", "<= 50 ms"),
        ("received -> handler mean", f"{statistics.fmean(ms):.1f} ms", ""),
        ("handler calls seen", f"{len(latencies)}/{accepted}", "all"),
        ("no-op deliveries/s", f"{rate:.0f}", ">= 3000"),
    ])


if __name__ == "__main__":
    main()
