"""Ledger entries: every recipe balances per currency; unbalanced, zero, non-int or lone postings are refused."""

from __future__ import annotations

import uuid
from collections import defaultdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain import ledger
from gateway.domain.ledger import (
    AccountKind,
    AccountRef,
    Entry,
    EntryKind,
    Posting,
    UnbalancedEntry,
)
from gateway.domain.money import AMOUNT_MINOR_MAX

HOLDER = uuid.UUID("11111111-1111-4111-8111-111111111111")
MERCHANT = uuid.UUID("22222222-2222-4222-8222-222222222222")
CURRENCIES = ("CNY", "JPY", "KWD", "USD")

amounts_minor = st.integers(min_value=1, max_value=AMOUNT_MINOR_MAX)


def totals_by_currency(entry: Entry) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for posting in entry.postings:
        totals[posting.account.currency] += posting.amount_minor
    return dict(totals)


def amounts_by_account(*entries: Entry) -> dict[AccountRef, int]:
    amounts: dict[AccountRef, int] = defaultdict(int)
    for entry in entries:
        for posting in entry.postings:
            amounts[posting.account] += posting.amount_minor
    return dict(amounts)


def assert_well_formed(entry: Entry) -> None:
    assert len(entry.postings) >= 2
    assert all(type(p.amount_minor) is int and p.amount_minor != 0 for p in entry.postings)
    assert all(total == 0 for total in totals_by_currency(entry).values())


# -- recipes ------------------------------------------------------------------------------------


@given(currency=st.sampled_from(CURRENCIES), amount_minor=amounts_minor)
def test_top_up_moves_clearing_into_the_wallet(currency: str, amount_minor: int) -> None:
    entry = ledger.top_up(HOLDER, currency, amount_minor)
    assert_well_formed(entry)
    assert entry.kind is EntryKind.TOP_UP
    assert amounts_by_account(entry) == {
        ledger.clearing(currency): -amount_minor,
        ledger.wallet(HOLDER, currency): amount_minor,
    }


@given(currency=st.sampled_from(CURRENCIES), amount_minor=amounts_minor)
def test_withdrawal_moves_the_wallet_to_clearing(currency: str, amount_minor: int) -> None:
    entry = ledger.withdrawal(HOLDER, currency, amount_minor)
    assert_well_formed(entry)
    assert entry.kind is EntryKind.WITHDRAWAL
    assert amounts_by_account(entry) == {
        ledger.wallet(HOLDER, currency): -amount_minor,
        ledger.clearing(currency): amount_minor,
    }


@st.composite
def amount_and_fee(draw: st.DrawFn) -> tuple[int, int]:
    amount_minor = draw(amounts_minor)
    return amount_minor, draw(st.integers(min_value=0, max_value=amount_minor))


@given(currency=st.sampled_from(CURRENCIES), amounts=amount_and_fee())
def test_capture_splits_the_payment_between_merchant_and_fees(currency: str, amounts: tuple[int, int]) -> None:
    amount_minor, fee_minor = amounts
    entry = ledger.capture(HOLDER, MERCHANT, currency, amount_minor, fee_minor)
    assert_well_formed(entry)
    assert entry.kind is EntryKind.CAPTURE
    expected = {
        ledger.wallet(HOLDER, currency): -amount_minor,
        ledger.merchant(MERCHANT, currency): amount_minor - fee_minor,
        ledger.fees(currency): fee_minor,
    }
    assert amounts_by_account(entry) == {account: amount for account, amount in expected.items() if amount}


@given(currency=st.sampled_from(CURRENCIES), amounts=amount_and_fee())
def test_refund_takes_back_from_merchant_and_fees(currency: str, amounts: tuple[int, int]) -> None:
    amount_minor, fee_back_minor = amounts
    entry = ledger.refund(HOLDER, MERCHANT, currency, amount_minor, fee_back_minor)
    assert_well_formed(entry)
    assert entry.kind is EntryKind.REFUND
    expected = {
        ledger.merchant(MERCHANT, currency): -(amount_minor - fee_back_minor),
        ledger.fees(currency): -fee_back_minor,
        ledger.wallet(HOLDER, currency): amount_minor,
    }
    assert amounts_by_account(entry) == {account: amount for account, amount in expected.items() if amount}


@given(currency=st.sampled_from(CURRENCIES), amounts=amount_and_fee())
def test_full_refund_undoes_the_capture(currency: str, amounts: tuple[int, int]) -> None:
    amount_minor, fee_minor = amounts
    captured = ledger.capture(HOLDER, MERCHANT, currency, amount_minor, fee_minor)
    refunded = ledger.refund(HOLDER, MERCHANT, currency, amount_minor, fee_minor)
    assert all(amount == 0 for amount in amounts_by_account(captured, refunded).values())


def test_fee_legs_of_zero_are_left_out() -> None:
    assert len(ledger.capture(HOLDER, MERCHANT, "CNY", 100, 0).postings) == 2
    assert len(ledger.capture(HOLDER, MERCHANT, "CNY", 100, 100).postings) == 2
    assert len(ledger.capture(HOLDER, MERCHANT, "CNY", 100, 1).postings) == 3


@pytest.mark.parametrize(("amount_minor", "fee_minor"), [(100, -1), (100, 101), (0, 1), (-100, 0)])
def test_capture_with_fee_out_of_range_refused(amount_minor: int, fee_minor: int) -> None:
    with pytest.raises(UnbalancedEntry):
        ledger.capture(HOLDER, MERCHANT, "CNY", amount_minor, fee_minor)


@pytest.mark.parametrize(("amount_minor", "fee_back_minor"), [(100, -1), (100, 101), (0, 1), (-100, 0)])
def test_refund_with_fee_out_of_range_refused(amount_minor: int, fee_back_minor: int) -> None:
    with pytest.raises(UnbalancedEntry):
        ledger.refund(HOLDER, MERCHANT, "CNY", amount_minor, fee_back_minor)


