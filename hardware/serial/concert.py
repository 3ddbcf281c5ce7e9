"""Terminal side of the Ingenico "Caisse-Concert" protocol (versions E and E+).

The cash register is the master: it sends a payment request, this module answers as the payment
terminal would, so any register speaking Concert can take wallet payments unchanged.

Wire format: a frame is ``STX message ETX LRC`` with ``LRC = XOR(message bytes, ETX)``; messages
are printable ASCII. One exchange is::

    register  ENQ          frame          EOT   ...   ACK          ACK
    terminal        ACK          ACK(NAK)       ENQ        answer        EOT

Request messages are 34 characters in E+ (pos 2, amount minor 8, answer flag 1, payment mode 1,
transaction type 1, currency numeric 3, private 10, delay 4 ``A010``/``A011``, authorisation 4
``B010``/``B011``) or 26 in E (no delay, no authorisation). Registers disagree on what the delay
values mean (pypostelium sends ``A011`` and waits; pyTeliumManager calls ``A010`` "wait"), so
both are accepted and the terminal always answers once the transaction is over. The answer is
25 characters (28 framed) when the request's answer flag is ``0`` and 80 (83 framed, with a
55-character report) when it is ``1``.

Invariants:
- The codec (``compute_lrc``, ``encode_frame``, ``FrameDecoder``, ``parse_request``,
  ``build_answer``) is pure: no I/O, no clock.
- The decoder holds at most ``message_length_max`` bytes of a partial frame. Outside a frame, any
  byte that is not a handshake control (ENQ, ACK, NAK, EOT) is counted and dropped; an STX always
  starts a new frame, even inside one (resynchronisation on the start marker). Inside a frame
  every byte up to ETX is message: corruption is caught by the LRC, not guessed at.
- A request is ACKed only once its LRC and every field check out; anything else is NAKed, and
  after ``bad_frame_count_max`` NAKs the exchange is abandoned.
- Every handshake wait is bounded by ``handshake_step_s``, the application's result by
  ``result_s``, and ENQ/answer retransmissions by their own counts.
- A result that cannot be delivered is never dropped silently: it surfaces as
  ``ConcertAnswerUndeliveredError`` carrying the request and the result.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from functools import reduce
from operator import xor
from typing import Final

from hardware.serial.errors import (
    ConcertAnswerError,
    ConcertAnswerUndeliveredError,
    ConcertFrameError,
    ConcertFrameTooLongError,
    ConcertLrcError,
    ConcertProtocolError,
    ConcertRequestError,
    ConcertRetriesExhaustedError,
    ConcertTimeoutError,
    SerialDisconnectedError,
    SerialTimeoutError,
)
from hardware.serial.transport import SerialLink

__all__ = [
    "ANSWER_FRAME_LENGTH_FULL",
    "ANSWER_FRAME_LENGTH_SHORT",
    "AnswerFormat",
    "AuthorizationFlag",
    "ConcertExchange",
    "ConcertRequest",
    "ConcertResult",
    "ConcertRetryLimits",
    "ConcertTerminal",
    "ConcertTimeouts",
    "Control",
    "ControlByte",
    "DecodedItem",
    "DelayFlag",
    "Frame",
    "FrameDecoder",
    "RequestHandler",
    "ResultStatus",
    "TransactionType",
    "build_answer",
    "compute_lrc",
    "encode_frame",
    "parse_request",
]

_log = logging.getLogger(__name__)


class ControlByte(IntEnum):
    STX = 0x02
    ETX = 0x03
    EOT = 0x04
    ENQ = 0x05
    ACK = 0x06
    NAK = 0x15


_HANDSHAKE_BYTES: Final = frozenset({ControlByte.ENQ, ControlByte.ACK, ControlByte.NAK, ControlByte.EOT})

REQUEST_LENGTH_E: Final = 26
REQUEST_LENGTH_E_PLUS: Final = 34
ANSWER_MESSAGE_LENGTH_SHORT: Final = 25
ANSWER_MESSAGE_LENGTH_FULL: Final = 80
ANSWER_FRAME_LENGTH_SHORT: Final = ANSWER_MESSAGE_LENGTH_SHORT + 3
ANSWER_FRAME_LENGTH_FULL: Final = ANSWER_MESSAGE_LENGTH_FULL + 3
PRIVATE_LENGTH: Final = 10
REPORT_LENGTH: Final = 55
AMOUNT_MINOR_MAX: Final = 99_999_999
MESSAGE_LENGTH_MAX_DEFAULT: Final = 128

PAYMENT_MODE_CARD: Final = "1"
PAYMENT_MODE_CHEQUE: Final = "C"
PAYMENT_MODE_CUP: Final = "U"


class AnswerFormat(StrEnum):
    SHORT = "0"
    FULL = "1"


class TransactionType(StrEnum):
    DEBIT = "0"
    CREDIT = "1"
    REFUND = "2"
    AUTO = "4"


class DelayFlag(StrEnum):
    """Named by value: registers disagree on which one means "answer at the end"."""

    A010 = "A010"
    A011 = "A011"


class AuthorizationFlag(StrEnum):
    NOT_FORCED = "B010"
    FORCED = "B011"


class ResultStatus(StrEnum):
    SUCCESS = "0"
    REJECTED = "7"
    NOT_VERIFIED = "9"


# ---------------------------------------------------------------------------------------------
# Frame codec


def compute_lrc(data: bytes) -> int:
    """XOR of every byte; over ``message + ETX`` this is the Concert LRC."""
    return reduce(xor, data, 0)


def _is_printable_ascii(data: bytes) -> bool:
    return all(0x20 <= byte <= 0x7E for byte in data)


def encode_frame(message: bytes) -> bytes:
    """``STX message ETX LRC``. The message must be printable ASCII (no control bytes)."""
    if not _is_printable_ascii(message):
        raise ValueError(f"Concert messages are printable ASCII, got {message!r}")
    body = message + bytes([ControlByte.ETX])
    return bytes([ControlByte.STX]) + body + bytes([compute_lrc(body)])


@dataclass(frozen=True, slots=True)
class Control:
    """A handshake byte received outside a frame."""

    byte: ControlByte


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame whose LRC checked out; ``message`` excludes STX, ETX and LRC."""

    message: bytes


