"""Memory benchmark: the server's RSS during a burst that overfills the intake queue.

wrk opens more connections than the intake queue holds (5,000; by default the queue takes 4,096
events or 8 MiB of bodies, whichever comes first, so about 500 of these) and posts distinct events
of about 16 KB each for a bounded time, so events wait for the writer until the queue is full and
the rest are refused with 503 and Retry-After. The server's VmRSS and VmHWM are read from
/proc/<pid>/status every 100 ms during the burst and for a few seconds after it. The baseline is the
no-op Starlette endpoint under the same uvicorn settings and the same burst. Figures: peak RSS
against the 200 MB target, whether RSS stopped growing (the median RSS of the burst's last third is
less than 5% above that of its middle third), and the answers by status, with the 503s that carried
Retry-After.

    python bench/memory.py [--seconds 20] [--connections 5000] [--body-kb 16]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

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

TOKEN = "bench-memory-token"
MAX_RSS_MB = 200.0
# RSS swings by tens of MB as batches are built and written, so growth compares typical levels
# (the median RSS of the burst's last third against its middle third) rather than spikes; the
# spikes are bounded by the peak (VmHWM) target. RSS counts as flat when it grew by less than
# this fraction.
PLATEAU = 0.05
THREADS = 2

LUA = r"""
counter = 0
threads = {}
setup = function(thread)
  counter = counter + 1
  thread:set("tag", counter)
  table.insert(threads, thread)
end
local body = io.open("%(body)s"):read("*a")
local sent = 0
answers = {}
retry_after = 0
queue_full = 0
request = function()
  sent = sent + 1
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json", ["x-token"] = "%(token)s",
    ["webhook-id"] = "mem-" .. tag .. "-" .. sent,
  }, body)
end
response = function(status, headers, text)
  answers[status] = (answers[status] or 0) + 1
  if status == 503 then
    if headers["retry-after"] or headers["Retry-After"] then retry_after = retry_after + 1 end
    if string.find(text, "queue is full", 1, true) then queue_full = queue_full + 1 end
  end
end
done = function(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("answers")) do
      io.write(string.format("ANSWER %%d %%d\n", status, count))
    end
    io.write(string.format("RETRY_AFTER %%d\n", thread:get("retry_after")))
    io.write(string.format("QUEUE_FULL %%d\n", thread:get("queue_full")))
  end
  io.write(string.format("ERRORS connect=%%d read=%%d write=%%d timeout=%%d\n",
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout))
end
"""


@dataclass
class Sample:
    at: float
    rss_mb: float
    hwm_mb: float


@dataclass
class Burst:
    """One server under the burst: its RSS over time and the answers wrk got."""

    name: str
    idle_mb: float
    samples: list[Sample]
    burst_seconds: float
    answers: dict[int, int] = field(default_factory=dict)
    retry_after: int = 0
    queue_full: int = 0
    errors: str = ""

    @property
    def peak_mb(self) -> float:
        return max([self.idle_mb, *(s.hwm_mb for s in self.samples)])

    @property
    def after_mb(self) -> float:
        return self.samples[-1].rss_mb

    def during(self, start: float, end: float) -> list[Sample]:
        span = self.burst_seconds
        return [s for s in self.samples if start * span <= s.at < end * span]

    @property
    def middle_mb(self) -> float:
        """The median RSS of the burst's middle third."""
        return statistics.median([s.rss_mb for s in self.during(1 / 3, 2 / 3)] or [self.idle_mb])

    @property
    def growth_mb(self) -> float:
        """How much the median RSS of the burst's last third exceeds that of its middle third."""
        last = statistics.median([s.rss_mb for s in self.during(2 / 3, 1.0)] or [self.middle_mb])
        return max(0.0, last - self.middle_mb)

    @property
    def answered(self) -> int:
        return sum(self.answers.values())


def status_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MB."""
    text = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1))  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1))  # type: ignore[union-attr]
    return rss / 1024, hwm / 1024


def write_body(path: Path, kilobytes: int) -> None:
    """A Standard Webhooks event whose data holds a list of page records, `kilobytes` in all."""
    pages: list[dict[str, object]] = []
    event = {"type": "file.processing_failed", "timestamp": "2026-11-01T00:00:00Z",
             "data": {"file_id": "f-1", "pages": pages}}
    n = 0
    while len(json.dumps(event)) < kilobytes * 1024:
        pages.append({"n": n, "words": 230 + n % 7, "text": f"page {n} " + "lorem ipsum " * 8})
        n += 1
    path.write_text(json.dumps(event, separators=(",", ":")))


def burst(name: str, pid: int, url: str, script: Path, seconds: int, connections: int,
          settle: float) -> Burst:
    """Run wrk against `url` while sampling `pid`'s memory, then keep sampling for `settle` s."""
    idle_mb = status_mb(pid)[0]
    samples: list[Sample] = []
    stop = threading.Event()
    started = time.perf_counter()

    def sample() -> None:
        while not stop.is_set():
            rss, hwm = status_mb(pid)
            samples.append(Sample(time.perf_counter() - started, rss, hwm))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = subprocess.run(
            [ensure_wrk(), f"-t{THREADS}", f"-c{connections}", f"-d{seconds}s", "--timeout=10s",
             "-s", str(script), url],
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        ).stdout
        burst_seconds = time.perf_counter() - started
        time.sleep(settle)
    finally:
        stop.set()
        sampler.join(5)
    result = Burst(name, idle_mb, samples, burst_seconds)
    for status, count in re.findall(r"^ANSWER (\d+) (\d+)$", out, re.M):
        result.answers[int(status)] = result.answers.get(int(status), 0) + int(count)
    result.retry_after = sum(int(n) for n in re.findall(r"^RETRY_AFTER (\d+)$", out, re.M))
    result.queue_full = sum(int(n) for n in re.findall(r"^QUEUE_FULL (\d+)$", out, re.M))
    errors = re.search(r"^ERRORS (.*)$", out, re.M)
    result.errors = errors.group(1) if errors else ""
    return result


