"""Everything one running hookline shares, built once from the settings and passed explicitly.

Endpoints reach it as `request.app.state.runtime`; there are no module-level globals holding
connections, so two apps (say, in one test) never share a store by accident. Handlers are loaded
and validated here, when the app is built, so a bad handler stops the server before it starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import httpx

from app.auth import credential_headers, dropped_headers
from app.clock import Clock
from app.config import Settings
from app.errors import ConfigError
from app.intake import Intake
from app.metrics import Metrics
from app.ratelimit import RateLimiter
from app.rejections import RejectionLog
from app.routing import Route, compile_routes
from app.store import Store
from app.store.base import Finished
from app.stats_cache import StatsCache
from app.stream import Changes
from app.tally import Tally
from app.upstream import Recorder
from app.worker import Worker, WorkerSettings
from handlers.registry import HandlerLoadError, LoadedHandler, load_handlers
from schemas.records import NewEvent

Role = Literal["all", "receiver", "worker"]


def default_http() -> httpx.AsyncClient:
    """The shared outbound client: bounded timeouts and pool, no redirects followed."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(10.0, connect=5.0),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        follow_redirects=False,
        headers={"user-agent": "hookline"},
    )


@dataclass
class Runtime:
    settings: Settings
    store: Store
    clock: Clock
    http: httpx.AsyncClient
    role: Role = "all"
    worker_settings: WorkerSettings | None = None
    intake: Intake = field(init=False)
    rate_limiter: RateLimiter = field(init=False)
    routes: tuple[Route, ...] = field(init=False)
    handlers: dict[str, LoadedHandler] = field(init=False)
    worker: Worker | None = field(init=False, default=None)
    recorder: Recorder = field(init=False)
    metrics: Metrics = field(init=False, default_factory=Metrics)
    tally: Tally = field(init=False, default_factory=Tally)
    changes: Changes = field(init=False, default_factory=Changes)
    stats: StatsCache = field(init=False)
    secret_headers: frozenset[str] = field(init=False)
    dropped_headers: dict[str, frozenset[str]] = field(init=False)
    rejections: RejectionLog = field(init=False)

    def __post_init__(self) -> None:
        server = self.settings.server
        self.intake = Intake(
            self.store, server.intake_queue, server.batch_max, server.retry_after_seconds,
            server.intake_queue_bytes,
        )
        self.rate_limiter = RateLimiter(
            {name: source.rate_limit for name, source in self.settings.sources.items()},
            server.failed_auth_rate_limit,
        )
        self.routes = compile_routes(self.settings.routes)
        self.secret_headers = credential_headers(s.auth for s in self.settings.sources.values())
        self.dropped_headers = {
            name: dropped_headers(source.auth, self.secret_headers, source.secret_headers)
            for name, source in self.settings.sources.items()
        }
        self.rejections = RejectionLog(
            self.settings.rejections, self.settings.sources, self.secret_headers)
        try:
            self.handlers = load_handlers(self.settings.handlers)
        except HandlerLoadError as exc:
            raise ConfigError(exc.problems) from None
        if self.worker_settings is None:
            configured = self.settings.worker
            self.worker_settings = WorkerSettings(
                concurrency=configured.concurrency,
                claim_batch=configured.claim_batch,
                shutdown_grace_seconds=configured.shutdown_grace_seconds,
                lease_margin_seconds=configured.lease_margin_seconds,
                sweep_seconds=configured.sweep_seconds,
            )
        self.recorder = Recorder(self.intake.submit, self.routes, self.clock)
        self.stats = StatsCache(self.store, self.clock, self.tally)
        self.intake.on_stored(lambda event: self.changes.notify())
        if self.role in ("all", "worker"):
            self.worker = Worker(
                self.store, self.handlers, self.http, self.clock, self.worker_settings,
                recorder=self.recorder, on_finished=self._finished,
            )
            self.intake.on_stored(self._wake_for)

    def _wake_for(self, event: NewEvent) -> None:
        if event.handlers:
            self.wake_worker()

    def _finished(self, handler: str, finished: Finished, seconds: float) -> None:
        """An attempt's outcome was recorded: count it and wake the live tails."""
        self.metrics.finished(handler, finished.outcome, finished.status, seconds)
        self.changes.notify()

    def wake_worker(self) -> None:
        if self.worker is not None:
            self.worker.wake()