DecodedItem = Control | Frame | ConcertFrameError


class FrameDecoder:
    """Incremental decoder: bytes in, handshake controls / frames / frame errors out."""

    _IDLE: Final = 0
    _IN_MESSAGE: Final = 1
    _AWAIT_LRC: Final = 2

    def __init__(self, *, message_length_max: int = MESSAGE_LENGTH_MAX_DEFAULT) -> None:
        assert message_length_max >= 1
        self._message_length_max = message_length_max
        self._state = self._IDLE
        self._message = bytearray()
        self.skipped_byte_count = 0

    def feed(self, data: bytes) -> list[DecodedItem]:
        items: list[DecodedItem] = []
        for byte in data:
            if self._state == self._IDLE:
                if byte == ControlByte.STX:
                    self._start_frame()
                elif byte in _HANDSHAKE_BYTES:
                    items.append(Control(ControlByte(byte)))
                else:
                    self.skipped_byte_count += 1
            elif self._state == self._IN_MESSAGE:
                if byte == ControlByte.STX:
                    # A sender that restarts mid-frame wins over the half frame we hold.
                    self.skipped_byte_count += 1 + len(self._message)
                    self._start_frame()
                elif byte == ControlByte.ETX:
                    self._state = self._AWAIT_LRC
                elif len(self._message) >= self._message_length_max:
                    items.append(ConcertFrameTooLongError(f"no ETX within {self._message_length_max} bytes"))
                    self.skipped_byte_count += 1 + len(self._message)
                    self._message.clear()
                    self._state = self._IDLE
                else:
                    self._message.append(byte)
            else:
                message = bytes(self._message)
                lrc_expected = compute_lrc(message + bytes([ControlByte.ETX]))
                if byte == lrc_expected:
                    items.append(Frame(message))
                else:
                    items.append(ConcertLrcError(lrc_expected, byte))
                self._message.clear()
                self._state = self._IDLE
        return items

    def _start_frame(self) -> None:
        self._message.clear()
        self._state = self._IN_MESSAGE


# ---------------------------------------------------------------------------------------------
# Messages


@dataclass(frozen=True, slots=True)
class ConcertRequest:
    """A payment request from the register. ``delay``/``authorization`` are None in protocol E."""

    pos_number: str
    amount_minor: int
    answer_format: AnswerFormat
    payment_mode: str
    transaction_type: TransactionType
    currency_numeric: str
    private: str
    delay: DelayFlag | None
    authorization: AuthorizationFlag | None


