"""Pure codecs of the line devices: scanner line framing, DM-D display bytes, ESC/POS receipts.

The display and printer bytes are checked by interpreting them with the simulators' pure
interpreters, and by the raw command bytes the real devices expect.
"""

from __future__ import annotations

import pytest

from hardware.serial.display import encode_clear, encode_initialize, encode_lines, layout_amount
from hardware.serial.printer import Receipt, ReceiptItem, build_receipt_bytes, display_width
from hardware.serial.scanner import LineSplitter
from hardware.serial.transport import SerialSettings
from hardware.sim.display_sim import DisplayScreen
from hardware.sim.printer_sim import EscPosInterpreter, PrintedReceipt


# -- scanner ---------------------------------------------------------------------------------


def test_splitter_cr_and_split_reads() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"4006381333931\r97") == [b"4006381333931"]
    assert splitter.feed(b"8020137962\r") == [b"978020137962"]


def test_splitter_multibyte_terminator_split_across_reads() -> None:
    splitter = LineSplitter(terminator=b"\r\n", line_length_max=4)
    assert splitter.feed(b"ABCD\r") == []
    assert splitter.feed(b"\nEF\r\n") == [b"ABCD", b"EF"]
    assert splitter.dropped_line_count == 0


def test_splitter_drops_overlong_line_whole_and_resumes() -> None:
    splitter = LineSplitter(line_length_max=8)
    assert splitter.feed(b"0123456789") == []
    assert splitter.feed(b"ABCDEFGHIJ") == []
    assert splitter.feed(b"KL\rOK\r") == [b"OK"]
    assert splitter.dropped_line_count == 1
    assert splitter.feed(b"123456789\rFINE\r") == [b"FINE"]
    assert splitter.dropped_line_count == 2


def test_splitter_refuses_empty_terminator() -> None:
    with pytest.raises(ValueError):
        LineSplitter(terminator=b"")


# -- display ---------------------------------------------------------------------------------


def _screen(data: bytes) -> DisplayScreen:
    screen = DisplayScreen()
    for index in range(len(data)):  # one byte at a time: commands split across reads
        screen.feed(data[index : index + 1])
    return screen


def test_display_initialize_bytes() -> None:
    # ESC @, US MD1, US C 0, ESC t 0, CLR
    assert encode_initialize() == b"\x1b@\x1f\x01\x1fC\x00\x1bt\x00\x0c"
    assert encode_clear() == b"\x0c"


def test_display_lines_round_trip() -> None:
    data = encode_initialize() + encode_lines("Caf\u00e9 au lait", "  3.20 EUR")
    assert data.count(b"\x1f$") == 2
    screen = _screen(data)
    assert screen.lines == ("Caf\u00e9 au lait".ljust(20), "  3.20 EUR".ljust(20))
    assert screen.unsupported_commands == []


def test_display_amount_layout() -> None:
    screen = _screen(encode_lines(*layout_amount("12.50 EUR", "TOTAL")))
    assert screen.lines == ("TOTAL".ljust(20), "12.50 EUR".rjust(20))


def test_display_text_cannot_inject_commands_and_is_cut_to_20_columns() -> None:
    data = encode_lines("A\x0cB\x1b@C" + "x" * 30, "\u4e2d\u6587")
    assert b"\x0c" not in data and b"\x1b@" not in data
    screen = _screen(encode_lines("TOP", "BOTTOM") + data)
    assert screen.lines == ("A B @C" + "x" * 14, "??".ljust(20))


def test_display_clear_blanks_screen() -> None:
    screen = _screen(encode_lines("ONE", "TWO") + encode_clear())
    assert screen.lines == (" " * 20, " " * 20)


# -- printer ---------------------------------------------------------------------------------

RECEIPT = Receipt(
    title="\u6d4b\u8bd5\u5546\u5e97",  # 测试商店
    items=(
        ReceiptItem("\u5496\u5561 Coffee", "\uffe512.50"),  # 咖啡 Coffee, ￥12.50
        ReceiptItem("Croissant", "3.20"),
    ),
    total=ReceiptItem("\u5408\u8ba1 Total", "\uffe515.70"),  # 合计 Total
    qr_payload="https://pay.example/r/8f14e45f",
    footer_lines=("\u8c22\u8c22\u60e0\u987e Thank you",),  # 谢谢惠顾
)


def _print(data: bytes) -> PrintedReceipt:
    interpreter = EscPosInterpreter()
    receipts = [receipt for index in range(len(data)) for receipt in interpreter.feed(data[index : index + 1])]
    assert interpreter.unknown_commands == []
    assert len(receipts) == 1
    return receipts[0]


def test_receipt_bytes_use_chinese_mode_gb18030_and_native_qr() -> None:
    data = build_receipt_bytes(RECEIPT, line_width_columns=32)
    assert data.startswith(b"\x1b@\x1c&")  # ESC @, FS & (Chinese character mode)
    assert "\u6d4b\u8bd5\u5546\u5e97".encode("gb18030") in data
    assert b"\x1d(k" in data  # GS ( k
    assert b"1P0https://pay.example/r/8f14e45f" in data  # store function 80, m = 0, payload
    assert data.endswith(b"\x1dV\x00")  # GS V 0: full cut
    assert build_receipt_bytes(RECEIPT, line_width_columns=32) == data


def test_receipt_round_trip_through_printer_interpreter() -> None:
    printed = _print(build_receipt_bytes(RECEIPT, line_width_columns=32))
    assert printed.qr_payloads == ("https://pay.example/r/8f14e45f",)
    assert printed.lines[0] == "\u6d4b\u8bd5\u5546\u5e97"
    coffee = printed.lines[1]
    assert coffee.startswith("\u5496\u5561 Coffee") and coffee.endswith("\uffe512.50")
    assert all(display_width(line) == 32 for line in printed.lines[1:5])
    assert printed.lines[4].startswith("\u5408\u8ba1 Total")
    assert printed.lines[-1] == "\u8c22\u8c22\u60e0\u987e Thank you"


def test_receipt_text_cannot_inject_commands() -> None:
    receipt = Receipt(title="A\x1dV\x00B", items=(), total=ReceiptItem("T\n", "1"))
    printed = _print(build_receipt_bytes(receipt))
    assert printed.lines[0] == "A V B"


def test_receipt_without_qr() -> None:
    printed = _print(build_receipt_bytes(Receipt(title="Shop", items=(), total=ReceiptItem("Total", "0.00"))))
    assert printed.qr_payloads == ()


def test_display_width_counts_wide_characters_twice() -> None:
    assert display_width("ab") == 2
    assert display_width("\u5408\u8ba1") == 4
    assert display_width("\uffe5") == 2


# -- settings --------------------------------------------------------------------------------


def test_settings_presets_and_line_time() -> None:
    legacy = SerialSettings.legacy_rs232("/dev/ttyS0")
    assert (legacy.baudrate, legacy.bytesize, legacy.parity, legacy.stopbits) == (9600, 7, "E", 1)
    usb = SerialSettings.usb_cdc("/dev/ttyACM0")
    assert (usb.bytesize, usb.parity, usb.stopbits) == (8, "N", 1)
    assert legacy.transmit_time_s(960) == pytest.approx(1.0)  # 10 bits per character
    assert legacy.write_timeout_s(960, margin_s=0.5) == pytest.approx(2.5)


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        SerialSettings(url="/dev/null", baudrate=0)
