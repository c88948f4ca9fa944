"""PostgreSQL only: what the contract suite cannot see. Statements that run per batch reach
their rows by a selective key whatever the statistics, the maintenance sweep keeps statistics
fresh, and the LISTEN connection comes back after the server drops it."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.ids import new_id
from app.store.base import Finished
from app.store.postgres import PostgresStore
from schemas.records import NewEvent

asyncpg = pytest.importorskip("asyncpg")
pytestmark = pytest.mark.postgres
POSTGRES_URL = os.environ.get("HOOKLINE_TEST_POSTGRES_URL", "")
T0 = 1_790_000_000.0


@pytest.fixture
async def url() -> AsyncIterator[str]:
    if not POSTGRES_URL:
        pytest.skip("HOOKLINE_TEST_POSTGRES_URL is not set")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    await admin.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


@pytest.fixture
async def store(url: str) -> AsyncIterator[PostgresStore]:
    backend = PostgresStore(url)
    await backend.open()
    yield backend
    await backend.close()


def events(first: int, count: int, handlers: tuple[str, ...] = ("h",)) -> list[NewEvent]:
    return [NewEvent(id=new_id("evt", T0 + n), source="s", type="a.job.done",
                     dedupe_key=f"k{n}", received_at=T0 + n, occurred_at=None, body=b"{}",
                     payload={}, headers={}, handlers=handlers)
            for n in range(first, first + count)]


async def seed(url: str, batch: list[NewEvent]) -> None:
    """Insert through a connection of its own, whose counts reach the statistics views at once."""
    from app.store.postgres import _SAVE_BATCH, _batch_json

    conn = await asyncpg.connect(url)
    try:
        await conn.fetch(_SAVE_BATCH, _batch_json(batch))
        await conn.execute("SELECT pg_stat_force_next_flush()")
    finally:
        await conn.close()


async def test_the_sweep_analyses_tables_that_grew_and_only_those(
    store: PostgresStore, url: str
) -> None:
    from app.clock import SystemClock
    from app.scheduler import Maintenance

    await seed(url, events(0, 1500))
    sweep = Maintenance(store, SystemClock(), None, 30)
    async with asyncio.timeout(10):  # the seeding backend's counts land as it exits
        while not (analysed := await sweep.statistics()):
            await asyncio.sleep(0.05)
    assert analysed == 2
    async with store._conn() as conn:
        tables = await conn.fetch(
            "SELECT relname, reltuples FROM pg_class WHERE relnamespace = "
            "current_schema()::regnamespace AND relname = ANY($1::text[]) ORDER BY relname",
            ["deliveries", "events"])
    assert [(r["relname"], r["reltuples"]) for r in tables] == [
        ("deliveries", 1500), ("events", 1500)]
    assert await store.refresh_statistics() == []  # nothing changed since
    await seed(url, events(2000, 100))  # under a fifth of the rows: not worth a new sample
    assert await store.refresh_statistics() == []


async def test_without_autovacuum_the_sweep_vacuums_tables_with_many_dead_rows(
    store: PostgresStore, url: str
) -> None:
    async with store._conn() as conn:
        if await conn.fetchval("SHOW autovacuum") != "off":
            pytest.skip("this server vacuums its tables itself")
    await seed(url, events(0, 1500))
    async with asyncio.timeout(10):
        while not await store.refresh_statistics():
            await asyncio.sleep(0.05)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE deliveries SET updated_at = updated_at + 1")
        await conn.execute("SELECT pg_stat_force_next_flush()")
    finally:
        await conn.close()
    async with asyncio.timeout(10):
        while not (done := await store.refresh_statistics()):
            await asyncio.sleep(0.05)
    assert done == ["deliveries"]
    async with store._conn() as conn:
        vacuumed = await conn.fetch("SELECT relname FROM pg_stat_user_tables WHERE schemaname = "
                                    "current_schema() AND last_vacuum IS NOT NULL")
    assert [row["relname"] for row in vacuumed] == ["deliveries"]


def _plan_rows(plan: dict[str, Any]) -> int:
    """Rows that every node of an executed plan handled, loops counted."""
    own = int(plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1))
    return own + sum(_plan_rows(child) for child in plan.get("Plans", []))


async def _rows_read(url: str, sql: str, *args: Any) -> int:
    """Run `sql` once with a generic plan and no statistics (as a server without autovacuum
    has), rolled back; the rows its plan went through."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        transaction = conn.transaction()
        await transaction.start()
        explained = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
        await transaction.rollback()
        return _plan_rows(json.loads(explained)[0]["Plan"])
    finally:
        await conn.close()


async def test_the_status_refresh_reads_the_touched_events_rows_only(
    store: PostgresStore, url: str
) -> None:
    from app.store.postgres import _REFRESH_STATUS

    costs = []
    for backlog in (500, 5000):
        await seed(url, events(backlog * 10, backlog, ("a", "b")))
        claims = await store.claim_due("w", T0 + backlog * 10 + 1, 30, 8)
        assert await store.finish([Finished(c.delivery_id, "w", 1, T0, "succeeded", "succeeded")
                                   for c in claims[:4]]) == [True] * 4
        costs.append(await _rows_read(url, _REFRESH_STATUS, [c.delivery_id for c in claims]))
    # The same eight deliveries' events at either backlog: the cost does not follow it.
    assert costs[1] <= costs[0] * 1.5 + 20, costs


