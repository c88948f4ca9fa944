"""Ingest benchmark: signed Standard Webhooks events posted to `hookline serve` by wrk.

Runs, in one go on this machine: a no-op Starlette endpoint under the same uvicorn settings
(the ceiling), then hookline with its default SQLite store, both loaded by wrk with 64
connections for 10 s. Every request to hookline carries a distinct webhook-id and a valid
signature, so each one is verified, parsed, validated and durably stored. Prints req/s, p50 and
p99 for both and the ratio against the baseline.

    python bench/ingest.py [--seconds 10] [--connections 64]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ROOT,
    free_port,
    print_table,
    process,
    python,
    run_wrk,
    scratch,
)
from standardwebhooks.webhooks import Webhook  # noqa: E402

SECRET = "whsec_" + base64.b64encode(b"hookline-bench-secret-0123456789").decode()

LUA = r"""
local lines = {}
local index = 0
init = function(args)
  for line in io.lines("%(requests)s") do lines[#lines + 1] = line end
  index = math.floor(#lines * (id %% 16) / 16)
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
                "data": {"platform": "dcycle", "file_id": f"file-{n:08d}", "job_id": f"job-{n % 997}"},
            }, separators=(",", ":"))
            msg_id = f"msg_{n:09d}"
            out.write(f"{msg_id}\t{stamp}\t{hook.sign(msg_id, now, body)}\t{body}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--requests", type=int, default=200_000, help="distinct signed events")
    args = parser.parse_args()

    work = scratch()
    requests = work / "requests.tsv"
    write_requests(requests, args.requests)
    script = work / "post.lua"
    script.write_text(LUA % {"requests": requests})

    base_port = free_port()
    baseline_cmd = [python(), "-m", "uvicorn", "noop_app:app", "--port", str(base_port),
                    "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                    "--log-level", "warning"]
    with process(baseline_cmd, base_port, cwd=Path(__file__).parent):
        baseline = run_wrk(f"http://127.0.0.1:{base_port}/webhooks/demo", script,
                           args.seconds, args.connections)

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
        measured = run_wrk(f"http://127.0.0.1:{port}/webhooks/demo", script,
                           args.seconds, args.connections)

    print(f"ingest: {args.connections} connections, {args.seconds} s each, wrk on 127.0.0.1")
    print_table([
        ("server", "req/s", "p50 ms", "p99 ms", "non-2xx", "requests"),
        ("no-op starlette", f"{baseline.requests_per_second:.0f}", f"{baseline.p50_ms:.2f}",
         f"{baseline.p99_ms:.2f}", str(baseline.non_2xx), str(baseline.requests)),
        ("hookline (sqlite)", f"{measured.requests_per_second:.0f}", f"{measured.p50_ms:.2f}",
         f"{measured.p99_ms:.2f}", str(measured.non_2xx), str(measured.requests)),
    ])
    ratio = measured.requests_per_second / baseline.requests_per_second
    print(f"ratio hookline/no-op: {ratio:.2f} (target >= 0.25); p99 {measured.p99_ms:.1f} ms "
          f"(target <= 25 ms)")
    if measured.requests > args.requests:
        print("note: more requests than distinct events; the rest were answered as duplicates")


if __name__ == "__main__":
    main()
