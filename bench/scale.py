"""Scale-out benchmark: PostgreSQL against SQLite, 1 and 2 receivers and workers, and backlogs.

For each layout: receivers (separate processes, `--role receiver`) are loaded by one wrk per
receiver for a fixed time with distinct events; then workers (`--role worker`) drain what was
stored into a no-op handler that reports over UDP. Then, on PostgreSQL as the server runs (its
autovacuum setting is printed), backlogs of 5,000 and 50,000 due deliveries are written straight
into the store and drained by one worker: a statement whose cost grows with the backlog shows as
a lower rate on the larger one. Prints ingest req/s and deliveries/s side by side, and each target
with its ratio, all measured in this one run.

    python bench/scale.py [--seconds 10] [--postgres postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import asyncpg

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
from dispatch import TOKEN, Reports, write_config  # noqa: E402

T = TypeVar("T")

# A drain that saw no report for this long is over (a report lost, or a delivery stuck).
STALL_SECONDS = 10.0
BACKLOGS = (5_000, 50_000)
# Targets, each a ratio of two figures of the same run.
MIN_PG_OVER_SQLITE_DISPATCH = 0.7
MIN_TWO_OVER_ONE_WORKER = 1.6
MIN_PG_OVER_SQLITE_INGEST = 0.9
MIN_TWO_OVER_ONE_RECEIVER = 1.0
MAX_BACKLOG_SPREAD = 0.2

LUA = r"""
local n = 0
local tag = ""
setup = function(thread) thread:set("tag", tostring(math.random(1, 1e9))) end
request = function()
  n = n + 1
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json", ["x-token"] = "%(token)s",
    ["webhook-id"] = tag .. "-" .. n,
  }, '{"type":"file.processing_failed","timestamp":"2026-11-01T00:00:00Z","data":{"file_id":"f-' .. n .. '"}}')
end
"""


def ingest(config: Path, receivers: int, seconds: int, script: Path) -> float:
    env = {"PYTHONPATH": str(Path(__file__).parent)}
    ports = [free_port() for _ in range(receivers)]
    with ExitStack() as stack:
        for port in ports:
            stack.enter_context(process(
                [python(), "-m", "app.cli", "serve", "--config", str(config), "--port", str(port),
                 "--role", "receiver", "--log-format", "json"], port, cwd=ROOT, env=env))
        runs = [subprocess.Popen(
            [ensure_wrk(), "-t1", f"-c{32 // receivers}", f"-d{seconds}s", "-s", str(script),
             f"http://127.0.0.1:{port}/webhooks/load"], stdout=subprocess.PIPE, text=True)
            for port in ports]
        outputs = [run.communicate(timeout=seconds + 60)[0] for run in runs]
    total = 0.0
    for out in outputs:
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        total += rps * (1 - (int(bad.group(1)) if bad else 0) / max(1, _requests(out)))
    return total


def _requests(out: str) -> int:
    return int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]


async def drain(config: Path, workers: int, expected: int, udp_port: int) -> float:
    loop = asyncio.get_running_loop()
    transport, reports = await loop.create_datagram_endpoint(
        Reports, local_addr=("127.0.0.1", udp_port))
    # Bursts of reports from several workers must not overflow the socket buffer: ask for 8 MiB
    # (Linux grants up to net.core.rmem_max; a drain short of reports says so below).
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)
    env = {"PYTHONPATH": str(Path(__file__).parent)}
    with ExitStack() as stack:
        for _ in range(workers):
            port = free_port()
            stack.enter_context(process(
                [python(), "-m", "app.cli", "serve", "--config", str(config), "--port", str(port),
                 "--role", "worker", "--log-format", "json"], port, cwd=ROOT, env=env))
        deadline = time.perf_counter() + 180
        while len(reports.latencies) < expected and time.perf_counter() < deadline:
            if reports.latencies and time.perf_counter() - reports.last > STALL_SECONDS:
                break
            await asyncio.sleep(0.05)
    transport.close()
    if len(reports.latencies) < expected:
        print(f"note: {len(reports.latencies)} of {expected} deliveries reported "
              f"(none for {STALL_SECONDS:g} s before the end)")
    return (len(reports.latencies) - 1) / max(1e-9, reports.last - reports.first)


async def stored(storage: str) -> int:
    if storage.startswith("sqlite"):
        import sqlite3

        path = storage.removeprefix("sqlite:///")
        return int(sqlite3.connect(path).execute("SELECT count(*) FROM events").fetchone()[0])
    conn = await asyncpg.connect(storage)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events"))
    finally:
        await conn.close()


async def schema(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def layout(storage: str, count: int, seconds: int, script: Path) -> tuple[float, float]:
    udp_port = free_port()
    config = write_config(scratch(), udp_port, storage)
    rate = ingest(config, count, seconds, script)
    events = asyncio.run(stored(storage))
    return rate, asyncio.run(drain(config, count, events, udp_port))


async def seed(url: str, count: int) -> None:
    """`count` events routed to the benchmark's handler, written through the store itself."""
    sys.path.insert(0, str(ROOT))
    from app.ids import new_id
    from app.store import store_from_url
    from schemas.records import NewEvent

    store = store_from_url(url)
    await store.open()
    try:
        now = time.time()
        for first in range(0, count, 1000):
            await store.save_events([NewEvent(
                id=new_id("evt", now), source="load", type="file.processing_failed",
                dedupe_key=f"backlog-{n}", received_at=now, occurred_at=None, body=b"{}",
                payload={}, headers={}, handlers=("stamp",))
                for n in range(first, min(count, first + 1000))])
    finally:
        await store.close()


