"""The ingest benchmark's peer: adnanh/webhook, a small Go server that runs a command per hook.

It is configured to do what hookline's ingest does in outline, receive, act, answer: the hook
parses the JSON body, checks a trigger rule on the payload's `type`, passes `data.file_id` to a
trivial command and answers only after the command finished (its output is the response body).
A request that fails the rule answers 400, so a wrong setup shows up as non-2xx responses rather
than as a fast benchmark of nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

EVENT_TYPE = "file.processing_failed"


def ensure_webhook() -> str:
    """The webhook binary, installed from Debian's `webhook` package when missing."""
    found = shutil.which("webhook")
    if found:
        return found
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "webhook"]
    if subprocess.run(install, check=False, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        subprocess.run(install, check=True, capture_output=True)
    found = shutil.which("webhook")
    if not found:
        raise SystemExit("webhook is not installed and could not be installed")
    return found


def version() -> str:
    out = subprocess.run([ensure_webhook(), "-version"], check=False, capture_output=True,
                         text=True)
    return (out.stdout or out.stderr).strip()


def write_hooks(work: Path, source: str) -> Path:
    """hooks.json with one hook at /webhooks/<source>, like hookline's route for a source."""
    command = shutil.which("true") or "/bin/true"
    hooks = [{
        "id": source,
        "execute-command": command,
        "include-command-output-in-response": True,
        "pass-arguments-to-command": [{"source": "payload", "name": "data.file_id"}],
        "trigger-rule": {"match": {
            "type": "value", "value": EVENT_TYPE,
            "parameter": {"source": "payload", "name": "type"},
        }},
        "trigger-rule-mismatch-http-response-code": 400,
    }]
    path = work / "hooks.json"
    path.write_text(json.dumps(hooks, indent=2))
    return path


def command(hooks: Path, port: int) -> list[str]:
    """The webhook command line: 127.0.0.1 only, hooks under /webhooks/ as in hookline."""
    return [ensure_webhook(), "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port),
            "-urlprefix", "webhooks"]
