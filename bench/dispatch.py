"""Dispatch benchmark: acknowledged -> handler-invoked latency, and deliveries per second.

1. Latency: `hookline serve` with a route to a handler that reports each call over UDP; events
   are posted at a steady rate (default 1,000/s for 10 s) and the handler reports the time from
   the event's receipt to its own invocation. Receipt is before the acknowledgement, so the
   figure slightly overstates acknowledged -> invoked.
2. Throughput: 20,000 events are stored by a `--role receiver` server (no worker; wrk posts
   them), then a `--role worker` server on the same database delivers them to the same no-op
   handler; the figure is deliveries per second from the first report to the last.

Baselines, measured in the same run: for latency, a no-op Starlette endpoint under the same
uvicorn settings that answers 202 and then sends the same report from a background task (receipt
to action with no store and no queue in between), posted to at the same rate; for throughput, the
same handler called in a plain loop with the worker's concurrency, in a process of its own (what
the handler and the reporting can do at most).

    python bench/dispatch.py [--rate 1000] [--seconds 10] [--events 20000]

With `--postgres URL`, the latency run (1.) is made against a fresh schema of that PostgreSQL
server instead, beside the same no-op baseline, and checked against the same targets.

    python bench/dispatch.py --postgres postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ROOT,
    ensure_wrk,
    free_port,
    print_table,
    process,
    python,
    scratch,
    verdict,
)

TOKEN = "bench-token"
MAX_P50_MS = 10.0
MAX_P99_MS = 50.0
MIN_DELIVERIES = 3000.0


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


async def _post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, payload: bytes
) -> int:
    """One POST on a keep-alive connection; the answer's status."""
    writer.write(head + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    answer = await reader.readuntil(b"\r\n\r\n")
    lines = answer.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines
                  if line.lower().startswith("content-length:"))
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def post_at_rate(url: str, total: int, rate: float | None, offset: int) -> int:
    """Post `total` events, paced at `rate` per second (None: as fast as 32 connections go).

    A minimal HTTP/1.1 keep-alive client, so that the load generator, sharing the machine's
    cores with the server, can keep the pace."""
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    head = (f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nx-token: {TOKEN}\r\nContent-Length: ").encode()
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(32):
        idle.put_nowait(await asyncio.open_connection(parts.hostname, parts.port))
    accepted = 0

    async def one(n: int, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        nonlocal accepted
        try:
            status = await asyncio.wait_for(_post(*conn, head, body(offset + n)), 30)
            accepted += status == 202
        finally:
            idle.put_nowait(conn)

    start = time.perf_counter()
    tasks = set()
    for n in range(total):
        if rate is not None:
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        task = asyncio.create_task(one(n, await idle.get()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*tasks)
    while not idle.empty():
        idle.get_nowait()[1].close()
    return accepted


async def latency_run(
    work: Path, rate: float, seconds: float, storage: str | None = None
) -> tuple[list[float], int, float]:
    """Handler latencies, events accepted, and the rate they were posted at."""
    loop = asyncio.get_running_loop()
    udp_port = free_port()
    transport, reports = await loop.create_datagram_endpoint(
        Reports, local_addr=("127.0.0.1", udp_port))
    config = write_config(work, udp_port, storage)
    port = free_port()
    env = {"PYTHONPATH": str(Path(__file__).parent)}
    cmd = [python(), "-m", "app.cli", "serve", "--config", str(config), "--port", str(port)]
    with process(cmd, port, cwd=ROOT, env=env):
        start = time.perf_counter()
        accepted = await post_at_rate(
            f"http://127.0.0.1:{port}/webhooks/load", int(rate * seconds), rate, 0)
        posted = int(rate * seconds) / (time.perf_counter() - start)
        deadline = time.perf_counter() + 30
        while len(reports.latencies) < accepted and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
    transport.close()
    return reports.latencies, accepted, posted


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
        await fill(f"http://127.0.0.1:{port}/webhooks/load", work, events)
    stored = count_events(work / "dispatch.db")
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


# Distinct events for as long as wrk runs: it is stopped once the store holds enough.
FILL_LUA = r"""
counter = 0
setup = function(thread)
  counter = counter + 1
  thread:set("tag", counter)
end
local sent = 0
request = function()
  sent = sent + 1
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json", ["x-token"] = "%(token)s",
    ["webhook-id"] = "fill-" .. tag .. "-" .. sent,
  }, '{"type":"file.processing_failed","timestamp":"2026-11-01T00:00:00Z","data":{"file_id":"f-'
     .. tag .. "-" .. sent .. '"}}')
end
"""


async def fill(url: str, work: Path, events: int, timeout: float = 120) -> None:
    """Store at least `events` distinct events through `url` with wrk (32 connections)."""
    script = work / "fill.lua"
    script.write_text(FILL_LUA % {"token": TOKEN})
    wrk = await asyncio.create_subprocess_exec(
        ensure_wrk(), "-t2", "-c32", f"-d{timeout:.0f}s", "-s", str(script), url,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.perf_counter() + timeout
    try:
        while count_events(work / "dispatch.db") < events and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
    finally:
        wrk.terminate()
        await wrk.wait()


def count_events(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


async def _noop_then_report(request: Request) -> JSONResponse:
    received = time.time()
    await request.body()
    port = int(request.query_params["report"])
    return JSONResponse({"id": "evt_0", "type": "noop", "duplicate": False}, status_code=202,
                        background=BackgroundTask(_report, port, received))


_REPORTS = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def _report(port: int, received: float) -> None:
    _REPORTS.sendto(f"evt_0 {time.time() - received:.6f}".encode(), ("127.0.0.1", port))


# The latency baseline, served by `uvicorn dispatch:baseline` with hookline's uvicorn settings.
baseline = Starlette(routes=[Route("/webhooks/{source}", _noop_then_report, methods=["POST"])])


async def baseline_latency(rate: float, seconds: float) -> tuple[list[float], int, float]:
    loop = asyncio.get_running_loop()
    udp_port = free_port()
    transport, reports = await loop.create_datagram_endpoint(
        Reports, local_addr=("127.0.0.1", udp_port))
    port = free_port()
    cmd = [python(), "-m", "uvicorn", "dispatch:baseline", "--port", str(port), "--loop", "uvloop",
           "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    with process(cmd, port, cwd=Path(__file__).parent):
        start = time.perf_counter()
        accepted = await post_at_rate(
            f"http://127.0.0.1:{port}/webhooks/load?report={udp_port}", int(rate * seconds),
            rate, 0)
        posted = int(rate * seconds) / (time.perf_counter() - start)
        deadline = time.perf_counter() + 30
        while len(reports.latencies) < accepted and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
    transport.close()
    return reports.latencies, accepted, posted


def handler_alone(port: int, events: int, concurrency: int) -> None:
    """Call the benchmark's handler `events` times, `concurrency` at once (run in a subprocess)."""
    from bench_handlers import Stamp

    async def calls() -> None:
        handler = Stamp()
        ctx = SimpleNamespace(clock=SimpleNamespace(now=time.time),
                              options=SimpleNamespace(port=port))
        slots = asyncio.Semaphore(concurrency)

        async def one(n: int) -> None:
            async with slots:
                event = SimpleNamespace(id=f"evt_{n}", received_at=time.time())
                await handler.handle(event, ctx)  # type: ignore[arg-type]

        await asyncio.gather(*(one(n) for n in range(events)))

    asyncio.run(calls())


async def baseline_throughput(events: int, concurrency: int) -> float:
    loop = asyncio.get_running_loop()
    udp_port = free_port()
    transport, reports = await loop.create_datagram_endpoint(
        Reports, local_addr=("127.0.0.1", udp_port))
    code = f"import dispatch; dispatch.handler_alone({udp_port}, {events}, {concurrency})"
    proc = await asyncio.create_subprocess_exec(python(), "-c", code, cwd=Path(__file__).parent,
                                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    await asyncio.wait_for(proc.wait(), 120)
    deadline = time.perf_counter() + 5
    while len(reports.latencies) < events and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    transport.close()
    return (len(reports.latencies) - 1) / max(1e-9, reports.last - reports.first)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class DispatchRun:
    rate: float
    seconds: float
    latencies_ms: list[float]
    accepted: int
    posted_per_second: float
    deliveries_per_second: float
    stored: int
    baseline_ms: list[float]
    baseline_accepted: int
    baseline_posted_per_second: float
    handler_alone_per_second: float

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def baseline_p(self, q: float) -> float:
        return percentile(self.baseline_ms, q)

    def targets(self) -> list[tuple[str, str, str, str]]:
        """(figure, measured, target, ok/MISSED) for every dispatch target."""
        seen = len(self.latencies_ms)
        return [
            ("dispatch received -> handler p50", f"{self.p(0.5):.1f} ms", f"<= {MAX_P50_MS:g} ms",
             verdict(self.p(0.5) <= MAX_P50_MS)),
            ("dispatch received -> handler p99", f"{self.p(0.99):.1f} ms", f"<= {MAX_P99_MS:g} ms",
             verdict(self.p(0.99) <= MAX_P99_MS)),
            ("dispatch handler calls seen", f"{seen}/{self.accepted}", "all",
             verdict(seen >= self.accepted)),
            ("dispatch no-op deliveries/s", f"{self.deliveries_per_second:.0f}",
             f">= {MIN_DELIVERIES:.0f}", verdict(self.deliveries_per_second >= MIN_DELIVERIES)),
        ]


def run(rate: float = 1000, seconds: float = 10, events: int = 20_000) -> DispatchRun:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    latencies, accepted, posted = asyncio.run(latency_run(scratch(), rate, seconds))
    base, base_accepted, base_posted = asyncio.run(baseline_latency(rate, seconds))
    deliveries, stored = asyncio.run(throughput_run(scratch(), events))
    concurrency = 64  # the worker's default [worker] concurrency
    alone = asyncio.run(baseline_throughput(events, concurrency))
    return DispatchRun(rate, seconds, [v * 1000 for v in latencies], accepted, posted, deliveries,
                       stored, [v * 1000 for v in base], base_accepted, base_posted, alone)


def report(result: DispatchRun) -> None:
    ms = result.latencies_ms
    print(f"dispatch: {result.accepted} events at {result.rate:.0f}/s for {result.seconds:.0f} s; "
          f"{result.stored} stored events then delivered by a worker alone")
    print_table([
        ("figure", "measured", "target", "baseline", "ratio"),
        ("received -> handler p50", f"{result.p(0.5):.1f} ms", f"<= {MAX_P50_MS:g} ms",
         f"{result.baseline_p(0.5):.1f} ms", f"{result.p(0.5) / result.baseline_p(0.5):.1f}x"),
        ("received -> handler p99", f"{result.p(0.99):.1f} ms", f"<= {MAX_P99_MS:g} ms",
         f"{result.baseline_p(0.99):.1f} ms", f"{result.p(0.99) / result.baseline_p(0.99):.1f}x"),
        ("received -> handler mean", f"{statistics.fmean(ms):.1f} ms", "",
         f"{statistics.fmean(result.baseline_ms):.1f} ms", ""),
        ("handler calls seen", f"{len(ms)}/{result.accepted}", "all",
         f"{len(result.baseline_ms)}/{result.baseline_accepted}", ""),
        ("events posted per second", f"{result.posted_per_second:.0f}", f"{result.rate:.0f}",
         f"{result.baseline_posted_per_second:.0f}", ""),
        ("no-op deliveries/s", f"{result.deliveries_per_second:.0f}", f">= {MIN_DELIVERIES:.0f}",
         f"{result.handler_alone_per_second:.0f}",
         f"{result.deliveries_per_second / result.handler_alone_per_second:.2f}x"),
    ])
    print("baselines: latency, a no-op endpoint acting after its answer with no store; "
          "deliveries/s, the handler called in a plain loop")


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def postgres_latency(url: str, rate: float, seconds: float) -> None:
    """The latency run on a fresh schema of `url`, beside the no-op baseline."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    schema = f"t_bench_{os.urandom(4).hex()}"
    asyncio.run(_admin(url, f"CREATE SCHEMA {schema}"))
    try:
        storage = f"{url.split('?')[0]}?search_path={schema}"
        latencies, accepted, posted = asyncio.run(latency_run(scratch(), rate, seconds, storage))
    finally:
        asyncio.run(_admin(url, f"DROP SCHEMA {schema} CASCADE"))
    base, base_accepted, base_posted = asyncio.run(baseline_latency(rate, seconds))
    ms, base_ms = [v * 1000 for v in latencies], [v * 1000 for v in base]
    p50, p99 = percentile(ms, 0.5), percentile(ms, 0.99)
    print(f"dispatch on postgres: {accepted} events at {rate:.0f}/s for {seconds:.0f} s "
          f"(posted at {posted:.0f}/s; baseline {base_posted:.0f}/s)")
    print_table([
        ("figure", "measured", "target", "baseline", "verdict"),
        ("received -> handler p50", f"{p50:.1f} ms", f"<= {MAX_P50_MS:g} ms",
         f"{percentile(base_ms, 0.5):.1f} ms", verdict(p50 <= MAX_P50_MS)),
        ("received -> handler p99", f"{p99:.1f} ms", f"<= {MAX_P99_MS:g} ms",
         f"{percentile(base_ms, 0.99):.1f} ms", verdict(p99 <= MAX_P99_MS)),
        ("handler calls seen", f"{len(ms)}/{accepted}", "all",
         f"{len(base_ms)}/{base_accepted}", verdict(len(ms) >= accepted)),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--postgres", metavar="URL", help="measure latency on this server")
    args = parser.parse_args()
    if args.postgres:
        postgres_latency(args.postgres, args.rate, args.seconds)
        return
    report(run(args.rate, args.seconds, args.events))


if __name__ == "__main__":
    main()
