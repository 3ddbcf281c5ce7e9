"""Card side: pyemv called right (published vectors), answers to each APDU, and ARQCs that an
issuer verifies from the IMK alone.

The issuer check here is written out independently of ``hardware.nfc.card``: it goes through
``pyemv.cvn.VisaCVN18`` built from the IMK (option B ICC MK derivation inside pyemv), exactly
as the gateway will.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Iterator

import pyemv
import pytest
from cryptography.utils import CryptographyDeprecationWarning

from hardware.nfc import apdu, card, emv, tlv
from tests.emv_issuer import expected_arqc
from hardware.nfc.card import WALLET_AID, WalletCard, WalletProvisioning
from hardware.nfc.emv import Tag, TerminalData
from hardware.nfc.errors import CardError

IMK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
PAN = "99012345678901234"  # 17 digits: option B really hashes (SHA-1) instead of falling back to A
PSN = 45


@pytest.fixture(autouse=True)
def _quiet_pyemv_in_tests() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
        yield


def _provisioning() -> WalletProvisioning:
    return WalletProvisioning(PAN, PSN, pyemv.kd.derive_icc_mk_b(IMK, PAN, f"{PSN:02d}"))


def _terminal(amount_minor: int = 4_250, un: bytes = bytes.fromhex("0BADF00D")) -> TerminalData:
    return TerminalData(amount_minor, 978, 250, datetime.date(2025, 11, 23), un)


def test_pyemv_published_icc_master_key_vector() -> None:
    assert pyemv.kd.derive_icc_mk_a(IMK, PAN, "45").hex().upper() == "67F8292358083E5EA7AB7FDA58D53B6B"


def test_arqc_matches_pyemv_published_cvn18_vector() -> None:
    # pyemv.cvn docstring: IMK AA.., PAN 1234567890123456, PSN 00, ATC 0FFF -> 769577B5ABE9FE62.
    icc_mk = pyemv.kd.derive_icc_mk_b(bytes.fromhex("AA" * 16), "1234567890123456", "00")
    values: dict[int, bytes] = {
        Tag.AMOUNT_AUTHORISED: bytes.fromhex("000000009999"),
        Tag.AMOUNT_OTHER: bytes.fromhex("000000000000"),
        Tag.TERMINAL_COUNTRY: bytes.fromhex("0840"),
        Tag.TVR: bytes.fromhex("8000048000"),
        Tag.TRANSACTION_CURRENCY: bytes.fromhex("0840"),
        Tag.TRANSACTION_DATE: bytes.fromhex("991231"),
        Tag.TRANSACTION_TYPE: bytes.fromhex("01"),
        Tag.UNPREDICTABLE_NUMBER: bytes.fromhex("52BF4585"),
    }
    arqc = card.arqc_cvn18(icc_mk, 0x0FFF, values, bytes.fromhex("1800"), bytes.fromhex("06011203A0B800"))
    assert arqc.hex().upper() == "769577B5ABE9FE62"


def test_card_does_not_leak_pyemv_warnings() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        card.arqc_cvn18(bytes(16), 1, _terminal().tag_values(), card.AIP_WALLET, card.visa_iad(1))
    assert not [w for w in caught if issubclass(w.category, CryptographyDeprecationWarning)]


def test_fast_path_arqc_verifies_from_the_imk_and_atc_increments() -> None:
    wallet = WalletCard(_provisioning(), atc=41)
    taps = []
    for un in (bytes.fromhex("00000001"), bytes.fromhex("00000002")):
        wallet.reset()
        taps.append(emv.run_fast_path(wallet.handle_apdu, _terminal(un=un), [WALLET_AID]))
    assert [tap.atc for tap in taps] == [42, 43]
    assert wallet.atc == 43
    for tap in taps:
        assert tap.token_pan == PAN and tap.psn == PSN
        assert tap.iad == bytes.fromhex("06011203A00000")
        assert tap.arqc == expected_arqc(IMK, tap)
    assert taps[0].arqc != taps[1].arqc


def test_arqc_binds_the_amount() -> None:
    wallet = WalletCard(_provisioning())
    tap = emv.run_fast_path(wallet.handle_apdu, _terminal(amount_minor=4_250), [WALLET_AID])
    forged = emv.TapResult(
        **{
            **{name: getattr(tap, name) for name in tap.__dataclass_fields__},
            "pdol_values": tuple(
                (tag, bytes.fromhex("000000000001") if tag == Tag.AMOUNT_AUTHORISED else value)
                for tag, value in tap.pdol_values
            ),
        }
    )
    assert expected_arqc(IMK, forged) != tap.arqc


def test_ppse_and_application_fci() -> None:
    wallet = WalletCard(_provisioning())
    data, sw = apdu.split_response(wallet.handle_apdu(emv.select_apdu(emv.PPSE_NAME)))
    assert sw == apdu.SW_OK
    (entry,) = emv.parse_ppse_fci(data)
    assert (entry.aid, entry.label, entry.priority) == (WALLET_AID, "WALLET", 1)
    data, sw = apdu.split_response(wallet.handle_apdu(emv.select_apdu(WALLET_AID)))
    assert sw == apdu.SW_OK
    assert emv.parse_application_fci(data, WALLET_AID).pdol == card.CARD_PDOL


def _sw(wallet: WalletCard, command: bytes) -> int:
    return apdu.split_response(wallet.handle_apdu(command))[1]


def _gpo(terminal: TerminalData | None = None) -> bytes:
    return emv.build_gpo(card.CARD_PDOL, terminal or _terminal()).apdu


def test_status_words_for_bad_commands() -> None:
    wallet = WalletCard(_provisioning())
    assert _sw(wallet, _gpo()) == apdu.SW_CONDITIONS_NOT_SATISFIED  # nothing selected
    assert _sw(wallet, emv.select_apdu(bytes.fromhex("A0000000031010"))) == apdu.SW_FILE_NOT_FOUND
    assert _sw(wallet, bytes.fromhex("00B2010C00")) == apdu.SW_INS_NOT_SUPPORTED
    assert _sw(wallet, bytes.fromhex("80A404000E") + emv.PPSE_NAME) == apdu.SW_CLA_NOT_SUPPORTED
    assert _sw(wallet, bytes.fromhex("00A4040C08") + WALLET_AID) == apdu.SW_WRONG_P1P2
    assert _sw(wallet, bytes.fromhex("00A4")) == apdu.SW_WRONG_LENGTH
    assert _sw(wallet, bytes.fromhex("00A40400FF00")) == apdu.SW_WRONG_LENGTH  # Lc says more than sent
    assert _sw(wallet, emv.select_apdu(WALLET_AID)) == apdu.SW_OK
    assert _sw(wallet, emv.build_gpo((), _terminal()).apdu) == apdu.SW_WRONG_LENGTH  # PDOL data missing
    assert _sw(wallet, apdu.build_command(0x80, 0xA8, 0, 0, tlv.encode(0x84, b""), le=256)) == apdu.SW_WRONG_DATA
    assert wallet.atc == 0  # refused GPOs do not use up the counter
    assert _sw(wallet, _gpo()) == apdu.SW_OK
    assert _sw(wallet, _gpo()) == apdu.SW_CONDITIONS_NOT_SATISFIED  # one GPO per activation
    assert wallet.atc == 1


def test_atc_never_wraps() -> None:
    wallet = WalletCard(_provisioning(), atc=card.ATC_MAX - 1)
    assert emv.run_fast_path(wallet.handle_apdu, _terminal(), [WALLET_AID]).atc == card.ATC_MAX
    wallet.reset()
    with pytest.raises(CardError) as raised:
        emv.run_fast_path(wallet.handle_apdu, _terminal(), [WALLET_AID])
    assert raised.value.sw == apdu.SW_CONDITIONS_NOT_SATISFIED


def test_provisioning_never_shows_the_key_or_pan() -> None:
    provisioning = _provisioning()
    for text in (repr(provisioning), str(provisioning), repr(WalletCard(provisioning))):
        assert provisioning.icc_mk_ac.hex() not in text.lower() and PAN not in text
        assert "1234" in text


@pytest.mark.parametrize(
    "changes",
    [
        {"token_pan": "1234"},
        {"psn": 100},
        {"icc_mk_ac": bytes(8)},
        {"expiry_yymm": "3013"},
        {"derivation_key_index": 256},
    ],
)
def test_provisioning_is_checked(changes: dict[str, object]) -> None:
    fields: dict[str, object] = {"token_pan": PAN, "psn": PSN, "icc_mk_ac": bytes(16)}
    with pytest.raises(ValueError):
        WalletProvisioning(**{**fields, **changes})  # type: ignore[arg-type]


def test_track2_is_f_padded_bcd() -> None:
    assert _provisioning().track2().hex().upper() == PAN + "D3012201" + "F"
