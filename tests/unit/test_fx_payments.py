"""Paying from another currency and giving back: gateway.domain.fx_payments' rounding, by hand and by
property (JPY 0, EUR/CNY 2, KWD 3 decimals)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain import fx, ledger
from gateway.domain.fx_payments import Return, share
from gateway.domain.money import currency
from wallet_common.currency import Currency

CNY, EUR, JPY, KWD = (currency(c) for c in ("CNY", "EUR", "JPY", "KWD"))
FEE_BPS = 20


def _payment_quote(source: Currency, target: Currency, rate: str, base: str, amount_minor: int) -> fx.Quote:
    mid = fx.directional(Decimal(rate), base, source.code)
    return fx.Quote.receiving(source, target, fx.holder_rate(mid, 0), FEE_BPS, amount_minor)


def test_a_payment_quote_buys_at_least_the_amount_in_each_exponent() -> None:
    # 10.00 EUR from CNY at 0.128: 7836 fen * 0.128 = 1003.008 cents; fee ceil(2.006) = 3; 1003 - 3 = 1000.
    q = _payment_quote(CNY, EUR, "0.128", "CNY", 1000)
    assert (q.sell_minor, q.receive_minor, q.fee_minor) == (7836, 1000, 3)
    # 10.00 EUR from JPY (0 decimals) at EUR/JPY 160 (1 JPY = 0.00625 EUR).
    q = _payment_quote(JPY, EUR, "160", "EUR", 1000)
    assert (q.sell_minor, q.receive_minor, q.fee_minor) == (1605, 1000, 3)
    # 100.00 CNY from KWD (3 decimals) at KWD/CNY 23.5: a fils buys 2.35 fen, so the least sale buys 1 fen more.
    q = _payment_quote(KWD, CNY, "23.5", "KWD", 10_000)
    assert (q.sell_minor, q.receive_minor, q.fee_minor) == (4265, 10_001, 21)
    # 1.000 KWD from CNY (the inverse, rounded down to 18 places).
    q = _payment_quote(CNY, KWD, "23.5", "KWD", 1000)
    assert (q.sell_minor, q.receive_minor, q.fee_minor) == (2358, 1000, 3)


def test_partial_refunds_of_a_cny_wallets_eur_payment() -> None:
    sell, receive, fee = 7836, 1000, 3
    first = Return.of(sell, receive, fee, 0, 333)  # floor(7836 * 333 / 1000) = floor(2609.388)
    assert (first.source_minor, first.fee_minor) == (2609, 0)
    second = Return.of(sell, receive, fee, 333, 333)  # floor(5218.776) - 2609; fee floor(1.998) - 0
    assert (second.source_minor, second.fee_minor) == (2609, 1)
    last = Return.of(sell, receive, fee, 666, 334)  # everything: exactly what was sold, fee included
    assert (last.source_minor, last.fee_minor) == (7836 - 5218, 2)
    assert first.source_minor + second.source_minor + last.source_minor == sell


def test_jpy_has_no_decimals_to_round_into() -> None:
    one_cent = Return.of(1605, 1000, 3, 0, 1)  # 1.605 yen per cent, down
    assert (one_cent.source_minor, one_cent.fee_minor) == (1, 0)
    rest = Return.of(1605, 1000, 3, 1, 999)
    assert (rest.source_minor, rest.fee_minor) == (1604, 3)


def test_kwd_three_decimals_and_a_quote_that_bought_more_than_the_amount() -> None:
    sell, receive, fee = 4265, 10_001, 21  # 100.00 CNY paid; 0.01 CNY more bought, kept by the holder
    assert Return.of(sell, receive, fee, 0, 1).source_minor == 0  # 1 fen is worth less than 1 fils: nothing yet
    assert Return.of(sell, receive, fee, 1, 1).source_minor == 0  # 2 fen: 4265 * 2 / 10001 = 0.85...
    assert Return.of(sell, receive, fee, 2, 1).source_minor == 1  # the 3rd fen: 4265 * 3 / 10001 = 1.279...
    full = Return.of(sell, receive, fee, 0, 10_000)  # the whole payment: floor(4264.57) fils, floor(20.99) fee
    assert (full.source_minor, full.fee_minor) == (4264, 20)
    # CNY paying KWD: one fils is 2.358 fen back.
    assert Return.of(2358, 1000, 3, 0, 1).source_minor == 2


def test_a_return_beyond_what_was_received_is_refused() -> None:
    with pytest.raises(ValueError):
        Return.of(7836, 1000, 3, 900, 101)
    with pytest.raises(ValueError):
        Return.of(7836, 1000, 3, 0, 0)


@given(
    sell=st.integers(1, 10**12), receive=st.integers(1, 10**12), fee=st.integers(0, 10**9),
    parts=st.lists(st.integers(1, 10**6), min_size=1, max_size=30),
)
def test_partial_returns_never_sum_over_the_original(sell: int, receive: int, fee: int, parts: list[int]) -> None:
    returned = source_total = fee_total = 0
    for part in parts:
        if returned + part > receive:
            break
        given_back = Return.of(sell, receive, fee, returned, part)
        assert given_back.source_minor >= 0 and given_back.fee_minor >= 0
        exact = Fraction(sell * part, receive)
        assert exact - 1 < given_back.source_minor < exact + 1  # each refund within a minor unit of its share
        returned += part
        source_total += given_back.source_minor
        fee_total += given_back.fee_minor
        # The running total is the exact share rounded down: never above what was sold for it.
        assert source_total == share(sell, returned, receive) <= Fraction(sell * returned, receive)
        assert fee_total == share(fee, returned, receive)
    assert source_total <= sell and fee_total <= fee
    if returned < receive:
        last = Return.of(sell, receive, fee, returned, receive - returned)
        assert (source_total + last.source_minor, fee_total + last.fee_minor) == (sell, fee)


def test_the_return_entry_balances_in_each_currency() -> None:
    holder = uuid.uuid4()
    entry = ledger.conversion_return(holder, "CNY", "EUR", 333, 2609, 1)
    totals: dict[str, int] = {}
    for posting in entry.postings:
        totals[posting.account.currency] = totals.get(posting.account.currency, 0) + posting.amount_minor
    assert totals == {"CNY": 0, "EUR": 0}
    legs = {(p.account.kind, p.account.currency): p.amount_minor for p in entry.postings}
    assert legs == {
        (ledger.AccountKind.WALLET, "EUR"): -333, (ledger.AccountKind.FX_FEES, "EUR"): -1,
        (ledger.AccountKind.FX_POSITION, "EUR"): 334, (ledger.AccountKind.FX_POSITION, "CNY"): -2609,
        (ledger.AccountKind.WALLET, "CNY"): 2609,
    }
    # Nothing of the source back (one fen of a KWD payment): the KWD legs are left out, the entry still balances.
    small = ledger.conversion_return(holder, "KWD", "CNY", 1, 0, 0)
    assert {(p.account.kind, p.account.currency) for p in small.postings} == {
        (ledger.AccountKind.WALLET, "CNY"), (ledger.AccountKind.FX_POSITION, "CNY")}
    with pytest.raises(ledger.UnbalancedEntry):
        ledger.conversion_return(holder, "CNY", "EUR", 0, 1, 0)
    with pytest.raises(ledger.UnbalancedEntry):
        ledger.conversion_return(holder, "CNY", "CNY", 1, 1, 0)
