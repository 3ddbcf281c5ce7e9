"""Foreign exchange: exact rates, the holder's rate after the spread, quotes in integer minor units.

A rate row says how many units of ``quote`` one unit of ``base`` is worth (``USD/CNY 7.1234``:
1 USD = 7.1234 CNY), as an exact decimal (text in, ``Decimal`` inside, never a float). Converting
the other way (CNY -> USD) uses ``1 / rate`` rounded DOWN to ``INVERSE_DECIMALS`` places.

The holder's rate is the directional rate less the spread: ``rate * (10000 - spread_bps) / 10000``,
exact (at most ``INVERSE_DECIMALS + 4`` decimals); the spread is the house's margin, kept by the
FX position accounts. The fee is ``fee_bps`` of the converted amount, in the target currency.

Rounding rules (``Quote.of``), with ``gross = sell_minor * holder_rate * 10**(target_exp - source_exp)``
the exact value of what is sold, in the target currency's minor units:
- the fee is rounded UP to the target's minor unit: ``fee = ceil(gross * fee_bps / 10000)``;
- the holder receives the rest rounded DOWN: ``receive = floor(gross) - fee``;
- so ``receive + fee <= gross``: a conversion never creates money; what rounding leaves
  (less than one target minor unit, plus the spread) stays in the FX position of the target;
- a quote for an amount to RECEIVE sells the smallest amount whose quote receives at least that
  much (it may receive more when one source minor unit buys several target minor units, e.g.
  JPY -> KWD), so every quote is the forward computation of what it sells;
- a conversion whose holder would receive nothing (``receive <= 0``) is refused
  (``amount_too_small``); one that would move more than ``AMOUNT_MINOR_MAX`` on either side is
  refused (``amount_too_large``).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Context, Decimal, InvalidOperation, localcontext
from fractions import Fraction

from gateway.domain.money import AMOUNT_MINOR_MAX, check_amount, currency
from gateway.errors import InvalidRequest
from wallet_common.currency import Currency

BPS = 10_000
SPREAD_BPS_MAX = 1_000  # 10%: more is a typo, not a market
FEE_BPS_MAX = 1_000
RATE_DECIMALS_MAX = 12  # of a rate as entered
RATE_MAX = Decimal(10) ** 9  # a unit of one currency is worth at most 10^9 of another (KWD/VND is ~8e4)
INVERSE_DECIMALS = 18
_EXACT = Context(prec=80)  # wide enough for every product this module forms exactly
CSV_HEADER = ("base", "quote", "rate", "spread_bps", "valid_from", "valid_until")
_PLAIN_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")  # ASCII only: Decimal() also reads "1_0" and other scripts' digits


def parse_rate(text: object, param: str = "rate") -> Decimal:
    """A rate from its decimal text (``"7.1234"``): positive, at most ``RATE_DECIMALS_MAX`` decimals and
    ``RATE_MAX``. Numbers are refused: a JSON float has already lost the exact value."""
    if not isinstance(text, str) or not 1 <= len(text) <= 40:
        raise InvalidRequest("rate must be a decimal number as text, e.g. \"7.1234\"", code="invalid_rate", param=param)
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise InvalidRequest("rate must be a plain decimal number", code="invalid_rate", param=param) from None
    if not value.is_finite() or _PLAIN_DECIMAL.fullmatch(text) is None:
        raise InvalidRequest("rate must be a plain decimal number", code="invalid_rate", param=param)
    if value <= 0 or value > RATE_MAX:
        raise InvalidRequest(f"rate must be positive and at most {RATE_MAX}", code="invalid_rate", param=param)
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if -exponent > RATE_DECIMALS_MAX:
        raise InvalidRequest(f"rate has at most {RATE_DECIMALS_MAX} decimal places", code="invalid_rate", param=param)
    return value


def rate_text(rate: Decimal) -> str:
    """A rate as plain decimal text (``0.000000000001``, never ``1E-12``), trailing zeros dropped."""
    text = format(rate, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def check_bps(value: object, param: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise InvalidRequest(f"{param} must be an integer from 0 to {maximum} (basis points)", code="invalid_bps",
                             param=param)
    return value


def pair(base: object, quote: object) -> tuple[Currency, Currency]:
    b, q = currency(base, "base"), currency(quote, "quote")
    if b.code == q.code:
        raise InvalidRequest("base and quote must differ", code="same_currency", param="quote")
    return b, q


def directional(rate: Decimal, base: str, source: str) -> Decimal:
    """Target units per source unit: the rate when selling the base, else its inverse rounded down."""
    if source == base:
        return rate
    with localcontext(_EXACT):
        return (Decimal(1) / rate).quantize(Decimal(1).scaleb(-INVERSE_DECIMALS), rounding=ROUND_DOWN)


def holder_rate(directional_rate: Decimal, spread_bps: int) -> Decimal:
    """The rate the holder gets: the directional rate less the spread, exact."""
    with localcontext(_EXACT):
        return directional_rate * (BPS - spread_bps) / BPS  # exact: at most INVERSE_DECIMALS + 4 decimals


@dataclass(frozen=True, slots=True)
class Quote:
    source: Currency
    target: Currency
    rate: Decimal  # the holder's rate, target major units per source major unit
    fee_bps: int
    sell_minor: int
    receive_minor: int
    fee_minor: int  # in the target currency

    @staticmethod
    def _gross(sell_minor: int, source: Currency, target: Currency, rate: Decimal) -> Fraction:
        return sell_minor * Fraction(rate) * Fraction(10) ** (target.exponent - source.exponent)

    @classmethod
    def _split(cls, gross: Fraction, fee_bps: int) -> tuple[int, int]:
        """(receive, fee): the fee rounded up, the rest rounded down."""
        fee = -((-gross * fee_bps) // BPS)  # ceil
        return int(gross // 1) - int(fee), int(fee)

    @classmethod
    def of(cls, source: Currency, target: Currency, rate: Decimal, fee_bps: int, sell_minor: int) -> Quote:
        """The quote for selling ``sell_minor`` of ``source`` (see the module's rounding rules)."""
        if source.code == target.code:
            raise InvalidRequest("a conversion is between two different currencies", code="same_currency",
                                 param="to_currency")
        sell_minor = check_amount(sell_minor, "sell_amount")
        receive, fee = cls._split(cls._gross(sell_minor, source, target, rate), fee_bps)
        if receive <= 0:
            raise InvalidRequest(
                f"{sell_minor} minor units of {source.code} buy less than one minor unit of {target.code}"
                " after the fee", code="amount_too_small", param="sell_amount")
        if receive + fee > AMOUNT_MINOR_MAX:
            raise InvalidRequest(f"a conversion moves at most {AMOUNT_MINOR_MAX} minor units",
                                 code="amount_too_large", param="sell_amount")
        return cls(source, target, rate, fee_bps, sell_minor, receive, fee)

    @classmethod
    def receiving(cls, source: Currency, target: Currency, rate: Decimal, fee_bps: int, receive_minor: int) -> Quote:
        """The quote selling the least ``source`` that receives at least ``receive_minor`` of ``target``."""
        want = check_amount(receive_minor, "receive_amount")
        if source.code == target.code:
            raise InvalidRequest("a conversion is between two different currencies", code="same_currency",
                                 param="to_currency")

        def received(sell: int) -> int:
            return cls._split(cls._gross(sell, source, target, rate), fee_bps)[0]

        # Received grows with what is sold (never falls): find the smallest sale reaching ``want``.
        unit = cls._gross(1, source, target, rate) * (BPS - fee_bps) / BPS
        high = max(1, int(Fraction(want) / unit)) if unit > 0 else 1
        while received(high) < want:
            high *= 2
            if high > 2 * AMOUNT_MINOR_MAX:
                raise InvalidRequest(f"a conversion moves at most {AMOUNT_MINOR_MAX} minor units",
                                     code="amount_too_large", param="receive_amount")
        low = 1
        while low < high:
            middle = (low + high) // 2
            if received(middle) >= want:
                high = middle
            else:
                low = middle + 1
        if low > AMOUNT_MINOR_MAX:
            raise InvalidRequest(f"a conversion moves at most {AMOUNT_MINOR_MAX} minor units",
                                 code="amount_too_large", param="receive_amount")
        quote = cls.of(source, target, rate, fee_bps, low)
        assert quote.receive_minor >= want
        return quote


@dataclass(frozen=True, slots=True)
class RateRow:
    """A rate as an operator enters it (API or CSV line), validated."""

    base: str
    quote: str
    rate: Decimal
    spread_bps: int
    valid_from: datetime  # given, or the moment it was entered
    valid_until: datetime | None  # None: until a newer rate for the pair takes over


def _timestamp(text: str, param: str) -> datetime | None:
    if text == "":
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"{param} must be an RFC 3339 timestamp, e.g. 2026-12-02T08:00:00Z",
                             code="invalid_timestamp", param=param) from None
    if value.tzinfo is None:
        raise InvalidRequest(f"{param} must carry its UTC offset (Z or +08:00)", code="invalid_timestamp", param=param)
    try:
        value.astimezone(UTC)  # 0001-01-01T00:00+14:00 is before year 1 in UTC: no datetime holds it
    except OverflowError:
        raise InvalidRequest(f"{param} is out of range", code="invalid_timestamp", param=param) from None
    return value


