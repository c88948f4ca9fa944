"""Fixtures chain: clock -> settings -> store -> app -> client, all real (SQLite files in tmp)."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette

from app.config import Settings, settings_from_mapping
from app.main import create_app
from app.store import Store, store_from_url

SAMPLES = Path(__file__).parent / "samples"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"hookline-test-secret-0123456789").decode()
OLD_STANDARD_SECRET = "whsec_" + base64.b64encode(b"hookline-old-secret-9876543210").decode()
START = 1_790_000_000.0


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = START) -> None:
        self._now = start
        self._mono = 1000.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds


def base_config(db: Path) -> dict[str, Any]:
    return {
        "storage": {"url": f"sqlite:///{db}"},
        "sources": {
            "partner": {
                "platform": "standard",
                "auth": {"scheme": "standard_webhooks",
                         "secrets": [STANDARD_SECRET, OLD_STANDARD_SECRET]},
            },
            "alfred": {
                "platform": "alfred",
                "auth": {"scheme": "query_token", "secrets": ["alfred-token"]},
            },
            "filecheck": {
                "platform": "filecheck",
                "auth": {"scheme": "header_token", "header": "x-hook-token",
                         "secrets": ["fc-token"]},
                "max_body_bytes": 64 * 1024,
            },
            "signed": {
                "platform": "filecheck",
                "auth": {"scheme": "hmac_sha256", "header": "x-filecheck-signature",
                         "secrets": ["fc-hmac"]},
            },
            "open": {"platform": "alfred", "auth": {"scheme": "none"},
                     "unknown_events": "accept"},
        },
    }


POSTGRES_URL = os.environ.get("HOOKLINE_TEST_POSTGRES_URL")


@pytest.fixture
def schema_url() -> Iterator[str]:
    """A fresh PostgreSQL schema's URL, for tests that start server processes (no event loop)."""
    if not POSTGRES_URL:
        pytest.skip("HOOKLINE_TEST_POSTGRES_URL is not set")
    import asyncio

    import asyncpg

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    schema = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}search_path={schema}"
    finally:
        asyncio.run(admin(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty store of each backend: a SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("HOOKLINE_TEST_POSTGRES_URL is not set")
    import asyncpg

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
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return base_config(tmp_path / "hookline.db")


@pytest.fixture
def settings(config: dict[str, Any]) -> Settings:
    return settings_from_mapping(config, {})


@pytest.fixture
def store(settings: Settings) -> Store:
    return store_from_url(settings.storage.url)


@pytest.fixture
async def app(settings: Settings, store: Store, clock: FakeClock) -> AsyncIterator[Starlette]:
    application = create_app(settings, store=store, clock=clock)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    # A loopback host: with no API tokens the API serves no other (app.web_guard).
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        yield c


def sample(path: str) -> bytes:
    return (SAMPLES / path).read_bytes()


def standard_headers(
    body: bytes, now: float, msg_id: str = "msg_1", secret: str = STANDARD_SECRET
) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(now, UTC), body.decode())
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now)),
        "webhook-signature": signature,
    }


def standard_body(event_type: str = "file.processing_failed", **data: Any) -> bytes:
    data = data or {"platform": "dcycle", "file_id": "11111111-1111-1111-1111-111111111111"}
    envelope = {"type": event_type, "timestamp": "2026-11-01T10:00:00Z", "data": data}
    return json.dumps(envelope).encode()


PostStandard = Callable[..., Any]
