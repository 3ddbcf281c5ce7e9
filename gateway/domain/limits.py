"""Verification tiers and their caps, and the payment-PIN policy. Pure arithmetic.

A tier names three caps per currency (minor units): the most a wallet may hold, the most one
payment may take, and the most the payments of one local day may take together. Tier numbers
follow e-CNY wallets: 1 is the strongest verification (highest caps), 4 the weakest (phone only).
A currency a tier does not list cannot be held or paid with by its wallets (fail closed: an
uncapped currency would let a balance grow without bound).

Invariants: a top-up never makes the balance exceed the balance cap; a payment never exceeds the
per-payment cap nor makes the day's total exceed the daily cap; a refusal names the cap.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import Declined


@dataclass(frozen=True, slots=True)
class Caps:
    balance_max_minor: int
    payment_max_minor: int
    daily_max_minor: int


@dataclass(frozen=True, slots=True)
class Tier:
    number: int
    name: str
    caps: dict[str, Caps]  # by currency code


def _refuse(cap: str, limit_minor: int, currency: str, message: str) -> Declined:
    return Declined(message, code="limit_exceeded", param="amount", limit=cap, limit_amount=limit_minor, currency=currency)


def _caps(tier: Tier, currency: str) -> Caps:
    caps = tier.caps.get(currency)
    if caps is None:
        raise Declined(f"tier {tier.number} wallets do not hold {currency}", code="currency_not_supported",
                       param="currency", currency=currency)
    return caps


def payment_caps(tier: Tier, currency: str) -> Caps:
    """The tier's caps of ``currency`` (``currency_not_supported`` if its wallets cannot hold it)."""
    return _caps(tier, currency)


def check_top_up(tier: Tier, currency: str, balance_minor: int, amount_minor: int) -> None:
    caps = _caps(tier, currency)
    if balance_minor + amount_minor > caps.balance_max_minor:
        raise _refuse("balance_max", caps.balance_max_minor, currency,
                      f"tier {tier.number} wallets may hold at most {caps.balance_max_minor} minor units of {currency}")


def check_payment(tier: Tier, currency: str, spent_today_minor: int, amount_minor: int) -> None:
    caps = _caps(tier, currency)
    if amount_minor > caps.payment_max_minor:
        raise _refuse("payment_max", caps.payment_max_minor, currency,
                      f"tier {tier.number} wallets may pay at most {caps.payment_max_minor} minor units of {currency} at once")
    if spent_today_minor + amount_minor > caps.daily_max_minor:
        raise _refuse("daily_max", caps.daily_max_minor, currency,
                      f"tier {tier.number} wallets may pay at most {caps.daily_max_minor} minor units of {currency} a day")


def pin_required(thresholds_minor: dict[str, int], currency: str, amount_minor: int) -> bool:
    """Above the currency's threshold a payment needs the holder's PIN; unlisted currencies always do."""
    threshold = thresholds_minor.get(currency)
    return threshold is None or amount_minor > threshold


PIN_LENGTH = 6


def valid_pin_format(pin: str) -> bool:
    return len(pin) == PIN_LENGTH and pin.isascii() and pin.isdigit() and len(set(pin)) > 1
