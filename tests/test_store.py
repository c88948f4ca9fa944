"""The store contract: the same tests for every backend (SQLite always, PostgreSQL when
HOOKLINE_TEST_POSTGRES_URL names a server)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from app.ids import new_id
from app.store import DeadFilter, DeadLetter, EventFilter, Store, StoreError, store_from_url
from app.store.rejections import NewRejection, RejectionFilter
from schemas.records import NewEvent, Saved

T0 = 1_790_000_000.0


def event(n: int, key: str | None = None, source: str = "s", type_: str = "a.job.done",
          handlers: tuple[str, ...] = (), job_id: str | None = None) -> NewEvent:
    return NewEvent(
        id=new_id("evt", T0 + n), source=source, type=type_,
        dedupe_key=key if key is not None else f"k{n}", received_at=T0 + n, occurred_at=None,
        body=b'{"n": %d}' % n, payload={"n": n}, headers={"x": "y"}, job_id=job_id,
        handlers=handlers,
    )


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    backend = store_from_url(store_url)
    await backend.open()
    yield backend
    await backend.close()


async def test_save_and_read_back(store: Store) -> None:
    [saved] = await store.save_events([event(1, job_id="j1", handlers=("log", "ops"))])
    assert saved == Saved(saved.id, duplicate=False)
    record = await store.get_event(saved.id)
    assert record is not None
    assert record.payload == {"n": 1}
    assert record.job_id == "j1"
    assert record.status == "pending"
    assert [d.handler for d in record.deliveries] == ["log", "ops"]
    assert all(d.status == "pending" and d.attempts == 0 for d in record.deliveries)


async def test_event_without_routes_is_unrouted_and_has_no_deliveries(store: Store) -> None:
    [saved] = await store.save_events([event(1)])
    record = await store.get_event(saved.id)
    assert record is not None and record.status == "unrouted" and record.deliveries == []


async def test_duplicates_within_and_across_batches(store: Store) -> None:
    first, second = await store.save_events([event(1, "same", handlers=("log",)),
                                             event(2, "same", handlers=("log",))])
    assert not first.duplicate and isinstance(second, Saved) and second.duplicate
    assert second.id == first.id
    [third] = await store.save_events([event(3, "same")])
    assert isinstance(third, Saved) and third.duplicate and third.id == first.id
    record = await store.get_event(first.id)
    assert record is not None and len(record.deliveries) == 1


async def test_null_dedupe_keys_never_collide(store: Store) -> None:
    a, b = event(1), event(2)
    a.dedupe_key = b.dedupe_key = None
    results = await store.save_events([a, b])
    assert all(isinstance(r, Saved) and not r.duplicate for r in results)


async def test_one_bad_row_does_not_undo_the_others(store: Store) -> None:
    bad = event(2)
    bad.type = ""  # violates the CHECK constraint
    results = await store.save_events([event(1), bad, event(3)])
    assert isinstance(results[0], Saved) and isinstance(results[2], Saved)
    assert isinstance(results[1], StoreError)
    page = await store.list_events(EventFilter(), 10)
    assert {item.id for item in page.items} == {results[0].id, results[2].id}


async def test_list_filters_and_cursor(store: Store) -> None:
    await store.save_events([
        event(n, source="a" if n % 2 else "b", type_="alfred.job.failed" if n % 3 else "x.file.done",
              job_id=f"j{n % 4}")
        for n in range(1, 21)
    ])
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_events(EventFilter(), 6, cursor)
        seen += [item.id for item in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == 20 == len(set(seen))
    received = [int((await store.get_event(i)).received_at - T0) for i in seen[:3]]  # type: ignore[union-attr]
    assert received == [20, 19, 18]

    def count(page: object) -> int:
        return len(page.items)  # type: ignore[attr-defined]

    assert count(await store.list_events(EventFilter(source="a"), 50)) == 10
    assert count(await store.list_events(EventFilter(type="alfred.*"), 50)) == 14
    assert count(await store.list_events(EventFilter(type="*.done"), 50)) == 6
    assert count(await store.list_events(EventFilter(job_id="j1"), 50)) == 5
    assert count(await store.list_events(EventFilter(since=T0 + 5, until=T0 + 10), 50)) == 5
    with pytest.raises(ValueError):
        await store.list_events(EventFilter(), 5, "garbage!")


async def test_migrations_are_recorded_and_idempotent(store: Store, store_url: str) -> None:
    assert await store.migrate() == []
    again = store_from_url(store_url)
    await again.open()
    assert await again.migrate() == []
    await again.close()


async def test_closed_store_raises_store_error(store: Store) -> None:
    await store.close()
    with pytest.raises(StoreError):
        await store.ping()


async def test_claims_leases_and_outcomes(store: Store) -> None:
    from app.store.base import Finished

    [saved] = await store.save_events([event(1, handlers=("a", "b"))])
    assert await store.next_due_at() == T0 + 1
    first = await store.claim_due("w1", T0 + 10, 30, 1)
    second = await store.claim_due("w2", T0 + 10, 30, 10)
    assert len(first) == 1 and len(second) == 1
    assert {first[0].handler, second[0].handler} == {"a", "b"}
    assert first[0].event.payload == {"n": 1} and first[0].event.body == b'{"n": 1}'
    assert await store.claim_due("w3", T0 + 10, 30, 10) == []

    done = Finished(first[0].delivery_id, "w1", 1, T0 + 11, "succeeded", "succeeded")
    assert await store.finish([done]) == [True]
    assert await store.finish([done]) == [False]  # no longer leased
    assert await store.release("w2", [second[0].delivery_id], T0 + 12) == 1
    record = await store.get_event(saved.id)
    assert record is not None
    by_handler = {d.handler: d for d in record.deliveries}
    assert by_handler[first[0].handler].status == "succeeded"
    assert by_handler[second[0].handler].status == "pending"
    assert by_handler[second[0].handler].attempts == 0
    assert record.status == "pending"

    again = await store.claim_due("w3", T0 + 13, 30, 10)
    assert [c.delivery_id for c in again] == [second[0].delivery_id]
    assert await store.reap_expired(T0 + 100) == 1
    dead = Finished(again[0].delivery_id, "w3", 1, T0 + 101, "permanent", "dead", error="no")
    assert await store.finish([dead]) == [False]  # the lease was reaped
    [retaken] = await store.claim_due("w4", T0 + 101, 30, 10)
    assert retaken.attempt == 2
    dead = Finished(retaken.delivery_id, "w4", 2, T0 + 102, "permanent", "dead", error="no")
    assert await store.finish([dead]) == [True]
    record = await store.get_event(saved.id)
    assert record is not None and record.status == "failed"
    page = await store.list_deliveries("dead", None, 10)
    assert [d.id for d in page.items] == [retaken.delivery_id]
    assert page.items[0].event_type == "a.job.done"
    # The reaped worker's late outcome is kept on its attempt; only the state was refused.
    [attempts] = [d.attempt_log for d in record.deliveries if d.status == "dead"]
    assert [a.outcome for a in attempts] == ["permanent", "permanent"]

    [fresh] = await store.add_deliveries(saved.id, ["b"], T0 + 200)
    assert (await store.get_event(saved.id)).status == "pending"  # type: ignore[union-attr]
    assert fresh.startswith("dlv_")


async def test_budgets_marks_and_polls(store: Store) -> None:
    assert [await store.take_budget("k", 2, T0) for _ in range(3)] == [1, 2, None]
    await store.refund_budget("k", T0)
    assert await store.budget_used(["k", "other"]) == {"k": 1}
    assert await store.mark_once("m", T0) and not await store.mark_once("m", T0)
    poll_id = await store.add_poll("h", "x.reading", "x:file:1", {"file_id": "1"}, None,
                                   T0 + 60, T0 + 600, T0)
    assert await store.claim_polls("w", T0 + 59, 30, 10) == []
    [claim] = await store.claim_polls("w", T0 + 60, 30, 10)
    assert (claim.id, claim.data, claim.attempts) == (poll_id, {"file_id": "1"}, 1)
    assert await store.claim_polls("w2", T0 + 61, 30, 10) == []
    assert await store.finish_poll(poll_id, "w", T0 + 120, None, T0 + 61)
    [claim] = await store.claim_polls("w2", T0 + 120, 30, 10)
    assert claim.attempts == 2
    assert await store.finish_poll(poll_id, "w2", None, "success", T0 + 121)
    assert await store.claim_polls("w2", T0 + 10_000, 30, 10) == []


async def test_open_polls(store: Store) -> None:
    assert await store.open_polls([]) == set()
    first = await store.add_poll("h", "x.reading", "x:file:1", {}, None, T0, T0 + 600, T0)
    await store.add_poll("h", "x.reading", "x:file:2", {}, None, T0 + 50, T0 + 600, T0)
    assert await store.open_polls(["x:file:1", "x:file:2", "x:file:3"]) == {"x:file:1",
                                                                          "x:file:2"}
    [claim] = await store.claim_polls("w", T0, 30, 10)
    assert claim.id == first and await store.open_polls(["x:file:1"]) == {"x:file:1"}
    assert await store.finish_poll(first, "w", None, "success", T0 + 1)
    assert await store.open_polls(["x:file:1", "x:file:2"]) == {"x:file:2"}


async def test_entity_queries(store: Store) -> None:
    await store.save_events([event(1, job_id="j1"), event(2, job_id="j1"), event(3, job_id="j2")])
    assert [e.received_at for e in await store.events_of("job", "j1")] == [T0 + 1, T0 + 2]
    latest = await store.latest_events("job", T0, T0 + 2.5)
    assert [(item.entity_id, item.received_at) for item in latest] == [("j1", T0 + 2)]


async def test_prune(store: Store) -> None:
    await store.save_events([event(1, handlers=("a",)), event(50)])
    assert await store.prune(T0 + 10) == 1
    page = await store.list_events(EventFilter(), 10)
    assert [item.received_at for item in page.items] == [T0 + 50]
    assert (await store.list_deliveries(None, None, 10)).items == []


async def test_singleton_jobs_run_in_one_process(store: Store, store_url: str) -> None:
    other = store_from_url(store_url)
    await other.open()
    try:
        async with store.exclusive("hookline:prune") as mine:
            async with other.exclusive("hookline:prune") as theirs:
                shared_store = store_url.startswith("sqlite")
                assert mine is True
                assert theirs is shared_store  # one process per SQLite file; PG locks
        async with other.exclusive("hookline:prune") as after:
            assert after is True  # released with the block
    finally:
        await other.close()


def _backend_module(store: Store) -> object:
    import sys

    return sys.modules[type(store).__module__]


async def test_q_searches_raw_bodies_within_a_bounded_scan(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [event(n) for n in range(1, 13)]
    for e in events:
        e.body = b'{"note": "%s"}' % (b"needle here" if e.received_at - T0 in (2, 11) else b"hay")
    await store.save_events(events)
    found = await store.list_events(EventFilter(q="needle"), 50)
    assert [int(i.received_at - T0) for i in found.items] == [11, 2]
    assert found.next_cursor is None
    assert (await store.list_events(EventFilter(q="NEEDLE"), 50)).items == []
    assert len((await store.list_events(EventFilter(q='"note"', source="s"), 50)).items) == 12

    # Each page reads at most Q_SCAN_ROWS rows; the cursor carries the search on below them.
    monkeypatch.setattr(_backend_module(store), "Q_SCAN_ROWS", 5)
    first = await store.list_events(EventFilter(q="needle"), 50)
    assert [int(i.received_at - T0) for i in first.items] == [11]
    assert first.next_cursor is not None
    second = await store.list_events(EventFilter(q="needle"), 50, first.next_cursor)
    assert second.items == [] and second.next_cursor is not None  # rows 3..7: no match
    third = await store.list_events(EventFilter(q="needle"), 50, second.next_cursor)
    assert [int(i.received_at - T0) for i in third.items] == [2]
    assert third.next_cursor is None


async def test_raw_body_is_the_bytes_received(store: Store) -> None:
    e = event(1)
    e.body = b'\xef\xbb\xbf{"a" :  1, "text": "caf\xc3\xa9"}'
    e.headers = {"content-type": "application/cloudevents+json"}
    [saved] = await store.save_events([e])
    assert await store.raw_body(saved.id) == (e.body, "application/cloudevents+json")
    assert await store.raw_body("evt_missing") is None


async def test_pages_under_concurrent_inserts_skip_and_repeat_nothing(store: Store) -> None:
    await store.save_events([event(n) for n in range(1, 31)])
    before = {i.id for i in (await store.list_events(EventFilter(), 500)).items}
    paging_done = asyncio.Event()
    written = 0

    async def writer() -> None:
        nonlocal written
        n = 1000
        while not paging_done.is_set():
            await store.save_events([event(n), event(n + 1)])
            written += 2
            n += 2
            await asyncio.sleep(0)

    async def pager() -> list[str]:
        seen: list[str] = []
        cursor = None
        try:
            while True:
                page = await store.list_events(EventFilter(), 7, cursor)
                seen += [item.id for item in page.items]
                cursor = page.next_cursor
                if cursor is None:
                    return seen
                while written < 2 * (len(seen) // 7):  # newer events land between pages
                    await asyncio.sleep(0)
        finally:
            paging_done.set()

    seen, _ = await asyncio.gather(pager(), writer())
    assert written >= 8
    # Newer events belong before the first page: the pages hold exactly what was there.
    assert len(seen) == len(set(seen)) == 30
    assert set(seen) == before


async def test_tail_follows_events_and_finished_attempts(store: Store) -> None:
    from app.store.base import Finished

    assert await store.heads() == (0, 0)
    await store.save_events([event(1, type_="a.job.done", handlers=("h",)),
                             event(2, type_="b.file.done", handlers=("h",))])
    heads = await store.heads()
    assert heads[0] > 0 and heads[1] == 0
    tailed = await store.tail_events(EventFilter(), 0, 10)
    assert [r.type for _, r in tailed] == ["a.job.done", "b.file.done"]
    assert [r.type for _, r in await store.tail_events(EventFilter(type="b.*"), 0, 10)] == [
        "b.file.done"]
    assert await store.tail_events(EventFilter(), heads[0], 10) == []

    claims = await store.claim_due("w", T0 + 5, 30, 10)
    by_type = {c.event.type: c for c in claims}
    await store.finish([Finished(by_type["b.file.done"].delivery_id, "w", 1, T0 + 6,
                                 "transient", "pending", T0 + 60, "boom")])
    await store.finish([Finished(by_type["a.job.done"].delivery_id, "w", 1, T0 + 7,
                                 "succeeded", "succeeded")])
    outcomes = await store.tail_outcomes(EventFilter(), 0, 10)
    assert [(o.event_type, o.outcome, o.status, o.error) for _, o in outcomes] == [
        ("b.file.done", "transient", "pending", "boom"),
        ("a.job.done", "succeeded", "succeeded", None),
    ]
    first_position = outcomes[0][0]
    assert [o.event_type for _, o in await store.tail_outcomes(EventFilter(), first_position, 10)
            ] == ["a.job.done"]
    assert [o.outcome for _, o in await store.tail_outcomes(EventFilter(type="b.*"), 0, 10)] == [
        "transient"]
    assert (await store.heads())[1] == outcomes[-1][0]


@contextlib.asynccontextmanager
async def insert_left_open(store_url: str, new: NewEvent) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """`new` inserted, with its position taken, by a transaction of another connection that
    stays open until the returned commit is awaited: a write that began first and ends last."""
    if store_url.startswith("sqlite"):
        import aiosqlite

        from app.store.sqlite import _INSERT_EVENTS_JSON, _events_json

        lite = await aiosqlite.connect(store_url.removeprefix("sqlite:///"))
        await lite.execute("BEGIN IMMEDIATE")
        await lite.execute_fetchall(_INSERT_EVENTS_JSON, (_events_json([new]),))
        try:
            yield lite.commit
        finally:
            await lite.close()
        return
    import asyncpg

    from app.store.postgres import _SAVE_BATCH, _batch_json

    conn = await asyncpg.connect(store_url)
    transaction = conn.transaction()
    await transaction.start()
    await conn.fetch(_SAVE_BATCH, _batch_json([new]))
    try:
        yield transaction.commit
    finally:
        await conn.close()


async def test_a_tail_never_sees_a_position_appear_below_one_it_has_read(
    store: Store, store_url: str
) -> None:
    head, _ = await store.heads()
    late = event(1, type_="late")
    batch = [event(n, type_="batch") for n in range(2, 402)]  # far more than any look-back
    async with insert_left_open(store_url, late) as commit:
        writer = asyncio.create_task(store.save_events(batch))
        # The batch is written meanwhile, or waits for the open write to end (positions in
        # commit order); either way, read the tail as it is now.
        await asyncio.wait({writer}, timeout=1.0)
        seen = await store.tail_events(EventFilter(), head, 1000)
        await commit()
        await writer
    after = seen[-1][0] if seen else head
    seen += await store.tail_events(EventFilter(), after, 1000)
    assert sorted(r.id for _, r in seen) == sorted(e.id for e in [late, *batch])


async def test_claiming_an_expired_lease_closes_the_open_attempt_as_lost(store: Store) -> None:
    [saved] = await store.save_events([event(1, handlers=("h",))])
    [first] = await store.claim_due("w1", T0 + 5, 30, 10)
    assert await store.claim_due("w2", T0 + 20, 30, 10) == []  # still leased
    [second] = await store.claim_due("w2", T0 + 40, 30, 10)
    assert (second.delivery_id, first.attempt, second.attempt) == (first.delivery_id, 1, 2)
    record = await store.get_event(saved.id)
    assert record is not None
    [delivery] = record.deliveries
    assert (delivery.status, delivery.attempts) == ("running", 2)
    assert [(a.number, a.outcome, a.started_at, a.ended_at) for a in delivery.attempt_log] == [
        (1, "lost", T0 + 5, T0 + 40), (2, "running", T0 + 40, None)]


async def test_two_attempts_of_one_delivery_in_one_batch_hold_only_the_current(
    store: Store,
) -> None:
    from app.store.base import Finished

    await store.save_events([event(1, handlers=("h",))])
    [first] = await store.claim_due("w", T0 + 5, 30, 10)
    [second] = await store.claim_due("w", T0 + 40, 30, 10)  # the first lease ran out
    assert (first.attempt, second.attempt) == (1, 2)
    assert await store.finish([
        Finished(first.delivery_id, "w", 1, T0 + 41, "transient", "pending", T0 + 60, "late"),
        Finished(second.delivery_id, "w", 2, T0 + 42, "succeeded", "succeeded"),
    ]) == [False, True]


async def test_a_finished_batch_is_recorded_and_held_only_where_leased(
    store: Store,
) -> None:
    from app.store.base import Finished

    await store.save_events([event(n, type_=f"t.{n}", handlers=("h",)) for n in (1, 2, 3)])
    claims = {c.event.type: c for c in await store.claim_due("w", T0 + 5, 30, 10)}
    batch = [
        Finished(claims["t.3"].delivery_id, "w", 1, T0 + 6, "succeeded", "succeeded"),
        Finished(claims["t.2"].delivery_id, "other", 1, T0 + 7, "transient", "pending",
                 T0 + 60, "late"),
        Finished(claims["t.1"].delivery_id, "w", 1, T0 + 8, "permanent", "dead", None, "no",
                 http_status=422),
    ]
    assert await store.finish(batch) == [True, False, True]
    outcomes = await store.tail_outcomes(EventFilter(), 0, 20)
    assert sorted((o.event_type, o.outcome, o.error) for _, o in outcomes) == [
        ("t.1", "permanent", "no"), ("t.2", "transient", "late"), ("t.3", "succeeded", None)]
    assert len({p for p, _ in outcomes}) == 3  # each outcome has a position of its own

    assert await store.finish([Finished(claims["t.2"].delivery_id, "w", 1, T0 + 9, "succeeded",
                                        "succeeded")]) == [True]
    # An attempt recorded again moves past every position recorded before.
    assert [o.event_type for _, o in await store.tail_outcomes(EventFilter(), 0, 20)][-1] == "t.2"
    records = {r.type: await store.get_event(r.id)
               for r in (await store.list_events(EventFilter(), 10)).items}
    dead = records["t.1"]
    assert dead is not None and dead.status == "failed"
    assert [(d.status, d.last_error) for d in dead.deliveries] == [("dead", "no")]
    assert dead.deliveries[0].attempt_log[0].http_status == 422
    assert all(r is not None and r.status == "delivered" for t, r in records.items() if t != "t.1")


async def test_stats_rows_and_gauges(store: Store) -> None:
    from app.store.base import Finished, IngestCount

    minute = int(T0 // 60)
    await store.save_events([
        event(1, type_="a.job.done", source="x", handlers=("h",)),
        event(2, type_="a.job.done", source="y"),
        event(3, type_="b.file.done", source="x", handlers=("h",)),
        event(-7200, type_="old.one", source="x"),
    ])
    claims = {c.event.type: c for c in await store.claim_due("w", T0 + 10, 30, 10)}
    await store.finish([
        Finished(claims["a.job.done"].delivery_id, "w", 1, T0 + 11, "timeout", "dead", error="slow"),
        Finished(claims["b.file.done"].delivery_id, "w", 1, T0 + 12, "succeeded", "succeeded"),
    ])
    await store.add_ingest_counts([IngestCount(minute, "x", "duplicate", "", 2),
                                   IngestCount(minute, "x", "rejected", "unauthorized", 1)])
    await store.add_ingest_counts([IngestCount(minute, "x", "duplicate", "", 3)])
    rows = await store.stats(T0 - 3600, T0 + 60, minute - 59)
    # The event from two hours ago is outside the window.
    assert sorted(rows.events) == [("a.job.done", "failed", "x", 1),
                                   ("a.job.done", "unrouted", "y", 1),
                                   ("b.file.done", "delivered", "x", 1)]
    assert rows.accepted_per_minute == {minute: 3}
    assert sorted((c.outcome, c.reason, c.count) for c in rows.counts) == [
        ("duplicate", "", 5), ("rejected", "unauthorized", 1)]
    assert sorted(rows.attempts) == [("h", "succeeded", 1), ("h", "timeout", 1)]
    assert rows.failed_per_minute == {minute: 1}
    assert rows.dead == 1
    gauges = await store.gauges()
    assert (gauges.pending, gauges.running, gauges.dead) == (0, 0, 1)


async def _kill_all(store: Store, at: float) -> list[str]:
    """Claim every due delivery and let each attempt fail for good; their ids."""
    from app.store.base import Finished

    claims = await store.claim_due("w", at, 30, 100)
    await store.finish([Finished(c.delivery_id, "w", c.attempt, at + 1, "permanent", "dead",
                                 error="no") for c in claims])
    return [c.delivery_id for c in claims]


async def test_retry_puts_the_same_dead_delivery_back_with_its_history(store: Store) -> None:
    [saved] = await store.save_events([event(1, handlers=("h",))])
    [dead_id] = await _kill_all(store, T0 + 5)
    [letter] = await store.dead_letters(DeadFilter(), 0, 10)
    assert (letter.id, letter.event_id, letter.handler, letter.event_type) == (
        dead_id, saved.id, "h", "a.job.done")

    assert await store.retry_dead([dead_id, "dlv_unknown"], T0 + 50) == [dead_id]
    assert await store.retry_dead([dead_id], T0 + 51) == []  # pending now: not retried twice
    delivery = await store.get_delivery(dead_id)
    assert delivery is not None and delivery.event_type == "a.job.done"
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("pending", 1, T0 + 50)
    assert [a.outcome for a in delivery.attempt_log] == ["permanent"]
    assert (await store.get_event(saved.id)).status == "pending"  # type: ignore[union-attr]
    assert await store.dead_letters(DeadFilter(), 0, 10) == []
    assert (await store.gauges()).dead == 0

    # Claimed again it counts on from its attempts, and dying again it is one dead letter.
    [claim] = await store.claim_due("w", T0 + 50, 30, 10)
    assert (claim.delivery_id, claim.attempt) == (dead_id, 2)
    from app.store.base import Finished

    await store.finish([Finished(dead_id, "w", 2, T0 + 52, "permanent", "dead", error="again")])
    assert [d.id for d in await store.dead_letters(DeadFilter(), 0, 10)] == [dead_id]
    again = await store.get_delivery(dead_id)
    assert again is not None and [a.number for a in again.attempt_log] == [1, 2]
    assert await store.get_delivery("dlv_unknown") is None


async def test_dead_letters_are_open_ones_filtered_and_paged_once_each(store: Store) -> None:
    a, b, c = await store.save_events([
        event(1, source="s", type_="a.job.failed", handlers=("h1", "h2")),
        event(2, source="s", type_="a.file.failed", handlers=("h1",)),
        event(3, source="t", type_="a.job.failed", handlers=("h1",)),
    ])
    await _kill_all(store, T0 + 10)
    every = await store.dead_letters(DeadFilter(), 0, 10)
    assert len(every) == 4 and [x.seq for x in every] == sorted(x.seq for x in every)

    # A replay of event a for h1 supersedes that dead letter (even before it runs).
    await store.add_deliveries(a.id, ["h1"], T0 + 20)
    open_ = {(x.event_id, x.handler) for x in await store.dead_letters(DeadFilter(), 0, 10)}
    assert open_ == {(a.id, "h2"), (b.id, "h1"), (c.id, "h1")}

    def pairs(letters: list[DeadLetter]) -> set[tuple[str, str]]:
        return {(x.event_id, x.handler) for x in letters}

    assert pairs(await store.dead_letters(DeadFilter(handler="h1"), 0, 10)) == {
        (b.id, "h1"), (c.id, "h1")}
    assert pairs(await store.dead_letters(DeadFilter(source="t"), 0, 10)) == {(c.id, "h1")}
    assert pairs(await store.dead_letters(DeadFilter(type="a.job.*"), 0, 10)) == {
        (a.id, "h2"), (c.id, "h1")}
    assert pairs(await store.dead_letters(DeadFilter(since=T0 + 2, until=T0 + 3), 0, 10)) == {
        (b.id, "h1")}

    first = await store.dead_letters(DeadFilter(), 0, 2)
    rest = await store.dead_letters(DeadFilter(), first[-1].seq, 2)
    assert len(first) == 2 and len(rest) == 1
    assert pairs(first) | pairs(rest) == open_


async def test_handler_rows_backlog_and_attempt_times(store: Store) -> None:
    from app.store.base import Finished

    await store.save_events([event(1, handlers=("h", "g")), event(2, handlers=("h",)),
                             event(3, handlers=("h",))])
    claims = {(c.handler, c.event.payload["n"]): c for c in await store.claim_due("w", T0 + 5, 30, 2)}
    finished = [Finished(c.delivery_id, "w", 1, T0 + 5 + 0.25 * (i + 1), outcome, status,
                         error=None if outcome == "succeeded" else "no")
                for i, (c, (outcome, status)) in enumerate(zip(
                    claims.values(), [("succeeded", "succeeded"), ("permanent", "dead")],
                    strict=True))]
    await store.finish(finished)
    rows = await store.handler_rows(T0, T0 + 60)
    by_key = {(h, s): (n, oldest) for h, s, n, oldest in rows.backlog}
    waiting = {(h, s): n for (h, s), (n, _) in by_key.items()}
    assert sum(n for (h, s), n in waiting.items() if s == "pending") == 2
    assert sum(n for (h, s), n in waiting.items() if s == "dead") == 1
    assert "succeeded" not in {s for _, s in waiting}
    oldest = {h: o for (h, s), (_, o) in by_key.items() if s == "pending"}
    assert all(T0 + 1 <= o <= T0 + 3 for o in oldest.values())
    assert sorted((o, ms, n) for _, o, ms, n in rows.attempts) == [
        ("permanent", 500, 1), ("succeeded", 250, 1)]
    assert (await store.handler_rows(T0 + 100, T0 + 200)).attempts == []


async def test_source_rows_counts_and_last_event(store: Store) -> None:
    from app.store.base import IngestCount

    await store.save_events([event(1, source="a"), event(2, source="a"), event(3, source="b")])
    minute = int((T0 + 2) // 60)
    await store.add_ingest_counts([IngestCount(minute, "a", "rejected", "unauthorized", 4),
                                   IngestCount(minute, "a", "duplicate", "", 1)])
    rows = await store.source_rows(["a", "b", "c"], T0, T0 + 60)
    assert rows.accepted == {"a": 2, "b": 1}
    assert sorted((c.source, c.outcome, c.count) for c in rows.counts) == [
        ("a", "duplicate", 1), ("a", "rejected", 4)]
    assert rows.last_received == {"a": T0 + 2, "b": T0 + 3}
    later = await store.source_rows(["a"], T0 + 3600, T0 + 7200)
    assert later.accepted == {} and later.counts == [] and later.last_received == {"a": T0 + 2}


async def test_alerts_add_up_per_subject_and_are_taken_once_per_quiet_period(
    store: Store,
) -> None:
    from app.store.base import AlertNote

    def note(subject: str, count: int, at: float, n: int = 0) -> AlertNote:
        return AlertNote(subject, "hookline.delivery.dead", count, at, {"n": n})

    await store.note_alerts([note("dead:ops", 600, T0, 1), note("dead:ops", 400, T0 + 2, 2),
                             note("dead:mail", 1, T0 + 1)])
    due = {d.subject: d for d in await store.take_alerts(T0 + 5, 300)}
    assert {s: (d.count, d.first_at, d.last_at, d.data) for s, d in due.items()} == {
        "dead:ops": (1000, T0, T0 + 2, {"n": 2}), "dead:mail": (1, T0 + 1, T0 + 1, {"n": 0})}
    assert await store.take_alerts(T0 + 6, 300) == []  # taken: nothing twice

    await store.note_alerts([note("dead:ops", 3, T0 + 10)])
    assert await store.take_alerts(T0 + 100, 300) == []  # quiet: counted, not taken
    await store.note_alerts([note("dead:ops", 2, T0 + 200)])
    [later] = await store.take_alerts(T0 + 305, 300)
    assert (later.subject, later.count, later.first_at, later.last_at) == (
        "dead:ops", 5, T0 + 10, T0 + 200)

    assert await store.alert_cursor("dead") is None
    await store.set_alert_cursor("dead", 7)
    await store.set_alert_cursor("dead", 9)
    assert await store.alert_cursor("dead") == 9


def _old_event_status(deliveries: list[tuple[int, str, str]]) -> str:
    """The event status the stores have always derived, over (order, handler, status): open
    while a delivery is pending or running; failed while a dead delivery has no later success
    of its handler; else delivered."""
    if any(status in ("pending", "running") for _, _, status in deliveries):
        return "pending"
    for order, handler, status in deliveries:
        if status == "dead" and not any(
                h == handler and s == "succeeded" and o > order for o, h, s in deliveries):
            return "failed"
    return "delivered"


async def test_event_status_follows_its_deliveries_in_random_histories(store: Store) -> None:
    """Random saves, claims, outcome batches, releases and fresh deliveries (replays) of a few
    events: after each step every event's status is the one its deliveries imply."""
    import random

    from app.store.base import Finished

    for seed in range(30):
        rand = random.Random(seed)
        names = [f"h{seed}_{i}" for i in range(3)]
        now = T0 + seed * 1000
        saved = await store.save_events([
            event(seed * 100 + n, handlers=tuple(rand.sample(names, rand.randint(1, 3))))
            for n in range(4)])
        order = 0
        model: dict[str, tuple[str, int, str, str]] = {}  # delivery: event, order, handler, status
        expected: dict[str, str] = {}
        for result in saved:
            assert isinstance(result, Saved)
            record = await store.get_event(result.id)
            assert record is not None
            expected[result.id] = "pending"
            for d in record.deliveries:
                model[d.id] = (result.id, order, d.handler, d.status)
                order += 1
        running: dict[str, int] = {}
        for _ in range(12):
            now += 1
            action = rand.random()
            if action < 0.55:
                wanted = {n: rand.randint(1, 3) for n in names}
                claims = await store.claim_due("w", now, 30, 5, wanted)
                for claim in claims:
                    event_id, o, handler, _ = model[claim.delivery_id]
                    model[claim.delivery_id] = (event_id, o, handler, "running")
                    running[claim.delivery_id] = claim.attempt
                done = rand.sample(sorted(running), rand.randint(0, len(running)))
                batch = []
                for delivery_id in done:
                    status = rand.choice(["succeeded", "dead", "pending"])
                    batch.append(Finished(delivery_id, "w", running.pop(delivery_id), now,
                                          "succeeded" if status == "succeeded" else "transient",
                                          status, now if status == "pending" else None))
                    event_id, o, handler, _ = model[delivery_id]
                    model[delivery_id] = (event_id, o, handler, status)
                if batch:
                    assert await store.finish(batch) == [True] * len(batch)
                    for event_id in {model[f.delivery_id][0] for f in batch}:
                        expected[event_id] = _old_event_status(
                            [(o, h, s) for e, o, h, s in model.values() if e == event_id])
            elif action < 0.7 and running:
                given_back = rand.sample(sorted(running), 1)
                assert await store.release("w", given_back, now) == 1
                for delivery_id in given_back:
                    del running[delivery_id]
                    event_id, o, handler, _ = model[delivery_id]
                    model[delivery_id] = (event_id, o, handler, "pending")
            else:
                event_id = rand.choice(sorted(expected))
                for delivery_id in await store.add_deliveries(
                        event_id, rand.sample(names, rand.randint(1, 2)), now):
                    record = await store.get_event(event_id)
                    assert record is not None
                    [added] = [d for d in record.deliveries if d.id == delivery_id]
                    model[delivery_id] = (event_id, order, added.handler, "pending")
                    order += 1
                expected[event_id] = "pending"
            for event_id, status in expected.items():
                record = await store.get_event(event_id)
                assert record is not None
                assert (seed, record.status) == (seed, status)