@pytest.mark.parametrize(
    "build",
    [
        lambda: ledger.top_up(HOLDER, "CNY", 0),
        lambda: ledger.withdrawal(HOLDER, "CNY", 0),
        lambda: ledger.capture(HOLDER, MERCHANT, "CNY", 0, 0),
        lambda: ledger.refund(HOLDER, MERCHANT, "CNY", 0, 0),
    ],
    ids=["top_up", "withdrawal", "capture", "refund"],
)
def test_recipes_of_nothing_refused(build: object) -> None:
    assert callable(build)
    with pytest.raises(UnbalancedEntry):
        build()


# -- the Entry invariant ------------------------------------------------------------------------


def posting(kind: AccountKind, currency: str, amount_minor: object) -> Posting:
    return Posting(AccountRef(kind, None, currency), amount_minor)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "postings",
    [
        (),
        (posting(AccountKind.CLEARING, "CNY", 100),),
        (posting(AccountKind.CLEARING, "CNY", 0), posting(AccountKind.FEES, "CNY", 0)),
        (
            posting(AccountKind.CLEARING, "CNY", -100),
            posting(AccountKind.FEES, "CNY", 100),
            posting(AccountKind.WALLET, "CNY", 0),
        ),
        (posting(AccountKind.CLEARING, "CNY", -100), posting(AccountKind.FEES, "CNY", 99)),
        (posting(AccountKind.CLEARING, "CNY", -100), posting(AccountKind.FEES, "JPY", 100)),
        (posting(AccountKind.CLEARING, "CNY", -1.0), posting(AccountKind.FEES, "CNY", 1.0)),
        (posting(AccountKind.CLEARING, "CNY", -0.5), posting(AccountKind.FEES, "CNY", 0.5)),
        (posting(AccountKind.CLEARING, "CNY", -True), posting(AccountKind.FEES, "CNY", True)),
        (posting(AccountKind.CLEARING, "CNY", False), posting(AccountKind.FEES, "CNY", False)),
        (posting(AccountKind.CLEARING, "CNY", "-1"), posting(AccountKind.FEES, "CNY", "1")),
    ],
    ids=[
        "empty", "single", "all_zero", "one_zero", "unbalanced", "balanced_across_currencies_only",
        "float_whole", "float_fraction", "bool_true", "bool_false", "str",
    ],
)  # fmt: skip
def test_entry_refuses(postings: tuple[Posting, ...]) -> None:
    with pytest.raises(UnbalancedEntry):
        Entry(EntryKind.TOP_UP, postings)


def test_unbalanced_entry_is_a_value_error() -> None:
    assert issubclass(UnbalancedEntry, ValueError)


@st.composite
def balanced_postings(draw: st.DrawFn) -> list[Posting]:
    """Postings built from transfers (+a to one account, -a from another) across several currencies."""
    postings: list[Posting] = []
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        currency = draw(st.sampled_from(CURRENCIES))
        amount_minor = draw(st.integers(min_value=1, max_value=AMOUNT_MINOR_MAX))
        source, target = draw(st.lists(st.sampled_from(list(AccountKind)), min_size=2, max_size=2))
        postings.append(Posting(AccountRef(source, None, currency), -amount_minor))
        postings.append(Posting(AccountRef(target, None, currency), amount_minor))
    return draw(st.permutations(postings))


@given(balanced_postings())
def test_any_balanced_multi_currency_entry_accepted(postings: list[Posting]) -> None:
    entry = Entry(EntryKind.TOP_UP, tuple(postings))
    assert entry.postings == tuple(postings)


@given(postings=balanced_postings(), data=st.data())
def test_any_changed_amount_refused(postings: list[Posting], data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(postings) - 1))
    delta = data.draw(st.integers(min_value=-AMOUNT_MINOR_MAX, max_value=AMOUNT_MINOR_MAX).filter(lambda d: d != 0))
    postings[index] = Posting(postings[index].account, postings[index].amount_minor + delta)
    with pytest.raises(UnbalancedEntry):
        Entry(EntryKind.TOP_UP, tuple(postings))


@given(postings=balanced_postings(), data=st.data())
def test_any_dropped_posting_refused(postings: list[Posting], data: st.DataObject) -> None:
    del postings[data.draw(st.integers(min_value=0, max_value=len(postings) - 1))]
    with pytest.raises(UnbalancedEntry):
        Entry(EntryKind.TOP_UP, tuple(postings))


@given(postings=balanced_postings(), data=st.data())
def test_any_posting_moved_to_another_currency_refused(postings: list[Posting], data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(postings) - 1))
    account = postings[index].account
    other = data.draw(st.sampled_from([code for code in CURRENCIES if code != account.currency]))
    postings[index] = Posting(AccountRef(account.kind, account.owner, other), postings[index].amount_minor)
    with pytest.raises(UnbalancedEntry):
        Entry(EntryKind.TOP_UP, tuple(postings))


@given(postings=balanced_postings(), data=st.data())
def test_any_extra_posting_refused(postings: list[Posting], data: st.DataObject) -> None:
    currency = data.draw(st.sampled_from(CURRENCIES))
    amount_minor = data.draw(
        st.integers(min_value=-AMOUNT_MINOR_MAX, max_value=AMOUNT_MINOR_MAX).filter(lambda a: a != 0)
    )
    postings.insert(
        data.draw(st.integers(min_value=0, max_value=len(postings))),
        Posting(AccountRef(AccountKind.FEES, None, currency), amount_minor),
    )
    with pytest.raises(UnbalancedEntry):
        Entry(EntryKind.TOP_UP, tuple(postings))
