"""Serial ports as asyncio byte links (``serial_asyncio_fast`` underneath).

Invariants:
- Every read, write and close takes an explicit timeout; none waits forever.
- The input buffer is bounded: the stream reader pauses the port once it holds more than twice
  ``read_buffer_max_bytes``, so the kernel (and then the device's flow control) absorbs the rest.
- A vanished peer (``SerialException``/``OSError`` from the port, end of file, a port closed under
  us) always surfaces as ``SerialDisconnectedError``; a link that raised it is dead and must be
  replaced (see ``reopen_serial``), never read again.
- Opening is bounded by ``open_timeout_s``; reopening is bounded by ``attempt_count_max``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import termios
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal

import serial
import serial_asyncio_fast

from hardware.serial.errors import SerialDisconnectedError, SerialOpenError, SerialTimeoutError

__all__ = [
    "Parity",
    "SerialLink",
    "SerialSettings",
    "open_serial",
    "reopen_serial",
]

_log = logging.getLogger(__name__)

Parity = Literal["N", "E", "O", "M", "S"]

_READ_CHUNK_MAX_BYTES: Final = 4096
_PARITY_BIT_COUNT: Final[dict[str, int]] = {"N": 0, "E": 1, "O": 1, "M": 1, "S": 1}


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """How to open one port. ``url`` is a device path (``/dev/ttyACM0``) or a pyserial URL."""

    url: str
    baudrate: int = 9600
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Parity = "N"
    stopbits: Literal[1, 2] = 1
    rtscts: bool = False
    xonxoff: bool = False
    open_timeout_s: float = 3.0
    read_buffer_max_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.baudrate <= 0:
            raise ValueError(f"baudrate must be positive, got {self.baudrate}")
        if self.open_timeout_s <= 0:
            raise ValueError(f"open_timeout_s must be positive, got {self.open_timeout_s}")
        if self.read_buffer_max_bytes < 1:
            raise ValueError(f"read_buffer_max_bytes must be >= 1, got {self.read_buffer_max_bytes}")

    @classmethod
    def legacy_rs232(cls, url: str) -> SerialSettings:
        """9600 baud 7E1: the usual setting of terminals and registers on a real RS-232 line."""
        return cls(url=url, baudrate=9600, bytesize=7, parity="E", stopbits=1)

    @classmethod
    def usb_cdc(cls, url: str, baudrate: int = 9600) -> SerialSettings:
        """8N1 over USB CDC-ACM; the baud rate is nominal there but some firmware checks it."""
        return cls(url=url, baudrate=baudrate, bytesize=8, parity="N", stopbits=1)

    def transmit_time_s(self, byte_count: int) -> float:
        """Time the line needs to carry ``byte_count`` characters (start + data + parity + stop)."""
        bit_count_per_char = 1 + self.bytesize + _PARITY_BIT_COUNT[self.parity] + self.stopbits
        return byte_count * bit_count_per_char / self.baudrate

    def write_timeout_s(self, byte_count: int, *, margin_s: float = 1.0) -> float:
        """A write timeout that scales with the payload: twice the line time plus a margin."""
        return margin_s + 2 * self.transmit_time_s(byte_count)


class SerialLink:
    """One open serial port: bounded reads and writes with timeouts, typed disconnects.

    Build it with ``open_serial``. Not safe for two concurrent readers (one consumer per port,
    as with any serial device).
    """

    def __init__(
        self,
        settings: SerialSettings,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.settings = settings
        self._reader = reader
        self._writer = writer

    @property
    def is_closing(self) -> bool:
        return self._writer.transport.is_closing()

    async def read_some(self, *, timeout_s: float, size_max: int = _READ_CHUNK_MAX_BYTES) -> bytes:
        """Return between 1 and ``size_max`` bytes, as soon as any are available."""
        assert size_max >= 1
        try:
            async with asyncio.timeout(timeout_s):
                data = await self._reader.read(size_max)
        except TimeoutError:
            raise SerialTimeoutError(f"no data from {self.settings.url} within {timeout_s:g} s") from None
        except (serial.SerialException, OSError) as exc:
            raise SerialDisconnectedError(f"{self.settings.url}: {exc}") from exc
        if not data:
            raise SerialDisconnectedError(f"{self.settings.url}: end of file (port closed)")
        return data

    async def write(self, data: bytes, *, timeout_s: float) -> None:
        """Queue ``data`` and wait until the port has taken all of it."""
        if self.is_closing:
            raise SerialDisconnectedError(f"{self.settings.url}: port is closed")
        try:
            self._writer.write(data)
            async with asyncio.timeout(timeout_s):
                await self._writer.drain()
        except TimeoutError:
            raise SerialTimeoutError(
                f"{self.settings.url} did not take {len(data)} bytes within {timeout_s:g} s"
            ) from None
        except (serial.SerialException, OSError) as exc:
            raise SerialDisconnectedError(f"{self.settings.url}: {exc}") from exc
        if self.is_closing:
            # The transport swallows writes once a fatal error closed it; report it instead.
            raise SerialDisconnectedError(f"{self.settings.url}: port closed while writing")

    async def close(self, *, timeout_s: float = 2.0) -> None:
        """Close the port and wait (bounded) until its file descriptor is released."""
        if not self.is_closing:
            self._writer.close()
        try:
            async with asyncio.timeout(timeout_s):
                await self._writer.wait_closed()
        except TimeoutError:
            _log.warning("serial port %s did not finish closing within %g s", self.settings.url, timeout_s)
        except (serial.SerialException, OSError) as exc:
            # Closing a link whose peer vanished re-raises the loss; it is already accounted for.
            _log.debug("serial port %s closed after loss: %s", self.settings.url, exc)

    async def __aenter__(self) -> SerialLink:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def open_serial(settings: SerialSettings) -> SerialLink:
    """Open the port described by ``settings``; raise ``SerialOpenError`` on any failure.

    The port object is built here rather than by ``serial_asyncio_fast`` so that it can be
    closed on every failure path, including an open that completes after its timeout.
    """
    loop = asyncio.get_running_loop()
    opening = loop.run_in_executor(
        None,
        functools.partial(
            serial.serial_for_url,
            settings.url,
            baudrate=settings.baudrate,
            bytesize=settings.bytesize,
            parity=settings.parity,
            stopbits=settings.stopbits,
            rtscts=settings.rtscts,
            xonxoff=settings.xonxoff,
            timeout=0,
            write_timeout=0,
        ),
    )
    try:
        async with asyncio.timeout(settings.open_timeout_s):
            port = await asyncio.shield(opening)
    except TimeoutError:
        opening.add_done_callback(_close_late_port)
        raise SerialOpenError(f"opening {settings.url} took longer than {settings.open_timeout_s:g} s") from None
    except (serial.SerialException, OSError, ValueError, termios.error) as exc:
        raise SerialOpenError(f"cannot open {settings.url}: {exc}") from exc
    try:
        reader = asyncio.StreamReader(limit=settings.read_buffer_max_bytes)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await serial_asyncio_fast.connection_for_serial(loop, lambda: protocol, port)
    except (serial.SerialException, OSError, ValueError, termios.error) as exc:
        # The transport reconfigures the port; a driver may refuse settings only at that point
        # (pyserial lets termios.error, which is no OSError, escape from that path).
        port.close()
        raise SerialOpenError(f"cannot configure {settings.url}: {exc}") from exc
    except BaseException:
        port.close()
        raise
    return SerialLink(settings, reader, asyncio.StreamWriter(transport, protocol, reader, loop))


def _close_late_port(opening: asyncio.Future[Any]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


async def reopen_serial(
    link_or_settings: SerialLink | SerialSettings,
    *,
    attempt_count_max: int = 5,
    backoff_s: float = 0.5,
    backoff_max_s: float = 5.0,
) -> SerialLink:
    """Close a dead link (if given) and open its port again, with bounded, doubling backoff.

    Meant for the device that was unplugged and plugged back in: USB CDC devices reappear under
    the same path after a moment. Raises the last ``SerialOpenError`` once attempts run out.
    """
    assert attempt_count_max >= 1
    if isinstance(link_or_settings, SerialLink):
        await link_or_settings.close()
        settings = link_or_settings.settings
    else:
        settings = link_or_settings
    delay_s = backoff_s
    for attempt_index in range(attempt_count_max):
        try:
            return await open_serial(settings)
        except SerialOpenError as exc:
            if attempt_index + 1 == attempt_count_max:
                raise
            _log.info("reopen %s failed (%s); retrying in %g s", settings.url, exc, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, backoff_max_s)
    raise AssertionError("unreachable: the loop returns or raises")

