"""The issuer's side of Visa CVN 18, written independently of both the card and the gateway, so
tests can check each against it."""

from __future__ import annotations

import warnings

import pyemv
from cryptography.utils import CryptographyDeprecationWarning

from hardware.nfc.emv import Tag, TapResult


def derive_icc_mk(imk: bytes, pan: str, psn: int) -> bytes:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
        key: bytes = pyemv.kd.derive_icc_mk_b(imk, pan, f"{psn:02d}")
        return key


def expected_arqc(imk: bytes, tap: TapResult) -> bytes:
    """The ARQC the issuer expects from the IMK and what the reader reports."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
        cvn18 = pyemv.cvn.VisaCVN18(imk, imk, imk, tap.token_pan, f"{tap.psn or 0:02d}")
        arqc: bytes = cvn18.generate_ac(
            tag_9f02=tap.terminal_value(Tag.AMOUNT_AUTHORISED),
            tag_9f03=tap.terminal_value(Tag.AMOUNT_OTHER),
            tag_9f1a=tap.terminal_value(Tag.TERMINAL_COUNTRY),
            tag_95=tap.terminal_value(Tag.TVR),
            tag_5f2a=tap.terminal_value(Tag.TRANSACTION_CURRENCY),
            tag_9a=tap.terminal_value(Tag.TRANSACTION_DATE),
            tag_9c=tap.terminal_value(Tag.TRANSACTION_TYPE),
            tag_9f37=tap.terminal_value(Tag.UNPREDICTABLE_NUMBER),
            tag_82=tap.aip,
            tag_9f36=tap.atc.to_bytes(2, "big"),
            tag_9f10=tap.iad,
        )
        return arqc
