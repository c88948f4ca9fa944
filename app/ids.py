"""Identifiers that sort by creation time: a prefix and a ULID (48-bit ms time, 80 random bits).

Time-ordered ids keep the primary-key index append-only and let a person read an event's age
from its id; the time is passed in, so this module reads no clock.
"""

from __future__ import annotations

import os

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str, now: float) -> str:
    """`<prefix>_<26-char ULID>` for the unix time `now` (seconds)."""
    value = (int(now * 1000) & 0xFFFFFFFFFFFF) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return f"{prefix}_{''.join(reversed(chars))}"
