"""Token buckets over injected time: burst, refusal with the right wait, refill, no limit."""

from __future__ import annotations

import pytest

from app.config import RateLimit
from app.ratelimit import RateLimiter, TokenBucket

T0 = 5_000.0


def test_burst_then_refusal_with_the_right_wait() -> None:
    bucket = TokenBucket(per_second=2.0, burst=3)
    assert [bucket.take(T0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(T0) == pytest.approx(0.5)
    # A refusal takes nothing: asking again at the same instant gives the same wait.
    assert bucket.take(T0) == pytest.approx(0.5)
    assert bucket.take(T0 + 0.2) == pytest.approx(0.3)


def test_refill_over_injected_time() -> None:
    bucket = TokenBucket(per_second=1.0, burst=2)
    assert bucket.take(T0) == 0.0
    assert bucket.take(T0) == 0.0
    assert bucket.take(T0 + 0.5) == pytest.approx(0.5)
    assert bucket.take(T0 + 1.0) == 0.0
    assert bucket.take(T0 + 1.0) == pytest.approx(1.0)


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(per_second=10.0, burst=2)
    bucket.take(T0)
    waits = [bucket.take(T0 + 3600) for _ in range(3)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2] == pytest.approx(0.1)


def test_steady_rate_is_allowed_indefinitely() -> None:
    bucket = TokenBucket(per_second=4.0, burst=1)
    assert all(bucket.take(T0 + i * 0.25) == 0.0 for i in range(100))


def test_time_going_backwards_mints_no_tokens() -> None:
    bucket = TokenBucket(per_second=1.0, burst=1)
    assert bucket.take(T0) == 0.0
    assert bucket.take(T0 - 10) == pytest.approx(1.0)
    assert bucket.take(T0 + 0.5) == pytest.approx(0.5)


@pytest.mark.parametrize(("per_second", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_bucket_rejects_impossible_limits(per_second: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(per_second, burst)


def test_limiter_keeps_one_bucket_per_source() -> None:
    limiter = RateLimiter({
        "alfred": RateLimit(per_second=1.0, burst=1),
        "partner": RateLimit(per_second=0.5, burst=2),
        "open": None,
    })
    assert limiter.check("alfred", T0) == 0.0
    assert limiter.check("alfred", T0) == pytest.approx(1.0)
    # Another source's bucket is untouched by alfred's traffic.
    assert limiter.check("partner", T0) == 0.0
    assert limiter.check("partner", T0) == 0.0
    assert limiter.check("partner", T0) == pytest.approx(2.0)
    assert limiter.check("alfred", T0 + 1.0) == 0.0


def test_no_limit_when_none_or_unknown() -> None:
    limiter = RateLimiter({"open": None})
    assert all(limiter.check("open", T0) == 0.0 for _ in range(1000))
    assert limiter.check("never-configured", T0) == 0.0


def test_failures_have_their_own_bucket_per_source() -> None:
    limiter = RateLimiter(
        {"alfred": RateLimit(per_second=1.0, burst=1), "open": None},
        RateLimit(per_second=0.5, burst=2),
    )
    assert [limiter.check_failure("alfred", T0) for _ in range(2)] == [0.0, 0.0]
    assert limiter.check_failure("alfred", T0) == pytest.approx(2.0)
    # Failures took nothing from the source's own bucket, nor from another source's failures.
    assert limiter.check("alfred", T0) == 0.0
    assert limiter.check_failure("open", T0) == 0.0
    assert RateLimiter({"open": None}).check_failure("open", T0) == 0.0
