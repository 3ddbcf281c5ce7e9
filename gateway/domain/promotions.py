"""Promotion campaigns: eligibility, the discount a payment gets, the cashback its capture credits,
the gifts of a registration and of a first payment, the choice among campaigns and the clawback of a
refund. Pure: the clock is passed in.

Rules (each unit-tested in tests/unit/test_promotions.py):
- a campaign is in one currency: its budget, its fixed discount, its cap and its minimum amount are
  in that currency's minor units; a payment in another currency is not eligible;
- it applies from ``starts_at`` (inclusive) to ``ends_at`` (exclusive), instants made from local
  times in the campaign's time zone (``window``), and never after it was ended (``ended_at``);
- an empty set of merchants / stores / MCCs means "any"; a given set must contain the payment's;
- a percentage discount is ``floor(amount * bps / 10000)`` (rounded down: the campaign never gives
  a fraction of a unit more than it states), then at most ``cap_minor``; a fixed one is ``fixed_minor``;
- whatever the rule, a benefit is at most ``amount - 1`` (the holder always pays at least one minor
  unit, so every discounted payment still moves money from its wallet) and at most the budget
  left; a benefit of 0 is no benefit (the campaign does not apply);
- cashback (``Rule.CASHBACK``) is credited when a payment is captured, on the amount captured: a
  percentage is ``floor(captured * bps / 10000)``, a fixed amount is ``floor(fixed * captured /
  amount)`` (a partial capture gets its share), then at most ``cap_minor``, at most the amount
  captured and at most the budget left; a refund takes it back as it takes a discount back;
- cashback is funded by the bank (the promotions account pays it into the wallet, the merchant is
  paid as for any capture) or by the merchant (its receivable pays it into the wallet, in the
  capture's own ledger entry: the merchant nets captured - fee - cashback, so a merchant-funded
  cashback is at most captured - fee: the merchant never pays out more than the capture brings it);
  a refund's claw-back returns to whoever funded it;
- a gift (``Rule.GIFT_REGISTRATION``, ``Rule.GIFT_FIRST_PAYMENT``) is ``fixed_minor``, or the budget
  left if less; a registration gift has no merchant, store, MCC or minimum amount; gifts are never
  taken back; gifts are funded by the bank (the promotions account) only: a registration gift has
  no merchant, and no gift is ever taken back from the holder to return to one;
- among several applicable campaigns the holder gets the largest benefit; ties go to the campaign
  ending first, then to the smallest id (a stable, stated order);
- a refund takes back the part of the benefit proportional to the amount refunded, computed as the
  difference of cumulative shares (as ``fees.refund_fee_minor``), so partial refunds sum exactly to
  the benefit once everything is refunded and never exceed it before.
- a manual authorisation reserves its discount; its capture of part ``c`` of the authorised amount ``A``
  keeps ``floor(reserved * c / A)`` (``capture_share``: the whole when ``c = A``), the rest going back to
  the campaign's budget, and the place and the holder's use too when the share is 0.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from zoneinfo import ZoneInfo

BPS_MAX = 10_000
COUNT_MAX = 2**31 - 1  # places and per-holder limits are stored as integer: the largest accepted (no limit: None)


class Rule(StrEnum):
    PERCENT = "percent"  # percent_bps of the amount off, at most cap_minor
    FIXED = "fixed"  # fixed_minor off
    CASHBACK = "cashback"  # credited at capture: percent_bps of it (at most cap_minor), or fixed_minor
    GIFT_REGISTRATION = "gift_registration"  # fixed_minor credited when a holder registers
    GIFT_FIRST_PAYMENT = "gift_first_payment"  # fixed_minor credited with a holder's first captured payment


DISCOUNTS = frozenset({Rule.PERCENT, Rule.FIXED})
GIFTS = frozenset({Rule.GIFT_REGISTRATION, Rule.GIFT_FIRST_PAYMENT})
# What a payment can get: the fast path asks whether any of these may apply.
AT_PAYMENT = frozenset({Rule.PERCENT, Rule.FIXED, Rule.CASHBACK, Rule.GIFT_FIRST_PAYMENT})


class Funder(StrEnum):
    MERCHANT = "merchant"  # the merchant sells for less (amount - discount), or pays the cashback out of its capture
    BANK = "bank"  # the promotions account pays the discount or cashback: the merchant receives the full amount


class CampaignError(ValueError):
    """A campaign's terms are inconsistent; ``param`` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Campaign:
    id: uuid.UUID
    currency: str
    rule: Rule
    funded_by: Funder
    starts_at: datetime
    ends_at: datetime
    budget_minor: int
    percent_bps: int = 0
    fixed_minor: int = 0
    cap_minor: int | None = None
    min_amount_minor: int = 0
    per_holder_max: int | None = None  # discounted payments per holder; None: no limit
    places_max: int | None = None  # discounted payments in all; None: no limit
    merchant_ids: frozenset[uuid.UUID] = field(default_factory=frozenset)
    store_ids: frozenset[uuid.UUID] = field(default_factory=frozenset)
    mccs: frozenset[str] = field(default_factory=frozenset)
    spent_minor: int = 0
    places_taken: int = 0
    ended_at: datetime | None = None

    def __post_init__(self) -> None:
        check_terms(self)

    @property
    def budget_left_minor(self) -> int:
        return self.budget_minor - self.spent_minor

    @property
    def places_left(self) -> int | None:
        return None if self.places_max is None else self.places_max - self.places_taken


