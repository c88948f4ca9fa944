"""The CLI verbs over the same store the server uses: replay (plan, dry run, bulk), retry,
prune."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import parse_when


def hookline(*args: str, cwd: Path, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, check=False, env=env,
    )


UNSIGNED = """
[storage]
url = "sqlite:///unsigned.db"
[sources.open]
platform = "standard"
auth = { scheme = "none" }
"""


def test_serve_flags_cannot_open_an_unsigned_source_to_the_network(tmp_path: Path) -> None:
    config = tmp_path / "hookline.toml"
    config.write_text(UNSIGNED)
    # Before the fix this served: the test would then time out rather than pass.
    run = hookline("serve", "--config", str(config), "--host", "0.0.0.0", "--port", "0",
                   cwd=tmp_path, timeout=30)
    assert run.returncode == 1
    assert run.stderr == (
        "invalid configuration:\n  sources.open.auth.scheme: 'none' is allowed only on a"
        " loopback host, and server.host is '0.0.0.0'\n")
    # The environment override goes through the same check.
    env = {**os.environ, "HOOKLINE_SERVER__HOST": "0.0.0.0"}
    run = hookline("serve", "--config", str(config), "--port", "0", cwd=tmp_path, env=env,
                   timeout=30)
    assert run.returncode == 1 and "allowed only on a loopback host" in run.stderr
    assert "Traceback" not in run.stderr


def test_serve_settings_validates_every_flag(tmp_path: Path) -> None:
    from app.cli import build_parser, serve_settings
    from app.errors import ConfigError

    config = tmp_path / "hookline.toml"
    config.write_text(UNSIGNED)
    args = build_parser().parse_args(["serve", "--config", str(config), "--host", "0.0.0.0"])
    with pytest.raises(ConfigError, match="allowed only on a loopback host"):
        serve_settings(args)
    args = build_parser().parse_args(["serve", "--config", str(config), "--port", "70000"])
    with pytest.raises(ConfigError, match="server.port"):
        serve_settings(args)
    args = build_parser().parse_args(["serve", "--config", str(config), "--host", "::1",
                                      "--port", "9003"])
    server = serve_settings(args).server
    assert (server.host, server.port) == ("::1", 9003)


def test_parse_when() -> None:
    now = 1_790_000_000.0
    assert parse_when("2h", now) == now - 7200
    assert parse_when("30m", now) == now - 1800
    assert parse_when("1790000000", now) == 1_790_000_000.0
    assert parse_when("2026-11-01T00:00:00Z", now) == 1793491200.0
    with pytest.raises(Exception, match="not a time"):
        parse_when("yesterday", now)


def _seed(tmp_path: Path) -> tuple[Path, list[str]]:
    """A config with a route to a handler that always refuses, and three dead deliveries."""
    import asyncio

    import httpx

    from app.config import load_settings
    from app.main import create_app
    from app.worker import WorkerSettings
    from conftest import FakeClock, standard_body, standard_headers

    config = tmp_path / "hookline.toml"
    config.write_text(f"""
