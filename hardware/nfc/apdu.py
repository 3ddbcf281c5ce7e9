"""ISO/IEC 7816-4 short APDUs, both sides: the terminal builds commands and splits responses,
the card parses commands and appends status words.

Invariants:
- Pure: standard library only.
- Short APDUs only (Lc and Le of one byte): what contactless EMV uses and what nfcpy's
  ``Type4ATag`` negotiates. ``Lc`` is 1-255 when data is present; ``Le`` of 256 is written
  ``00``.
- ``parse_command(build_command(...))`` gives back the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

SW_OK: Final = 0x9000
SW_MORE_DATA_PREFIX: Final = 0x61
SW_WRONG_LENGTH: Final = 0x6700
SW_CONDITIONS_NOT_SATISFIED: Final = 0x6985
SW_WRONG_DATA: Final = 0x6A80
SW_FILE_NOT_FOUND: Final = 0x6A82
SW_WRONG_P1P2: Final = 0x6A86
SW_INS_NOT_SUPPORTED: Final = 0x6D00
SW_CLA_NOT_SUPPORTED: Final = 0x6E00

COMMAND_DATA_LENGTH_MAX: Final = 255
RESPONSE_DATA_LENGTH_MAX: Final = 256


class ApduError(ValueError):
    """A byte string that is not a well-formed short APDU."""


@dataclass(frozen=True, slots=True)
class CommandApdu:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None  # expected response length, 1-256; None when absent


def build_command(cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None) -> bytes:
    for name, byte in (("cla", cla), ("ins", ins), ("p1", p1), ("p2", p2)):
        if not 0 <= byte <= 0xFF:
            raise ApduError(f"{name} out of range: {byte}")
    if len(data) > COMMAND_DATA_LENGTH_MAX:
        raise ApduError(f"command data longer than {COMMAND_DATA_LENGTH_MAX} bytes")
    apdu = bytes([cla, ins, p1, p2])
    if data:
        apdu += bytes([len(data)]) + data
    if le is not None:
        if not 1 <= le <= RESPONSE_DATA_LENGTH_MAX:
            raise ApduError(f"le out of range: {le}")
        apdu += bytes([le & 0xFF])
    return apdu


def parse_command(apdu: bytes) -> CommandApdu:
    if len(apdu) < 4:
        raise ApduError("command APDU shorter than its 4-byte header")
    cla, ins, p1, p2 = apdu[0], apdu[1], apdu[2], apdu[3]
    body = apdu[4:]
    if not body:
        return CommandApdu(cla, ins, p1, p2)
    if len(body) == 1:
        return CommandApdu(cla, ins, p1, p2, le=body[0] or 256)
    lc = body[0]
    if lc == 0:
        raise ApduError("extended-length APDUs are not supported")
    if len(body) == 1 + lc:
        return CommandApdu(cla, ins, p1, p2, data=bytes(body[1:]))
    if len(body) == 2 + lc:
        return CommandApdu(cla, ins, p1, p2, data=bytes(body[1:-1]), le=body[-1] or 256)
    raise ApduError(f"Lc {lc} does not match a body of {len(body)} bytes")


def split_response(response: bytes) -> tuple[bytes, int]:
    """``(data, sw)`` of a response APDU."""
    if len(response) < 2:
        raise ApduError("response APDU shorter than its status word")
    return bytes(response[:-2]), int.from_bytes(response[-2:], "big")


def respond(data: bytes = b"", sw: int = SW_OK) -> bytes:
    return data + sw.to_bytes(2, "big")
