"""Fault injection: hookline keeps receiving and dispatching while handlers, upstreams and the
store misbehave, and loses nothing it acknowledged.

Handlers that hang, raise, dawdle or return garbage run beside a fast one; outbound handlers
meet local servers that fail in every way a socket can; the SQLite store fills up, turns
read-only or disappears under the running app; and a real server is killed with SIGKILL under
concurrent load. Time is the injected clock wherever retry logic decides; the only real waits
are handler timeouts (short) and conditions polled with a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import random
import shutil
import signal
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
from starlette.applications import Starlette

from app.config import settings_from_mapping
from app.ids import new_id
from app.main import create_app
from app.runtime import Runtime
from app.store import StoreError, store_from_url
from app.store.sqlite import SQLiteStore
from app.worker import Worker, WorkerSettings
from handlers import Context, Event
from handlers.upstream import reset_breakers
from schemas.records import NewEvent

from conftest import STANDARD_SECRET, FakeClock, base_config, standard_body, standard_headers
from server import ServerProcess, running_server, wait_until


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait for `check()` to hold, polling the event loop, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


class FixedRandom(random.Random):
    """Jitter pinned to the bottom of its range, so backoff times are exact."""

    def random(self) -> float:
        return 0.0


async def post(client: httpx.AsyncClient, clock: FakeClock, msg_id: str) -> httpx.Response:
    body = standard_body(platform="dcycle", file_id=f"file-{msg_id}")
    return await client.post(
        "/webhooks/partner", content=body, headers=standard_headers(body, clock.now(), msg_id)
    )


async def event_of(client: httpx.AsyncClient, event_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/events/{event_id}")
    assert response.status_code == 200, response.text
    event: dict[str, Any] = response.json()
    return event


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Starlette], Awaitable[httpx.AsyncClient]]]:
    """Start an app's lifespan and an ASGI client on it; both are stopped after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(app: Starlette) -> httpx.AsyncClient:
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            return await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://localhost"))

        yield start


# 1. Misbehaving handlers beside a fast one.


class Fast:
    name = "fast"

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def handle(self, event: Event, ctx: Context) -> None:
        self.calls.append(event.id)


class Hangs:
    """Never returns: only the worker's timeout ends it."""

    name = "hangs"

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0

    async def handle(self, event: Event, ctx: Context) -> None:
        self.started += 1
        try:
            await asyncio.Event().wait()
        finally:
            self.cancelled += 1


class Raises:
    name = "raises"

    async def handle(self, event: Event, ctx: Context) -> None:
        raise RuntimeError(f"handler bug on {event.id}")


class Slow:
    """Returns within its timeout, but only once the test opens its gate."""

    name = "slow"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.waiting = 0

    async def handle(self, event: Event, ctx: Context) -> None:
        self.waiting += 1
        await self.gate.wait()


class Garbage:
    """Returns a value no handler should: returning at all still means success."""

    name = "garbage"

    async def handle(self, event: Event, ctx: Context) -> Any:
        return object()


class Writes:
    """Spends retry budget until its timeout cuts it off, most likely inside a store write."""

    name = "writes"

    async def handle(self, event: Event, ctx: Context) -> None:
        assert ctx.upstream is not None
        for n in range(1_000_000):
            await ctx.upstream.take_budget(f"writes:{event.id}:{n}", 1)


class Exits:
    """Plugin code that calls sys.exit(), as command-line libraries do on bad input."""

    name = "exits"

    async def handle(self, event: Event, ctx: Context) -> None:
        raise SystemExit(3)


class Cancelled:
    """Awaits work that someone else cancelled: a CancelledError that is not the worker's."""

    name = "cancelled"

    async def handle(self, event: Event, ctx: Context) -> None:
        other = asyncio.get_running_loop().create_future()
        other.cancel()
        await other


fast = Fast()
exits = Exits()
cancelled = Cancelled()
hangs = Hangs()
writes = Writes()
raises = Raises()
slow = Slow()
garbage = Garbage()

