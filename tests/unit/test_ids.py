"""Public ids: ``<prefix>_<32 hex>`` round trips; anything else, including another type's id, is None."""

from __future__ import annotations

import time
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain import ids
from gateway.domain.ids import Kind, decode, encode

SAMPLE = uuid.UUID("3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b")
SAMPLE_HEX = SAMPLE.hex


@given(kind=st.sampled_from(list(Kind)), value=st.uuids())
def test_round_trip(kind: Kind, value: uuid.UUID) -> None:
    text = encode(kind, value)
    assert text == f"{kind.value}_{value.hex}"
    assert decode(kind, text) == value


@given(kind=st.sampled_from(list(Kind)), other=st.sampled_from(list(Kind)), value=st.uuids())
def test_an_id_never_decodes_as_another_kind(kind: Kind, other: Kind, value: uuid.UUID) -> None:
    if other is not kind:
        assert decode(other, encode(kind, value)) is None


def test_encoding_is_lowercase_hex() -> None:
    assert encode(Kind.PAYMENT, SAMPLE) == "pay_3f2a9c1e5b7d4e8f9a0b1c2d3e4f5a6b"


def test_prefixes_are_distinct() -> None:
    prefixes = [kind.value for kind in Kind]
    assert len(set(prefixes)) == len(prefixes)
    assert all("_" not in prefix for prefix in prefixes)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "pay",
        "pay_",
        SAMPLE_HEX,
        f"re_{SAMPLE_HEX}",
        f"PAY_{SAMPLE_HEX}",
        f"payy_{SAMPLE_HEX}",
        f"_pay_{SAMPLE_HEX}",
        f"pay-{SAMPLE_HEX}",
        f"pay {SAMPLE_HEX}",
        f" pay_{SAMPLE_HEX}",
        f"pay__{SAMPLE_HEX}",
    ],
)
def test_wrong_prefix_is_none(text: str) -> None:
    assert decode(Kind.PAYMENT, text) is None


@pytest.mark.parametrize(
    "rest",
    [
        SAMPLE_HEX[:-1],
        SAMPLE_HEX + "0",
        SAMPLE_HEX + "\n",
        str(SAMPLE),  # the hyphenated form is 36 characters
        "{" + SAMPLE_HEX + "}",
        "urn:uuid:" + SAMPLE_HEX,
    ],
)
def test_wrong_length_is_none(rest: str) -> None:
    assert decode(Kind.PAYMENT, f"pay_{rest}") is None


@pytest.mark.parametrize(
    "rest",
    [
        "g" * 32,
        "z" + SAMPLE_HEX[1:],
        SAMPLE_HEX[:31] + "!",
        SAMPLE_HEX[:8] + "-" + SAMPLE_HEX[9:],
        "{" + SAMPLE_HEX[1:31] + "}",
        # Forms Python's int(..., 16) accepts but that are not 32 hex digits:
        pytest.param(SAMPLE_HEX[:16] + "_" + SAMPLE_HEX[17:], id="digit_separator"),
        pytest.param(" " + SAMPLE_HEX[1:], id="leading_space"),
        pytest.param(SAMPLE_HEX[:31] + " ", id="trailing_space"),
        pytest.param("+" + SAMPLE_HEX[1:], id="plus_sign"),
        pytest.param("\u0660" * 32, id="arabic_indic_digits"),
        pytest.param("\uff10" * 32, id="fullwidth_digits"),
    ],
)
def test_non_hex_is_none(rest: str) -> None:
    assert decode(Kind.PAYMENT, f"pay_{rest}") is None


@given(st.text(max_size=40))
def test_decode_never_raises_and_only_accepts_what_encode_writes(text: str) -> None:
    value = decode(Kind.PAYMENT, text)
    assert value is None or encode(Kind.PAYMENT, value) == text


def test_new_ids_are_uuid7_in_creation_order() -> None:
    """The ids of rows that grow with every payment are UUIDv7: each new one sorts after the last (so a new
    primary-key entry lands beside the previous ones), carries its creation time, and none repeats."""
    before_ms = time.time_ns() // 1_000_000
    made = [ids.new() for _ in range(10_000)]
    after_ms = time.time_ns() // 1_000_000
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in made)
    assert made == sorted(made) and len(set(made)) == len(made)
    stamps = [u.int >> 80 for u in made]
    assert before_ms <= stamps[0] <= stamps[-1] <= after_ms
    assert decode(Kind.PAYMENT, encode(Kind.PAYMENT, made[0])) == made[0]
