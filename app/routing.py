"""Pure routing: which handlers one event goes to.

A route matches on the canonical type (a glob such as `alfred.job.*`, `*.failed` or `*`), an
optional source name and an optional `where` filter over the payload. Each `where` entry maps a
dotted path to a condition: a scalar means equality, a list means "one of", and a table states
the operator (`{ eq = ... }`, `{ in = [...] }`, `{ exists = true|false }`, `{ ne = ... }`).
Equality is that of JSON values, so `true` never matches `1`.
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


def _index(part: str) -> int:
    # Only ASCII digits: str.isdigit() also accepts "²", which int() then refuses.
    return int(part) if part.isascii() and part.isdigit() else -1


def lookup(payload: Any, path: str) -> Any:
    """The value at a dotted path (`data.file_id`, `tasks.0.id`), or _MISSING."""
    node = payload
    for part in path.split("."):
        if isinstance(node, Mapping):
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and 0 <= _index(part) < len(node):
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


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: `1 == 1.0`, but `true` is not `1` and `false` is not `0`
    (Python's `==` says they are)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(json_equal, a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[key], b[key]) for key in a)
    return bool(a == b)


def _operator(value: Any, op: str, arg: Any) -> bool:
    if op == "exists":
        return (value is not _MISSING) == bool(arg)
    if value is _MISSING:
        return op == "ne"
    if op == "eq":
        return json_equal(value, arg)
    if op == "ne":
        return not json_equal(value, arg)
    return isinstance(arg, list) and any(json_equal(value, item) for item in arg)


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
