"""Concert codec: LRC, framing, resynchronisation, request parsing, answer building.

Pure: no ports. The register libraries' own encoders and decoders (pyTeliumManager,
pypostelium) are used as independent references for the bytes.
"""

from __future__ import annotations

import json

import pytest
import serial
from pypostelium import Driver  # type: ignore[import-untyped]
from telium import TeliumAsk, TeliumResponse  # type: ignore[import-untyped]

from hardware.serial.concert import (
    ANSWER_FRAME_LENGTH_FULL,
    ANSWER_FRAME_LENGTH_SHORT,
    AnswerFormat,
    AuthorizationFlag,
    ConcertRequest,
    ConcertResult,
    Control,
    ControlByte,
    DelayFlag,
    Frame,
    FrameDecoder,
    ResultStatus,
    TransactionType,
    build_answer,
    compute_lrc,
    encode_frame,
    parse_request,
)
from hardware.serial.errors import (
    ConcertAnswerError,
    ConcertFrameTooLongError,
    ConcertLrcError,
    ConcertRequestError,
)

E_PLUS_REQUEST = b"01000012500" + b"10978" + b" " * 10 + b"A010B010"
# pos 01 | amount 00001250 | answer flag 0 | mode 1 | type 0 | currency 978 | private | delay | auth


def _request(message: bytes = E_PLUS_REQUEST) -> ConcertRequest:
    return parse_request(message)


def test_lrc_is_xor_of_message_and_etx() -> None:
    assert compute_lrc(b"") == 0
    assert compute_lrc(b"A\x03") == 0x41 ^ 0x03
    assert compute_lrc(b"\xff\x0f") == 0xF0


def test_encode_frame_layout() -> None:
    frame = encode_frame(b"AB")
    assert frame == b"\x02AB\x03" + bytes([0x41 ^ 0x42 ^ 0x03])


@pytest.mark.parametrize("message", [b"A\x03B", b"\x02", b"caf\xe9"])
def test_encode_frame_refuses_non_printable(message: bytes) -> None:
    with pytest.raises(ValueError):
        encode_frame(message)


def test_decoder_frame_and_controls() -> None:
    decoder = FrameDecoder()
    items = decoder.feed(b"\x05" + encode_frame(b"HELLO") + b"\x04")
    assert items == [Control(ControlByte.ENQ), Frame(b"HELLO"), Control(ControlByte.EOT)]
    assert decoder.skipped_byte_count == 0


def test_decoder_byte_by_byte() -> None:
    decoder = FrameDecoder()
    items = [item for byte in encode_frame(E_PLUS_REQUEST) for item in decoder.feed(bytes([byte]))]
    assert items == [Frame(E_PLUS_REQUEST)]


def test_decoder_skips_garbage_before_stx() -> None:
    decoder = FrameDecoder()
    items = decoder.feed(b"\xff\x00zz\x7f" + encode_frame(b"OK"))
    assert items == [Frame(b"OK")]
    assert decoder.skipped_byte_count == 5


def test_decoder_resyncs_on_stx_inside_frame() -> None:
    decoder = FrameDecoder()
    items = decoder.feed(b"\x02HALF-FRA" + encode_frame(b"WHOLE"))
    assert items == [Frame(b"WHOLE")]
    assert decoder.skipped_byte_count == len(b"\x02HALF-FRA")


def test_decoder_reports_lrc_mismatch_then_recovers() -> None:
    decoder = FrameDecoder()
    bad = bytearray(encode_frame(b"DATA"))
    bad[-1] ^= 0x01
    items = decoder.feed(bytes(bad) + encode_frame(b"DATA"))
    assert isinstance(items[0], ConcertLrcError)
    assert items[0].lrc_received == items[0].lrc_expected ^ 0x01
    assert items[1:] == [Frame(b"DATA")]


def test_decoder_lrc_equal_to_a_control_value_is_still_an_lrc() -> None:
    # Message whose LRC is ENQ (0x05): the decoder must not mistake it for a handshake byte.
    message = bytes([0x41, 0x41 ^ 0x03 ^ 0x05])
    frame = encode_frame(message)
    assert frame[-1] == ControlByte.ENQ
    assert FrameDecoder().feed(frame) == [Frame(message)]


def test_decoder_bounds_a_frame_without_etx() -> None:
    decoder = FrameDecoder(message_length_max=8)
    items = decoder.feed(b"\x02" + b"X" * 20 + encode_frame(b"NEXT"))
    assert isinstance(items[0], ConcertFrameTooLongError)
    assert items[1:] == [Frame(b"NEXT")]


def test_parse_e_plus_request() -> None:
    request = _request()
    assert request == ConcertRequest(
        pos_number="01",
        amount_minor=1250,
        answer_format=AnswerFormat.SHORT,
        payment_mode="1",
        transaction_type=TransactionType.DEBIT,
        currency_numeric="978",
        private=" " * 10,
        delay=DelayFlag.A010,
        authorization=AuthorizationFlag.NOT_FORCED,
    )


@pytest.mark.parametrize(("flag", "expected"), [(b"A010", DelayFlag.A010), (b"A011", DelayFlag.A011)])
def test_parse_accepts_both_delay_values(flag: bytes, expected: DelayFlag) -> None:
    assert _request(E_PLUS_REQUEST[:26] + flag + b"B011").delay is expected
    assert _request(E_PLUS_REQUEST[:26] + flag + b"B011").authorization is AuthorizationFlag.FORCED


