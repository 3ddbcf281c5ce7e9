"""Terminal side of the EMV contactless fast path (the flow wallets and contactless cards use).

``run_fast_path`` drives one tap over any ``transceive`` callable (raw command APDU in, raw
response APDU out): SELECT the PPSE, choose the accepted AID with the highest priority, SELECT
it, read its PDOL, send GET PROCESSING OPTIONS with the terminal data, and parse the template
``77`` answer into a ``TapResult`` holding the ARQC and everything an issuer needs to verify it.

Invariants:
- Pure: no I/O, clock or randomness; the date and the unpredictable number come in through
  ``TerminalData``. The reader and the tests supply ``transceive``.
- Only exact AID matches are selected, and only among ``accepted_aids``.
- A ``TapResult`` always holds an ARQC (CID ``80``): anything else is a ``CardError``.
- ``TapResult.pdol_values`` are the bytes that went on the wire for each PDOL entry (after the
  DOL length rules), i.e. exactly what the card MACed; the issuer verifies against these.
- The token PAN never appears in ``repr``/``str`` of any object here (last four digits only).
- Every failure of the card to follow the flow is a ``CardError`` with a stable ``reason``;
  at most ``GET_RESPONSE_COUNT_MAX`` GET RESPONSE rounds follow a ``61xx`` status.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from hardware.nfc import apdu, tlv
from hardware.nfc.errors import CardError

PPSE_NAME: Final = b"2PAY.SYS.DDF01"
AID_LENGTH_MIN: Final = 5
AID_LENGTH_MAX: Final = 16
AMOUNT_MINOR_MAX: Final = 999_999_999_999  # n12
GET_RESPONSE_COUNT_MAX: Final = 8
RESPONSE_DATA_TOTAL_MAX: Final = 1024

TRANSACTION_TYPE_PURCHASE: Final = 0  # 9C is n2: "00" purchase, "20" refund
# Terminal verification results for an online-only fast path: byte 1 bit 8, "offline data
# authentication was not performed"; nothing else is checked offline, the issuer decides.
TVR_ONLINE_ONLY: Final = bytes.fromhex("8000000000")
# Terminal transaction qualifiers: qVSDC, online PIN and signature supported (26); online
# cryptogram required (80); consumer device CVM supported (40): the phone verifies its user.
TTQ_ONLINE_CDCVM: Final = bytes.fromhex("26804000")
CID_ARQC: Final = 0x80

Transceive = Callable[[bytes], bytes]


class Tag(IntEnum):
    FCI_TEMPLATE = 0x6F
    DF_NAME = 0x84
    FCI_PROPRIETARY = 0xA5
    FCI_ISSUER_DISCRETIONARY = 0xBF0C
    DIRECTORY_ENTRY = 0x61
    AID = 0x4F
    APPLICATION_LABEL = 0x50
    PRIORITY_INDICATOR = 0x87
    PDOL = 0x9F38
    COMMAND_TEMPLATE = 0x83
    RESPONSE_FORMAT_1 = 0x80
    RESPONSE_FORMAT_2 = 0x77
    TRACK2_EQUIVALENT = 0x57
    PAN_SEQUENCE_NUMBER = 0x5F34
    AIP = 0x82
    IAD = 0x9F10
    APPLICATION_CRYPTOGRAM = 0x9F26
    CID = 0x9F27
    ATC = 0x9F36
    TTQ = 0x9F66
    AMOUNT_AUTHORISED = 0x9F02
    AMOUNT_OTHER = 0x9F03
    TERMINAL_COUNTRY = 0x9F1A
    TVR = 0x95
    TRANSACTION_CURRENCY = 0x5F2A
    TRANSACTION_DATE = 0x9A
    TRANSACTION_TYPE = 0x9C
    UNPREDICTABLE_NUMBER = 0x9F37


def bcd(value: int, length_bytes: int) -> bytes:
    """``value`` as EMV format n: right-justified BCD, zero-padded to ``length_bytes``."""
    digits = str(value)
    if value < 0 or len(digits) > 2 * length_bytes:
        raise ValueError(f"{value} does not fit {length_bytes} BCD bytes")
    return bytes.fromhex(digits.zfill(2 * length_bytes))


def bcd_to_int(value: bytes) -> int:
    digits = value.hex()
    if not digits.isdigit():
        raise ValueError(f"not BCD: {digits.upper()}")
    return int(digits)


def mask_pan(pan: str) -> str:
    """All digits but the last four replaced by ``*``: the only form a PAN may be logged in."""
    return "*" * max(len(pan) - 4, 0) + pan[-4:]


@dataclass(frozen=True, slots=True)
class TerminalData:
    """What the terminal contributes to one transaction; checked when built."""

    amount_minor: int
    currency_numeric: int
    country_numeric: int
    transaction_date: datetime.date
    unpredictable_number: bytes
    amount_other_minor: int = 0
    transaction_type: int = TRANSACTION_TYPE_PURCHASE
    tvr: bytes = TVR_ONLINE_ONLY
    ttq: bytes = TTQ_ONLINE_CDCVM

    def __post_init__(self) -> None:
        if not 1 <= self.amount_minor <= AMOUNT_MINOR_MAX:
            raise ValueError(f"amount_minor must be 1..{AMOUNT_MINOR_MAX}, got {self.amount_minor}")
        if not 0 <= self.amount_other_minor <= AMOUNT_MINOR_MAX:
            raise ValueError(f"amount_other_minor must be 0..{AMOUNT_MINOR_MAX}")
        for name, code in (("currency_numeric", self.currency_numeric), ("country_numeric", self.country_numeric)):
            if not 1 <= code <= 999:
                raise ValueError(f"{name} must be an ISO numeric code 1..999, got {code}")
        if not 0 <= self.transaction_type <= 99:
            raise ValueError(f"transaction_type must be 0..99, got {self.transaction_type}")
        if len(self.unpredictable_number) != 4:
            raise ValueError("unpredictable_number must be 4 bytes")
        if len(self.tvr) != 5 or len(self.ttq) != 4:
            raise ValueError("tvr must be 5 bytes and ttq 4 bytes")

    def tag_values(self) -> dict[int, bytes]:
        """Every terminal data object this terminal can put into a PDOL, in wire form."""
        date = self.transaction_date
        return {
            Tag.TTQ: self.ttq,
            Tag.AMOUNT_AUTHORISED: bcd(self.amount_minor, 6),
            Tag.AMOUNT_OTHER: bcd(self.amount_other_minor, 6),
            Tag.TERMINAL_COUNTRY: bcd(self.country_numeric, 2),
            Tag.TVR: self.tvr,
            Tag.TRANSACTION_CURRENCY: bcd(self.currency_numeric, 2),
            Tag.TRANSACTION_DATE: bytes.fromhex(f"{date.year % 100:02d}{date.month:02d}{date.day:02d}"),
            Tag.TRANSACTION_TYPE: bcd(self.transaction_type, 1),
            Tag.UNPREDICTABLE_NUMBER: self.unpredictable_number,
        }


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    aid: bytes
    label: str | None
    priority: int | None  # 1 (highest) .. 15; None when absent or 0


@dataclass(frozen=True, slots=True)
class ApplicationFci:
    aid: bytes
    label: str | None
    pdol: tuple[tlv.DolEntry, ...]


@dataclass(frozen=True, slots=True)
class GpoCommand:
    apdu: bytes
    pdol_values: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True, slots=True)
class Track2:
    pan: str
    expiry_yymm: str
    service_code: str

    def __repr__(self) -> str:
        return f"Track2(pan={mask_pan(self.pan)}, expiry_yymm={self.expiry_yymm}, service_code={self.service_code})"


@dataclass(frozen=True, slots=True, repr=False)
class TapResult:
    """One completed tap: the card's answer to GPO plus the terminal data it was computed over.

    ``token_pan`` is a wallet token, never a card number, and is still never logged unmasked:
    ``repr``/``str`` show ``masked_pan``.
    """

    aid: bytes
    token_pan: str
    expiry_yymm: str
    service_code: str
    psn: int | None  # 5F34 PAN sequence number; None when the card sent none (issuers use 00)
    aip: bytes  # 82
    iad: bytes  # 9F10 issuer application data
    arqc: bytes  # 9F26
    cid: int  # 9F27, always CID_ARQC
    atc: int  # 9F36
    terminal: TerminalData
    pdol_values: tuple[tuple[int, bytes], ...]

    @property
    def masked_pan(self) -> str:
        return mask_pan(self.token_pan)

    def terminal_value(self, tag: int) -> bytes:
        """The bytes sent for ``tag`` in the GPO; ``KeyError`` if the card's PDOL omitted it."""
        for sent_tag, value in self.pdol_values:
            if sent_tag == tag:
                return value
        raise KeyError(f"tag {tag:X} was not in the card's PDOL")

    def __repr__(self) -> str:
        return (
            f"TapResult(aid={self.aid.hex().upper()}, pan={self.masked_pan}, psn={self.psn}, "
            f"atc={self.atc}, arqc={self.arqc.hex().upper()}, amount_minor={self.terminal.amount_minor}, "
            f"currency_numeric={self.terminal.currency_numeric})"
        )

    __str__ = __repr__


