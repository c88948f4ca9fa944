"""Read benchmark: the read API of `hookline serve` over a seeded log of a million events.

1. Seeds N events (default 1,000,000) into a fresh SQLite file: the real schema from
   `SQLiteStore.open()`, then rows written directly with sqlite3 in large transactions. Three
   sources, ~50,000 jobs and files, seven days of traffic with a denser last hour, and a
   delivery with finished attempts for most events. `--db PATH` seeds PATH once and reuses it.
2. Starts `hookline serve --role receiver` on that file (the read API without a worker, so
   nothing writes to the log while it is read) with one admin token, and waits for /readyz.
3. Loads each query with a bounded number of GETs from a few keep-alive connections (a small
   asyncio HTTP/1.1 client), after a warm-up, then a no-op Starlette GET endpoint under the same
   uvicorn settings with the same client: the baseline every figure is compared against.

    python bench/read.py [--events 1000000] [--requests 2000] [--concurrency 4] [--db PATH] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, free_port, print_table, process, python, scratch  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from app.ids import new_id  # noqa: E402

TOKEN = "bench-read-token"
DAY = 86_400.0
DAYS = 7
JOBS = FILES = 50_000
RECENT = 5_000  # events in the last hour (the rest spread over the seven days before it)
CHUNK = 50_000  # events per transaction
TARGET_MS = 50.0


async def _noop(request: Request) -> JSONResponse:
    return JSONResponse({"items": [], "next_cursor": None})


# The baseline, served by `uvicorn read:baseline` with the settings `hookline serve` uses.
baseline = Starlette(routes=[Route("/api/events", _noop, methods=["GET"])])


# Seeding.


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Pools:
    """The identifiers events refer to; a job's (or file's) events cluster in time."""

    jobs: list[str]
    files: list[str]
    companies: list[tuple[str, str]]
    start: float
    span: float

    @classmethod
    def make(cls, rng: random.Random, start: float, span: float) -> Pools:
        names = ["Innovation Works", "Acme Print", "Nordlicht AG", "Printhaus DE", "Kestrel Ltd"]
        companies = [(_uuid(rng), f"{rng.choice(names)} {n}") for n in range(200)]
        return cls([_uuid(rng) for _ in range(JOBS)], [_uuid(rng) for _ in range(FILES)],
                   companies, start, span)

    def near(self, rng: random.Random, pool: list[str], t: float) -> str:
        """An id whose place in `pool` follows time, give or take a few hours of traffic."""
        centre = (t - self.start) / self.span * len(pool)
        return pool[min(len(pool) - 1, max(0, int(rng.gauss(centre, 150))))]


ALFRED_JOB = {  # canonical type -> (Alfred's event_name, weight)
    "alfred.job.create": ("job_create_event", 8), "alfred.job.start": ("job_start_event", 8),
    "alfred.job.stage_update": ("job_stage_update_event", 10),
    "alfred.job.finished": ("job_finished_event", 8), "alfred.job.failed": ("job_failed_event", 2),
    "alfred.job.retry": ("job_retry_event", 1),
}
ALFRED_FILE = {
    "alfred.file.add_to_job": ("alfred_event_file_add_to_job", 8),
    "alfred.file.status_update": ("alfred_event_file_status_update", 10),
    "alfred.file.done": ("alfred_event_file_done", 12),
    "alfred.file.failed": ("alfred_event_file_failed", 2),
}
ERRORS = ["Unsupported file format: .heic", "OCR engine timeout after 90s",
          "Password protected PDF", "Corrupt image data"]
TAGS = [("31", "Invoice"), ("12", "Receipt"), ("7", "Contract"), ("44", "Delivery note")]


@dataclass
class Draft:
    """What one source sent: the parts of an events row that differ between sources."""

    source: str
    kind: str
    body: dict[str, Any]
    upstream: str
    job: str | None = None
    file_id: str | None = None
    company: str | None = None
    task_ids: list[str] = field(default_factory=list)


def _alfred(rng: random.Random, pools: Pools, t: float) -> Draft:
    company, name = rng.choice(pools.companies)
    event: dict[str, Any] = {"company_id": company, "company_name": name,
                             "creation_date": _iso(t - 40), "update_date": _iso(t)}
    job = file_id = None
    if rng.random() < 0.5:
        kind = rng.choices(list(ALFRED_JOB), [w for _, w in ALFRED_JOB.values()])[0]
        job = pools.near(rng, pools.jobs, t)
        event |= {"event_name": ALFRED_JOB[kind][0], "event_type": "job_event_type",
                  "job_id": job, "retries": "1", "exceeded_retries": "false"}
        if kind == "alfred.job.failed":
            event["error_messages"] = [rng.choice(ERRORS)]
    else:
        kind = rng.choices(list(ALFRED_FILE), [w for _, w in ALFRED_FILE.values()])[0]
        file_id = pools.near(rng, pools.files, t)
        tag_id, tag = rng.choice(TAGS)
        blob = f"invoices/{_iso(t)[:4]}/{file_id[:8]}.pdf"
        event |= {"event_name": ALFRED_FILE[kind][0], "event_type": "file_event_type",
                  "file_id": file_id, "blob_name": blob,
                  "blob_url": f"https://alfredstorage.blob.core.windows.net/files/{blob}",
                  "tag_id": tag_id, "tag_name": tag, "file_status": kind.rsplit(".", 1)[1]}
        if kind == "alfred.file.add_to_job":
            job = event["job_id"] = pools.near(rng, pools.jobs, t)
    upstream = _uuid(rng)
    body = {"event_id": upstream, "event_type": event["event_type"],
            "event_time": f"{t - 1:.2f}", "event": event}
    return Draft("alfred", kind, body, upstream, job, file_id, company)


def _filecheck(rng: random.Random, pools: Pools, t: float) -> Draft:
    kind = "filecheck.job.completed" if rng.random() < 0.6 else "filecheck.job.created"
    job = pools.near(rng, pools.jobs, t)
    tasks = [f"tsk_{rng.getrandbits(40):010x}" for _ in range(rng.randint(1, 3))]
    customer = f"cus_{rng.randint(1000, 9999)}"
    body = {"id": job, "domainIdx": 3, "status": "done" if "completed" in kind else "queued",
            "outcome": rng.choice(["pass", "pass", "mixed", "fail"]),
            "ruleId": "rule_print_a4_cmyk", "channel": "api", "customerId": customer,
            "orderId": f"ORD-2024-{rng.randint(10000, 99999)}", "taskIds": tasks,
            "created": int(t * 1000) - 30_000, "finalized": _iso(t)}
    # A job is completed once upstream; the suffix keeps (source, dedupe_key) unique here.
    upstream = f"{kind}:{job}:{rng.getrandbits(32):08x}"
    return Draft("filecheck", kind, body, upstream, job, None, customer, tasks)


def _partner(rng: random.Random, pools: Pools, t: float) -> Draft:
    kind = "file.processing_failed" if rng.random() < 0.4 else "file.processed"
    file_id = pools.near(rng, pools.files, t)
    job = pools.near(rng, pools.jobs, t) if rng.random() < 0.5 else None
    company = rng.choice(pools.companies)[0]
    data = {"platform": "dcycle", "file_id": file_id, "organization_id": company,
            "reason": "reading.status=error" if "failed" in kind else "ok"}
    if job:
        data["job_id"] = job
    body = {"type": kind, "timestamp": _iso(t), "data": data}
    return Draft("partner", kind, body, f"msg_{rng.getrandbits(96):024x}", job, file_id, company)


def _event(rng: random.Random, pools: Pools, t: float) -> tuple[Any, ...]:
    """One events row (handlers '[]': deliveries are written separately)."""
    roll = rng.random()
    make = _alfred if roll < 0.6 else _filecheck if roll < 0.85 else _partner
    d = make(rng, pools, t)
    raw = json.dumps(d.body, separators=(",", ":"))
    headers = {"content-type": "application/json", "content-length": str(len(raw)),
               "user-agent": f"{d.source}-webhooks/2.4", "accept-encoding": "gzip",
               "x-request-id": d.upstream[-24:]}
    if d.source == "partner":
        headers |= {"webhook-id": d.upstream, "webhook-timestamp": str(int(t))}
    return (new_id("evt", t), d.source, d.kind, d.upstream, None, t, t - 1, d.job, d.file_id,
            d.company, json.dumps(d.task_ids), "[]", json.dumps(headers), "", raw, raw.encode())


SOURCES = ("alfred", "filecheck", "partner")
HANDLERS = {"alfred": ["alfred", "slack"], "filecheck": ["filecheck"], "partner": ["forward"]}


@dataclass
class Rows:
    events: list[tuple[Any, ...]] = field(default_factory=list)
    deliveries: list[tuple[Any, ...]] = field(default_factory=list)
    attempts: list[tuple[Any, ...]] = field(default_factory=list)


class Outcomes:
    """Statuses, deliveries and attempts of seeded events; numbers attempts in end order."""

    def __init__(self, rng: random.Random, now: float) -> None:
        self.rng, self.now, self.done_seq = rng, now, 0

    def attempt(self, rows: Rows, delivery: str, number: int, at: float, outcome: str) -> float:
        self.done_seq += 1
        ended = at + self.rng.uniform(0.01, 0.4)
        error = status = None
        if outcome != "succeeded":
            status = self.rng.choice([500, 502, 503, 422])
            error = f"HTTPStatusError: {status} from upstream"
        rows.attempts.append((delivery, number, at, ended, outcome, error, status, self.done_seq))
        return ended

    def add(self, rows: Rows, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """The event row with its status; its delivery and attempts appended to `rows`."""
        t, roll = row[5], self.rng.random()
        if roll < 0.15:
            return (*row[:4], "unrouted", *row[5:])
        recent = t > self.now - 3600  # only the last hour still has deliveries waiting for a retry
        status = "failed" if roll < 0.18 else "pending" if roll < 0.2 and recent else "delivered"
        delivery = new_id("dlv", t)
        outcomes = {"delivered": ["succeeded"], "pending": ["transient"],
                    "failed": ["transient", "transient", "permanent"]}[status]
        if status == "delivered" and self.rng.random() < 0.05:
            outcomes = ["transient", "succeeded"]
        at = t + self.rng.uniform(0.002, 0.05)
        for number, outcome in enumerate(outcomes, 1):
            ended = self.attempt(rows, delivery, number, at, outcome)
            at = ended + 2.0 ** number
        handler = self.rng.choice(HANDLERS[row[1]])
        state = {"delivered": "succeeded", "pending": "pending", "failed": "dead"}[status]
        last_error = rows.attempts[-1][5]
        rows.deliveries.append((delivery, row[0], handler, state, len(outcomes),
                                at if status == "pending" else None, t, ended, last_error))
        return (*row[:4], status, *row[5:])


def receipt_times(rng: random.Random, count: int, now: float) -> list[float]:
    """Seven days of receipt times, oldest first, with `RECENT` of them in the last hour."""
    recent = min(RECENT, count // 20)
    older = [rng.uniform(now - DAYS * DAY, now - 3600) for _ in range(count - recent)]
    return sorted(older) + sorted(rng.uniform(now - 3600, now - 1) for _ in range(recent))


def generate(count: int, now: float, seed: int = 7) -> Iterator[Rows]:
    rng = random.Random(seed)
    pools = Pools.make(rng, now - DAYS * DAY, DAYS * DAY)
    outcomes = Outcomes(rng, now)
    rows = Rows()
    for t in receipt_times(rng, count, now):
        rows.events.append(outcomes.add(rows, _event(rng, pools, t)))
        if len(rows.events) == CHUNK:
            yield rows
            rows = Rows()
    if rows.events:
        yield rows


INSERT_EVENT = ("INSERT INTO events (id, source, type, dedupe_key, status, received_at, "
                "occurred_at, job_id, file_id, company_id, task_ids, handlers, headers, query, "
                "payload, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
INSERT_DELIVERY = ("INSERT INTO deliveries (id, event_id, handler, status, attempts, "
                   "next_attempt_at, created_at, updated_at, last_error) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
INSERT_ATTEMPT = ("INSERT INTO attempts (delivery_id, number, started_at, ended_at, outcome, "
                  "error, http_status, done_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


async def _apply_schema(path: Path) -> None:
    # Imported here: the baseline server imports this module and should stay a bare Starlette.
    from app.store.sqlite import SQLiteStore

    store = SQLiteStore(str(path))
    await store.open()
    await store.close()


def _ingest_counts(now: float) -> list[tuple[int, str, str, str, int]]:
    """Per-minute duplicates and rejections, as the tally would have flushed them."""
    rng = random.Random(11)
    rows = []
    for minute in range(int((now - DAYS * DAY) // 60), int(now // 60) + 1):
        for source in SOURCES:
            if rng.random() < 0.3:
                rows.append((minute, source, "duplicate", "", rng.randint(1, 5)))
            if rng.random() < 0.03:
                rows.append((minute, source, "rejected", "signature", rng.randint(1, 3)))
    return rows


def seed(path: Path, count: int) -> float:
    """Write `count` events and their deliveries to a new database at `path`; seconds taken."""
    started = time.perf_counter()
    asyncio.run(_apply_schema(path))
    now = time.time()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")  # the seed only: the server opens with FULL
    conn.execute("PRAGMA cache_size=-1000000")
    for rows in generate(count, now):
        conn.execute("BEGIN")
        conn.executemany(INSERT_EVENT, rows.events)
        conn.executemany(INSERT_DELIVERY, rows.deliveries)
        conn.executemany(INSERT_ATTEMPT, rows.attempts)
        conn.execute("COMMIT")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO ingest_counts VALUES (?, ?, ?, ?, ?)", _ingest_counts(now))
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


# The load: a minimal HTTP/1.1 keep-alive client, so the generator costs little next to the server.


class Connection:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
    ) -> None:
        self.reader, self.writer = reader, writer
        self.head = f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, port)

    async def get(self, path: str) -> tuple[int, bytes]:
        self.writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\n" + self.head)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip()
                  for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in fields:
            return status, await self.reader.readexactly(int(fields["content-length"]))
        body = b""
        while size := int((await self.reader.readline()).strip(), 16):  # chunked
            body += await self.reader.readexactly(size)
            await self.reader.readexactly(2)
        await self.reader.readexactly(2)
        return status, body

    def close(self) -> None:
        self.writer.close()


@dataclass
class Load:
    latencies: list[float]
    seconds: float
    failures: int

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds


async def load(port: int, paths: Callable[[int], str], count: int, concurrency: int) -> Load:
    """`count` GETs of `paths(n)` over `concurrency` keep-alive connections."""
    connections = [await Connection.open(port) for _ in range(concurrency)]
    latencies: list[float] = []
    failures = 0
    numbers = iter(range(count))

    async def drive(conn: Connection) -> None:
        nonlocal failures
        for n in numbers:
            started = time.perf_counter()
            status, _ = await conn.get(paths(n))
            latencies.append(time.perf_counter() - started)
            failures += status != 200

    started = time.perf_counter()
    await asyncio.gather(*(drive(conn) for conn in connections))
    seconds = time.perf_counter() - started
    for conn in connections:
        conn.close()
    return Load(latencies, seconds, failures)


def measure(port: int, paths: Callable[[int], str], count: int, concurrency: int) -> Load:
    """A warm-up of a tenth of the count (distinct paths), then the measured run."""
    warm = max(20, count // 10)
    asyncio.run(load(port, lambda n: paths(count + n), warm, concurrency))
    return asyncio.run(load(port, paths, count, concurrency))


def wait_ready(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if asyncio.run(load(port, lambda n: "/readyz", 1, 1)).failures == 0:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"/readyz did not answer 200 within {timeout:g} s")


# The queries.


@dataclass
class Sample:
    """What the queries vary over, read from the seeded database."""

    jobs: list[str]
    oldest: float
    newest: float

    @classmethod
    def read(cls, path: Path) -> Sample:
        rng = random.Random(3)
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        low, high, oldest, newest = conn.execute(
            "SELECT min(seq), max(seq), min(received_at), max(received_at) FROM events").fetchone()
        seqs = [rng.randint(low, high) for _ in range(5000)]
        jobs = conn.execute(
            f"SELECT DISTINCT job_id FROM events WHERE seq IN ({','.join(map(str, seqs))}) "
            "AND type GLOB 'alfred.job.*'").fetchall()
        conn.close()
        return cls(sorted(j for (j,) in jobs), oldest, newest)


SEARCHES = ["heic", "Contract", "rule_print_a4", "no-such-text-anywhere"]


def queries(sample: Sample) -> dict[str, Callable[[int], str]]:
    rng = random.Random(5)
    starts = [rng.uniform(sample.oldest, sample.newest - 3600) for _ in range(1000)]
    jobs = sample.jobs

    def url(**params: str | float) -> str:
        return "/api/events?" + urllib.parse.urlencode(params, safe="*")

    return {
        "a job's alfred.job.* events":
            lambda n: url(type="alfred.job.*", job_id=jobs[n % len(jobs)]),
        "one-hour window, limit=50":
            lambda n: url(since=f"{starts[n % 1000]:.3f}",
                          until=f"{starts[n % 1000] + 3600:.3f}", limit=50),
        "stats (last hour)": lambda n: "/api/stats",
        "newest 50, no filter": lambda n: url(limit=50),
        "q search (bounded)": lambda n: url(q=SEARCHES[n % len(SEARCHES)]),
    }


TARGETED = {"a job's alfred.job.* events", "one-hour window, limit=50", "stats (last hour)"}


def run_hookline(
    db: Path, work: Path, sample: Sample, count: int, concurrency: int
) -> dict[str, Load]:
    config = work / "hookline.toml"
    config.write_text(
        f'[storage]\nurl = "sqlite:///{db}"\n'
        f'[[api.tokens]]\nname = "bench"\ntoken = "{TOKEN}"\nscopes = ["admin"]\n'
    )
    port = free_port()
    cmd = [python(), "-m", "app.cli", "serve", "--config", str(config), "--port", str(port),
           "--role", "receiver", "--log-format", "json"]
    results = {}
    with process(cmd, port, cwd=ROOT):
        wait_ready(port)
        for name, paths in queries(sample).items():
            results[name] = measure(port, paths, count, concurrency)
    return results


def run_baseline(count: int, concurrency: int) -> Load:
    port = free_port()
    cmd = [python(), "-m", "uvicorn", "read:baseline", "--port", str(port), "--loop", "uvloop",
           "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    with process(cmd, port, cwd=Path(__file__).parent):
        return measure(port, lambda n: f"/api/events?limit=50&n={n}", count, concurrency)


def report(results: dict[str, Load], base: Load, concurrency: int) -> None:
    print(f"read API: {concurrency} keep-alive connections, asyncio client on 127.0.0.1; "
          f"req/s ratio against the no-op endpoint in the last column; load average now "
          + " ".join(f"{n:.2f}" for n in os.getloadavg()))
    rows: list[tuple[str, ...]] = [
        ("query", "requests", "req/s", "p50 ms", "p99 ms", "non-200", "target p99 <= 50 ms",
         "x no-op")]
    for name, got in [*results.items(), ("no-op starlette (baseline)", base)]:
        verdict = ""
        if name in TARGETED:
            verdict = "ok" if got.percentile(0.99) <= TARGET_MS else "MISSED"
        rows.append((name, str(len(got.latencies)), f"{got.rate:.0f}", f"{got.percentile(0.5):.2f}",
                     f"{got.percentile(0.99):.2f}", str(got.failures), verdict,
                     f"{got.rate / base.rate:.3f}"))
    print_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per query")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--db", type=Path, help="seed this file once, then reuse it")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()

    work = scratch()
    db = args.db.resolve() if args.db else work / "read.db"
    # Other work on the machine shows up in every figure: say how busy it was.
    print("load average at start " + " ".join(f"{n:.2f}" for n in os.getloadavg()), flush=True)
    try:
        if db.exists():
            print(f"reusing {db} (no seeding)")
        else:
            print(f"seeded {args.events:,} events in {seed(db, args.events):.1f} s", flush=True)
        sample = Sample.read(db)
        age = time.time() - sample.newest
        if age > 600:
            print(f"note: the newest event is {age / 60:.0f} min old, so the stats window "
                  "holds fewer events than a fresh seed's")
        results = run_hookline(db, work, sample, args.requests, args.concurrency)
        base = run_baseline(args.requests, args.concurrency)
        report(results, base, args.concurrency)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
