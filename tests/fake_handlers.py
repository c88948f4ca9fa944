"""Handlers for dispatch tests, referenced from config as "fake_handlers:NAME"."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from handlers import Context, Event, Permanent, PollOutcome, Retry


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def handle(self, event: Event, ctx: Context) -> None:
        self.calls.append((event.id, ctx.attempt))


class Flaky:
    """Fails `failures` times (transiently), then succeeds."""

    name = "flaky"

    def __init__(self) -> None:
        self.failures = 2
        self.calls = 0

    async def handle(self, event: Event, ctx: Context) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"upstream down (call {self.calls})")


class AskLater:
    name = "ask_later"

    async def handle(self, event: Event, ctx: Context) -> None:
        raise Retry(after=30, reason="busy")


class Refuses:
    name = "refuses"

    async def handle(self, event: Event, ctx: Context) -> None:
        raise Permanent("file was rejected upstream")


class Hangs:
    name = "hangs"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.others_done_before_timeout: bool | None = None
        self.watch: Recorder | None = None
        self.release: asyncio.Event | None = None

    async def handle(self, event: Event, ctx: Context) -> None:
        self.started.set()
        try:
            await (self.release or asyncio.Event()).wait()
        finally:
            if self.watch is not None:
                self.others_done_before_timeout = bool(self.watch.calls)


class Garbage:
    name = "garbage"

    async def handle(self, event: Event, ctx: Context) -> Any:
        return {"not": "None"}


class BlocksTheLoop:
    """Calls something blocking from its async handle(), as a careless plugin would."""

    name = "blocks"
    seconds = 1.3

    async def handle(self, event: Event, ctx: Context) -> None:
        time.sleep(self.seconds)


class RetriesTheOldWay:
    """Passes the reason where the delay goes, as Retry's first positional once was."""

    async def handle(self, event: Event, ctx: Context) -> None:
        raise Retry("busy")  # type: ignore[misc]


class SoonRetry(Retry):
    def __init__(self) -> None:
        super().__init__(reason="later")
        self.after = "soon"  # type: ignore[assignment]


class UnreadableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


class OddRetries:
    """Raises a Retry whose `after` is not a number, then an error with no readable text."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, event: Event, ctx: Context) -> None:
        self.calls += 1
        raise SoonRetry() if self.calls == 1 else UnreadableError()


recorder = Recorder()
old_retry = RetriesTheOldWay()
odd_retries = OddRetries()
flaky = Flaky()
ask_later = AskLater()
refuses = Refuses()
hangs = Hangs()
garbage = Garbage()
blocks_the_loop = BlocksTheLoop()


def reset() -> None:
    recorder.calls.clear()
    odd_retries.calls = 0
    poller.__init__()  # type: ignore[misc]
    flaky.failures, flaky.calls = 2, 0
    hangs.__init__()  # type: ignore[misc]


class Poller:
    """Starts upstream work and reports its status: not yet, then the scripted outcome."""

    name = "poller"

    def __init__(self) -> None:
        self.answers: list[PollOutcome | None] = []
        self.polled: list[dict[str, Any]] = []

    async def handle(self, event: Event, ctx: Context) -> None:
        assert ctx.upstream is not None
        file_id = event.payload["data"]["file_id"]
        await ctx.upstream.schedule_poll("fake.reading", f"fake:file:{file_id}",
                                         {"file_id": file_id}, 60, 3600)

    async def poll(self, data: dict[str, Any], ctx: Context) -> PollOutcome | None:
        self.polled.append(data)
        return self.answers.pop(0) if self.answers else None


poller = Poller()
