"""What the deployment files in deploy/ would run, run here: no container can be built on a test
machine, so the Dockerfile's install steps go into a fresh venv, and the compose file's services
start with their own command and environment against the local PostgreSQL (a schema of their
own). The checks are what a deployment relies on: the image's entry point and config start, the
roles split the work, environment overrides reach the settings, and the health check passes only
when the store answers."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from standardwebhooks.webhooks import Webhook

from server import running_server, wait_until

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
SECRET = "whsec_" + "c2VjcmV0LWZvci10aGUtZGVwbG95LXRlc3Q="
ADMIN_TOKEN = "deploy-admin-token"


def dockerfile_stages() -> list[dict[str, list[str]]]:
    """Each stage's instructions, continuation lines joined: {"RUN": [...], "COPY": [...], ...}."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[dict[str, list[str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction == "FROM":
            stages.append({})
        stages[-1].setdefault(instruction, []).append(rest.strip())
    return stages


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build stage run in a fresh directory: its COPY lines, then its RUN lines with the
    image's /opt/hookline venv at a temporary path. Returns that venv's bin directory."""
    build, runtime = dockerfile_stages()
    work = tmp_path_factory.mktemp("image")
    src, venv = work / "src", work / "opt-hookline"
    src.mkdir()
    for copy in build["COPY"]:
        *sources, target = shlex.split(copy)
        for source in sources:
            origin = ROOT / source
            destination = src / (target if target != "./" else "") / ("" if target != "./" else source)
            if origin.is_dir():
                shutil.copytree(origin, destination, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(origin, destination)
    for run in build["RUN"]:
        command = run.replace("/opt/hookline", str(venv)).replace("python -m venv", f"{sys.executable} -m venv")
        done = subprocess.run(command, shell=True, cwd=src, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    # The runtime stage copies the venv and the config, and runs as a user without a home of ours.
    assert any("--from=build /opt/hookline /opt/hookline" in line for line in runtime["COPY"])
    assert runtime["USER"] == ["hookline"]
    return venv / "bin"


def runtime_env() -> dict[str, str]:
    """The runtime stage's ENV lines (PATH aside), as a container would see them."""
    env: dict[str, str] = {}
    for line in dockerfile_stages()[1]["ENV"]:
        for pair in shlex.split(line):
            key, _, value = pair.partition("=")
            if key != "PATH":
                env[key] = value
    return env


def entrypoint() -> list[str]:
    return json.loads(dockerfile_stages()[1]["ENTRYPOINT"][0])


def healthcheck() -> list[str]:
    line = dockerfile_stages()[1]["HEALTHCHECK"][0]
    return json.loads(line[line.index("CMD") + 3:].strip())


def compose_services() -> dict[str, dict[str, object]]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]


def service_env(service: dict[str, object], schema_url: str) -> dict[str, str]:
    """A compose service's environment, `${VAR:?...}` filled in and the database host pointed at
    the test's schema."""
    given = {"HOOKLINE_ADMIN_TOKEN": ADMIN_TOKEN, "PARTNER_WEBHOOK_SECRET": SECRET}
    env: dict[str, str] = {}
    for key, value in dict(service["environment"]).items():  # type: ignore[call-overload]
        value = re.sub(r"\$\{(\w+)(:\?[^}]*)?\}", lambda m: given[m.group(1)], str(value))
        env[key] = value
    assert env["HOOKLINE_STORAGE__URL"].startswith("postgresql://hookline:hookline@postgres:5432/")
    env["HOOKLINE_STORAGE__URL"] = schema_url
    env.pop("HOOKLINE_SERVER__PORT")  # each process gets a free port instead
    return env


def signed(body: bytes, msg_id: str) -> dict[str, str]:
    now = time.time()
    from datetime import UTC, datetime

    signature = Webhook(SECRET).sign(msg_id, datetime.fromtimestamp(now, UTC), body.decode())
    return {"content-type": "application/json", "webhook-id": msg_id,
            "webhook-timestamp": str(int(now)), "webhook-signature": signature}


