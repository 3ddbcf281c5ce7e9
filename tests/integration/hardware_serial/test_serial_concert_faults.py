"""Concert terminal under line faults, with the test playing the register byte by byte on the
raw pty master: garbage, corrupted frames, NAKs, missing ACKs, a vanished line."""

from __future__ import annotations

import asyncio
import pytest

from hardware.serial.concert import (
    ANSWER_FRAME_LENGTH_SHORT,
    ConcertRequest,
    ConcertResult,
    ConcertRetryLimits,
    ConcertTerminal,
    ConcertTimeouts,
    ResultStatus,
    encode_frame,
)
from hardware.serial.errors import (
    ConcertAnswerUndeliveredError,
    ConcertProtocolError,
    ConcertRetriesExhaustedError,
    ConcertTimeoutError,
    SerialDisconnectedError,
)
from hardware.serial.transport import SerialLink
from hardware.sim.pty import PtyPort, RawPty

ENQ, ACK, NAK, EOT = b"\x05", b"\x06", b"\x15", b"\x04"
REQUEST = b"01000012500" + b"10978" + b" " * 10 + b"A011B010"
FAST = ConcertTimeouts(handshake_step_s=0.3, result_s=1.0, idle_s=2.0)
STEP_S = 2.0  # bound on each wait of the hand-played register


class Register:
    """The register side, played by hand on the pty master."""

    def __init__(self, port: PtyPort) -> None:
        self.port = port
        self._buffer = bytearray()

    async def send(self, data: bytes) -> None:
        await self.port.write(data, timeout_s=STEP_S)

    async def expect(self, expected: bytes) -> None:
        assert await self.read(len(expected)) == expected

    async def read(self, byte_count: int) -> bytes:
        async with asyncio.timeout(STEP_S):
            while len(self._buffer) < byte_count:
                self._buffer += await self.port.read_some(timeout_s=STEP_S)
        data = bytes(self._buffer[:byte_count])
        del self._buffer[:byte_count]
        return data

    async def send_request(self, frame: bytes) -> None:
        await self.send(ENQ)
        await self.expect(ACK)
        await self.send(frame)
        await self.expect(ACK)
        await self.send(EOT)

    async def take_answer(self) -> bytes:
        await self.expect(ENQ)
        await self.send(ACK)
        answer = await self.read(ANSWER_FRAME_LENGTH_SHORT)
        await self.send(ACK)
        await self.expect(EOT)
        return answer


async def approve(request: ConcertRequest) -> ConcertResult:
    return ConcertResult(ResultStatus.SUCCESS, private="OK")


@pytest.fixture
def register(far_end: PtyPort) -> Register:
    return Register(far_end)


@pytest.fixture
def serving(link: SerialLink) -> ConcertTerminal:
    return ConcertTerminal(link, approve, timeouts=FAST)


async def test_resync_after_garbage_and_corrupted_frame_then_nak_resend(
    serving: ConcertTerminal, register: Register
) -> None:
    terminal = asyncio.create_task(serving.serve_one())
    await register.send(b"\xff\x00garbage\x7f")  # line noise while idle
    await register.send(ENQ)
    await register.expect(ACK)
    corrupted = bytearray(encode_frame(REQUEST))
    corrupted[5] ^= 0x01  # one flipped bit in the amount
    await register.send(b"\x13\x11" + bytes(corrupted))
    await register.expect(NAK)
    await register.send(encode_frame(REQUEST))
    await register.expect(ACK)
    await register.send(EOT)
    answer = await register.take_answer()
    exchange = await asyncio.wait_for(terminal, STEP_S)
    assert exchange is not None and exchange.request.amount_minor == 1250
    assert answer == encode_frame(b"01" + b"0" + b"00001250" + b"1" + b"978" + b"OK".ljust(10))
    assert serving.skipped_byte_count == len(b"\xff\x00garbage\x7f") + 2


async def test_bounded_naks_then_gives_up(link: SerialLink, register: Register) -> None:
    terminal = ConcertTerminal(link, approve, timeouts=FAST, retry_limits=ConcertRetryLimits(bad_frame_count_max=2))
    serving = asyncio.create_task(terminal.serve_one())
    await register.send(ENQ)
    await register.expect(ACK)
    bad_lrc = encode_frame(REQUEST)[:-1] + b"\x00"
    await register.send(bad_lrc)
    await register.expect(NAK)
    await register.send(encode_frame(b"TOO SHORT"))  # intact frame, invalid request: NAK too
    await register.expect(NAK)
    with pytest.raises(ConcertRetriesExhaustedError):
        await asyncio.wait_for(serving, STEP_S)


async def test_answer_nak_is_resent(serving: ConcertTerminal, register: Register) -> None:
    terminal = asyncio.create_task(serving.serve_one())
    await register.send_request(encode_frame(REQUEST))
    await register.expect(ENQ)
    await register.send(ACK)
    first = await register.read(ANSWER_FRAME_LENGTH_SHORT)
    await register.send(NAK)
    second = await register.read(ANSWER_FRAME_LENGTH_SHORT)
    await register.send(ACK)
    await register.expect(EOT)
    assert first == second
    assert await asyncio.wait_for(terminal, STEP_S) is not None


