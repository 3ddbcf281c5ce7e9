"""Offline limit arithmetic: each limit counts the tap being decided, in a fixed order."""

from __future__ import annotations

import pytest

from pos_agent.offline import Exposure, OfflineRefusal, OfflineSnapshot, decide
from pos_agent.settings import OfflineLimits

LIMITS = OfflineLimits(tap_amount_max_minor=5_000, token_count_max=2, token_amount_max_minor=6_000,
                       terminal_count_max=3, terminal_amount_max_minor=10_000, total_count_max=4,
                       total_amount_max_minor=12_000)


NOTHING = Exposure()


def snapshot(token: Exposure = NOTHING, terminal: Exposure = NOTHING, total: Exposure = NOTHING,
             blocked: bool = False, last_atc: int | None = None) -> OfflineSnapshot:
    return OfflineSnapshot(token, terminal, total, blocked, last_atc)


def refusal(snap: OfflineSnapshot, amount: int = 1_000, atc: int = 10, limits: OfflineLimits = LIMITS,
            currency: bool = True) -> OfflineRefusal | None:
    return decide(limits, snap, amount_minor=amount, atc=atc, currency_matches=currency).refusal


def test_first_tap_within_limits_is_approved() -> None:
    assert refusal(snapshot()) is None


def test_limits_are_inclusive() -> None:
    assert refusal(snapshot(), amount=5_000) is None
    assert refusal(snapshot(), amount=5_001) is OfflineRefusal.TAP_AMOUNT
    assert refusal(snapshot(token=Exposure(1, 1_000)), amount=5_000) is None  # 6,000 exactly
    assert refusal(snapshot(token=Exposure(1, 1_001)), amount=5_000) is OfflineRefusal.TOKEN_AMOUNT


@pytest.mark.parametrize(("snap", "expected"), [
    (snapshot(token=Exposure(2, 100)), OfflineRefusal.TOKEN_COUNT),
    (snapshot(terminal=Exposure(3, 100)), OfflineRefusal.TERMINAL_COUNT),
    (snapshot(terminal=Exposure(1, 9_500)), OfflineRefusal.TERMINAL_AMOUNT),
    (snapshot(total=Exposure(4, 100)), OfflineRefusal.TOTAL_COUNT),
    (snapshot(total=Exposure(1, 11_500)), OfflineRefusal.TOTAL_AMOUNT),
    (snapshot(blocked=True), OfflineRefusal.TOKEN_BLOCKED),
    (snapshot(last_atc=10), OfflineRefusal.ATC_REPLAYED),
    (snapshot(last_atc=11), OfflineRefusal.ATC_REPLAYED),
])
def test_each_limit_refuses(snap: OfflineSnapshot, expected: OfflineRefusal) -> None:
    assert refusal(snap) is expected


def test_order_token_before_terminal_before_total() -> None:
    everything_full = snapshot(Exposure(2, 6_000), Exposure(3, 10_000), Exposure(4, 12_000))
    assert refusal(everything_full) is OfflineRefusal.TOKEN_COUNT


def test_disabled_zero_limits_and_currency() -> None:
    assert refusal(snapshot(), limits=OfflineLimits(enabled=False)) is OfflineRefusal.DISABLED
    assert refusal(snapshot(), limits=OfflineLimits(token_count_max=0)) is OfflineRefusal.TOKEN_COUNT
    assert refusal(snapshot(), currency=False) is OfflineRefusal.CURRENCY
