"""ISO 4217 currencies as money needs them: the alphabetic code, the exponent and the numeric code.

Invariants:
- Only currencies with minor units are money (JPY 0, CNY 2, KWD 3 decimals); gold, SDR and test codes
  have no exponent and are not found.
- The table is the ``iso4217`` package's; the gateway's money and the agent's display both read it here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import iso4217

__all__ = ["Currency", "lookup"]


@dataclass(frozen=True, slots=True)
class Currency:
    code: str
    exponent: int
    numeric: int


@lru_cache(maxsize=512)
def lookup(code: str) -> Currency | None:
    """The currency for an alphabetic code; None for an unknown one or one without minor units (XAU)."""
    try:
        entry = iso4217.Currency(code)
    except ValueError:
        return None
    if entry.exponent is None:
        return None
    return Currency(code=entry.code, exponent=int(entry.exponent), numeric=int(entry.number))