HANG_TIMEOUT = 2.5
MISBEHAVING = {
    "hangs": {"use": "test_faults:hangs", "timeout_seconds": HANG_TIMEOUT, "concurrency": 12},
    "raises": {"use": "test_faults:raises", "concurrency": 2},
    "slow": {"use": "test_faults:slow", "timeout_seconds": 30, "concurrency": 2},
    "garbage": {"use": "test_faults:garbage", "concurrency": 2},
}


@pytest.fixture(autouse=True)
def _fresh_handlers() -> None:
    fast.__init__()  # type: ignore[misc]
    hangs.__init__()  # type: ignore[misc]
    slow.__init__()  # type: ignore[misc]


async def test_misbehaving_handlers_neither_delay_the_fast_one_nor_ingest(
    tmp_path: Path, clock: FakeClock, serve: Any
) -> None:
    config = base_config(tmp_path / "handlers.db")
    config["handlers"] = {"fast": {"use": "test_faults:fast"}, **MISBEHAVING}
    # The misbehaving handlers' deliveries come first in every claim.
    config["routes"] = [{"match": "*", "handler": name}
                        for name in ("hangs", "slow", "raises", "garbage", "fast")]
    # Fewer worker slots than misbehaving deliveries: a slot held by a delivery that only
    # waits for its own handler's turn would starve the fast handler.
    slots = WorkerSettings(concurrency=16, claim_batch=16, shutdown_grace_seconds=0.2)
    app = create_app(settings_from_mapping(config, {}), clock=clock, worker_settings=slots)
    app.state.runtime.worker._rand = FixedRandom()
    client = await serve(app)

    answers = await asyncio.gather(*(post(client, clock, f"ev-{n}") for n in range(11)))
    assert [a.status_code for a in answers] == [202] * 11
    ids = [a.json()["id"] for a in answers]

    async def fast_all_recorded() -> bool:
        events = [await event_of(client, i) for i in ids]
        return all(d["status"] == "succeeded" for e in events for d in e["deliveries"]
                   if d["handler"] == "fast")

    await eventually(fast_all_recorded, timeout=HANG_TIMEOUT)
    # Done while hanging and slow deliveries were running, before any hang's timeout and
    # before any slow one could return.
    assert hangs.started > 0 and slow.waiting > 0
    assert hangs.cancelled == 0 and not slow.gate.is_set()
    assert sorted(fast.calls) == sorted(ids)

    # Ingest answers at once while the worker is full of misbehaving deliveries.
    more = await post(client, clock, "ev-late")
    assert more.status_code == 202 and more.json()["duplicate"] is False
    ids.append(more.json()["id"])

    slow.gate.set()

    async def all_attempted() -> bool:
        events = [await event_of(client, i) for i in ids]
        return all(d["attempt_log"] and d["attempt_log"][-1]["outcome"] != "running"
                   for e in events for d in e["deliveries"])

    await eventually(all_attempted, timeout=10 * HANG_TIMEOUT)
    now = clock.now()
    for event_id in ids:
        by_handler = {d["handler"]: d for d in (await event_of(client, event_id))["deliveries"]}
        outcomes = {name: [a["outcome"] for a in d["attempt_log"]]
                    for name, d in by_handler.items()}
        assert outcomes == {"fast": ["succeeded"], "slow": ["succeeded"],
                            "garbage": ["succeeded"], "raises": ["transient"],
                            "hangs": ["timeout"]}, event_id
        hung, raised = by_handler["hangs"], by_handler["raises"]
        assert hung["status"] == "pending" and hung["next_attempt_at"] == now + 1.0
        assert f"within {HANG_TIMEOUT:g} s" in hung["attempt_log"][0]["error"]
        assert raised["status"] == "pending" and raised["next_attempt_at"] == now + 1.0
        assert f"RuntimeError: handler bug on {event_id}" in raised["attempt_log"][0]["error"]
    assert hangs.started == hangs.cancelled == len(ids)
    assert fast.calls.count(ids[-1]) == 1 and len(fast.calls) == len(ids)


