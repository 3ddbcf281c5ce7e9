"""BER-TLV (EMV Book 3 Annex B) and Data Object Lists (EMV Book 3 section 5.4).

Tags are plain ``int`` values written as in the specifications (``0x9F26``, ``0xBF0C``);
values are ``bytes``. ``decode`` returns a tree of ``Tlv`` nodes in wire order and keeps
repeated tags: a PPSE directory holds several ``61`` entries under one ``BF0C``.
(``pyemv.tlv`` maps each tag to one dict key, which would keep only the last directory entry,
so it serves here as an independent cross-check in the tests rather than as the codec.)

Invariants:
- Pure: standard library only; no I/O, clock or randomness.
- Bounded: input at most ``TLV_INPUT_LENGTH_MAX`` bytes, nesting at most ``TLV_DEPTH_MAX``
  templates, tags at most ``TAG_LENGTH_MAX`` bytes, length fields at most 3 bytes after ``81``-
  ``83``; indefinite lengths (``80``) are refused. Every violation is one ``TlvError``.
- ``decode(encode(tag, value))`` gives back ``(Tlv(tag, value),)`` for every well-formed tag;
  ``encode`` writes the shortest length field (``81``/``82``/``83`` only when needed).
- Constructed nodes (bit 6 of the first tag byte set) always carry their decoded children;
  primitive nodes never have children.
- A DOL build always yields exactly the lengths the DOL asked for, applying the EMV rules for
  values that are missing, longer or shorter than requested.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

TLV_INPUT_LENGTH_MAX: Final = 65_535
TLV_DEPTH_MAX: Final = 8
TAG_LENGTH_MAX: Final = 3
DOL_ENTRY_COUNT_MAX: Final = 64
DOL_DATA_LENGTH_MAX: Final = 252

# EMV data formats matter only when a DOL entry's length differs from the value's length.
# 'n' (BCD, right-justified): pad with leading zeros, truncate on the left.
NUMERIC_TAGS: Final = frozenset(
    {
        0x5F2A,  # transaction currency code
        0x5F36,  # transaction currency exponent
        0x9A,  # transaction date
        0x9C,  # transaction type
        0x9F02,  # amount, authorised
        0x9F03,  # amount, other
        0x9F1A,  # terminal country code
        0x9F21,  # transaction time
        0x9F41,  # transaction sequence counter
    }
)
# 'cn' (BCD, left-justified, 'F'-padded): pad with trailing 'F' nibbles, truncate on the right.
COMPRESSED_NUMERIC_TAGS: Final = frozenset({0x5A})


class TlvError(ValueError):
    """Malformed BER-TLV or DOL data; ``offset`` is where decoding stopped."""

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        super().__init__(message if offset is None else f"{message} (offset {offset})")
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Tlv:
    """One data object. ``children`` is filled for constructed tags only."""

    tag: int
    value: bytes
    children: tuple[Tlv, ...] = field(default=(), repr=False)

    @property
    def constructed(self) -> bool:
        return tag_is_constructed(self.tag)

    def first(self, tag: int) -> Tlv | None:
        """The first direct child with ``tag``, or ``None``."""
        return next((child for child in self.children if child.tag == tag), None)

    def all(self, tag: int) -> tuple[Tlv, ...]:
        """Every direct child with ``tag``, in wire order."""
        return tuple(child for child in self.children if child.tag == tag)


def tag_bytes(tag: int) -> bytes:
    """The wire form of ``tag``; raises ``TlvError`` if it is not a well-formed BER tag."""
    if tag <= 0:
        raise TlvError(f"tag must be positive, got {tag}")
    encoded = tag.to_bytes((tag.bit_length() + 7) // 8, "big")
    if len(encoded) > TAG_LENGTH_MAX:
        raise TlvError(f"tag {tag:X} longer than {TAG_LENGTH_MAX} bytes")
    try:
        well_formed = _tag_length_at(encoded, 0) == len(encoded)
    except TlvError:
        well_formed = False
    if not well_formed:
        raise TlvError(f"tag {tag:X} is not a well-formed BER tag")
    return encoded


def tag_is_constructed(tag: int) -> bool:
    return bool(tag_bytes(tag)[0] & 0x20)


def encode(tag: int, value: bytes) -> bytes:
    """One data object: tag, shortest length field, value."""
    return tag_bytes(tag) + _length_bytes(len(value)) + value


def encode_constructed(tag: int, *children: bytes) -> bytes:
    """A template holding the already encoded ``children`` in the given order."""
    if not tag_is_constructed(tag):
        raise TlvError(f"tag {tag:X} is primitive, it cannot hold children")
    return encode(tag, b"".join(children))


def decode(data: bytes) -> tuple[Tlv, ...]:
    """Decode a sequence of data objects; ``00`` filler bytes between objects are skipped."""
    if len(data) > TLV_INPUT_LENGTH_MAX:
        raise TlvError(f"input longer than {TLV_INPUT_LENGTH_MAX} bytes")
    return _decode(bytes(data), 0, len(data), 0)


def find(nodes: Iterable[Tlv], *path: int) -> Tlv | None:
    """Follow ``path`` from the top-level ``nodes``: ``find(fci, 0x6F, 0xA5, 0xBF0C)``."""
    current: Tlv | None = None
    level: Iterable[Tlv] = nodes
    for tag in path:
        current = next((node for node in level if node.tag == tag), None)
        if current is None:
            return None
        level = current.children
    return current


def _decode(data: bytes, start: int, end: int, depth: int) -> tuple[Tlv, ...]:
    if depth > TLV_DEPTH_MAX:
        raise TlvError(f"templates nested deeper than {TLV_DEPTH_MAX}", offset=start)
    nodes: list[Tlv] = []
    offset = start
    while offset < end:
        if data[offset] == 0x00:
            offset += 1
            continue
        tag_length = _tag_length_at(data, offset, end)
        tag = int.from_bytes(data[offset : offset + tag_length], "big")
        constructed = bool(data[offset] & 0x20)
        offset += tag_length
        length, offset = _read_length(data, offset, end)
        if offset + length > end:
            raise TlvError(f"value of tag {tag:X} runs past its container", offset=offset)
        value = data[offset : offset + length]
        children = _decode(data, offset, offset + length, depth + 1) if constructed else ()
        nodes.append(Tlv(tag, value, children))
        offset += length
    return tuple(nodes)


def _tag_length_at(data: bytes, offset: int, end: int | None = None) -> int:
    """Length of the tag starting at ``offset``: subsequent bytes follow a first byte whose low
    five bits are all set, each with bit 8 set while another follows."""
    limit = len(data) if end is None else end
    if data[offset] & 0x1F != 0x1F:
        return 1
    length = 1
    while True:
        if offset + length >= limit:
            raise TlvError("tag runs past the end of the data", offset=offset)
        more = data[offset + length] & 0x80
        length += 1
        if not more:
            return length
        if length >= TAG_LENGTH_MAX:
            raise TlvError(f"tag longer than {TAG_LENGTH_MAX} bytes", offset=offset)


def _read_length(data: bytes, offset: int, end: int) -> tuple[int, int]:
    if offset >= end:
        raise TlvError("length field missing", offset=offset)
    first = data[offset]
    if first < 0x80:
        return first, offset + 1
    count = first & 0x7F
    if count == 0 or count > 3:
        raise TlvError(f"unsupported length field {first:02X}", offset=offset)
    if offset + 1 + count > end:
        raise TlvError("length field runs past the end of the data", offset=offset)
    return int.from_bytes(data[offset + 1 : offset + 1 + count], "big"), offset + 1 + count


def _length_bytes(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    for count in (1, 2, 3):
        if length < 1 << (8 * count):
            return bytes([0x80 | count]) + length.to_bytes(count, "big")
    raise TlvError(f"value length {length} does not fit a 3-byte length field")


@dataclass(frozen=True, slots=True)
class DolEntry:
    """One entry of a Data Object List: the card asks for ``length`` bytes of ``tag``."""

    tag: int
    length: int


def parse_dol(data: bytes) -> tuple[DolEntry, ...]:
    """Parse a DOL (tag + length pairs, no values), e.g. the PDOL from tag ``9F38``."""
    entries: list[DolEntry] = []
    offset = 0
    total = 0
    while offset < len(data):
        if len(entries) >= DOL_ENTRY_COUNT_MAX:
            raise TlvError(f"DOL has more than {DOL_ENTRY_COUNT_MAX} entries", offset=offset)
        tag_length = _tag_length_at(data, offset)
        tag = int.from_bytes(data[offset : offset + tag_length], "big")
        offset += tag_length
        if offset >= len(data):
            raise TlvError(f"DOL entry {tag:X} has no length", offset=offset)
        length = data[offset]  # a DOL length is one plain byte, not a BER length field
        offset += 1
        total += length
        if total > DOL_DATA_LENGTH_MAX:
            raise TlvError(f"DOL asks for more than {DOL_DATA_LENGTH_MAX} bytes", offset=offset)
        entries.append(DolEntry(tag, length))
    return tuple(entries)


def encode_dol(entries: Sequence[DolEntry]) -> bytes:
    """The wire form of a DOL (what a card puts in ``9F38``)."""
    if any(not 0 <= entry.length <= 0xFF for entry in entries):
        raise TlvError("a DOL length is one byte")
    return b"".join(tag_bytes(entry.tag) + bytes([entry.length]) for entry in entries)


def fit_dol_value(tag: int, value: bytes | None, length: int) -> bytes:
    """``value`` resized to ``length`` by the EMV rules; a missing value becomes zeros."""
    if value is None or tag_is_constructed(tag):
        return bytes(length)
    if len(value) == length:
        return value
    if tag in NUMERIC_TAGS:
        return value[-length:] if len(value) > length else bytes(length - len(value)) + value
    if tag in COMPRESSED_NUMERIC_TAGS:
        return value[:length] if len(value) > length else value + b"\xff" * (length - len(value))
    return value[:length] if len(value) > length else value + bytes(length - len(value))


def build_dol_data(
    entries: Sequence[DolEntry], values: Mapping[int, bytes]
) -> tuple[bytes, tuple[tuple[int, bytes], ...]]:
    """The DOL-related data for ``entries`` and the fitted value of each entry, in DOL order.

    The second item is exactly what went on the wire per tag, which is what a card MACs.
    """
    fitted = tuple((entry.tag, fit_dol_value(entry.tag, values.get(entry.tag), entry.length)) for entry in entries)
    return b"".join(value for _, value in fitted), fitted


def split_dol_data(entries: Sequence[DolEntry], data: bytes) -> dict[int, bytes]:
    """Cut DOL-related data back into per-tag values (the card side of ``build_dol_data``)."""
    expected = sum(entry.length for entry in entries)
    if len(data) != expected:
        raise TlvError(f"DOL data is {len(data)} bytes, the DOL asks for {expected}")
    values: dict[int, bytes] = {}
    offset = 0
    for entry in entries:
        values[entry.tag] = data[offset : offset + entry.length]
        offset += entry.length
    return values
