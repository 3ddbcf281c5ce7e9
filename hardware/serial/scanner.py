"""Barcode / QR scanners in USB-COM (virtual serial port) mode.

The scanner sends the decoded text followed by a terminator (CR by default; CR LF, LF or TAB are
common settings). This module turns that byte stream into text lines.

Invariants:
- At most ``line_length_max`` bytes of an unfinished line are held; a longer line is dropped
  whole (counted in ``dropped_line_count``) and reading resumes after its terminator, so a
  scanner stuck on a noisy symbol cannot grow memory or glue two scans together.
- Yielded lines have CR/LF trimmed from both ends (covers CR LF setups whatever the terminator)
  and are never empty; undecodable bytes become U+FFFD rather than failing the stream.
- Every read has a timeout: ``read_line`` raises ``SerialTimeoutError``; ``lines`` polls with
  ``poll_interval_s`` and only ends by raising (``SerialDisconnectedError`` when unplugged).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from hardware.serial.errors import SerialTimeoutError
from hardware.serial.transport import SerialLink

__all__ = ["BarcodeScanner", "LineSplitter"]


class LineSplitter:
    """Pure line framing: bytes in, complete lines (without terminator) out."""

    def __init__(self, *, terminator: bytes = b"\r", line_length_max: int = 512) -> None:
        if not terminator:
            raise ValueError("terminator must not be empty")
        assert line_length_max >= 1
        self._terminator = terminator
        self._line_length_max = line_length_max
        self._buffer = bytearray()
        self._discarding = False
        self.dropped_line_count = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        lines: list[bytes] = []
        while (end := self._buffer.find(self._terminator)) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + len(self._terminator)]
            if self._discarding:
                self._discarding = False
            elif len(line) > self._line_length_max:
                self.dropped_line_count += 1
            else:
                lines.append(line)
        # A full-length line may sit here with the first bytes of a multi-byte terminator.
        if len(self._buffer) > self._line_length_max + len(self._terminator) - 1:
            if not self._discarding:
                self._discarding = True
                self.dropped_line_count += 1
            # Keep just enough to recognise a terminator split across two reads.
            keep = len(self._terminator) - 1
            del self._buffer[: len(self._buffer) - keep]
        return lines


class BarcodeScanner:
    """Decoded scans from one serial scanner."""

    def __init__(
        self,
        link: SerialLink,
        *,
        terminator: bytes = b"\r",
        line_length_max: int = 512,
        encoding: str = "utf-8",
        poll_interval_s: float = 1.0,
    ) -> None:
        self._link = link
        self._splitter = LineSplitter(terminator=terminator, line_length_max=line_length_max)
        self._encoding = encoding
        self._poll_interval_s = poll_interval_s
        self._ready: deque[str] = deque()

    @property
    def dropped_line_count(self) -> int:
        return self._splitter.dropped_line_count

    async def read_line(self, *, timeout_s: float) -> str:
        """The next scan; ``SerialTimeoutError`` if none completes within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self._ready:
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                raise SerialTimeoutError(f"no scan within {timeout_s:g} s")
            data = await self._link.read_some(timeout_s=remaining_s)
            for raw in self._splitter.feed(data):
                text = raw.decode(self._encoding, errors="replace").strip("\r\n")
                if text:
                    self._ready.append(text)
        return self._ready.popleft()

    async def lines(self) -> AsyncIterator[str]:
        """Scans as they come, forever; raises ``SerialDisconnectedError`` when unplugged."""
        while True:
            try:
                line = await self.read_line(timeout_s=self._poll_interval_s)
            except SerialTimeoutError:
                continue
            yield line
