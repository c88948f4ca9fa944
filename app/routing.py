"""Pure routing: which handlers one event goes to.

A route matches on the canonical type (a glob such as `alfred.job.*`, `*.failed` or `*`), an
optional source name and an optional `where` filter over the payload. Each `where` entry maps a
dotted path to a condition: a scalar means equality, a list means "one of", and a table states
the operator (`{ eq = ... }`, `{ in = [...] }`, `{ exists = true|false }`, `{ ne = ... }`).
Equality is that of JSON values, so `true` never matches `1`.

Conditions see the event as its schema validated it, whatever the sender's spelling: Alfred's
`"retries": "1"` is the number 1 and `"exceeded_retries": "false"` the boolean false, and a
timestamp is a datetime, equal to a config value (TOML datetime or ISO 8601 text) naming the
same instant. Paths the model does not know (extra fields) read the raw payload. The validated
view is built once per event, and only when a route with `where` fits its source and type.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from schemas import paths

_MISSING: Any = object()
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
    return paths.lookup(payload, path, _MISSING)


def condition_holds(value: Any, condition: Any) -> bool:
    """Whether a looked-up value (possibly _MISSING) meets one `where` condition."""
    if isinstance(condition, Mapping) and condition and condition.keys() <= OPERATORS:
        return all(_operator(value, op, arg) for op, arg in condition.items())
    if isinstance(condition, list):
        return _operator(value, "in", condition)
    return _operator(value, "eq", condition)


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: `1 == 1.0`, but `true` is not `1` and `false` is not `0`
    (Python's `==` says they are). A datetime equals the same instant, given as a datetime or
    as ISO 8601 text; one without a zone is UTC."""
    if isinstance(a, datetime) or isinstance(b, datetime):
        instant = _instant(a)
        return instant is not None and instant == _instant(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(json_equal, a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[key], b[key]) for key in a)
    return bool(a == b)


def _instant(value: Any) -> float | None:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


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


def validated_view(model: Any) -> Any:
    """A parsed event's model as plain values (python mode: numbers, booleans, datetimes),
    keyed by the payload's own field names; only the fields the payload set."""
    dump = getattr(model, "model_dump", None)
    if dump is None:
        return None
    return dump(mode="python", by_alias=True, exclude_unset=True)


class _Fields:
    """Where `where` paths are read: the validated view first (dumped on first use), then the
    raw payload for what the model does not have."""

    __slots__ = ("model", "payload", "view")

    def __init__(self, payload: Any, model: Any) -> None:
        self.payload = payload
        self.model = model
        self.view: Any = _MISSING

    def get(self, path: str) -> Any:
        if self.model is not None:
            if self.view is _MISSING:
                self.view = validated_view(self.model)
            found = lookup(self.view, path)
            if found is not _MISSING:
                return found
        return lookup(self.payload, path)


def _fits(route: Route, source: str, event_type: str) -> bool:
    if route.source is not None and route.source != source:
        return False
    return _glob(route.match).match(event_type) is not None


def _where_holds(route: Route, fields: _Fields) -> bool:
    return all(condition_holds(fields.get(path), cond) for path, cond in route.where)


def route_matches(
    route: Route, source: str, event_type: str, payload: Any, model: Any = None
) -> bool:
    """Whether one route takes an event (`model`: its validated pydantic model, if any)."""
    return _fits(route, source, event_type) and _where_holds(route, _Fields(payload, model))


def handlers_for(
    routes: Sequence[Route], source: str, event_type: str, payload: Any, model: Any = None
) -> tuple[str, ...]:
    """The handlers an event goes to, in route order, each once."""
    chosen: dict[str, None] = {}
    fields = _Fields(payload, model)
    for route in routes:
        if (route.handler not in chosen and _fits(route, source, event_type)
                and _where_holds(route, fields)):
            chosen[route.handler] = None
    return tuple(chosen)


def compile_routes(raw: Iterable[Any]) -> tuple[Route, ...]:
    """Routes from config entries (objects with match, handler, source, where)."""
    return tuple(
        Route(r.match, r.handler, r.source, tuple(sorted(r.where.items()))) for r in raw
    )
