"""The ASGI application: explicit wiring of settings, store, clock, HTTP client and routes.

`create_app(settings, store=None, clock=None, http=None, role="all")` builds everything from its
arguments and loads the handlers (a bad one fails here, before anything starts). The lifespan
opens the store, starts the intake writer, the worker, the scheduler ticks and a watchdog on the
event loop (app.watchdog); on shutdown it stops the watchdog and the ticks, then the rest: the
intake drains, in-flight deliveries finish or give their leases back, and only then is the store
closed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from app import api, dashboard, ingest, openapi, stream
from app.clock import Clock, SystemClock
from app.config import Settings
from app.http_errors import EXCEPTION_HANDLERS, error_for
from app.logs import AccessLogMiddleware
from app.metrics import metrics_endpoint
from app.runtime import Role, Runtime, default_http
from app.scheduler import Maintenance, start_scheduler
from app.store import Store, StoreError, store_from_url
from app.watchdog import LoopWatchdog
from app.web_guard import WebGuard
from app.worker import WorkerSettings

log = logging.getLogger("hookline")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    try:
        await runtime.store.ping()
    except StoreError:
        return JSONResponse(
            {"status": "unavailable"}, status_code=503, headers={"Retry-After": "1"}
        )
    return JSONResponse({"status": "ready"})


HEALTH_ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
]
# A worker-only process serves health checks alone: it receives nothing and answers no reads.
RECEIVER_ROUTES = [
    Route("/webhooks/{source}", ingest.WebhookEndpoint(), methods=["POST"]),
    Route("/api/whoami", api.whoami, methods=["GET"]),
    Route("/api/events", api.list_events, methods=["GET"]),
    Route("/api/events/{event_id}", api.get_event, methods=["GET"]),
    Route("/api/events/{event_id}/raw", api.raw_event, methods=["GET"]),
    Route("/api/events/{event_id}/replay", api.replay_event, methods=["POST"]),
    Route("/api/replay", api.replay_many, methods=["POST"]),
    Route("/api/deliveries", api.list_deliveries, methods=["GET"]),
    Route("/api/jobs/{job_id}", api.get_entity, methods=["GET"]),
    Route("/api/files/{file_id}", api.get_entity, methods=["GET"]),
    Route("/api/stats", api.get_stats, methods=["GET"]),
    Route("/api/stream", api.live_tail, methods=["GET"]),
    Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
    Route("/", dashboard.index, methods=["GET"]),
    Mount("/static", app=dashboard.assets(), name="static"),
]


class HooklineApp(Starlette):
    """Starlette, with `POST /webhooks/{source}` taken straight to its endpoint.

    Every other request goes through the router and the middleware as usual. The webhook
    endpoint, the one path under load, skips the router's matching and every middleware layer
    but one (each a coroutine and a wrapped `send` per request; the web guard would leave a
    webhook alone anyway, see app.web_guard): it keeps the access log, and its errors get the same handlers and envelope as everywhere else. The endpoint
    raises only before it starts its answer, so an error can always still be answered."""

    def __init__(self, *, receiver: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._webhooks = AccessLogMiddleware(self._webhook) if receiver else None
        self._endpoint = ingest.WebhookEndpoint()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._webhooks is not None and scope["type"] == "http" and scope["method"] == "POST":
            source = _webhook_source(scope["path"])
            if source is not None:
                scope["app"] = self
                scope["path_params"] = {"source": source}
                await self._webhooks(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._endpoint(scope, receive, send)
        except Exception as exc:
            response = await error_for(Request(scope, receive), exc)
            await response(scope, receive, send)


def _webhook_source(path: str) -> str | None:
    """`{source}` of a path `/webhooks/{source}` (one segment, as the route matches it)."""
    if path.startswith("/webhooks/"):
        source = path[len("/webhooks/"):]
        if source and "/" not in source:
            return source
    return None


def create_app(
    settings: Settings,
    store: Store | None = None,
    clock: Clock | None = None,
    http: httpx.AsyncClient | None = None,
    role: Role = "all",
    worker_settings: WorkerSettings | None = None,
) -> Starlette:
    """Build the app; nothing is opened until the lifespan starts."""
    runtime = Runtime(
        settings=settings,
        store=store or store_from_url(settings.storage.url),
        clock=clock or SystemClock(),
        http=http or default_http(),
        role=role,
        worker_settings=worker_settings,
    )
    owns_http = http is None
    # Types a route names literally are as known as the schemas' (see app.metrics).
    runtime.metrics.types.know(r.match for r in runtime.routes if not set(r.match) & set("*?["))
    runtime.metrics.sources.know(settings.sources)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.store.open()
        runtime.intake.start()
        background = runtime.worker is not None and runtime.worker.settings.background
        if background:
            runtime.worker.start()  # type: ignore[union-attr]
            await runtime.store.listen(runtime.wake_worker)
        receiver = role != "worker"
        maintenance = Maintenance(
            runtime.store, runtime.clock, runtime.worker, settings.retention_days,
            settings.sources, runtime.recorder, runtime.tally if receiver else None,
        )
        ticks = None
        if background or receiver:
            ticks = start_scheduler(
                maintenance, worker_ticks=background,
                sweep_seconds=runtime.worker_settings.sweep_seconds,  # type: ignore[union-attr]
            )
        if not settings.api.tokens and settings.server.on_loopback:
            log.warning("no [[api.tokens]] configured: the read API is open on loopback, to "
                        "requests with a loopback Host (and Origin, if sent) only")
        watchdog = LoopWatchdog(on_stall=runtime.metrics.loop_blocked.inc)
        watchdog.start()
        try:
            yield
        finally:
            watchdog.stop()
            if ticks is not None:
                ticks.shutdown(wait=False)
            await runtime.intake.stop()
            await maintenance.flush_counts()
            if runtime.worker is not None:
                await runtime.worker.stop()
            if owns_http:
                await runtime.http.aclose()
            await runtime.store.close()

    app = HooklineApp(
        receiver=role != "worker",
        routes=RECEIVER_ROUTES + HEALTH_ROUTES if role != "worker" else HEALTH_ROUTES,
        middleware=[
            Middleware(AccessLogMiddleware),
            Middleware(WebGuard, open_api=not settings.api.tokens and settings.server.on_loopback),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    server = settings.server
    app.state.tails = stream.Tails(
        runtime.store, server.sse_max_connections, server.stream_poll_seconds)
    return app
