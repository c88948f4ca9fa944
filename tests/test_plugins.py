"""Third-party handlers installed for real with pip and found through the entry-point group."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from app.config import HandlerSettings, settings_from_mapping
from app.main import create_app
from app.worker import WorkerSettings
from handlers.forward import ForwardHandler
from handlers.log import LogHandler
from handlers.registry import ENTRY_POINT_GROUP, HandlerLoadError, load_handlers, resolve

from conftest import FakeClock, base_config, standard_body, standard_headers

PLUGINS = Path(__file__).parent / "plugins"


def pip_install(dist: str, workdir: Path) -> Path:
    """Install the plugin distribution `dist` into its own target directory; return it."""
    source = workdir / dist
    shutil.copytree(PLUGINS / dist, source)
    site = workdir / f"{dist}-site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-input",
         "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return site


@pytest.fixture(scope="module")
def echo_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pip_install("hookline-echo", tmp_path_factory.mktemp("echo"))


@pytest.fixture(scope="module")
def clash_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pip_install("hookline-clash", tmp_path_factory.mktemp("clash"))


def _on_path(site: Path, module: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.modules.pop(module, None)


@pytest.fixture
def echo_installed(echo_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from _on_path(echo_site, "hookline_echo", monkeypatch)


@pytest.fixture
def clash_installed(clash_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from _on_path(clash_site, "hookline_clash", monkeypatch)


def echo_module() -> ModuleType:
    return importlib.import_module("hookline_echo")


def test_echo_is_unknown_until_installed() -> None:
    with pytest.raises(ValueError, match="no built-in handler or entry point named 'echo'"):
        resolve("echo")


def test_resolve_finds_the_installed_entry_point(echo_installed: None) -> None:
    [ep] = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == "echo"]
    assert ep.dist is not None and ep.dist.name == "hookline-echo"
    assert ep.value == "hookline_echo:EchoHandler"
    assert resolve("echo") is echo_module().EchoHandler
    loaded = load_handlers({"e": HandlerSettings(use="echo")})
    assert loaded["e"].handler.name == "echo"


async def test_installed_plugin_runs_through_the_app(
    echo_installed: None, tmp_path: Path, clock: FakeClock
) -> None:
    config = base_config(tmp_path / "plugins.db")
    config["handlers"] = {"e": {"use": "echo"}}
    config["routes"] = [{"match": "*", "handler": "e"}]
    app = create_app(
        settings_from_mapping(config, {}), clock=clock,
        worker_settings=WorkerSettings(background=False),
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            body = standard_body()
            posted = await client.post(
                "/webhooks/partner", content=body, headers=standard_headers(body, clock.now())
            )
            assert posted.status_code == 202, posted.text
            event_id = posted.json()["id"]
            assert echo_module().seen == []
            assert await app.state.runtime.worker.run_once() == 1
            event = (await client.get(f"/api/events/{event_id}")).json()
    assert echo_module().seen == [event_id]
    [delivery] = event["deliveries"]
    assert delivery["handler"] == "e" and delivery["status"] == "succeeded"


def test_entry_point_clashing_with_a_builtin_is_reported(clash_installed: None) -> None:
    with pytest.raises(ValueError, match="name clash: 'log' is a built-in handler") as info:
        resolve("log")
    assert "hookline-clash" in str(info.value)
    with pytest.raises(HandlerLoadError) as load_error:
        load_handlers({"audit": HandlerSettings(use="log"),
                       "out": HandlerSettings(use="forward", options={"url": "http://r.example"})})
    [problem] = load_error.value.problems
    assert problem.startswith("handlers.audit.use: ")
    assert "name clash" in problem and "hookline-clash" in problem
    assert resolve("forward") is ForwardHandler


def test_builtin_resolves_without_a_clashing_plugin(echo_installed: None) -> None:
    assert resolve("log") is LogHandler


def test_a_module_attr_handler_is_found_in_the_directory_hookline_runs_from(tmp_path: Path) -> None:
    """The console script's own directory is on sys.path, the working directory is not: a plugin
    beside the config must still load, as `uvicorn my_app:app` finds my_app."""
    (tmp_path / "my_ticket_plugin.py").write_text(
        "class Ticket:\n"
        "    name = \"ticket\"\n"
        "    async def handle(self, event, ctx):\n"
        "        return None\n"
    )
    config = tmp_path / "hookline.toml"
    config.write_text(
        '[handlers.ticket]\nuse = "my_ticket_plugin:Ticket"\n'
        '[[routes]]\nmatch = "*"\nhandler = "ticket"\n'
    )
    script = Path(sys.executable).parent / "hookline"
    checked = subprocess.run([str(script), "check-config", str(config)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "my_ticket_plugin" not in sys.modules  # the test process never imported it
