"""ISO/IEC 14443-4 (ISO-DEP) as the card (PICC) speaks it, for the wallet phone simulator.

A pure block state machine: ``IsoDepListener.on_block`` takes one block from the reader and
returns the block to send back (or ``None`` to stay silent). RATS and the ATS that answers it
live here too.

Invariants:
- Pure: no I/O; APDUs go to the ``handle_apdu`` callable given at construction.
- Block numbers follow the PICC rules: the card's block number starts at 1, an I-block's
  number is echoed (rule D), an R-block with the card's current number retransmits the last
  block (rule 11), an R(NAK) with the other number is answered with R(ACK) (rule 12, nfcpy's
  presence check), an R(ACK) with the other number continues response chaining (rule 13).
- Frames respect the reader's FSD: at most ``fsd - 3`` information bytes per block (PCB and
  the two CRC bytes count against the FSD); longer responses are chained.
- A chained command is bounded by ``command_length_max``; an overlong one is answered ``6700``.
- CID and NAD are not negotiated (the ATS has TC = 00): blocks that carry them get no answer.
- After S(DESELECT) the listener answers ``C2`` and ``deselected`` stays true.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from hardware.nfc import apdu

FRAME_SIZE_BY_INDEX: Final = (16, 24, 32, 40, 48, 64, 96, 128, 256)
RATS_START: Final = 0xE0
DESELECT: Final = 0xC2
FWI_MAX: Final = 14
COMMAND_LENGTH_MAX: Final = 261


def parse_rats(rats: bytes) -> int:
    """The reader's maximum frame size (FSD) from RATS ``E0 <FSDI|CID>``."""
    if len(rats) != 2 or rats[0] != RATS_START:
        raise ValueError("not a RATS command")
    return FRAME_SIZE_BY_INDEX[min(rats[1] >> 4, len(FRAME_SIZE_BY_INDEX) - 1)]


def build_ats(*, fsci: int = 8, fwi: int = 10, sfgi: int = 0) -> bytes:
    """ATS with TA, TB and TC present: TL, T0, TA, TB, TC.

    nfcpy reads the frame waiting time from TB, so TB must be there. FWI 10 gives a frame
    waiting time of about 309 ms: generous next to the microseconds the simulator needs, and
    still short enough for nfcpy to retry a lost frame (it retries ``min(1 / FWT, 5)`` times).
    """
    if not 0 <= fsci <= 8 or not 0 <= fwi <= FWI_MAX or not 0 <= sfgi <= FWI_MAX:
        raise ValueError("fsci must be 0..8, fwi and sfgi 0..14")
    t0 = 0x70 | fsci  # TA, TB, TC follow
    ta = 0x80  # 106 kbit/s only, same divisor both ways
    tb = (fwi << 4) | sfgi
    tc = 0x00  # neither CID nor NAD supported
    return bytes([5, t0, ta, tb, tc])


class IsoDepListener:
    def __init__(
        self,
        handle_apdu: Callable[[bytes], bytes],
        fsd: int,
        *,
        command_length_max: int = COMMAND_LENGTH_MAX,
    ) -> None:
        if fsd not in FRAME_SIZE_BY_INDEX:
            raise ValueError(f"fsd must be one of {FRAME_SIZE_BY_INDEX}")
        self._handle_apdu = handle_apdu
        self._information_max = fsd - 3
        self._command_length_max = command_length_max
        self._block_number = 1
        self._received = bytearray()
        self._overflow = False
        self._pending = b""  # rest of a chained response
        self._last_block: bytes | None = None
        self.deselected = False

    def on_block(self, block: bytes) -> bytes | None:
        if not block or self.deselected:
            return None
        pcb = block[0]
        if pcb & 0x0C:
            return None
        if pcb & 0xE2 == 0x02:
            return self._on_information(pcb, block[1:])
        if pcb & 0xE6 == 0xA2:
            return self._on_receive_ready(pcb)
        if pcb == DESELECT:
            self.deselected = True
            return bytes([DESELECT])
        return None

    def _on_information(self, pcb: int, information: bytes) -> bytes:
        self._block_number = pcb & 0x01
        self._pending = b""
        if len(self._received) + len(information) > self._command_length_max:
            self._overflow = True
            self._received.clear()
        else:
            self._received += information
        if pcb & 0x10:
            return self._remember(bytes([0xA2 | self._block_number]))
        command = bytes(self._received)
        overflow = self._overflow
        self._received.clear()
        self._overflow = False
        response = apdu.respond(sw=apdu.SW_WRONG_LENGTH) if overflow else self._handle_apdu(command)
        self._pending = response
        return self._next_information_block()

    def _on_receive_ready(self, pcb: int) -> bytes | None:
        if pcb & 0x01 == self._block_number:
            return self._last_block
        if pcb & 0x10:
            return bytes([0xA2 | self._block_number])
        if not self._pending:
            return None
        self._block_number ^= 1
        return self._next_information_block()

    def _next_information_block(self) -> bytes:
        chunk, self._pending = self._pending[: self._information_max], self._pending[self._information_max :]
        chaining = 0x10 if self._pending else 0x00
        return self._remember(bytes([0x02 | chaining | self._block_number]) + chunk)

    def _remember(self, block: bytes) -> bytes:
        self._last_block = block
        return block