def rejection(n: int, source: str = "s", code: str = "unauthorized", at: float | None = None,
              **fields: object) -> NewRejection:
    fields = {"known": True, "status": 401 if code == "unauthorized" else 422, **fields}
    return NewRejection(
        id=new_id("rej", T0 + n), received_at=T0 + n if at is None else at, source=source,
        code=code, message=code.replace("_", " "), **fields,  # type: ignore[arg-type]
    )


async def test_rejections_are_written_listed_and_read_back(store: Store) -> None:
    details = [{"loc": ["data", "file_id"], "msg": "Field required"}]
    await store.add_rejections([
        rejection(1),
        rejection(2, code="schema_invalid", details=details, remote="10.0.0.7",
                  headers={"content-type": "application/json"}, body=b'{"data": {}}\xff',
                  body_bytes=70_000, truncated=True, dropped_before=4),
        rejection(3, source="nope" * 3, known=False, code="unknown_source"),
    ])
    await store.add_rejections([])
    page = await store.list_rejections(RejectionFilter(), 10)
    assert [r.code for r in page.items] == ["unknown_source", "schema_invalid", "unauthorized"]
    assert page.next_cursor is None
    listed = page.items[1]
    # A page carries no details, headers or bodies.
    assert (listed.details, listed.headers, listed.body) == (None, None, None)
    assert (listed.body_bytes, listed.truncated, listed.dropped_before) == (70_000, True, 4)
    assert page.items[0].known is False and page.items[0].source == "nopenopenope"

    one = await store.get_rejection(listed.id)
    assert one is not None
    assert one.details == details
    assert one.headers == {"content-type": "application/json"}
    assert one.body == '{"data": {}}\ufffd' and one.remote == "10.0.0.7"
    assert one.status == 422 and one.truncated is True
    assert await store.get_rejection("rej_missing") is None