[storage]
url = "sqlite:///{tmp_path / 'cli.db'}"
[sources.partner]
platform = "standard"
auth = {{ scheme = "standard_webhooks", secrets = ["whsec_aG9va2xpbmUtdGVzdC1zZWNyZXQtMDEyMzQ1Njc4OQ=="] }}
[[routes]]
match = "file.*"
handler = "no"
[handlers.no]
use = "fake_handlers:refuses"
""")

    async def seed() -> list[str]:
        clock = FakeClock()
        app = create_app(load_settings(config), clock=clock,
                         worker_settings=WorkerSettings(background=False))
        ids = []
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                for n in range(3):
                    body = standard_body()
                    r = await client.post("/webhooks/partner", content=body,
                                          headers=standard_headers(body, clock.now(), f"m{n}"))
                    ids.append(r.json()["id"])
                await app.state.runtime.worker.run_once()
        return ids

    return config, asyncio.run(seed())


def test_replay_plan_dry_run_and_bulk(tmp_path: Path) -> None:
    config, ids = _seed(tmp_path)
    env_cwd = Path(__file__).parent  # fake_handlers importable by module:attr
    plan = hookline("replay", ids[0], "--plan", "--config", str(config), cwd=env_cwd)
    assert plan.returncode == 0, plan.stderr
    assert ids[0] in plan.stdout and "no" in plan.stdout
    assert "would replay 1 events as 1 deliveries" in plan.stdout

    dry = hookline("replay", "--status", "dead", "--dry-run", "--config", str(config), cwd=env_cwd)
    assert "would replay 3 events as 3 deliveries" in dry.stdout, dry.stdout + dry.stderr

    done = hookline("replay", "--status", "dead", "--config", str(config), cwd=env_cwd)
    assert done.returncode == 0, done.stderr
    assert "replayed 3 events as 3 new deliveries" in done.stdout

    again = hookline("replay", "--status", "dead", "--dry-run", "--config", str(config),
                     cwd=env_cwd)
    # Each dead letter now has a later delivery (pending, not yet run): none is open, so a
    # second bulk replay sends nothing again.
    assert "would replay 0 events" in again.stdout

    unknown = hookline("replay", "evt_missing", "--config", str(config), cwd=env_cwd)
    assert unknown.returncode == 1 and "no event evt_missing" in unknown.stdout

    nothing = hookline("replay", "--config", str(config), cwd=env_cwd)
    assert nothing.returncode == 2


def test_retry_dry_run_bulk_and_one(tmp_path: Path) -> None:
    import asyncio

    from app.config import load_settings
    from app.store import store_from_url

    config, ids = _seed(tmp_path)
    env_cwd = Path(__file__).parent
    refused = hookline("retry", "--config", str(config), cwd=env_cwd)
    assert refused.returncode == 2
    dry = hookline("retry", "--status", "dead", "--dry-run", "--config", str(config), cwd=env_cwd)
    assert "would retry 3 dead deliveries" in dry.stdout, dry.stdout + dry.stderr
    some = hookline("retry", "--status", "dead", "--handler", "other", "--config", str(config),
                    cwd=env_cwd)
    assert "retried 0 dead deliveries" in some.stdout

    async def delivery_ids() -> list[tuple[str, str]]:
        store = store_from_url(load_settings(config).storage.url)
        await store.open()
        try:
            found = []
            for event_id in ids:
                record = await store.get_event(event_id)
                assert record is not None
                found += [(d.id, d.status) for d in record.deliveries]
            return found
        finally:
            await store.close()

    [(first, _), *_] = asyncio.run(delivery_ids())
    one = hookline("retry", first, "--config", str(config), cwd=env_cwd)
    assert one.returncode == 0 and "retried 1 deliveries" in one.stdout
    twice = hookline("retry", first, "--config", str(config), cwd=env_cwd)
    assert twice.returncode == 1 and "delivery is pending" in twice.stdout
    rest = hookline("retry", "--status", "dead", "--config", str(config), cwd=env_cwd)
    assert "retried 2 dead deliveries" in rest.stdout
    assert {status for _, status in asyncio.run(delivery_ids())} == {"pending"}
    unknown = hookline("retry", "dlv_missing", "--dry-run", "--config", str(config), cwd=env_cwd)
    assert unknown.returncode == 1 and "no such delivery" in unknown.stdout


def test_prune(tmp_path: Path) -> None:
    config, _ = _seed(tmp_path)
    env_cwd = Path(__file__).parent
    kept = hookline("prune", "--older-than", "3650", "--config", str(config), cwd=env_cwd)
    assert kept.returncode == 0 and "pruned 0 events" in kept.stdout
    # The seeded events carry the fake clock's time, weeks before now.
    gone = hookline("prune", "--older-than", "1", "--config", str(config), cwd=env_cwd)
    assert "pruned 3 events older than 1 days" in gone.stdout


def test_events_list_uses_the_api_filters(tmp_path: Path) -> None:
    import json

    config, ids = _seed(tmp_path)
    listed = hookline("events", "list", "--config", str(config), "--status", "failed",
                      "--type", "file.*", "--limit", "2", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    assert [item["id"] for item in page["items"]] == ids[::-1][:2]
    rest = hookline("events", "list", "--config", str(config), "--status", "failed", "--json",
                    "--cursor", page["next_cursor"], "--limit", "2", cwd=tmp_path)
    assert [item["id"] for item in json.loads(rest.stdout)["items"]] == [ids[0]]
    none = hookline("events", "list", "--config", str(config), "--q", "no such text", "--json",
                    cwd=tmp_path)
    assert json.loads(none.stdout)["items"] == []
    table = hookline("events", "list", "--config", str(config), "--limit", "1", cwd=tmp_path)
    assert ids[-1] in table.stdout and "more: --cursor" in table.stderr


def test_backup_copies_a_sqlite_store_into_a_new_file_and_never_overwrites(tmp_path: Path) -> None:
    import sqlite3

    config, ids = _seed(tmp_path)
    copy = tmp_path / "copy.db"
    done = hookline("backup", str(copy), "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(copy) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM events")}
    assert stored == set(ids)
    again = hookline("backup", str(copy), "--config", str(config), cwd=tmp_path)
    assert again.returncode == 1
    assert "exists already" in again.stderr and "Traceback" not in again.stderr


HOSTILE_TYPES = [
    "rich.[/bogus]",  # closing tag with no opening one: rich raises MarkupError
    "file.[bold red][link=https://evil.example/]alarm[/link][/bold red]",
    "file.\x9b2J\u202egnp.exe",  # 8-bit CSI (clear screen), right-to-left override
]
# A type may not hold C0 controls, but a job id is the sender's text as it came.
HOSTILE_JOB = "j\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\\x1b[2J"


def _seed_types(tmp_path: Path, types: list[str]) -> tuple[Path, list[str]]:
    """A config whose one source accepts any type, routed to `log`, and one event per type."""
    import asyncio

    import httpx

    from app.config import load_settings
    from app.main import create_app
    from app.worker import WorkerSettings
    from conftest import FakeClock, standard_body, standard_headers

    config = tmp_path / "hookline.toml"
    config.write_text(f"""
