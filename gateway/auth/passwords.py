"""Slow password hashing (Argon2id). Hashing is CPU-bound: callers run it off the event loop.

Each hash takes the hasher's ``memory_cost`` (64 MiB) for its duration, so hashes run on a pool of
their own of ``HASHES_CONCURRENT_MAX`` threads: a burst of sign-ups or sign-ins costs a process at
most that many times 64 MiB (on the shared default pool, one per thread: 6 on two cores, ~400 MB
measured by bench/payments.py's seeding), and never holds up the QR image rendering that pool serves.
Each hash already uses ``parallelism`` (4) lanes, so more threads than cores would add memory, not speed.

``verifications_total`` counts the verifications this process started (tests prove with it that
a throttled sign-in computes no hash).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()
HASHES_CONCURRENT_MAX = 2
# Threads start at the first hash, so a process forked after import (gateway serve) gets its own.
_pool = ThreadPoolExecutor(max_workers=HASHES_CONCURRENT_MAX, thread_name_prefix="argon2")
# Verified against when the account does not exist, so a login takes the same time either way.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


async def hash_password(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(_pool, _hasher.hash, password)


def _verify(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


verifications_total = 0


async def verify_password(stored: str | None, password: str) -> bool:
    global verifications_total
    verifications_total += 1
    return await asyncio.get_running_loop().run_in_executor(_pool, _verify, stored, password)