@dataclass(frozen=True, slots=True)
class ConcertResult:
    """The application's verdict. ``amount_minor=None`` echoes the requested amount.

    ``private`` (at most 10 characters, e.g. a transaction reference) goes in every answer;
    ``report`` (at most 55) only in full answers.
    """

    status: ResultStatus
    private: str = ""
    report: str = ""
    amount_minor: int | None = None


def _digits(text: str, field: str) -> str:
    if not (text.isascii() and text.isdigit()):
        raise ConcertRequestError(f"expected digits, got {text!r}", field=field)
    return text


def parse_request(message: bytes) -> ConcertRequest:
    """Parse a request message (frame content); raise ``ConcertRequestError`` naming the field."""
    if len(message) not in (REQUEST_LENGTH_E, REQUEST_LENGTH_E_PLUS):
        raise ConcertRequestError(
            f"length {len(message)}, expected {REQUEST_LENGTH_E} (E) or {REQUEST_LENGTH_E_PLUS} (E+)",
            field="message",
        )
    if not _is_printable_ascii(message):
        raise ConcertRequestError("not printable ASCII", field="message")
    text = message.decode("ascii")
    try:
        answer_format = AnswerFormat(text[10])
    except ValueError:
        raise ConcertRequestError(f"unknown value {text[10]!r}", field="answer_flag") from None
    try:
        transaction_type = TransactionType(text[12])
    except ValueError:
        raise ConcertRequestError(f"unknown value {text[12]!r}", field="transaction_type") from None
    payment_mode = text[11]
    if not payment_mode.isalnum():
        raise ConcertRequestError(f"unknown value {payment_mode!r}", field="payment_mode")
    delay: DelayFlag | None = None
    authorization: AuthorizationFlag | None = None
    if len(text) == REQUEST_LENGTH_E_PLUS:
        try:
            delay = DelayFlag(text[26:30])
        except ValueError:
            raise ConcertRequestError(f"unknown value {text[26:30]!r}", field="delay") from None
        try:
            authorization = AuthorizationFlag(text[30:34])
        except ValueError:
            raise ConcertRequestError(f"unknown value {text[30:34]!r}", field="authorization") from None
    return ConcertRequest(
        pos_number=_digits(text[0:2], "pos_number"),
        amount_minor=int(_digits(text[2:10], "amount")),
        answer_format=answer_format,
        payment_mode=payment_mode,
        transaction_type=transaction_type,
        currency_numeric=_digits(text[13:16], "currency_numeric"),
        private=text[16:26],
        delay=delay,
        authorization=authorization,
    )


def _answer_field(value: str, length: int, field: str) -> str:
    if len(value) > length or not value.isascii() or not _is_printable_ascii(value.encode("ascii")):
        raise ConcertAnswerError(f"{field} must be at most {length} printable ASCII characters, got {value!r}")
    return value.ljust(length)


def build_answer(request: ConcertRequest, result: ConcertResult) -> bytes:
    """The answer message (unframed) for ``request``; its length follows the answer flag."""
    amount_minor = request.amount_minor if result.amount_minor is None else result.amount_minor
    if not 0 <= amount_minor <= AMOUNT_MINOR_MAX:
        raise ConcertAnswerError(f"amount_minor out of range: {amount_minor}")
    report = ""
    if request.answer_format is AnswerFormat.FULL:
        report = _answer_field(result.report, REPORT_LENGTH, "report")
    message = (
        request.pos_number
        + result.status.value
        + f"{amount_minor:08d}"
        + request.payment_mode
        + report
        + request.currency_numeric
        + _answer_field(result.private, PRIVATE_LENGTH, "private")
    )
    expected_length = (
        ANSWER_MESSAGE_LENGTH_FULL if request.answer_format is AnswerFormat.FULL else ANSWER_MESSAGE_LENGTH_SHORT
    )
    assert len(message) == expected_length, (len(message), expected_length)
    return message.encode("ascii")


# ---------------------------------------------------------------------------------------------
# Session


RequestHandler = Callable[[ConcertRequest], Awaitable[ConcertResult]]


