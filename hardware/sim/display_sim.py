"""A 2x20 pole display interpreting the Epson ESC/POS customer-display (DM-D) commands.

``DisplayScreen`` is the pure interpreter (bytes in, visible rows out); ``DisplaySimulator``
feeds it from a pty and lets tests await a given screen content instead of sleeping.

Invariants:
- The screen is always exactly 2 rows of 20 characters; the cursor never leaves it.
- Commands may arrive split across reads: an incomplete command waits in a buffer of at most a
  few bytes, never interpreted half-way.
- Only overwrite mode (``US MD1``) is modelled. Scroll modes, code tables other than PC437 and
  unknown commands are recorded in ``unsupported_commands`` (bounded) so tests can assert the
  driver never relies on them.
"""

from __future__ import annotations

import asyncio
from typing import Final

from hardware.sim.pty import PtyPort, PtyPortClosedError

__all__ = ["DisplayScreen", "DisplaySimulator"]

COLUMN_COUNT: Final = 20
ROW_COUNT: Final = 2
_UNSUPPORTED_KEPT_MAX: Final = 100
_ESC: Final = 0x1B
_US: Final = 0x1F
# Command length by second byte, for the two-byte-prefixed commands this display knows.
_ESC_LENGTHS: Final[dict[int, int]] = {0x40: 2, 0x74: 3, 0x52: 3, 0x3D: 3}
_US_LENGTHS: Final[dict[int, int]] = {
    0x01: 2, 0x02: 2, 0x03: 2, 0x0A: 2, 0x0D: 2, 0x42: 2,
    0x24: 4, 0x43: 3, 0x58: 3, 0x45: 3, 0x72: 3,
}


class DisplayScreen:
    def __init__(self) -> None:
        self._rows = [[" "] * COLUMN_COUNT for _ in range(ROW_COUNT)]
        self._column = 0
        self._row = 0
        self._pending = bytearray()
        self.unsupported_commands: list[bytes] = []

    @property
    def lines(self) -> tuple[str, str]:
        return "".join(self._rows[0]), "".join(self._rows[1])

    def feed(self, data: bytes) -> None:
        self._pending += data
        while self._pending:
            length = self._command_length(self._pending)
            if length is None:
                return  # incomplete command: wait for more bytes
            command = bytes(self._pending[:length])
            del self._pending[:length]
            self._execute(command)

    @staticmethod
    def _command_length(buffer: bytearray) -> int | None:
        first = buffer[0]
        if first in (_ESC, _US):
            if len(buffer) < 2:
                return None
            table = _ESC_LENGTHS if first == _ESC else _US_LENGTHS
            length = table.get(buffer[1], 2)
            return length if len(buffer) >= length else None
        return 1

    def _execute(self, command: bytes) -> None:
        first = command[0]
        if first == _ESC:
            if command == b"\x1b@":
                self._clear()
            elif command == b"\x1bt\x00":
                pass  # PC437, the table rows are decoded with
            else:
                self._unsupported(command)
        elif first == _US:
            second = command[1]
            if second == 0x24:
                column, row = command[2], command[3]
                if 1 <= column <= COLUMN_COUNT and 1 <= row <= ROW_COUNT:
                    self._column, self._row = column - 1, row - 1
                else:
                    self._unsupported(command)
            elif second == 0x42:
                self._row = ROW_COUNT - 1
            elif second == 0x0A:
                self._row = 0
            elif second == 0x0D:
                self._column = COLUMN_COUNT - 1
            elif command in (b"\x1f\x01", b"\x1fC\x00", b"\x1fC\x01") or second in (0x58, 0x45):
                pass  # overwrite mode, cursor visibility, brightness, blink: nothing visible to model
            else:
                self._unsupported(command)
        elif first == 0x0C:
            self._clear()
        elif first == 0x18:
            self._rows[self._row] = [" "] * COLUMN_COUNT
        elif first == 0x0B:
            self._column, self._row = 0, 0
        elif first == 0x0D:
            self._column = 0
        elif first == 0x0A:
            self._row = min(self._row + 1, ROW_COUNT - 1)
        elif first == 0x08:
            self._column = max(self._column - 1, 0)
        elif first == 0x09:
            self._advance()
        elif first < 0x20 or first == 0x7F:
            self._unsupported(command)
        else:
            self._rows[self._row][self._column] = command.decode("cp437")
            self._advance()

    def _advance(self) -> None:
        # Overwrite mode: past the end of the top row go to the bottom row, past the bottom row
        # go back home.
        self._column += 1
        if self._column == COLUMN_COUNT:
            self._column = 0
            self._row = (self._row + 1) % ROW_COUNT

    def _clear(self) -> None:
        self._rows = [[" "] * COLUMN_COUNT for _ in range(ROW_COUNT)]
        self._column, self._row = 0, 0

    def _unsupported(self, command: bytes) -> None:
        if len(self.unsupported_commands) < _UNSUPPORTED_KEPT_MAX:
            self.unsupported_commands.append(command)


class DisplaySimulator:
    """Reads display commands from a pty until cancelled or the line hangs up."""

    def __init__(self, port: PtyPort, *, read_timeout_s: float = 1.0) -> None:
        self._port = port
        self._read_timeout_s = read_timeout_s
        self.screen = DisplayScreen()
        self._changed = asyncio.Condition()

    async def run(self) -> None:
        while True:
            try:
                data = await self._port.read_some(timeout_s=self._read_timeout_s)
            except TimeoutError:
                continue
            except PtyPortClosedError:
                return
            async with self._changed:
                self.screen.feed(data)
                self._changed.notify_all()

    async def wait_for_lines(self, line1: str, line2: str, *, timeout_s: float = 2.0) -> None:
        """Return once the screen shows exactly these rows (padded to 20 columns)."""
        expected = (line1.ljust(COLUMN_COUNT), line2.ljust(COLUMN_COUNT))
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: self.screen.lines == expected)
