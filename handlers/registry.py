"""Resolving and validating handlers at start: built-in names, entry points, "module:attr".

`load_handlers` turns every `[handlers.NAME]` of the config into a `LoadedHandler` (the object,
its validated options and its policy) or raises `HandlerLoadError` listing every problem at
once; registration is all-or-nothing, so a server never starts with half its handlers.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ValidationError

from handlers import Handler

ENTRY_POINT_GROUP = "hookline.handlers"

BUILTINS: dict[str, str] = {
    "log": "handlers.log:LogHandler",
    "forward": "handlers.forward:ForwardHandler",
    "slack": "handlers.slack:SlackHandler",
    "email": "handlers.email:EmailHandler",
    "dcycle_retry": "handlers.dcycle:DcycleRetry",
    "aitronos_retry": "handlers.aitronos:AitronosRetry",
    "filecheck_resubmit": "handlers.filecheck:FilecheckResubmit",
    "alfred_resubmit": "handlers.alfred:AlfredResubmit",
}


class HandlerLoadError(Exception):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class LoadedHandler:
    name: str
    handler: Handler
    options: Any
    settings: Any


def register_builtin(name: str, target: str) -> None:
    """Add a built-in handler name (used by the platform handler modules)."""
    BUILTINS[name] = target


def _import_from_cwd_first(module_name: str) -> Any:
    """Import a module with the working directory first on the path, as uvicorn does: the
    `hookline` script's own directory is on the path, the one it runs from is not."""
    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    finally:
        sys.path.remove(cwd)


def _import(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{target!r} is not of the form 'module:attr'")
    module = _import_from_cwd_first(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def resolve(use: str) -> Any:
    """The object `use =` names: a built-in, an entry point, or module:attr."""
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == use]
    if use in BUILTINS:
        clashing = [ep for ep in found if ep.value != BUILTINS[use]]
        if clashing:
            providers = ", ".join(ep.dist.name if ep.dist else ep.value for ep in clashing)
            raise ValueError(
                f"name clash: {use!r} is a built-in handler and also an entry point of {providers}"
            )
        return _import(BUILTINS[use])
    if len(found) > 1:
        raise ValueError(f"entry point {use!r} is provided by {len(found)} distributions")
    if found:
        return found[0].load()
    if ":" in use:
        return _import(use)
    raise ValueError(f"no built-in handler or entry point named {use!r}")


def _instantiate(obj: Any) -> Any:
    # A class (or factory) is called with no arguments; an object is used as it is.
    if inspect.isclass(obj):
        return obj()
    return obj


def _check(handler: Any) -> str | None:
    handle = getattr(handler, "handle", None)
    if handle is None or not callable(handle):
        return "has no handle(event, ctx) method"
    if not inspect.iscoroutinefunction(handle):
        return "handle must be an async function"
    try:
        inspect.signature(handle).bind(None, None)
    except TypeError:
        return "handle must take (event, ctx)"
    poll = getattr(handler, "poll", None)
    if poll is not None:
        if not callable(poll) or not inspect.iscoroutinefunction(poll):
            return "poll must be an async function"
        try:
            inspect.signature(poll).bind(None, None)
        except TypeError:
            return "poll must take (data, ctx)"
    return None


def _options(handler: Any, raw: Mapping[str, Any]) -> Any:
    model = getattr(handler, "Options", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_validate(dict(raw))
    return dict(raw)


def load_handlers(
    configured: Mapping[str, Any],
    resolver: Callable[[str], Any] = resolve,
) -> dict[str, LoadedHandler]:
    """Load and validate every configured handler, or raise listing all problems."""
    problems: list[str] = []
    loaded: dict[str, LoadedHandler] = {}
    for name, settings in configured.items():
        where = f"handlers.{name}"
        try:
            handler = _instantiate(resolver(settings.use))
        except Exception as exc:  # any import or lookup failure is a config problem
            problems.append(f"{where}.use: cannot load {settings.use!r}: {exc}")
            continue
        problem = _check(handler)
        if problem:
            problems.append(f"{where}.use: {settings.use!r} {problem}")
            continue
        try:
            options = _options(handler, settings.options)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                path = ".".join(str(part) for part in error["loc"])
                problems.append(f"{where}.options.{path}: {error['msg']}")
            continue
        loaded[name] = LoadedHandler(name, handler, options, settings)
    if problems:
        raise HandlerLoadError(problems)
    return loaded
