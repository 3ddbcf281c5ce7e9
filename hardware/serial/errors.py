"""The one error hierarchy of the serial device layer.

Every failure a caller can act on is a ``SerialDeviceError`` subclass with a stable,
machine-readable ``code``; callers catch by class, never by message text. Timeouts are also
``TimeoutError`` and disconnects also ``ConnectionError``, so generic handlers keep working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from hardware.serial.concert import ConcertRequest, ConcertResult


class SerialDeviceError(Exception):
    """Base class of every error raised by ``hardware.serial``."""

    code: ClassVar[str] = "serial_device_error"


class SerialOpenError(SerialDeviceError):
    """The port could not be opened (missing device, permission, busy, bad settings)."""

    code = "serial_open_failed"


class SerialDisconnectedError(SerialDeviceError, ConnectionError):
    """The peer vanished: the device was unplugged, the line hung up, or the port was closed."""

    code = "serial_disconnected"


class SerialTimeoutError(SerialDeviceError, TimeoutError):
    """A read or write on the port did not complete within its timeout."""

    code = "serial_timeout"


class ConcertError(SerialDeviceError):
    """Base class of Caisse-Concert protocol errors."""

    code = "concert_error"


class ConcertFrameError(ConcertError):
    """A received frame is damaged; the terminal answers it with NAK."""

    code = "concert_frame_invalid"


class ConcertLrcError(ConcertFrameError):
    """The LRC byte does not match the XOR of message and ETX."""

    code = "concert_lrc_mismatch"

    def __init__(self, lrc_expected: int, lrc_received: int) -> None:
        super().__init__(f"LRC mismatch: expected 0x{lrc_expected:02x}, received 0x{lrc_received:02x}")
        self.lrc_expected = lrc_expected
        self.lrc_received = lrc_received


class ConcertFrameTooLongError(ConcertFrameError):
    """No ETX arrived within the maximum message length (lost ETX or line noise)."""

    code = "concert_frame_too_long"


class ConcertRequestError(ConcertFrameError):
    """The frame is intact but its message is not a valid Concert request."""

    code = "concert_request_invalid"

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ConcertAnswerError(ConcertError, ValueError):
    """The application's result cannot be encoded as a Concert answer (bad length or charset)."""

    code = "concert_answer_invalid"


class ConcertProtocolError(ConcertError):
    """The register broke the exchange sequence (for example EOT before the request frame)."""

    code = "concert_protocol_violation"


class ConcertRetriesExhaustedError(ConcertError):
    """A frame was refused (NAK) or lost more times than the configured bound."""

    code = "concert_retries_exhausted"


class ConcertAnswerUndeliveredError(ConcertError):
    """The application produced a result but the register never acknowledged the answer.

    The money may already have moved: the caller owns ``request`` and ``result`` and must journal
    or reverse them. The underlying failure is chained as ``__cause__`` when there is one.
    """

    code = "concert_answer_undelivered"

    def __init__(self, reason: str, *, request: ConcertRequest, result: ConcertResult) -> None:
        super().__init__(reason)
        self.request = request
        self.result = result


class ConcertTimeoutError(ConcertError, SerialTimeoutError):
    """A handshake step or the application's result took longer than its timeout."""

    code = "concert_timeout"

    def __init__(self, step: str, timeout_s: float) -> None:
        super().__init__(f"timed out after {timeout_s:g} s waiting for {step}")
        self.step = step
        self.timeout_s = timeout_s
