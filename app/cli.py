"""The `hookline` command: serve, check-config, migrate, events, send, schemas.

Each verb is a small function over the same settings, store interface and pure helpers the
server uses; none reaches into private tables or re-implements a rule of the server.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.config import (
    Settings,
    demo_settings,
    load_settings,
    new_standard_secret,
    with_overrides,
)
from app.errors import ConfigError
from app.store import EventFilter, StoreError, store_from_url

DEMO_SECRET_FILE = Path("hookline-demo.secret")


def _settings(path: str | None) -> Settings:
    """The config file's settings, or the demo defaults (whose secret persists in a file)."""
    if path is not None:
        return load_settings(path)
    settings = load_settings(None)
    if settings.sources:
        return settings
    return demo_settings(_demo_secret(), base=settings)


def _demo_secret() -> str:
    if DEMO_SECRET_FILE.exists():
        return DEMO_SECRET_FILE.read_text().strip()
    secret = new_standard_secret()
    DEMO_SECRET_FILE.touch(mode=0o600)
    DEMO_SECRET_FILE.write_text(secret + "\n")
    return secret


def _console() -> Any:
    """A rich console that reads nothing in what it prints as markup, emoji codes or things to
    highlight; wide when writing to a pipe, so ids are never wrapped."""
    from rich.console import Console

    console = Console(markup=False, emoji=False, highlight=False)
    if console.is_terminal:
        return console
    return Console(width=200, markup=False, emoji=False, highlight=False)


# Event data is the senders' text: a type or id may carry terminal escapes (colours, OSC 8
# hyperlinks, cursor moves), 8-bit C1 controls or bidi overrides that reorder what is shown.
# They are printed escaped, as visible text, never passed to the terminal.
_UNPRINTABLE = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x200E, 0x200F, *range(0x202A, 0x202F),
                 *range(0x2066, 0x206A))
}


def plain(value: object) -> str:
    """`value` as text safe to show on a terminal: control and bidi characters escaped."""
    return str(value).translate(_UNPRINTABLE)


def cell(value: object) -> Any:
    """A table cell or line that rich shows literally (never as markup)."""
    from rich.text import Text

    return Text(plain(value))


def serve_settings(args: argparse.Namespace) -> Settings:
    """The settings `serve` runs with: the file's (or the demo's) with --host/--port applied and
    the whole re-validated, so a flag cannot skip a check the file has to pass."""
    settings = _settings(args.config)
    flags = {key: value for key, value in (("host", args.host), ("port", args.port))
             if value is not None}
    return with_overrides(settings, {"server": flags}) if flags else settings


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.logs import configure_logging
    from app.main import create_app
    from app.serving import Protocol, Server

    settings = serve_settings(args)
    server = settings.server
    configure_logging(args.log_format or server.log_format)
    if args.config is None:
        # The one secret ever written to the log: the demo's, so a first run can sign with it.
        logging.getLogger("hookline").info(
            "no --config given; demo source 'demo' (Standard Webhooks) with secret %s, kept in "
            "%s; try: hookline send demo tests/samples/standard/file.processing_failed.json",
            settings.sources["demo"].auth.secrets[0].get_secret_value(),
            DEMO_SECRET_FILE.resolve(),
        )
    app = create_app(settings, role=args.role)
    # Everything built so far lives as long as the process: keep it out of the cyclic
    # collector's scans, and collect less often, so collections stop showing up as tail
    # latency (bench/ingest.py: p99 from ~30 ms to ~16 ms).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    config = uvicorn.Config(
        app,
        host=server.host,
        port=server.port,
        loop="uvloop",
        http=Protocol,
        access_log=False,
        log_config=None,
        proxy_headers=False,  # hookline logs no client addresses, so it needs no proxy rewrite
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    Server(config, app.state.runtime.changes, server.header_timeout_seconds,
           (server.max_header_bytes, server.max_headers)).run()
    return 0



