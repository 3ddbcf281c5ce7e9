"""Terminal side of the fast path: APDU bytes, FCI/PDOL parsing, GPO build and parse, masking.

Pure: the card answers are literal bytes or come from scripted ``transceive`` callables.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import pytest

from hardware.nfc import apdu, emv, tlv
from hardware.nfc.emv import Tag, TapResult, TerminalData
from hardware.nfc.errors import CardError

VISA_AID = bytes.fromhex("A0000000031010")
WALLET_AID = bytes.fromhex("F057414C4C455401")
PAN = "4761739001010119"

TERMINAL = TerminalData(
    amount_minor=12_345,
    currency_numeric=978,
    country_numeric=250,
    transaction_date=datetime.date(2025, 3, 9),
    unpredictable_number=bytes.fromhex("CAFEBABE"),
)


def _directory(*entries: tuple[bytes, int | None]) -> bytes:
    encoded = []
    for aid, priority in entries:
        parts = [tlv.encode(Tag.AID, aid), tlv.encode(Tag.APPLICATION_LABEL, b"APP")]
        if priority is not None:
            parts.append(tlv.encode(Tag.PRIORITY_INDICATOR, bytes([priority])))
        encoded.append(tlv.encode_constructed(Tag.DIRECTORY_ENTRY, *parts))
    return tlv.encode_constructed(
        Tag.FCI_TEMPLATE,
        tlv.encode(Tag.DF_NAME, emv.PPSE_NAME),
        tlv.encode_constructed(Tag.FCI_PROPRIETARY, tlv.encode_constructed(Tag.FCI_ISSUER_DISCRETIONARY, *encoded)),
    )


def _gpo_answer(*, cid: int = 0x80, extra: Sequence[bytes] = (), drop: int | None = None) -> bytes:
    objects = {
        Tag.TRACK2_EQUIVALENT: bytes.fromhex(PAN + "D2812201" + "000F"),
        Tag.PAN_SEQUENCE_NUMBER: b"\x01",
        Tag.AIP: bytes.fromhex("2000"),
        Tag.IAD: bytes.fromhex("06011203A00000"),
        Tag.APPLICATION_CRYPTOGRAM: bytes.fromhex("1122334455667788"),
        Tag.CID: bytes([cid]),
        Tag.ATC: bytes.fromhex("002A"),
    }
    return tlv.encode_constructed(
        Tag.RESPONSE_FORMAT_2, *(tlv.encode(tag, value) for tag, value in objects.items() if tag != drop), *extra
    )


def test_select_ppse_bytes() -> None:
    assert emv.select_apdu(emv.PPSE_NAME) == bytes.fromhex("00A404000E325041592E5359532E444446303100")


def test_terminal_tag_values_are_emv_formats() -> None:
    values = TERMINAL.tag_values()
    assert values[Tag.AMOUNT_AUTHORISED] == bytes.fromhex("000000012345")
    assert values[Tag.AMOUNT_OTHER] == bytes(6)
    assert values[Tag.TERMINAL_COUNTRY] == bytes.fromhex("0250")
    assert values[Tag.TRANSACTION_CURRENCY] == bytes.fromhex("0978")
    assert values[Tag.TRANSACTION_DATE] == bytes.fromhex("250309")
    assert values[Tag.TRANSACTION_TYPE] == b"\x00"
    assert values[Tag.UNPREDICTABLE_NUMBER] == bytes.fromhex("CAFEBABE")
    assert values[Tag.TVR] == bytes.fromhex("8000000000")
    assert values[Tag.TTQ] == bytes.fromhex("26804000")


@pytest.mark.parametrize(
    "changes",
    [
        {"amount_minor": 0},
        {"amount_minor": 10**12},
        {"currency_numeric": 1000},
        {"country_numeric": 0},
        {"unpredictable_number": b"\x00" * 3},
        {"transaction_type": 100},
    ],
)
def test_terminal_data_is_checked(changes: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "amount_minor": 1,
        "currency_numeric": 978,
        "country_numeric": 250,
        "transaction_date": datetime.date(2025, 1, 1),
        "unpredictable_number": bytes(4),
    }
    with pytest.raises(ValueError):
        TerminalData(**{**fields, **changes})  # type: ignore[arg-type]


def test_directory_choice_follows_priority_then_card_order() -> None:
    other = bytes.fromhex("A0000000041010")
    entries = emv.parse_ppse_fci(_directory((other, 1), (VISA_AID, None), (WALLET_AID, 2), (VISA_AID + b"\x01", 3)))
    assert [entry.aid for entry in entries] == [other, VISA_AID, WALLET_AID, VISA_AID + b"\x01"]
    assert emv.choose_application(entries, [VISA_AID, WALLET_AID]).aid == WALLET_AID
    assert emv.choose_application(entries, [VISA_AID]).aid == VISA_AID  # exact match only


def test_priority_byte_high_bit_is_ignored() -> None:
    entries = emv.parse_ppse_fci(_directory((VISA_AID, 0x82), (WALLET_AID, 0x01)))
    assert [entry.priority for entry in entries] == [2, 1]


def test_no_accepted_application() -> None:
    entries = emv.parse_ppse_fci(_directory((VISA_AID, 1)))
    with pytest.raises(CardError) as raised:
        emv.choose_application(entries, [WALLET_AID])
    assert raised.value.reason == "no_accepted_application"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        tlv.encode(Tag.FCI_TEMPLATE, b""),
        _directory((b"\xa0\x00", 1)),  # AID too short
        bytes.fromhex("6F05A503BF0C"),  # truncated
    ],
)
def test_bad_ppse_fci(data: bytes) -> None:
    with pytest.raises(CardError) as raised:
        emv.parse_ppse_fci(data)
    assert raised.value.reason == "malformed"


def test_application_fci_and_gpo_bytes() -> None:
    pdol = bytes.fromhex("9F66049F02069F03069F1A0295055F2A029A039C019F3704")
    fci = tlv.encode_constructed(
        Tag.FCI_TEMPLATE,
        tlv.encode(Tag.DF_NAME, VISA_AID),
        tlv.encode_constructed(
            Tag.FCI_PROPRIETARY, tlv.encode(Tag.APPLICATION_LABEL, b"VISA"), tlv.encode(Tag.PDOL, pdol)
        ),
    )
    parsed = emv.parse_application_fci(fci, VISA_AID)
    assert parsed.label == "VISA" and len(parsed.pdol) == 9
    gpo = emv.build_gpo(parsed.pdol, TERMINAL)
    pdol_data = "2680400000000001234500000000000002508000000000097825030900CAFEBABE"
    assert gpo.apdu == bytes.fromhex("80A8000023" + "8321" + pdol_data + "00")
    assert gpo.pdol_values[1] == (Tag.AMOUNT_AUTHORISED, bytes.fromhex("000000012345"))


def test_gpo_without_pdol_sends_an_empty_template() -> None:
    assert emv.build_gpo((), TERMINAL).apdu == bytes.fromhex("80A80000028300" + "00")


def test_fci_naming_another_application_is_refused() -> None:
    fci = tlv.encode_constructed(Tag.FCI_TEMPLATE, tlv.encode(Tag.DF_NAME, WALLET_AID))
    with pytest.raises(CardError):
        emv.parse_application_fci(fci, VISA_AID)


def test_gpo_answer_becomes_a_tap_result() -> None:
    values = ((Tag.AMOUNT_AUTHORISED.value, bytes.fromhex("000000012345")),)
    result = emv.parse_gpo_response(_gpo_answer(), VISA_AID, TERMINAL, values)
    assert result.token_pan == PAN
    assert (result.expiry_yymm, result.service_code) == ("2812", "201")
    assert result.psn == 1
    assert result.aip == bytes.fromhex("2000")
    assert result.iad == bytes.fromhex("06011203A00000")
    assert result.arqc == bytes.fromhex("1122334455667788")
    assert (result.cid, result.atc) == (0x80, 42)
    assert result.terminal_value(Tag.AMOUNT_AUTHORISED) == bytes.fromhex("000000012345")
    with pytest.raises(KeyError):
        result.terminal_value(Tag.UNPREDICTABLE_NUMBER)


def test_pan_is_masked_in_repr_and_str() -> None:
    result = emv.parse_gpo_response(_gpo_answer(), VISA_AID, TERMINAL, ())
    assert result.masked_pan == "************0119"
    for text in (repr(result), str(result), f"{result}", repr(emv.parse_track2(bytes.fromhex(PAN + "D2812201")))):
        assert PAN not in text and PAN[:12] not in text
    assert "0119" in repr(result)


def test_gpo_answer_without_psn() -> None:
    result = emv.parse_gpo_response(_gpo_answer(drop=Tag.PAN_SEQUENCE_NUMBER), VISA_AID, TERMINAL, ())
    assert result.psn is None


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (tlv.encode(Tag.RESPONSE_FORMAT_1, bytes.fromhex("200008010100")), "unsupported_flow"),
        (_gpo_answer(cid=0x00), "unsupported_flow"),  # AAC: the card declined offline
        (_gpo_answer(drop=Tag.APPLICATION_CRYPTOGRAM), "malformed"),
        (_gpo_answer(drop=Tag.ATC), "malformed"),
        (tlv.encode(Tag.FCI_TEMPLATE, b""), "malformed"),
        (bytes.fromhex("7705"), "malformed"),
    ],
)
def test_bad_gpo_answers(answer: bytes, reason: str) -> None:
    with pytest.raises(CardError) as raised:
        emv.parse_gpo_response(answer, VISA_AID, TERMINAL, ())
    assert raised.value.reason == reason


@pytest.mark.parametrize(
    "track2_hex",
    ["4761739001010119", "47617390D2812201", "4761739001010119D28122", "4761739001010119D28A2201"],
)
def test_bad_track2(track2_hex: str) -> None:
    with pytest.raises(CardError):
        emv.parse_track2(bytes.fromhex(track2_hex))


def test_mask_pan() -> None:
    assert emv.mask_pan("99012345678901234") == "*************1234"


class ScriptedCard:
    """Answers each command with the next scripted response and records the commands."""

    def __init__(self, *responses: bytes) -> None:
        self.responses = list(responses)
        self.commands: list[bytes] = []

    def __call__(self, command: bytes) -> bytes:
        self.commands.append(command)
        return self.responses.pop(0)


def test_command_follows_61xx_with_get_response() -> None:
    card = ScriptedCard(apdu.respond(b"\x01\x02", 0x6103), apdu.respond(b"\x03\x04\x05"))
    assert emv.command(card, emv.select_apdu(VISA_AID)) == b"\x01\x02\x03\x04\x05"
    assert card.commands[1] == bytes.fromhex("00C0000003")


def test_get_response_rounds_are_bounded() -> None:
    card = ScriptedCard(*[apdu.respond(b"\x00", 0x6101)] * (emv.GET_RESPONSE_COUNT_MAX + 2))
    with pytest.raises(CardError):
        emv.command(card, emv.select_apdu(VISA_AID))


@pytest.mark.parametrize(("response", "reason"), [(bytes.fromhex("6A82"), "status_word"), (b"\x90", "malformed")])
def test_command_errors(response: bytes, reason: str) -> None:
    with pytest.raises(CardError) as raised:
        emv.command(ScriptedCard(response), emv.select_apdu(VISA_AID))
    assert raised.value.reason == reason
    if reason == "status_word":
        assert raised.value.sw == 0x6A82


def test_run_fast_path_against_a_scripted_card() -> None:
    app_fci = tlv.encode_constructed(
        Tag.FCI_TEMPLATE,
        tlv.encode(Tag.DF_NAME, VISA_AID),
        tlv.encode_constructed(Tag.FCI_PROPRIETARY, tlv.encode(Tag.PDOL, bytes.fromhex("9F02069F3704"))),
    )
    card = ScriptedCard(apdu.respond(_directory((VISA_AID, 1))), apdu.respond(app_fci), apdu.respond(_gpo_answer()))
    result = emv.run_fast_path(card, TERMINAL, [VISA_AID])
    assert isinstance(result, TapResult)
    assert card.commands[1] == emv.select_apdu(VISA_AID)
    assert card.commands[2] == bytes.fromhex("80A800000C830A000000012345CAFEBABE00")
    assert result.pdol_values == (
        (Tag.AMOUNT_AUTHORISED, bytes.fromhex("000000012345")),
        (Tag.UNPREDICTABLE_NUMBER, bytes.fromhex("CAFEBABE")),
    )
