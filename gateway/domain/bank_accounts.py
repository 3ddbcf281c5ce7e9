"""Bank account numbers, the pure part: normalised form, display mask and keyed hash.

Invariant: the full number leaves here only as the caller's own argument; what is shown is the mask
(last four characters), what is looked up is the keyed hash (HMAC-SHA256 under the given pepper).
"""

from __future__ import annotations

import hashlib
import hmac
import re

_NUMBER_RE = re.compile(r"^[A-Z0-9]{8,34}$")  # domestic numbers and IBANs (ISO 13616: at most 34)


def normalised(number: str) -> str | None:
    """The number without spaces, upper case; None if it is not 8-34 letters or digits."""
    value = number.replace(" ", "").upper()
    return value if _NUMBER_RE.match(value) else None


def masked(number: str) -> str:
    return "*" * (len(number) - 4) + number[-4:]


def number_hash(pepper: str, number: str) -> bytes:
    return hmac.new(pepper.encode(), number.encode(), hashlib.sha256).digest()