async def test_handler_cut_off_inside_a_store_write_leaves_the_store_sound(
    tmp_path: Path, clock: FakeClock, serve: Any
) -> None:
    db = tmp_path / "writes.db"
    config = base_config(db)
    config["handlers"] = {"writes": {"use": "test_faults:writes", "timeout_seconds": 0.05}}
    config["routes"] = [{"match": "*", "handler": "writes"}]
    app = create_app(settings_from_mapping(config, {}), clock=clock,
                     worker_settings=WorkerSettings(background=False))
    client = await serve(app)
    runtime: Runtime = app.state.runtime
    assert runtime.worker is not None
    for n in range(10):  # one at a time: each cut is a fresh chance to land mid-transaction
        event_id = (await post(client, clock, f"w-{n}")).json()["id"]
        assert await runtime.worker.run_once() == 1
        [delivery] = (await event_of(client, event_id))["deliveries"]
        assert delivery["status"] == "pending"
        assert [a["outcome"] for a in delivery["attempt_log"]] == ["timeout"]
    # What ingest acknowledges afterwards is committed: another connection sees it.
    after = await post(client, clock, "w-after")
    assert after.status_code == 202
    assert stored(db)["w-after"] == after.json()["id"]


async def test_handler_raising_system_exit_or_cancelled_error_is_one_failed_attempt(
    tmp_path: Path, clock: FakeClock, serve: Any
) -> None:
    config = base_config(tmp_path / "exits.db")
    policy = {"max_attempts": 2, "backoff_base_seconds": 2}
    config["handlers"] = {"fast": {"use": "test_faults:fast"},
                          "exits": {"use": "test_faults:exits", **policy},
                          "cancelled": {"use": "test_faults:cancelled", **policy}}
    config["routes"] = [{"match": "*", "handler": name} for name in ("exits", "cancelled", "fast")]
    app = create_app(settings_from_mapping(config, {}), clock=clock,
                     worker_settings=WorkerSettings(background=False))
    client = await serve(app)
    worker: Worker = app.state.runtime.worker
    worker._rand = FixedRandom()
    event_id = (await post(client, clock, "exit-1")).json()["id"]
    assert await worker.run_once() == 3
    deliveries = {d["handler"]: d for d in (await event_of(client, event_id))["deliveries"]}
    assert deliveries["fast"]["status"] == "succeeded"
    for name, error in (("exits", "SystemExit: 3"), ("cancelled", "CancelledError")):
        d = deliveries[name]
        assert (d["status"], d["next_attempt_at"]) == ("pending", clock.now() + 1.0), name
        [attempt] = d["attempt_log"]
        assert attempt["outcome"] == "transient" and attempt["error"].startswith(error), name
    clock.advance(1.0)
    assert await worker.run_once() == 2
    deliveries = {d["handler"]: d for d in (await event_of(client, event_id))["deliveries"]}
    assert {deliveries[name]["status"] for name in ("exits", "cancelled")} == {"dead"}
    assert (await post(client, clock, "exit-2")).status_code == 202


async def test_claims_per_handler_reach_past_another_handlers_backlog(
    store_url: str, clock: FakeClock
) -> None:
    store = store_from_url(store_url)
    await store.open()
    try:
        now = clock.now()
        backlog = [NewEvent(id=new_id("evt", now + n), source="s", type="t", dedupe_key=f"k{n}",
                            received_at=now + n, occurred_at=None, body=b"{}", payload={},
                            headers={}, handlers=("stuck",) if n < 20 else ("stuck", "fast"))
                   for n in range(22)]
        await store.save_events(backlog)
        later = now + 30
        # Oldest first, the stuck handler's backlog fills any claim that does not ask per handler.
        [first] = await store.claim_due("w1", later, 60, 1)
        assert first.handler == "stuck"
        claims = await store.claim_due("w1", later, 60, 10, {"stuck": 2, "fast": 5, "gone": 0})
        assert sorted(c.handler for c in claims) == ["fast", "fast", "stuck", "stuck"]
        assert [c.event.upstream_id for c in claims if c.handler == "fast"] == ["k20", "k21"]
        assert await store.claim_due("w1", later, 60, 10, {"fast": 5}) == []
        assert await store.claim_due("w1", later, 60, 10, {}) == []
        # Expired leases are taken back per handler too.
        again = await store.claim_due("w2", later + 61, 60, 10, {"fast": 1})
        assert [(c.handler, c.attempt) for c in again] == [("fast", 2)]
    finally:
        await store.close()