[storage]
url = "sqlite:///{tmp_path / 'cli.db'}"
[sources.partner]
platform = "standard"
unknown_events = "accept"
auth = {{ scheme = "standard_webhooks", secrets = ["whsec_aG9va2xpbmUtdGVzdC1zZWNyZXQtMDEyMzQ1Njc4OQ=="] }}
[[routes]]
match = "*"
handler = "log"
[handlers.log]
use = "log"
""")

    async def seed() -> list[str]:
        clock = FakeClock()
        app = create_app(load_settings(config), clock=clock,
                         worker_settings=WorkerSettings(background=False))
        ids = []
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                for n, event_type in enumerate(types):
                    body = standard_body(event_type, file_id=f"f{n}", job_id=HOSTILE_JOB)
                    r = await client.post("/webhooks/partner", content=body,
                                          headers=standard_headers(body, clock.now(), f"m{n}"))
                    assert r.status_code == 202, r.text
                    ids.append(r.json()["id"])
        return ids

    return config, asyncio.run(seed())


def _assert_inert(output: str) -> None:
    assert "\x1b" not in output and "\x9b" not in output and "\u202e" not in output
    assert "Traceback" not in output and "MarkupError" not in output


def test_event_data_is_printed_as_plain_text(tmp_path: Path) -> None:
    config, ids = _seed_types(tmp_path, HOSTILE_TYPES)
    env = {**os.environ, "COLUMNS": "400"}
    listed = hookline("events", "list", "--config", str(config), cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    _assert_inert(listed.stdout + listed.stderr)
    assert "rich.[/bogus]" in listed.stdout
    assert "red][link=https://evil.example/]alarm[/link][/bold" in listed.stdout  # not obeyed
    assert "\\x9b2J\\u202egnp.exe" in listed.stdout
    assert "j\\x1b]8;;https://evil.example/\\x1b\\click" in listed.stdout

    plan = hookline("replay", *ids, "--plan", "--config", str(config), cwd=tmp_path, env=env)
    assert plan.returncode == 0, plan.stderr
    _assert_inert(plan.stdout + plan.stderr)
    assert "rich.[/bogus]" in plan.stdout and "alarm[/link]" in plan.stdout

    shown = hookline("events", "show", ids[0], "--config", str(config), cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    _assert_inert(shown.stdout)  # JSON escapes every control character

    missing = hookline("replay", "evt_[/x]\x1b[31m", "--config", str(config), cwd=tmp_path,
                       env=env)
    assert missing.returncode == 1
    _assert_inert(missing.stdout + missing.stderr)
    assert "evt_[/x]\\x1b[31m" in missing.stdout


def test_entity_timeline_is_printed_as_plain_text(tmp_path: Path) -> None:
    config, _ = _seed_types(tmp_path, HOSTILE_TYPES[:1])
    env = {**os.environ, "COLUMNS": "400"}
    shown = hookline("files", "show", "f0", "--config", str(config), cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    _assert_inert(shown.stdout + shown.stderr)
    assert "rich.[/bogus]" in shown.stdout


def test_plain_escapes_controls_and_bidi() -> None:
    from app.cli import plain

    assert plain("a\x1b[31mb\x07\x9b\u202e\u2066c\td") == (
        "a\\x1b[31mb\\x07\\x9b\\u202e\\u2066c\\x09d")
    assert plain("ok: é ü 日本 [b]x[/b]") == "ok: é ü 日本 [b]x[/b]"


def test_send_reports_a_failed_request_without_its_headers(tmp_path: Path) -> None:
    secret = "S3CR3T-send-token-5b2e"
    config = tmp_path / "hookline.toml"
    config.write_text(f"""
[sources.fc]
platform = "filecheck"
auth = {{ scheme = "header_token", header = "x-hook-token", secrets_env = "FC_TOKEN" }}
""")
    sample = tmp_path / "event.json"
    sample.write_text("{}")
    import socket

    with socket.socket() as listener:  # accepts, so the request is built and refused locally
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/webhooks/fc?access_token={secret}"
        # A source secret with a line break inside: the HTTP library refuses the header and
        # quotes its value in the error.
        env = {**os.environ, "FC_TOKEN": f"{secret}\nx"}
        run = hookline("send", "fc", str(sample), "--url", url, "--config", str(config),
                       cwd=tmp_path, env=env, timeout=30)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stderr == (f"could not reach http://127.0.0.1:{url.split(':')[2].split('/')[0]}"
                          "/webhooks/fc?access_token=REDACTED: LocalProtocolError calling"
                          " 127.0.0.1\n")
    assert secret not in run.stdout + run.stderr
