"""The worker: claim due deliveries with a lease, run each handler in isolation, record attempts.

Each claimed delivery runs in its own task under its handler's timeout and concurrency limit;
whatever it does (returns, raises, hangs) becomes one attempt whose outcome goes through the
pure retry decision and is recorded in batches (one transaction for many outcomes). A delivery's
slot is free once its outcome is queued, so the next claim overlaps the commit of the last batch
(up to `concurrency` outcomes may wait for it that way). A handler's failure never reaches
another delivery. On stop the worker claims nothing more, lets in-flight
handlers finish within a grace period and gives back the leases of the rest, so nothing waits
for a lease to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from app.batching import Batcher
from app.clock import Clock
from app.retry import Decision, Outcome, RetryPolicy, decide
from app.store import Store, StoreError
from app.store.base import Claim, Finished, PollClaim
from app.upstream import Recorded, Recorder, StoreUpstream
from handlers import Context, Permanent, PollOutcome, Retry
from handlers.headers import transport_error
from handlers.registry import LoadedHandler

log = logging.getLogger("hookline.worker")

ERROR_TEXT_MAX = 2000
POLL_BACKOFF_BASE = 30.0
POLL_BACKOFF_MAX = 600.0


@dataclass(frozen=True)
class WorkerSettings:
    concurrency: int = 64
    claim_batch: int = 256
    idle_poll_seconds: float = 5.0
    shutdown_grace_seconds: float = 10.0
    lease_margin_seconds: float = 60.0
    sweep_seconds: float = 5.0
    background: bool = True


@dataclass(frozen=True)
class AttemptResult:
    outcome: Outcome
    error: str | None = None
    http_status: int | None = None
    retry_after: float | None = None


def _trim(text: str) -> str:
    return text if len(text) <= ERROR_TEXT_MAX else text[: ERROR_TEXT_MAX - 1] + "…"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    # Delay-seconds are ASCII digits; str.isdigit() also takes "²", which float() refuses.
    return float(value) if value.isascii() and value.isdigit() else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _said(exc: BaseException) -> str:
    """An exception's text, even when its own __str__ raises."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__} whose text could not be read>"


def _seconds(value: Any) -> float | None:
    # A Retry subclass may set `after` to anything: only a finite number >= 0 is a delay.
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < math.inf:
        return float(value)
    return None


def classify(exc: BaseException) -> AttemptResult:
    """What one exception out of a handler means for its delivery."""
    if isinstance(exc, Permanent):
        return AttemptResult("permanent", _trim(_said(exc)), exc.http_status)
    if isinstance(exc, Retry):
        return AttemptResult(
            "transient", _trim(_said(exc)), exc.http_status, _seconds(exc.after))
    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        return AttemptResult(
            "transient", _trim(f"HTTP {response.status_code} from {exc.request.url.host}"),
            response.status_code, _retry_after(response),
        )
    if isinstance(exc, httpx.HTTPError | httpx.InvalidURL):
        # The type and host only: the message of a failed request may quote a header (a
        # token), the URL (a Slack webhook path) or the body.
        return AttemptResult("transient", _trim(transport_error(exc)))
    return AttemptResult("transient", _trim(f"{type(exc).__name__}: {_said(exc)}"))


