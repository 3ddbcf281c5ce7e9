"""The pure risk rules and the in-process view the one-statement payment path asks."""

from __future__ import annotations

import uuid

from gateway.domain.risk import Recent, Rule, RuleKind, blocked, over_velocity
from gateway.services.risk import FRESH_S, RiskCache


def test_blocked_matches_only_its_holder() -> None:
    holder, other = uuid.uuid4(), uuid.uuid4()
    rules = (Rule(uuid.uuid4(), RuleKind.BLOCKED_WALLET, holder_id=holder),
             Rule(uuid.uuid4(), RuleKind.VELOCITY_WALLET, window_s=60, max_count=1))
    assert [r.holder_id for r in blocked(rules, holder)] == [holder]
    assert blocked(rules, other) == []


def test_velocity_by_count_and_by_amount_in_its_currency() -> None:
    by_count = Rule(uuid.uuid4(), RuleKind.VELOCITY_WALLET, window_s=60, max_count=2)
    assert not over_velocity(by_count, Recent(1, 0), "CNY", 10)
    assert over_velocity(by_count, Recent(2, 0), "CNY", 10)
    by_amount = Rule(uuid.uuid4(), RuleKind.VELOCITY_WALLET, currency="CNY", window_s=60, max_amount_minor=1_000)
    assert not over_velocity(by_amount, Recent(5, 900), "CNY", 100)
    assert over_velocity(by_amount, Recent(5, 900), "CNY", 101)
    assert not over_velocity(by_amount, Recent(5, 900), "USD", 10_000)  # another currency is not counted


def test_cache_allows_the_fast_path_only_while_fresh_and_empty() -> None:
    now = [100.0]
    cache = RiskCache(clock=lambda: now[0])
    assert not cache.none_active()  # never read: cannot tell
    cache.saw(())
    assert cache.none_active()
    now[0] += FRESH_S + 0.1
    assert not cache.none_active()  # stale
    cache.saw((Rule(uuid.uuid4(), RuleKind.BLOCKED_WALLET, holder_id=uuid.uuid4()),))
    assert not cache.none_active()
