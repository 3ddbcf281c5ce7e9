"""Receipt printers speaking ESC/POS, fed over a serial port.

``python-escpos`` (its ``Dummy`` printer, which only collects bytes) builds the commands: init,
styles, native QR codes (``GS ( k``: model 2, module size, error correction, store, print) and
the cut. Text is encoded here, not by python-escpos: the receipt switches the printer to its
Chinese character mode (``FS &``) and encodes every line as GB18030, which is how printers with
Simplified Chinese firmware print Han characters while ASCII stays single-byte.
(python-escpos would switch code pages with ``ESC t`` for non-Han accented text, which a printer
in Chinese mode does not honour.)

Invariants:
- ``build_receipt_bytes`` is pure and deterministic: same receipt, same bytes.
- Caller text never carries commands: control characters become spaces before encoding.
- Item rows are laid out in display columns (Han and other wide characters count as two), so
  amounts line up for mixed Chinese/Latin text; over-long labels are cut, never wrapped.
- The serial write is bounded by a timeout derived from the byte count and the line speed.
- ``status`` asks the printer itself (``DLE EOT 1`` printer, ``DLE EOT 4`` roll paper, answered
  in real time even while it prints); a byte without the fixed status bits is refused, never guessed.
"""

from __future__ import annotations

import asyncio
import unicodedata
from dataclasses import dataclass
from typing import Final

from escpos.constants import QR_ECLEVEL_M
from escpos.printer import Dummy

from hardware.serial.errors import SerialDeviceError, SerialTimeoutError
from hardware.serial.transport import SerialLink

__all__ = [
    "QR_MODULE_SIZE_DOTS_DEFAULT",
    "PrinterStatus",
    "Receipt",
    "ReceiptItem",
    "ReceiptPrinter",
    "build_receipt_bytes",
    "display_width",
    "parse_status",
]

TEXT_ENCODING: Final = "gb18030"
CMD_CHINESE_MODE_ON: Final = b"\x1c\x26"  # FS &
LINE_WIDTH_COLUMNS_DEFAULT: Final = 48  # 80 mm paper, font A; 58 mm paper takes 32
QR_MODULE_SIZE_DOTS_DEFAULT: Final = 6
QR_PAYLOAD_BYTES_MAX: Final = 2331  # byte mode, version 40, error correction level M
CMD_STATUS_PRINTER: Final = b"\x10\x04\x01"  # DLE EOT 1: printer status (bit 3: offline)
CMD_STATUS_PAPER: Final = b"\x10\x04\x04"  # DLE EOT 4: roll paper sensor (bits 5-6: paper end)
STATUS_FIXED_MASK: Final = 0b1001_0011
STATUS_FIXED_BITS: Final = 0b0001_0010  # bits 1 and 4 set, bits 0 and 7 clear in every status byte


@dataclass(frozen=True, slots=True)
class PrinterStatus:
    online: bool
    paper_out: bool

    @property
    def ready(self) -> bool:
        return self.online and not self.paper_out


def parse_status(printer_byte: int, paper_byte: int) -> PrinterStatus:
    for value in (printer_byte, paper_byte):
        if value & STATUS_FIXED_MASK != STATUS_FIXED_BITS:
            raise SerialDeviceError(f"0x{value:02x} is not an ESC/POS real-time status byte")
    return PrinterStatus(online=not printer_byte & 0x08, paper_out=bool(paper_byte & 0x60))


@dataclass(frozen=True, slots=True)
class ReceiptItem:
    label: str
    amount_text: str


@dataclass(frozen=True, slots=True)
class Receipt:
    title: str
    items: tuple[ReceiptItem, ...]
    total: ReceiptItem
    qr_payload: str | None = None
    footer_lines: tuple[str, ...] = ()


def display_width(text: str) -> int:
    """Printed width in columns: East Asian wide/fullwidth characters take two."""
    return sum(2 if unicodedata.east_asian_width(char) in ("W", "F") else 1 for char in text)


