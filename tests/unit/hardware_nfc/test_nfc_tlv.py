"""BER-TLV codec and DOL handling; pyemv's TLV codec serves as an independent reference."""

from __future__ import annotations

import pyemv
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hardware.nfc import tlv
from hardware.nfc.tlv import DolEntry, Tlv, TlvError

# -- encode / decode -----------------------------------------------------------------------


def test_multi_byte_tags_and_nested_templates() -> None:
    data = bytes.fromhex("77 0F 9F26 08 0102030405060708 9F27 01 80".replace(" ", ""))
    (template,) = tlv.decode(data)
    assert template.tag == 0x77 and template.constructed
    assert template.first(0x9F26) == Tlv(0x9F26, bytes.fromhex("0102030405060708"))
    assert template.first(0x9F27) == Tlv(0x9F27, b"\x80")
    assert tlv.encode_constructed(0x77, tlv.encode(0x9F26, bytes(range(1, 9))), tlv.encode(0x9F27, b"\x80")) == data


def test_repeated_tags_are_kept_in_order() -> None:
    entries = [tlv.encode_constructed(0x61, tlv.encode(0x4F, bytes([i]) * 7)) for i in range(3)]
    data = tlv.encode_constructed(0x6F, tlv.encode_constructed(0xA5, tlv.encode_constructed(0xBF0C, *entries)))
    directory = tlv.find(tlv.decode(data), 0x6F, 0xA5, 0xBF0C)
    assert directory is not None
    assert [entry.first(0x4F).value[0] for entry in directory.all(0x61)] == [0, 1, 2]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("length", "prefix"),
    [(0, "00"), (127, "7F"), (128, "8180"), (255, "81FF"), (256, "820100"), (4_000, "820FA0")],
)
def test_shortest_length_field(length: int, prefix: str) -> None:
    encoded = tlv.encode(0x5A, bytes(length))
    assert encoded[1 : 1 + len(prefix) // 2] == bytes.fromhex(prefix)
    assert tlv.decode(encoded) == (Tlv(0x5A, bytes(length)),)


def test_three_byte_length_field_is_written_when_needed() -> None:
    assert tlv.encode(0x5A, bytes(70_000))[:5] == bytes.fromhex("5A83011170")


def test_input_size_is_bounded() -> None:
    with pytest.raises(TlvError, match="input longer"):
        tlv.decode(tlv.encode(0x5A, bytes(70_000)))


def test_zero_filler_between_objects_is_skipped() -> None:
    assert tlv.decode(bytes.fromhex("00 5A0112 0000 9F3602 0001".replace(" ", ""))) == (
        Tlv(0x5A, b"\x12"),
        Tlv(0x9F36, b"\x00\x01"),
    )


@pytest.mark.parametrize(
    "hex_data",
    [
        "9F",  # tag announces a second byte that is missing
        "5A",  # no length
        "5A05AABB",  # value shorter than its length
        "5A80",  # indefinite length
        "5A84000000010000",  # 4-byte length field
        "5A8201",  # length field cut short
        "9F818101",  # 3-byte tag that goes on
        "7703 5A05AA",  # child runs past its template
    ],
)
def test_malformed_input_is_one_error_class(hex_data: str) -> None:
    with pytest.raises(TlvError):
        tlv.decode(bytes.fromhex(hex_data.replace(" ", "")))


def test_depth_is_bounded() -> None:
    data = b"\x5a\x00"
    for _ in range(tlv.TLV_DEPTH_MAX + 1):
        data = tlv.encode(0x77, data)
    with pytest.raises(TlvError, match="nested"):
        tlv.decode(data)


@pytest.mark.parametrize("tag", [0, -1, 0x5F, 0x9F80, 0x9F818181, 0x1F])
def test_ill_formed_tags_are_refused(tag: int) -> None:
    with pytest.raises(TlvError):
        tlv.tag_bytes(tag)


def test_primitive_tag_cannot_hold_children() -> None:
    with pytest.raises(TlvError):
        tlv.encode_constructed(0x5A, b"")


_primitive_tags = st.sampled_from([0x57, 0x5A, 0x82, 0x95, 0x9A, 0x9C, 0x5F2A, 0x5F34, 0x9F02, 0x9F10, 0x9F26, 0x9F36])


@given(st.dictionaries(_primitive_tags, st.binary(max_size=300), max_size=8))
def test_matches_pyemv_reference(objects: dict[int, bytes]) -> None:
    ours = b"".join(tlv.encode(tag, value) for tag, value in objects.items())
    reference = {f"{tag:X}": value for tag, value in objects.items()}
    assert ours == pyemv.tlv.encode(reference)
    assert {f"{node.tag:X}": node.value for node in tlv.decode(ours)} == pyemv.tlv.decode(ours)


@given(st.lists(st.tuples(_primitive_tags, st.binary(max_size=200)), max_size=6))
def test_round_trip_inside_a_template(objects: list[tuple[int, bytes]]) -> None:
    data = tlv.encode_constructed(0xBF0C, *(tlv.encode(tag, value) for tag, value in objects))
    (template,) = tlv.decode(data)
    assert [(child.tag, child.value) for child in template.children] == objects


# -- DOL -----------------------------------------------------------------------------------

VISA_LIKE_PDOL = bytes.fromhex("9F6604 9F0206 9F0306 9F1A02 9505 5F2A02 9A03 9C01 9F3704".replace(" ", ""))


def test_parse_dol_and_back() -> None:
    entries = tlv.parse_dol(VISA_LIKE_PDOL)
    assert entries[0] == DolEntry(0x9F66, 4) and entries[-1] == DolEntry(0x9F37, 4)
    assert sum(entry.length for entry in entries) == 33
    assert tlv.encode_dol(entries) == VISA_LIKE_PDOL


def test_dol_rules_for_missing_longer_and_shorter_values() -> None:
    entries = (
        DolEntry(0x9F02, 4),  # n: longer value, truncated on the left
        DolEntry(0x9F1A, 3),  # n: shorter value, zero-padded on the left
        DolEntry(0x5A, 4),  # cn: shorter value, padded with F on the right
        DolEntry(0x9F10, 2),  # b: longer value, truncated on the right
        DolEntry(0x9F37, 6),  # b: shorter value, zero-padded on the right
        DolEntry(0x9F7C, 2),  # unknown to the terminal: zeros
        DolEntry(0x77, 1),  # constructed: zeros
    )
    values = {
        0x9F02: bytes.fromhex("000000012345"),
        0x9F1A: bytes.fromhex("0250"),
        0x5A: bytes.fromhex("1234"),
        0x9F10: bytes.fromhex("AABBCC"),
        0x9F37: bytes.fromhex("01020304"),
        0x77: b"\x01",
    }
    data, fitted = tlv.build_dol_data(entries, values)
    assert dict(fitted) == {
        0x9F02: bytes.fromhex("00012345"),
        0x9F1A: bytes.fromhex("000250"),
        0x5A: bytes.fromhex("1234FFFF"),
        0x9F10: bytes.fromhex("AABB"),
        0x9F37: bytes.fromhex("010203040000"),
        0x9F7C: bytes(2),
        0x77: bytes(1),
    }
    assert len(data) == sum(entry.length for entry in entries)
    assert tlv.split_dol_data(entries, data) == dict(fitted)


def test_split_dol_data_checks_the_length() -> None:
    with pytest.raises(TlvError):
        tlv.split_dol_data(tlv.parse_dol(VISA_LIKE_PDOL), bytes(32))


def test_dol_is_bounded() -> None:
    with pytest.raises(TlvError, match="more than"):
        tlv.parse_dol(bytes.fromhex("9F02FF"))