def run_fast_path(transceive: Transceive, terminal: TerminalData, accepted_aids: Sequence[bytes]) -> TapResult:
    """One tap, start to finish, over ``transceive``; raises ``CardError`` on a bad answer."""
    entries = parse_ppse_fci(command(transceive, select_apdu(PPSE_NAME)))
    chosen = choose_application(entries, accepted_aids)
    fci = parse_application_fci(command(transceive, select_apdu(chosen.aid)), chosen.aid)
    gpo = build_gpo(fci.pdol, terminal)
    return parse_gpo_response(command(transceive, gpo.apdu), fci.aid, terminal, gpo.pdol_values)


def command(transceive: Transceive, command_apdu: bytes) -> bytes:
    """Send ``command_apdu`` and return the response data, following ``61xx`` with GET RESPONSE."""
    data = b""
    response = transceive(command_apdu)
    for _ in range(GET_RESPONSE_COUNT_MAX + 1):
        try:
            chunk, sw = apdu.split_response(response)
        except apdu.ApduError as error:
            raise CardError(str(error), reason="malformed") from None
        data += chunk
        if len(data) > RESPONSE_DATA_TOTAL_MAX:
            raise CardError(f"response longer than {RESPONSE_DATA_TOTAL_MAX} bytes", reason="malformed")
        if sw == apdu.SW_OK:
            return data
        if sw >> 8 != apdu.SW_MORE_DATA_PREFIX:
            raise CardError("card refused the command", reason="status_word", sw=sw)
        response = transceive(apdu.build_command(0x00, 0xC0, 0x00, 0x00, le=(sw & 0xFF) or 256))
    raise CardError(f"more than {GET_RESPONSE_COUNT_MAX} GET RESPONSE rounds", reason="malformed")


