"""The one error hierarchy of the NFC device layer.

Every failure a caller can act on is an ``NfcError`` subclass with a stable, machine-readable
``code``; callers catch by class, never by message text. A timeout is also a ``TimeoutError``
and a missing reader also a ``ConnectionError``, so generic handlers keep working.
"""

from __future__ import annotations

from typing import ClassVar


class NfcError(Exception):
    """Base class of every error raised by ``hardware.nfc``."""

    code: ClassVar[str] = "nfc_error"


class TapTimeout(NfcError, TimeoutError):
    """No payment device completed a tap before the read's deadline."""

    code = "tap_timeout"


class TapCancelled(NfcError):
    """The read was disarmed (``NfcReader.disarm``) before a tap completed."""

    code = "tap_cancelled"


class ReaderUnavailable(NfcError, ConnectionError):
    """The reader is not connected (unplugged, busy, no permission) or the reader was closed."""

    code = "reader_unavailable"


class ReaderBusy(NfcError):
    """A read is already armed on this reader; one tap is read at a time."""

    code = "reader_busy"


class CardError(NfcError):
    """The card or phone answered, but not as the EMV fast path requires.

    ``reason`` says why (stable): ``status_word`` (``sw`` holds it), ``malformed``,
    ``no_accepted_application``, ``unsupported_flow``.
    """

    code = "card_error"

    def __init__(self, message: str, *, reason: str, sw: int | None = None) -> None:
        super().__init__(message if sw is None else f"{message} (SW {sw:04X})")
        self.reason = reason
        self.sw = sw
