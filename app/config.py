"""Typed settings for hookline, loaded from one TOML file plus environment overrides.

Everything an operator can set lives in `Settings`. Loading resolves every `*_env` indirection
(so secrets can stay out of the file), applies `HOOKLINE_<SECTION>__<KEY>` overrides, and turns any
problem into a `ConfigError` listing each bad key path with the reason, so a bad config fails at
start and never later.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import secrets as secrets_module
import tomllib
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from app.auth import PUBLIC_PREFIX
from app.errors import ConfigError
from app.store.urls import sqlite_path
from schemas import PayloadPaths

Scheme = Literal["standard_webhooks", "hmac_sha256", "header_token", "query_token", "none"]
Platform = Literal["alfred", "filecheck", "standard"]

ENV_PREFIX = "HOOKLINE_"
DEFAULT_MAX_BODY = 1024 * 1024


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimit(_Model):
    per_second: float = Field(gt=0)
    burst: int = Field(ge=1)


class ServerSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_format: Literal["text", "json"] = "text"
    intake_queue: int = Field(default=4096, ge=1, description="events waiting for the writer")
    intake_queue_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1,
        description="request bodies, in bytes, of the events waiting for or in the writer")
    batch_max: int = Field(default=256, ge=1, description="events written in one transaction")
    body_timeout_seconds: float = Field(default=10.0, gt=0)
    header_timeout_seconds: float = Field(
        default=10.0, gt=0,
        description="time a connection has to send a request's headers, from its start or "
                    "from the request's first byte")
    max_header_bytes: int = Field(
        default=32 * 1024, ge=1024,
        description="bytes of a request's head (request line and headers); past it, 431")
    max_headers: int = Field(default=100, ge=8, description="header fields of a request")
    max_stored_header_bytes: int = Field(
        default=8 * 1024, ge=1024,
        description="bytes of headers stored with an event; the largest are dropped past it")
    retry_after_seconds: int = Field(default=1, ge=1)
    failed_auth_rate_limit: RateLimit = Field(
        default=RateLimit(per_second=5, burst=50),
        description="requests per source that may fail authentication before further failing "
                    "ones are answered 429; a correctly signed request is never held by it")
    stream_poll_seconds: float = Field(
        default=1.0, gt=0, description="how often a live tail looks for other processes' writes")
    stream_heartbeat_seconds: float = Field(default=15.0, gt=0)
    sse_max_connections: int = Field(
        default=100, ge=1, description="live tails (`/api/stream`) open at once; 503 past it")

    @property
    def on_loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """Whether a listening host is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class StorageSettings(_Model):
    url: str = "sqlite:///hookline.db"

    @model_validator(mode="after")
    def _known_scheme(self) -> StorageSettings:
        if not self.url.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ValueError("url must start with sqlite:// or postgresql://")
        if self.url.startswith("sqlite://") and sqlite_path(self.url) in ("", ":memory:"):
            # The writer and the reader are two connections: each would get a database of its
            # own, and the reader would find no tables.
            raise ValueError("a sqlite:// url needs a file path, as sqlite:///hookline.db")
        return self


class ApiToken(_Model):
    name: str
    token: SecretStr
    scopes: list[Literal["read", "admin"]] = ["read"]


class ApiSettings(_Model):
    tokens: list[ApiToken] = []


