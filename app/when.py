"""Times and filter values as people type them, read the same way by the CLI and the API.

`--since 2h` on the command line and `/api/events?since=2h` or `/api/replay {"since": "2h"}`
mean the same moment; a status outside the known ones is refused by both, naming the allowed
values, rather than silently matching nothing.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

EVENT_STATUSES = ("unrouted", "pending", "delivered", "failed")
DELIVERY_STATUSES = ("pending", "running", "succeeded", "dead")
# Replay selects events by their status, or dead deliveries with "dead".
REPLAY_STATUSES = (*EVENT_STATUSES, "dead")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
WHEN_HELP = "unix seconds, an ISO 8601 time, or an age: 90s, 30m, 2h, 7d"


class BadValue(ValueError):
    """A time or filter value that cannot be used; the message says what is accepted."""


def parse_when(text: str | float, now: float) -> float:
    """Unix seconds from `1790000000`, an ISO 8601 time, or an age such as `90s`, `30m`, `2h`,
    `7d` (counted back from `now`). A naive ISO time is UTC."""
    if isinstance(text, bool):
        raise BadValue(f"not a time: {text!r} ({WHEN_HELP})")
    if isinstance(text, int | float):
        try:
            seconds = float(text)  # an int of hundreds of digits overflows a float
        except OverflowError:
            seconds = math.inf
        if not math.isfinite(seconds):
            raise BadValue(f"not a time: {str(text)[:40]!r} ({WHEN_HELP})")
        return seconds
    stripped = text.strip()
    number = stripped[:-1]
    if stripped[-1:] in _UNITS and number.isascii() and number.replace(".", "", 1).isdigit():
        return now - float(number) * _UNITS[stripped[-1]]
    if stripped.isascii():
        try:
            value = float(stripped)
        except ValueError:
            pass
        else:
            if math.isfinite(value):
                return value
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        raise BadValue(f"not a time: {text!r} ({WHEN_HELP})") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def check_choice(name: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    """`value` when it is one of `allowed` (or None); BadValue naming the allowed ones."""
    if value is not None and value not in allowed:
        raise BadValue(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value
