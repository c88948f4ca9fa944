"""The `hookline` command: serve, check-config, migrate, events, rejections, replay, retry, send,
schemas.

Each verb is a small function over the same settings, store interface and pure helpers the
server uses; none reaches into private tables or re-implements a rule of the server.
A wrong command line exits 2, a failure (a missing file, an unreachable store) exits 1, each
with one line on stderr and never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from app.config import (
    Settings,
    demo_settings,
    load_settings,
    new_standard_secret,
    with_overrides,
)
from app.errors import ConfigError
from app.store import EventFilter, Store, StoreError, store_from_url
from app.store.urls import sqlite_path
from app.when import (
    EVENT_STATUSES,
    REPLAY_STATUSES,
    WHEN_HELP,
    BadValue,
)
from app.when import parse_when as _parse_when

DEMO_SECRET_FILE = Path("hookline-demo.secret")


class UsageError(Exception):
    """The command line asks for something that cannot be: exit 2."""


class Failure(Exception):
    """The command could not do what was asked: exit 1."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line naming the command, and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def version() -> str:
    """hookline's version, from the installed package's metadata."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("hookline")
    except PackageNotFoundError:
        return "unknown (not installed)"


def parse_when(text: str, now: float) -> float:
    """Unix seconds, ISO 8601, or an age such as `2h`: the reading the API uses too."""
    return _parse_when(text, now)


def _when_arg(text: str) -> str:
    """An argparse type: refuse a value that is not a time, keep the text (ages count from
    when the command runs)."""
    try:
        _parse_when(text, 0.0)
    except BadValue as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _since(text: str | None, now: float) -> float | None:
    return None if text is None else _parse_when(text, now)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of days, not {text}")
    return value


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"must be a whole number above 0, not {text!r}")
    return int(text)


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def describe_store(url: str) -> str:
    """Which store a URL names, without credentials: `sqlite hookline.db`,
    `postgresql db.internal:5432/hookline`."""
    if url.startswith("sqlite://"):
        return f"sqlite {sqlite_path(url)}"
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"postgresql {host}{port}{parts.path or '/'}"


@contextlib.asynccontextmanager
async def opened_store(settings: Settings, create: bool = False) -> AsyncIterator[Store]:
    """The configured store, opened; says which on stderr. A SQLite file that does not exist is
    an error unless `create` (migrate): reading it would only make an empty database."""
    url = settings.storage.url
    print(f"store: {plain(describe_store(url))}", file=sys.stderr)
    if url.startswith("sqlite://") and not create:
        path = sqlite_path(url)
        if not Path(path).exists():
            raise Failure(
                f"no SQLite database at {path} (from {url}): give the server's config with "
                "--config, or create it with hookline migrate")
    store = store_from_url(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _settings(path: str | None, keep_secret: bool = False) -> Settings:
    """The config file's settings, or the demo defaults (whose secret persists in a file, written
    only by the commands that use it: serve and send)."""
    if path is not None:
        return load_settings(path)
    settings = load_settings(None)
    if settings.sources:
        return settings
    return demo_settings(_demo_secret(keep_secret), base=settings)


def _demo_secret(keep: bool = True) -> str:
    if DEMO_SECRET_FILE.exists():
        return DEMO_SECRET_FILE.read_text().strip()
    secret = new_standard_secret()
    if not keep:
        return secret
    DEMO_SECRET_FILE.touch(mode=0o600)
    DEMO_SECRET_FILE.write_text(secret + "\n")
    return secret


def _console(width: int | None = None) -> Any:
    """A rich console that reads nothing in what it prints as markup, emoji codes or things to
    highlight; as wide as the terminal (or COLUMNS), 200 columns when writing to a pipe, and at
    least `width`, so a table that has to be wider is printed whole rather than cut."""
    from rich.console import Console

    console = Console(markup=False, emoji=False, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=200, markup=False, emoji=False, highlight=False)
    if width is not None and console.width < width:
        console = Console(width=width, markup=False, emoji=False, highlight=False)
    return console


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: `keep` ones (ids, types) are always shown and never cut or folded;
    `fold` ones are shown and wrap inside their cell; the others go, last first, when the
    terminal is too narrow for them."""

    name: str
    keep: bool = False
    fold: bool = False


