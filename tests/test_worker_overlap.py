"""The worker claims its next batch while the previous batch's outcomes commit, within a bound:
a slow finish does not stall dispatch, and cannot let claimed work pile up without limit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from app.config import HandlerSettings
from app.ids import new_id
from app.store import store_from_url
from app.store.base import Finished
from app.worker import Worker, WorkerSettings
from handlers.registry import LoadedHandler
from schemas.records import NewEvent

import fake_handlers
from conftest import START, FakeClock


async def test_the_next_claim_overlaps_the_previous_finish(tmp_path: Path) -> None:
    store = store_from_url(f"sqlite:///{tmp_path / 'overlap.db'}")
    await store.open()
    await store.save_events([NewEvent(
        id=new_id("evt", START + n), source="s", type="t", dedupe_key=f"k{n}",
        received_at=START, occurred_at=None, body=b"{}", payload={}, headers={},
        handlers=("rec",)) for n in range(12)])
    claimed: list[int] = []
    commits = asyncio.Event()

    class SlowFinish:
        """The store, with every finish held until `commits` is set."""

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        async def claim_due(self, *args: Any, **kwargs: Any) -> Any:
            claims = await store.claim_due(*args, **kwargs)
            claimed.append(len(claims))
            return claims

        async def finish(self, results: list[Finished]) -> Any:
            await commits.wait()
            return await store.finish(results)

    try:
        handler = fake_handlers.Recorder()
        loaded = LoadedHandler("rec", handler, {}, HandlerSettings(use="rec", concurrency=4))
        async with httpx.AsyncClient() as http:
            worker = Worker(SlowFinish(), {"rec": loaded}, http,  # type: ignore[arg-type]
                            FakeClock(), WorkerSettings(concurrency=4, claim_batch=4))
            worker.start()
            try:
                async with asyncio.timeout(5):
                    while len(handler.calls) < 8:  # a second batch runs while the first commits
                        await asyncio.sleep(0)
                for _ in range(50):
                    await asyncio.sleep(0)
                # Four ran and wait for their commit, four more ran meanwhile: the bound is
                # reached, so no further claim until the commit comes.
                assert sum(claimed) == 8 and len(handler.calls) == 8
                commits.set()
                async with asyncio.timeout(5):
                    while len(handler.calls) < 12:
                        await asyncio.sleep(0)
            finally:
                commits.set()
                await worker.stop()
        page = await store.list_deliveries("succeeded", None, 20)
        assert len(page.items) == 12
    finally:
        await store.close()



async def test_an_outcome_that_lost_its_lease_is_not_counted_as_finished() -> None:
    # `finish` answers False when the lease had passed to another worker: that worker's outcome
    # is the one counted in metrics and sent to live tails, not this one.
    seen: list[str] = []
    async with httpx.AsyncClient() as http:
        class NoStore:
            async def finish(self, results: list[Finished]) -> list[bool]:
                return [True for _ in results]

        worker = Worker(NoStore(), {}, http, FakeClock(), WorkerSettings(),  # type: ignore[arg-type]
                        on_finished=lambda handler, finished, seconds: seen.append(handler))
        finished = Finished("dlv_1", "w", 1, START, "succeeded", "succeeded")
        loop = asyncio.get_running_loop()
        for held, handler in ((False, "lost"), (True, "kept")):
            done: asyncio.Future[bool] = loop.create_future()
            done.set_result(held)
            worker._recorded(done, handler, finished, 0.1)
    assert seen == ["kept"]
