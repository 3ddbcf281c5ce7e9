"""Pseudo-terminal pairs that stand in for serial cables in tests and demos.

- ``open_raw_pty()``: one pty in raw mode. The code under test opens ``slave_path`` like any
  serial port; a simulator drives the other end through ``PtyPort`` on ``master_fd``.
- ``PtyNullModem``: two raw ptys joined by a relay thread (what ``socat pty,raw pty,raw`` does), for
  two programs that both insist on opening a device path (a register library and our terminal).

Invariants:
- The slave is put in raw mode before anyone writes, and the pair keeps its own slave descriptor
  open, so bytes written before the device side opens wait in the line instead of being echoed,
  translated or lost, and the line only hangs up when ``hang_up()`` (or ``close()``) says so.
- Every read and write on a ``PtyPort`` has a timeout; the relay holds at most
  ``relay_buffer_max_bytes`` per direction and stops within one wake-up when closed.
- ``close()`` releases every descriptor it owns and is idempotent.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import threading
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, TypeVar

_T = TypeVar("_T")

__all__ = ["PtyNullModem", "PtyPort", "PtyPortClosedError", "RawPty", "open_raw_pty"]

_READ_CHUNK_MAX_BYTES: Final = 4096


class PtyPortClosedError(ConnectionError):
    """The far end of the pty hung up (or this end was closed)."""


@dataclass(slots=True)
class RawPty:
    """A raw pty pair. The device side opens ``slave_path``; simulators use ``master_fd``."""

    master_fd: int
    slave_fd: int
    slave_path: str
    _master_open: bool = field(default=True, repr=False)
    _slave_open: bool = field(default=True, repr=False)

    def hang_up(self) -> None:
        """Close the master: whoever has the slave open sees the line vanish (EIO / EOF)."""
        if self._master_open:
            self._master_open = False
            os.close(self.master_fd)

    def close(self) -> None:
        self.hang_up()
        if self._slave_open:
            self._slave_open = False
            os.close(self.slave_fd)

    def __enter__(self) -> RawPty:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_raw_pty() -> RawPty:
    master_fd, slave_fd = os.openpty()
    try:
        tty.setraw(slave_fd)
        slave_path = os.ttyname(slave_fd)
    except BaseException:
        os.close(master_fd)
        os.close(slave_fd)
        raise
    return RawPty(master_fd=master_fd, slave_fd=slave_fd, slave_path=slave_path)


class PtyPort:
    """Asyncio byte I/O on a pty master descriptor (the simulator's end of the cable).

    Does not own the descriptor: closing it is the ``RawPty``'s job.
    """

    def __init__(self, master_fd: int) -> None:
        self._fd = master_fd
        os.set_blocking(master_fd, False)

    async def read_some(self, *, timeout_s: float, size_max: int = _READ_CHUNK_MAX_BYTES) -> bytes:
        """Between 1 and ``size_max`` bytes; ``TimeoutError`` if none arrive in time."""
        async with asyncio.timeout(timeout_s):
            data = await self._until_ready(lambda: os.read(self._fd, size_max), readable=True)
        if not data:
            raise PtyPortClosedError("pty hung up: end of file")
        return data

    async def write(self, data: bytes, *, timeout_s: float) -> None:
        view = memoryview(data)
        async with asyncio.timeout(timeout_s):
            while view:
                written = await self._until_ready(lambda: os.write(self._fd, view), readable=False)  # noqa: B023 (awaited at once)
                view = view[written:]

    async def _until_ready(self, op: Callable[[], _T], *, readable: bool) -> _T:
        """``op`` (a non-blocking read or write), retried when the descriptor is ready; a hang-up is typed."""
        while True:
            try:
                return op()
            except BlockingIOError:
                await self._wait_ready(readable=readable)
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EBADF):
                    raise PtyPortClosedError(f"pty hung up: {exc}") from exc
                raise

    async def _wait_ready(self, *, readable: bool) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        if readable:
            loop.add_reader(self._fd, wake)
        else:
            loop.add_writer(self._fd, wake)
        try:
            await ready
        finally:
            if readable:
                loop.remove_reader(self._fd)
            else:
                loop.remove_writer(self._fd)


class PtyNullModem:
    """Two raw ptys whose masters a relay thread cross-connects: ``path_a`` <-> ``path_b``."""

    def __init__(self, *, relay_buffer_max_bytes: int = 64 * 1024) -> None:
        assert relay_buffer_max_bytes >= _READ_CHUNK_MAX_BYTES
        self._buffer_max_bytes = relay_buffer_max_bytes
        self.end_a = open_raw_pty()
        try:
            self.end_b = open_raw_pty()
        except BaseException:
            self.end_a.close()
            raise
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        for fd in (self.end_a.master_fd, self.end_b.master_fd):
            os.set_blocking(fd, False)
        self._thread = threading.Thread(target=self._relay, name="pty-null-modem", daemon=True)
        self._thread.start()

    @property
    def path_a(self) -> str:
        return self.end_a.slave_path

    @property
    def path_b(self) -> str:
        return self.end_b.slave_path

    def close(self, *, join_timeout_s: float = 2.0) -> None:
        if self._stopping:
            return
        self._stopping = True
        os.write(self._wake_w, b"x")
        self._thread.join(join_timeout_s)
        assert not self._thread.is_alive(), "relay thread did not stop"
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.end_a.close()
        self.end_b.close()

    def __enter__(self) -> PtyNullModem:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _relay(self) -> None:
        a, b = self.end_a.master_fd, self.end_b.master_fd
        outgoing: dict[int, bytearray] = {a: bytearray(), b: bytearray()}
        peer = {a: b, b: a}
        while True:
            # Read from a side only while its peer's backlog has room: the backlog stays bounded
            # and a peer that never reads simply stalls its sender, like hardware flow control.
            readers = [fd for fd in (a, b) if len(outgoing[peer[fd]]) + _READ_CHUNK_MAX_BYTES <= self._buffer_max_bytes]
            writers = [fd for fd in (a, b) if outgoing[fd]]
            readable, writable, _ = select.select([self._wake_r, *readers], writers, [])
            if self._wake_r in readable:
                return
            for fd in readable:
                try:
                    outgoing[peer[fd]] += os.read(fd, _READ_CHUNK_MAX_BYTES)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return  # a master was closed under us: the cable is cut
            for fd in writable:
                try:
                    written = os.write(fd, outgoing[fd])
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return
                del outgoing[fd][:written]
