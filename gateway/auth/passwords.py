"""Slow password hashing (Argon2id). Hashing is CPU-bound: callers run it off the event loop.

``verifications_total`` counts the verifications this process started (tests prove with it that
a throttled sign-in computes no hash).
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()
# Verified against when the account does not exist, so a login takes the same time either way.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


async def hash_password(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(None, _hasher.hash, password)


def _verify(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


verifications_total = 0


async def verify_password(stored: str | None, password: str) -> bool:
    global verifications_total
    verifications_total += 1
    return await asyncio.get_running_loop().run_in_executor(None, _verify, stored, password)
