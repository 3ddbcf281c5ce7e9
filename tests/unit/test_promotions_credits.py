"""Promotions domain, credits: cashback's rounding, cap and share of a partial capture, gifts, which
campaigns a payment or a registration can get, the terms refused, and the ledger entries they post."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain import ledger
from gateway.domain.promotions import (
    AT_PAYMENT, DISCOUNTS, Campaign, CampaignError, Funder, Purchase, Rule, benefit_minor, clawback_minor, eligible,
    may_apply, offers, registration_gifts, stated_benefit_minor,
)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
MERCHANT = uuid.UUID(int=1)
HOLDER = uuid.UUID(int=3)


def campaign(rule: Rule = Rule.CASHBACK, **changes: object) -> Campaign:
    base = Campaign(id=uuid.UUID(int=10), currency="CNY", rule=Rule.CASHBACK, funded_by=Funder.BANK,
                    starts_at=NOW - timedelta(hours=1), ends_at=NOW + timedelta(hours=1), budget_minor=100_000,
                    percent_bps=500)
    if rule in (Rule.GIFT_REGISTRATION, Rule.GIFT_FIRST_PAYMENT):
        changes = {"percent_bps": 0, "fixed_minor": 300, **changes}
    return replace(base, rule=rule, **changes)  # type: ignore[arg-type]


def purchase(amount_minor: int = 1_000) -> Purchase:
    return Purchase(MERCHANT, None, "CNY", amount_minor, "5812")


def test_percentage_cashback_is_on_the_amount_captured_rounded_down_and_capped() -> None:
    c = campaign()
    assert stated_benefit_minor(c, 1_000) == 50
    assert stated_benefit_minor(c, 1_039) == 51  # 51.95 rounds down
    assert stated_benefit_minor(c, 1_000, captured_minor=400) == 20  # a partial capture: 5 % of 400
    assert stated_benefit_minor(replace(c, cap_minor=30), 1_000) == 30
    assert stated_benefit_minor(c, 19) == 0  # 0.95 rounds to nothing: no cashback


def test_fixed_cashback_of_a_partial_capture_is_its_share() -> None:
    c = campaign(percent_bps=0, fixed_minor=300)
    assert stated_benefit_minor(c, 1_000) == 300
    assert stated_benefit_minor(c, 1_000, captured_minor=400) == 120
    assert stated_benefit_minor(c, 1_000, captured_minor=333) == 99  # 99.9 rounds down
    assert stated_benefit_minor(c, 100) == 100  # never more than what was captured
    assert stated_benefit_minor(c, 1_000, captured_minor=0) == 0


def test_a_whole_percentage_gives_back_at_most_what_was_captured() -> None:
    assert stated_benefit_minor(campaign(percent_bps=10_000), 1_000, captured_minor=700) == 700


def test_cashback_and_gifts_stop_at_the_budget_left_and_the_places() -> None:
    assert benefit_minor(campaign(budget_minor=100, spent_minor=80), 1_000) == 20
    gift = campaign(Rule.GIFT_FIRST_PAYMENT, budget_minor=1_000, spent_minor=900)
    assert benefit_minor(gift, 1) == 100  # a gift does not depend on the amount paid
    assert benefit_minor(campaign(places_max=3, places_taken=3), 1_000) == 0


@given(st.integers(1, 10**9), st.integers(0, 10_000), st.integers(1, 10**6))
def test_cashback_is_within_zero_and_the_amount_captured(amount: int, bps: int, fixed: int) -> None:
    captured = max(1, amount // 3)
    for c in (campaign(percent_bps=max(bps, 1)), campaign(percent_bps=0, fixed_minor=fixed)):
        given_minor = stated_benefit_minor(c, amount, captured)
        assert 0 <= given_minor <= captured


@given(st.integers(1, 10**6), st.lists(st.integers(1, 10**5), min_size=1, max_size=8))
def test_refunds_take_back_the_cashback_exactly_never_more_than_each_refund(captured: int, parts: list[int]) -> None:
    cashback = stated_benefit_minor(campaign(percent_bps=1_000), captured)
    refunds, left = [], captured
    for part in parts:
        if left == 0:
            break
        refunds.append(min(part, left))
        left -= refunds[-1]
    if left:
        refunds.append(left)
    before, backs = 0, []
    for r in refunds:
        backs.append(clawback_minor(cashback, captured, before, r))
        before += r
    assert sum(backs) == cashback and all(0 <= b <= r for b, r in zip(backs, refunds, strict=True))


def test_which_campaigns_a_payment_and_a_registration_can_get() -> None:
    cashback = campaign()
    first = campaign(Rule.GIFT_FIRST_PAYMENT, id=uuid.UUID(int=11))
    signup = campaign(Rule.GIFT_REGISTRATION, id=uuid.UUID(int=12))
    discount = campaign(Rule.PERCENT, id=uuid.UUID(int=13), percent_bps=100)
    every = [cashback, first, signup, discount]
    assert [o.campaign.id for o in offers(every, purchase(), NOW)] == [discount.id]  # discounts only, by default
    assert [o.campaign.id for o in offers(every, purchase(), NOW, frozenset({Rule.CASHBACK}))] == [cashback.id]
    assert not eligible(signup, purchase(), NOW)  # a registration gift is no payment's
    assert [o.campaign.id for o in registration_gifts(every, NOW)] == [signup.id]
    assert registration_gifts([replace(signup, ended_at=NOW)], NOW) == []
    assert may_apply([signup], purchase(), NOW) is False
    assert may_apply([first], purchase(1), NOW) is True  # a gift of a first payment of any amount
    assert may_apply([cashback], purchase(), NOW) is True
    assert may_apply([cashback], purchase(), NOW, DISCOUNTS) is False
    assert Rule.GIFT_REGISTRATION not in AT_PAYMENT


def test_the_largest_gift_wins_then_the_one_ending_first() -> None:
    small = campaign(Rule.GIFT_FIRST_PAYMENT, id=uuid.UUID(int=20), fixed_minor=100)
    big = campaign(Rule.GIFT_FIRST_PAYMENT, id=uuid.UUID(int=21), fixed_minor=500)
    soon = campaign(Rule.GIFT_FIRST_PAYMENT, id=uuid.UUID(int=22), fixed_minor=500, ends_at=NOW + timedelta(minutes=5))
    found = offers([small, big, soon], purchase(), NOW, frozenset({Rule.GIFT_FIRST_PAYMENT}))
    assert [o.campaign.id for o in found] == [soon.id, big.id, small.id]


@pytest.mark.parametrize(("changes", "param"), [
    ({"percent_bps": 0}, "fixed_amount"),
    ({"fixed_minor": 10}, "fixed_amount"),
    ({"percent_bps": 10_001}, "percent_bps"),
])
def test_cashback_terms_refused(changes: dict[str, object], param: str) -> None:
    with pytest.raises(CampaignError) as refused:
        campaign(**changes)
    assert refused.value.param == param


@pytest.mark.parametrize(("rule", "changes", "param"), [
    (Rule.GIFT_FIRST_PAYMENT, {"cap_minor": 10}, "cap"),
    (Rule.GIFT_FIRST_PAYMENT, {"per_holder_max": 2}, "per_holder_limit"),
    (Rule.GIFT_FIRST_PAYMENT, {"fixed_minor": 0}, "fixed_amount"),
    (Rule.GIFT_REGISTRATION, {"merchant_ids": frozenset({MERCHANT})}, "merchants"),
    (Rule.GIFT_REGISTRATION, {"min_amount_minor": 100}, "merchants"),
    (Rule.GIFT_REGISTRATION, {"funded_by": Funder.MERCHANT}, "funded_by"),
    (Rule.GIFT_FIRST_PAYMENT, {"funded_by": Funder.MERCHANT}, "funded_by"),
])
def test_gift_terms_refused(rule: Rule, changes: dict[str, object], param: str) -> None:
    with pytest.raises(CampaignError) as refused:
        campaign(rule, **changes)
    assert refused.value.param == param


def test_credits_move_money_from_the_promotions_account_to_the_wallet() -> None:
    for make, kind in ((ledger.cashback, ledger.EntryKind.CASHBACK), (ledger.gift, ledger.EntryKind.GIFT)):
        entry = make(HOLDER, "CNY", 120)
        assert entry.kind is kind
        assert {(p.account, p.amount_minor) for p in entry.postings} == {
            (ledger.promotions("CNY"), -120), (ledger.wallet(HOLDER, "CNY"), 120)}
        with pytest.raises(ledger.UnbalancedEntry):
            make(HOLDER, "CNY", 0)


def test_a_refund_nets_a_cashback_clawback_as_large_as_the_refund() -> None:
    """The whole refund taken back (a 100 % cashback): nothing goes to the wallet, nothing is debited."""
    entry = ledger.discounted_refund(HOLDER, MERCHANT, "CNY", 100, 0, 100)
    assert {p.account.kind for p in entry.postings} == {ledger.AccountKind.MERCHANT, ledger.AccountKind.PROMOTIONS}


def test_a_merchant_funded_cashback_is_at_most_what_the_merchant_nets_from_the_capture() -> None:
    """The bank may give back the whole capture; a merchant never pays out more than captured - fee."""
    whole = campaign(percent_bps=10_000)
    mine = campaign(percent_bps=10_000, funded_by=Funder.MERCHANT)
    assert stated_benefit_minor(whole, 1_000, 700, fee_minor=10) == 700
    assert stated_benefit_minor(mine, 1_000, 700, fee_minor=10) == 690
    assert stated_benefit_minor(mine, 1_000, 10, fee_minor=10) == 0  # the fee takes it all: no cashback
    assert stated_benefit_minor(campaign(funded_by=Funder.MERCHANT), 1_000, fee_minor=10) == 50
    assert benefit_minor(mine, 1_000, 1_000, fee_minor=10) == 990
    assert [o.benefit_minor for o in offers([mine], purchase(), NOW, frozenset({Rule.CASHBACK}), 1_000, 10)] == [990]


@given(st.integers(1, 10**9), st.integers(1, 10_000), st.integers(0, 10**6))
def test_a_merchant_funded_cashback_never_exceeds_the_capture_less_its_fee(amount: int, bps: int, fee: int) -> None:
    captured = max(1, amount // 2)
    fee = min(fee, captured)
    given_minor = stated_benefit_minor(campaign(percent_bps=bps, funded_by=Funder.MERCHANT), amount, captured, fee)
    assert 0 <= given_minor <= captured - fee


def test_a_merchant_funded_cashback_is_two_legs_of_its_capture_entry() -> None:
    capture = ledger.capture(HOLDER, MERCHANT, "CNY", 1_000, 10)
    entry = ledger.with_merchant_cashback(capture, HOLDER, MERCHANT, "CNY", 50)
    assert entry.kind is ledger.EntryKind.CAPTURE
    assert sorted((p.account.kind.value, p.amount_minor) for p in entry.postings) == sorted([
        ("wallet", -1_000), ("merchant_receivable", 990), ("fees", 10), ("merchant_receivable", -50), ("wallet", 50)])
    assert sum(p.amount_minor for p in entry.postings if p.account == ledger.merchant(MERCHANT, "CNY")) == 940
    with pytest.raises(ledger.UnbalancedEntry):
        ledger.with_merchant_cashback(capture, HOLDER, MERCHANT, "CNY", 991)  # more than the merchant receives
    with pytest.raises(ledger.UnbalancedEntry):
        ledger.with_merchant_cashback(ledger.refund(HOLDER, MERCHANT, "CNY", 100, 1), HOLDER, MERCHANT, "CNY", 5)


def test_a_refund_gives_a_merchant_funded_clawback_back_to_the_merchant() -> None:
    entry = ledger.refund(HOLDER, MERCHANT, "CNY", 400, 4, merchant_clawback_minor=20)
    assert sorted((p.account.kind.value, p.amount_minor) for p in entry.postings) == sorted([
        ("merchant_receivable", -396), ("fees", -4), ("wallet", 380), ("merchant_receivable", 20)])
    assert ledger.AccountKind.PROMOTIONS not in {p.account.kind for p in entry.postings}
    with pytest.raises(ledger.UnbalancedEntry):
        ledger.refund(HOLDER, MERCHANT, "CNY", 400, 4, merchant_clawback_minor=401)
