"""Settings: defaults, *_env indirection, env overrides and error messages with key paths."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from app.config import (
    ConfigError,
    Settings,
    load_settings,
    settings_from_mapping,
    with_overrides,
)

EXAMPLE = Path(__file__).parents[1] / "config.example.toml"


def problems(raw: dict, environ: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(raw, environ or {})
    return info.value.problems


def test_defaults_need_no_config() -> None:
    settings = load_settings(None, environ={})
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8000)
    assert settings.storage.url == "sqlite:///hookline.db"
    assert settings.retention_days == 30


def test_example_config_is_valid() -> None:
    environ = {
        "ALFRED_TOKEN": "a", "FILECHECK_SECRET": "f", "SLACK_WEBHOOK_URL": "https://x",
        "DCYCLE_TOKEN": "d", "HOOKLINE_DASHBOARD_TOKEN": "t", "HOOKLINE_ADMIN_TOKEN": "adm",
        "PARTNER_WEBHOOK_SECRET": "whsec_QUJDREVGR0g=", "FILECHECK_HOOK_TOKEN": "fh",
        "FILECHECK_API_KEY": "sk_x", "ALFRED_API_KEY": "ak", "AITRONOS_TOKEN": "at",
        "GITHUB_WEBHOOK_SECRET": "gh", "ARCHIVE_WEBHOOK_SECRET": "whsec_QUJDREVGR0g=",
        "SMTP_PASSWORD": "pw",
    }
    settings = load_settings(EXAMPLE, environ)
    assert settings.sources["alfred"].auth.scheme == "query_token"
    assert settings.sources["alfred"].auth.secrets[0].get_secret_value() == "a"
    assert settings.handlers["ops"].options["webhook_url"] == "https://x"
    assert settings.sources["filecheck"].auth.scheme == "header_token"
    assert settings.handlers["filecheck"].options["webhook"]["headers"] == {"x-hook-token": "fh"}


def test_env_indirection_splits_secrets_and_reports_missing_vars() -> None:
    raw = {"sources": {"a": {"platform": "alfred",
                             "auth": {"scheme": "query_token", "secrets_env": "TOK"}}}}
    settings = settings_from_mapping(raw, {"TOK": "one, two"})
    assert [s.get_secret_value() for s in settings.sources["a"].auth.secrets] == ["one", "two"]
    assert problems(raw) == ["sources.a.auth.secrets_env: environment variable TOK is not set"]


def test_env_overrides_set_nested_keys() -> None:
    settings = settings_from_mapping(
        {}, {"HOOKLINE_SERVER__PORT": "9001", "HOOKLINE_STORAGE__URL": "sqlite:///x.db"}
    )
    assert settings.server.port == 9001 and settings.storage.url == "sqlite:///x.db"


def test_errors_name_the_key_path() -> None:
    raw = {
        "server": {"port": 70000, "colour": "red"},
        "sources": {"alfred": {"platform": "alfred", "auth": {"scheme": "magic"}}},
    }
    found = problems(raw)
    assert "server.port: Input should be less than or equal to 65535" in found
    assert "server.colour: unknown key" in found
    assert any(p.startswith("sources.alfred.auth.scheme: must be one of") for p in found)


def test_route_must_name_a_defined_handler() -> None:
    found = problems({"routes": [{"match": "*", "handler": "ops"}]})
    assert found == ["config: routes[0] names handler 'ops', not defined"]


def test_scheme_none_refused_off_loopback() -> None:
    raw = {"server": {"host": "0.0.0.0"},
           "sources": {"x": {"platform": "standard", "auth": {"scheme": "none"}}}}
    assert "allowed only on a loopback host" in problems(raw)[0]
    assert problems(raw)[0].startswith("sources.x.auth.scheme: ")
    loopback = {**raw, "server": {"host": "127.0.0.1"}}
    assert isinstance(settings_from_mapping(loopback, {}), Settings)


def test_overrides_are_validated_like_the_file() -> None:
    raw = {"sources": {"x": {"platform": "standard", "auth": {"scheme": "none"}},
                       "a": {"platform": "alfred",
                             "auth": {"scheme": "query_token", "secrets": ["s3cr3t"]}}}}
    settings = settings_from_mapping(raw, {})
    with pytest.raises(ConfigError) as info:
        with_overrides(settings, {"server": {"host": "0.0.0.0"}})
    assert info.value.problems == [
        "sources.x.auth.scheme: 'none' is allowed only on a loopback host,"
        " and server.host is '0.0.0.0'"]
    with pytest.raises(ConfigError) as info:
        with_overrides(settings, {"server": {"port": 70000}})
    assert info.value.problems == ["server.port: Input should be less than or equal to 65535"]
    moved = with_overrides(settings, {"server": {"host": "::1", "port": 9002}})
    assert (moved.server.host, moved.server.port) == ("::1", 9002)
    assert moved.server.log_format == settings.server.log_format  # other [server] keys kept
    assert moved.sources["a"].auth.secrets[0].get_secret_value() == "s3cr3t"


def test_secrets_never_appear_in_reprs() -> None:
    raw = {"sources": {"a": {"platform": "alfred",
                             "auth": {"scheme": "query_token", "secrets": ["s3cr3t-value"]}}}}
    settings = settings_from_mapping(raw, {})
    assert "s3cr3t-value" not in repr(settings)
    assert "s3cr3t-value" not in settings.model_dump_json()


def test_check_config_cli(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[sources.alfred]\nplatform = "alfred"\nauth = { scheme = "magic" }\n')
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "check-config", str(bad)],
        capture_output=True, text=True, check=False,
    )
    assert run.returncode == 1
    assert run.stdout.startswith("sources.alfred.auth.scheme: must be one of")
    good = tmp_path / "good.toml"
    good.write_text("[server]\nport = 8123\n")
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "check-config", str(good)],
        capture_output=True, text=True, check=False,
    )
    assert (run.returncode, run.stdout) == (0, "ok\n")


def test_readme_recipes_make_a_valid_config() -> None:
    import re

    from handlers.registry import load_handlers

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    recipes = readme.split("## Recipes", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```toml\n(.*?)```", recipes, re.S)
    assert len(blocks) == 4
    raw = tomllib.loads("\n".join(blocks) + _sources_for_recipes())
    environ = {"DCYCLE_TOKEN": "d", "SLACK_WEBHOOK_URL": "https://hooks.example/x",
               "FILECHECK_API_KEY": "sk_x", "FILECHECK_HOOK_TOKEN": "fh",
               "ALFRED_TOKEN": "a", "ALFRED_API_KEY": "ak"}
    settings = settings_from_mapping(raw, environ)
    assert set(load_handlers(settings.handlers)) == {"dcycle", "ops", "filecheck", "alfred"}


def _sources_for_recipes() -> str:
    return """
