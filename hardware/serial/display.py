"""Customer-facing pole display speaking the Epson ESC/POS customer-display (DM-D) command set.

The DM-D command set (Epson DM-D110/D210 and the "Epson mode" of most VFD/LCD pole displays,
2 lines x 20 columns) is used, not CD5220: it positions the cursor absolutely, so every update
is idempotent whatever state the display was left in. Commands used:

    ESC @      1B 40        initialise the display
    US MD1     1F 01        overwrite mode (no scrolling when a line is full)
    US C n     1F 43 n      cursor display off (n = 0)
    ESC t n    1B 74 n      character code table (n = 0: PC437)
    CLR        0C           clear the screen, cursor home
    US $ x y   1F 24 x y    cursor to column x (1-20), row y (1-2)

Such displays show text only: a QR code for wallet payment cannot be shown here and belongs on
the receipt printer or a screen.

Invariants:
- Caller text never reaches the wire as commands: control characters become spaces, text is
  truncated/padded to exactly 20 columns, and characters outside PC437 become ``?``.
- ``show_lines`` rewrites both rows completely, so what is visible never depends on history.
- Every write is bounded by a timeout derived from the payload size and the line speed.
"""

from __future__ import annotations

from typing import Final

from hardware.serial.transport import SerialLink

__all__ = [
    "COLUMN_COUNT",
    "ROW_COUNT",
    "CustomerDisplay",
    "encode_clear",
    "encode_initialize",
    "encode_lines",
    "layout_amount",
]

COLUMN_COUNT: Final = 20
ROW_COUNT: Final = 2
TEXT_ENCODING: Final = "cp437"

ESC: Final = 0x1B
US: Final = 0x1F
CMD_INITIALIZE: Final = bytes([ESC, 0x40])
CMD_OVERWRITE_MODE: Final = bytes([US, 0x01])
CMD_CURSOR_OFF: Final = bytes([US, 0x43, 0x00])
CMD_CODE_TABLE_PC437: Final = bytes([ESC, 0x74, 0x00])
CMD_CLEAR: Final = bytes([0x0C])


def cmd_move_cursor(column: int, row: int) -> bytes:
    """``US $ x y`` with 1-based column and row."""
    assert 1 <= column <= COLUMN_COUNT and 1 <= row <= ROW_COUNT
    return bytes([US, 0x24, column, row])


def _encode_row(text: str) -> bytes:
    printable = "".join(" " if (ord(char) < 0x20 or ord(char) == 0x7F) else char for char in text)
    row = printable[:COLUMN_COUNT].ljust(COLUMN_COUNT)
    encoded = row.encode(TEXT_ENCODING, errors="replace")
    assert len(encoded) == COLUMN_COUNT
    return encoded


def encode_initialize() -> bytes:
    return CMD_INITIALIZE + CMD_OVERWRITE_MODE + CMD_CURSOR_OFF + CMD_CODE_TABLE_PC437 + CMD_CLEAR


def encode_clear() -> bytes:
    return CMD_CLEAR


def encode_lines(line1: str, line2: str) -> bytes:
    return cmd_move_cursor(1, 1) + _encode_row(line1) + cmd_move_cursor(1, 2) + _encode_row(line2)


def layout_amount(amount_text: str, label: str) -> tuple[str, str]:
    """Label on the first row, amount right-aligned on the second."""
    return label, amount_text.rjust(COLUMN_COUNT)


class CustomerDisplay:
    """A 2x20 DM-D pole display on one serial link."""

    def __init__(self, link: SerialLink, *, write_margin_s: float = 1.0) -> None:
        self._link = link
        self._write_margin_s = write_margin_s

    async def initialize(self) -> None:
        await self._send(encode_initialize())

    async def clear(self) -> None:
        await self._send(encode_clear())

    async def show_lines(self, line1: str, line2: str) -> None:
        await self._send(encode_lines(line1, line2))

    async def show_amount(self, amount_text: str, *, label: str = "TOTAL") -> None:
        await self.show_lines(*layout_amount(amount_text, label))

    async def _send(self, data: bytes) -> None:
        timeout_s = self._link.settings.write_timeout_s(len(data), margin_s=self._write_margin_s)
        await self._link.write(data, timeout_s=timeout_s)