@dataclass(frozen=True, slots=True)
class ConcertTimeouts:
    handshake_step_s: float = 3.0
    """Each wait for ACK/NAK, the request frame or EOT."""
    result_s: float = 120.0
    """The application's handler, from the request's EOT to its result; cancelled when it expires."""
    idle_s: float = 30.0
    """``serve_one`` returns None if no ENQ arrives within this time."""

    def __post_init__(self) -> None:
        if min(self.handshake_step_s, self.result_s, self.idle_s) <= 0:
            raise ValueError(f"Concert timeouts must be positive: {self}")


@dataclass(frozen=True, slots=True)
class ConcertRetryLimits:
    bad_frame_count_max: int = 3
    """Damaged or invalid request frames NAKed before the exchange is abandoned."""
    enq_attempt_count_max: int = 3
    """ENQs sent to open the answer exchange."""
    answer_send_count_max: int = 3
    """Transmissions of the answer frame (after NAK or a missing ACK)."""

    def __post_init__(self) -> None:
        if min(self.bad_frame_count_max, self.enq_attempt_count_max, self.answer_send_count_max) < 1:
            raise ValueError(f"Concert retry limits must be at least 1: {self}")


@dataclass(frozen=True, slots=True)
class ConcertExchange:
    request: ConcertRequest
    result: ConcertResult


_PENDING_ITEM_COUNT_MAX: Final = 16 * 1024


