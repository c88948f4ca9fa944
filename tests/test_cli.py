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


LONG_TYPES = ["alfred.job.exceeded_retries", "alfred.file.extracted_data_create"]


@pytest.mark.parametrize("columns", [80, 120])
def test_tables_fit_the_terminal_with_whole_ids_and_types(tmp_path: Path, columns: int) -> None:
    config, ids = _seed_types(tmp_path, LONG_TYPES)
    env = {**os.environ, "COLUMNS": str(columns)}
    listed = hookline("events", "list", "--config", str(config), cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    # Before: at 80 columns only `received` and `id`, at 120 the type cut to `alfred.job.…`.
    for text in (*ids, *LONG_TYPES):
        assert text in listed.stdout
    assert max(len(line) for line in listed.stdout.splitlines()) <= columns
    if columns == 120:
        assert "received" in listed.stdout and "status" in listed.stdout

    plan = hookline("replay", *ids, "--plan", "--config", str(config), cwd=tmp_path, env=env)
    assert plan.returncode == 0, plan.stderr
    for text in (*ids, *LONG_TYPES):
        assert text in plan.stdout
    assert max(len(line) for line in plan.stdout.splitlines()) <= columns


def test_fit_columns_drops_optional_columns_last_first_and_keeps_the_rest() -> None:
    from app.cli import Column, fit_columns

    columns = [Column("received"), Column("id", keep=True), Column("type", keep=True),
               Column("status"), Column("handlers", fold=True)]
    widths = [19, 36, 30, 9, 40]
    # id + type + handlers (folded to 6) need 36+30+6 + 2*2 = 76; status 9+2 more; received 21.
    assert fit_columns(columns, widths, 80) == [1, 2, 4]
    assert fit_columns(columns, widths, 87) == [1, 2, 3, 4]
    assert fit_columns(columns, widths, 97) == [0, 1, 2, 4]
    assert fit_columns(columns, widths, 108) == [0, 1, 2, 3, 4]
    # Never fewer than the kept ones, however narrow.
    assert fit_columns(columns, widths, 20) == [1, 2, 4]


def _one_line_error(run: subprocess.CompletedProcess[str], code: int, *parts: str) -> None:
    assert run.returncode == code, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if not line.startswith("store: ")]
    assert len(lines) == 1, run.stderr
    for part in parts:
        assert part in lines[0], lines[0]


def test_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    config, _ = _seed(tmp_path)
    base = ("--config", str(config))
    _one_line_error(hookline("events", "list", *base, "--since", "yesterday", cwd=tmp_path), 2,
                    "hookline events list: error:", "--since", "not a time: 'yesterday'",
                    "2h")
    _one_line_error(hookline("events", "list", *base, "--cursor", "garbage", cwd=tmp_path), 2,
                    "hookline events list: error: --cursor")
    _one_line_error(hookline("events", "list", *base, "--status", "bogus", cwd=tmp_path), 2,
                    "'unrouted', 'pending', 'delivered', 'failed'")
    _one_line_error(hookline("replay", *base, "--status", "bogus", cwd=tmp_path), 2,
                    "'failed', 'dead'")
    _one_line_error(hookline("events", "list", *base, "--limit", "0", cwd=tmp_path), 2,
                    "--limit")
    _one_line_error(hookline("prune", *base, "--older-than", "0", cwd=tmp_path), 2,
                    "must be a positive number of days")
    _one_line_error(hookline("prune", *base, "--older-than", "-1", cwd=tmp_path), 2,
                    "must be a positive number of days")
    _one_line_error(hookline("frobnicate", cwd=tmp_path), 2, "hookline: error:", "frobnicate")
    _one_line_error(hookline("send", "nope", "x.json", *base, cwd=tmp_path), 2,
                    "no source named 'nope'", "partner")
    _one_line_error(hookline("replay", *base, cwd=tmp_path), 2, "name event ids")