def test_parse_protocol_e_request_without_delay_and_authorisation() -> None:
    request = _request(E_PLUS_REQUEST[:26])
    assert (request.delay, request.authorization) == (None, None)
    assert request.amount_minor == 1250


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (E_PLUS_REQUEST[:30], "message"),
        (E_PLUS_REQUEST + b"X", "message"),
        (b"0X" + E_PLUS_REQUEST[2:], "pos_number"),
        (b"01000012.0" + E_PLUS_REQUEST[10:], "amount"),
        (E_PLUS_REQUEST[:10] + b"5" + E_PLUS_REQUEST[11:], "answer_flag"),
        (E_PLUS_REQUEST[:11] + b"?" + E_PLUS_REQUEST[12:], "payment_mode"),
        (E_PLUS_REQUEST[:12] + b"9" + E_PLUS_REQUEST[13:], "transaction_type"),
        (E_PLUS_REQUEST[:13] + b"EUR" + E_PLUS_REQUEST[16:], "currency_numeric"),
        (E_PLUS_REQUEST[:26] + b"A012B010", "delay"),
        (E_PLUS_REQUEST[:26] + b"A010C010", "authorization"),
        (E_PLUS_REQUEST[:16] + b"\xe9" * 10 + E_PLUS_REQUEST[26:], "message"),
    ],
)
def test_parse_rejects_bad_fields(message: bytes, field: str) -> None:
    with pytest.raises(ConcertRequestError) as caught:
        parse_request(message)
    assert caught.value.field == field


def test_parse_what_pytelium_manager_sends() -> None:
    ask = TeliumAsk.new_payment(
        12.5, payment_mode="refund", target_currency="EUR", wait_for_transaction_to_end=True,
        collect_payment_source_info=True,
    )
    items = FrameDecoder().feed(ask.encode().encode("ascii"))
    assert len(items) == 1 and isinstance(items[0], Frame)
    request = parse_request(items[0].message)
    assert request.amount_minor == 1250
    assert request.transaction_type is TransactionType.REFUND
    assert request.answer_format is AnswerFormat.FULL
    assert request.delay is DelayFlag.A010
    assert request.currency_numeric == "978"


def test_parse_what_pypostelium_sends() -> None:
    driver = Driver({"telium_terminal_device_name": "loop://"})
    driver.serial = serial.serial_for_url("loop://", timeout=0)
    try:
        data = driver.prepare_data_to_send(json.loads('{"amount": 7.99, "payment_mode": "card", "currency_iso": "EUR"}'))
        driver.send_message(data)
        wire = driver.serial.read(64)
    finally:
        driver.serial.close()
    items = FrameDecoder().feed(wire)
    assert len(items) == 1 and isinstance(items[0], Frame)
    request = parse_request(items[0].message)
    assert (request.amount_minor, request.delay, request.answer_format) == (799, DelayFlag.A011, AnswerFormat.SHORT)


def test_short_answer_is_28_bytes_framed() -> None:
    frame = encode_frame(build_answer(_request(), ConcertResult(ResultStatus.SUCCESS, private="TX42")))
    assert len(frame) == ANSWER_FRAME_LENGTH_SHORT == 28
    # pos | status | amount | payment mode | currency | private
    assert frame[1:-2] == b"01" + b"0" + b"00001250" + b"1" + b"978" + b"TX42      "


def test_full_answer_is_83_bytes_framed_with_report() -> None:
    request = _request(E_PLUS_REQUEST[:10] + b"1" + E_PLUS_REQUEST[11:])
    result = ConcertResult(ResultStatus.REJECTED, private="TX42", report="WALLET 4F2A")
    frame = encode_frame(build_answer(request, result))
    assert len(frame) == ANSWER_FRAME_LENGTH_FULL == 83
    response = TeliumResponse.decode(frame)
    assert response.transaction_result == 7 and not response.has_succeeded
    assert response.amount == 12.5
    assert response.repport == "WALLET 4F2A".ljust(55)
    assert response.private == "TX42".ljust(10)
    assert response.currency_numeric == "978"


def test_answer_amount_override_and_short_answer_drops_report() -> None:
    result = ConcertResult(ResultStatus.SUCCESS, report="ignored in short answers", amount_minor=1000)
    frame = encode_frame(build_answer(_request(), result))
    response = TeliumResponse.decode(frame)
    assert response.has_succeeded and response.amount == 10.0 and response.repport == ""


@pytest.mark.parametrize(
    "result",
    [
        ConcertResult(ResultStatus.SUCCESS, private="X" * 11),
        ConcertResult(ResultStatus.SUCCESS, private="caf\u00e9"),
        ConcertResult(ResultStatus.SUCCESS, private="A\x03"),
        ConcertResult(ResultStatus.SUCCESS, amount_minor=100_000_000),
        ConcertResult(ResultStatus.SUCCESS, amount_minor=-1),
    ],
)
def test_answer_refuses_unencodable_results(result: ConcertResult) -> None:
    with pytest.raises(ConcertAnswerError):
        build_answer(_request(), result)


def test_full_answer_refuses_long_report() -> None:
    request = _request(E_PLUS_REQUEST[:10] + b"1" + E_PLUS_REQUEST[11:])
    with pytest.raises(ConcertAnswerError):
        build_answer(request, ConcertResult(ResultStatus.SUCCESS, report="R" * 56))