def check_terms(c: Campaign) -> None:
    """``CampaignError`` naming the first field whose value the others make impossible."""
    if c.rule is Rule.PERCENT or (c.rule is Rule.CASHBACK and c.percent_bps != 0):
        if not 0 < c.percent_bps <= BPS_MAX:
            raise CampaignError(f"percent_bps is 1-10000 for a percentage {c.rule.value}", "percent_bps")
        if c.fixed_minor != 0:
            raise CampaignError("a percentage has no fixed amount", "fixed_amount")
    else:
        if c.fixed_minor <= 0:
            raise CampaignError(f"fixed_amount is a positive integer for a {c.rule.value} rule", "fixed_amount")
        if c.percent_bps != 0:
            raise CampaignError("a fixed amount has no percentage", "percent_bps")
    if c.cap_minor is not None and c.cap_minor <= 0:
        raise CampaignError("cap is a positive integer", "cap")
    if c.rule in GIFTS and c.funded_by is not Funder.BANK:
        raise CampaignError("a gift is funded by the bank (funded_by: bank): it has no merchant's capture to come from",
                            "funded_by")
    if c.rule in GIFTS and c.cap_minor is not None:
        raise CampaignError("a gift is a fixed amount: no cap", "cap")
    if c.rule in GIFTS and c.per_holder_max not in (None, 1):
        raise CampaignError("a gift is given once per holder", "per_holder_limit")
    if c.rule is Rule.GIFT_REGISTRATION and (c.merchant_ids or c.store_ids or c.mccs or c.min_amount_minor):
        raise CampaignError("a registration gift has no merchants, stores, mccs or min_amount", "merchants")
    if c.budget_minor <= 0:
        raise CampaignError("budget is a positive integer", "budget")
    if c.min_amount_minor < 0:
        raise CampaignError("min_amount is not negative", "min_amount")
    if c.per_holder_max is not None and c.per_holder_max <= 0:
        raise CampaignError("per_holder_limit is a positive integer", "per_holder_limit")
    if c.places_max is not None and c.places_max <= 0:
        raise CampaignError("places is a positive integer", "places")
    if c.ends_at <= c.starts_at:
        raise CampaignError("ends_at is after starts_at", "ends_at")
    if not 0 <= c.spent_minor <= c.budget_minor:
        raise CampaignError("spent is within the budget", "budget")
    if c.places_max is not None and not 0 <= c.places_taken <= c.places_max:
        raise CampaignError("places taken are within the places", "places")