def test_failures_exit_1_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "hookline.toml"
    config.write_text(UNSIGNED + """
[sources.keys]
platform = "standard"
auth = { scheme = "standard_webhooks", secrets = ["whpk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="] }
""")
    sample = tmp_path / "event.json"
    sample.write_text("{}")
    _one_line_error(hookline("send", "open", "missing.json", "--config", str(config),
                             cwd=tmp_path), 1, "cannot read missing.json")
    # Before: auth.sign's ValueError as a traceback.
    _one_line_error(hookline("send", "keys", str(sample), "--config", str(config),
                             "--url", "http://127.0.0.1:9/", cwd=tmp_path), 1,
                    "cannot sign for source 'keys'", "only whpk_ public keys")
    unreachable = tmp_path / "pg.toml"
    unreachable.write_text('[storage]\nurl = "postgresql://hook:pa55word@127.0.0.1:9/hooks"\n')
    run = hookline("events", "list", "--config", str(unreachable), cwd=tmp_path)
    _one_line_error(run, 1, "store unavailable")
    assert "store: postgresql 127.0.0.1:9/hooks\n" in run.stderr
    assert "pa55word" not in run.stderr


def test_readers_never_create_a_store(tmp_path: Path) -> None:
    config = tmp_path / "hookline.toml"
    config.write_text(UNSIGNED)
    for args in (("events", "list"), ("events", "show", "evt_x"), ("replay", "evt_x"),
                 ("jobs", "show", "j"), ("prune",), ("backup", "copy.db")):
        run = hookline(*args, "--config", str(config), cwd=tmp_path)
        _one_line_error(run, 1, "no SQLite database at unsigned.db", "--config")
        assert run.stderr.startswith("store: sqlite unsigned.db\n")
    # Nor the demo secret, without a config.
    run = hookline("events", "list", cwd=tmp_path)
    _one_line_error(run, 1, "no SQLite database at hookline.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hookline.toml"]