def test_compose_roles_run_from_the_image(image: Path, schema_url: str, tmp_path: Path) -> None:
    services = compose_services()
    assert set(services) == {"postgres", "receiver", "worker"}
    config = tmp_path / "etc-hookline.toml"
    shutil.copy(DEPLOY / "hookline.toml", config)  # COPY deploy/hookline.toml /etc/hookline/...
    command = [str(image / entrypoint()[0]), *entrypoint()[1:]]
    command[command.index("/etc/hookline/hookline.toml")] = str(config)
    path_env = {"PATH": f"{image}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": ""}

    def start(name: str):  # type: ignore[no-untyped-def]
        service = services[name]
        env = {**runtime_env(), **service_env(service, schema_url), **path_env}
        return running_server(list(service["command"]), tmp_path, env, command)  # type: ignore[call-overload]

    with start("receiver") as receiver, start("worker") as worker:
        # The image listens on every interface; the test talks to it over loopback only.
        assert "0.0.0.0" in receiver.output
        for server in (receiver, worker):
            check = subprocess.run(
                [str(image / "python"), *healthcheck()[1:]],
                env={**os.environ, **path_env, "HOOKLINE_SERVER__PORT": str(server.port)},
                capture_output=True, timeout=30,
            )
            assert check.returncode == 0, check.stderr
        body = json.dumps({"type": "file.processing_failed", "timestamp": "2026-12-01T10:00:00Z",
                           "data": {"file_id": "f-1"}}).encode()
        with httpx.Client(timeout=10) as client:
            answer = client.post(f"{receiver.url}/webhooks/partner", content=body,
                                 headers=signed(body, "msg_deploy_1"))
            assert answer.status_code == 202, answer.text
            event_id = answer.json()["id"]
            # Roles: the worker receives nothing; the receiver's API needs the admin token.
            assert client.post(f"{worker.url}/webhooks/partner", content=body,
                               headers=signed(body, "msg_deploy_2")).status_code == 404
            assert client.get(f"{receiver.url}/api/events").status_code == 401
            auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}

            def delivered() -> bool:
                event = client.get(f"{receiver.url}/api/events/{event_id}", headers=auth).json()
                return [d["status"] for d in event["deliveries"]] == ["succeeded"]

            wait_until(delivered, timeout=30)
        assert f"event {event_id}" in worker.output or event_id in worker.output
    # uvicorn re-raises SIGTERM once it has shut down cleanly.
    assert {receiver.proc.returncode, worker.proc.returncode} <= {0, -signal.SIGTERM}


def test_healthcheck_fails_while_the_store_is_unreachable(image: Path, tmp_path: Path) -> None:
    """The same health command fails once the store is gone (its SQLite file removed)."""
    config = tmp_path / "etc-hookline.toml"
    shutil.copy(DEPLOY / "hookline.toml", config)
    command = [str(image / entrypoint()[0]), *entrypoint()[1:]]
    command[command.index("/etc/hookline/hookline.toml")] = str(config)
    env = {**runtime_env(), "HOOKLINE_ADMIN_TOKEN": ADMIN_TOKEN, "PARTNER_WEBHOOK_SECRET": SECRET,
           "HOOKLINE_STORAGE__URL": f"sqlite:///{tmp_path / 'hookline.db'}",
           "PATH": f"{image}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": ""}
    with running_server(["--role", "receiver"], tmp_path, env, command) as server:
        ok = subprocess.run([str(image / "python"), *healthcheck()[1:]], capture_output=True,
                            env={**os.environ, **env, "HOOKLINE_SERVER__PORT": str(server.port)},
                            timeout=30)
        assert ok.returncode == 0, ok.stderr
        (tmp_path / "hookline.db").unlink()
        for suffix in ("-wal", "-shm"):
            (tmp_path / f"hookline.db{suffix}").unlink(missing_ok=True)
        failing = subprocess.run([str(image / "python"), *healthcheck()[1:]], capture_output=True,
                                 env={**os.environ, **env, "HOOKLINE_SERVER__PORT": str(server.port)},
                                 timeout=30)
        assert failing.returncode != 0
