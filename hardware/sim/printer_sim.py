"""An ESC/POS receipt printer that turns the byte stream back into text lines and QR payloads.

``EscPosInterpreter`` is pure (bytes in, finished receipts out: a receipt ends at a cut);
``PrinterSimulator`` feeds it from a pty and hands finished receipts to tests through a queue.

Invariants:
- Commands may arrive split across reads; an incomplete command is never interpreted half-way.
- Text is decoded as GB18030 while Chinese mode (``FS &``) is on, otherwise with the code table
  selected by ``ESC t`` (PC437 by default); a line is decoded segment by segment when the mode
  changes inside it.
- ``GS ( k`` QR commands: the payload stored with function 80 is reported once printed by
  function 81. Styles (bold, size, alignment) are accepted and not modelled.
- ``DLE EOT n`` (real-time status, n = 1 printer, 4 roll paper) is answered at once with one
  status byte from ``online`` and ``paper_out``, as a printer answers it even mid-receipt.
- Bounded: a line longer than ``line_bytes_max`` is emitted as soon as it reaches the bound,
  unknown commands are kept up to a fixed count, the receipt queue has a maximum size.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from hardware.sim.pty import PtyPort, PtyPortClosedError

__all__ = ["EscPosInterpreter", "PrintedReceipt", "PrinterSimulator"]

_ESC: Final = 0x1B
_GS: Final = 0x1D
_FS: Final = 0x1C
_DLE: Final = 0x10
_EOT: Final = 0x04
_STATUS_FIXED_BITS: Final = 0b0001_0010  # bits 1 and 4 are set in every real-time status byte
_LF: Final = 0x0A
_UNKNOWN_KEPT_MAX: Final = 100
_CODE_TABLES: Final[dict[int, str]] = {0: "cp437", 2: "cp850", 16: "cp1252", 19: "cp858"}
_ESC_LENGTHS: Final[dict[int, int]] = {
    0x40: 2, 0x32: 2,  # init, default line spacing
    0x21: 3, 0x2D: 3, 0x33: 3, 0x45: 3, 0x47: 3, 0x4A: 3, 0x4D: 3, 0x52: 3, 0x56: 3,
    0x61: 3, 0x64: 3, 0x74: 3, 0x7B: 3,
    0x70: 5,  # cash drawer pulse
}
_GS_LENGTHS: Final[dict[int, int]] = {0x21: 3, 0x42: 3, 0x62: 3, 0x48: 3, 0x66: 3, 0x68: 3, 0x77: 3, 0x4C: 4, 0x57: 4}
_FS_LENGTHS: Final[dict[int, int]] = {0x26: 2, 0x2E: 2, 0x43: 3}


@dataclass(frozen=True, slots=True)
class PrintedReceipt:
    lines: tuple[str, ...]
    qr_payloads: tuple[str, ...]


class EscPosInterpreter:
    def __init__(self, *, line_bytes_max: int = 4096) -> None:
        self._line_bytes_max = line_bytes_max
        self._pending = bytearray()
        self._chinese_mode = False
        self._code_table = 0
        self._line_parts: list[str] = []
        self._segment = bytearray()
        self._lines: list[str] = []
        self._qr_payloads: list[str] = []
        self._qr_stored: bytes | None = None
        self.unknown_commands: list[bytes] = []
        self.online = True
        self.paper_out = False
        self.replies = bytearray()
        """Status bytes owed to the host; the simulator sends and clears them after each feed."""

    def feed(self, data: bytes) -> list[PrintedReceipt]:
        self._pending += data
        finished: list[PrintedReceipt] = []
        while self._pending:
            length = self._command_length(self._pending)
            if length is None:
                break
            command = bytes(self._pending[:length])
            del self._pending[:length]
            receipt = self._execute(command)
            if receipt is not None:
                finished.append(receipt)
        return finished

    @staticmethod
    def _command_length(buffer: bytearray) -> int | None:
        first = buffer[0]
        if first == _DLE:
            return 3 if len(buffer) >= 3 else None
        if first not in (_ESC, _GS, _FS):
            return 1
        if len(buffer) < 2:
            return None
        second = buffer[1]
        if first == _GS and second == 0x28:  # GS ( fn pL pH data
            if len(buffer) < 5:
                return None
            length = 5 + buffer[3] + 256 * buffer[4]
        elif first == _GS and second == 0x56:  # GS V m [n]
            if len(buffer) < 3:
                return None
            length = 4 if buffer[2] in (65, 66, 97, 98, 103, 104) else 3
        else:
            table = {_ESC: _ESC_LENGTHS, _GS: _GS_LENGTHS, _FS: _FS_LENGTHS}[first]
            length = table.get(second, 2)
        return length if len(buffer) >= length else None

    def _execute(self, command: bytes) -> PrintedReceipt | None:
        first = command[0]
        if first == _LF:
            self._end_line()
        elif first == 0x0D:
            pass  # CR without auto line feed prints nothing
        elif first == _DLE:
            self._execute_status(command)
        elif first < 0x20 and first not in (_ESC, _GS, _FS):
            self._unknown(command)
        elif first == _ESC:
            self._execute_esc(command)
        elif first == _FS:
            self._execute_fs(command)
        elif first == _GS:
            return self._execute_gs(command)
        else:
            self._segment += command
            if len(self._segment) >= self._line_bytes_max:
                self._end_line()
        return None

    def _execute_esc(self, command: bytes) -> None:
        second = command[1]
        if second == 0x40:
            self._segment.clear()
            self._line_parts.clear()
            self._chinese_mode = False
            self._code_table = 0
        elif second == 0x74:
            self._flush_segment()
            self._code_table = command[2]
            if command[2] not in _CODE_TABLES:
                self._unknown(command)
        elif second == 0x64:
            self._end_line_if_any()  # paper feed: blank paper is not a text line
        elif second not in _ESC_LENGTHS:
            self._unknown(command)

    def _execute_status(self, command: bytes) -> None:
        if command[1] != _EOT or command[2] not in (1, 4):
            self._unknown(command)
        elif command[2] == 1:
            self.replies.append(_STATUS_FIXED_BITS | (0 if self.online else 0x08))
        else:
            self.replies.append(_STATUS_FIXED_BITS | (0x60 if self.paper_out else 0))

    def _execute_fs(self, command: bytes) -> None:
        if command in (b"\x1c&", b"\x1c."):
            self._flush_segment()
            self._chinese_mode = command == b"\x1c&"
        elif command[1] not in _FS_LENGTHS:
            self._unknown(command)

    def _execute_gs(self, command: bytes) -> PrintedReceipt | None:
        second = command[1]
        if second == 0x56:
            self._end_line_if_any()
            receipt = PrintedReceipt(lines=tuple(self._lines), qr_payloads=tuple(self._qr_payloads))
            self._lines.clear()
            self._qr_payloads.clear()
            return receipt
        if second == 0x28 and command[2] == ord("k"):
            self._execute_2d_code(command[5:])
        elif second not in _GS_LENGTHS and second != 0x28:
            self._unknown(command)
        return None

    def _execute_2d_code(self, parameters: bytes) -> None:
        code_type, function = parameters[0], parameters[1]
        if code_type != ord("1"):
            self._unknown(b"\x1d(k" + parameters[:2])
        elif function == 80:  # store: cn fn m data
            self._qr_stored = parameters[3:]
        elif function == 81 and self._qr_stored is not None:  # print the stored symbol
            self._end_line_if_any()
            self._qr_payloads.append(self._qr_stored.decode("utf-8", errors="replace"))

    def _flush_segment(self) -> None:
        if self._segment:
            encoding = "gb18030" if self._chinese_mode else _CODE_TABLES.get(self._code_table, "cp437")
            self._line_parts.append(self._segment.decode(encoding, errors="replace"))
            self._segment.clear()

    def _end_line(self) -> None:
        self._flush_segment()
        self._lines.append("".join(self._line_parts))
        self._line_parts.clear()

    def _end_line_if_any(self) -> None:
        if self._segment or self._line_parts:
            self._end_line()

    def _unknown(self, command: bytes) -> None:
        if len(self.unknown_commands) < _UNKNOWN_KEPT_MAX:
            self.unknown_commands.append(command)


class PrinterSimulator:
    """Reads ESC/POS from a pty until cancelled or the line hangs up."""

    def __init__(self, port: PtyPort, *, read_timeout_s: float = 1.0, receipt_queue_max: int = 64) -> None:
        self._port = port
        self._read_timeout_s = read_timeout_s
        self.interpreter = EscPosInterpreter()
        self._receipts: asyncio.Queue[PrintedReceipt] = asyncio.Queue(maxsize=receipt_queue_max)

    async def run(self) -> None:
        while True:
            try:
                data = await self._port.read_some(timeout_s=self._read_timeout_s)
            except TimeoutError:
                continue
            except PtyPortClosedError:
                return
            receipts = self.interpreter.feed(data)
            if self.interpreter.replies:
                replies = bytes(self.interpreter.replies)
                self.interpreter.replies.clear()
                try:
                    await self._port.write(replies, timeout_s=self._read_timeout_s)
                except PtyPortClosedError:
                    return
                except TimeoutError:
                    pass  # the host stopped reading: a status it no longer waits for is dropped
            for receipt in receipts:
                await self._receipts.put(receipt)

    async def next_receipt(self, *, timeout_s: float = 2.0) -> PrintedReceipt:
        async with asyncio.timeout(timeout_s):
            return await self._receipts.get()
