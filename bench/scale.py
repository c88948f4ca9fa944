"""Scale-out benchmark: 1 receiver + 1 worker against 2 + 2, on PostgreSQL, with SQLite alongside.

For each layout: receivers (separate processes, `--role receiver`) are loaded by one wrk per
receiver for a fixed time with distinct events; then workers (`--role worker`) drain what was
stored into a no-op handler that reports over UDP. Prints ingest req/s and deliveries/s for each
layout side by side, with the 2+2 / 1+1 ratio.

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
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, ensure_wrk, free_port, print_table, process, python, scratch  # noqa: E402
from dispatch import TOKEN, Reports, write_config  # noqa: E402

# A drain that saw no report for this long is over (a report lost, or a delivery stuck).
STALL_SECONDS = 10.0

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--postgres", default=os.environ.get(
        "HOOKLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    script = scratch() / "scale.lua"
    script.write_text(LUA % {"token": TOKEN})

    rows = [("layout", "ingest req/s", "deliveries/s")]
    results = {}
    for count in (1, 2):
        name = f"t_bench_{uuid.uuid4().hex[:8]}"
        asyncio.run(schema(args.postgres, f"CREATE SCHEMA {name}"))
        try:
            url = f"{args.postgres.split('?')[0]}?search_path={name}"
            results[count] = layout(url, count, args.seconds, script)
        finally:
            asyncio.run(schema(args.postgres, f"DROP SCHEMA {name} CASCADE"))
        rows.append((f"postgres {count} receiver + {count} worker",
                     f"{results[count][0]:.0f}", f"{results[count][1]:.0f}"))
    sqlite = layout(f"sqlite:///{scratch() / 'scale.db'}", 1, args.seconds, script)
    rows.append(("sqlite 1 receiver + 1 worker", f"{sqlite[0]:.0f}", f"{sqlite[1]:.0f}"))
    print(f"scale-out on {os.cpu_count()} cores, {args.seconds} s of ingest per layout")
    print_table(rows)
    print(f"2+2 / 1+1 on postgres: ingest {results[2][0] / results[1][0]:.2f}x, "
          f"dispatch {results[2][1] / results[1][1]:.2f}x (target >= 1.6x with the cores for it)")


if __name__ == "__main__":
    main()