# Tables have no borders, only two spaces between columns (as `ps` or `docker ps`): at 80
# columns a 36-character event id and a 33-character type then still fit side by side.
def _table_width(widths: Sequence[int]) -> int:
    return sum(widths) + 2 * max(len(widths) - 1, 0)


# The narrowest a folding column is made; it takes whatever room the others leave.
FOLD_WIDTH = 6


def fit_columns(columns: Sequence[Column], widths: Sequence[int], width: int) -> list[int]:
    """Indexes of the columns to show in `width` terminal columns, in their order: every kept
    and folding column, then the others in the order given while they fit whole (a folding
    column counted at its narrowest)."""
    def need(index: int) -> int:
        return min(widths[index], FOLD_WIDTH) if columns[index].fold else widths[index]

    chosen = [i for i, column in enumerate(columns) if column.keep or column.fold]
    for index, column in enumerate(columns):
        if index in chosen:
            continue
        if _table_width([need(i) for i in (*chosen, index)]) <= width:
            chosen.append(index)
    return sorted(chosen)


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> None:
    """`rows` as a table that fits the terminal without cutting a kept column."""
    from rich.table import Table

    widths = [max([len(column.name), *(len(plain(row[i])) for row in rows)])
              for i, column in enumerate(columns)]
    shown = fit_columns(columns, widths, _console().width)
    needed = _table_width([min(widths[i], FOLD_WIDTH) if columns[i].fold else widths[i]
                           for i in shown])
    table = Table(box=None, padding=(0, 1), pad_edge=False)
    for index in shown:
        column = columns[index]
        if column.fold:
            table.add_column(column.name, overflow="fold")
        else:
            table.add_column(column.name, no_wrap=True, min_width=widths[index])
    for row in rows:
        table.add_row(*(cell(row[i]) for i in shown))
    _console(needed).print(table)


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
    settings = _settings(args.config, keep_secret=True)
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
    logging.getLogger("hookline").info("store: %s", describe_store(settings.storage.url))
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
    from app.config import config_problems

    # Handlers too: their options are checked when the server starts, so here as well.
    problems = config_problems(args.file, no_env=args.no_env)
    if args.json:
        _print_json({"ok": not problems, "problems": problems})
    else:
        for problem in problems:
            print(plain(problem))
        if not problems:
            print("ok")
    return 1 if problems else 0


async def _migrate(settings: Settings) -> list[int]:
    async with opened_store(settings, create=True) as store:
        # Opening a store applies what is pending; anything left (none, unless another
        # process raced) is applied here.
        return [*store.applied_migrations, *await store.migrate()]


def latest_migration(url: str) -> int:
    """The newest schema version this hookline has for the URL's backend."""
    from importlib import resources

    backend = "sqlite" if url.startswith("sqlite://") else "postgres"
    folder = resources.files("app.store") / "migrations" / backend
    return max(int(entry.name.split("_", 1)[0]) for entry in folder.iterdir()
               if entry.name.endswith(".sql"))


def migration_report(applied: Sequence[int], latest: int) -> str:
    """`applied 0001..0006`, `applied 0004, 0006`, or `schema is up to date at 0006`."""
    if not applied:
        return f"schema is up to date at {latest:04d}"
    ordered = sorted(applied)
    if len(ordered) > 1 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"applied {ordered[0]:04d}..{ordered[-1]:04d}"
    return "applied " + ", ".join(f"{version:04d}" for version in ordered)


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    applied = asyncio.run(_migrate(settings))
    latest = latest_migration(settings.storage.url)
    if args.json:
        _print_json({"applied": applied, "version": latest})
    else:
        print(migration_report(applied, latest))
    return 0


