"""Per-source rate limits: one token bucket per source, over an injected monotonic time.

A misbehaving sender (a retry storm, a loop) must not starve the other sources of the intake
queue and the writer, so each source may carry a `rate_limit` in config. The check is pure: the
caller passes monotonic seconds and turns a non-zero wait into a 429 with `Retry-After`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.config import RateLimit


class TokenBucket:
    """`burst` tokens at most, refilled at `per_second`; one token per request."""

    def __init__(self, per_second: float, burst: int) -> None:
        if per_second <= 0 or burst < 1:
            raise ValueError("a token bucket needs per_second > 0 and burst >= 1")
        self.per_second = per_second
        self.burst = burst
        self._tokens = float(burst)
        self._stamp: float | None = None

    def take(self, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one will be available."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.per_second

    def _refill(self, now: float) -> None:
        if self._stamp is not None:
            # A clock that steps back must not mint tokens, nor push the next refill out.
            elapsed = max(0.0, now - self._stamp)
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.per_second)
        self._stamp = now if self._stamp is None else max(self._stamp, now)


class RateLimiter:
    """A bucket for every source that has a limit; sources without one always pass.

    A source's own bucket is charged only for authenticated requests: anyone can send junk to a
    source's URL, and junk must not use up what the real sender is allowed. Requests that fail
    authentication draw from a second bucket per source instead (`failures`), which only ever
    turns a failing request's 401 into a 429, so it holds back the junk and never the sender."""

    def __init__(
        self, limits: Mapping[str, RateLimit | None], failures: RateLimit | None = None
    ) -> None:
        self._buckets = {
            name: TokenBucket(limit.per_second, limit.burst)
            for name, limit in limits.items()
            if limit is not None
        }
        self._failures = {} if failures is None else {
            name: TokenBucket(failures.per_second, failures.burst) for name in limits
        }

    def check(self, source: str, now: float) -> float:
        """0.0 when `source` may proceed now, else the seconds it should wait."""
        bucket = self._buckets.get(source)
        return 0.0 if bucket is None else bucket.take(now)

    def check_failure(self, source: str, now: float) -> float:
        """Charge one failed authentication to `source`: 0.0 while such failures are within
        their limit, else the seconds the failing sender should wait."""
        bucket = self._failures.get(source)
        return 0.0 if bucket is None else bucket.take(now)
