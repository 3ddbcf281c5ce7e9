"""Public object ids: a type prefix plus the UUID's 32 hex digits (``pay_3f2a...``).

Invariant: an id of one type never decodes as another type; anything malformed is "not found"
to the caller (a guessed id reveals nothing).
"""

from __future__ import annotations

import re
import uuid
from enum import StrEnum

from uuid_utils import compat as _uuid7

_HEX32 = re.compile(r"[0-9a-f]{32}")


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
    DEVICE = "dev"
    TAP_TOKEN = "tt"
    WEBHOOK_ENDPOINT = "we"
    WEBHOOK_DELIVERY = "whd"
    BANK_STATEMENT = "bst"
    BANK_ENTRY = "bse"
    RECON_EXCEPTION = "rex"
    RECON_MATCH = "rcm"
    SETTLEMENT_RUN = "srun"
    SETTLEMENT_BATCH = "sb"
    PAYOUT = "po"
    MERCHANT_BANK_ACCOUNT = "mba"
    CAMPAIGN = "cmp"
    FX_RATE = "fxr"
    FX_QUOTE = "fxq"
    CONVERSION = "cnv"
    NOTIFICATION = "ntf"
    BUDGET = "bud"
    SIGN_IN_CHALLENGE = "chl"
    WALLET_DEVICE = "wd"
    SIGN_IN_MESSAGE = "sms"
    RISK_RULE = "rsk"
    RISK_DECISION = "rkd"
    GIFT = "gft"
    INVARIANT_CHECK = "chk"


def new() -> uuid.UUID:
    """A new row id for the tables that grow with every payment (payments, refunds, events, risk decisions):
    a UUIDv7 (RFC 9562: 48 bits of Unix milliseconds, then 74 random bits), so that a new row's primary-key
    entry lands beside the last ones instead of on a random page of an index that outgrew the buffer cache
    (bench/README.md, ``--big``). It reveals when the object was made, as its ``created`` field does; the
    random bits keep it unguessable, and no lookup trusts an id alone (every read is scoped to its owner).
    Secrets (sessions, challenges, messages) keep ``uuid.uuid4()``."""
    return _uuid7.uuid7()


def encode(kind: Kind, value: uuid.UUID) -> str:
    return f"{kind.value}_{value.hex}"


def decode(kind: Kind, text: str) -> uuid.UUID | None:
    prefix, sep, rest = text.partition("_")
    # Exactly the spelling ``encode`` produces: one object, one id.
    if sep != "_" or prefix != kind.value or not _HEX32.fullmatch(rest):
        return None
    return uuid.UUID(hex=rest)
