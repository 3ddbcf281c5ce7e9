"""Promotions domain: eligibility, the benefit's rounding and bounds, the choice among campaigns, and
clawbacks whose parts sum exactly to the benefit."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain import ledger
from gateway.domain.promotions import (
    SHARD_COUNT_MAX, Campaign, CampaignError, CaptureShare, Funder, Purchase, Rule, benefit_minor, capture_share,
    clawback_minor, eligible,
    largest_benefit_minor, may_apply, offers, shard_split, stated_benefit_minor, window,
)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
MERCHANT = uuid.UUID(int=1)
STORE = uuid.UUID(int=2)


def campaign(**changes: object) -> Campaign:
    base = Campaign(id=uuid.UUID(int=10), currency="CNY", rule=Rule.PERCENT, funded_by=Funder.BANK,
                    starts_at=NOW - timedelta(hours=1), ends_at=NOW + timedelta(hours=1), budget_minor=100_000,
                    percent_bps=1_000)
    return replace(base, **changes)  # type: ignore[arg-type]


def purchase(amount_minor: int = 1_000, **changes: object) -> Purchase:
    return replace(Purchase(MERCHANT, STORE, "CNY", amount_minor, "5812"), **changes)  # type: ignore[arg-type]


def test_percent_rounds_down_and_is_capped() -> None:
    assert stated_benefit_minor(campaign(), 1_000) == 100
    assert stated_benefit_minor(campaign(), 1_009) == 100  # 100.9 rounds down
    assert stated_benefit_minor(campaign(cap_minor=50), 1_000) == 50


def test_fixed_is_never_the_whole_amount() -> None:
    c = campaign(rule=Rule.FIXED, percent_bps=0, fixed_minor=500)
    assert stated_benefit_minor(c, 2_000) == 500
    assert stated_benefit_minor(c, 300) == 299  # the holder pays at least one unit
    assert stated_benefit_minor(c, 1) == 0


def test_benefit_never_exceeds_the_budget_left_or_the_places() -> None:
    assert benefit_minor(campaign(budget_minor=1_000, spent_minor=970), 1_000) == 30
    assert benefit_minor(campaign(budget_minor=1_000, spent_minor=1_000), 1_000) == 0
    assert benefit_minor(campaign(places_max=5, places_taken=5), 1_000) == 0
    assert benefit_minor(campaign(places_max=5, places_taken=4), 1_000) == 100


@pytest.mark.parametrize(("c", "p", "ok"), [
    (campaign(), purchase(), True),
    (campaign(currency="USD"), purchase(), False),
    (campaign(min_amount_minor=2_000), purchase(1_999), False),
    (campaign(min_amount_minor=2_000), purchase(2_000), True),
    (campaign(merchant_ids=frozenset({uuid.UUID(int=99)})), purchase(), False),
    (campaign(merchant_ids=frozenset({MERCHANT})), purchase(), True),
    (campaign(store_ids=frozenset({uuid.UUID(int=99)})), purchase(), False),
    (campaign(store_ids=frozenset({STORE})), purchase(store_id=None), False),
    (campaign(mccs=frozenset({"5411"})), purchase(), False),
    (campaign(mccs=frozenset({"5411"})), purchase(mcc=None), True),  # not known: may apply
    (campaign(ended_at=NOW - timedelta(seconds=1)), purchase(), False),
    (campaign(starts_at=NOW), purchase(), True),  # the start is inclusive
    (campaign(ends_at=NOW, starts_at=NOW - timedelta(hours=2)), purchase(), False),  # the end is exclusive
    (campaign(), purchase(1), False),
])
def test_eligibility(c: Campaign, p: Purchase, ok: bool) -> None:
    assert eligible(c, p, NOW) is ok
    assert may_apply([c], p, NOW) is ok


def test_the_largest_benefit_wins_then_the_one_ending_first_then_the_smallest_id() -> None:
    small = campaign(id=uuid.UUID(int=1), percent_bps=500)
    big_late = campaign(id=uuid.UUID(int=2), percent_bps=2_000, ends_at=NOW + timedelta(hours=5))
    big_soon = campaign(id=uuid.UUID(int=3), percent_bps=2_000, ends_at=NOW + timedelta(hours=2))
    big_soon_twin = campaign(id=uuid.UUID(int=4), percent_bps=2_000, ends_at=NOW + timedelta(hours=2))
    order = [o.campaign.id for o in offers([small, big_late, big_soon_twin, big_soon], purchase(), NOW)]
    assert order == [big_soon.id, big_soon_twin.id, big_late.id, small.id]
    assert offers([campaign(currency="USD")], purchase(), NOW) == []


def test_window_is_local_time_in_its_zone() -> None:
    starts, ends = window(datetime(2026, 12, 1), datetime(2026, 12, 2), ZoneInfo("Asia/Shanghai"))
    assert starts.astimezone(UTC) == datetime(2026, 11, 30, 16, tzinfo=UTC)
    assert ends - starts == timedelta(days=1)
    with pytest.raises(CampaignError) as exc:
        window(datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 2), ZoneInfo("UTC"))
    assert exc.value.param == "starts_at"


@pytest.mark.parametrize(("changes", "param"), [
    ({"percent_bps": 0}, "percent_bps"), ({"percent_bps": 10_001}, "percent_bps"),
    ({"fixed_minor": 5}, "fixed_amount"), ({"rule": Rule.FIXED, "percent_bps": 0}, "fixed_amount"),
    ({"cap_minor": 0}, "cap"), ({"budget_minor": 0}, "budget"), ({"min_amount_minor": -1}, "min_amount"),
    ({"per_holder_max": 0}, "per_holder_limit"), ({"places_max": 0}, "places"), ({"ends_at": NOW - timedelta(hours=1)},
                                                                                 "ends_at"),
])
def test_inconsistent_terms_name_their_field(changes: dict[str, object], param: str) -> None:
    with pytest.raises(CampaignError) as exc:
        campaign(**changes)
    assert exc.value.param == param


def test_clawback_of_a_full_refund_is_the_whole_benefit() -> None:
    assert clawback_minor(99, 1_000, 0, 1_000) == 99
    assert clawback_minor(0, 1_000, 0, 1_000) == 0
    with pytest.raises(ValueError):
        clawback_minor(99, 1_000, 600, 500)


@given(st.integers(2, 10**9), st.data())
def test_partial_clawbacks_sum_exactly_to_the_benefit(captured_minor: int, data: st.DataObject) -> None:
    benefit = data.draw(st.integers(1, captured_minor - 1))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, captured_minor - 1), max_size=20)))) + [captured_minor]
    refunded = 0
    total = 0
    for cut in cuts:
        part = cut - refunded
        back = clawback_minor(benefit, captured_minor, refunded, part)
        assert 0 <= back <= part  # the holder never pays to be refunded
        total += back
        refunded = cut
        assert total <= benefit
    assert total == benefit


def test_discounted_entries_balance_and_show_who_paid() -> None:
    holder, merchant = uuid.UUID(int=5), uuid.UUID(int=6)
    capture = ledger.discounted_capture(holder, merchant, "CNY", 1_000, 10, 100)
    legs = {p.account.kind: p.amount_minor for p in capture.postings}
    assert legs == {ledger.AccountKind.WALLET: -900, ledger.AccountKind.PROMOTIONS: -100,
                    ledger.AccountKind.MERCHANT: 990, ledger.AccountKind.FEES: 10}
    refund = ledger.discounted_refund(holder, merchant, "CNY", 500, 5, 50)
    legs = {p.account.kind: p.amount_minor for p in refund.postings}
    assert legs == {ledger.AccountKind.WALLET: 450, ledger.AccountKind.PROMOTIONS: 50,
                    ledger.AccountKind.MERCHANT: -495, ledger.AccountKind.FEES: -5}
    with pytest.raises(ledger.UnbalancedEntry):
        ledger.discounted_capture(holder, merchant, "CNY", 1_000, 10, 1_000)


def test_a_campaign_is_spread_over_rows_that_each_hold_eight_of_its_largest_benefits() -> None:
    assert shard_split(12_850, None, 100) == [(804, None)] * 2 + [(803, None)] * 14
    assert shard_split(1_000_000, 100, 100) == [(83_334, 9)] * 4 + [(83_333, 8)] * 8
    assert shard_split(150, None, 100) == [(150, None)]  # not 8 benefits: one row
    assert shard_split(10**12, 5, 50) == [(10**12, 5)]  # 5 places: one row of them
    assert len(shard_split(10**12, None, 50)) == SHARD_COUNT_MAX
    for budget, places, largest in ((1, None, 1), (7_777, 77, 13), (10**9, None, 3), (999, 999, 1)):
        rows = shard_split(budget, places, largest)
        assert sum(b for b, _ in rows) == budget and all(b >= 1 for b, _ in rows)
        assert places is None or (sum(p or 0 for _, p in rows) == places and all(p for _, p in rows))
    with pytest.raises(ValueError):
        shard_split(0, None, 1)


def test_the_largest_benefit_is_the_fixed_amount_or_the_percentage_of_the_largest_payment_at_most_the_cap() -> None:
    assert largest_benefit_minor(campaign(percent_bps=1_000), 50_000) == 5_000
    assert largest_benefit_minor(campaign(percent_bps=1_000, cap_minor=200), 50_000) == 200
    assert largest_benefit_minor(campaign(rule=Rule.FIXED, percent_bps=0, fixed_minor=300), 50_000) == 300
    assert largest_benefit_minor(campaign(percent_bps=1), 10) == 1


def test_a_full_capture_keeps_the_whole_reserved_discount() -> None:
    assert capture_share(150, 2_000, 2_000, Funder.BANK) == CaptureShare(150, 2_000, 0, False)
    assert capture_share(150, 2_000, 2_000, Funder.MERCHANT) == CaptureShare(150, 1_850, 0, False)


def test_a_partial_capture_keeps_its_share_rounded_down() -> None:
    assert capture_share(333, 1_001, 500, Funder.BANK) == CaptureShare(166, 500, 167, False)  # 166.33
    assert capture_share(300, 3_001, 1_000, Funder.MERCHANT) == CaptureShare(99, 901, 201, False)  # 99.97
    assert capture_share(100, 1_000, 9, Funder.BANK) == CaptureShare(0, 9, 100, True)  # nothing: the place back
    with pytest.raises(ValueError):
        capture_share(100, 1_000, 1_001, Funder.BANK)
    with pytest.raises(ValueError):
        capture_share(1_000, 1_000, 1, Funder.BANK)


@given(st.integers(2, 10**12), st.data())
def test_a_capture_share_never_gives_more_than_reserved_and_the_holder_always_pays(authorized_minor: int,
                                                                                   data: st.DataObject) -> None:
    reserved = data.draw(st.integers(1, authorized_minor - 1))
    capture = data.draw(st.integers(1, authorized_minor))
    for funder in Funder:
        share = capture_share(reserved, authorized_minor, capture, funder)
        assert 0 <= share.discount_minor <= reserved and share.discount_minor + share.given_back_minor == reserved
        assert share.discount_minor * authorized_minor <= reserved * capture  # never more than the exact share
        assert (share.discount_minor + 1) * authorized_minor > reserved * capture  # less by under one unit
        assert capture - share.discount_minor >= 1  # the holder pays at least one minor unit
        assert share.captured_minor == (capture if funder is Funder.BANK else capture - share.discount_minor)
