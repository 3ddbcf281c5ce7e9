"""ISO-DEP on the card side: block rules, chaining both ways, presence check, DESELECT.

Besides hand-written blocks, nfcpy's own initiator (``nfc.tag.tt4.IsoDepInitiator``) talks to
the listener through an in-memory frontend, so the simulator is checked against the reader
implementation it meets over the air.
"""

from __future__ import annotations

import nfc.clf
import nfc.tag.tt4
import pytest

from hardware.sim.phone_isodep import IsoDepListener, build_ats, parse_rats


def echo(command: bytes) -> bytes:
    return command[::-1] + b"\x90\x00"


def test_ats_carries_ta_tb_tc() -> None:
    assert build_ats() == bytes.fromhex("0578 80 A0 00".replace(" ", ""))
    ats = build_ats(fsci=5, fwi=14, sfgi=2)
    assert ats[1] & 0x70 == 0x70 and ats[1] & 0x0F == 5 and ats[3] == 0xE2
    with pytest.raises(ValueError):
        build_ats(fwi=15)


def test_parse_rats() -> None:
    assert parse_rats(bytes.fromhex("E080")) == 256
    assert parse_rats(bytes.fromhex("E050")) == 64
    assert parse_rats(bytes.fromhex("E0F0")) == 256  # RFU values cap at 256
    with pytest.raises(ValueError):
        parse_rats(bytes.fromhex("E1"))


def test_i_block_number_is_echoed_and_r_blocks_follow_the_rules() -> None:
    listener = IsoDepListener(echo, 256)
    assert listener.on_block(bytes.fromhex("02 0102".replace(" ", ""))) == bytes.fromhex(
        "02 0201 9000".replace(" ", "")
    )
    assert listener.on_block(bytes.fromhex("B3")) == bytes.fromhex("A2")  # presence check (other number)
    assert listener.on_block(bytes.fromhex("B2")) == bytes.fromhex("02 0201 9000".replace(" ", ""))  # retransmit
    assert listener.on_block(bytes.fromhex("03 AA".replace(" ", ""))) == bytes.fromhex("03 AA 9000".replace(" ", ""))
    assert listener.on_block(bytes.fromhex("A3")) == bytes.fromhex("03 AA 9000".replace(" ", ""))  # rule 11
    assert listener.on_block(bytes.fromhex("A2")) is None  # ACK with nothing chained: silence


def test_command_and_response_chaining_with_small_frames() -> None:
    listener = IsoDepListener(echo, 16)  # 13 information bytes per block
    command = bytes(range(20))
    assert listener.on_block(b"\x12" + command[:13]) == b"\xa2"
    first = listener.on_block(b"\x03" + command[13:])
    expected = command[::-1] + b"\x90\x00"
    assert first == b"\x13" + expected[:13]
    second = listener.on_block(b"\xa2")  # reader acknowledges with its next number
    assert second == b"\x02" + expected[13:]


def test_overlong_chained_command_is_refused() -> None:
    listener = IsoDepListener(echo, 256, command_length_max=8)
    assert listener.on_block(b"\x12" + bytes(6)) == b"\xa2"
    assert listener.on_block(b"\x03" + bytes(6)) == b"\x03\x67\x00"
    assert listener.on_block(b"\x02\x01") == b"\x02\x01\x90\x00"  # and recovers


def test_deselect_ends_the_activation() -> None:
    listener = IsoDepListener(echo, 256)
    assert listener.on_block(b"\xc2") == b"\xc2"
    assert listener.deselected
    assert listener.on_block(b"\x02\x00") is None


@pytest.mark.parametrize("block", [b"", b"\x0a\x00\x00", b"\x06\x00", b"\xf2\x01", b"\xaa"])
def test_unexpected_blocks_get_no_answer(block: bytes) -> None:
    assert IsoDepListener(echo, 256).on_block(block) is None


class LoopbackFrontend:
    """Stands in for ``nfc.ContactlessFrontend`` in ``IsoDepInitiator``: frames go straight
    to the listener; ``drop`` lists the indices of reader frames whose answer gets lost."""

    def __init__(self, listener: IsoDepListener, drop: set[int] | None = None) -> None:
        self.listener = listener
        self.drop = drop or set()
        self.frames: list[bytes] = []

    def exchange(self, data: bytearray, timeout: float) -> bytearray:
        self.frames.append(bytes(data))
        answer = self.listener.on_block(bytes(data))
        if answer is None or len(self.frames) - 1 in self.drop:
            raise nfc.clf.TimeoutError("no answer")
        return bytearray(answer)


@pytest.mark.parametrize("fsc", [16, 64, 256])
def test_against_nfcpy_initiator(fsc: int) -> None:
    frontend = LoopbackFrontend(IsoDepListener(echo, fsc))
    initiator = nfc.tag.tt4.IsoDepInitiator(frontend, fsc, 0.3)
    for size in (1, 40, 250):
        command = bytearray(range(size))
        assert initiator.exchange(command) == command[::-1] + b"\x90\x00"
        initiator.exchange(None)  # presence check
    assert frontend.listener.deselected is False


def test_nfcpy_initiator_recovers_a_lost_answer() -> None:
    frontend = LoopbackFrontend(IsoDepListener(echo, 256), drop={0})
    initiator = nfc.tag.tt4.IsoDepInitiator(frontend, 256, 0.1)
    assert initiator.exchange(bytearray(b"\x01\x02")) == b"\x02\x01\x90\x00"
    assert frontend.frames[1] == b"\xb2"  # R(NAK), answered by retransmission
