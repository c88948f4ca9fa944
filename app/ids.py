"""Identifiers that sort by creation time: a prefix, 48 bits of milliseconds, 80 random bits.

Time-ordered ids keep the primary-key index append-only and let a person read an event's age
from its id (the first 12 hex digits are the unix time in ms). The time is passed in, so this
module reads no clock. The random part needs to be unique, not secret, so it comes from a
fast PRNG rather than a system call per id: a private one, seeded from the OS and reseeded in
every forked process, because the module-level `random` can be reseeded by any plugin or test
(`random.seed(0)`), and a repeated sequence within one millisecond would repeat ids.
"""

from __future__ import annotations

import os
import random

_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)


def new_id(prefix: str, now: float) -> str:
    """`<prefix>_<12 hex digits of ms><20 random hex digits>` for the unix time `now`."""
    return f"{prefix}_{int(now * 1000) & 0xFFFFFFFFFFFF:012x}{_rng.getrandbits(80):020x}"
