"""The pure retry decisions: jitter ceilings, Retry-After as a floor, its parsing, the policy's bounds."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from wallet_client import RetryPolicy
from wallet_client._retry import delay_s, parse_retry_after_s


def test_full_jitter_stays_under_a_doubling_capped_ceiling() -> None:
    policy = RetryPolicy(backoff_initial_s=0.5, backoff_max_s=4.0)
    rng = random.Random(7)
    for retry_index, ceiling_s in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0), (200, 4.0)]:
        waits = [delay_s(policy, retry_index, None, rng) for _ in range(200)]
        assert all(w is not None and 0.0 <= w <= ceiling_s for w in waits)
        assert max(w for w in waits if w is not None) > ceiling_s * 0.8  # spread, not a constant


def test_retry_after_is_a_floor_and_too_long_is_refused() -> None:
    policy = RetryPolicy(backoff_initial_s=0.5, retry_after_max_s=30.0)
    rng = random.Random(1)
    waits = [delay_s(policy, 0, 2.0, rng) for _ in range(100)]
    assert all(w is not None and 2.0 <= w <= 2.5 for w in waits)
    assert delay_s(policy, 0, 31.0, rng) is None


def test_retry_after_parsing() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after_s("3", now) == 3.0
    assert parse_retry_after_s(format_datetime(now + timedelta(seconds=7), usegmt=True), now) == 7.0
    assert parse_retry_after_s(format_datetime(now - timedelta(seconds=7), usegmt=True), now) == 0.0
    assert parse_retry_after_s(None) is None and parse_retry_after_s("soon") is None


@pytest.mark.parametrize("kwargs", [{"retry_count_max": -1}, {"retry_count_max": 21},
                                    {"backoff_initial_s": 2.0, "backoff_max_s": 1.0}, {"elapsed_max_s": 0}])
def test_policy_bounds_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
