"""Pure routing: which handlers one event goes to.

A route matches on the canonical type (a glob such as `alfred.job.*`, `*.failed` or `*`), an
optional source name and an optional `where` filter over the payload. Each `where` entry maps a
dotted path to a condition: a scalar means equality, a list means "one of", and a table states
the operator (`{ eq = ... }`, `{ in = [...] }`, `{ exists = true|false }`, `{ ne = ... }`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_MISSING = object()
OPERATORS = frozenset({"eq", "ne", "in", "exists"})


@dataclass(frozen=True, slots=True)
class Route:
    match: str
    handler: str
    source: str | None = None
    where: tuple[tuple[str, Any], ...] = ()


@lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def lookup(payload: Any, path: str) -> Any:
    """The value at a dotted path (`data.file_id`, `tasks.0.id`), or _MISSING."""
    node = payload
    for part in path.split("."):
        if isinstance(node, Mapping):
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
        if node is _MISSING:
            return _MISSING
    return node


def condition_holds(value: Any, condition: Any) -> bool:
    """Whether a looked-up value (possibly _MISSING) meets one `where` condition."""
    if isinstance(condition, Mapping) and condition and condition.keys() <= OPERATORS:
        return all(_operator(value, op, arg) for op, arg in condition.items())
    if isinstance(condition, list):
        return _operator(value, "in", condition)
    return _operator(value, "eq", condition)


def _operator(value: Any, op: str, arg: Any) -> bool:
    if op == "exists":
        return (value is not _MISSING) == bool(arg)
    if value is _MISSING:
        return op == "ne"
    if op == "eq":
        return bool(value == arg)
    if op == "ne":
        return bool(value != arg)
    return isinstance(arg, list) and value in arg


def route_matches(route: Route, source: str, event_type: str, payload: Any) -> bool:
    if route.source is not None and route.source != source:
        return False
    if not _glob(route.match).match(event_type):
        return False
    return all(condition_holds(lookup(payload, path), cond) for path, cond in route.where)


def handlers_for(
    routes: Sequence[Route], source: str, event_type: str, payload: Any
) -> tuple[str, ...]:
    """The handlers an event goes to, in route order, each once."""
    chosen: dict[str, None] = {}
    for route in routes:
        if route.handler not in chosen and route_matches(route, source, event_type, payload):
            chosen[route.handler] = None
    return tuple(chosen)


def compile_routes(raw: Iterable[Any]) -> tuple[Route, ...]:
    """Routes from config entries (objects with match, handler, source, where)."""
    return tuple(
        Route(r.match, r.handler, r.source, tuple(sorted(r.where.items()))) for r in raw
    )
