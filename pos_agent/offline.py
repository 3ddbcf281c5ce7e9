"""Offline approval arithmetic: may this tap be approved while the gateway is unreachable?

Pure: no I/O, no clock. The journal computes an ``OfflineSnapshot`` inside the same write
transaction that records the approval, so the check and the record are one atomic step.

Invariants:
- A tap is approved only if, counting it, every limit holds: the single-tap ceiling, the pending
  count and amount of its wallet token, the pending count and amount of this terminal, and the
  count and amount of all offline approvals in the rolling window. A limit of 0 allows nothing.
- A token with an offline tap the gateway declined is never approved offline again.
- An offline tap's ATC must be higher than every ATC seen for its token before, online or
  offline (``token_last_atc``, kept by the journal): a replayed or older cryptogram is refused
  locally with ``offline_atc_replayed`` (the gateway would refuse it later, after the goods left).
- The reasons are stable codes, checked in a fixed order, so logs and tests can rely on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pos_agent.settings import OfflineLimits

__all__ = ["Exposure", "OfflineDecision", "OfflineRefusal", "OfflineSnapshot", "decide"]


@dataclass(frozen=True, slots=True)
class Exposure:
    count: int = 0
    amount_minor: int = 0

    def plus(self, amount_minor: int) -> Exposure:
        return Exposure(self.count + 1, self.amount_minor + amount_minor)


@dataclass(frozen=True, slots=True)
class OfflineSnapshot:
    token_pending: Exposure
    terminal_pending: Exposure
    total_window: Exposure
    token_blocked: bool
    token_last_atc: int | None
    """The highest ATC any other tap of this token showed, online or offline; None if none."""


class OfflineRefusal(StrEnum):
    DISABLED = "offline_disabled"
    CURRENCY = "offline_currency_mismatch"
    TOKEN_BLOCKED = "offline_token_blocked"
    ATC_REPLAYED = "offline_atc_replayed"  # 20 characters: whole on the pole display
    TAP_AMOUNT = "offline_tap_amount_exceeded"
    TOKEN_COUNT = "offline_token_count_exceeded"
    TOKEN_AMOUNT = "offline_token_amount_exceeded"
    TERMINAL_COUNT = "offline_terminal_count_exceeded"
    TERMINAL_AMOUNT = "offline_terminal_amount_exceeded"
    TOTAL_COUNT = "offline_total_count_exceeded"
    TOTAL_AMOUNT = "offline_total_amount_exceeded"


@dataclass(frozen=True, slots=True)
class OfflineDecision:
    refusal: OfflineRefusal | None

    @property
    def approved(self) -> bool:
        return self.refusal is None


def decide(
    limits: OfflineLimits,
    snapshot: OfflineSnapshot,
    *,
    amount_minor: int,
    atc: int,
    currency_matches: bool,
) -> OfflineDecision:
    """Approve or refuse one offline tap of ``amount_minor`` with counter ``atc``."""
    assert amount_minor > 0 and atc >= 0
    if not limits.enabled:
        return OfflineDecision(OfflineRefusal.DISABLED)
    if not currency_matches:
        return OfflineDecision(OfflineRefusal.CURRENCY)
    if snapshot.token_blocked:
        return OfflineDecision(OfflineRefusal.TOKEN_BLOCKED)
    if snapshot.token_last_atc is not None and atc <= snapshot.token_last_atc:
        return OfflineDecision(OfflineRefusal.ATC_REPLAYED)
    if amount_minor > limits.tap_amount_max_minor:
        return OfflineDecision(OfflineRefusal.TAP_AMOUNT)
    checks = (
        (snapshot.token_pending, limits.token_count_max, limits.token_amount_max_minor,
         OfflineRefusal.TOKEN_COUNT, OfflineRefusal.TOKEN_AMOUNT),
        (snapshot.terminal_pending, limits.terminal_count_max, limits.terminal_amount_max_minor,
         OfflineRefusal.TERMINAL_COUNT, OfflineRefusal.TERMINAL_AMOUNT),
        (snapshot.total_window, limits.total_count_max, limits.total_amount_max_minor,
         OfflineRefusal.TOTAL_COUNT, OfflineRefusal.TOTAL_AMOUNT),
    )
    for exposure, count_max, amount_max_minor, count_refusal, amount_refusal in checks:
        after = exposure.plus(amount_minor)
        if after.count > count_max:
            return OfflineDecision(count_refusal)
        if after.amount_minor > amount_max_minor:
            return OfflineDecision(amount_refusal)
    return OfflineDecision(None)
