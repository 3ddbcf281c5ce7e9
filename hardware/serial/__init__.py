"""Serial devices at the checkout counter.

Modules (each is the public face of one device; import what you use):
- ``transport``: open/reopen a port as a bounded asyncio byte link (``SerialLink``).
- ``concert``: the payment-terminal side of the Ingenico Caisse-Concert protocol.
- ``scanner``: barcode/QR scanners in USB-COM mode.
- ``display``: 2x20 customer pole displays (Epson DM-D command set).
- ``printer``: ESC/POS receipt printers (Chinese text, native QR codes); imports python-escpos.
- ``errors``: the one error hierarchy, re-exported here with the transport.

Invariant: nothing here imports ``gateway`` or ``pos_agent``.
"""

from hardware.serial.errors import (
    ConcertAnswerError,
    ConcertAnswerUndeliveredError,
    ConcertError,
    ConcertFrameError,
    ConcertFrameTooLongError,
    ConcertLrcError,
    ConcertProtocolError,
    ConcertRequestError,
    ConcertRetriesExhaustedError,
    ConcertTimeoutError,
    SerialDeviceError,
    SerialDisconnectedError,
    SerialOpenError,
    SerialTimeoutError,
)
from hardware.serial.transport import SerialLink, SerialSettings, open_serial, reopen_serial

__all__ = [
    "ConcertAnswerError",
    "ConcertAnswerUndeliveredError",
    "ConcertError",
    "ConcertFrameError",
    "ConcertFrameTooLongError",
    "ConcertLrcError",
    "ConcertProtocolError",
    "ConcertRequestError",
    "ConcertRetriesExhaustedError",
    "ConcertTimeoutError",
    "SerialDeviceError",
    "SerialDisconnectedError",
    "SerialLink",
    "SerialOpenError",
    "SerialSettings",
    "SerialTimeoutError",
    "open_serial",
    "reopen_serial",
]
