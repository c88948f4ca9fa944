"""The pure retry decision: backoff schedule, caps, Retry-After floors, dead letters."""

from __future__ import annotations

import pytest

from app.retry import Decision, RetryPolicy, backoff, decide

POLICY = RetryPolicy(max_attempts=5, backoff_base=2.0, backoff_max=60.0)
NOW = 1000.0


def test_success_and_permanent() -> None:
    assert decide("succeeded", 1, POLICY, NOW, 0.5) == Decision("succeeded")
    dead = decide("permanent", 1, POLICY, NOW, 0.5)
    assert dead.status == "dead" and dead.next_attempt_at is None


@pytest.mark.parametrize(("attempts", "low", "high"), [(1, 1, 2), (2, 2, 4), (3, 4, 8), (4, 8, 16)])
def test_backoff_doubles_with_jitter_in_upper_half(attempts: int, low: float, high: float) -> None:
    assert backoff(attempts, POLICY, 0.0) == low
    assert backoff(attempts, POLICY, 0.999) == pytest.approx(high, abs=0.01)
    decision = decide("transient", attempts, POLICY, NOW, 0.0)
    assert decision == Decision("pending", next_attempt_at=NOW + low)


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(max_attempts=50, backoff_base=2.0, backoff_max=60.0)
    assert backoff(30, policy, 0.999) <= 60.0
    assert backoff(30, policy, 0.0) == 30.0


def test_attempts_exhausted_is_dead() -> None:
    assert decide("transient", 5, POLICY, NOW, 0.5).status == "dead"
    assert decide("timeout", 5, POLICY, NOW, 0.5).status == "dead"
    assert decide("timeout", 4, POLICY, NOW, 0.5).status == "pending"


def test_retry_after_is_a_floor_capped_by_backoff_max() -> None:
    assert decide("transient", 1, POLICY, NOW, 0.0, retry_after=30).next_attempt_at == NOW + 30
    assert decide("transient", 1, POLICY, NOW, 0.0, retry_after=0.1).next_attempt_at == NOW + 1
    assert decide("transient", 1, POLICY, NOW, 0.0, retry_after=9999).next_attempt_at == NOW + 60