def rate_row(base: object, quote: object, rate: object, spread_bps: object, valid_from: str | None,
             valid_until: str | None, now: datetime) -> RateRow:
    """A rate as entered; without ``valid_from`` it is valid from ``now``."""
    b, q = pair(base, quote)
    start = _timestamp(valid_from or "", "valid_from") or now
    end = _timestamp(valid_until or "", "valid_until")
    if end is not None and end <= start:
        raise InvalidRequest("valid_until must be after valid_from", code="invalid_validity", param="valid_until")
    return RateRow(b.code, q.code, parse_rate(rate), check_bps(spread_bps, "spread_bps", SPREAD_BPS_MAX), start, end)


def parse_rates_csv(text: str, rows_max: int, now: datetime) -> list[RateRow]:
    """Every line of a rates file (``CSV_HEADER`` first), all valid or the file refused: the error's
    ``param`` is ``line N`` (1-based, the header is line 1) and its message names the column."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        lines = list(reader)
    except csv.Error as exc:
        raise InvalidRequest(f"line {reader.line_num} is not valid CSV: {exc}", code="invalid_rate_file",
                             param=f"line {reader.line_num}") from None
    if not lines or tuple(cell.strip() for cell in lines[0]) != CSV_HEADER:
        raise InvalidRequest(f"the first line must be the header {','.join(CSV_HEADER)}", code="invalid_rate_file",
                             param="line 1")
    rows: list[RateRow] = []
    for number, cells in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue  # a blank line (the file's last newline)
        if len(rows) >= rows_max:
            raise InvalidRequest(f"a rates file has at most {rows_max} rows", code="invalid_rate_file",
                                 param=f"line {number}")
        if len(cells) != len(CSV_HEADER):
            raise InvalidRequest(f"line {number} has {len(cells)} fields, not {len(CSV_HEADER)}",
                                 code="invalid_rate_file", param=f"line {number}")
        base, quote, rate, spread, start, end = (cell.strip() for cell in cells)
        try:
            spread_bps: object = int(spread) if spread.isascii() and spread.isdigit() else spread
            rows.append(rate_row(base, quote, rate, spread_bps, start, end, now))
        except InvalidRequest as exc:
            raise InvalidRequest(f"line {number}, {exc.param}: {exc.message}", code="invalid_rate_file",
                                 param=f"line {number}") from None
    if not rows:
        raise InvalidRequest("the file has no rates", code="invalid_rate_file", param="line 2")
    return rows