def cmd_check_config(args: argparse.Namespace) -> int:
    from handlers.registry import HandlerLoadError, load_handlers

    try:
        # Handlers too: their options are checked when the server starts, so here as well.
        load_handlers(load_settings(args.file).handlers)
    except (ConfigError, HandlerLoadError) as exc:
        for problem in exc.problems:
            print(plain(problem))
        return 1
    print("ok")
    return 0


async def _migrate(url: str) -> list[int]:
    store = store_from_url(url)
    await store.open()
    try:
        return await store.migrate()
    finally:
        await store.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    asyncio.run(_migrate(settings.storage.url))
    print("schema is up to date")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    import httpx

    from app import auth
    from handlers.headers import transport_error

    settings = _settings(args.config)
    source = settings.sources.get(args.source)
    if source is None:
        print(f"no source named {args.source!r} in the config", file=sys.stderr)
        return 2
    body = Path(args.file).read_bytes()
    headers, query = auth.sign(source.auth, body, time.time(), f"msg_{os.urandom(8).hex()}")
    headers["content-type"] = "application/json"
    url = args.url or f"http://{settings.server.host}:{settings.server.port}/webhooks/{args.source}"
    try:
        response = httpx.post(url, content=body, headers=headers, params=query, timeout=10)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        # The type only: httpx's message may quote a header, and a header may be the token.
        print(f"could not reach {plain(auth.redact_url(url))}: {transport_error(exc)}",
              file=sys.stderr)
        return 1
    print(response.status_code)
    print(plain(response.text))
    return 0 if response.is_success else 1


