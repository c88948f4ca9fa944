"""Run `hookline serve` as a real subprocess on a free port, for end-to-end tests over TCP."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """A running server; its stderr is collected line by line as it is written."""

    def __init__(
        self, args: list[str], cwd: Path, env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> None:
        """`hookline serve --port <free> ARGS`, or `command + ARGS` with the port passed as
        HOOKLINE_SERVER__PORT, as a deployment passes it."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self._ready = threading.Event()
        if command is None:
            argv = [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), *args]
        else:
            argv = [*command, *args]
            env = {**(env or {}), "HOOKLINE_SERVER__PORT": str(self.port)}
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "Uvicorn running on" in line:
                self._ready.set()
        self._ready.set()  # the process ended: wake the waiter, who checks poll()

    def wait_ready(self, timeout: float = 20) -> None:
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.lines))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)


@contextmanager
def running_server(
    args: list[str], cwd: Path, env: dict[str, str] | None = None,
    command: list[str] | None = None,
) -> Iterator[ServerProcess]:
    server = ServerProcess(args, cwd, env, command)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def wait_until(predicate: Callable[[], bool], timeout: float = 20, interval: float = 0.05) -> None:
    """Poll another process's asynchronous progress until `predicate` holds, or fail."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        pause.wait(interval)


class Sink:
    """A local HTTP receiver that records every POST and answers from a script of statuses."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses or [])
        self.lock = threading.Lock()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                with sink.lock:
                    sink.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = sink.statuses.pop(0) if sink.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Sink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self) -> int:
        with self.lock:
            return len(self.requests)
