"""Per-source rate limits: a token bucket each, over an injected monotonic time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.config import RateLimit


class TokenBucket:
    """`burst` tokens at most, refilled at `per_second`; one token per request."""

    def __init__(self, per_second: float, burst: int) -> None:
        self.per_second = per_second
        self.burst = burst
        self._tokens = float(burst)
        self._stamp: float | None = None

    def take(self, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one will be available."""
        if self._stamp is not None:
            elapsed = max(0.0, now - self._stamp)
            self._tokens = min(self.burst, self._tokens + elapsed * self.per_second)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.per_second


class RateLimiter:
    """A bucket for every source that has a limit; sources without one always pass."""

    def __init__(self, limits: Mapping[str, RateLimit | None]) -> None:
        self._buckets = {
            name: TokenBucket(limit.per_second, limit.burst)
            for name, limit in limits.items()
            if limit is not None
        }

    def check(self, source: str, now: float) -> float:
        bucket = self._buckets.get(source)
        return 0.0 if bucket is None else bucket.take(now)