def send_url(settings: Settings, source: str, url: str | None) -> str:
    """Where `send` posts: the configured server's /webhooks/SOURCE; `url` as given when it
    names a webhook path, or with /webhooks/SOURCE appended when it is a base URL."""
    if url is None:
        host = settings.server.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{settings.server.port}/webhooks/{source}"
    parts = urlsplit(url)
    if "/webhooks/" in parts.path:
        return url
    path = parts.path.rstrip("/") + f"/webhooks/{source}"
    return parts._replace(path=path).geturl()


def cmd_send(args: argparse.Namespace) -> int:
    import httpx

    from app import auth
    from handlers.headers import transport_error

    settings = _settings(args.config, keep_secret=True)
    source = settings.sources.get(args.source)
    if source is None:
        known = ", ".join(sorted(settings.sources)) or "none"
        raise UsageError(f"no source named {plain(repr(args.source))} in the config"
                         f" (sources: {plain(known)})")
    try:
        body = Path(args.file).read_bytes()
    except OSError as exc:
        raise Failure(f"cannot read {plain(args.file)}: {exc.strerror or exc}") from None
    if source.auth.scheme != "none" and source.auth.secrets and not source.auth.keys[0]:
        raise Failure(
            f"cannot sign for source {args.source!r}: it holds only whpk_ public keys, and only"
            " the sender's private key signs; post a request the sender signed instead")
    headers, query = auth.sign(source.auth, body, time.time(), f"msg_{os.urandom(8).hex()}")
    headers["content-type"] = "application/json"
    url = send_url(settings, args.source, args.url)
    try:
        response = httpx.post(url, content=body, headers=headers, params=query, timeout=10)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        # The type only: httpx's message may quote a header, and a header may be the token.
        print(f"could not reach {plain(auth.redact_url(url))}: {transport_error(exc)}",
              file=sys.stderr)
        return 1
    if args.json:
        try:
            answer: object = response.json()
        except ValueError:
            answer = response.text
        _print_json({"status": response.status_code, "body": answer})
    else:
        print(response.status_code)
        print(plain(response.text))
    return 0 if response.is_success else 1


# Received, id and type first; then what matters most when the terminal is narrow.
EVENT_COLUMNS = (Column("received"), Column("id", keep=True), Column("source"),
                 Column("type", keep=True), Column("status"), Column("job"), Column("file"))


