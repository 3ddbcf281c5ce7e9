"""Public object ids: a type prefix plus the UUID's 32 hex digits (``pay_3f2a...``).

Invariant: an id of one type never decodes as another type; anything malformed is "not found"
to the caller (a guessed id reveals nothing).
"""

from __future__ import annotations

import uuid
from enum import StrEnum


class Kind(StrEnum):
    MERCHANT = "mer"
    STORE = "sto"
    TERMINAL = "ter"
    API_KEY = "key"
    OPERATOR = "op"
    WALLET_HOLDER = "wh"
    BANK_ACCOUNT = "ba"
    PAYMENT = "pay"
    REFUND = "re"
    EVENT = "evt"
    TRANSFER = "tr"


def encode(kind: Kind, value: uuid.UUID) -> str:
    return f"{kind.value}_{value.hex}"


def decode(kind: Kind, text: str) -> uuid.UUID | None:
    prefix, sep, rest = text.partition("_")
    if sep != "_" or prefix != kind.value or len(rest) != 32:
        return None
    try:
        return uuid.UUID(hex=rest)
    except ValueError:
        return None
