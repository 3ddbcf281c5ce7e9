"""The counter's devices as the checkout sees them: small protocols plus resilient adapters.

The checkout driver depends only on the protocols (``TapSource``, ``CodeSource``, ``Display``,
``Printer``), so unit tests drive it with fakes and production wires the ``hardware`` layer.

Invariants:
- Display and printer are best effort: a failure is logged, the port is closed and re-opened on
  the next use (bounded by the port's open timeout); it never fails a payment.
- The scanner has exactly one reader task. Scans go to a bounded queue (oldest dropped when
  full); a vanished scanner is re-opened with capped backoff, forever, until the agent stops.
- Nothing here blocks the event loop; every I/O has a timeout (inherited from ``hardware``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Final, Protocol

from hardware.nfc import NfcReader, TapResult
from hardware.serial.display import CustomerDisplay
from hardware.serial.errors import SerialDeviceError, SerialDisconnectedError
from hardware.serial.printer import Receipt, ReceiptPrinter
from hardware.serial.scanner import BarcodeScanner
from hardware.serial.transport import SerialLink, SerialSettings, open_serial
from pos_agent.settings import PrinterSettings, ScannerSettings, SerialPortSettings

__all__ = [
    "CodeSource",
    "Devices",
    "Display",
    "DisplayPort",
    "Printer",
    "PrinterPort",
    "ScannerFeed",
    "TapSource",
    "serial_settings",
]

log = logging.getLogger(__name__)

SCAN_QUEUE_MAX: Final = 8
REOPEN_BACKOFF_FIRST_S: Final = 0.2
REOPEN_BACKOFF_MAX_S: Final = 5.0


class TapSource(Protocol):
    async def read_tap(
        self, amount_minor: int, currency_numeric: int, country_numeric: int, timeout_s: float
    ) -> TapResult: ...

    def disarm(self) -> None: ...


class CodeSource(Protocol):
    async def next_code(self, timeout_s: float) -> str:
        """The next scanned text; ``TimeoutError`` if none within ``timeout_s``."""
        ...

    def flush(self) -> None: ...


class Display(Protocol):
    async def show(self, line1: str, line2: str) -> None: ...


class Printer(Protocol):
    async def print_receipt(self, receipt: Receipt) -> None: ...


def serial_settings(port: SerialPortSettings) -> SerialSettings:
    return SerialSettings(
        url=port.url, baudrate=port.baudrate, bytesize=port.bytesize, parity=port.parity,
        stopbits=port.stopbits, open_timeout_s=port.open_timeout_s,
    )


class _OnDemandPort:
    """A serial port opened on first use and re-opened on the next use after a failure."""

    def __init__(self, settings: SerialSettings, name: str) -> None:
        self._settings = settings
        self._name = name
        self._link: SerialLink | None = None
        self._lock = asyncio.Lock()

    async def _link_or_none(self) -> SerialLink | None:
        if self._link is None:
            try:
                self._link = await open_serial(self._settings)
                await self._on_open(self._link)
            except SerialDeviceError as exc:
                log.warning("%s unavailable: %s", self._name, exc)
                await self._drop()
        return self._link

    async def _on_open(self, link: SerialLink) -> None:
        """Hook for a device that needs initialising after each open."""

    async def _drop(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    async def close(self) -> None:
        async with self._lock:
            await self._drop()


class DisplayPort(_OnDemandPort):
    def __init__(self, port: SerialPortSettings) -> None:
        super().__init__(serial_settings(port), "customer display")

    async def _on_open(self, link: SerialLink) -> None:
        await CustomerDisplay(link).initialize()

    async def show(self, line1: str, line2: str) -> None:
        async with self._lock:
            link = await self._link_or_none()
            if link is None:
                return
            try:
                await CustomerDisplay(link).show_lines(line1, line2)
            except SerialDeviceError as exc:
                log.warning("customer display failed: %s", exc)
                await self._drop()


class PrinterPort(_OnDemandPort):
    def __init__(self, port: PrinterSettings) -> None:
        super().__init__(serial_settings(port), "receipt printer")
        self._line_width_columns = port.line_width_columns

    async def print_receipt(self, receipt: Receipt) -> None:
        async with self._lock:
            link = await self._link_or_none()
            if link is None:
                return
            try:
                await ReceiptPrinter(link, line_width_columns=self._line_width_columns).print_receipt(receipt)
            except SerialDeviceError as exc:
                log.warning("receipt printer failed: %s", exc)
                await self._drop()


class ScannerFeed:
    """One task reads the scanner; ``next_code`` hands scans to the checkout."""

    def __init__(self, port: ScannerSettings) -> None:
        self._settings = serial_settings(port)
        self._terminator = port.terminator.encode("ascii")
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=SCAN_QUEUE_MAX)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        assert self._task is None
        self._task = asyncio.create_task(self._run(), name="scanner")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def flush(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    async def next_code(self, timeout_s: float) -> str:
        async with asyncio.timeout(timeout_s):
            return await self._queue.get()

    async def _run(self) -> None:
        delay_s = REOPEN_BACKOFF_FIRST_S
        while True:
            try:
                link = await open_serial(self._settings)
            except SerialDeviceError as exc:
                log.warning("scanner unavailable (%s); retrying in %.1f s", exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, REOPEN_BACKOFF_MAX_S)
                continue
            delay_s = REOPEN_BACKOFF_FIRST_S
            try:
                async for line in BarcodeScanner(link, terminator=self._terminator).lines():
                    if self._queue.full():
                        self._queue.get_nowait()  # the oldest scan is the stalest
                    self._queue.put_nowait(line)
            except SerialDisconnectedError as exc:
                log.warning("scanner disconnected: %s", exc)
            finally:
                await link.close()


@dataclass(slots=True)
class Devices:
    """Whatever the configuration names; each may be absent."""

    reader: NfcReader | None = None
    scanner: ScannerFeed | None = None
    display: DisplayPort | None = None
    printer: PrinterPort | None = None

    async def close(self) -> None:
        if self.reader is not None:
            await self.reader.close()
        for device in (self.scanner, self.display, self.printer):
            if device is not None:
                await device.close()