class AuthSettings(_Model):
    scheme: Scheme
    secrets: list[SecretStr] = []
    header: str | None = None
    tolerance_seconds: int = Field(default=300, ge=1)

    @model_validator(mode="after")
    def _complete(self) -> AuthSettings:
        if self.scheme != "none" and not self.secrets:
            raise ValueError(f"scheme {self.scheme!r} needs secrets or secrets_env")
        if self.scheme in ("hmac_sha256", "header_token") and not self.header:
            raise ValueError(f"scheme {self.scheme!r} needs header")
        if self.scheme == "standard_webhooks":
            for index, secret in enumerate(self.secrets):
                problem = _standard_secret_problem(secret.get_secret_value())
                if problem:
                    raise ValueError(f"secrets[{index}]: {problem}")
        return self

    @cached_property
    def keys(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The secret values split once: (HMAC secrets and tokens, `whpk_` public keys)."""
        values = [secret.get_secret_value() for secret in self.secrets]
        public = tuple(value for value in values if value.startswith(PUBLIC_PREFIX))
        return tuple(value for value in values if value not in public), public


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not an HTTP header name")
    return value.lower()


HeaderName = Annotated[str, AfterValidator(_header_name)]


# A dotted path into the payload: `action`, `event.kind`, `items.0.id`.
PayloadPath = Annotated[str, Field(pattern=r"^[^.\s]+(\.[^.\s]+)*$", max_length=200)]


class SourceSettings(_Model):
    platform: Platform
    auth: AuthSettings
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY, ge=1)
    unknown_events: Literal["reject", "accept"] = "accept"
    rate_limit: RateLimit | None = None
    stall_after_minutes: float = Field(default=30, gt=0)
    secret_headers: tuple[HeaderName, ...] = Field(
        default=(), description="more header names never stored with this source's events")
    # platform "standard" only: where the type, dedupe key and event time are in the payload.
    type_path: PayloadPath | None = None
    id_path: PayloadPath | None = None
    occurred_at_path: PayloadPath | None = None

    @model_validator(mode="after")
    def _paths_for_standard(self) -> SourceSettings:
        if self.platform != "standard":
            for key in ("type_path", "id_path", "occurred_at_path"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} applies only to platform 'standard'")
        return self

    @cached_property
    def paths(self) -> PayloadPaths:
        """The payload paths the source's parser reads."""
        return PayloadPaths(self.type_path, self.id_path, self.occurred_at_path)


class RouteSettings(_Model):
    match: str = Field(min_length=1)
    handler: str
    source: str | None = None
    where: dict[str, Any] = {}


class HandlerSettings(_Model):
    use: str
    options: dict[str, Any] = {}
    max_attempts: int = Field(default=5, ge=1)
    timeout_seconds: float = Field(default=30, gt=0)
    backoff_base_seconds: float = Field(default=2, gt=0)
    backoff_max_seconds: float = Field(default=3600, gt=0)
    concurrency: int = Field(default=8, ge=1)


class WorkerConfig(_Model):
    concurrency: int = Field(default=64, ge=1, description="deliveries running at once")
    claim_batch: int = Field(default=256, ge=1)
    shutdown_grace_seconds: float = Field(default=10, ge=0)
    sweep_seconds: float = Field(default=5, gt=0)
    lease_margin_seconds: float = Field(default=60, gt=0)


class RejectionSettings(_Model):
    """`[rejections]`: the log of refused webhook requests, bounded in rows, age and rate."""

    enabled: bool = True
    retention_days: float = Field(default=7, gt=0)
    max_rows: int = Field(default=100_000, ge=1, description="oldest deleted first past this")
    body_max_bytes: int = Field(
        default=64 * 1024, ge=0,
        description="of an authenticated request's body kept; the rest is cut, marked truncated")
    flood_per_minute: int = Field(
        default=100, ge=1, description="rejections of one source in a minute kept in full")
    sample_one_in: int = Field(
        default=10, ge=1, description="past flood_per_minute, keep one rejection in this many")
    buffer_rows: int = Field(
        default=1000, ge=1, description="rejections waiting in memory for the next write")
    buffer_bytes: int = Field(
        default=4 * 1024 * 1024, ge=0, description="of kept bodies waiting in memory")
    flush_seconds: float = Field(default=5, gt=0, description="how often waiting rows are written")


class AlertSettings(_Model):
    """`[alerts]`: events hookline raises about itself (source `hookline`)."""

    enabled: bool = True
    quiet_seconds: float = Field(default=300, gt=0, description="one alert per subject per")
    check_seconds: float = Field(default=15, gt=0, description="how often the checks run")
    stalled_seconds: float = Field(
        default=120, gt=0, description="a due delivery unclaimed this long: worker.stalled")
    auth_failing_below: float = Field(
        default=0.5, gt=0, le=1, description="authenticated share of a source's requests")
    auth_failing_window_seconds: int = Field(default=300, ge=60)
    auth_failing_min_requests: int = Field(default=20, ge=1)


RESERVED_SOURCE = "hookline"
"""The source of the events hookline raises itself; no configured source may take the name."""


class Settings(_Model):
    server: ServerSettings = ServerSettings()
    worker: WorkerConfig = WorkerConfig()
    storage: StorageSettings = StorageSettings()
    api: ApiSettings = ApiSettings()
    sources: dict[str, SourceSettings] = {}
    routes: list[RouteSettings] = []
    handlers: dict[str, HandlerSettings] = {}
    retention_days: float = Field(default=30, gt=0)
    rejections: RejectionSettings = RejectionSettings()
    alerts: AlertSettings = AlertSettings()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        problems = consistency_problems(self.model_dump())
        if problems:
            raise ValueError(problems[0])
        return self


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


def consistency_problems(data: Mapping[str, Any]) -> list[str]:
    """The checks across sections (source names, unsigned sources off loopback, routes naming
    undefined handlers or sources) over a config mapping, whatever else is wrong in it."""
    problems: list[str] = []
    host = _table(data, "server").get("host", ServerSettings().host)
    sources = _table(data, "sources")
    for name, source in sources.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            problems.append(f"source name {name!r} may hold only letters, digits, _ and -")
        if name.lower() == RESERVED_SOURCE:
            problems.append(f"source name {name!r} is reserved for hookline's own events")
        scheme = _table(source, "auth").get("scheme") if isinstance(source, Mapping) else None
        if scheme == "none" and isinstance(host, str) and not is_loopback(host):
            problems.append(f"sources.{name}.auth.scheme: 'none' is allowed only on a loopback"
                            f" host, and server.host is {host!r}")
    handlers = _table(data, "handlers")
    routes = data.get("routes")
    for index, route in enumerate(routes if isinstance(routes, list) else []):
        if not isinstance(route, Mapping):
            continue
        handler, source = route.get("handler"), route.get("source")
        if isinstance(handler, str) and handler not in handlers:
            problems.append(f"routes[{index}] names handler {handler!r}, not defined")
        if isinstance(source, str) and source not in sources and source != RESERVED_SOURCE:
            problems.append(f"routes[{index}] names source {source!r}, not defined")
    return problems


_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
ED25519_KEY_BYTES = 32


def _standard_secret_problem(value: str) -> str | None:
    """Why a standard_webhooks secret cannot be used, or None: a `whsec_` (or bare) base64
    HMAC secret, or a `whpk_` base64 Ed25519 public key for `v1a` signatures."""
    if value.startswith("whsk_"):
        return "a whsk_ private key signs; give hookline the sender's whpk_ public key"
    if value.startswith(PUBLIC_PREFIX):
        raw = value.removeprefix(PUBLIC_PREFIX)
        if not _BASE64.fullmatch(raw) or len(_b64decode(raw)) != ED25519_KEY_BYTES:
            return "a whpk_ key must be the base64 of a 32-byte Ed25519 public key"
        return None
    if not _BASE64.fullmatch(value.removeprefix("whsec_")):
        return "must be base64, optionally whsec_ (an HMAC secret) or whpk_ (a public key)"
    return None


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text + "==")
    except (binascii.Error, ValueError):
        return b""


