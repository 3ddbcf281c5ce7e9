"""Merchant API keys: random, shown once, stored only as HMAC-SHA256 under a server-side pepper.

Format: ``sk_<mode>_<32 url-safe chars>`` (secret) or ``pk_<mode>_...`` (publishable). The first
12 characters are kept as a visible prefix so people can tell keys apart; they do not suffice to
use the key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX_LENGTH = 12
KINDS = {"secret": "sk", "publishable": "pk"}


def generate(kind: str, mode: str) -> str:
    return f"{KINDS[kind]}_{mode}_{secrets.token_urlsafe(24)}"


def kind_of(key: str) -> str | None:
    head = key.split("_", 1)[0]
    for kind, short in KINDS.items():
        if head == short:
            return kind
    return None


def keyed_hash(pepper: str, key: str) -> bytes:
    return hmac.new(pepper.encode(), key.encode(), hashlib.sha256).digest()


def visible_prefix(key: str) -> str:
    return key[:PREFIX_LENGTH]