def _clean(text: str) -> str:
    return "".join(" " if (ord(char) < 0x20 or ord(char) == 0x7F) else char for char in text)


def _cut_to_width(text: str, width_columns: int) -> str:
    kept: list[str] = []
    used = 0
    for char in text:
        char_width = display_width(char)
        if used + char_width > width_columns:
            break
        kept.append(char)
        used += char_width
    return "".join(kept)


def _item_row(item: ReceiptItem, width_columns: int) -> str:
    amount = _cut_to_width(_clean(item.amount_text), width_columns)
    label_room = max(width_columns - display_width(amount) - 1, 0)
    label = _cut_to_width(_clean(item.label), label_room)
    gap = width_columns - display_width(label) - display_width(amount)
    return label + " " * gap + amount


def build_receipt_bytes(
    receipt: Receipt,
    *,
    line_width_columns: int = LINE_WIDTH_COLUMNS_DEFAULT,
    qr_module_size_dots: int = QR_MODULE_SIZE_DOTS_DEFAULT,
) -> bytes:
    """The complete ESC/POS byte stream for one receipt, ending with a cut."""
    if receipt.qr_payload is not None and len(receipt.qr_payload.encode("utf-8")) > QR_PAYLOAD_BYTES_MAX:
        raise ValueError(f"QR payload longer than {QR_PAYLOAD_BYTES_MAX} bytes")
    commands = Dummy()
    stream = bytearray()

    def take_commands() -> None:
        stream.extend(commands.output)
        commands.clear()

    def text_line(text: str) -> None:
        take_commands()
        stream.extend(_cut_to_width(_clean(text), line_width_columns).encode(TEXT_ENCODING) + b"\n")

    commands.hw("INIT")
    take_commands()
    stream.extend(CMD_CHINESE_MODE_ON)
    commands.set(align="center", bold=True, double_height=True, double_width=True)
    text_line(receipt.title)
    commands.set(align="left", bold=False, normal_textsize=True)
    for item in receipt.items:
        text_line(_item_row(item, line_width_columns))
    text_line("-" * line_width_columns)
    commands.set(bold=True)
    text_line(_item_row(receipt.total, line_width_columns))
    commands.set(bold=False)
    if receipt.qr_payload:
        commands.set(align="center")
        commands.qr(receipt.qr_payload, native=True, size=qr_module_size_dots, ec=QR_ECLEVEL_M)
        commands.set(align="left")
    for line in receipt.footer_lines:
        text_line(line)
    commands.cut()
    take_commands()
    return bytes(stream)


class ReceiptPrinter:
    """An ESC/POS receipt printer on one serial link."""

    def __init__(
        self,
        link: SerialLink,
        *,
        line_width_columns: int = LINE_WIDTH_COLUMNS_DEFAULT,
        write_margin_s: float = 2.0,
    ) -> None:
        self._link = link
        self._line_width_columns = line_width_columns
        self._write_margin_s = write_margin_s

    async def print_receipt(self, receipt: Receipt) -> None:
        data = build_receipt_bytes(receipt, line_width_columns=self._line_width_columns)
        timeout_s = self._link.settings.write_timeout_s(len(data), margin_s=self._write_margin_s)
        await self._link.write(data, timeout_s=timeout_s)

    async def status(self, *, timeout_s: float) -> PrinterStatus:
        """The printer's own answer; ``SerialTimeoutError`` if it gives none within ``timeout_s``."""
        query = CMD_STATUS_PRINTER + CMD_STATUS_PAPER
        await self._link.write(query, timeout_s=self._link.settings.write_timeout_s(len(query)))
        answer = bytearray()
        try:
            async with asyncio.timeout(timeout_s):
                while len(answer) < 2:
                    answer += await self._link.read_some(timeout_s=timeout_s, size_max=2 - len(answer))
        except TimeoutError:
            raise SerialTimeoutError(f"{self._link.settings.url}: no status answer within {timeout_s:g} s") from None
        return parse_status(answer[0], answer[1])
