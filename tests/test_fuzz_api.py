"""API fuzzing of the read API with schemathesis, against the `/openapi.json` the app serves.

The app runs in-process (schemathesis's ASGI client starts its lifespan once) over a real SQLite
file seeded with events, deliveries and a dead letter, so path parameters sometimes name real
events, jobs and files. Every operation gets a bounded, derandomized set of examples with an
admin token; the checks are: never a 5xx, only documented status codes and content types, JSON
bodies matching their schemas.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette

from app import openapi
from app.config import settings_from_mapping
from app.main import create_app

from conftest import FakeClock, base_config, sample, standard_body, standard_headers

ADMIN_TOKEN = "fuzz-admin-token-0123456789"
READ_TOKEN = "fuzz-read-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def fuzz_config(db: Path) -> dict[str, Any]:
    config = base_config(db)
    config["api"] = {"tokens": [
        {"name": "admin", "token": ADMIN_TOKEN, "scopes": ["admin"]},
        {"name": "reader", "token": READ_TOKEN, "scopes": ["read"]},
    ]}
    config["server"] = {"stream_heartbeat_seconds": 0.05, "stream_poll_seconds": 0.05}
    config["handlers"] = {
        "failing": {"use": "fake_handlers:Refuses", "max_attempts": 1},
        "log": {"use": "log"},
    }
    config["routes"] = [{"match": "*", "handler": "log"},
                        {"match": "alfred.job.*", "handler": "failing"}]
    return config


class Seeded:
    """The app, and what is stored in it."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.event_ids: list[str] = []
        self.job_ids: list[str] = []
        self.file_ids: list[str] = []


def seed(app: Starlette, clock: FakeClock) -> Seeded:
    seeded = Seeded(app)
    with asgi.get_client(app) as client:
        posts = [
            ("/webhooks/partner", standard_body(), "msg_fuzz_1"),
            ("/webhooks/partner", standard_body("file.processed", file_id="f-fuzz"), "msg_fuzz_2"),
            ("/webhooks/alfred?token=alfred-token", sample("alfred/alfred.job.failed.json"), None),
            ("/webhooks/alfred?token=alfred-token", sample("alfred/alfred.file.done.json"), None),
        ]
        for path, body, msg_id in posts:
            headers = ({"content-type": "application/json"} if msg_id is None
                       else standard_headers(body, clock.now(), msg_id))
            answer = client.post(path, data=body, headers=headers)
            assert answer.status_code == 202, answer.text
            seeded.event_ids.append(answer.json()["id"])
        for event_id in seeded.event_ids:
            record = client.get(f"/api/events/{event_id}", headers=AUTH).json()
            if record.get("job_id"):
                seeded.job_ids.append(record["job_id"])
            if record.get("file_id"):
                seeded.file_ids.append(record["file_id"])
    return seeded


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    clock = FakeClock()
    db = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    app = create_app(settings_from_mapping(fuzz_config(db), {}), clock=clock)
    try:
        yield seed(app, clock)
    finally:
        asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def api_schema(seeded: Seeded) -> Any:
    schema = schemathesis.openapi.from_asgi("/openapi.json", seeded.app)
    known = {"event_id": seeded.event_ids, "job_id": seeded.job_ids,
             "file_id": seeded.file_ids}

    @schema.hook
    def before_generate_path_parameters(context: Any, strategy: Any) -> Any:
        # Often a path parameter names something that exists.
        real = [st.fixed_dictionaries({name: st.sampled_from(values)})
                for name, values in known.items()
                if values and "{" + name + "}" in context.operation.path]
        return st.one_of(strategy, *real) if real else strategy

    return schema


OPERATIONS = [(method.upper(), path) for path, methods in openapi.document()["paths"].items()
              for method in methods]


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_read_api_conforms_to_its_openapi_document(api_schema: Any, method: str, path: str) -> None:
    operation = api_schema[path][method]
    # A live tail never ends by itself: each call keeps what it sent within 0.6 s, so the
    # tail gets fewer examples.
    stream = path == "/api/stream"
    timeout = 0.6 if stream else 10.0

    @settings(max_examples=6 if stream else 20, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                          operation.as_strategy(GenerationMode.NEGATIVE)))
    def call(case: Any) -> None:
        case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=timeout)

    call()


# Regressions of what the fuzzing found.


def test_dry_runs_and_raw_bodies_are_documented_as_served() -> None:
    paths = openapi.document()["paths"]
    for path in ("/api/events/{event_id}/replay", "/api/replay"):
        assert {"200", "202"} <= set(paths[path]["post"]["responses"])
    raw = paths["/api/events/{event_id}/raw"]["get"]["responses"]["200"]["content"]
    assert list(raw) == ["application/octet-stream"]


async def test_dry_run_replays_answer_200_and_raw_tells_its_content_type(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    body = standard_body()
    stored = await client.post("/webhooks/partner", content=body,
                               headers=standard_headers(body, clock.now(), "msg_dry"))
    event_id = stored.json()["id"]
    one = await client.post(f"/api/events/{event_id}/replay", json={"dry_run": True})
    many = await client.post("/api/replay", json={"type": "*", "dry_run": True})
    assert (one.status_code, many.status_code) == (200, 200)
    raw = await client.get(f"/api/events/{event_id}/raw")
    assert raw.headers["x-hookline-content-type"] == "application/json" and raw.content == body


@pytest.mark.parametrize("query", ["limit=%C2%B2", "limit=%D9%A3", "window=%C2%B2",
                                   "window=%D9%A3%D9%A3%D9%A3"])
async def test_digit_lookalikes_are_a_400_not_a_500(client: httpx.AsyncClient, query: str) -> None:
    # "²" and "٣" pass str.isdigit(); int() refuses the first and reads the second as 3.
    path = "/api/stats" if query.startswith("window") else "/api/events"
    response = await client.get(f"{path}?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(query.split("=")[0] + " must be")
