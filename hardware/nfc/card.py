"""Card side of the EMV contactless fast path: the payment applet a wallet phone emulates.

``WalletCard.handle_apdu`` answers SELECT PPSE, SELECT of the wallet AID and GET PROCESSING
OPTIONS; the GPO answer (template ``77``) carries a fresh Visa CVN 18 ARQC computed with
``pyemv`` from the provisioned ICC master key, so the issuer (the gateway) can verify it with
the stock CVN 18 recipe:

- ICC MK (AC)   = ``pyemv.kd.derive_icc_mk_b(IMK, token_pan, f"{psn:02d}")`` (EMV option B,
  which equals option A for PANs of 16 digits or fewer); the issuer provisions it.
- session key   = ``pyemv.kd.derive_common_sk(ICC MK, ATC || 00 00 00 00 00 00)``.
- ARQC          = ``pyemv.ac.generate_ac(session key, data, PaddingType.EMV, 8)`` with
  data = ``9F02 9F03 9F1A 95 5F2A 9A 9C 9F37`` (as received in the PDOL data) ``|| 82 || 9F36
  || 9F10``; the same as ``pyemv.cvn.VisaCVN18(IMK, ...).generate_ac``.

The wallet's application identifier is ``WALLET_AID`` = ``F0 57 41 4C 4C 45 54 01``: ``F0``
marks a proprietary (unregistered) AID under ISO/IEC 7816-5, then ASCII ``WALLET`` and an
application version byte ``01``.

Invariants:
- Pure apart from the cryptography (no I/O, clock or randomness): the same provisioning, ATC
  and terminal data always give the same answers.
- ``handle_apdu`` never raises: every bad command gets an ISO 7816-4 status word.
- The ATC strictly increases: each accepted GPO uses ``atc + 1``; at ``ATC_MAX`` the card
  refuses further GPOs (``6985``) instead of wrapping around.
- One GPO per activation (``reset`` starts a new one); GPO only after the wallet AID is
  selected.
- Keys and the full PAN never appear in ``repr``/``str``.
- pyemv's ``CryptographyDeprecationWarning`` (two-key TripleDES) is silenced only around
  pyemv calls and only for that category from pyemv's modules.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Final

import pyemv
from cryptography.utils import CryptographyDeprecationWarning

from hardware.nfc import apdu, tlv
from hardware.nfc.emv import PPSE_NAME, Tag, mask_pan

WALLET_AID: Final = bytes.fromhex("F057414C4C455401")
WALLET_LABEL: Final = "WALLET"
ATC_MAX: Final = 0xFFFF
CVN_VISA_18: Final = 0x12
# AIP 82: byte 1 bit 5 "cardholder verification is supported" and bit 2 "on-device
# cardholder verification supported" (the phone verifies its user); no offline data
# authentication, so every tap goes online.
AIP_WALLET: Final = bytes.fromhex("1200")
SERVICE_CODE: Final = "201"  # international, integrated circuit, normal authorisation

CARD_PDOL: Final = (
    tlv.DolEntry(Tag.TTQ, 4),
    tlv.DolEntry(Tag.AMOUNT_AUTHORISED, 6),
    tlv.DolEntry(Tag.AMOUNT_OTHER, 6),
    tlv.DolEntry(Tag.TERMINAL_COUNTRY, 2),
    tlv.DolEntry(Tag.TVR, 5),
    tlv.DolEntry(Tag.TRANSACTION_CURRENCY, 2),
    tlv.DolEntry(Tag.TRANSACTION_DATE, 3),
    tlv.DolEntry(Tag.TRANSACTION_TYPE, 1),
    tlv.DolEntry(Tag.UNPREDICTABLE_NUMBER, 4),
)
# Terminal data of the CVN 18 MAC input, in MAC order; 82, 9F36 and 9F10 follow.
CVN18_TERMINAL_TAGS: Final = (
    Tag.AMOUNT_AUTHORISED,
    Tag.AMOUNT_OTHER,
    Tag.TERMINAL_COUNTRY,
    Tag.TVR,
    Tag.TRANSACTION_CURRENCY,
    Tag.TRANSACTION_DATE,
    Tag.TRANSACTION_TYPE,
    Tag.UNPREDICTABLE_NUMBER,
)

_pyemv_lock = threading.Lock()


@contextmanager
def quiet_pyemv() -> Iterator[None]:
    """Run pyemv without its two-key TripleDES deprecation warnings.

    ``catch_warnings`` swaps process-wide state, so the lock keeps two of our threads from
    interleaving their save/restore.
    """
    with _pyemv_lock, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning, module=r"pyemv\.")
        yield


def arqc_cvn18(icc_mk_ac: bytes, atc: int, terminal_values: Mapping[int, bytes], aip: bytes, iad: bytes) -> bytes:
    """The Visa CVN 18 application cryptogram (8 bytes) for one transaction."""
    atc_bytes = atc.to_bytes(2, "big")
    data = b"".join(terminal_values[tag] for tag in CVN18_TERMINAL_TAGS) + aip + atc_bytes + iad
    with quiet_pyemv():
        session_key = pyemv.kd.derive_common_sk(icc_mk_ac, atc_bytes + bytes(6))
        return pyemv.ac.generate_ac(session_key, data, pyemv.ac.PaddingType.EMV, 8)


def visa_iad(derivation_key_index: int) -> bytes:
    """Visa issuer application data: length 06, DKI, CVN 12 (18), CVR ``03 A0 00 00``
    (first GENERATE AC returned an ARQC, second not requested)."""
    return bytes([0x06, derivation_key_index, CVN_VISA_18, 0x03, 0xA0, 0x00, 0x00])


@dataclass(frozen=True, slots=True, repr=False)
class WalletProvisioning:
    """What the issuer gives one wallet device: its token and its ICC master key (AC)."""

    token_pan: str  # 12-19 digits; a token, never a card number
    psn: int  # PAN sequence number 0-99
    icc_mk_ac: bytes  # 16-byte double-length DES key, derived by the issuer (option B)
    expiry_yymm: str = "3012"
    derivation_key_index: int = 1  # which issuer key set; goes into 9F10 for the issuer

    def __post_init__(self) -> None:
        if not (self.token_pan.isdigit() and 12 <= len(self.token_pan) <= 19):
            raise ValueError("token_pan must be 12-19 digits")
        if not 0 <= self.psn <= 99:
            raise ValueError("psn must be 0..99")
        if len(self.icc_mk_ac) != 16:
            raise ValueError("icc_mk_ac must be a 16-byte key")
        if not (len(self.expiry_yymm) == 4 and self.expiry_yymm.isdigit() and 1 <= int(self.expiry_yymm[2:]) <= 12):
            raise ValueError("expiry_yymm must be YYMM")
        if not 0 <= self.derivation_key_index <= 0xFF:
            raise ValueError("derivation_key_index must be one byte")

    def track2(self) -> bytes:
        nibbles = f"{self.token_pan}D{self.expiry_yymm}{SERVICE_CODE}"
        return bytes.fromhex(nibbles + "F" * (len(nibbles) % 2))

    def __repr__(self) -> str:
        return f"WalletProvisioning(token_pan={mask_pan(self.token_pan)}, psn={self.psn}, icc_mk_ac=<hidden>)"

    __str__ = __repr__


class _State(Enum):
    IDLE = "idle"
    PPSE_SELECTED = "ppse_selected"
    APPLICATION_SELECTED = "application_selected"
    DONE = "done"


class WalletCard:
    """The payment applet. Not thread-safe: one owner (the phone's NFC thread)."""

    def __init__(self, provisioning: WalletProvisioning, *, atc: int = 0) -> None:
        if not 0 <= atc <= ATC_MAX:
            raise ValueError(f"atc must be 0..{ATC_MAX}")
        self._provisioning = provisioning
        self._atc = atc
        self._state = _State.IDLE

    @property
    def atc(self) -> int:
        """The counter: the ATC of the last cryptogram (the next GPO uses ``atc + 1``)."""
        return self._atc

    def reset(self) -> None:
        """A new activation in the reader's field: nothing is selected."""
        self._state = _State.IDLE

    def handle_apdu(self, command: bytes) -> bytes:
        try:
            parsed = apdu.parse_command(command)
        except apdu.ApduError:
            return apdu.respond(sw=apdu.SW_WRONG_LENGTH)
        if parsed.ins == 0xA4:
            return self._select(parsed)
        if parsed.ins == 0xA8:
            return self._get_processing_options(parsed)
        return apdu.respond(sw=apdu.SW_INS_NOT_SUPPORTED)

    def _select(self, command: apdu.CommandApdu) -> bytes:
        if command.cla != 0x00:
            return apdu.respond(sw=apdu.SW_CLA_NOT_SUPPORTED)
        if (command.p1, command.p2) != (0x04, 0x00):
            return apdu.respond(sw=apdu.SW_WRONG_P1P2)
        if command.data == PPSE_NAME:
            self._state = _State.PPSE_SELECTED
            return apdu.respond(self._ppse_fci())
        if command.data == WALLET_AID:
            self._state = _State.APPLICATION_SELECTED
            return apdu.respond(self._application_fci())
        self._state = _State.IDLE
        return apdu.respond(sw=apdu.SW_FILE_NOT_FOUND)

    def _get_processing_options(self, command: apdu.CommandApdu) -> bytes:
        if command.cla != 0x80:
            return apdu.respond(sw=apdu.SW_CLA_NOT_SUPPORTED)
        if (command.p1, command.p2) != (0x00, 0x00):
            return apdu.respond(sw=apdu.SW_WRONG_P1P2)
        if self._state is not _State.APPLICATION_SELECTED or self._atc >= ATC_MAX:
            return apdu.respond(sw=apdu.SW_CONDITIONS_NOT_SATISFIED)
        try:
            nodes = tlv.decode(command.data)
            if len(nodes) != 1 or nodes[0].tag != Tag.COMMAND_TEMPLATE:
                return apdu.respond(sw=apdu.SW_WRONG_DATA)
            terminal_values = tlv.split_dol_data(CARD_PDOL, nodes[0].value)
        except tlv.TlvError:
            return apdu.respond(sw=apdu.SW_WRONG_LENGTH)
        self._atc += 1
        self._state = _State.DONE
        return apdu.respond(self._cryptogram_response(terminal_values))

    def _cryptogram_response(self, terminal_values: Mapping[int, bytes]) -> bytes:
        provisioning = self._provisioning
        iad = visa_iad(provisioning.derivation_key_index)
        arqc = arqc_cvn18(provisioning.icc_mk_ac, self._atc, terminal_values, AIP_WALLET, iad)
        return tlv.encode_constructed(
            Tag.RESPONSE_FORMAT_2,
            tlv.encode(Tag.AIP, AIP_WALLET),
            tlv.encode(Tag.ATC, self._atc.to_bytes(2, "big")),
            tlv.encode(Tag.TRACK2_EQUIVALENT, provisioning.track2()),
            tlv.encode(Tag.PAN_SEQUENCE_NUMBER, bytes.fromhex(f"{provisioning.psn:02d}")),
            tlv.encode(Tag.IAD, iad),
            tlv.encode(Tag.APPLICATION_CRYPTOGRAM, arqc),
            tlv.encode(Tag.CID, bytes([0x80])),
        )

    @staticmethod
    def _ppse_fci() -> bytes:
        entry = tlv.encode_constructed(
            Tag.DIRECTORY_ENTRY,
            tlv.encode(Tag.AID, WALLET_AID),
            tlv.encode(Tag.APPLICATION_LABEL, WALLET_LABEL.encode("ascii")),
            tlv.encode(Tag.PRIORITY_INDICATOR, b"\x01"),
        )
        return tlv.encode_constructed(
            Tag.FCI_TEMPLATE,
            tlv.encode(Tag.DF_NAME, PPSE_NAME),
            tlv.encode_constructed(Tag.FCI_PROPRIETARY, tlv.encode_constructed(Tag.FCI_ISSUER_DISCRETIONARY, entry)),
        )

    @staticmethod
    def _application_fci() -> bytes:
        return tlv.encode_constructed(
            Tag.FCI_TEMPLATE,
            tlv.encode(Tag.DF_NAME, WALLET_AID),
            tlv.encode_constructed(
                Tag.FCI_PROPRIETARY,
                tlv.encode(Tag.APPLICATION_LABEL, WALLET_LABEL.encode("ascii")),
                tlv.encode(Tag.PDOL, tlv.encode_dol(CARD_PDOL)),
            ),
        )

    def __repr__(self) -> str:
        return f"WalletCard({self._provisioning!r}, atc={self._atc})"