# 2. Upstream failures of outbound handlers, against local servers that misbehave on cue.


class RawServer:
    """A TCP server on 127.0.0.1 that reads one HTTP request per connection and then acts out
    the next step of its script: an HTTP status (`"429 retry-after=120"`), `reset` (an RST
    after reading the request), `half` (headers and part of the body, then close) or `hang`
    (never answer). Without a script it answers 200."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.requests: list[bytes] = []
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        with self._lock:
            for conn in self._held:
                conn.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        request = self._read_request(conn)
        with self._lock:
            self.requests.append(request)
            step = self.script.pop(0) if self.script else "200"
            if step == "hang":
                self._held.append(conn)
                return
        if step == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif step == "half":
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: 64\r\n\r\n{\"accepted\": tr")
        else:
            status, *extra = step.split()
            headers = "".join(f"{k}: {v}\r\n" for k, v in (e.split("=") for e in extra))
            conn.sendall(f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                         f"content-length: 4\r\nconnection: close\r\n{headers}\r\ntrue".encode())
        conn.close()

    def paths(self) -> list[str]:
        with self._lock:
            return [r.split(b" ", 2)[1].decode() for r in self.requests]


@pytest.fixture(autouse=True)
def _closed_breakers() -> None:
    reset_breakers()


SCRIPT = ["500", "429 retry-after=120", "reset", "half", "hang", "200"]
SILENCE = 1.0  # the handlers' timeout, which ends the wait for an upstream that never answers


async def test_upstream_failures_retry_and_recover(
    tmp_path: Path, clock: FakeClock, serve: Any
) -> None:
    with RawServer(SCRIPT) as receiver, RawServer(SCRIPT) as dcycle:
        config = base_config(tmp_path / "upstream.db")
        policy = {"max_attempts": 8, "backoff_base_seconds": 2}
        config["handlers"] = {
            # A silent upstream is cut off by the worker's timeout of the whole handler (here
            # shorter than the HTTP client's, which would record a transient ReadTimeout).
            "out": {"use": "forward", "timeout_seconds": SILENCE, **policy,
                    "options": {"url": f"{receiver.url}/hook", "timeout": 10}},
            "dcycle": {"use": "dcycle_retry", "timeout_seconds": SILENCE, **policy,
                       "options": {"base_url": dcycle.url, "token": "dc-token",
                                   "organization_id": "org-1", "budget": 10}},
        }
        config["routes"] = [{"match": "file.processing_failed", "handler": "out"},
                            {"match": "file.processing_failed", "handler": "dcycle"}]
        app = create_app(settings_from_mapping(config, {}), clock=clock,
                         worker_settings=WorkerSettings(background=False))
        worker: Worker = app.state.runtime.worker
        worker._rand = FixedRandom()
        client = await serve(app)
        answer = await post(client, clock, "up-1")
        assert answer.status_code == 202
        event_id = answer.json()["id"]

        async def deliveries() -> dict[str, dict[str, Any]]:
            return {d["handler"]: d for d in (await event_of(client, event_id))["deliveries"]}

        # Attempt n fails as the script says and waits its backoff (1, 2, 4, 8 s at the bottom
        # of the jitter), except that the 429's Retry-After sets a floor of 120 s.
        expected = [("transient", 500, 1.0), ("transient", 429, 120.0), ("transient", None, 4.0),
                    ("transient", None, 8.0), ("timeout", None, 16.0)]
        for number, (outcome, status, wait) in enumerate(expected, start=1):
            assert await worker.run_once() == 2
            now = clock.now()
            for name, d in (await deliveries()).items():
                attempt = d["attempt_log"][-1]
                assert (d["status"], d["attempts"]) == ("pending", number), name
                assert (attempt["outcome"], attempt["http_status"]) == (outcome, status), name
                assert d["next_attempt_at"] == now + wait, name
            clock.advance(wait - 0.5)
            assert await worker.run_once() == 0  # not due yet
            clock.advance(0.5)

        assert await worker.run_once() == 2  # the upstreams recovered
        for name, d in (await deliveries()).items():
            assert d["status"] == "succeeded" and d["attempts"] == 6, name
            errors = [a["error"] for a in d["attempt_log"]]
            assert "HTTP 500" in errors[0] and "HTTP 429" in errors[1], name
            assert "ReadError" in errors[2] and "RemoteProtocolError" in errors[3], name
            assert f"within {SILENCE:g} s" in errors[4] and errors[5] is None, name
        assert receiver.paths() == ["/hook"] * 6
        assert dcycle.paths() == ["/v1/files/send-event"] * 6
        assert await worker.run_once() == 0
        # Only the calls that reached Dcycle and were answered spent its retry budget.
        used = await app.state.runtime.store.budget_used(["dcycle:file:file-up-1"])
        assert used == {"dcycle:file:file-up-1": 4}


# 3. Store failures under ingest, through the real ASGI app.


def stored(db: Path) -> dict[str, str]:
    """webhook-id -> event id of the events in the database file, read on a connection of
    its own."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return dict(conn.execute("SELECT dedupe_key, id FROM events").fetchall())


