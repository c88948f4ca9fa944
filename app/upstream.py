"""The durable bookkeeping handlers get as `ctx.upstream`, and the way hookline records events
of its own (poll outcomes, stalls) in the same log as everything it receives.

`StoreUpstream` binds one delivery (its handler and event) to the store's named operations, so
a plugin sees budgets, one-time marks and status polls and nothing else of the store.
`Recorder` turns an outcome into an event that is stored, deduplicated and routed exactly like
a received one.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from app.clock import Clock
from app.ids import new_id
from app.routing import Route, handlers_for
from app.store import Store
from schemas.records import EventRecord, NewEvent, Saved


@dataclass(frozen=True)
class Recorded:
    """An event hookline records itself."""

    source: str
    type: str
    payload: dict[str, Any]
    dedupe_key: str
    job_id: str | None = None
    file_id: str | None = None
    company_id: str | None = None


@dataclass
class Recorder:
    """Stores recorded events through the same intake and routes as received ones."""

    submit: Callable[[NewEvent], Awaitable[Saved]]
    routes: tuple[Route, ...]
    clock: Clock

    async def record(self, event: Recorded) -> Saved:
        now = self.clock.now()
        body = json.dumps(event.payload, separators=(",", ":")).encode()
        return await self.submit(NewEvent(
            id=new_id("evt", now), source=event.source, type=event.type,
            dedupe_key=event.dedupe_key, received_at=now, occurred_at=now, body=body,
            payload=event.payload, headers={"x-hookline-recorded": "1"},
            job_id=event.job_id, file_id=event.file_id, company_id=event.company_id,
            handlers=handlers_for(self.routes, event.source, event.type, event.payload),
        ))


@dataclass
class StoreUpstream:
    """`handlers.Upstream` for one delivery of `handler` carrying `event`."""

    store: Store
    clock: Clock
    handler: str
    event: EventRecord
    polls: list[str] = field(default_factory=list)

    async def take_budget(self, key: str, limit: int) -> int | None:
        return await self.store.take_budget(key, limit, self.clock.now())

    async def refund_budget(self, key: str) -> None:
        await self.store.refund_budget(key, self.clock.now())

    async def once(self, key: str) -> bool:
        return await self.store.mark_once(key, self.clock.now())

    async def schedule_poll(
        self, kind: str, key: str, data: dict[str, Any], first_after: float, deadline_after: float
    ) -> str:
        now = self.clock.now()
        poll_id = await self.store.add_poll(
            self.handler, kind, key, data, self.event.id, now + first_after,
            now + deadline_after, now,
        )
        self.polls.append(poll_id)
        return poll_id

    async def related_events(
        self, *, job_id: str | None = None, file_id: str | None = None
    ) -> list[EventRecord]:
        if job_id is not None:
            return await self.store.events_of("job", job_id)
        if file_id is not None:
            return await self.store.events_of("file", file_id)
        return []