async def test_rejection_filters_and_cursor(store: Store) -> None:
    # Two rows share a time: the cursor tells them apart by position.
    await store.add_rejections([
        rejection(1, source="a"), rejection(2, source="b", code="invalid_json"),
        rejection(3, source="a", code="invalid_json"), rejection(4, source="a", at=T0 + 3),
        rejection(5, source="a", at=T0 + 3),
    ])
    seen, cursor = [], None
    while True:
        page = await store.list_rejections(RejectionFilter(source="a"), 2, cursor)
        seen += [r.id for r in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    everything = (await store.list_rejections(RejectionFilter(), 10)).items
    assert seen == [r.id for r in everything if r.source == "a"]
    assert len(seen) == 4 and len(set(seen)) == 4
    assert [r.received_at for r in everything] == sorted(
        (r.received_at for r in everything), reverse=True)
    invalid = await store.list_rejections(RejectionFilter(code="invalid_json"), 10)
    assert {(r.source, r.code) for r in invalid.items} == {("b", "invalid_json"),
                                                           ("a", "invalid_json")}
    window = await store.list_rejections(RejectionFilter(since=T0 + 2, until=T0 + 3), 10)
    assert [r.source for r in window.items] == ["b"]
    with pytest.raises(ValueError):
        await store.list_rejections(RejectionFilter(), 10, "bm9wZQ")


async def test_rejections_prune_by_age_then_by_row_cap(store: Store) -> None:
    await store.add_rejections([rejection(n) for n in range(10)])
    assert await store.prune_rejections(T0 + 3, keep=100) == 3
    assert await store.prune_rejections(T0, keep=4) == 3
    left = (await store.list_rejections(RejectionFilter(), 10)).items
    assert [r.received_at for r in left] == [T0 + 9, T0 + 8, T0 + 7, T0 + 6]
    assert await store.prune_rejections(T0, keep=4) == 0
