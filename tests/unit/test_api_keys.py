"""API keys: format, visible prefixes, the peppered keyed hash, and telling secret from publishable keys."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from gateway.auth.api_keys import (
    KINDS,
    PREFIX_LENGTH,
    generate,
    keyed_hash,
    kind_of,
    visible_prefix,
)

PEPPER = "dev-only-api-key-pepper-change-me"


@pytest.mark.parametrize(("kind", "short"), [("secret", "sk"), ("publishable", "pk")])
@pytest.mark.parametrize("mode", ["test", "live"])
def test_format(kind: str, short: str, mode: str) -> None:
    key = generate(kind, mode)
    assert re.fullmatch(rf"{short}_{mode}_[A-Za-z0-9_-]{{32}}", key), key
    assert kind_of(key) == kind


def test_keys_are_random() -> None:
    keys = {generate("secret", "test") for _ in range(200)}
    assert len(keys) == 200
    # 24 random bytes: the 32 characters after the mode are not a fixed or short alphabet.
    assert len({key.removeprefix("sk_test_")[:8] for key in keys}) == 200


def test_unknown_kind_refused() -> None:
    with pytest.raises(KeyError):
        generate("restricted", "test")


def test_visible_prefix() -> None:
    key = generate("secret", "live")
    prefix = visible_prefix(key)
    assert prefix == key[:PREFIX_LENGTH]
    assert len(prefix) == PREFIX_LENGTH == 12
    assert prefix.startswith("sk_live_")
    # Only 4 characters of the random part show: far from enough to use the key.
    assert len(prefix) - len("sk_live_") == 4


def test_keyed_hash_is_hmac_sha256_under_the_pepper() -> None:
    key = "sk_test_" + "a" * 32
    digest = keyed_hash(PEPPER, key)
    assert digest == hmac.new(PEPPER.encode(), key.encode(), hashlib.sha256).digest()
    assert len(digest) == 32
    assert digest != hashlib.sha256(key.encode()).digest()


def test_keyed_hash_depends_on_the_pepper() -> None:
    key = generate("secret", "test")
    assert keyed_hash(PEPPER, key) == keyed_hash(PEPPER, key)
    assert keyed_hash(PEPPER, key) != keyed_hash(PEPPER + "x", key)
    assert keyed_hash(PEPPER, key) != keyed_hash("another-pepper-of-16+chars", key)


def test_keyed_hash_depends_on_every_character_of_the_key() -> None:
    key = generate("secret", "test")
    twin = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert keyed_hash(PEPPER, key) != keyed_hash(PEPPER, twin)


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("sk_test_abc", "secret"),
        ("sk_live_abc", "secret"),
        ("pk_test_abc", "publishable"),
        ("pk_live_abc", "publishable"),
        ("rk_test_abc", None),
        ("SK_test_abc", None),
        ("skx_test_abc", None),
        (" sk_test_abc", None),
        ("eyJhbGciOiJIUzI1NiJ9.e30.sig", None),  # a JWT
        ("", None),
    ],
)
def test_kind_of(key: str, kind: str | None) -> None:
    assert kind_of(key) == kind


def test_kinds_are_the_documented_two() -> None:
    assert KINDS == {"secret": "sk", "publishable": "pk"}