[sources.partner]
platform = "standard"
auth = { scheme = "standard_webhooks", secrets = ["whsec_QUJDREVGR0g="] }
"""


@pytest.mark.parametrize("url", ["memory://", "sqlite://", "sqlite:///:memory:", "mysql://db/x"])
def test_storage_urls_that_cannot_work_are_refused_at_load(url: str) -> None:
    [problem] = problems({"storage": {"url": url}})
    assert problem.startswith("storage")


WHPK = "whpk_ZlN4eg7dSSqi0moX9hQUk3orrOouK3QVQSlJa248c/g="


def standard_source(**extra: object) -> dict:
    return {"platform": "standard",
            "auth": {"scheme": "standard_webhooks",
                     "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]},
            **extra}


def test_standard_sources_take_public_keys_and_payload_paths() -> None:
    source = standard_source(type_path="action", id_path="hook.0.id", occurred_at_path="at")
    source["auth"]["secrets"].append(WHPK)
    settings = settings_from_mapping({"sources": {"gh": source}}, {})
    paths = settings.sources["gh"].paths
    assert (paths.type, paths.id, paths.occurred_at) == ("action", "hook.0.id", "at")


@pytest.mark.parametrize(("secret", "reason"), [
    ("whpk_abc", "a whpk_ key must be the base64 of a 32-byte Ed25519 public key"),
    ("whpk_" + "A" * 60, "a whpk_ key must be the base64 of a 32-byte Ed25519 public key"),
    ("whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=",
     "a whsk_ private key signs; give hookline the sender's whpk_ public key"),
    ("whsec_not base64!", "must be base64, optionally whsec_ (an HMAC secret) or whpk_"),
])
def test_bad_standard_keys_name_the_secret(secret: str, reason: str) -> None:
    source = standard_source()
    source["auth"]["secrets"].append(secret)
    [problem] = problems({"sources": {"gh": source}})
    assert problem.startswith(f"sources.gh.auth: secrets[1]: {reason}")


def test_payload_paths_are_checked_with_their_key_path() -> None:
    found = problems({"sources": {"gh": standard_source(type_path="a..b", id_path=" x")}})
    assert found == [
        "sources.gh.type_path: must be a dotted path into the payload, such as data.file_id",
        "sources.gh.id_path: must be a dotted path into the payload, such as data.file_id",
    ]
    alfred = {"platform": "alfred", "auth": {"scheme": "query_token", "secrets": ["t"]},
              "occurred_at_path": "event_time"}
    assert problems({"sources": {"alfred": alfred}}) == [
        "sources.alfred: occurred_at_path applies only to platform 'standard'"]


def test_unknown_events_defaults_to_accept() -> None:
    settings = settings_from_mapping({"sources": {"gh": standard_source()}}, {})
    assert settings.sources["gh"].unknown_events == "accept"


def check_config(*args: str, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "check-config", *args], capture_output=True,
        text=True, check=False, env=env, cwd=cwd,
    )


EVERYTHING_WRONG = """
bogus = 1
[server]
port = 99999
[sources.alfred]
platform = "alfred"
auth = { scheme = "query_token", secrets_env = "HOOKLINE_TEST_UNSET_VAR" }
[sources.worse]
platform = "alfred"
auth = { scheme = "magic" }
[[routes]]
match = "*"
handler = "missing"
[[routes]]
match = "*"
handler = "ok"
source = "nosuch"
[handlers.ok]
use = "log"
options = { level = "info", colour = "red" }
[handlers.broken]
use = "no_such_module_for_hookline:thing"
max_attempts = 0
"""


def test_check_config_reports_every_problem_in_one_pass(tmp_path: Path) -> None:
    from app.config import config_problems

    path = tmp_path / "bad.toml"
    path.write_text(EVERYTHING_WRONG)
    found = config_problems(path, environ={})
    # Before: the environment problem alone, then (once fixed) the schema errors, then the
    # routes, then the handlers, one pass at a time.
    assert [problem.split(":")[0] for problem in found] == [
        "bogus",
        "handlers.broken.max_attempts",
        "handlers.broken.use",
        "handlers.ok.options.colour",
        "config",  # routes[0] names handler 'missing'
        "config",  # routes[1] names source 'nosuch'
        "server.port",
        "sources.alfred.auth.secrets_env",
        "sources.worse.auth.scheme",
    ], found
    assert "routes[0] names handler 'missing', not defined" in found[4]
    assert "routes[1] names source 'nosuch', not defined" in found[5]
    assert "HOOKLINE_TEST_UNSET_VAR is not set" in found[7]
    # With --no-env the unset variable is no problem; everything else still is.
    assert config_problems(path, environ={}, no_env=True) == found[:7] + found[8:]

    run = check_config(str(path))
    assert run.returncode == 1
    assert run.stdout.splitlines() == found
    run = check_config("--json", "--no-env", str(path))
    assert run.returncode == 1
    import json

    assert json.loads(run.stdout) == {"ok": False, "problems": found[:7] + found[8:]}


def test_problems_sort_list_indexes_as_numbers() -> None:
    from app.config import consistency_problems

    raw = {"routes": [{"match": "*", "handler": f"h{n}"} for n in range(12)]}
    found = consistency_problems(raw)
    assert len(found) == 12 and found[10].startswith("routes[10]")
    from app.config import _path_order

    assert sorted([f"config: {p}" for p in found[::-1]], key=_path_order)[2] == (
        "config: routes[2] names handler 'h2', not defined")


def test_no_env_checks_a_file_whose_secrets_come_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "prod.toml"
    path.write_text("""
