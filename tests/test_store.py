"""The store contract: the same tests for every backend (SQLite files here)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.ids import new_id
from app.store import EventFilter, Store, StoreError, store_from_url
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
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    backend = store_from_url(f"sqlite:///{tmp_path / 'store.db'}")
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


async def test_migrations_are_recorded_and_idempotent(store: Store, tmp_path: Path) -> None:
    assert await store.migrate() == []
    again = store_from_url(f"sqlite:///{tmp_path / 'store.db'}")
    await again.open()
    assert await again.migrate() == []
    await again.close()


async def test_closed_store_raises_store_error(store: Store) -> None:
    await store.close()
    with pytest.raises(StoreError):
        await store.ping()
