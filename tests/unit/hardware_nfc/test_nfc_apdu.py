"""Short APDUs: the four ISO 7816-4 cases, both directions."""

from __future__ import annotations

import pytest

from hardware.nfc import apdu
from hardware.nfc.apdu import ApduError, CommandApdu


@pytest.mark.parametrize(
    ("command", "wire"),
    [
        (CommandApdu(0x00, 0xA4, 0x04, 0x00), "00A40400"),
        (CommandApdu(0x00, 0xC0, 0x00, 0x00, le=16), "00C0000010"),
        (CommandApdu(0x00, 0xC0, 0x00, 0x00, le=256), "00C0000000"),
        (CommandApdu(0x80, 0xA8, 0x00, 0x00, data=b"\x83\x00"), "80A80000028300"),
        (CommandApdu(0x80, 0xA8, 0x00, 0x00, data=b"\x83\x00", le=256), "80A8000002830000"),
    ],
)
def test_cases_round_trip(command: CommandApdu, wire: str) -> None:
    built = apdu.build_command(command.cla, command.ins, command.p1, command.p2, command.data, command.le)
    assert built == bytes.fromhex(wire)
    assert apdu.parse_command(built) == command


@pytest.mark.parametrize("wire", ["00A404", "00A4040000AABB", "00A4040003AA", "00A4040002AABBCCDD"])
def test_malformed_commands(wire: str) -> None:
    with pytest.raises(ApduError):
        apdu.parse_command(bytes.fromhex(wire))


def test_build_limits() -> None:
    with pytest.raises(ApduError):
        apdu.build_command(0x100, 0, 0, 0)
    with pytest.raises(ApduError):
        apdu.build_command(0, 0, 0, 0, bytes(256))
    with pytest.raises(ApduError):
        apdu.build_command(0, 0, 0, 0, le=257)


def test_responses() -> None:
    assert apdu.respond(b"\x01", 0x6A82) == b"\x01\x6a\x82"
    assert apdu.split_response(b"\x01\x90\x00") == (b"\x01", apdu.SW_OK)
    with pytest.raises(ApduError):
        apdu.split_response(b"\x90")
