"""Ingest benchmark: signed Standard Webhooks events posted to `hookline serve` by wrk.

Runs, in one go on this machine and with the same wrk settings (64 connections for 10 s by
default): a no-op Starlette endpoint under the same uvicorn settings (the ceiling), hookline with
its default SQLite store, and adnanh/webhook (bench/peer.py) running a trivial command per
request and answering once it finished. Every request carries a distinct webhook-id and a valid
signature, so each one hookline takes is verified, parsed, validated and durably stored. Prints
req/s, p50 and p99 for the three and hookline's ratio against the no-op endpoint and webhook.

    python bench/ingest.py [--seconds 10] [--connections 64]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer  # noqa: E402
from common import (  # noqa: E402
    ROOT,
    WrkResult,
    free_port,
    print_table,
    process,
    python,
    run_wrk,
    scratch,
    verdict,
)
from standardwebhooks.webhooks import Webhook  # noqa: E402

THREADS = 2
MIN_VS_NOOP = 0.25
MIN_VS_WEBHOOK = 4.0
MAX_P99_MS = 25.0

SECRET = "whsec_" + base64.b64encode(b"hookline-bench-secret-0123456789").decode()

LUA = r"""
local lines = {}
local index = 0
init = function(args)
  for line in io.lines("%(requests)s") do lines[#lines + 1] = line end
  index = math.floor(#lines * (id - 1) / %(threads)d)
end
setup = function(thread)
  id = (id or 0) + 1
  thread:set("id", id)
end
request = function()
  index = index + 1
  if index > #lines then index = 1 end
  local msg_id, ts, sig, body = lines[index]:match("([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)")
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["webhook-id"] = msg_id, ["webhook-timestamp"] = ts, ["webhook-signature"] = sig,
  }, body)
end
"""


def write_requests(path: Path, count: int) -> None:
    hook = Webhook(SECRET)
    now = datetime.now(UTC)
    stamp = str(int(now.timestamp()))
    with path.open("w") as out:
        for n in range(count):
            body = json.dumps({
                "type": "file.processing_failed",
                "timestamp": now.isoformat(),
                "data": {"platform": "dcycle", "file_id": f"file-{n:08d}",
                         "job_id": f"job-{n % 997}"},
            }, separators=(",", ":"))
            msg_id = f"msg_{n:09d}"
            out.write(f"{msg_id}\t{stamp}\t{hook.sign(msg_id, now, body)}\t{body}\n")


@dataclass
class IngestRun:
    seconds: int
    connections: int
    distinct: int
    noop: WrkResult
    hookline: WrkResult
    webhook: WrkResult

    @property
    def vs_noop(self) -> float:
        return self.hookline.requests_per_second / self.noop.requests_per_second

    @property
    def vs_webhook(self) -> float:
        return self.hookline.requests_per_second / self.webhook.requests_per_second

    def targets(self) -> list[tuple[str, str, str, str]]:
        """(figure, measured, target, ok/MISSED) for every ingest target."""
        hook = self.hookline
        return [
            ("ingest hookline/no-op", f"{self.vs_noop:.3f}x", f">= {MIN_VS_NOOP}x",
             verdict(self.vs_noop >= MIN_VS_NOOP)),
            ("ingest hookline/webhook", f"{self.vs_webhook:.2f}x", f">= {MIN_VS_WEBHOOK:g}x",
             verdict(self.vs_webhook >= MIN_VS_WEBHOOK)),
            ("ingest hookline p99", f"{hook.p99_ms:.1f} ms", f"<= {MAX_P99_MS:g} ms",
             verdict(hook.p99_ms <= MAX_P99_MS)),
            ("ingest hookline non-2xx", str(hook.non_2xx), "0", verdict(hook.non_2xx == 0)),
        ]


def run(seconds: int = 10, connections: int = 64, distinct: int = 200_000) -> IngestRun:
    """The no-op endpoint, hookline and webhook, one after the other, with the same wrk load."""
    work = scratch()
    requests = work / "requests.tsv"
    write_requests(requests, distinct)
    script = work / "post.lua"
    script.write_text(LUA % {"requests": requests, "threads": THREADS})

    def load(port: int) -> WrkResult:
        return run_wrk(f"http://127.0.0.1:{port}/webhooks/demo", script, seconds, connections,
                       THREADS)

    base_port = free_port()
    baseline_cmd = [python(), "-m", "uvicorn", "noop_app:app", "--port", str(base_port),
                    "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                    "--log-level", "warning"]
    with process(baseline_cmd, base_port, cwd=Path(__file__).parent):
        baseline = load(base_port)

    config = work / "hookline.toml"
    config.write_text(
        f'[storage]\nurl = "sqlite:///{work / "bench.db"}"\n'
        f'[sources.demo]\nplatform = "standard"\nunknown_events = "accept"\n'
        f'auth = {{ scheme = "standard_webhooks", secrets = ["{SECRET}"] }}\n'
    )
    port = free_port()
    hookline_cmd = [python(), "-m", "app.cli", "serve", "--config", str(config),
                    "--port", str(port), "--log-format", "json"]
    with process(hookline_cmd, port, cwd=ROOT):
        measured = load(port)

    peer_port = free_port()
    hooks = peer.write_hooks(work, "demo")
    with process(peer.command(hooks, peer_port), peer_port, cwd=work):
        webhook = load(peer_port)
    return IngestRun(seconds, connections, distinct, baseline, measured, webhook)


def report(result: IngestRun) -> None:
    print(f"ingest: {result.connections} connections, {result.seconds} s each, "
          f"wrk ({THREADS} threads) on 127.0.0.1")
    rows = [("server", "req/s", "p50 ms", "p99 ms", "non-2xx", "requests")]
    for name, got in (("no-op starlette", result.noop), ("hookline (sqlite)", result.hookline),
                      ("webhook (adnanh)", result.webhook)):
        rows.append((name, f"{got.requests_per_second:.0f}", f"{got.p50_ms:.2f}",
                     f"{got.p99_ms:.2f}", str(got.non_2xx), str(got.requests)))
    print_table(rows)
    print(f"ratio hookline/no-op: {result.vs_noop:.3f} (target >= {MIN_VS_NOOP}); "
          f"hookline/webhook: {result.vs_webhook:.2f} (target >= {MIN_VS_WEBHOOK:g}); "
          f"p99 {result.hookline.p99_ms:.1f} ms (target <= {MAX_P99_MS:g} ms)")
    if result.hookline.requests > result.distinct:
        print("note: more requests than distinct events; the rest were answered as duplicates")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--requests", type=int, default=200_000, help="distinct signed events")
    args = parser.parse_args()
    report(run(args.seconds, args.connections, args.requests))


if __name__ == "__main__":
    main()
