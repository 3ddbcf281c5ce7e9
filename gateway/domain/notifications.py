"""Holder notifications, the pure part: kinds, the push message and its retry rule.

Invariants:
- a notification's ``data`` is what the holder may read: ids, amounts, names, never a secret, code
  or credential (the kinds that write it are listed here and reviewed with it);
- a push carries the notification's id (``Notification-Id`` header and ``id`` in the body), the same
  on every attempt: push is at least once, the push service drops the duplicates by that id;
- a push is attempted at most ``attempts_max`` times; after the n-th failure it waits a uniformly
  random time in [0, min(cap, base * 2**(n-1))] (full jitter, ``domain.webhooks.Backoff``).
Pure: no I/O, clock or randomness (passed in).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from gateway.domain.webhooks import Backoff

BUDGET_REMINDER: Final = "budget.reminder"  # a budget crossed a threshold this month
RISK_ALERT: Final = "risk.alert"  # a payment was declined or asked for the PIN or a code (services.risk)
KIND_RE = re.compile(r"^[a-z][a-z_]*(\.[a-z][a-z_]*)+$")  # family.name, as event types are


def check_kind(kind: str) -> str:
    if not KIND_RE.fullmatch(kind) or len(kind) > 64:
        raise ValueError(f"a notification kind is family.name in lower case, got {kind!r}")
    return kind


@dataclass(frozen=True, slots=True)
class PushRetry:
    base_s: float
    cap_s: float
    attempts_max: int

    def __post_init__(self) -> None:
        if self.attempts_max < 1:
            raise ValueError("a push is attempted at least once")
        Backoff(self.base_s, self.cap_s, float("inf"))  # the same checks as webhook backoff

    def next_delay_s(self, attempts: int, unit_random: float) -> float | None:
        """After ``attempts`` failed attempts: the wait before the next one, or None when none is left."""
        if attempts >= self.attempts_max:
            return None
        return Backoff(self.base_s, self.cap_s, float("inf")).delay_s(attempts, unit_random)