def is_refusal(response: httpx.Response) -> bool:
    """The documented answer to a store that cannot take the event: 503, Retry-After, envelope."""
    return (response.status_code == 503 and response.headers.get("retry-after") == "1"
            and response.json()["error"]["code"] == "store_unavailable")


async def ingest_app(tmp_path: Path, clock: FakeClock, serve: Any
                     ) -> tuple[httpx.AsyncClient, Runtime, SQLiteStore, Path]:
    db = tmp_path / "data" / "hookline.db"
    db.parent.mkdir()
    config = base_config(db)
    config["server"] = {"intake_queue": 8, "batch_max": 4}
    config["handlers"] = {"fast": {"use": "test_faults:fast"}}
    config["routes"] = [{"match": "*", "handler": "fast"}]
    store = SQLiteStore(str(db))
    app = create_app(settings_from_mapping(config, {}), store=store, clock=clock,
                     worker_settings=WorkerSettings(background=False))
    return await serve(app), app.state.runtime, store, db


async def post_many(client: httpx.AsyncClient, clock: FakeClock, runtime: Runtime,
                    ids: list[str]) -> tuple[dict[str, httpx.Response], int]:
    """Post all of `ids` at once: every answer, and the deepest the intake queue got."""
    deepest = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal deepest
        while not done.is_set():
            deepest = max(deepest, runtime.intake.depth)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    async with asyncio.timeout(20):
        answers = await asyncio.gather(*(post(client, clock, i) for i in ids))
    done.set()
    await watcher
    return dict(zip(ids, answers, strict=True)), deepest


async def check_refusals_lose_nothing(
    client: httpx.AsyncClient, clock: FakeClock, runtime: Runtime, db: Path, name: str,
    before: set[str],
) -> set[str]:
    """Post under the fault: each answer is 202 or the documented 503; exactly the 202s are
    stored; the intake queue stays within its bound and drains. Returns the acknowledged ids."""
    answers, deepest = await post_many(
        client, clock, runtime, [f"{name}-{n}" for n in range(60)])
    acked = {i for i, r in answers.items() if r.status_code == 202}
    refused = {i for i, r in answers.items() if is_refusal(r)}
    assert acked | refused == set(answers), {i: r.status_code for i, r in answers.items()}
    assert len(refused) >= 50  # the fault bites (a few rows may still fit in free space)
    # Requests beyond the queue's bound were refused at once instead of piling up, and
    # nothing is left queued once every request had its answer.
    assert deepest == 8 and runtime.intake.depth == 0
    assert set(stored(db)) == before | acked
    return acked


async def recovers(client: httpx.AsyncClient, clock: FakeClock, runtime: Runtime, db: Path,
                   name: str, acked: set[str]) -> None:
    """Ingest works again without a restart, and every stored event (the acknowledged ones
    and nothing else) is delivered once."""
    answers, _ = await post_many(client, clock, runtime, [f"{name}-after-{n}" for n in range(5)])
    assert {r.status_code for r in answers.values()} == {202}
    assert (await client.get("/readyz")).status_code == 200
    events = stored(db)
    assert set(events) == acked | set(answers)
    assert runtime.worker is not None
    assert await runtime.worker.run_once() == len(events)
    assert sorted(fast.calls) == sorted(events.values())


