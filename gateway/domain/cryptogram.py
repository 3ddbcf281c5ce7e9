"""Issuer-side EMV cryptogram checks for wallet taps (Visa CVN 18, as pyemv implements it).

Keys: the gateway holds an issuer master key (IMK). A wallet phone's ICC master key is derived
from the IMK, its token PAN and PAN sequence number (EMV option B); per tap, a session key is
derived from the ICC master key and the application transaction counter (ATC); the ARQC is an
EMV MAC over the terminal data (9F02 9F03 9F1A 95 5F2A 9A 9C 9F37), 82, 9F36 and 9F10.

Invariants: comparisons of cryptograms are constant-time; amounts and currencies are read from
the exact bytes the cryptogram covers, so a tap cannot be replayed for another amount.
"""

from __future__ import annotations

import hmac
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import pyemv
from cryptography.utils import CryptographyDeprecationWarning

TERMINAL_TAGS = ("9F02", "9F03", "9F1A", "95", "5F2A", "9A", "9C", "9F37")
_TAG_LENGTHS = {"9F02": 6, "9F03": 6, "9F1A": 2, "95": 5, "5F2A": 2, "9A": 3, "9C": 1, "9F37": 4}
CVN_18 = 0x12


@contextmanager
def _quiet() -> Iterator[None]:
    # pyemv uses two-key TripleDES, which the EMV standard mandates and cryptography deprecates.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
        yield


class TapDataError(ValueError):
    """Tap data that is malformed (not a decline: a bad request)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Tap:
    token_pan: str
    psn: int
    atc: int
    arqc: bytes
    aip: bytes
    iad: bytes
    terminal: Mapping[str, bytes]

    def __post_init__(self) -> None:
        if not (12 <= len(self.token_pan) <= 19 and self.token_pan.isascii() and self.token_pan.isdigit()):
            raise TapDataError("tap.token_pan", "token_pan is 12-19 digits")
        if not 0 <= self.psn <= 99:
            raise TapDataError("tap.psn", "psn is 0-99")
        if not 0 < self.atc <= 0xFFFF:
            raise TapDataError("tap.atc", "atc is 1-65535")
        if len(self.arqc) != 8:
            raise TapDataError("tap.arqc", "arqc is 8 bytes")
        if len(self.aip) != 2:
            raise TapDataError("tap.aip", "aip is 2 bytes")
        if not 1 <= len(self.iad) <= 32:
            raise TapDataError("tap.iad", "iad is 1-32 bytes")
        for tag in TERMINAL_TAGS:
            value = self.terminal.get(tag)
            if value is None or len(value) != _TAG_LENGTHS[tag]:
                raise TapDataError(f"tap.terminal.{tag}", f"terminal tag {tag} must be {_TAG_LENGTHS[tag]} bytes")
        if set(self.terminal) - set(TERMINAL_TAGS):
            raise TapDataError("tap.terminal", "unexpected terminal tags")

    @property
    def amount_minor(self) -> int:
        return _bcd(self.terminal["9F02"], "tap.terminal.9F02")

    @property
    def currency_numeric(self) -> int:
        return _bcd(self.terminal["5F2A"], "tap.terminal.5F2A")

    @property
    def masked_pan(self) -> str:
        return "*" * (len(self.token_pan) - 4) + self.token_pan[-4:]


def _bcd(value: bytes, field: str) -> int:
    digits = value.hex()
    if not digits.isdigit():
        raise TapDataError(field, "not BCD")
    return int(digits)


def derive_icc_master_key(imk: bytes, token_pan: str, psn: int) -> bytes:
    with _quiet():
        key: bytes = pyemv.kd.derive_icc_mk_b(imk, token_pan, f"{psn:02d}")
    return key


def arqc_is_valid(imk: bytes, tap: Tap) -> bool:
    with _quiet():
        cvn18 = pyemv.cvn.VisaCVN18(imk, imk, imk, tap.token_pan, f"{tap.psn:02d}")
        expected: bytes = cvn18.generate_ac(
            tag_9f02=tap.terminal["9F02"], tag_9f03=tap.terminal["9F03"], tag_9f1a=tap.terminal["9F1A"],
            tag_95=tap.terminal["95"], tag_5f2a=tap.terminal["5F2A"], tag_9a=tap.terminal["9A"],
            tag_9c=tap.terminal["9C"], tag_9f37=tap.terminal["9F37"], tag_82=tap.aip,
            tag_9f36=tap.atc.to_bytes(2, "big"), tag_9f10=tap.iad,
        )
    return hmac.compare_digest(expected, tap.arqc)


def luhn_complete(digits: str) -> str:
    """Append the Luhn check digit (token PANs look like card numbers to terminals)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return digits + str((10 - total % 10) % 10)