def select_apdu(name: bytes) -> bytes:
    """SELECT by DF name, first occurrence, FCI requested: ``00 A4 04 00 Lc name 00``."""
    return apdu.build_command(0x00, 0xA4, 0x04, 0x00, name, le=256)


def parse_ppse_fci(data: bytes) -> tuple[DirectoryEntry, ...]:
    """The directory entries (``6F > A5 > BF0C > 61``) of the PPSE's FCI, in wire order."""
    directory = tlv.find(_decode(data), Tag.FCI_TEMPLATE, Tag.FCI_PROPRIETARY, Tag.FCI_ISSUER_DISCRETIONARY)
    if directory is None:
        raise CardError("PPSE FCI has no 6F > A5 > BF0C directory", reason="malformed")
    entries: list[DirectoryEntry] = []
    for entry in directory.all(Tag.DIRECTORY_ENTRY):
        aid = entry.first(Tag.AID)
        if aid is None or not AID_LENGTH_MIN <= len(aid.value) <= AID_LENGTH_MAX:
            raise CardError("directory entry without a valid 4F AID", reason="malformed")
        priority = entry.first(Tag.PRIORITY_INDICATOR)
        priority_value = (priority.value[0] & 0x0F) if priority is not None and len(priority.value) == 1 else 0
        entries.append(DirectoryEntry(aid.value, _label(entry), priority_value or None))
    return tuple(entries)


def choose_application(entries: Sequence[DirectoryEntry], accepted_aids: Sequence[bytes]) -> DirectoryEntry:
    """The accepted entry with the highest priority (1 first, no priority last, then card order)."""
    accepted = set(accepted_aids)
    candidates = [(entry.priority or 16, index, entry) for index, entry in enumerate(entries) if entry.aid in accepted]
    if not candidates:
        raise CardError("the card offers no application this reader accepts", reason="no_accepted_application")
    return min(candidates, key=lambda candidate: (candidate[0], candidate[1]))[2]


