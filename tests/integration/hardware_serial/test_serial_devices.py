"""Scanner, customer display and receipt printer drivers against their simulators over ptys,
plus the transport's open/reopen/disconnect behaviour on real ptys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from hardware.serial.display import CustomerDisplay
from hardware.serial.errors import SerialDisconnectedError, SerialOpenError, SerialTimeoutError
from hardware.serial.printer import Receipt, ReceiptItem, ReceiptPrinter
from hardware.serial.scanner import BarcodeScanner
from hardware.serial.transport import SerialLink, SerialSettings, open_serial, reopen_serial
from hardware.sim.display_sim import DisplaySimulator
from hardware.sim.printer_sim import PrinterSimulator
from hardware.sim.pty import PtyPort, RawPty
from hardware.sim.scanner_sim import ScannerSimulator


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait({task}, timeout=1.0)


@pytest.fixture
async def display_sim(far_end: PtyPort) -> AsyncIterator[DisplaySimulator]:
    simulator = DisplaySimulator(far_end)
    task = asyncio.create_task(simulator.run())
    yield simulator
    await _stop(task)


@pytest.fixture
async def printer_sim(far_end: PtyPort) -> AsyncIterator[PrinterSimulator]:
    simulator = PrinterSimulator(far_end)
    task = asyncio.create_task(simulator.run())
    yield simulator
    await _stop(task)


# -- scanner ---------------------------------------------------------------------------------


async def test_scanner_reads_scans(link: SerialLink, far_end: PtyPort) -> None:
    scanner = BarcodeScanner(link)
    simulator = ScannerSimulator(far_end)
    await simulator.scan("4006381333931")
    await simulator.scan("https://pay.example/q/\u00e9t\u00e9")
    assert await scanner.read_line(timeout_s=1.0) == "4006381333931"
    assert await scanner.read_line(timeout_s=1.0) == "https://pay.example/q/\u00e9t\u00e9"


async def test_scanner_crlf_and_overlong_lines(link: SerialLink, far_end: PtyPort) -> None:
    scanner = BarcodeScanner(link, line_length_max=16)
    simulator = ScannerSimulator(far_end, terminator=b"\r\n")
    await simulator.scan("X" * 40)
    await simulator.scan("SHORT")
    assert await scanner.read_line(timeout_s=1.0) == "SHORT"  # LF after CR trimmed, long one dropped
    assert scanner.dropped_line_count == 1


async def test_scanner_timeout_and_iterator_ends_on_unplug(link: SerialLink, far_end: PtyPort, raw_pty: RawPty) -> None:
    scanner = BarcodeScanner(link, poll_interval_s=0.05)
    with pytest.raises(SerialTimeoutError):
        await scanner.read_line(timeout_s=0.05)
    await ScannerSimulator(far_end).scan("FIRST")
    seen: list[str] = []
    with pytest.raises(SerialDisconnectedError):
        async with asyncio.timeout(2.0):
            async for line in scanner.lines():
                seen.append(line)
                raw_pty.hang_up()
    assert seen == ["FIRST"]


# -- display ---------------------------------------------------------------------------------


async def test_display_round_trip(link: SerialLink, display_sim: DisplaySimulator) -> None:
    display = CustomerDisplay(link)
    await display.initialize()
    await display.show_lines("Caf\u00e9 cr\u00e8me", "2 x 3.20")
    await display_sim.wait_for_lines("Caf\u00e9 cr\u00e8me", "2 x 3.20")
    await display.show_amount("12.50 EUR")
    await display_sim.wait_for_lines("TOTAL", "12.50 EUR".rjust(20))
    await display.clear()
    await display_sim.wait_for_lines("", "")
    assert display_sim.screen.unsupported_commands == []


# -- printer ---------------------------------------------------------------------------------


async def test_printer_round_trip_chinese_and_qr(link: SerialLink, printer_sim: PrinterSimulator) -> None:
    receipt = Receipt(
        title="\u6d4b\u8bd5\u5546\u5e97",
        items=(ReceiptItem("\u5496\u5561", "\uffe512.50"),),
        total=ReceiptItem("\u5408\u8ba1", "\uffe512.50"),
        qr_payload="https://pay.example/r/8f14e45f",
        footer_lines=("\u8c22\u8c22",),
    )
    await ReceiptPrinter(link, line_width_columns=32).print_receipt(receipt)
    printed = await printer_sim.next_receipt(timeout_s=2.0)
    assert printed.lines[0] == "\u6d4b\u8bd5\u5546\u5e97"
    assert printed.lines[1] == "\u5496\u5561" + " " * 21 + "\uffe512.50"  # 4 + 21 + 7 columns = 32
    assert printed.lines[-1] == "\u8c22\u8c22"
    assert printed.qr_payloads == ("https://pay.example/r/8f14e45f",)
    assert printer_sim.interpreter.unknown_commands == []


# -- transport -------------------------------------------------------------------------------


async def test_open_missing_port_is_typed() -> None:
    with pytest.raises(SerialOpenError):
        await open_serial(SerialSettings.usb_cdc("/dev/does-not-exist"))


async def test_reopen_gives_up_after_bounded_attempts() -> None:
    with pytest.raises(SerialOpenError):
        await reopen_serial(SerialSettings.usb_cdc("/dev/does-not-exist"), attempt_count_max=2, backoff_s=0.01)


async def test_write_after_hang_up_is_a_disconnect(link: SerialLink, raw_pty: RawPty) -> None:
    raw_pty.hang_up()
    with pytest.raises(SerialDisconnectedError):
        await link.read_some(timeout_s=1.0)
    with pytest.raises(SerialDisconnectedError):
        await link.write(b"x", timeout_s=1.0)


async def test_reopen_after_close_reads_again(raw_pty: RawPty, far_end: PtyPort) -> None:
    first = await open_serial(SerialSettings.usb_cdc(raw_pty.slave_path))
    second = await reopen_serial(first, attempt_count_max=2, backoff_s=0.01)
    try:
        assert first.is_closing
        await far_end.write(b"again", timeout_s=1.0)
        assert await second.read_some(timeout_s=1.0) == b"again"
    finally:
        await second.close()


async def test_settings_refused_by_the_driver_are_typed_and_leak_nothing(raw_pty: RawPty) -> None:
    # Where the kernel's ptys refuse parity, the refusal comes from the transport's reconfigure
    # step, after pyserial opened the port: the port must still be closed (no_fd_leak checks).
    try:
        link = await open_serial(SerialSettings.legacy_rs232(raw_pty.slave_path))
    except SerialOpenError:
        return
    await link.close()
    pytest.skip("this kernel's ptys accept parity: nothing to refuse")