def _being_cancelled() -> bool:
    """Whether someone asked for the current task to be cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Worker:
    """Runs deliveries for the handlers it was given."""

    def __init__(
        self,
        store: Store,
        handlers: Mapping[str, LoadedHandler],
        http: httpx.AsyncClient,
        clock: Clock,
        settings: WorkerSettings | None = None,
        rand: random.Random | None = None,
        recorder: Recorder | None = None,
        on_finished: Callable[[str, Finished, float], None] | None = None,
    ) -> None:
        self.recorder = recorder
        self.on_finished = on_finished
        self.store = store
        self.handlers = handlers
        self.http = http
        self.clock = clock
        self.settings = settings or WorkerSettings()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._rand = rand or random.Random()
        self._limits = {
            name: asyncio.Semaphore(h.settings.concurrency) for name, h in handlers.items()
        }
        # A handler holds at most its fair share of the worker's slots (or its own concurrency
        # if that is more): deliveries waiting for a slow or hanging handler's turn cannot
        # occupy the slots the other handlers' deliveries need.
        share = self.settings.concurrency // max(1, len(handlers))
        self._caps = {name: max(h.settings.concurrency, share) for name, h in handlers.items()}
        self._held: Counter[str] = Counter()
        longest = max((h.settings.timeout_seconds for h in handlers.values()), default=30.0)
        self.lease_seconds = longest + self.settings.lease_margin_seconds
        self._claim_low_water = max(1, min(self.settings.claim_batch,
                                           self.settings.concurrency) // 4)
        self._inflight: dict[asyncio.Task[None], Claim] = {}
        self._recording: set[asyncio.Future[bool]] = set()  # outcomes queued, not committed
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._outcomes: Batcher[Finished, bool] = Batcher(
            self.store.finish, maxsize=100_000, batch_max=512, name="hookline-outcomes"
        )

    # Lifecycle.

    def start(self) -> None:
        self._outcomes.start()
        self._loop_task = asyncio.create_task(self._loop(), name="hookline-worker")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Stop claiming; let in-flight deliveries finish within the grace; release the rest."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=self.settings.shutdown_grace_seconds)
        unfinished = {task: claim for task, claim in self._inflight.items() if not task.done()}
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished)
        await self._outcomes.stop()
        if unfinished:
            ids = [claim.delivery_id for claim in unfinished.values()]
            with contextlib.suppress(StoreError):
                released = await self.store.release(self.owner, ids, self.clock.now())
                log.info("released %d unfinished deliveries", released)

    # Claiming.

    async def run_once(self) -> int:
        """Claim what is due now, run it all to the end and record the outcomes."""
        started = not self._outcomes.running
        if started:
            self._outcomes.start()
        claims = await self._claim(self.settings.claim_batch)
        tasks = [self._spawn(claim) for claim in claims]
        if tasks:
            await asyncio.wait(tasks)
        if self._recording:
            await asyncio.wait(set(self._recording))
        if started:
            await self._outcomes.stop()
        return len(claims)

    async def _claim(self, limit: int, per_handler: Mapping[str, int] | None = None
                     ) -> list[Claim]:
        return await self.store.claim_due(
            self.owner, self.clock.now(), self.lease_seconds, limit, per_handler)

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping:
            self._wake.clear()
            room = min(self._room(), self.settings.claim_batch)
            free = {name: cap - self._held[name] for name, cap in self._caps.items()
                    if self._held[name] < cap}
            # Claim in chunks: a claim is a transaction, so claiming each freed slot on its own
            # would make dispatch as slow as the store's commits. A finishing delivery wakes us.
            if room <= 0 or not free or (self._inflight and room < self._claim_low_water):
                await self._idle(self.settings.idle_poll_seconds)
                continue
            limit = min(room, sum(free.values()))
            claimed_at = self.clock.now()
            try:
                claims = await self._claim(limit, free)
                failures = 0
            except StoreError as exc:
                failures += 1
                log.warning("cannot claim deliveries (store unavailable): %s", exc)
                await self._idle(min(30.0, 0.5 * 2**failures))
                continue
            for claim in claims:
                self._spawn(claim)
            if claims and len(claims) == limit:
                continue  # there may be more due
            await self._idle(await self._until_next_due(claimed_at))

    def _room(self) -> int:
        """Slots free for a claim: running deliveries hold theirs, and so do outcomes waiting
        for their commit beyond the first `concurrency` of them."""
        waiting = max(0, len(self._recording) - self.settings.concurrency)
        return self.settings.concurrency - len(self._inflight) - waiting

    async def _until_next_due(self, claimed_at: float) -> float:
        """Seconds until something may be claimable, after a claim at `claimed_at` took all it
        could: what was due then and was left belongs to handlers at their cap (or to none
        configured here), and waits for one of their deliveries to finish, which wakes us."""
        try:
            due = await self.store.next_due_at()
        except StoreError:
            return self.settings.idle_poll_seconds
        if due is None or due <= claimed_at:
            return self.settings.idle_poll_seconds
        return max(0.0, min(self.settings.idle_poll_seconds, due - self.clock.now()))

    async def _idle(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    # Running one delivery.

    def _spawn(self, claim: Claim) -> asyncio.Task[None]:
        task = asyncio.create_task(
            self._run(claim), name=f"delivery {claim.delivery_id} (handler {claim.handler})")
        self._inflight[task] = claim
        self._held[claim.handler] += 1
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        claim = self._inflight.pop(task, None)
        if claim is not None:
            self._held[claim.handler] -= 1
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())
        self._wake.set()

    async def _run(self, claim: Claim) -> None:
        loaded = self.handlers.get(claim.handler)
        result = AttemptResult("permanent", f"no handler named {claim.handler!r} is configured")
        seconds = 0.0
        if loaded is not None:
            async with self._limits[claim.handler]:
                started = self.clock.monotonic()
                result = await self._attempt(loaded, claim)
                seconds = self.clock.monotonic() - started
        policy = self._policy(loaded)
        now = self.clock.now()
        try:
            decision: Decision = decide(
                result.outcome, claim.attempt, policy, now, self._rand.random(), result.retry_after
            )
        except Exception as exc:  # never leave the delivery running until its lease ends
            log.exception("retry decision for %s failed", claim.delivery_id)
            result = AttemptResult("transient", _trim(f"retry decision failed: {_said(exc)}"))
            decision = decide("transient", claim.attempt, policy, now, self._rand.random(), None)
        error = result.error
        if decision.status == "dead" and decision.reason and result.outcome != "permanent":
            error = f"{error} ({decision.reason})" if error else decision.reason
        log.info(
            "delivery %s", decision.status,
            extra={"fields": {"delivery_id": claim.delivery_id, "handler": claim.handler,
                              "event_id": claim.event.id, "attempt": claim.attempt,
                              "outcome": result.outcome, "error": error}},
        )
        finished = Finished(
            delivery_id=claim.delivery_id, owner=self.owner, attempt=claim.attempt,
            ended_at=now, outcome=result.outcome, status=decision.status,
            next_attempt_at=decision.next_attempt_at, error=error,
            http_status=result.http_status,
        )
        # The slot is free once the outcome is queued: the next claim overlaps this batch's
        # commit. Up to `concurrency` outcomes may wait for theirs that way (see _room).
        try:
            recorded = self._outcomes.submit_nowait(finished)
        except Exception as exc:  # the lease will expire and the delivery run again
            log.error("outcome of %s not recorded: %s", claim.delivery_id, exc)
            return
        self._recording.add(recorded)
        recorded.add_done_callback(
            lambda done: self._recorded(done, claim.handler, finished, seconds))

    def _recorded(self, done: asyncio.Future[bool], handler: str, finished: Finished,
                  seconds: float) -> None:
        self._recording.discard(done)
        self._wake.set()
        if done.cancelled() or done.exception() is not None:
            log.error("outcome of %s not recorded: %s", finished.delivery_id,
                      "cancelled" if done.cancelled() else done.exception())
            return
        # False: the lease had passed to another worker, whose outcome is the one that counts.
        if done.result() and self.on_finished is not None:
            self.on_finished(handler, finished, seconds)

    # Status polls of upstream work.

    async def run_polls_once(self) -> int:
        """Claim the status polls that are due, run them all and record what they found."""
        try:
            claims = await self.store.claim_polls(
                self.owner, self.clock.now(), self.lease_seconds, self.settings.claim_batch
            )
        except StoreError as exc:
            log.warning("cannot claim polls (store unavailable): %s", exc)
            return 0
        if claims:
            await asyncio.gather(*(self._run_poll(claim) for claim in claims))
        return len(claims)

    async def _run_poll(self, claim: PollClaim) -> None:
        loaded = self.handlers.get(claim.handler)
        poller = getattr(loaded.handler, "poll", None) if loaded is not None else None
        now = self.clock.now()
        if loaded is None or poller is None:
            await self._close_poll(claim, None, f"no poller: handler {claim.handler!r}")
            return
        result: PollOutcome | None = None
        if now >= claim.deadline:
            result = PollOutcome("timeout", {"key": claim.key, **claim.data})
        else:
            try:
                async with asyncio.timeout(loaded.settings.timeout_seconds):
                    result = await poller(claim.data, self._context(loaded, claim.attempts))
            except Permanent as exc:
                await self._close_poll(claim, None, f"abandoned: {exc.reason}")
                return
            except (Exception, SystemExit) as exc:  # a failed poll is tried again later
                log.warning("poll %s of %s failed: %s", claim.id, claim.key, classify(exc).error)
        if result is None:
            step = min(POLL_BACKOFF_MAX, POLL_BACKOFF_BASE * 2 ** (claim.attempts - 1))
            await self._reschedule_poll(claim, min(claim.deadline, now + step))
            return
        await self._close_poll(claim, result, result.status)

    async def _close_poll(self, claim: PollClaim, result: PollOutcome | None, outcome: str) -> None:
        if result is not None and self.recorder is not None:
            data = claim.data
            try:
                await self.recorder.record(Recorded(
                    source=claim.handler, type=f"{claim.kind}.{result.status}",
                    payload={**result.payload, "key": claim.key, "poll_id": claim.id,
                             "caused_by": claim.event_id},
                    dedupe_key=claim.id,
                    job_id=_text(data.get("job_id")), file_id=_text(data.get("file_id")),
                ))
            except Exception as exc:  # not recorded: keep the poll and record it next time
                log.warning("outcome of poll %s not recorded: %s", claim.id, exc)
                await self._reschedule_poll(claim, self.clock.now() + 5)
                return
        with contextlib.suppress(StoreError):
            await self.store.finish_poll(claim.id, self.owner, None, outcome, self.clock.now())

    async def _reschedule_poll(self, claim: PollClaim, next_at: float) -> None:
        with contextlib.suppress(StoreError):
            await self.store.finish_poll(claim.id, self.owner, next_at, None, self.clock.now())

    def _policy(self, loaded: LoadedHandler | None) -> RetryPolicy:
        if loaded is None:
            return RetryPolicy(max_attempts=1)
        s = loaded.settings
        return RetryPolicy(s.max_attempts, s.backoff_base_seconds, s.backoff_max_seconds)

    def _context(
        self, loaded: LoadedHandler, attempt: int, upstream: StoreUpstream | None = None
    ) -> Context[Any]:
        return Context(
            http=self.http,
            options=loaded.options,
            log=logging.getLogger(f"hookline.handler.{loaded.name}"),
            clock=self.clock,
            handler_name=loaded.name,
            attempt=attempt,
            upstream=upstream,
        )

    async def _attempt(self, loaded: LoadedHandler, claim: Claim) -> AttemptResult:
        upstream = StoreUpstream(self.store, self.clock, loaded.name, claim.event)
        ctx = self._context(loaded, claim.attempt, upstream)
        timeout = loaded.settings.timeout_seconds
        try:
            async with asyncio.timeout(timeout) as scope:
                await loaded.handler.handle(claim.event, ctx)
        except TimeoutError:
            if scope.expired():
                return AttemptResult("timeout", f"handler did not finish within {timeout:g} s")
            return classify(TimeoutError("timed out"))
        except asyncio.CancelledError as exc:
            if _being_cancelled():
                raise  # the worker is stopping
            # The handler's own (it awaited something that was cancelled): uncaught, it would
            # end this task with no outcome and leave the delivery running until its lease ends.
            return classify(exc)
        except (Exception, SystemExit) as exc:  # a plugin's SystemExit would end the event loop
            return classify(exc)
        return AttemptResult("succeeded")