async def _list_events(settings: Settings, args: argparse.Namespace) -> None:
    from rich.table import Table

    now = time.time()
    filters = EventFilter(
        source=args.source, type=args.type, status=args.status, job_id=args.job_id,
        file_id=args.file_id, since=parse_when(args.since, now) if args.since else None,
        until=parse_when(args.until, now) if args.until else None, q=args.q,
    )
    store = store_from_url(settings.storage.url)
    await store.open()
    try:
        page = await store.list_events(filters, args.limit, args.cursor)
    finally:
        await store.close()
    if args.json:
        print(json.dumps(page.model_dump(mode="json"), indent=2))
        return
    table = Table()
    for column in ("received", "id", "source", "type", "status", "job", "file"):
        table.add_column(column, no_wrap=column in ("received", "id"))
    for item in page.items:
        received = datetime.fromtimestamp(item.received_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(*(cell(value) for value in (
            received, item.id, item.source, item.type, item.status,
            item.job_id or "", item.file_id or "",
        )))
    _console().print(table)
    if page.next_cursor:
        print(f"more: --cursor {plain(page.next_cursor)}", file=sys.stderr)


async def _show_event(settings: Settings, event_id: str) -> int:
    store = store_from_url(settings.storage.url)
    await store.open()
    try:
        record = await store.get_event(event_id)
    finally:
        await store.close()
    if record is None:
        print(f"no event {plain(event_id)}", file=sys.stderr)
        return 1
    print(json.dumps(record.model_dump(mode="json"), indent=2))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    if args.events_verb == "show":
        return asyncio.run(_show_event(settings, args.id))
    asyncio.run(_list_events(settings, args))
    return 0


def parse_when(text: str, now: float) -> float:
    """Unix seconds from `1790000000`, an ISO 8601 time, or an age such as `90s`, `30m`, `2h`, `7d`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from rich.progress import Progress
    from rich.table import Table
    from rich.text import Text

    from app import replay
    from app.routing import compile_routes

    routes = compile_routes(settings.routes)
    handlers = settings.handlers
    now = time.time()
    store = store_from_url(settings.storage.url)
    await store.open()
    console = _console()
    try:
        if args.ids:
            planned = [await replay.plan_event(store, routes, handlers, i, args.handler)
                       for i in args.ids]
        else:
            selection = replay.ReplayFilter(
                source=args.source, type=args.type, status=args.status,
                since=parse_when(args.since, now) if args.since else None,
                until=parse_when(args.until, now) if args.until else None,
                handler=args.handler,
            )
            planned = [p async for p in replay.plan_many(store, routes, handlers, selection)]
        deliveries = sum(len(p.handlers) for p in planned)
        if args.plan:
            table = Table()
            table.add_column("event", no_wrap=True)
            table.add_column("type")
            table.add_column("handlers that would run")
            for p in planned:
                table.add_row(cell(p.event_id), cell(p.event_type),
                              cell(", ".join(p.handlers) or "(no route)"))
            console.print(table)
        if args.dry_run or args.plan:
            console.print(f"would replay {len(planned)} events as {deliveries} deliveries")
            return 0
        with Progress(console=console, transient=False) as progress:
            task = progress.add_task("replaying", total=len(planned))
            for p in planned:
                await replay.apply(store, p, time.time())
                progress.advance(task)
        console.print(f"replayed {len(planned)} events as {deliveries} new deliveries")
        return 0
    except replay.ReplayError as exc:
        console.print(Text(plain(exc), style="red"))
        return 1
    finally:
        await store.close()


def cmd_replay(args: argparse.Namespace) -> int:
    if not args.ids and not (args.type or args.status or args.source or args.since):
        print("name event ids, or select with --type/--status/--source/--since", file=sys.stderr)
        return 2
    return asyncio.run(_replay(_settings(args.config), args))


async def _prune(url: str, before: float) -> int:
    store = store_from_url(url)
    await store.open()
    try:
        return await store.prune(before)
    finally:
        await store.close()


def cmd_prune(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    days = settings.retention_days if args.older_than is None else args.older_than
    pruned = asyncio.run(_prune(settings.storage.url, time.time() - days * 86400))
    print(f"pruned {pruned} events older than {days:g} days")
    return 0


async def _backup(url: str, target: str) -> None:
    store = store_from_url(url)
    await store.open()
    try:
        await store.backup(target)
    finally:
        await store.close()


def cmd_backup(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    try:
        asyncio.run(_backup(settings.storage.url, args.file))
    except StoreError as exc:
        print(f"backup failed: {exc}", file=sys.stderr)
        return 1
    print(f"backed up {settings.storage.url} to {args.file}")
    return 0


async def _entity(settings: Settings, kind: str, entity_id: str) -> dict[str, Any] | None:
    from app.tracking import entity_state

    store = store_from_url(settings.storage.url)
    await store.open()
    try:
        return await entity_state(store, kind, entity_id)  # type: ignore[arg-type]
    finally:
        await store.close()


def cmd_entity(args: argparse.Namespace) -> int:
    from rich.table import Table
    from rich.text import Text

    kind = "job" if args.verb == "jobs" else "file"
    state = asyncio.run(_entity(_settings(args.config), kind, args.id))
    if state is None:
        print(f"no events of {kind} {plain(args.id)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    console = _console()
    done = state["time_to_done"]
    console.print(Text.assemble(
        f"{kind} {plain(args.id)}: ", (plain(state["state"]), "bold"),
        f" (outcome {plain(state['outcome'] or '-')}, upstream retries"
        f" {plain(state['upstream_retries'])}, time to done {'-' if done is None else done} s)",
    ))
    table = Table()
    for column in ("at", "event", "type"):
        table.add_column(column, no_wrap=True)
    for step in state["timeline"]:
        at = datetime.fromtimestamp(step["at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(cell(at), cell(step["id"]), cell(step["type"]))
    console.print(table)
    for anomaly in state["anomalies"]:
        console.print(Text.assemble(("anomaly:", "yellow"), " ", plain(anomaly)))
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from schemas import export_json_schemas

    written = export_json_schemas(Path(args.dir))
    print(f"wrote {len(written)} JSON Schema files to {args.dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hookline", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    serve = verbs.add_parser("serve", help="run the receiver, API and workers")
    serve.add_argument("--config", help="TOML config file (default: demo settings)")
    serve.add_argument("--role", choices=["all", "receiver", "worker"], default="all")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--log-format", choices=["text", "json"])
    serve.set_defaults(func=cmd_serve)

    check = verbs.add_parser("check-config", help="validate a config file")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    migrate = verbs.add_parser("migrate", help="apply pending store migrations")
    migrate.add_argument("--config")
    migrate.set_defaults(func=cmd_migrate)

    send = verbs.add_parser("send", help="sign a sample as SOURCE expects and post it")
    send.add_argument("source")
    send.add_argument("file")
    send.add_argument("--url", help="default: the configured server's /webhooks/SOURCE")
    send.add_argument("--config")
    send.set_defaults(func=cmd_send)

    events = verbs.add_parser("events", help="read the event log")
    events_verbs = events.add_subparsers(dest="events_verb", required=True)
    listing = events_verbs.add_parser("list", help="newest events as a table")
    listing.add_argument("--config")
    listing.add_argument("--source")
    listing.add_argument("--type", help="glob over the canonical type")
    listing.add_argument("--status", help="unrouted, pending, delivered or failed")
    listing.add_argument("--job-id")
    listing.add_argument("--file-id")
    listing.add_argument("--since", help="unix seconds, ISO 8601, or an age: 90s, 30m, 2h, 7d")
    listing.add_argument("--until", help="as --since")
    listing.add_argument("--q", help="substring of the raw body")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--cursor", help="the next page, as printed after the previous one")
    listing.add_argument("--json", action="store_true", help="the API's JSON page")
    show = events_verbs.add_parser("show", help="one event with its deliveries, as JSON")
    show.add_argument("id")
    show.add_argument("--config")
    events.set_defaults(func=cmd_events)

    replay_cmd = verbs.add_parser("replay", help="fresh deliveries for stored events")
    replay_cmd.add_argument("ids", nargs="*", help="event ids (or select with the options)")
    replay_cmd.add_argument("--config")
    replay_cmd.add_argument("--handler", help="only this handler (default: the current routes)")
    replay_cmd.add_argument("--source")
    replay_cmd.add_argument("--type", help="glob over the canonical type")
    replay_cmd.add_argument("--status", help="event status, or 'dead' for dead deliveries")
    replay_cmd.add_argument("--since", help="unix time, ISO 8601, or an age: 30m, 2h, 7d")
    replay_cmd.add_argument("--until")
    replay_cmd.add_argument("--dry-run", action="store_true", help="only count")
    replay_cmd.add_argument("--plan", action="store_true",
                            help="show which handlers would run, run nothing")
    replay_cmd.set_defaults(func=cmd_replay)

    for noun in ("jobs", "files"):
        entity = verbs.add_parser(noun, help=f"lifecycle of one {noun[:-1]}")
        entity_verbs = entity.add_subparsers(dest="entity_verb", required=True)
        show_entity = entity_verbs.add_parser("show", help=f"state and timeline of one {noun[:-1]}")
        show_entity.add_argument("id")
        show_entity.add_argument("--config")
        show_entity.add_argument("--json", action="store_true")
        entity.set_defaults(func=cmd_entity)

    prune = verbs.add_parser("prune", help="delete events past retention")
    prune.add_argument("--config")
    prune.add_argument("--older-than", type=float, help="days (default: retention_days)")
    prune.set_defaults(func=cmd_prune)

    backup = verbs.add_parser("backup", help="copy a SQLite store to a new file while it runs")
    backup.add_argument("file", help="the copy to write (must not exist)")
    backup.add_argument("--config")
    backup.set_defaults(func=cmd_backup)

    schemas = verbs.add_parser("schemas", help="JSON Schemas of every event type")
    schemas_verbs = schemas.add_subparsers(dest="schemas_verb", required=True)
    export = schemas_verbs.add_parser("export", help="write one JSON Schema file per type")
    export.add_argument("dir")
    schemas.set_defaults(func=cmd_schemas)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print("invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {plain(problem)}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"store unavailable: {plain(exc)}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