def backlog_drain(url: str, count: int) -> float:
    """Deliveries/s of one worker draining `count` due deliveries stored before it started."""
    asyncio.run(seed(url, count))
    udp_port = free_port()
    config = write_config(scratch(), udp_port, url)
    return asyncio.run(drain(config, 1, count, udp_port))


def with_schema(postgres: str, run: Callable[[str], T]) -> T:
    """`run(url)` on a fresh schema of the server, dropped afterwards."""
    name = f"t_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(schema(postgres, f"CREATE SCHEMA {name}"))
    try:
        return run(f"{postgres.split('?')[0]}?search_path={name}")
    finally:
        asyncio.run(schema(postgres, f"DROP SCHEMA {name} CASCADE"))


async def setting(url: str, name: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval(f"SHOW {name}"))
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--postgres", default=os.environ.get(
        "HOOKLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    script = scratch() / "scale.lua"
    script.write_text(LUA % {"token": TOKEN})

    rows = [("layout", "ingest req/s", "deliveries/s")]
    pg = {count: with_schema(args.postgres, lambda url, n=count: layout(url, n, args.seconds,
                                                                          script))
          for count in (1, 2)}
    for count, (rate, deliveries) in pg.items():
        rows.append((f"postgres {count} receiver + {count} worker", f"{rate:.0f}",
                     f"{deliveries:.0f}"))
    sqlite = layout(f"sqlite:///{scratch() / 'scale.db'}", 1, args.seconds, script)
    rows.append(("sqlite 1 receiver + 1 worker", f"{sqlite[0]:.0f}", f"{sqlite[1]:.0f}"))
    autovacuum = asyncio.run(setting(args.postgres, "autovacuum"))
    backlog = {n: with_schema(args.postgres, lambda url, n=n: backlog_drain(url, n))
               for n in BACKLOGS}
    for n, deliveries in backlog.items():
        rows.append((f"postgres 1 worker, backlog of {n:,}", "", f"{deliveries:.0f}"))
    print(f"scale-out on {os.cpu_count()} cores, {args.seconds} s of ingest per layout; "
          f"postgres autovacuum = {autovacuum}")
    print_table(rows)

    small, large = (backlog[n] for n in BACKLOGS)
    spread = abs(large - small) / max(small, large)
    figures = [
        ("postgres 1 worker / sqlite 1 worker", pg[1][1] / sqlite[1],
         f">= {MIN_PG_OVER_SQLITE_DISPATCH:g}x",
         pg[1][1] / sqlite[1] >= MIN_PG_OVER_SQLITE_DISPATCH),
        ("postgres 2 workers / 1 worker", pg[2][1] / pg[1][1], f">= {MIN_TWO_OVER_ONE_WORKER:g}x",
         pg[2][1] / pg[1][1] >= MIN_TWO_OVER_ONE_WORKER),
        ("postgres 1 receiver / sqlite ingest", pg[1][0] / sqlite[0],
         f">= {MIN_PG_OVER_SQLITE_INGEST:g}x", pg[1][0] / sqlite[0] >= MIN_PG_OVER_SQLITE_INGEST),
        ("postgres 2 receivers / 1 receiver", pg[2][0] / pg[1][0],
         f">= {MIN_TWO_OVER_ONE_RECEIVER:g}x", pg[2][0] / pg[1][0] >= MIN_TWO_OVER_ONE_RECEIVER),
        (f"backlog {BACKLOGS[1]:,} / {BACKLOGS[0]:,} deliveries/s", large / small,
         f"within {MAX_BACKLOG_SPREAD:.0%}", spread <= MAX_BACKLOG_SPREAD),
    ]
    print_table([("figure", "measured", "target", "verdict"),
                 *[(name, f"{value:.2f}x", target, verdict(ok))
                   for name, value, target, ok in figures]])


if __name__ == "__main__":
    main()
