"""The sale currency as the ISO 4217 table defines it: its exponent and numeric code.

Invariants:
- Amounts are integer minor units; the number of decimals shown is the currency's ISO 4217
  exponent (JPY 0, CNY 2, KWD 3), never a fixed two. ``format_amount`` is the one formatter of
  the display, the receipts and the logs.
- The agent's configured ``currency_numeric`` (sent to the card as EMV tag 5F2A) names the same
  currency as ``currency`` (sent to the gateway): a mismatch would have the card sign one
  currency and the gateway charge another, so ``check_configured`` refuses it at start.
- Nothing here imports ``gateway``; the table is ``wallet_common.currency``'s (the gateway reads it too).
"""

from __future__ import annotations

from pos_agent.errors import ConfigError
from wallet_common.currency import Currency, lookup

__all__ = ["Currency", "check_configured", "format_amount", "lookup"]


def check_configured(code: str, numeric: int, *, where: str = "sale") -> Currency:
    """The configured currency, or ``ConfigError`` naming the key that is wrong."""
    found = lookup(code)
    if found is None:
        raise ConfigError(f"{where}.currency {code!r} is not an ISO 4217 currency with minor units")
    if numeric != found.numeric:
        raise ConfigError(f"{where}.currency_numeric {numeric} does not match {where}.currency {code}"
                          f" (ISO 4217: {found.numeric:03d})")
    return found


def format_amount(amount_minor: int, code: str) -> str:
    """``CNY 26.00`` for 2600 CNY, ``JPY 2600`` for 2600 JPY, ``KWD 2.600`` for 2600 KWD."""
    found = lookup(code)
    assert found is not None, f"format_amount of a currency the settings refuse: {code!r}"
    exponent = found.exponent
    sign = "-" if amount_minor < 0 else ""
    if exponent == 0:
        return f"{code} {sign}{abs(amount_minor)}"
    units, fraction = divmod(abs(amount_minor), 10**exponent)
    return f"{code} {sign}{units}.{fraction:0{exponent}d}"