def parse_application_fci(data: bytes, aid: bytes) -> ApplicationFci:
    fci = tlv.find(_decode(data), Tag.FCI_TEMPLATE)
    if fci is None:
        raise CardError("SELECT AID answer has no 6F FCI template", reason="malformed")
    df_name = fci.first(Tag.DF_NAME)
    if df_name is None or df_name.value != aid:
        raise CardError("FCI names another application than the one selected", reason="malformed")
    proprietary = fci.first(Tag.FCI_PROPRIETARY)
    pdol_node = proprietary.first(Tag.PDOL) if proprietary is not None else None
    try:
        pdol = tlv.parse_dol(pdol_node.value) if pdol_node is not None else ()
    except tlv.TlvError as error:
        raise CardError(f"malformed PDOL: {error}", reason="malformed") from None
    return ApplicationFci(aid, _label(proprietary) if proprietary is not None else None, pdol)


def build_gpo(pdol: Sequence[tlv.DolEntry], terminal: TerminalData) -> GpoCommand:
    """GET PROCESSING OPTIONS: ``80 A8 00 00 Lc 83 L <PDOL data> 00``."""
    pdol_data, pdol_values = tlv.build_dol_data(pdol, terminal.tag_values())
    command_data = tlv.encode(Tag.COMMAND_TEMPLATE, pdol_data)
    return GpoCommand(apdu.build_command(0x80, 0xA8, 0x00, 0x00, command_data, le=256), pdol_values)


def parse_gpo_response(
    data: bytes, aid: bytes, terminal: TerminalData, pdol_values: tuple[tuple[int, bytes], ...]
) -> TapResult:
    nodes = _decode(data)
    if tlv.find(nodes, Tag.RESPONSE_FORMAT_1) is not None:
        raise CardError("card answered GPO with format 1 (full kernel flow)", reason="unsupported_flow")
    template = tlv.find(nodes, Tag.RESPONSE_FORMAT_2)
    if template is None:
        raise CardError("GPO answer has no 77 template", reason="malformed")
    track2 = parse_track2(_required(template, Tag.TRACK2_EQUIVALENT))
    cid = _required(template, Tag.CID, length=1)[0]
    if cid & 0xC0 != CID_ARQC:
        raise CardError(f"card did not ask for online authorisation (CID {cid:02X})", reason="unsupported_flow")
    psn_node = template.first(Tag.PAN_SEQUENCE_NUMBER)
    psn = _psn(psn_node.value) if psn_node is not None else None
    iad = _required(template, Tag.IAD)
    if len(iad) > 32:
        raise CardError("9F10 longer than 32 bytes", reason="malformed")
    return TapResult(
        aid=aid,
        token_pan=track2.pan,
        expiry_yymm=track2.expiry_yymm,
        service_code=track2.service_code,
        psn=psn,
        aip=_required(template, Tag.AIP, length=2),
        iad=iad,
        arqc=_required(template, Tag.APPLICATION_CRYPTOGRAM, length=8),
        cid=cid,
        atc=int.from_bytes(_required(template, Tag.ATC, length=2), "big"),
        terminal=terminal,
        pdol_values=pdol_values,
    )


def parse_track2(value: bytes) -> Track2:
    """Track 2 equivalent data (57): PAN, ``D``, YYMM, service code, discretionary, ``F`` pad."""
    nibbles = value.hex().upper().rstrip("F")
    pan, separator, rest = nibbles.partition("D")
    if not separator or not pan.isdigit() or not 12 <= len(pan) <= 19:
        raise CardError("57 does not hold a 12-19 digit PAN and separator", reason="malformed")
    if len(rest) < 7 or not rest.isdigit():
        raise CardError("57 lacks expiry and service code", reason="malformed")
    return Track2(pan=pan, expiry_yymm=rest[:4], service_code=rest[4:7])


def _decode(data: bytes) -> tuple[tlv.Tlv, ...]:
    try:
        return tlv.decode(data)
    except tlv.TlvError as error:
        raise CardError(f"malformed TLV: {error}", reason="malformed") from None


def _required(template: tlv.Tlv, tag: Tag, *, length: int | None = None) -> bytes:
    node = template.first(tag)
    if node is None:
        raise CardError(f"GPO answer lacks {tag.value:X} ({tag.name})", reason="malformed")
    if length is not None and len(node.value) != length:
        raise CardError(f"{tag.value:X} must be {length} bytes, got {len(node.value)}", reason="malformed")
    return node.value


def _psn(value: bytes) -> int:
    try:
        if len(value) != 1:
            raise ValueError("not one byte")
        return bcd_to_int(value)
    except ValueError:
        raise CardError("5F34 must be one BCD byte", reason="malformed") from None


def _label(node: tlv.Tlv) -> str | None:
    label = node.first(Tag.APPLICATION_LABEL)
    return label.value.decode("ascii", errors="replace") if label is not None else None
