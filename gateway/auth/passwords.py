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

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# ``auth.password_hash_profile``: argon2-cffi's profiles by name. A stored hash names its own parameters,
# so it verifies under any profile; the profile decides only how new hashes are made.
PROFILES = {
    "rfc_9106_low_memory": profiles.RFC_9106_LOW_MEMORY,  # t=3, 64 MiB, 4 lanes: argon2-cffi's default
    "rfc_9106_high_memory": profiles.RFC_9106_HIGH_MEMORY,  # t=1, 2 GiB, 4 lanes
    "test_only_cheapest": profiles.CHEAPEST,  # t=1, 8 KiB, 1 lane: test suites only (refused with live keys)
}
PROFILE_DEFAULT = "rfc_9106_low_memory"
_hasher = PasswordHasher.from_parameters(PROFILES[PROFILE_DEFAULT])
HASHES_CONCURRENT_MAX = 2
# Threads start at the first hash, so a process forked after import (gateway serve) gets its own.
_pool = ThreadPoolExecutor(max_workers=HASHES_CONCURRENT_MAX, thread_name_prefix="argon2")
# Verified against when the account does not exist, so a login takes the same time either way.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


def use_profile(name: str) -> None:
    """Make new hashes (and the dummy one) with the named profile, for the whole process (settings checked
    the name). A test suite's cheap profile makes a sign-up or sign-in ~0.4 ms instead of ~0.4 s here."""
    global _hasher, _DUMMY_HASH
    if _hasher.time_cost == PROFILES[name].time_cost and _hasher.memory_cost == PROFILES[name].memory_cost \
            and _hasher.parallelism == PROFILES[name].parallelism:
        return
    _hasher = PasswordHasher.from_parameters(PROFILES[name])
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