async def test_disk_full_refuses_with_503_and_loses_nothing(
    tmp_path: Path, clock: FakeClock, serve: Any
) -> None:
    client, runtime, store, db = await ingest_app(tmp_path, clock, serve)
    assert (await post(client, clock, "before")).status_code == 202
    [(pages,)] = list(await store.writer.execute_fetchall("PRAGMA page_count"))
    await store.writer.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL from here on
    acked = await check_refusals_lose_nothing(client, clock, runtime, db, "full", {"before"})
    await store.writer.execute("PRAGMA max_page_count = 1073741823")
    await recovers(client, clock, runtime, db, "full", acked | {"before"})


async def test_read_only_store_refuses_with_503_and_loses_nothing(
    tmp_path: Path, clock: FakeClock, serve: Any
) -> None:
    client, runtime, store, db = await ingest_app(tmp_path, clock, serve)
    assert (await post(client, clock, "before")).status_code == 202
    # As root, file modes do not stop writes: make SQLite itself refuse them.
    await store.writer.execute("PRAGMA query_only = 1")
    acked = await check_refusals_lose_nothing(client, clock, runtime, db, "ro", {"before"})
    assert acked == set()
    await store.writer.execute("PRAGMA query_only = 0")
    await recovers(client, clock, runtime, db, "ro", {"before"})


async def reads_answer_at_most_503(client: httpx.AsyncClient) -> None:
    for path in ("/api/events", "/api/deliveries", "/api/events/evt_nope", "/api/stats",
                 "/api/jobs/j1", "/healthz", "/metrics"):
        response = await client.get(path)
        assert response.status_code < 500 or is_refusal(response), (path, response.text)


async def test_database_removed_answers_503(
    tmp_path: Path, clock: FakeClock, serve: Any
) -> None:
    client, runtime, _, db = await ingest_app(tmp_path, clock, serve)
    assert (await post(client, clock, "before")).status_code == 202
    shutil.rmtree(db.parent)  # the database, its WAL and shared memory, and their directory
    answers, _ = await post_many(client, clock, runtime, [f"gone-{n}" for n in range(20)])
    assert all(is_refusal(r) for r in answers.values()), {r.status_code for r in answers.values()}
    ready = await client.get("/readyz")
    assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
    await reads_answer_at_most_503(client)
    assert runtime.worker is not None
    with pytest.raises(StoreError):
        await runtime.worker.run_once()


async def test_writer_connection_closed_answers_503(
    tmp_path: Path, clock: FakeClock, serve: Any
) -> None:
    client, runtime, store, db = await ingest_app(tmp_path, clock, serve)
    assert (await post(client, clock, "before")).status_code == 202
    await store.writer.close()
    answers, _ = await post_many(client, clock, runtime, [f"closed-{n}" for n in range(20)])
    assert all(is_refusal(r) for r in answers.values()), {r.status_code for r in answers.values()}
    ready = await client.get("/readyz")
    assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
    await reads_answer_at_most_503(client)
    assert set(stored(db)) == {"before"}


# 4. kill -9 of a real server under concurrent load.


class HoldingSink:
    """A local receiver that records every POST (path, webhook-id) and holds its answer until
    `release` is set, so deliveries are in flight whenever the server is killed."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.held: list[tuple[str, str]] = []
        self.answered: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        sink = self

        class Receiver(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                seen = (self.path, self.headers["webhook-id"])
                with sink.lock:
                    sink.held.append(seen)
                if not sink.release.wait(30):
                    return
                try:
                    self.send_response(200)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:  # the server that asked was killed meanwhile
                    return
                with sink.lock:
                    sink.answered.append(seen)

            def log_message(self, *args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def kill_config(path: Path, sink_url: str) -> Path:
    config = path / "hookline.toml"
    handler = """
