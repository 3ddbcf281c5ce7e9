"""Secrets the gateway must read back (webhook signing secrets) are stored sealed: AES-256-GCM under
a key derived (HKDF-SHA256) from ``auth.api_key_pepper``, with a random 96-bit nonce and the owning
object's id as associated data, so a sealed value copied onto another row does not open.

Invariant: nothing here logs, and a value that does not open raises ``ValueError`` without detail."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE_BYTES = 12
_VERSION = b"\x01"


class Sealer:
    def __init__(self, pepper: str, purpose: bytes = b"wallet-gateway webhook secrets v1") -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(pepper.encode("utf-8"))
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, context: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode("utf-8"), context)

    def open(self, sealed: bytes, context: bytes) -> str:
        if sealed[:1] != _VERSION:
            raise ValueError("unknown sealed format")
        nonce, body = sealed[1:1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, body, context).decode("utf-8")
        except InvalidTag:
            raise ValueError("the sealed value does not open") from None