async def _list_events(settings: Settings, args: argparse.Namespace) -> None:
    now = time.time()
    filters = EventFilter(
        source=args.source, type=args.type, status=args.status, job_id=args.job_id,
        file_id=args.file_id, since=_since(args.since, now), until=_since(args.until, now),
        q=args.q,
    )
    async with opened_store(settings) as store:
        try:
            page = await store.list_events(filters, args.limit, args.cursor)
        except ValueError:
            raise UsageError("--cursor: not a cursor this store handed out; give the one"
                             " printed after the previous page") from None
    if args.json:
        print(json.dumps(page.model_dump(mode="json"), indent=2))
        return
    rows = []
    for item in page.items:
        received = datetime.fromtimestamp(item.received_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        rows.append((received, item.id, item.source, item.type, item.status,
                     item.job_id or "", item.file_id or ""))
    print_table(EVENT_COLUMNS, rows)
    if page.next_cursor:
        print(f"more: --cursor {plain(page.next_cursor)}", file=sys.stderr)


async def _show_event(settings: Settings, event_id: str) -> int:
    async with opened_store(settings) as store:
        record = await store.get_event(event_id)
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


PLAN_COLUMNS = (Column("event", keep=True), Column("type", keep=True),
                Column("would run", fold=True))


REJECTION_COLUMNS = (Column("received"), Column("id", keep=True), Column("source"),
                     Column("code", keep=True), Column("status"), Column("message", fold=True),
                     Column("remote"))


async def _list_rejections(settings: Settings, args: argparse.Namespace) -> None:
    from app.store.rejections import RejectionFilter

    now = time.time()
    filters = RejectionFilter(source=args.source, code=args.code,
                              since=_since(args.since, now), until=_since(args.until, now))
    async with opened_store(settings) as store:
        try:
            page = await store.list_rejections(filters, args.limit, args.cursor)
        except ValueError:
            raise UsageError("--cursor: not a cursor this store handed out; give the one"
                             " printed after the previous page") from None
    if args.json:
        print(json.dumps(page.model_dump(mode="json"), indent=2))
        return
    rows = []
    for item in page.items:
        received = datetime.fromtimestamp(item.received_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        source = item.source if item.known else f"{item.source} (unknown)"
        rows.append((received, item.id, source, item.code, str(item.status), item.message,
                     item.remote or ""))
    print_table(REJECTION_COLUMNS, rows)
    if page.next_cursor:
        print(f"more: --cursor {plain(page.next_cursor)}", file=sys.stderr)


async def _show_rejection(settings: Settings, rejection_id: str) -> int:
    async with opened_store(settings) as store:
        record = await store.get_rejection(rejection_id)
    if record is None:
        raise Failure(f"no rejection {plain(rejection_id)}")
    print(json.dumps(record.model_dump(mode="json"), indent=2))
    return 0


def cmd_rejections(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    if args.rejections_verb == "show":
        return asyncio.run(_show_rejection(settings, args.id))
    asyncio.run(_list_rejections(settings, args))
    return 0


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from rich.progress import Progress
    from rich.text import Text

    from app import replay
    from app.routing import compile_routes

    routes = compile_routes(settings.routes)
    handlers = settings.handlers
    now = time.time()
    console = _console()
    async with opened_store(settings) as store:
        try:
            if args.ids:
                planned = [await replay.plan_event(store, routes, handlers, i, args.handler)
                           for i in args.ids]
            else:
                selection = replay.ReplayFilter(
                    source=args.source, type=args.type, status=args.status,
                    since=_since(args.since, now), until=_since(args.until, now),
                    handler=args.handler,
                )
                planned = [p async for p in replay.plan_many(store, routes, handlers, selection)]
        except replay.ReplayError as exc:
            console.print(Text(plain(exc), style="red"))
            return 1
        deliveries = sum(len(p.handlers) for p in planned)
        dry = args.dry_run or args.plan
        if args.json and dry:
            _print_json({"dry_run": True, "events": len(planned), "deliveries": deliveries,
                         "plan": [{"event_id": p.event_id, "type": p.event_type,
                                   "handlers": p.handlers} for p in planned]})
            return 0
        if args.plan:
            print_table(PLAN_COLUMNS, [(p.event_id, p.event_type,
                                        ", ".join(p.handlers) or "(no route)") for p in planned])
        if dry:
            console.print(f"would replay {len(planned)} events as {deliveries} deliveries")
            return 0
        ids: list[str] = []
        with Progress(console=console, disable=args.json) as progress:
            task = progress.add_task("replaying", total=len(planned))
            for p in planned:
                ids.extend(await replay.apply(store, p, time.time()))
                progress.advance(task)
    if args.json:
        _print_json({"dry_run": False, "events": len(planned), "deliveries": len(ids)})
    else:
        console.print(f"replayed {len(planned)} events as {deliveries} new deliveries")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    if not args.ids and not (args.type or args.status or args.source or args.since):
        raise UsageError("name event ids, or select with --type/--status/--source/--since")
    return asyncio.run(_replay(_settings(args.config), args))


async def _retry(settings: Settings, args: argparse.Namespace) -> int:
    from rich.text import Text

    from app import dead_letters
    from app.errors import HooklineError
    from app.store import DeadFilter

    now = time.time()
    console = _console()
    async with opened_store(settings) as store:
        try:
            if args.ids:
                for delivery_id in args.ids:
                    await dead_letters.retry_one(store, delivery_id, time.time(), args.dry_run)
                count, what = len(args.ids), "deliveries"
            else:
                filters = DeadFilter(
                    handler=args.handler, source=args.source, type=args.type,
                    since=_since(args.since, now), until=_since(args.until, now),
                )
                report = await dead_letters.retry_many(store, filters, now, args.dry_run)
                count, what = report.deliveries, "dead deliveries"
        except HooklineError as exc:
            console.print(Text(plain(exc), style="red"))
            return 1
    if args.json:
        _print_json({"dry_run": args.dry_run, "deliveries": count})
    else:
        console.print(f"{'would retry' if args.dry_run else 'retried'} {count} {what}")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    if not args.ids and args.status != "dead":
        raise UsageError("name delivery ids, or select dead deliveries with --status dead")
    return asyncio.run(_retry(_settings(args.config), args))


async def _count_before(store: Store, before: float) -> int:
    """How many events `prune(before)` would delete, counted a page at a time."""
    count, cursor = 0, None
    while True:
        page = await store.list_events(EventFilter(until=before), 500, cursor)
        count += len(page.items)
        if page.next_cursor is None:
            return count
        cursor = page.next_cursor


async def _prune(settings: Settings, before: float, dry_run: bool) -> int:
    async with opened_store(settings) as store:
        if dry_run:
            return await _count_before(store, before)
        return await store.prune(before)


def cmd_prune(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    days = settings.retention_days if args.older_than is None else args.older_than
    count = asyncio.run(_prune(settings, time.time() - days * 86400, args.dry_run))
    if args.json:
        _print_json({"dry_run": args.dry_run, "events": count, "older_than_days": days})
    elif args.dry_run:
        print(f"would prune {count} events older than {days:g} days")
    else:
        print(f"pruned {count} events older than {days:g} days")
    return 0


async def _backup(settings: Settings, target: str) -> None:
    async with opened_store(settings) as store:
        await store.backup(target)


def cmd_backup(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    try:
        asyncio.run(_backup(settings, args.file))
    except StoreError as exc:
        print(f"backup failed: {plain(exc)}", file=sys.stderr)
        return 1
    print(f"backed up {plain(describe_store(settings.storage.url))} to {plain(args.file)}")
    return 0


async def _entity(settings: Settings, kind: str, entity_id: str) -> dict[str, Any] | None:
    from app.tracking import entity_state

    async with opened_store(settings) as store:
        return await entity_state(store, kind, entity_id)  # type: ignore[arg-type]


TIMELINE_COLUMNS = (Column("at"), Column("event", keep=True), Column("type", keep=True))


def cmd_entity(args: argparse.Namespace) -> int:
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
    print_table(TIMELINE_COLUMNS, [
        (datetime.fromtimestamp(step["at"], UTC).strftime("%Y-%m-%d %H:%M:%S"), step["id"],
         step["type"]) for step in state["timeline"]])
    for anomaly in state["anomalies"]:
        console.print(Text.assemble(("anomaly:", "yellow"), " ", plain(anomaly)))
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from schemas import export_json_schemas

    try:
        written = export_json_schemas(Path(args.dir))
    except OSError as exc:
        raise Failure(f"cannot write to {plain(args.dir)}: {exc.strerror or exc}") from None
    print(f"wrote {len(written)} JSON Schema files to {plain(args.dir)}")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    if args.json:
        _print_json({"version": version()})
    else:
        print(f"hookline {version()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hookline", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hookline {version()}")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND")
    json_help = "print JSON, for scripts"

    serve = verbs.add_parser("serve", help="run the receiver, API and workers")
    serve.add_argument("--config", help="TOML config file (default: demo settings)")
    serve.add_argument("--role", choices=["all", "receiver", "worker"], default="all")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--log-format", choices=["text", "json"])
    serve.set_defaults(func=cmd_serve)

    check = verbs.add_parser("check-config", help="validate a config file, every problem at once")
    check.add_argument("file")
    check.add_argument("--no-env", action="store_true",
                       help="secrets come from the environment at run time: unset *_env"
                            " variables are not problems")
    check.add_argument("--json", action="store_true", help=json_help)
    check.set_defaults(func=cmd_check_config)

    migrate = verbs.add_parser("migrate", help="create the store or apply pending migrations")
    migrate.add_argument("--config")
    migrate.add_argument("--json", action="store_true", help=json_help)
    migrate.set_defaults(func=cmd_migrate)

    send = verbs.add_parser("send", help="sign a sample as SOURCE expects and post it")
    send.add_argument("source")
    send.add_argument("file")
    send.add_argument("--url", help="a base URL (http://host:port, /webhooks/SOURCE is added) or"
                                    " a full webhook URL; default: the configured server's")
    send.add_argument("--config")
    send.add_argument("--json", action="store_true", help=json_help)
    send.set_defaults(func=cmd_send)

    events = verbs.add_parser("events", help="read the event log")
    events_verbs = events.add_subparsers(dest="events_verb", required=True, metavar="list|show")
    listing = events_verbs.add_parser("list", help="newest events as a table")
    listing.add_argument("--config")
    listing.add_argument("--source")
    listing.add_argument("--type", help="glob over the canonical type")
    listing.add_argument("--status", choices=EVENT_STATUSES)
    listing.add_argument("--job-id")
    listing.add_argument("--file-id")
    listing.add_argument("--since", type=_when_arg, help=WHEN_HELP)
    listing.add_argument("--until", type=_when_arg, help="as --since")
    listing.add_argument("--q", help="substring of the raw body")
    listing.add_argument("--limit", type=_positive_int, default=20)
    listing.add_argument("--cursor", help="the next page, as printed after the previous one")
    listing.add_argument("--json", action="store_true", help="the API's JSON page")
    show = events_verbs.add_parser("show", help="one event with its deliveries, as JSON")
    show.add_argument("id")
    show.add_argument("--config")
    show.add_argument("--json", action="store_true", help="the default: JSON")
    events.set_defaults(func=cmd_events)

    rejections = verbs.add_parser("rejections", help="read the log of refused webhook requests")
    rejections_verbs = rejections.add_subparsers(dest="rejections_verb", required=True)
    rejected = rejections_verbs.add_parser("list", help="newest refused requests as a table")
    rejected.add_argument("--config")
    rejected.add_argument("--source", help="a source's name, or the unknown name requests used")
    rejected.add_argument("--code", help="error code: unauthorized, schema_invalid, ...")
    rejected.add_argument("--since", help="unix seconds, ISO 8601, or an age: 90s, 30m, 2h, 7d")
    rejected.add_argument("--until", help="as --since")
    rejected.add_argument("--limit", type=int, default=20)
    rejected.add_argument("--cursor", help="the next page, as printed after the previous one")
    rejected.add_argument("--json", action="store_true", help="the API's JSON page")
    show_rejection = rejections_verbs.add_parser(
        "show", help="one refused request with its field errors, headers and body, as JSON")
    show_rejection.add_argument("id")
    show_rejection.add_argument("--config")
    rejections.set_defaults(func=cmd_rejections)

    replay_cmd = verbs.add_parser("replay", help="fresh deliveries for stored events")
    replay_cmd.add_argument("ids", nargs="*", help="event ids (or select with the options)")
    replay_cmd.add_argument("--config")
    replay_cmd.add_argument("--handler", help="only this handler (default: the current routes)")
    replay_cmd.add_argument("--source")
    replay_cmd.add_argument("--type", help="glob over the canonical type")
    replay_cmd.add_argument("--status", choices=REPLAY_STATUSES,
                            help="event status, or 'dead' for dead deliveries")
    replay_cmd.add_argument("--since", type=_when_arg, help=WHEN_HELP)
    replay_cmd.add_argument("--until", type=_when_arg, help="as --since")
    replay_cmd.add_argument("--dry-run", action="store_true", help="only count")
    replay_cmd.add_argument("--plan", action="store_true",
                            help="show which handlers would run, run nothing")
    replay_cmd.add_argument("--json", action="store_true", help=json_help)
    replay_cmd.set_defaults(func=cmd_replay)

    retry_cmd = verbs.add_parser(
        "retry", help="run dead deliveries again: the same delivery, its history kept")
    retry_cmd.add_argument("ids", nargs="*", help="delivery ids (or select with the options)")
    retry_cmd.add_argument("--config")
    retry_cmd.add_argument("--status", choices=["dead"], help="select the open dead letters")
    retry_cmd.add_argument("--handler")
    retry_cmd.add_argument("--source")
    retry_cmd.add_argument("--type", help="glob over the event's canonical type")
    retry_cmd.add_argument("--since", type=_when_arg, help=WHEN_HELP)
    retry_cmd.add_argument("--until", type=_when_arg, help="as --since")
    retry_cmd.add_argument("--dry-run", action="store_true", help="only count")
    retry_cmd.add_argument("--json", action="store_true", help=json_help)
    retry_cmd.set_defaults(func=cmd_retry)

    for noun in ("jobs", "files"):
        entity = verbs.add_parser(noun, help=f"lifecycle of one {noun[:-1]}")
        entity_verbs = entity.add_subparsers(dest="entity_verb", required=True, metavar="show")
        show_entity = entity_verbs.add_parser("show", help=f"state and timeline of one {noun[:-1]}")
        show_entity.add_argument("id")
        show_entity.add_argument("--config")
        show_entity.add_argument("--json", action="store_true", help=json_help)
        entity.set_defaults(func=cmd_entity)

    prune = verbs.add_parser("prune", help="delete events past retention")
    prune.add_argument("--config")
    prune.add_argument("--older-than", type=_positive, metavar="DAYS",
                       help="days, above 0 (default: retention_days)")
    prune.add_argument("--dry-run", action="store_true", help="only count what would go")
    prune.add_argument("--json", action="store_true", help=json_help)
    prune.set_defaults(func=cmd_prune)

    backup = verbs.add_parser("backup", help="copy a SQLite store to a new file while it runs")
    backup.add_argument("file", help="the copy to write (must not exist)")
    backup.add_argument("--config")
    backup.set_defaults(func=cmd_backup)

    schemas = verbs.add_parser("schemas", help="JSON Schemas of every event type")
    schemas_verbs = schemas.add_subparsers(dest="schemas_verb", required=True, metavar="export")
    export = schemas_verbs.add_parser("export", help="write one JSON Schema file per type")
    export.add_argument("dir")
    schemas.set_defaults(func=cmd_schemas)

    version_cmd = verbs.add_parser("version", help="print hookline's version")
    version_cmd.add_argument("--json", action="store_true", help=json_help)
    version_cmd.set_defaults(func=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; `hookline` alone prints the help and exits 2, as any usage error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    prog = " ".join(["hookline", args.verb, *(
        getattr(args, sub) for sub in ("events_verb", "entity_verb", "schemas_verb")
        if getattr(args, sub, None))])
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"{prog}: error: {exc} (see {prog} --help)", file=sys.stderr)
        return 2
    except Failure as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print("invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {plain(problem)}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"store unavailable: {plain(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a command never ends in a traceback
        if os.environ.get("HOOKLINE_DEBUG"):
            raise
        print(f"{prog}: failed: {type(exc).__name__}: {plain(exc)} (HOOKLINE_DEBUG=1 shows"
              " where)", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