def demo_settings(secret: str | None = None, base: Settings | None = None) -> Settings:
    """`base` (default: the defaults) plus a `demo` Standard Webhooks source routed to the
    `log` handler, for `hookline serve` with no config."""
    secret = secret or new_standard_secret()
    source = SourceSettings(
        platform="standard",
        auth=AuthSettings(scheme="standard_webhooks", secrets=[SecretStr(secret)]),
        unknown_events="accept",
    )
    return with_overrides(base or Settings(), {
        "sources": {"demo": source},
        "routes": [RouteSettings(match="*", source="demo", handler="log")],
        "handlers": {"log": HandlerSettings(use="log")},
    })


def with_overrides(settings: Settings, updates: Mapping[str, Any]) -> Settings:
    """`settings` with top-level keys replaced and tables merged (`{"server": {"host": ...}}`
    sets one key of [server]), validated exactly as a config file is: a command-line value can
    no more open an unsigned source to the network than the file can. ConfigError otherwise."""
    data = settings.model_dump()
    for key, value in updates.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_describe(error) for error in exc.errors()]) from None


def new_standard_secret() -> str:
    """A fresh Standard Webhooks secret (`whsec_` + base64 of 24 random bytes)."""
    import base64

    return "whsec_" + base64.b64encode(secrets_module.token_bytes(24)).decode()


def load_settings(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, resolve and validate a config file; raise ConfigError listing every problem."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{path}: no such file"]) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None
    return settings_from_mapping(raw, environ)


def settings_from_mapping(raw: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    """Validate an already-parsed config mapping against `Settings`."""
    problems: list[str] = []
    data = _apply_overrides(dict(raw), environ, problems)
    data = _resolve_env(data, (), environ, problems)
    if problems:
        raise ConfigError(problems)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_describe(error) for error in exc.errors()]) from None


def _apply_overrides(
    data: dict[str, Any], environ: Mapping[str, str], problems: list[str]
) -> dict[str, Any]:
    # HOOKLINE_SERVER__PORT=9000 sets server.port; values are parsed as TOML when they can be.
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        keys = name.removeprefix(ENV_PREFIX).lower().split("__")
        if keys[0] not in Settings.model_fields or not all(keys):
            continue
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                problems.append(f"{name}: {'.'.join(keys)} is not a table in the config")
                break
            node = child
        else:
            node[keys[-1]] = _parse_scalar(value)
    return data