def window(starts_local: datetime, ends_local: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The instants of a window given in local wall time (naive datetimes) in ``zone``.

    An ambiguous local time (the hour repeated when clocks go back) is its first occurrence
    (``fold=0``); a local time skipped when clocks go forward is read with the offset before the gap.
    """
    if starts_local.tzinfo is not None or ends_local.tzinfo is not None:
        raise CampaignError("local times carry no offset: the time zone is given apart", "starts_at")
    return starts_local.replace(tzinfo=zone), ends_local.replace(tzinfo=zone)


@dataclass(frozen=True, slots=True)
class Purchase:
    """What eligibility looks at in a payment; ``mcc`` None: not known (the check is then skipped,
    which can only say "may apply": callers deciding for real pass it)."""

    merchant_id: uuid.UUID
    store_id: uuid.UUID | None
    currency: str
    amount_minor: int
    mcc: str | None = None


def live(c: Campaign, now: datetime) -> bool:
    return c.ended_at is None and c.starts_at <= now < c.ends_at


def eligible(c: Campaign, p: Purchase, now: datetime) -> bool:
    """Whether the campaign's terms admit the purchase now (budget and places aside); a registration
    gift admits no purchase."""
    if c.rule is Rule.GIFT_REGISTRATION:
        return False
    # An amount of 1 cannot be discounted: the holder pays at least one unit.
    floor_minor = 2 if c.rule in DISCOUNTS else 1
    if not live(c, now) or p.currency != c.currency or p.amount_minor < max(c.min_amount_minor, floor_minor):
        return False
    if c.merchant_ids and p.merchant_id not in c.merchant_ids:
        return False
    if c.store_ids and p.store_id not in c.store_ids:
        return False
    return not (c.mccs and p.mcc is not None and p.mcc not in c.mccs)


def stated_benefit_minor(c: Campaign, amount_minor: int, captured_minor: int | None = None,
                         fee_minor: int = 0) -> int:
    """What the rule gives a payment of ``amount_minor`` (of which ``captured_minor`` is captured:
    the whole amount when None; ``fee_minor`` the capture's fee), before the budget. A discount is
    never more than amount - 1, a cashback never more than the amount captured (a merchant-funded one
    never more than captured - fee); a gift is its fixed amount."""
    if c.rule in GIFTS:
        return c.fixed_minor
    if c.rule is Rule.CASHBACK:
        basis_minor = amount_minor if captured_minor is None else captured_minor
        if not 0 < basis_minor <= amount_minor:
            return 0
        if c.percent_bps:
            stated = basis_minor * c.percent_bps // BPS_MAX
        else:
            stated = c.fixed_minor * basis_minor // amount_minor  # a partial capture gets its share
        if c.cap_minor is not None:
            stated = min(stated, c.cap_minor)
        most_minor = basis_minor - fee_minor if c.funded_by is Funder.MERCHANT else basis_minor
        return max(0, min(stated, most_minor))
    if amount_minor <= 1:
        return 0
    if c.rule is Rule.PERCENT:
        stated = amount_minor * c.percent_bps // BPS_MAX
    else:
        stated = c.fixed_minor
    if c.cap_minor is not None:
        stated = min(stated, c.cap_minor)
    return max(0, min(stated, amount_minor - 1))


def benefit_minor(c: Campaign, amount_minor: int, captured_minor: int | None = None, fee_minor: int = 0) -> int:
    """The benefit, never more than the budget left (the last units of a budget go as a smaller
    benefit), nor with no place left; 0 when nothing is given."""
    if c.places_left is not None and c.places_left <= 0:
        return 0
    return max(0, min(stated_benefit_minor(c, amount_minor, captured_minor, fee_minor), c.budget_left_minor))


@dataclass(frozen=True, slots=True)
class Offer:
    campaign: Campaign
    benefit_minor: int


def _best_first(found: Iterable[Offer]) -> list[Offer]:
    """Best for the holder first: the largest benefit, then the campaign ending first, then the smallest id."""
    return sorted((o for o in found if o.benefit_minor > 0),
                  key=lambda o: (-o.benefit_minor, o.campaign.ends_at, o.campaign.id.bytes))


def offers(campaigns: Iterable[Campaign], p: Purchase, now: datetime, rules: frozenset[Rule] = DISCOUNTS,
           captured_minor: int | None = None, fee_minor: int = 0) -> list[Offer]:
    """The applicable campaigns of ``rules`` with their benefit, best for the holder first."""
    return _best_first(Offer(c, benefit_minor(c, p.amount_minor, captured_minor, fee_minor)) for c in campaigns
                       if c.rule in rules and eligible(c, p, now))


def registration_gifts(campaigns: Iterable[Campaign], now: datetime) -> list[Offer]:
    """The live registration gifts with what each gives, best first (a holder gets each once)."""
    return _best_first(Offer(c, benefit_minor(c, c.fixed_minor)) for c in campaigns
                       if c.rule is Rule.GIFT_REGISTRATION and live(c, now))


def may_apply(campaigns: Iterable[Campaign], p: Purchase, now: datetime, rules: frozenset[Rule] = AT_PAYMENT) -> bool:
    """Whether any campaign of ``rules`` could give this purchase a benefit (the hot path's question:
    a discount, a cashback at its capture or a first-payment gift)."""
    return any(c.rule in rules and eligible(c, p, now) and benefit_minor(c, p.amount_minor) > 0 for c in campaigns)


def clawback_minor(benefit_total_minor: int, basis_minor: int, refunded_before_minor: int, refund_minor: int) -> int:
    """The part of a benefit a refund takes back: refunding the whole ``basis_minor`` (what the
    merchant captured) takes back exactly ``benefit_total_minor``; any series of partial refunds sums
    to the same, and each part is at most the refund."""
    if basis_minor <= 0 or benefit_total_minor <= 0:
        return 0
    if refunded_before_minor < 0 or refund_minor < 0 or refunded_before_minor + refund_minor > basis_minor:
        raise ValueError("refunds exceed what was captured")
    before = benefit_total_minor * refunded_before_minor // basis_minor
    after = benefit_total_minor * (refunded_before_minor + refund_minor) // basis_minor
    return after - before


@dataclass(frozen=True, slots=True)
class CaptureShare:
    """What the capture of (part of) a manual authorisation keeps of the discount the authorisation reserved."""

    discount_minor: int  # kept: the payment's discount on this capture
    captured_minor: int  # what the payment records as captured (merchant-funded: the capture less the kept discount)
    given_back_minor: int  # back to the campaign's budget
    place_back: bool  # nothing kept: the place and the holder's use go back too


def capture_share(reserved_minor: int, authorized_minor: int, capture_minor: int, funded_by: Funder) -> CaptureShare:
    """A capture of ``capture_minor`` of the ``authorized_minor`` (the payment's amount, in list price) keeps
    ``floor(reserved * capture / authorized)`` of the reserved discount: rounded down, in favour of the
    campaign's budget as every benefit here (never a fraction of a unit more than stated); capturing
    everything keeps it whole. The holder pays ``capture - kept`` (at least one unit: the reservation is
    below the amount). A merchant-funded discount lowers what is captured; a bank-funded one is paid by
    the promotions account. A share of 0 is no benefit: the place and the use go back with the budget."""
    if not 0 < reserved_minor < authorized_minor:
        raise ValueError("a reserved discount is positive and below the authorised amount")
    if not 0 < capture_minor <= authorized_minor:
        raise ValueError("a capture is positive and at most the authorised amount")
    kept = reserved_minor * capture_minor // authorized_minor
    captured = capture_minor - kept if funded_by is Funder.MERCHANT else capture_minor
    return CaptureShare(discount_minor=kept, captured_minor=captured, given_back_minor=reserved_minor - kept,
                        place_back=kept == 0)


SHARD_COUNT_MAX = 16  # a campaign's counter rows at most (migration 0026: payments of many processes at once)
ROW_BENEFITS_MIN = 8  # a counter row holds at least this many of the campaign's largest benefits, and places


def largest_benefit_minor(c: Campaign, payment_max_minor: int) -> int:
    """The most one payment or registration can get of ``c``: its fixed amount or its percentage of the
    largest payment a wallet may make (``payment_max_minor``), at most its cap; at least 1."""
    stated = max(1, payment_max_minor * c.percent_bps // BPS_MAX) if c.percent_bps else c.fixed_minor
    return max(1, stated if c.cap_minor is None else min(stated, c.cap_minor))


def _part(total: int, count: int, index: int) -> int:
    return total // count + (1 if index < total % count else 0)


def shard_split(budget_minor: int, places_max: int | None, largest_benefit: int,
                shard_count_max: int = SHARD_COUNT_MAX) -> list[tuple[int, int | None]]:
    """A new campaign's budget and places spread over its counter rows, as evenly as integers go: the
    parts sum to the whole; there are as many rows as hold ``ROW_BENEFITS_MIN`` of its largest benefit
    and as many places each (one at least, ``shard_count_max`` at most), so that a payment mostly finds
    its whole benefit in one row: a small campaign keeps one row."""
    if budget_minor <= 0 or (places_max is not None and places_max <= 0) or largest_benefit <= 0:
        raise ValueError("a positive budget, places and benefit")
    count = min(shard_count_max, budget_minor // (ROW_BENEFITS_MIN * largest_benefit),
                shard_count_max if places_max is None else places_max // ROW_BENEFITS_MIN)
    count = max(1, count)
    return [(_part(budget_minor, count, i), None if places_max is None else _part(places_max, count, i))
            for i in range(count)]
