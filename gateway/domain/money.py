"""Money as integer minor units with an ISO 4217 currency.

Invariants:
- An amount is an ``int`` of minor units; floats are refused everywhere, including parsing.
- Every currency carries its ISO 4217 exponent (JPY 0, CNY 2, KWD 3); currencies without one
  (gold, SDR, test codes) are not money this gateway moves.
- Amounts are bounded by ``AMOUNT_MINOR_MAX`` so that sums of a day's postings fit a bigint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import iso4217

from gateway.errors import InvalidRequest
from wallet_common.currency import Currency, lookup

# 10^15 minor units: above any single payment, and 9,000 of them still fit in int64.
AMOUNT_MINOR_MAX = 10**15

_DECIMAL_RE = re.compile(r"^(0|[1-9][0-9]*)(?:\.([0-9]+))?$")


def currency(code: object, param: str = "currency") -> Currency:
    """The currency for an ISO 4217 alphabetic code, or ``InvalidRequest`` naming ``param``."""
    if not isinstance(code, str) or len(code) != 3 or not code.isalpha():
        raise InvalidRequest("currency must be a 3-letter ISO 4217 code", code="invalid_currency", param=param)
    found = lookup(code.upper())
    if found is None:
        raise InvalidRequest(f"unknown currency {code!r}", code="invalid_currency", param=param)
    return found


def currency_by_numeric(numeric: int) -> Currency | None:
    for entry in iso4217.Currency:
        if entry.number == numeric and entry.exponent is not None:
            return lookup(entry.code)
    return None


def check_amount(amount_minor: object, param: str = "amount", *, allow_zero: bool = False) -> int:
    """A validated amount in minor units (positive, bounded, a real ``int``; a fraction is too precise)."""
    if isinstance(amount_minor, float):
        if not amount_minor.is_integer():
            raise InvalidRequest(
                "amount is in minor units and cannot have a fractional part (send 1050 for 10.50 CNY)",
                code="amount_too_precise", param=param,
            )
        raise InvalidRequest("amount must be an integer, not a decimal number", code="invalid_amount", param=param)
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        raise InvalidRequest("amount must be an integer number of minor units", code="invalid_amount", param=param)
    if amount_minor < 0 or (amount_minor == 0 and not allow_zero):
        raise InvalidRequest("amount must be positive", code="invalid_amount", param=param)
    if amount_minor > AMOUNT_MINOR_MAX:
        raise InvalidRequest(f"amount must be at most {AMOUNT_MINOR_MAX}", code="amount_too_large", param=param)
    return amount_minor


@dataclass(frozen=True, slots=True)
class Money:
    amount_minor: int
    currency: Currency

    def __post_init__(self) -> None:
        if isinstance(self.amount_minor, bool) or not isinstance(self.amount_minor, int):
            raise TypeError("amount_minor must be int")
        if abs(self.amount_minor) > AMOUNT_MINOR_MAX:
            raise ValueError("amount out of range")

    @classmethod
    def of(cls, amount_minor: object, code: object) -> Money:
        return cls(check_amount(amount_minor), currency(code))

    @classmethod
    def parse(cls, text: str, code: str, param: str = "amount") -> Money:
        """Parse a decimal string such as ``"23.72"`` exactly; more decimals than the exponent is an error."""
        cur = currency(code)
        match = _DECIMAL_RE.fullmatch(text)
        if match is None:
            raise InvalidRequest("amount must be a plain decimal number", code="invalid_amount", param=param)
        whole, frac = match.group(1), match.group(2) or ""
        if len(frac) > cur.exponent:
            raise InvalidRequest(
                f"{cur.code} has {cur.exponent} decimal places", code="amount_too_precise", param=param
            )
        if len(whole) > 16:
            raise InvalidRequest("amount too large", code="amount_too_large", param=param)
        minor = int(whole) * 10**cur.exponent + (int(frac.ljust(cur.exponent, "0")) if cur.exponent else 0)
        return cls(check_amount(minor, param, allow_zero=True), cur)

    def format(self) -> str:
        """Decimal text of the amount, e.g. ``12.30`` for 1230 CNY, ``1230`` for JPY."""
        exp = self.currency.exponent
        sign = "-" if self.amount_minor < 0 else ""
        units, minor = divmod(abs(self.amount_minor), 10**exp) if exp else (abs(self.amount_minor), 0)
        return f"{sign}{units}.{minor:0{exp}d}" if exp else f"{sign}{units}"

    def __str__(self) -> str:
        return f"{self.format()} {self.currency.code}"
