"""Verification levels, the tiers they open, one-time sign-in codes and signed callbacks. Pure.

Levels are what the gateway knows about a holder, ordered from weakest to strongest; each opens a
verification tier (``domain.limits``: tier 1 is the strongest, 4 the weakest, as in e-CNY wallets):

    none       -> no tier: the phone is not proven, the holder cannot sign in yet
    phone      -> tier 4: a one-time code sent to the phone was entered
    real_name  -> tier 3: an operator or the KYC hook checked the holder's identity
    bank_card  -> tier 2: a bank card in the holder's name was verified
    in_person  -> tier 1: verified face to face

Invariants:
- a level never goes down: ``upgrade`` keeps the higher of the current and the given level, so a
  replayed or late callback cannot lower it;
- an upgrade never weakens the caps: the new tier is the stronger (lower) of the current tier and
  the level's tier (an operator who set a stronger tier by hand keeps it);
- holders registered before levels existed were admitted on their phone number alone: they get the
  level their tier stands for (``level_for_tier``; migration 0017 applies the same mapping in SQL);
- a one-time code is ``length`` decimal digits drawn from randomness passed in; it is only ever
  stored as ``code_hash`` (HMAC-SHA256 under a server key, bound to its challenge), never in clear;
- a callback is accepted only with a Standard Webhooks signature over ``{id}.{timestamp}.{body}``
  by the configured secret, compared in constant time, and a timestamp within the tolerance.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from gateway.domain import webhooks


class Level(IntEnum):
    NONE = 0
    PHONE = 1
    REAL_NAME = 2
    BANK_CARD = 3
    IN_PERSON = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def named(cls, label: str) -> Level | None:
        return next((level for level in cls if level.label == label), None)


# The explicit mapping of the issue: phone 4, real name 3, bank card 2, in person 1.
TIER_OF_LEVEL: dict[Level, int] = {Level.PHONE: 4, Level.REAL_NAME: 3, Level.BANK_CARD: 2, Level.IN_PERSON: 1}
LEVEL_OF_TIER: dict[int, Level] = {tier: level for level, tier in TIER_OF_LEVEL.items()}
UPGRADABLE = tuple(level.label for level in Level if level is not Level.NONE)


def tier_for(level: Level) -> int | None:
    """The tier a level opens; None for ``none`` (a holder who cannot sign in yet)."""
    return TIER_OF_LEVEL.get(level)


def level_for_tier(tier: int) -> Level:
    """What a tier assigned before levels existed stands for (holders registered on a phone number alone)."""
    return LEVEL_OF_TIER[tier]


@dataclass(frozen=True, slots=True)
class Upgrade:
    level: Level
    tier: int
    changed: bool  # False: the holder was at this level or higher already


def upgrade(current_level: Level, current_tier: int, given: Level) -> Upgrade:
    level = max(current_level, given)
    opened = tier_for(level)
    tier = current_tier if opened is None else min(current_tier, opened)
    return Upgrade(level, tier, level != current_level or tier != current_tier)


def new_code(length: int, randbelow: Callable[[int], int]) -> str:
    """``length`` random decimal digits; ``randbelow`` is ``secrets.randbelow`` (passed in: no randomness here)."""
    return f"{randbelow(10**length):0{length}d}"


def valid_code_format(code: str, length: int) -> bool:
    return len(code) == length and code.isascii() and code.isdigit()


def code_hash(key: bytes, challenge_id: bytes, code: str) -> bytes:
    """The only form a code is stored in: keyed, and bound to its challenge (a hash copied onto another
    challenge does not match there; without the key the million codes cannot be tried offline)."""
    return hmac.new(key, b"sign-in-code:" + challenge_id + b":" + code.encode("ascii"), hashlib.sha256).digest()


class CallbackRefused(Exception):
    """A signed callback that is not accepted; ``code`` is the stable error code to answer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def verify_callback(secret: str, msg_id: str | None, timestamp: str | None, signature: str | None, body: bytes,
                    now_s: int, tolerance_s: int) -> None:
    """Raise ``CallbackRefused`` unless the Standard Webhooks headers sign ``body`` with ``secret`` within
    the tolerance. The body is checked before it is parsed."""
    if not msg_id or not timestamp or not signature or len(msg_id) > 255:
        raise CallbackRefused("signature_missing", "webhook-id, webhook-timestamp and webhook-signature are required")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise CallbackRefused("timestamp_invalid", "webhook-timestamp must be Unix seconds")
    if abs(now_s - int(timestamp)) > tolerance_s:
        raise CallbackRefused("timestamp_out_of_tolerance", f"webhook-timestamp is more than {tolerance_s} s away")
    expected = webhooks.standard_signature(secret, msg_id, int(timestamp), body).encode("ascii")
    offered = [part.encode("ascii", "replace") for part in signature.split(" ") if part.startswith("v1,")]
    # Every offered signature is compared (no early exit on the first match), each in constant time.
    matched = [hmac.compare_digest(expected, candidate) for candidate in offered]
    if not any(matched):
        raise CallbackRefused("signature_invalid", "no webhook-signature matches")


def secret_valid(secret: str) -> bool:
    try:
        key = webhooks.secret_key(secret)
    except ValueError:
        return False
    return len(key) >= 24 and base64.b64encode(key).decode("ascii") == secret[len(webhooks.SECRET_PREFIX):]


def retry_delay_s(attempts: int, base_s: float, max_s: float, random01: float) -> float:
    """Full jitter: a random wait in [0, min(max_s, base_s * 2^(attempts - 1))]."""
    doubled_s: float = base_s * float(2 ** min(max(attempts - 1, 0), 30))
    return random01 * min(max_s, doubled_s)


def sms_text(code: str, ttl_s: int) -> str:
    minutes = max(1, ttl_s // 60)
    return f"Your wallet code is {code}. It expires in {minutes} min. Never share it with anyone."
