"""The pure risk rules (every kind, every outcome, step-ups) and the in-process view the one-statement
payment path asks."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway.domain.risk import (Attempt, Baseline, Facts, OneStatement, Outcome, Recent, Rule, RuleKind, StepUp,
                                 Unlocked, applies, decide, money_out, one_statement, over_velocity, usual_minor)
from gateway.services.risk_cache import FRESH_S, RiskRules

NOW = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
HOLDER, MERCHANT = uuid.uuid4(), uuid.uuid4()


def _attempt(amount: int = 1_000, device: str | None = "phone-1", currency: str = "CNY",
             merchant: uuid.UUID = MERCHANT, holder: uuid.UUID = HOLDER) -> Attempt:
    return Attempt(uuid.uuid4(), holder, merchant, currency, amount, device, "wallet")


def _rule(kind: RuleKind, **terms: object) -> Rule:
    return Rule(uuid.uuid4(), kind, **terms)  # type: ignore[arg-type]


def _one(rule: Rule, attempt: Attempt, facts: Facts | None = None,
         passed: frozenset[StepUp] = frozenset()) -> Outcome:
    return decide((rule,), attempt, facts or Facts(now=NOW), passed).outcome


def test_blocked_wallet_matches_only_its_holder() -> None:
    rule = _rule(RuleKind.BLOCKED_WALLET, holder_id=HOLDER)
    assert _one(rule, _attempt()) is Outcome.DECLINE
    assert _one(rule, _attempt(holder=uuid.uuid4())) is Outcome.ALLOW


def test_blocked_device_matches_only_its_device() -> None:
    rule = _rule(RuleKind.BLOCKED_DEVICE, device_id="stolen")
    assert _one(rule, _attempt(device="stolen")) is Outcome.DECLINE
    assert _one(rule, _attempt(device="phone-1")) is Outcome.ALLOW
    assert _one(rule, _attempt(device=None)) is Outcome.ALLOW


def test_velocity_by_count_and_by_amount_in_its_currency() -> None:
    by_count = _rule(RuleKind.VELOCITY_WALLET, window_s=60, max_count=2)
    assert not over_velocity(by_count, Recent(1, 0), "CNY", 10)
    assert over_velocity(by_count, Recent(2, 0), "CNY", 10)
    by_amount = _rule(RuleKind.VELOCITY_WALLET, currency="CNY", window_s=60, max_amount_minor=1_000)
    assert not over_velocity(by_amount, Recent(5, 900), "CNY", 100)
    assert over_velocity(by_amount, Recent(5, 900), "CNY", 101)
    assert not over_velocity(by_amount, Recent(5, 900), "USD", 10_000)  # another currency is not counted


@pytest.mark.parametrize("kind", [RuleKind.VELOCITY_DEVICE, RuleKind.VELOCITY_MERCHANT, RuleKind.VELOCITY_WALLET])
def test_velocity_kinds_match_on_their_counts(kind: RuleKind) -> None:
    rule = _rule(kind, window_s=60, max_count=3, outcome=Outcome.REQUIRE_OTP)
    attempt = _attempt()
    assert _one(rule, attempt, Facts(now=NOW, recent={rule.id: Recent(2, 0)})) is Outcome.ALLOW
    assert _one(rule, attempt, Facts(now=NOW, recent={rule.id: Recent(3, 0)})) is Outcome.REQUIRE_OTP
    assert _one(rule, attempt, Facts(now=NOW)) is Outcome.ALLOW  # not counted (yet): no match


def test_device_velocity_needs_a_device_and_merchant_velocity_its_merchant() -> None:
    assert not applies(_rule(RuleKind.VELOCITY_DEVICE, window_s=60, max_count=1), _attempt(device=None))
    one = _rule(RuleKind.VELOCITY_MERCHANT, window_s=60, max_count=1, merchant_id=MERCHANT)
    assert applies(one, _attempt()) and not applies(one, _attempt(merchant=uuid.uuid4()))
    assert applies(_rule(RuleKind.VELOCITY_MERCHANT, window_s=60, max_count=1), _attempt(merchant=uuid.uuid4()))


def test_usual_amount_median_and_p90() -> None:
    assert usual_minor((100, 300, 200), Baseline.MEDIAN) == 200
    assert usual_minor((100, 200, 300, 400), Baseline.MEDIAN) == 200  # the lower middle
    assert usual_minor(tuple(range(1, 11)), Baseline.P90) == 9
    assert usual_minor((5,), Baseline.P90) == 5


def test_amount_unusual_needs_history_and_k_times_the_usual() -> None:
    rule = _rule(RuleKind.AMOUNT_UNUSUAL, currency="CNY", multiplier_pct=300, baseline=Baseline.MEDIAN,
                 history_min=3, outcome=Outcome.REQUIRE_PIN)
    history = Facts(now=NOW, usual_minor=(100, 100, 100))
    assert _one(rule, _attempt(300), history) is Outcome.ALLOW  # exactly 3x is not above
    assert _one(rule, _attempt(301), history) is Outcome.REQUIRE_PIN
    assert _one(rule, _attempt(10_000), Facts(now=NOW, usual_minor=(100, 100))) is Outcome.ALLOW  # too little history
    assert _one(rule, _attempt(10_000, currency="USD"), history) is Outcome.ALLOW  # another currency


def test_new_device_with_a_large_amount() -> None:
    rule = _rule(RuleKind.NEW_DEVICE, currency="CNY", device_age_s=86_400, min_amount_minor=5_000)
    young = Facts(now=NOW, device_seen_at=NOW - timedelta(hours=1))
    old = Facts(now=NOW, device_seen_at=NOW - timedelta(days=2))
    assert _one(rule, _attempt(5_000), young) is Outcome.DECLINE
    assert _one(rule, _attempt(5_000), Facts(now=NOW)) is Outcome.DECLINE  # never seen: new
    assert _one(rule, _attempt(4_999), young) is Outcome.ALLOW
    assert _one(rule, _attempt(5_000), old) is Outcome.ALLOW


def test_most_severe_outcome_wins_and_step_ups_meet_theirs_only() -> None:
    pin = _rule(RuleKind.BLOCKED_WALLET, holder_id=HOLDER, outcome=Outcome.REQUIRE_PIN)
    otp = _rule(RuleKind.BLOCKED_DEVICE, device_id="phone-1", outcome=Outcome.REQUIRE_OTP)
    attempt, facts = _attempt(), Facts(now=NOW)
    assert decide((pin, otp), attempt, facts, frozenset()).outcome is Outcome.REQUIRE_OTP
    assert decide((pin, otp), attempt, facts, frozenset({StepUp.OTP})).outcome is Outcome.REQUIRE_PIN
    both = decide((pin, otp), attempt, facts, frozenset({StepUp.OTP, StepUp.PIN}))
    assert both.outcome is Outcome.ALLOW and both.passed == (StepUp.OTP, StepUp.PIN) and len(both.reasons) == 2
    decline = _rule(RuleKind.BLOCKED_WALLET, holder_id=HOLDER)
    assert decide((pin, decline), attempt, facts, frozenset({StepUp.PIN, StepUp.OTP})).outcome is Outcome.DECLINE
    nothing = decide((pin,), _attempt(holder=uuid.uuid4()), facts, frozenset())
    assert nothing.outcome is Outcome.ALLOW and not nothing.recorded


def test_money_out_is_declined_by_the_blocks_alone_whatever_their_outcome() -> None:
    """A withdrawal or a conversion: no payment, no merchant; a block of the holder or of the session's
    device declines it (a step-up one too: none is asked there); no other kind concerns it."""

    def out(device: str | None = "phone-1", holder: uuid.UUID = HOLDER) -> Attempt:
        return Attempt(None, holder, None, "CNY", 1_000, device, "withdrawal")

    wallet = _rule(RuleKind.BLOCKED_WALLET, holder_id=HOLDER, outcome=Outcome.REQUIRE_PIN)
    device = _rule(RuleKind.BLOCKED_DEVICE, device_id="stolen")
    others = (_rule(RuleKind.VELOCITY_WALLET, window_s=60, max_count=1),
              _rule(RuleKind.VELOCITY_MERCHANT, window_s=60, max_count=1),
              _rule(RuleKind.NEW_DEVICE, currency="CNY", device_age_s=60, min_amount_minor=0),
              _rule(RuleKind.AMOUNT_UNUSUAL, currency="CNY", multiplier_pct=101, baseline=Baseline.MEDIAN,
                    history_min=1))
    both = money_out((wallet, device, *others), out(device="stolen"), NOW)
    assert both.outcome is Outcome.DECLINE and both.passed == ()
    assert [(r.kind, r.outcome, r.detail) for r in both.reasons] == [
        (RuleKind.BLOCKED_WALLET, Outcome.REQUIRE_PIN, {}),
        (RuleKind.BLOCKED_DEVICE, Outcome.DECLINE, {"device_id": "stolen"})]
    assert money_out((wallet, device, *others), out(holder=uuid.uuid4()), NOW).outcome is Outcome.ALLOW
    assert not money_out((device, *others), out(device=None), NOW).recorded
    assert not money_out(others, out(), NOW).recorded
    with pytest.raises(AssertionError):  # a payment is decided by ``decide``
        money_out((wallet,), _attempt(), NOW)


def test_view_answers_the_fast_path_only_while_fresh() -> None:
    now = [100.0]
    view = RiskRules(clock=lambda: now[0])
    attempt = _attempt()
    assert view.one_statement(attempt, None) is None  # never read: cannot tell
    view.saw(())
    assert view.one_statement(attempt, None) == OneStatement((), False)
    now[0] += FRESH_S + 0.1
    assert view.one_statement(attempt, None) is None  # stale
    view.saw((_rule(RuleKind.BLOCKED_WALLET, holder_id=uuid.uuid4()),
              _rule(RuleKind.AMOUNT_UNUSUAL, currency="USD", multiplier_pct=300, baseline=Baseline.MEDIAN,
                    history_min=3)))
    assert view.kinds == {RuleKind.BLOCKED_WALLET, RuleKind.AMOUNT_UNUSUAL}
    assert view.one_statement(attempt, None) == OneStatement((), False)  # another holder's, another currency's
    assert view.one_statement(_attempt(currency="USD"), None) is None  # nothing read to judge it on
    view.saw((_rule(RuleKind.BLOCKED_WALLET, holder_id=HOLDER),))
    assert view.one_statement(attempt, None) is None
    velocity = _rule(RuleKind.VELOCITY_WALLET, window_s=60, max_count=5)
    merchant = _rule(RuleKind.VELOCITY_MERCHANT, window_s=60, max_count=5)
    view.saw((velocity, merchant, _rule(RuleKind.BLOCKED_WALLET, holder_id=uuid.uuid4())))
    assert view.one_statement(attempt, None) == OneStatement((velocity, merchant), False)


UNUSUAL = _rule(RuleKind.AMOUNT_UNUSUAL, currency="CNY", multiplier_pct=300, baseline=Baseline.MEDIAN, history_min=3)
NEW_DEVICE = _rule(RuleKind.NEW_DEVICE, currency="CNY", device_age_s=3_600, min_amount_minor=500)


def test_fast_path_judges_amount_unusual_from_an_unlocked_read_only_without_held_funds() -> None:
    history = Unlocked(now=NOW, usual_minor=(100, 100, 100), holds_funds=False)
    assert one_statement((UNUSUAL,), _attempt(300), history) == OneStatement((), True)
    assert one_statement((UNUSUAL,), _attempt(301), history) is None  # it matches: the general path asks
    assert one_statement((UNUSUAL,), _attempt(301), replace(history, usual_minor=(100, 100))) == (
        OneStatement((), True))  # too short a history: no match, but the statement must check it held
    assert one_statement((UNUSUAL,), _attempt(300), replace(history, holds_funds=True)) is None  # a capture may come
    assert one_statement((UNUSUAL,), _attempt(300), replace(history, usual_minor=None)) is None  # not read
    assert one_statement((UNUSUAL,), _attempt(300), None) is None


def test_fast_path_judges_new_device_from_its_first_sighting() -> None:
    old = Unlocked(now=NOW, device_read=True, device_seen_at=NOW - timedelta(hours=2))
    assert one_statement((NEW_DEVICE,), _attempt(5_000), old) == OneStatement((), False)
    assert one_statement((NEW_DEVICE,), _attempt(5_000), replace(old, device_seen_at=NOW - timedelta(minutes=59))) is None
    assert one_statement((NEW_DEVICE,), _attempt(5_000), replace(old, device_seen_at=None)) is None  # never seen
    assert one_statement((NEW_DEVICE,), _attempt(5_000), replace(old, device_read=False)) is None  # not read
    assert one_statement((NEW_DEVICE,), _attempt(499), None) == OneStatement((), False)  # below its amount
    assert one_statement((NEW_DEVICE,), _attempt(5_000, device=None), replace(old, device_seen_at=None)) is None


def test_fast_path_never_keeps_a_blocked_rule_that_concerns_the_payment() -> None:
    device = _rule(RuleKind.BLOCKED_DEVICE, device_id="phone-1")
    assert one_statement((device,), _attempt(), None) is None
    assert one_statement((device,), _attempt(device="phone-2"), None) == OneStatement((), False)
    counted = _rule(RuleKind.VELOCITY_DEVICE, window_s=60, max_count=5)
    assert one_statement((counted,), _attempt(), None) == OneStatement((counted,), False)
    assert one_statement((counted,), _attempt(device=None), None) == OneStatement((), False)  # no device


def test_view_keeps_no_read_begun_before_the_one_kept() -> None:
    view = RiskRules(clock=lambda: 1.0)
    rule = _rule(RuleKind.BLOCKED_WALLET, holder_id=uuid.uuid4())
    view.saw((rule,), read_number=2)
    view.saw((), read_number=1)  # older: ignored
    assert view.rules == (rule,)
