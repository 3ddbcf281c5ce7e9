"""When to retry a call and how long to wait; pure (the clock and the random source are passed in).

Invariants: a call makes at most ``1 + retry_count_max`` attempts and never starts a wait that
would end after ``elapsed_max_s`` from its first attempt; a server's ``Retry-After`` is a floor
for the wait (never shortened by jitter), and one above ``retry_after_max_s`` is not waited for.
Only answers that say "the same request may succeed later" are retried: no answer at all, 409
``idempotency_key_in_use``, 429 and 5xx. Every POST carries one idempotency key for all its
attempts, so a retry can never run the work twice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from wallet_client._errors import APIConnectionError, APIError, IdempotencyInUseError, RateLimitError, WalletError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounds on the client's own retries; ``RetryPolicy(retry_count_max=0)`` turns them off.

    The wait before retry ``n`` (0-based) is drawn uniformly from ``[0, min(backoff_max_s,
    backoff_initial_s * 2**n)]`` ("full jitter", so that many clients recovering together do not
    arrive together), or ``Retry-After`` plus up to ``backoff_initial_s`` when the server sent one.
    """

    retry_count_max: int = 3
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    elapsed_max_s: float = 60.0
    retry_after_max_s: float = 60.0

    def __post_init__(self) -> None:
        if self.retry_count_max < 0 or self.retry_count_max > 20:
            raise ValueError("retry_count_max must be within 0..20")
        if self.backoff_initial_s < 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("need 0 <= backoff_initial_s <= backoff_max_s")
        if self.elapsed_max_s <= 0 or self.retry_after_max_s < 0:
            raise ValueError("elapsed_max_s must be > 0 and retry_after_max_s >= 0")


def retryable(error: WalletError) -> bool:
    """True when the very same request (same idempotency key) may succeed later."""
    return isinstance(error, (APIConnectionError, IdempotencyInUseError, RateLimitError, APIError))


def delay_s(policy: RetryPolicy, retry_index: int, retry_after_s: float | None, rng: random.Random) -> float | None:
    """Seconds to wait before retry ``retry_index``, or ``None`` when the server asks for too long."""
    if retry_after_s is not None:
        if retry_after_s > policy.retry_after_max_s:
            return None
        return retry_after_s + rng.uniform(0.0, policy.backoff_initial_s)
    ceiling_s = min(policy.backoff_max_s, policy.backoff_initial_s * (2 ** min(retry_index, 30)))
    return rng.uniform(0.0, ceiling_s)


def parse_retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; ``None`` if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())
