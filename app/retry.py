"""Pure retry decisions: what happens to a delivery after one attempt.

`decide` takes how the attempt ended, how many attempts have been made, the handler's policy,
the time and a random number in [0, 1), and says whether the delivery succeeded, is dead, or is
tried again at a given time. Backoff is exponential with full jitter over the upper half of the
step (so retries of many deliveries spread out but never come sooner than half the step), capped
at `backoff_max`; a delay the handler or the upstream asked for (`Retry(after=...)`,
`Retry-After`) is honoured as a floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Outcome = Literal["succeeded", "transient", "permanent", "timeout"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff_base: float = 2.0
    backoff_max: float = 3600.0


@dataclass(frozen=True, slots=True)
class Decision:
    status: Literal["succeeded", "pending", "dead"]
    next_attempt_at: float | None = None
    reason: str | None = None


def backoff(attempts: int, policy: RetryPolicy, rand: float) -> float:
    """Seconds to wait after the `attempts`-th failed attempt (1-based)."""
    # A float exponent past 1023 would overflow; by then any sane step is long capped anyway.
    step = min(policy.backoff_max, policy.backoff_base * 2.0 ** min(attempts - 1, 1023))
    return step / 2 + step / 2 * rand


def decide(
    outcome: Outcome,
    attempts: int,
    policy: RetryPolicy,
    now: float,
    rand: float,
    retry_after: float | None = None,
) -> Decision:
    """The delivery's next state after its `attempts`-th attempt ended with `outcome`."""
    if outcome == "succeeded":
        return Decision("succeeded")
    if outcome == "permanent":
        return Decision("dead", reason="permanent error")
    if attempts >= policy.max_attempts:
        return Decision("dead", reason=f"gave up after {attempts} attempts")
    delay = backoff(attempts, policy, rand)
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.backoff_max))
    return Decision("pending", next_attempt_at=now + delay)
