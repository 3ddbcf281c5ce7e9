"""``pos-agent doctor`` and ``status`` against simulated devices on ptys (the real display and
printer protocols, the printer answering its real-time status) and nfcpy's udp reader; the
gateway is unreachable here (its checks run against the real gateway in
tests/integration/test_agent_gateway.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hardware.serial.errors import SerialDeviceError
from hardware.serial.printer import ReceiptPrinter, parse_status
from hardware.serial.transport import SerialSettings, open_serial
from hardware.sim.display_sim import DisplaySimulator
from hardware.sim.printer_sim import PrinterSimulator
from hardware.sim.pty import PtyPort, RawPty, open_raw_pty
from pos_agent import health
from pos_agent import settings as settings_mod
from pos_agent.settings import Settings


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Bench:
    ptys: dict[str, RawPty]
    display: DisplaySimulator
    printer: PrinterSimulator
    nfc_port: int

    def toml(self, gateway_url: str, **paths: str) -> str:
        urls = {name: pty.slave_path for name, pty in self.ptys.items()} | paths
        sections = [f'[gateway]\nurl = "{gateway_url}"\nbackoff_base_s = 0.01\nbackoff_max_s = 0.02\n'
                    'connect_timeout_s = 0.5',
                    f'[devices.nfc]\npath = "udp:127.0.0.1:{self.nfc_port}"',
                    *(f'[devices.{name}]\nurl = "{url}"' for name, url in urls.items())]
        return "\n".join(sections) + "\n"

    def settings(self, tmp_path: Path, **paths: str) -> Settings:
        (tmp_path / "agent.toml").write_text(self.toml(f"http://127.0.0.1:{closed_port()}", **paths))
        return settings_mod.load(tmp_path / "agent.toml")


@contextlib.asynccontextmanager
async def simulated_devices() -> AsyncIterator[Bench]:
    """Register, scanner, display and printer on ptys (display and printer simulated), an NFC udp port."""
    ptys = {name: open_raw_pty() for name in ("register", "scanner", "display", "printer")}
    display = DisplaySimulator(PtyPort(ptys["display"].master_fd))
    printer = PrinterSimulator(PtyPort(ptys["printer"].master_fd))
    tasks = [asyncio.create_task(display.run()), asyncio.create_task(printer.run())]
    try:
        yield Bench(ptys, display, printer, free_udp_port())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pty in ptys.values():
            pty.close()


@pytest.fixture
async def bench() -> AsyncIterator[Bench]:
    async with simulated_devices() as devices:
        yield devices


def by_name(checks: list[health.Check]) -> dict[str, health.Check]:
    return {check.name.split(" /")[0].split(" udp:")[0]: check for check in checks}


async def test_doctor_makes_every_configured_device_answer(bench: Bench, tmp_path: Path) -> None:
    checks = by_name(await health.doctor(bench.settings(tmp_path)))
    assert [name for name, c in checks.items() if not c.ok] == ["enrolment", "gateway"], checks
    assert checks["printer"].detail == "online, paper loaded"
    assert checks["display"].detail == "took the initialise command"
    assert checks["NFC reader"].detail == "connected"
    assert checks["register link"].ok and checks["scanner"].ok
    assert "not_enrolled" not in checks["enrolment"].detail and "pos-agent enrol" in checks["enrolment"].detail


async def test_doctor_names_the_missing_device(bench: Bench, tmp_path: Path) -> None:
    gone = str(tmp_path / "ttyUSB9")
    checks = await health.doctor(bench.settings(tmp_path, display=gone))
    failed = [c for c in checks if not c.ok and c.name not in ("enrolment", "gateway")]
    assert [c.name for c in failed] == [f"display {gone}"]
    assert failed[0].line().startswith(f"FAIL display {gone}: cannot open")


async def test_doctor_fails_a_printer_without_paper(bench: Bench, tmp_path: Path) -> None:
    bench.printer.interpreter.paper_out = True
    checks = by_name(await health.doctor(bench.settings(tmp_path)))
    assert not checks["printer"].ok and checks["printer"].detail == "the printer is out of paper"


async def test_doctor_fails_a_printer_that_does_not_answer(bench: Bench, tmp_path: Path) -> None:
    with open_raw_pty() as silent:  # a port with nothing behind it
        checks = by_name(await health.doctor(bench.settings(tmp_path, printer=silent.slave_path)))
    assert not checks["printer"].ok and "no status answer" in checks["printer"].detail


async def test_status_opens_no_device_and_names_a_missing_one(bench: Bench, tmp_path: Path) -> None:
    gone = str(tmp_path / "ttyUSB9")
    checks, report = await health.status(bench.settings(tmp_path, scanner=gone))
    named = {c.name: c for c in checks}
    assert not named[f"scanner {gone}"].ok and named[f"scanner {gone}"].detail == "no such device"
    assert named[f"display {bench.ptys['display'].slave_path}"].detail == "device present"
    assert named["offline backlog"].detail == "no offline taps waiting"
    assert report["offline_backlog"] == {"count": 0, "oldest_age_s": None}
    assert bench.display.screen.lines == (" " * 20, " " * 20)  # nothing was sent to the display


def test_status_bytes_are_parsed_or_refused() -> None:
    assert parse_status(0x12, 0x12).ready
    assert not parse_status(0x1A, 0x12).online
    assert parse_status(0x12, 0x72).paper_out
    with pytest.raises(SerialDeviceError):
        parse_status(0x00, 0x12)


async def test_the_printer_simulator_answers_mid_receipt(bench: Bench) -> None:
    link = await open_serial(SerialSettings(url=bench.ptys["printer"].slave_path))
    try:
        await link.write(b"\x1b@half a line", timeout_s=1)
        status = await ReceiptPrinter(link).status(timeout_s=3)
    finally:
        await link.close()
    assert status.ready