[storage]
url_env = "HOOKLINE_TEST_DATABASE_URL"
[sources.partner]
platform = "standard"
auth = { scheme = "standard_webhooks", secrets_env = "HOOKLINE_TEST_PARTNER_SECRET" }
[[routes]]
match = "*"
handler = "ops"
[handlers.ops]
use = "slack"
options = { webhook_url_env = "HOOKLINE_TEST_SLACK_URL" }
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKLINE_TEST_")}
    strict = check_config(str(path), env=env)
    assert strict.returncode == 1
    assert len(strict.stdout.splitlines()) == 3 and "is not set" in strict.stdout
    relaxed = check_config("--no-env", str(path), env=env)
    assert (relaxed.returncode, relaxed.stdout) == (0, "ok\n")
    # A variable that is set is still checked.
    bad = check_config("--no-env", str(path),
                       env={**env, "HOOKLINE_TEST_PARTNER_SECRET": "not base64!"})
    assert bad.returncode == 1
    assert bad.stdout.startswith("sources.partner.auth: secrets[0]: must be base64")


def test_example_config_passes_check_config_without_its_environment() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_TOKEN", "_SECRET", "_KEY"))}
    run = check_config("--no-env", str(EXAMPLE), env=env, cwd=EXAMPLE.parent)
    assert (run.returncode, run.stdout, run.stderr) == (0, "ok\n", "")