@dataclass
class MemoryRun:
    seconds: int
    connections: int
    body_kb: int
    intake_queue: int
    hookline: Burst
    noop: Burst

    @property
    def plateau(self) -> bool:
        hook = self.hookline
        return hook.growth_mb < PLATEAU * hook.middle_mb

    def targets(self) -> list[tuple[str, str, str, str]]:
        """(figure, measured, target, ok/MISSED) for every memory target."""
        hook = self.hookline
        refused = hook.answers.get(503, 0)
        return [
            ("memory peak RSS (VmHWM) in burst", f"{hook.peak_mb:.0f} MB",
             f"<= {MAX_RSS_MB:.0f} MB", verdict(hook.peak_mb <= MAX_RSS_MB)),
            ("memory RSS growth, last third of burst", f"{hook.growth_mb:.1f} MB",
             f"< {PLATEAU * hook.middle_mb:.1f} MB ({PLATEAU:.0%})", verdict(self.plateau)),
            ("memory 503s with Retry-After", f"{hook.retry_after}/{refused}",
             "all, and some", verdict(refused > 0 and hook.retry_after == refused)),
            ("memory answers other than 202/503",
             str(hook.answered - hook.answers.get(202, 0) - refused), "0",
             verdict(hook.answered == hook.answers.get(202, 0) + refused)),
        ]


def run(seconds: int = 20, connections: int = 5000, body_kb: int = 16,
        intake_queue: int = 4096, settle: float = 5) -> MemoryRun:
    work = scratch()
    body = work / "body.json"
    write_body(body, body_kb)
    script = work / "burst.lua"
    script.write_text(LUA % {"body": body, "token": TOKEN})

    config = work / "hookline.toml"
    config.write_text(
        f'[server]\nintake_queue = {intake_queue}\n'
        f'[storage]\nurl = "sqlite:///{work / "memory.db"}"\n'
        f'[sources.burst]\nplatform = "standard"\nunknown_events = "accept"\n'
        f'auth = {{ scheme = "header_token", header = "x-token", secrets = ["{TOKEN}"] }}\n'
    )
    port = free_port()
    cmd = [python(), "-m", "app.cli", "serve", "--config", str(config), "--port", str(port),
           "--log-format", "json"]
    with process(cmd, port, cwd=ROOT) as server:
        hookline = burst("hookline (sqlite)", server.pid, f"http://127.0.0.1:{port}/webhooks/burst",
                         script, seconds, connections, settle)

    port = free_port()
    cmd = [python(), "-m", "uvicorn", "noop_app:app", "--port", str(port), "--loop", "uvloop",
           "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    with process(cmd, port, cwd=Path(__file__).parent) as server:
        noop = burst("no-op starlette", server.pid, f"http://127.0.0.1:{port}/webhooks/burst",
                     script, seconds, connections, settle)
    return MemoryRun(seconds, connections, body_kb, intake_queue, hookline, noop)


def report(result: MemoryRun) -> None:
    print(f"memory: {result.connections} connections posting {result.body_kb} KB events for "
          f"{result.seconds} s, intake_queue = {result.intake_queue}; RSS from /proc/<pid>/status")
    rows = [("server", "idle MB", "peak MB", "median MB", "growth MB", "after MB", "202", "503",
             "503 + Retry-After", "queue full", "other", "socket errors")]
    for got in (result.hookline, result.noop):
        other = got.answered - got.answers.get(202, 0) - got.answers.get(503, 0)
        rows.append((got.name, f"{got.idle_mb:.0f}", f"{got.peak_mb:.0f}", f"{got.middle_mb:.0f}",
                     f"{got.growth_mb:.1f}", f"{got.after_mb:.0f}",
                     str(got.answers.get(202, 0)), str(got.answers.get(503, 0)),
                     str(got.retry_after), str(got.queue_full), str(other), got.errors))
    print_table(rows)
    ratio = result.hookline.peak_mb / result.noop.peak_mb
    print(f"peak RSS hookline/no-op: {ratio:.2f}x; target peak <= {MAX_RSS_MB:.0f} MB, and RSS "
          f"flat: the median of the burst's last third < {PLATEAU:.0%} over its middle third's")
    for figure, measured, target, ok in result.targets():
        print(f"  {figure}: {measured} (target {target}) {ok}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--body-kb", type=int, default=16)
    parser.add_argument("--intake-queue", type=int, default=4096)
    args = parser.parse_args()
    report(run(args.seconds, args.connections, args.body_kb, args.intake_queue))


if __name__ == "__main__":
    main()