class ConcertTerminal:
    """Answers Concert requests on one serial link, one exchange at a time."""

    def __init__(
        self,
        link: SerialLink,
        handler: RequestHandler,
        *,
        timeouts: ConcertTimeouts = ConcertTimeouts(),
        retry_limits: ConcertRetryLimits = ConcertRetryLimits(),
        message_length_max: int = MESSAGE_LENGTH_MAX_DEFAULT,
    ) -> None:
        self._link = link
        self._handler = handler
        self._timeouts = timeouts
        self._limits = retry_limits
        self._decoder = FrameDecoder(message_length_max=message_length_max)
        self._pending: deque[DecodedItem] = deque()

    @property
    def skipped_byte_count(self) -> int:
        """Bytes dropped as line noise since the terminal started."""
        return self._decoder.skipped_byte_count

    async def serve_forever(self) -> None:
        """Answer exchanges until cancelled.

        A failure that leaves no result behind (bad frames, handshake or handler timeouts,
        protocol violations) is logged and the terminal waits for the next ENQ.
        ``ConcertAnswerUndeliveredError`` (a result exists and the caller owns it) and
        ``SerialDisconnectedError`` (the port is gone; reopen it) end the loop.
        """
        while True:
            try:
                await self.serve_one()
            except ConcertAnswerUndeliveredError:
                raise
            except (ConcertFrameError, ConcertProtocolError, ConcertRetriesExhaustedError, ConcertTimeoutError) as exc:
                _log.warning("Concert exchange abandoned (%s): %s", exc.code, exc)

    async def serve_one(self) -> ConcertExchange | None:
        """Run one exchange; None if the register sent no ENQ within ``idle_s``."""
        request = await self._receive_request()
        if request is None:
            return None
        result = await self._compute_result(request)
        try:
            frame = encode_frame(build_answer(request, result))
        except ConcertAnswerError as exc:
            raise ConcertAnswerUndeliveredError(str(exc), request=request, result=result) from exc
        await self._deliver_answer(frame, request, result)
        return ConcertExchange(request, result)

    # -- request phase ---------------------------------------------------------------------

    async def _receive_request(self) -> ConcertRequest | None:
        idle_s = self._timeouts.idle_s
        step_s = self._timeouts.handshake_step_s
        deadline = self._deadline(idle_s)
        while True:
            try:
                item = await self._read_item(deadline, "ENQ from the register", idle_s)
            except ConcertTimeoutError:
                return None
            if item == Control(ControlByte.ENQ):
                break
            _log.debug("ignoring %r while idle", item)
        await self._send_control(ControlByte.ACK)

        bad_frame_count = 0
        deadline = self._deadline(step_s)
        while True:
            item = await self._read_item(deadline, "the request frame", step_s)
            error: ConcertFrameError
            if isinstance(item, Control):
                if item.byte is ControlByte.ENQ:
                    # The register did not see our ACK and asks again.
                    await self._send_control(ControlByte.ACK)
                    deadline = self._deadline(step_s)
                elif item.byte is ControlByte.EOT:
                    raise ConcertProtocolError("register sent EOT before its request frame")
                continue
            if isinstance(item, Frame):
                try:
                    request = parse_request(item.message)
                except ConcertRequestError as exc:
                    error = exc
                else:
                    request_message = item.message
                    break
            else:
                error = item
            bad_frame_count += 1
            _log.info("NAK %d/%d: %s", bad_frame_count, self._limits.bad_frame_count_max, error)
            await self._send_control(ControlByte.NAK)
            if bad_frame_count >= self._limits.bad_frame_count_max:
                raise ConcertRetriesExhaustedError(f"{bad_frame_count} bad request frames; last: {error}") from error
            deadline = self._deadline(step_s)
        await self._send_control(ControlByte.ACK)
        await self._await_request_end(request_message)
        return request

    async def _await_request_end(self, request_message: bytes) -> None:
        step_s = self._timeouts.handshake_step_s
        deadline = self._deadline(step_s)
        while True:
            try:
                item = await self._read_item(deadline, "EOT after the request", step_s)
            except ConcertTimeoutError:
                # Some registers never send it; the request itself was acknowledged.
                _log.info("no EOT after the request within %g s; continuing", step_s)
                return
            if item == Control(ControlByte.EOT):
                return
            if item == Frame(request_message):
                # Our ACK was lost and the register resent the same frame.
                await self._send_control(ControlByte.ACK)

    async def _compute_result(self, request: ConcertRequest) -> ConcertResult:
        result_s = self._timeouts.result_s
        try:
            async with asyncio.timeout(result_s) as scope:
                return await self._handler(request)
        except TimeoutError:
            if scope.expired():
                raise ConcertTimeoutError("the application's result", result_s) from None
            raise

    # -- answer phase ----------------------------------------------------------------------

    async def _deliver_answer(self, frame: bytes, request: ConcertRequest, result: ConcertResult) -> None:
        # Whatever the register sent while the handler ran belongs to no question we ask now.
        self._pending.clear()
        try:
            for _ in range(self._limits.enq_attempt_count_max):
                await self._send_control(ControlByte.ENQ)
                if await self._await_reply("ACK to ENQ") is ControlByte.ACK:
                    break
            else:
                raise ConcertAnswerUndeliveredError(
                    f"register did not acknowledge {self._limits.enq_attempt_count_max} ENQs",
                    request=request,
                    result=result,
                )
            for _ in range(self._limits.answer_send_count_max):
                await self._link.write(frame, timeout_s=self._timeouts.handshake_step_s)
                if await self._await_reply("ACK to the answer") is ControlByte.ACK:
                    break
            else:
                raise ConcertAnswerUndeliveredError(
                    f"register did not acknowledge the answer after {self._limits.answer_send_count_max} sends",
                    request=request,
                    result=result,
                )
            await self._send_control(ControlByte.EOT)
        except (SerialTimeoutError, SerialDisconnectedError) as exc:
            raise ConcertAnswerUndeliveredError(str(exc), request=request, result=result) from exc

    async def _await_reply(self, step: str) -> ControlByte | None:
        """ACK or NAK from the register; None when the step times out."""
        step_s = self._timeouts.handshake_step_s
        deadline = self._deadline(step_s)
        while True:
            try:
                item = await self._read_item(deadline, step, step_s)
            except ConcertTimeoutError:
                _log.info("no reply (%s) within %g s", step, step_s)
                return None
            if isinstance(item, Control) and item.byte in (ControlByte.ACK, ControlByte.NAK):
                return item.byte
            _log.debug("ignoring %r while waiting for %s", item, step)

    # -- plumbing --------------------------------------------------------------------------

    @staticmethod
    def _deadline(timeout_s: float) -> float:
        return asyncio.get_running_loop().time() + timeout_s

    async def _read_item(self, deadline: float, step: str, timeout_s: float) -> DecodedItem:
        loop = asyncio.get_running_loop()
        while not self._pending:
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                raise ConcertTimeoutError(step, timeout_s)
            try:
                data = await self._link.read_some(timeout_s=remaining_s)
            except SerialTimeoutError:
                raise ConcertTimeoutError(step, timeout_s) from None
            self._pending.extend(self._decoder.feed(data))
            assert len(self._pending) <= _PENDING_ITEM_COUNT_MAX
        return self._pending.popleft()

    async def _send_control(self, byte: ControlByte) -> None:
        await self._link.write(bytes([byte]), timeout_s=self._timeouts.handshake_step_s)