async def test_missing_ack_to_enq_times_out_with_undelivered_result(link: SerialLink, register: Register) -> None:
    limits = ConcertRetryLimits(enq_attempt_count_max=2)
    terminal = ConcertTerminal(link, approve, timeouts=FAST, retry_limits=limits)
    serving = asyncio.create_task(terminal.serve_one())
    await register.send_request(encode_frame(REQUEST))
    with pytest.raises(ConcertAnswerUndeliveredError) as caught:
        await asyncio.wait_for(serving, STEP_S)
    assert await register.read(2) == ENQ + ENQ  # one ENQ per attempt, then silence
    assert caught.value.request.amount_minor == 1250
    assert caught.value.result.status is ResultStatus.SUCCESS


async def test_missing_ack_to_answer_is_resent_then_undelivered(link: SerialLink, register: Register) -> None:
    limits = ConcertRetryLimits(answer_send_count_max=2)
    terminal = ConcertTerminal(link, approve, timeouts=FAST, retry_limits=limits)
    serving = asyncio.create_task(terminal.serve_one())
    await register.send_request(encode_frame(REQUEST))
    await register.expect(ENQ)
    await register.send(ACK)
    frame = await register.read(ANSWER_FRAME_LENGTH_SHORT)
    assert await register.read(ANSWER_FRAME_LENGTH_SHORT) == frame  # resent after the ACK timeout
    with pytest.raises(ConcertAnswerUndeliveredError):
        await asyncio.wait_for(serving, STEP_S)


async def test_missing_request_frame_times_out(serving: ConcertTerminal, register: Register) -> None:
    terminal = asyncio.create_task(serving.serve_one())
    await register.send(ENQ)
    await register.expect(ACK)
    with pytest.raises(ConcertTimeoutError) as caught:
        await asyncio.wait_for(terminal, STEP_S)
    assert caught.value.step == "the request frame"


async def test_eot_before_frame_is_a_protocol_error(serving: ConcertTerminal, register: Register) -> None:
    terminal = asyncio.create_task(serving.serve_one())
    await register.send(ENQ)
    await register.expect(ACK)
    await register.send(EOT)
    with pytest.raises(ConcertProtocolError):
        await asyncio.wait_for(terminal, STEP_S)


async def test_missing_eot_after_request_is_tolerated(serving: ConcertTerminal, register: Register) -> None:
    terminal = asyncio.create_task(serving.serve_one())
    await register.send(ENQ)
    await register.expect(ACK)
    await register.send(encode_frame(REQUEST))
    await register.expect(ACK)
    answer = await register.take_answer()  # no EOT sent: the terminal goes on after one step
    assert len(answer) == ANSWER_FRAME_LENGTH_SHORT
    assert await asyncio.wait_for(terminal, STEP_S) is not None


async def test_idle_without_enq_returns_none(link: SerialLink) -> None:
    terminal = ConcertTerminal(link, approve, timeouts=ConcertTimeouts(idle_s=0.1))
    assert await terminal.serve_one() is None


async def test_slow_application_times_out_without_answering(link: SerialLink, register: Register) -> None:
    release = asyncio.Event()

    async def stuck(request: ConcertRequest) -> ConcertResult:
        await release.wait()
        raise AssertionError("cancelled before this")

    terminal = ConcertTerminal(link, stuck, timeouts=ConcertTimeouts(handshake_step_s=0.3, result_s=0.2))
    serving = asyncio.create_task(terminal.serve_one())
    await register.send_request(encode_frame(REQUEST))
    with pytest.raises(ConcertTimeoutError) as caught:
        await asyncio.wait_for(serving, STEP_S)
    assert caught.value.step == "the application's result"
    with pytest.raises(TimeoutError):
        await register.port.read_some(timeout_s=0.2)  # no ENQ: nothing was answered


async def test_line_vanishing_while_idle_is_a_disconnect(
    serving: ConcertTerminal, register: Register, raw_pty: RawPty
) -> None:
    terminal = asyncio.create_task(serving.serve_one())
    raw_pty.hang_up()
    with pytest.raises(SerialDisconnectedError):
        await asyncio.wait_for(terminal, STEP_S)


async def test_line_vanishing_during_answer_keeps_the_result(link: SerialLink, register: Register, raw_pty: RawPty) -> None:
    computed = asyncio.Event()
    resume = asyncio.Event()

    async def approve_then_wait(request: ConcertRequest) -> ConcertResult:
        computed.set()
        await resume.wait()
        return ConcertResult(ResultStatus.SUCCESS, private="PAID")

    terminal = ConcertTerminal(link, approve_then_wait, timeouts=FAST)
    serving = asyncio.create_task(terminal.serve_one())
    await register.send_request(encode_frame(REQUEST))
    await asyncio.wait_for(computed.wait(), STEP_S)
    raw_pty.hang_up()
    resume.set()
    with pytest.raises(ConcertAnswerUndeliveredError) as caught:
        await asyncio.wait_for(serving, STEP_S)
    assert caught.value.result.private == "PAID"
    assert isinstance(caught.value.__cause__, SerialDisconnectedError)
