"""Amounts shown with the ISO 4217 exponent of the sale currency, on the real display and printer
protocols (pos_agent's ports on ptys, read by the simulators); a currency_numeric that names
another currency is refused at start."""

from __future__ import annotations

import asyncio
import datetime
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hardware.sim.display_sim import DisplaySimulator
from hardware.sim.printer_sim import PrinterSimulator
from hardware.sim.pty import PtyPort, RawPty, open_raw_pty
from pos_agent import settings as settings_mod
from pos_agent.checkout import CheckoutDevices, CheckoutRunner, Method
from pos_agent.credentials import Credentials
from pos_agent.currency import format_amount
from pos_agent.devices import DisplayPort, PrinterPort
from pos_agent.errors import ConfigError
from pos_agent.gateway_client import GatewayClient
from pos_agent.journal import AsyncJournal
from pos_agent.settings import GatewaySettings, PrinterSettings, SaleSettings, SerialPortSettings, Settings
from tests.agent.test_checkout_driver import FakeCodes, FakeReader
from tests.agent.test_checkout_states import make_tap


@pytest.mark.parametrize(("amount_minor", "code", "text"), [
    (2_600, "JPY", "JPY 2600"),
    (2_600, "CNY", "CNY 26.00"),
    (2_600, "KWD", "KWD 2.600"),
    (5, "KWD", "KWD 0.005"),
    (-1_250, "CNY", "CNY -12.50"),
])
def test_format_amount_uses_the_iso_exponent(amount_minor: int, code: str, text: str) -> None:
    assert format_amount(amount_minor, code) == text


@pytest.mark.parametrize(("sale", "message"), [
    ("currency = 'JPY'\ncurrency_numeric = 156", "sale.currency_numeric 156 does not match sale.currency JPY"),
    ("currency = 'CNY'\ncurrency_numeric = 392", "sale.currency_numeric 392 does not match sale.currency CNY"),
    ("currency = 'XAU'\ncurrency_numeric = 959", "sale.currency 'XAU' is not an ISO 4217 currency"),
    ("currency = 'ZZZ'\ncurrency_numeric = 1", "sale.currency 'ZZZ' is not an ISO 4217 currency"),
])
def test_a_currency_numeric_of_another_currency_is_refused(tmp_path: Path, sale: str, message: str) -> None:
    (tmp_path / "a.toml").write_text(f"[sale]\n{sale}\n")
    with pytest.raises(ConfigError) as refused:
        settings_mod.load(tmp_path / "a.toml")
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


def test_matching_currencies_load(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("[sale]\ncurrency = 'KWD'\ncurrency_numeric = 414\n")
    assert settings_mod.load(tmp_path / "a.toml").sale.currency == "KWD"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def ptys() -> AsyncIterator[tuple[RawPty, RawPty, DisplaySimulator, PrinterSimulator]]:
    with open_raw_pty() as display_pty, open_raw_pty() as printer_pty:
        display = DisplaySimulator(PtyPort(display_pty.master_fd))
        printer = PrinterSimulator(PtyPort(printer_pty.master_fd))
        tasks = [asyncio.create_task(display.run()), asyncio.create_task(printer.run())]
        yield display_pty, printer_pty, display, printer
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize(("code", "numeric", "shown"), [("JPY", 392, "JPY 2600"), ("KWD", 414, "KWD 2.600")])
async def test_display_and_receipt_show_the_currency_exponent(
    tmp_path: Path, ptys: tuple[RawPty, RawPty, DisplaySimulator, PrinterSimulator], code: str, numeric: int,
    shown: str,
) -> None:
    display_pty, printer_pty, display, printer = ptys
    display_port = SerialPortSettings(url=display_pty.slave_path)
    printer_port = PrinterSettings(url=printer_pty.slave_path)
    settings = Settings(
        gateway=GatewaySettings(url=f"http://127.0.0.1:{closed_port()}", backoff_base_s=0.01, backoff_max_s=0.02),
        sale=SaleSettings(currency=code, currency_numeric=numeric, sale_timeout_s=5.0, cleanup_timeout_s=2.0),
        devices=settings_mod.DeviceSettings(display=display_port, printer=printer_port),
    )
    journal = AsyncJournal.open(tmp_path / "journal.sqlite3")
    reader = FakeReader()
    display_device, printer_device = DisplayPort(display_port), PrinterPort(printer_port)
    try:
        async with GatewayClient(settings.gateway, credentials=Credentials("x", "dev", "ds", "ter", "sto", "mer")) as client:
            runner = CheckoutRunner(
                settings, client, journal,
                CheckoutDevices(reader=reader, codes=FakeCodes(), display=display_device, printer=printer_device),
                now=lambda: datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC))
            selling = asyncio.create_task(runner.sell(2_600))
            await display.wait_for_lines("TOTAL", shown.rjust(20), timeout_s=5)
            reader.taps.put_nowait(make_tap())  # the gateway is unreachable: approved offline
            outcome = await selling
        assert outcome.approved and outcome.method is Method.TAP_OFFLINE
        await display.wait_for_lines("APPROVED", shown.rjust(20), timeout_s=5)
        receipt = "\n".join((await printer.next_receipt(timeout_s=5)).lines)
        assert shown in receipt and "26.00" not in receipt
    finally:
        await display_device.close()
        await printer_device.close()
        await journal.close()
