"""`python -m bench all`: every benchmark in one run, then one table of figures against targets.

    python -m bench all [--read-db PATH] [--results bench/RESULTS.md] [--wait-quiet 600]
    python -m bench ingest|dispatch|read|memory [that benchmark's own options]

`all` runs ingest (hookline against a no-op endpoint and adnanh/webhook), dispatch, read (the
read API over a million events; `--read-db` seeds that file once and reuses it) and memory, in
that order, each with its defaults. Figures depend on what else the machine does: `--wait-quiet`
waits (bounded) until the 1-minute load average is below 0.7 and no test run is going, and the
load at the start is printed and written with the results.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import dispatch  # noqa: E402
import ingest  # noqa: E402
import memory  # noqa: E402
import peer  # noqa: E402

QUIET_LOAD = 0.7
Target = tuple[str, str, str, str]


class Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy for the results file."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.kept = io.StringIO()

    def write(self, text: str) -> int:
        self.out.write(text)
        self.out.flush()
        return self.kept.write(text)


def wait_quiet(limit: float) -> None:
    """Wait up to `limit` s for a 1-minute load below QUIET_LOAD with no test run going."""
    deadline = time.monotonic() + limit
    while True:
        load = common.load_average()[0]
        busy = common.busy_processes()
        if load < QUIET_LOAD and not busy:
            return
        if time.monotonic() >= deadline:
            print(f"warning: still busy after {limit:.0f} s (load {load:.2f}, "
                  f"{len(busy)} test or load processes); measuring anyway")
            return
        time.sleep(5)


def run_read(args: list[str]) -> tuple[str, list[Target]]:
    """bench/read.py through its command line; its table's targeted rows become targets."""
    cmd = [sys.executable, str(BENCH / "read.py"), *args]
    print(f"$ {shlex.join(['python', 'bench/read.py', *args])}", flush=True)
    proc = subprocess.Popen(cmd, cwd=BENCH.parent, stdout=subprocess.PIPE, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    if proc.wait() != 0:
        return "".join(lines), [("read API", f"exit status {proc.returncode}", "runs", "MISSED")]
    return "".join(lines), read_targets(lines)


def read_targets(lines: list[str]) -> list[Target]:
    """Rows of read.py's table judged against a target: (query p99, measured, target, verdict)."""
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines]
    header = next((row for row in cells if row and row[0] == "query"), None)
    if header is None:
        return [("read API", "no table in the output", "p99 <= 50 ms", "MISSED")]
    p99 = next(i for i, name in enumerate(header) if name.startswith("p99"))
    target = next((name for name in header if name.startswith("target")), "target")
    found = []
    for row in cells:
        if len(row) == len(header) and row[-2] in ("ok", "MISSED"):
            found.append((f"read {row[0]} p99", f"{row[p99]} ms",
                          target.removeprefix("target ").strip(), row[-2]))
    return found or [("read API", "no targeted rows", "p99 <= 50 ms", "MISSED")]


def summary(ingest_run: ingest.IngestRun | None, targets: list[Target]) -> None:
    print("\n== summary ==")
    if ingest_run is not None:
        rows = [("ingest server", "req/s", "p50 ms", "p99 ms", "non-2xx", "x no-op", "x webhook")]
        for name, got in (("no-op starlette", ingest_run.noop),
                          ("hookline (sqlite)", ingest_run.hookline),
                          ("webhook (adnanh)", ingest_run.webhook)):
            rows.append((name, f"{got.requests_per_second:.0f}", f"{got.p50_ms:.2f}",
                         f"{got.p99_ms:.2f}", str(got.non_2xx),
                         f"{got.requests_per_second / ingest_run.noop.requests_per_second:.3f}",
                         f"{got.requests_per_second / ingest_run.webhook.requests_per_second:.2f}"))
        common.print_table(rows)
        print()
    common.print_table([("figure", "measured", "target", "verdict"), *targets])
    missed = sum(1 for *_, ok in targets if ok != "ok")
    print(f"\n{len(targets) - missed} ok, {missed} MISSED")


def write_results(path: Path, command: str, started: datetime, load: tuple[float, ...],
                  busy: list[str], output: str, elapsed: float) -> None:
    machine = "\n".join(f"| {key} | {value} |" for key, value in common.machine().items())
    busy_note = ("none" if not busy else
                 f"{len(busy)}: " + "; ".join(f"`{line}`" for line in busy[:5]))
    _, _, figures = output.partition("== summary ==")
    path.write_text(f"""# Benchmark results

The last full run of `python -m bench all` on this machine. Every figure is measured against a
baseline in the same run, on 127.0.0.1 only; bench/*.py say what each benchmark does.

| machine | |
|---|---|
{machine}
| webhook peer | {peer.version()} |
| date (UTC) | {started:%Y-%m-%d %H:%M} |
| load average at start (1, 5, 15 min) | {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} |
| test runs or load generators at start | {busy_note} |
| duration | {elapsed / 60:.1f} min |

Command, from the repository root with the project's venv active:

```sh
{command}
```

## Figures against targets

```text
{figures.strip()}
```

## Everything the run printed

```text
{output.strip()}
```
""")


def run_all(options: argparse.Namespace) -> int:
    if options.wait_quiet:
        wait_quiet(options.wait_quiet)
    started = datetime.now(UTC)
    load = common.load_average()
    busy = common.busy_processes()
    begin = time.monotonic()
    tee = Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        print(f"started {started:%Y-%m-%d %H:%M} UTC; load average {load[0]:.2f} {load[1]:.2f} "
              f"{load[2]:.2f}; machine: " + ", ".join(
                  f"{k} {v}" for k, v in common.machine().items()))
        if busy:
            print(f"note: {len(busy)} test or load processes running: figures are not quiet")
        targets: list[Target] = []

        print("\n== ingest ==")
        ingest_run = ingest.run()
        ingest.report(ingest_run)
        targets += ingest_run.targets()

        print("\n== dispatch ==")
        dispatch_run = dispatch.run()
        dispatch.report(dispatch_run)
        targets += dispatch_run.targets()

        print("\n== read ==")
        read_args = ["--db", str(options.read_db)] if options.read_db else []
        _, read = run_read(read_args)
        targets += read

        print("\n== memory ==")
        memory_run = memory.run()
        memory.report(memory_run)
        targets += memory_run.targets()

        end_load = common.load_average()
        print(f"\nload average at the end {end_load[0]:.2f} {end_load[1]:.2f} {end_load[2]:.2f}")
        summary(ingest_run, targets)
    if options.results:
        command = shlex.join(["python", "-m", "bench", *sys.argv[1:]])
        write_results(options.results, command, started, load, busy, tee.kept.getvalue(),
                      time.monotonic() - begin)
        print(f"wrote {options.results}")
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("ingest", "dispatch", "memory"):
        name, rest = sys.argv[1], sys.argv[2:]
        sys.argv = [f"bench/{name}.py", *rest]
        {"ingest": ingest.main, "dispatch": dispatch.main, "memory": memory.main}[name]()
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "read":
        return subprocess.call([sys.executable, str(BENCH / "read.py"), *sys.argv[2:]],
                               cwd=BENCH.parent)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["all"], help="all, or one of ingest, dispatch, read, "
                        "memory with that benchmark's options")
    parser.add_argument("--read-db", type=Path,
                        help="seed the read benchmark's million events into this file once and "
                        "reuse it on later runs")
    parser.add_argument("--results", type=Path, help="also write the output to this file "
                        "(bench/RESULTS.md)")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help=f"first wait up to this long for a load average below {QUIET_LOAD}")
    return run_all(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
