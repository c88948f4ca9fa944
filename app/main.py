"""The ASGI application: explicit wiring of settings, store, clock, HTTP client and routes.

`create_app(settings, store=None, clock=None, http=None, role="all")` builds everything from its
arguments and loads the handlers (a bad one fails here, before anything starts). The lifespan
starts the intake writer, opens the store (or keeps trying in the background while the process
answers 503: app.startup), then starts the worker, the scheduler ticks and a watchdog on the
event loop (app.watchdog), all on one exit stack. Shutdown runs it in reverse: the watchdog and
the ticks stop, in-flight deliveries finish or give their leases back, the intake drains, and
only then is the store closed.
"""

from __future__ import annotations

import asyncio
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
from app.alerts import Alerts
from app.scheduler import Maintenance, start_scheduler
from app.startup import open_store
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
    Route("/api/deliveries/retry", api.retry_deliveries, methods=["POST"]),
    Route("/api/deliveries/{delivery_id}/retry", api.retry_delivery, methods=["POST"]),
    Route("/api/jobs/{job_id}", api.get_entity, methods=["GET"]),
    Route("/api/files/{file_id}", api.get_entity, methods=["GET"]),
    Route("/api/stats", api.get_stats, methods=["GET"]),
    Route("/api/handlers", api.get_handlers, methods=["GET"]),
    Route("/api/sources", api.get_sources, methods=["GET"]),
    Route("/api/stream", api.live_tail, methods=["GET"]),
    Route("/api/rejections", api.list_rejections, methods=["GET"]),
    Route("/api/rejections/{rejection_id}", api.get_rejection, methods=["GET"]),
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


async def _start_components(
    runtime: Runtime, settings: Settings, role: Role, stack: contextlib.AsyncExitStack
) -> None:
    """Start the worker, its wake-ups and the scheduler's ticks on an open store."""
    worker = runtime.worker if runtime.worker_settings.background else None  # type: ignore[union-attr]
    if worker is not None:
        worker.start()
        stack.push_async_callback(worker.stop)
        await runtime.store.listen(runtime.wake_worker)
    receiver = role != "worker"
    alerts = None
    if worker is not None and settings.alerts.enabled:
        alerts = Alerts(settings.alerts, runtime.store, runtime.clock, runtime.recorder,
                        runtime.handlers, settings.sources)
    maintenance = Maintenance(
        runtime.store, runtime.clock, runtime.worker, settings.retention_days,
        settings.sources, runtime.recorder, runtime.tally if receiver else None,
        runtime.rejections if receiver else None, alerts,
    )
    stack.push_async_callback(maintenance.flush_counts)
    stack.push_async_callback(maintenance.flush_rejections)
    if worker is not None or receiver:
        ticks = start_scheduler(
            maintenance, worker_ticks=worker is not None,
            sweep_seconds=runtime.worker_settings.sweep_seconds,  # type: ignore[union-attr]
            alert_seconds=settings.alerts.check_seconds,
        )
        stack.callback(ticks.shutdown, wait=False)


async def _open_then_start(
    runtime: Runtime, settings: Settings, role: Role, stack: contextlib.AsyncExitStack
) -> None:
    await open_store(runtime.store)
    await _start_components(runtime, settings, role, stack)


def _report(task: asyncio.Task[None]) -> None:
    # Nothing awaits the task while the server runs: a failure would otherwise go unseen, and
    # the process would answer 503 with no worker for good.
    if not task.cancelled() and task.exception() is not None:
        log.error("starting after the store opened failed; the process serves 503 until it is "
                  "restarted", exc_info=task.exception())


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):  # an error was logged already
        await task


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
        # Components start in order and stop in reverse, from one exit stack: a failure part-way
        # through start stops what had started.
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(runtime.store.close)
            if owns_http:
                stack.push_async_callback(runtime.http.aclose)
            runtime.intake.start()
            stack.push_async_callback(runtime.intake.stop)
            try:
                await runtime.store.open()
            except StoreError as exc:
                # Serve meanwhile: health checks answer, webhooks and reads get 503.
                log.warning("store unreachable at start: %s; serving 503 until it opens", exc)
                opening = asyncio.create_task(
                    _open_then_start(runtime, settings, role, stack), name="open store")
                opening.add_done_callback(_report)
                stack.push_async_callback(_cancel, opening)
            else:
                await _start_components(runtime, settings, role, stack)
            if not settings.api.tokens and settings.server.on_loopback:
                log.warning("no [[api.tokens]] configured: the read API is open on loopback, to "
                            "requests with a loopback Host (and Origin, if sent) only")
            watchdog = LoopWatchdog(on_stall=runtime.metrics.loop_blocked.inc)
            watchdog.start()
            stack.callback(watchdog.stop)
            yield

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