async def test_notifications_resume_after_the_listening_backend_is_terminated(
    store: PostgresStore, url: str
) -> None:
    calls: list[int] = []
    woken = asyncio.Event()

    def wake() -> None:
        calls.append(1)
        woken.set()

    async def until(condition: Any) -> None:
        async with asyncio.timeout(10):
            while not condition():
                await asyncio.sleep(0.02)

    # The channel is the database's: other stores on it may wake this one too, so the test
    # counts at least, never exactly.
    await store.listen(wake)
    await seed(url, events(0, 1))
    await until(lambda: calls)
    assert store._listener is not None
    dropped = store._listener.get_server_pid()
    admin = await asyncpg.connect(url)
    try:
        before = len(calls)
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", dropped)
        # Back on a new backend, with a wake-up for whatever came meanwhile.
        await until(lambda: store._listener is not None
                    and store._listener.get_server_pid() != dropped and len(calls) > before)
        woken.clear()
        await seed(url, events(1, 1))
        async with asyncio.timeout(10):
            await woken.wait()
    finally:
        await admin.close()
    await store.close()
    assert store._listener is None and store._relisten is None


async def test_an_insert_does_not_wait_for_another_still_open(
    store: PostgresStore, url: str
) -> None:
    """Receivers do not queue behind each other's commits; the tail still holds the later
    insert back until the earlier one commits."""
    from app.store.base import EventFilter
    from app.store.postgres import _SAVE_BATCH, _batch_json

    head, _ = await store.heads()
    conn = await asyncpg.connect(url)
    try:
        open_insert = conn.transaction()
        await open_insert.start()
        await conn.fetch(_SAVE_BATCH, _batch_json(events(0, 1)))
        async with asyncio.timeout(5):
            saved = await store.save_events(events(1, 3))
        assert [s.duplicate for s in saved] == [False] * 3  # type: ignore[union-attr]
        assert await store.tail_events(EventFilter(), head, 10) == []
        assert (await store.heads())[0] == head
        await open_insert.commit()
    finally:
        await conn.close()
    assert len(await store.tail_events(EventFilter(), head, 10)) == 4


async def _store_rows_read(store: PostgresStore, sql: str, *args: Any) -> int:
    """`_rows_read` on one of the store's own connections (its settings), rolled back."""
    async with store._conn() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        explained = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
        await transaction.rollback()
    return _plan_rows(json.loads(explained)[0]["Plan"])


async def _batch_costs(store: PostgresStore, url: str, first: int, backlog: int) -> dict[str, int]:
    """Rows read by each statement a batch runs, over a backlog of `backlog` due deliveries
    (a tenth of them already done), with no statistics and generic plans."""
    from app.store import postgres as pg

    await seed(url, events(first, backlog))
    now = T0 + first + backlog
    for _ in range(backlog // 640):
        done = await store.claim_due("w", now, 30, 64)
        await store.finish([Finished(c.delivery_id, "w", 1, now, "succeeded", "succeeded")
                            for c in done])
    claims = await store.claim_due("w", now, 30, 64)
    ids = [c.delivery_id for c in claims]
    n = len(ids)
    events_below, outcomes_below = await store.heads()
    claim = [now, 64, "w2", now + 30]
    return {
        "save": await _store_rows_read(store, pg._SAVE_BATCH,
                                       pg._batch_json(events(10**6 + first, 64))),
        "claim": await _store_rows_read(store, pg._CLAIM_ANY, *claim),
        "claim per handler": await _store_rows_read(store, pg._CLAIM_PER_HANDLER, *claim,
                                                    ["h"], [64]),
        "finish": await _store_rows_read(
            store, pg._FINISH_BATCH, ids, ["w"] * n, [1] * n, [now] * n, ["succeeded"] * n,
            ["succeeded"] * n, [None] * n, [None] * n, [None] * n),
        "refresh": await _store_rows_read(store, pg._REFRESH_STATUS, ids),
        "tail events": await _store_rows_read(
            store, "SELECT seq FROM events WHERE seq > $1 AND seq < $2 ORDER BY seq LIMIT 500",
            events_below - 1, events_below + 1),
        "tail outcomes": await _store_rows_read(
            store, "SELECT a.done_seq FROM attempts a JOIN deliveries d ON d.id = a.delivery_id "
            "JOIN events e ON e.id = d.event_id WHERE a.done_seq > $1 AND a.done_seq < $2 "
            "ORDER BY a.done_seq LIMIT 500", outcomes_below - 1, outcomes_below + 1),
    }


async def test_no_batch_statement_reads_more_as_the_backlog_grows(
    store: PostgresStore, url: str
) -> None:
    small = await _batch_costs(store, url, 0, 640)
    large = await _batch_costs(store, url, 100_000, 6400)
    for name, rows in large.items():
        assert rows <= small[name] * 1.5 + 50, (name, small[name], rows)