def _parse_scalar(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _resolve_env(
    node: Any, path: tuple[str | int, ...], environ: Mapping[str, str], problems: list[str],
    stand_in: bool = False,
) -> Any:
    """Replace every `<name>_env = "VAR"` by `<name> = <value of VAR>`, recursively; with
    `stand_in`, an unset VAR gets a well-formed stand-in value instead of being a problem."""
    if isinstance(node, list):
        return [_resolve_env(item, (*path, i), environ, problems, stand_in)
                for i, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(key, str) and key.endswith("_env") and len(key) > 4:
            target = key.removesuffix("_env")
            where = _join((*path, key))
            if not isinstance(value, str):
                problems.append(f"{where}: must name an environment variable")
            elif target in node:
                problems.append(f"{where}: give either {target} or {key}, not both")
            elif value not in environ:
                # A stand-in lets the rest be checked; the missing variable is the problem.
                out[target] = _stand_in(path, target)
                if not stand_in:
                    problems.append(f"{where}: environment variable {value} is not set")
            elif target == "secrets":
                out[target] = [part.strip() for part in environ[value].split(",") if part.strip()]
            else:
                out[target] = environ[value]
            continue
        out[key] = _resolve_env(value, (*path, key), environ, problems, stand_in)
    return out


# What stands for an unset variable, so the rest of the file can be checked: valid as a
# Standard Webhooks secret, an HMAC secret or a token, a storage URL or an outbound URL.
_STAND_IN_SECRET = "whsec_" + base64.b64encode(bytes(24)).decode()


def _stand_in(path: tuple[str | int, ...], target: str) -> Any:
    if target == "secrets":
        return [_STAND_IN_SECRET]
    if path == ("storage",) and target == "url":
        return "postgresql://stand-in/hookline"
    if target.endswith("url"):
        return "https://stand-in.invalid/"
    return _STAND_IN_SECRET


def config_problems(
    path: str | Path, environ: Mapping[str, str] | None = None, no_env: bool = False
) -> list[str]:
    """Every problem of a config file in one pass, ordered by key path: environment problems,
    schema errors, checks across sections and handler options together. With `no_env`, unset
    `*_env` variables are not problems (the file's secrets come from the environment at run
    time); everything else is still checked."""
    from handlers.registry import HandlerLoadError, load_handlers

    environ = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{path}: no such file"]
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return [f"{path}: not valid TOML ({exc})"]
    problems: list[str] = []
    data = _apply_overrides(raw, environ, problems)
    data = _resolve_env(data, (), environ, problems, stand_in=no_env)
    try:
        Settings.model_validate(data)
    except ValidationError as exc:
        problems.extend(_describe(error) for error in exc.errors())
    problems.extend(f"config: {p}" if not _LOCATED.match(p) else p
                    for p in consistency_problems(data))
    usable = {}
    for name, entry in _table(data, "handlers").items():
        # A handler with a bad retry setting still has its `use` and options checked.
        loadable = {k: v for k, v in entry.items() if k in ("use", "options")} \
            if isinstance(entry, Mapping) else entry
        try:
            usable[name] = HandlerSettings.model_validate(loadable)
        except ValidationError:
            continue  # reported above, with its key path
    try:
        load_handlers(usable)
    except HandlerLoadError as exc:
        problems.extend(problem.replace(": Value error, ", ": ", 1) for problem in exc.problems)
    return sorted(dict.fromkeys(problems), key=_path_order)


def _path_order(problem: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key of a problem by its key path, with list indexes in numeric order."""
    where = problem.removeprefix("config: ").split(": ", 1)[0]
    return tuple((0, int(part)) if part.isdigit() else (1, part)
                 for part in re.findall(r"\d+|\D+", where))


_LOCATED = re.compile(r"[A-Za-z_][\w.\[\]-]*: ")


def _describe(error: Any) -> str:
    loc = tuple(part for part in error["loc"] if not str(part).startswith("function-"))
    where = _join(loc) or "config"
    kind = error["type"]
    if kind == "literal_error":
        allowed = error["ctx"]["expected"]
        return f"{where}: must be one of {allowed}"
    if kind == "extra_forbidden":
        return f"{where}: unknown key"
    if kind == "missing":
        return f"{where}: required"
    if kind == "string_pattern_mismatch" and where.endswith("_path"):
        return f"{where}: must be a dotted path into the payload, such as data.file_id"
    message = str(error["msg"]).removeprefix("Value error, ")
    if not loc and _LOCATED.match(message):
        return message  # a check across sections, which names its own key path
    return f"{where}: {message}"


def _join(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