[handlers.{name}]
use = "forward"
max_attempts = 20
backoff_base_seconds = 0.05
timeout_seconds = 5
options = {{ url = "{url}/{name}" }}
"""
    config.write_text(f"""
[storage]
url = "sqlite:///{path / 'kill.db'}"

[worker]
sweep_seconds = 0.2
lease_margin_seconds = 1

[sources.partner]
platform = "standard"
unknown_events = "accept"
auth = {{ scheme = "standard_webhooks", secrets = ["{STANDARD_SECRET}"] }}

[[routes]]
match = "*"
handler = "a"

[[routes]]
match = "*"
handler = "b"
""" + handler.format(name="a", url=sink_url) + handler.format(name="b", url=sink_url))
    return config


def post_signed(client: httpx.Client, msg_id: str) -> httpx.Response:
    body = standard_body(platform="dcycle", file_id=msg_id)
    return client.post("/webhooks/partner", content=body,
                       headers=standard_headers(body, time.time(), msg_id))


def unfinished(url: str) -> int:
    """How many deliveries are pending or running (0 or 1 per status is enough to know)."""
    return sum(
        len(httpx.get(f"{url}/api/deliveries", params={"status": status, "limit": 1},
                      timeout=5).json()["items"])
        for status in ("pending", "running"))


def test_kill_9_under_load_loses_nothing_and_runs_every_delivery(tmp_path: Path) -> None:
    with HoldingSink() as sink:
        config = kill_config(tmp_path, sink.url)
        first = ServerProcess(["--config", str(config)], cwd=tmp_path)
        first.wait_ready()
        acked: dict[str, str] = {}  # webhook-id -> event id, for every 2xx answer
        lock = threading.Lock()
        ids = iter(f"load-{n}" for n in range(200))
        killed = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=first.url, timeout=10) as http:
                for msg_id in ids:  # shared by the threads: each id is posted once
                    if killed.is_set():
                        return
                    try:
                        response = post_signed(http, msg_id)
                    except httpx.HTTPError:
                        continue
                    if response.status_code == 202:
                        with lock:
                            acked[msg_id] = response.json()["id"]

        with ThreadPoolExecutor(8) as pool:
            clients = [pool.submit(client) for _ in range(8)]
            # Killed while clients post and deliveries are in flight (held by the sink).
            wait_until(lambda: len(acked) >= 40 and len(sink.held) >= 4, timeout=30)
            first.stop(signal.SIGKILL)
            killed.set()
            for done in clients:
                done.result()
        with lock:
            acknowledged = dict(acked)
        assert 40 <= len(acknowledged) < 200
        assert sink.answered == []  # nothing was delivered before the kill

        sink.release.set()
        with running_server(["--config", str(config)], cwd=tmp_path) as second:
            wait_until(lambda: unfinished(second.url) == 0, timeout=30)
            listed = httpx.get(f"{second.url}/api/events",
                               params={"source": "partner", "limit": 500}, timeout=5).json()
            stored = {item["upstream_id"]: item["id"] for item in listed["items"]}
            # Every acknowledged event is stored under the id it was acknowledged with; what
            # else is stored was posted and stored, its answer lost to the kill.
            assert {k: stored.get(k) for k in acknowledged} == acknowledged
            assert set(stored) <= {f"load-{n}" for n in range(200)}
            lost_attempts = 0
            for event_id in stored.values():
                event = httpx.get(f"{second.url}/api/events/{event_id}", timeout=5).json()
                assert event["status"] == "delivered", event
                assert sorted(d["handler"] for d in event["deliveries"]) == ["a", "b"]
                assert all(d["status"] == "succeeded" for d in event["deliveries"]), event
                lost_attempts += sum(a["outcome"] == "lost"
                                     for d in event["deliveries"] for a in d["attempt_log"])
            assert lost_attempts >= 1  # in-flight deliveries of the killed server ran again

        # Every delivery of every stored event reached the sink after the restart and was
        # answered there at least once.
        with sink.lock:
            answered = set(sink.answered)
        assert {(f"/{h}", event_id) for event_id in stored.values() for h in "ab"} <= answered
        assert {event_id for _, event_id in answered} == set(stored.values())
