"""Logging set-up and the one-line-per-request access log.

hookline writes its own access log (uvicorn's is turned off) so that every line carries the
source, canonical type and event id, and so that every credential-like query parameter
(`token`, `access_token`, `api_key`, `signature`... see `app.auth.redact_query`) is redacted
before anything is written. Lines are human-readable by default and JSON with `--log-format json`.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth import redact_query

access_log = logging.getLogger("hookline.access")

_ACCESS_FIELDS = (
    "method", "path", "status", "duration_ms", "source", "type", "event_id", "error",
)


# Built once: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(default=str)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(line)

    def access_line(self, created: float, fields: dict[str, Any]) -> str:
        """The line `format` makes of an access record, made without building the record."""
        line = {"time": round(created, 3), "level": "info", "logger": access_log.name,
                "message": "request"}
        line.update(fields)
        return _ENCODER.encode(line)


# Messages and fields carry callers' text (a URL path, a payload's type): control characters
# are escaped, so no caller can forge a line or hide one.
_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}


def printable(value: object) -> str:
    return str(value).translate(_CONTROL)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(name)s %(message)s")
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        safe = logging.makeLogRecord(record.__dict__)
        safe.msg, safe.args = printable(record.getMessage()), None
        text = super().format(safe)
        if fields:
            text += " " + " ".join(
                f"{k}={printable(v)}" for k, v in fields.items() if v is not None
            )
        return text

    def access_line(self, created: float, fields: dict[str, Any]) -> str:
        """The line `format` makes of an access record, made without building the record."""
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
        return (f"{self._stamp},{int((created - second) * 1000):03d} INFO  {access_log.name} "
                "request " + " ".join(f"{k}={printable(v)}" for k, v in fields.items()
                                      if v is not None))


def configure_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    """Send hookline's logs to stderr in the chosen format.

    Records are formatted and written by a background thread (_Writer), so a slow
    terminal or pipe never holds up a request.
    """
    records: queue.SimpleQueue[Any] = queue.SimpleQueue()
    writer = _Writer(records, sys.stderr, JsonFormatter() if fmt == "json" else TextFormatter())
    writer.start()
    atexit.register(writer.stop)
    # Records need no caller, thread or process details; not gathering them keeps a log call
    # cheap on the request path (the logging HOWTO's "Optimization" switches).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [_QueueHandler(records)]
    root.setLevel(level)
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every outbound request's full URL at INFO, and some URLs are credentials
    # (a Slack incoming-webhook path, a token in a query string).
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # APScheduler logs every tick of every job at INFO: most of a worker's log, saying nothing.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


_STOP = object()


class _Writer:
    """Formats queued records and writes them to the stream on a thread of its own.

    Whatever queued up while the last batch was written goes out in one write and one flush:
    under load that is a few system calls for hundreds of lines, and the thread holds the GIL
    (which the requests need) far less than a line-at-a-time handler would. Access lines arrive
    as (created, fields) tuples and are formatted without building a LogRecord."""

    BATCH = 512

    def __init__(self, records: queue.SimpleQueue[Any], stream: Any,
                 formatter: JsonFormatter | TextFormatter) -> None:
        self._records = records
        self._stream = stream
        self._formatter = formatter
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hookline-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write everything queued so far, then end the thread."""
        if self._thread is not None:
            self._records.put(_STOP)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            items = [self._records.get()]
            while len(items) < self.BATCH:
                try:
                    items.append(self._records.get_nowait())
                except queue.Empty:
                    break
            lines = [self._line(item) for item in items if item is not _STOP]
            if lines:
                self._write("\n".join(lines) + "\n")
            if any(item is _STOP for item in items):
                return

    def _line(self, item: Any) -> str:
        try:
            if isinstance(item, tuple):
                return self._formatter.access_line(*item)
            return self._formatter.format(item)
        except Exception as exc:  # one bad record must not end the log
            return f"hookline: a log record could not be formatted ({type(exc).__name__})"

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr: nothing left to tell
            pass


def _fast_access_sink() -> Any:
    """The listener queue's put, when hookline's own logging is in place and access lines are
    wanted; else None, and access lines go through the logging module as usual."""
    handlers = logging.getLogger().handlers
    if (len(handlers) == 1 and isinstance(handlers[0], _QueueHandler)
            and not access_log.disabled and access_log.isEnabledFor(logging.INFO)
            and not access_log.handlers):
        records: queue.SimpleQueue[Any] = handlers[0].queue  # type: ignore[assignment]
        return records.put
    return None


class _QueueHandler(logging.handlers.QueueHandler):
    # The stock prepare() formats the message on the calling thread; the listener's handler
    # formats anyway, so only the exception text is settled here.
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        return record


class AccessLogMiddleware:
    """Logs one line per HTTP request; endpoints add fields through `scope["state"]`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        fields: dict[str, Any] = {}
        scope.setdefault("state", {})["log"] = fields

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            path = scope["path"]
            query = scope.get("query_string", b"").decode("latin-1")
            if query:
                path += "?" + redact_query(query)
            fields.update(
                method=scope["method"], path=path, status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            ordered = {key: fields.get(key) for key in _ACCESS_FIELDS}
            sink = _fast_access_sink()
            if sink is not None:
                sink((time.time(), ordered))
            else:
                access_log.info("request", extra={"fields": ordered})