def _option_names() -> tuple[set[str], dict[str, set[str]]]:
    """The option names the code knows: every key of the config models, and each built-in
    handler's options."""
    from pydantic import BaseModel

    from app import config as config_models
    from handlers.registry import BUILTINS, resolve

    keys: set[str] = set()
    for model in vars(config_models).values():
        if isinstance(model, type) and issubclass(model, BaseModel) and model is not BaseModel:
            keys.update(model.model_fields)
    handler_options = {}
    for name in BUILTINS:
        options = getattr(resolve(name), "Options", None)
        handler_options[name] = set(options.model_fields) if options else set()
    return keys, handler_options


def _is_key(name: str, text: str) -> bool:
    """`name` (or `name_env`, `name_path`) set as a TOML key or opening a table, commented out
    or not."""
    name = re.escape(name)
    return (re.search(rf"(?<![\w.\-\"]){name}(_env|_path)?\s*=", text) is not None
            or re.search(rf"^\s*#?\s*\[\[?{name}[.\]]", text, flags=re.MULTILINE) is not None)


def test_example_config_shows_every_option_the_readme_names() -> None:
    """Extracted, not hand-kept: the README's backticked names that are option names of the
    config models or of a built-in handler must each be set in config.example.toml, a handler
    option within the table of a built-in handler that takes it."""
    readme = (EXAMPLE.parent / "README.md").read_text(encoding="utf-8")
    example = EXAMPLE.read_text(encoding="utf-8")
    named = set(re.findall(r"`([a-z][a-z0-9_]*)`", readme))
    keys, handler_options = _option_names()
    missing = sorted(name for name in named & keys if not _is_key(name, example))
    # Split the example at each `use = "..."`: what follows, to the next one, is that handler's.
    parts = re.split(r'^\s*#?\s*use\s*=\s*"([\w:.]+)"', example, flags=re.MULTILINE)
    sections: dict[str, str] = {}
    for use, text in zip(parts[1::2], parts[2::2], strict=True):
        sections[use] = sections.get(use, "") + text
    for name in sorted(named & set().union(*handler_options.values())):
        takers = [handler for handler, options in handler_options.items() if name in options]
        if not any(_is_key(name, sections.get(handler, "")) for handler in takers):
            missing.append(f"{name} (an option of {', '.join(takers)})")
    assert missing == [], missing
    # The extraction finds what it should (a guard against a regex that matches nothing).
    assert {"header_timeout_seconds", "stall_after_minutes", "type_path"} <= named & keys
    assert {"allowed_hosts", "starttls", "partner"} <= named
