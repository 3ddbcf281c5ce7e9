"""FX arithmetic: exact rates, the rounding rules of gateway.domain.fx, the rates file."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain import fx, ledger
from gateway.domain.money import AMOUNT_MINOR_MAX, currency
from gateway.errors import InvalidRequest

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
CNY, USD, JPY, KWD, EUR = (currency(c) for c in ("CNY", "USD", "JPY", "KWD", "EUR"))


def _code(exc: pytest.ExceptionInfo[InvalidRequest]) -> str:
    return exc.value.code


@pytest.mark.parametrize("text", ["7.1234", "0.000000000001", "1000000000", "150", "0.5"])
def test_rates_parse_exactly(text: str) -> None:
    assert fx.parse_rate(text) == Decimal(text)
    assert fx.rate_text(fx.parse_rate(text)) == text


@pytest.mark.parametrize("text", [7.1234, 7, "", "abc", "-1", "0", "0.0", "1e3", "NaN", "Infinity", " 7.1",
                                  "0.0000000000001", "1000000000.1", "+7", ".5", None, True])
def test_bad_rates_are_refused(text: object) -> None:
    with pytest.raises(InvalidRequest) as exc:
        fx.parse_rate(text)
    assert _code(exc) == "invalid_rate"


def test_bps_are_bounded() -> None:
    assert fx.check_bps(0, "spread_bps", fx.SPREAD_BPS_MAX) == 0
    for bad in (-1, fx.SPREAD_BPS_MAX + 1, 1.5, True, "10"):
        with pytest.raises(InvalidRequest):
            fx.check_bps(bad, "spread_bps", fx.SPREAD_BPS_MAX)


def test_inverse_rate_is_rounded_down() -> None:
    rate = Decimal("7.1234")
    inverse = fx.directional(rate, "USD", "CNY")
    assert inverse == Decimal("0.140382401662127635")  # 1/7.1234 = 0.1403824016621276356...
    assert inverse * rate <= 1
    assert fx.directional(rate, "USD", "USD") == rate


def test_holder_rate_takes_the_spread_exactly() -> None:
    assert fx.holder_rate(Decimal("7.1234"), 50) == Decimal("7.087783")
    assert fx.holder_rate(Decimal("7.1234"), 0) == Decimal("7.1234")
    assert fx.rate_text(fx.holder_rate(Decimal("7.1234"), 50)) == "7.087783"
    assert fx.rate_text(Decimal("150.000")) == "150"


def test_usd_to_cny_rounding() -> None:
    # 100.00 USD at 7.087783 = 708.7783 CNY = 70877.83 fen; fee 0.3% = 212.63349 -> 213 (up); rest down.
    q = fx.Quote.of(USD, CNY, Decimal("7.087783"), 30, 10000)
    assert (q.sell_minor, q.fee_minor, q.receive_minor) == (10000, 213, 70877 - 213)


def test_cny_to_jpy_zero_decimals() -> None:
    # 1.00 CNY at 21.05 JPY = 21.05 yen: the holder gets 21 yen (down), no fee.
    q = fx.Quote.of(CNY, JPY, Decimal("21.05"), 0, 100)
    assert (q.receive_minor, q.fee_minor) == (21, 0)
    # 1 fen = 0.2105 yen: nothing to receive, refused.
    with pytest.raises(InvalidRequest) as exc:
        fx.Quote.of(CNY, JPY, Decimal("21.05"), 0, 1)
    assert _code(exc) == "amount_too_small"


def test_jpy_to_cny_adds_decimals() -> None:
    # 1000 yen at 0.0475 CNY = 47.50 CNY = 4750 fen exactly.
    q = fx.Quote.of(JPY, CNY, Decimal("0.0475"), 10, 1000)
    assert (q.receive_minor, q.fee_minor) == (4750 - 5, 5)  # fee 4.75 fen -> 5


def test_kwd_three_decimals() -> None:
    # 1.000 KWD (1000 fils) at 3.2512 USD = 325.12 cents; 1 fils = 0.32512 cents -> refused.
    assert fx.Quote.of(KWD, USD, Decimal("3.2512"), 0, 1000).receive_minor == 325
    with pytest.raises(InvalidRequest) as exc:
        fx.Quote.of(KWD, USD, Decimal("3.2512"), 0, 1)
    assert _code(exc) == "amount_too_small"
    # The other way: 1 cent at 0.3075 KWD = 3.075 fils -> 3 fils.
    assert fx.Quote.of(USD, KWD, Decimal("0.3075"), 0, 1).receive_minor == 3
    # JPY (0) -> KWD (3): 1 yen at 0.00205 KWD = 2.05 fils -> 2.
    assert fx.Quote.of(JPY, KWD, Decimal("0.00205"), 0, 1).receive_minor == 2


def test_a_fee_that_eats_everything_is_refused() -> None:
    # 1 cent -> 7.08 fen; a 10% fee is 0.708 -> 1 fen; the holder still gets 6 fen.
    assert fx.Quote.of(USD, CNY, Decimal("7.08"), 1000, 1).receive_minor == 6
    # 1 fen -> 0.21 yen: floor 0, fee 1 -> refused.
    with pytest.raises(InvalidRequest) as exc:
        fx.Quote.of(CNY, JPY, Decimal("21"), 1000, 1)
    assert _code(exc) == "amount_too_small"


def test_huge_amounts_are_bounded() -> None:
    with pytest.raises(InvalidRequest) as exc:
        fx.Quote.of(JPY, KWD, Decimal("1"), 0, AMOUNT_MINOR_MAX + 1)
    assert _code(exc) == "amount_too_large"
    # The sale is within bounds, what it buys is not (1 yen = 1000 fils).
    with pytest.raises(InvalidRequest) as exc:
        fx.Quote.of(JPY, KWD, Decimal("1"), 0, AMOUNT_MINOR_MAX)
    assert _code(exc) == "amount_too_large"
    with pytest.raises(InvalidRequest) as exc:
        fx.Quote.receiving(KWD, JPY, Decimal("0.000000000001"), 0, AMOUNT_MINOR_MAX)
    assert _code(exc) == "amount_too_large"


def test_same_currency_is_refused() -> None:
    with pytest.raises(InvalidRequest) as exc:
        fx.Quote.of(CNY, CNY, Decimal("1"), 0, 100)
    assert _code(exc) == "same_currency"


def test_receiving_sells_the_least_that_reaches_the_amount() -> None:
    rate = Decimal("7.087783")
    q = fx.Quote.receiving(USD, CNY, rate, 30, 70664)
    assert q.receive_minor >= 70664
    assert fx.Quote.of(USD, CNY, rate, 30, q.sell_minor - 1).receive_minor < 70664
    # JPY -> KWD: each yen buys 2 fils, so 3 fils need 2 yen and give 4.
    q = fx.Quote.receiving(JPY, KWD, Decimal("0.00205"), 0, 3)
    assert (q.sell_minor, q.receive_minor) == (2, 4)


currencies = st.sampled_from([CNY, USD, JPY, KWD, EUR])
rates = st.decimals(min_value=Decimal("0.00001"), max_value=Decimal("100000"), places=6)


@given(source=currencies, target=currencies, rate=rates, fee_bps=st.integers(0, fx.FEE_BPS_MAX),
       sell=st.integers(1, 10**12))
def test_a_quote_never_creates_money(source: object, target: object, rate: Decimal, fee_bps: int, sell: int) -> None:
    assert isinstance(source, type(CNY)) and isinstance(target, type(CNY))
    if source.code == target.code or rate == 0:
        return
    try:
        q = fx.Quote.of(source, target, rate, fee_bps, sell)
    except InvalidRequest as exc:
        assert exc.code in ("amount_too_small", "amount_too_large")
        return
    gross = sell * Fraction(rate) * Fraction(10) ** (target.exponent - source.exponent)
    assert q.receive_minor > 0 and q.fee_minor >= 0
    assert q.receive_minor + q.fee_minor <= gross < q.receive_minor + q.fee_minor + 1
    assert q.fee_minor >= gross * fee_bps / fx.BPS > q.fee_minor - 1
    entry = ledger.conversion(ledger_owner, source.code, target.code, q.sell_minor, q.receive_minor, q.fee_minor)
    assert len(entry.postings) in (4, 5)


@given(source=currencies, target=currencies, rate=rates, fee_bps=st.integers(0, fx.FEE_BPS_MAX),
       want=st.integers(1, 10**9))
def test_receiving_is_minimal(source: object, target: object, rate: Decimal, fee_bps: int, want: int) -> None:
    assert isinstance(source, type(CNY)) and isinstance(target, type(CNY))
    if source.code == target.code:
        return
    try:
        q = fx.Quote.receiving(source, target, rate, fee_bps, want)
    except InvalidRequest as exc:
        assert exc.code == "amount_too_large"
        return
    assert q.receive_minor >= want
    if q.sell_minor > 1:
        try:
            assert fx.Quote.of(source, target, rate, fee_bps, q.sell_minor - 1).receive_minor < want
        except InvalidRequest as exc:
            assert exc.code == "amount_too_small"


ledger_owner = __import__("uuid").UUID(int=7)


def test_conversion_entry_balances_per_currency() -> None:
    entry = ledger.conversion(ledger_owner, "USD", "CNY", 10000, 70664, 213)
    legs = {(p.account.kind, p.account.currency): p.amount_minor for p in entry.postings}
    assert legs == {
        (ledger.AccountKind.WALLET, "USD"): -10000, (ledger.AccountKind.FX_POSITION, "USD"): 10000,
        (ledger.AccountKind.FX_POSITION, "CNY"): -70877, (ledger.AccountKind.WALLET, "CNY"): 70664,
        (ledger.AccountKind.FX_FEES, "CNY"): 213,
    }
    assert len(ledger.conversion(ledger_owner, "USD", "CNY", 100, 700, 0).postings) == 4  # no zero fee leg
    for bad in ((0, 1, 0), (1, 0, 0), (1, 1, -1)):
        with pytest.raises(ledger.UnbalancedEntry):
            ledger.conversion(ledger_owner, "USD", "CNY", *bad)
    with pytest.raises(ledger.UnbalancedEntry):
        ledger.conversion(ledger_owner, "USD", "USD", 1, 1, 0)


def test_rate_rows() -> None:
    row = fx.rate_row("usd", "CNY", "7.1234", 50, "2026-12-01T00:00:00Z", "2026-12-02T00:00:00+08:00", NOW)
    assert (row.base, row.quote, row.rate, row.spread_bps) == ("USD", "CNY", Decimal("7.1234"), 50)
    assert row.valid_from is not None and row.valid_from.utcoffset() is not None
    for bad, code in [(("USD", "USD", "1", 0, None, None), "same_currency"),
                      (("USD", "XAU", "1", 0, None, None), "invalid_currency"),
                      (("USD", "CNY", "1", 0, "2026-12-01", None), "invalid_timestamp"),
                      (("USD", "CNY", "1", 0, "yesterday", None), "invalid_timestamp"),
                      (("USD", "CNY", "1", 0, "2026-12-02T00:00:00Z", "2026-12-01T00:00:00Z"), "invalid_validity"),
                      (("USD", "CNY", "1", 0, None, "2026-12-02T07:00:00Z"), "invalid_validity")]:
        with pytest.raises(InvalidRequest) as exc:
            fx.rate_row(*bad, NOW)  # type: ignore[misc]
        assert _code(exc) == code, bad


HEADER = "base,quote,rate,spread_bps,valid_from,valid_until\n"


def test_rates_file() -> None:
    rows = fx.parse_rates_csv(HEADER + "USD,CNY,7.1234,50,2026-12-01T00:00:00Z,\r\nEUR,CNY,7.7,0,,\n\n", 10, NOW)
    assert [(r.base, r.quote, r.rate, r.valid_from, r.valid_until) for r in rows] == [
        ("USD", "CNY", Decimal("7.1234"), datetime(2026, 12, 1, tzinfo=UTC), None),
        ("EUR", "CNY", Decimal("7.7"), NOW, None)]


@pytest.mark.parametrize(("text", "line"), [
    ("", "line 1"),
    ("base,quote,rate\n", "line 1"),
    (HEADER, "line 2"),
    (HEADER + "USD,CNY,7.1,0,,\nUSD,CNY,7.1,0,,,\n", "line 3"),
    (HEADER + "USD,CNY,7.1,0,,\nUSD,CNY,7,1.5,,\n", "line 3"),
    (HEADER + "USD,CNY,7.1,0,,\nUSD,CNY,7.1,0,,\nJPY,JPY,1,0,,\n", "line 4"),
    (HEADER + "USD,CNY,seven,0,,\n", "line 2"),
    (HEADER + 'USD,CNY,"7.1\n', "line 2"),
    (HEADER + "USD,CNY,1,0,,\n" * 11, "line 12"),
])
def test_a_bad_line_refuses_the_file(text: str, line: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        fx.parse_rates_csv(text, 10, NOW)
    assert (exc.value.code, exc.value.param) == ("invalid_rate_file", line)