def test_migrate_reports_what_it_applied(tmp_path: Path) -> None:
    import json

    config = tmp_path / "hookline.toml"
    config.write_text(UNSIGNED)
    migrations = Path(__file__).parents[1] / "app" / "store" / "migrations" / "sqlite"
    latest = max(int(path.name[:4]) for path in migrations.glob("*.sql"))
    first = hookline("migrate", "--config", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # Before: "schema is up to date" after applying every migration.
    assert first.stdout == f"applied 0001..{latest:04d}\n"
    assert first.stderr == "store: sqlite unsigned.db\n"
    again = hookline("migrate", "--config", str(config), "--json", cwd=tmp_path)
    assert json.loads(again.stdout) == {"applied": [], "version": latest}
    assert hookline("migrate", "--config", str(config), cwd=tmp_path).stdout == (
        f"schema is up to date at {latest:04d}\n")


def test_migration_report_and_store_description() -> None:
    from app.cli import describe_store, migration_report

    assert migration_report([1, 2, 3, 4, 5, 6], 6) == "applied 0001..0006"
    assert migration_report([6], 6) == "applied 0006"
    assert migration_report([4, 6], 6) == "applied 0004, 0006"
    assert migration_report([], 6) == "schema is up to date at 0006"
    assert describe_store("sqlite:///hookline.db") == "sqlite hookline.db"
    assert describe_store("sqlite:////var/lib/h.db") == "sqlite /var/lib/h.db"
    assert describe_store("postgresql://u:secret@db.internal:5433/hooks?sslmode=require") == (
        "postgresql db.internal:5433/hooks")
    assert describe_store("postgres://u@[::1]/h") == "postgresql [::1]/h"


def test_help_and_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    alone = hookline(cwd=tmp_path)
    assert alone.returncode == 2
    assert alone.stdout.startswith("usage: hookline") and "check-config" in alone.stdout
    for args in (("--version",), ("version",)):
        run = hookline(*args, cwd=tmp_path)
        assert run.returncode == 0 and run.stdout == f"hookline {version('hookline')}\n"
    assert hookline("version", "--json", cwd=tmp_path).stdout.strip() == (
        f'{{\n  "version": "{version("hookline")}"\n}}')


def test_send_url_reads_the_servers_address_and_takes_a_base_url() -> None:
    from app.cli import send_url
    from app.config import settings_from_mapping

    settings = settings_from_mapping({}, {"HOOKLINE_SERVER__PORT": "9123"})
    assert send_url(settings, "demo", None) == "http://127.0.0.1:9123/webhooks/demo"
    wide = settings_from_mapping({"server": {"host": "0.0.0.0"}}, {})
    assert send_url(wide, "a", None) == "http://127.0.0.1:8000/webhooks/a"
    v6 = settings_from_mapping({"server": {"host": "::1", "port": 81}}, {})
    assert send_url(v6, "a", None) == "http://[::1]:81/webhooks/a"
    assert send_url(settings, "a", "http://h:1") == "http://h:1/webhooks/a"
    assert send_url(settings, "a", "http://h:1/") == "http://h:1/webhooks/a"
    assert send_url(settings, "a", "https://h/hooks/") == "https://h/hooks/webhooks/a"
    assert send_url(settings, "a", "http://h/webhooks/b?x=1") == "http://h/webhooks/b?x=1"


def test_send_posts_to_the_port_serve_would_use(tmp_path: Path) -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            seen.append(self.path)
            body = b'{"id": "evt_1", "duplicate": false}'
            self.send_response(202)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        config = tmp_path / "hookline.toml"
        config.write_text(UNSIGNED)
        sample = tmp_path / "event.json"
        sample.write_text('{"type": "x.y", "data": {}}')
        env = {**os.environ, "HOOKLINE_SERVER__PORT": str(port)}
        run = hookline("send", "open", str(sample), "--config", str(config), cwd=tmp_path,
                       env=env, timeout=30)
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("202\n")
        run = hookline("send", "open", str(sample), "--config", str(config), "--json",
                       "--url", f"http://127.0.0.1:{port}", cwd=tmp_path, timeout=30)
        assert json.loads(run.stdout) == {"status": 202,
                                          "body": {"id": "evt_1", "duplicate": False}}
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    assert seen == ["/webhooks/open", "/webhooks/open"]


def test_prune_dry_run_counts_and_json(tmp_path: Path) -> None:
    import json

    config, _ = _seed(tmp_path)
    dry = hookline("prune", "--older-than", "1", "--dry-run", "--config", str(config),
                   cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout == "would prune 3 events older than 1 days\n"
    plan = hookline("replay", "--status", "dead", "--plan", "--json", "--config", str(config),
                    cwd=Path(__file__).parent)
    assert json.loads(plan.stdout)["events"] == 3, plan.stderr
    gone = hookline("prune", "--older-than", "1", "--json", "--config", str(config),
                    cwd=tmp_path)
    assert json.loads(gone.stdout) == {"dry_run": False, "events": 3, "older_than_days": 1.0}


def test_events_list_takes_ages_and_iso_times(tmp_path: Path) -> None:
    import json

    config, _ = _seed(tmp_path)
    base = ("events", "list", "--json", "--config", str(config))
    # The seeded events carry the fake clock's time (2026-09), long before now.
    assert json.loads(hookline(*base, "--since", "2h", cwd=tmp_path).stdout)["items"] == []
    old = json.loads(hookline(*base, "--until", "2h", cwd=tmp_path).stdout)["items"]
    assert len(old) == 3
    iso = json.loads(hookline(*base, "--since", "2020-01-01T00:00:00Z", cwd=tmp_path).stdout)
    assert len(iso["items"]) == 3


def test_an_unexpected_error_is_one_line_unless_debugging(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import app.cli

    def broken(args: object) -> int:
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(app.cli, "cmd_version", broken)
    monkeypatch.delenv("HOOKLINE_DEBUG", raising=False)
    assert app.cli.main(["version"]) == 1
    assert capsys.readouterr().err == (
        "hookline version: failed: RuntimeError: disk on fire\\x0asecond line"
        " (HOOKLINE_DEBUG=1 shows where)\n")
    monkeypatch.setenv("HOOKLINE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="disk on fire"):
        app.cli.main(["version"])


def test_serve_logs_which_store_without_credentials(tmp_path: Path) -> None:
    from server import running_server

    config = tmp_path / "hookline.toml"
    config.write_text(UNSIGNED)
    with running_server(["--config", str(config)], cwd=tmp_path) as server:
        pass
    assert "store: sqlite unsigned.db" in server.output
