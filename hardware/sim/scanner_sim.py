"""A USB-COM barcode scanner: each scan is the decoded text followed by the terminator.

Invariant: one ``scan`` writes exactly ``text.encode(encoding) + terminator`` and nothing else,
within its timeout.
"""

from __future__ import annotations

from hardware.sim.pty import PtyPort

__all__ = ["ScannerSimulator"]


class ScannerSimulator:
    def __init__(self, port: PtyPort, *, terminator: bytes = b"\r", encoding: str = "utf-8") -> None:
        self._port = port
        self._terminator = terminator
        self._encoding = encoding

    async def scan(self, text: str, *, timeout_s: float = 1.0) -> None:
        await self._port.write(text.encode(self._encoding) + self._terminator, timeout_s=timeout_s)
