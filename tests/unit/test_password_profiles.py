"""``auth.password_hash_profile``: new hashes take the profile's parameters; hashes made under another
profile still verify (a stored hash carries its own)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.auth import passwords

pytestmark = pytest.mark.asyncio


@pytest.fixture
def restore_profile() -> Iterator[None]:
    before = passwords._hasher, passwords._DUMMY_HASH
    try:
        yield
    finally:
        passwords._hasher, passwords._DUMMY_HASH = before


async def test_a_profile_makes_new_hashes_and_old_hashes_still_verify(restore_profile: None) -> None:
    passwords.use_profile("rfc_9106_low_memory")
    strong = await passwords.hash_password("correct horse")
    assert strong.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    passwords.use_profile("test_only_cheapest")
    cheap = await passwords.hash_password("correct horse")
    assert cheap.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    assert await passwords.verify_password(strong, "correct horse")
    assert not await passwords.verify_password(strong, "wrong horse")
    assert await passwords.verify_password(cheap, "correct horse")
    assert not await passwords.verify_password(None, "correct horse")  # no account: the dummy hash, refused
