"""NFC tap device layer: the reader (terminal) side of an EMV contactless tap, and the card side
a wallet phone emulates.

Modules: ``tlv`` (BER-TLV, DOL), ``apdu`` (ISO 7816-4 short APDUs), ``emv`` (terminal fast path,
``TapResult``), ``card`` (wallet payment applet, Visa CVN 18 ARQC), ``reader`` (``NfcReader``,
asyncio over nfcpy), ``errors``.

Invariant: pure modules (``tlv``, ``apdu``, ``emv``, ``card``) do no I/O; only ``reader`` talks
to nfcpy, from its own thread.
"""

from hardware.nfc.card import WALLET_AID, WalletCard, WalletProvisioning
from hardware.nfc.emv import TapResult, TerminalData
from hardware.nfc.errors import (
    CardError,
    NfcError,
    ReaderBusy,
    ReaderUnavailable,
    TapCancelled,
    TapTimeout,
)
from hardware.nfc.reader import NfcReader

__all__ = [
    "WALLET_AID",
    "CardError",
    "NfcError",
    "NfcReader",
    "ReaderBusy",
    "ReaderUnavailable",
    "TapCancelled",
    "TapResult",
    "TapTimeout",
    "TerminalData",
    "WalletCard",
    "WalletProvisioning",
]
