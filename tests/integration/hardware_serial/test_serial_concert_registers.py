"""Our Concert terminal answering real, unmodified register libraries from PyPI over ptys.

Each register library is blocking pyserial code: it runs in a thread on one end of a null-modem
pty pair while the async terminal serves the other end. The terminal's port is opened before
the register starts, since opening a port flushes whatever is already waiting in it.
"""

from __future__ import annotations

import asyncio
import json
import termios
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import serial
from pypostelium import Driver  # type: ignore[import-untyped]
from telium import Telium, TeliumAsk, TeliumNativeSerial, TeliumResponse  # type: ignore[import-untyped]

from hardware.serial.concert import (
    AnswerFormat,
    ConcertExchange,
    ConcertRequest,
    ConcertResult,
    ConcertTerminal,
    ConcertTimeouts,
    DelayFlag,
    ResultStatus,
    TransactionType,
)
from hardware.serial.transport import SerialSettings, open_serial
from hardware.sim.pty import PtyNullModem, open_raw_pty

T = TypeVar("T")

REGISTER_THREAD_JOIN_S = 8.0  # longer than any blocking timeout inside the register libraries


async def approve(request: ConcertRequest) -> ConcertResult:
    return ConcertResult(ResultStatus.SUCCESS, private="TX00000042", report="WALLET 0042")


async def reject(request: ConcertRequest) -> ConcertResult:
    return ConcertResult(ResultStatus.REJECTED, private="DECLINED")


async def serve_against(
    settings: SerialSettings,
    handler: Callable[[ConcertRequest], Any],
    register: Callable[[], T],
) -> tuple[ConcertExchange | None, T]:
    """One terminal exchange against ``register`` running in a thread."""
    link = await open_serial(settings)
    try:
        terminal = ConcertTerminal(link, handler, timeouts=ConcertTimeouts(idle_s=4.0))
        register_task = asyncio.create_task(asyncio.to_thread(register))
        try:
            exchange = await terminal.serve_one()
        finally:
            # The thread cannot be cancelled; wait for it so nothing outlives the test.
            await asyncio.wait({register_task}, timeout=REGISTER_THREAD_JOIN_S)
        return exchange, register_task.result()
    finally:
        await link.close()


def telium_payment(path: str, ask: TeliumAsk, *, native_serial: bool = False) -> TeliumResponse | None:
    device = TeliumNativeSerial(path, timeout=2) if native_serial else Telium(path, timeout=2)
    try:
        assert device.ask(ask), "terminal did not acknowledge the request"
        response: TeliumResponse | None = device.verify(ask, waiting_timeout=5)
        return response
    finally:
        device.close()


async def test_pytelium_manager_gets_success_with_amount(null_modem: PtyNullModem) -> None:
    ask = TeliumAsk.new_payment(12.5, target_currency="EUR", collect_payment_source_info=True)
    exchange, response = await serve_against(
        SerialSettings.usb_cdc(null_modem.path_b), approve, lambda: telium_payment(null_modem.path_a, ask)
    )
    assert exchange is not None
    assert exchange.request.amount_minor == 1250
    assert exchange.request.answer_format is AnswerFormat.FULL
    assert exchange.request.delay is DelayFlag.A010
    assert response is not None
    assert response.has_succeeded
    assert response.amount == 12.5
    assert response.transaction_id == "TX00000042"
    assert response.repport.strip() == "WALLET 0042"
    assert response.currency_numeric == "978"


async def test_pytelium_manager_gets_rejection_short_answer(null_modem: PtyNullModem) -> None:
    ask = TeliumAsk.new_payment(
        3.2, payment_mode="refund", target_currency="USD", collect_payment_source_info=False
    )
    exchange, response = await serve_against(
        SerialSettings.usb_cdc(null_modem.path_b), reject, lambda: telium_payment(null_modem.path_a, ask)
    )
    assert exchange is not None and exchange.request.transaction_type is TransactionType.REFUND
    assert response is not None
    assert not response.has_succeeded
    assert response.transaction_result == 7
    assert response.amount == 3.2
    assert response.currency_numeric == "840"


def pty_accepts_parity() -> bool:
    """Some kernels (gVisor-like sandboxes) refuse PARENB on ptys; real UARTs do not."""
    with open_raw_pty() as pty:
        try:
            port = serial.Serial(pty.slave_path, 9600, bytesize=7, parity="E")
        except (serial.SerialException, termios.error):
            return False
        try:
            port.timeout = 0  # forces a second tcsetattr, where such kernels fail
        except (serial.SerialException, termios.error):
            return False
        finally:
            port.close()
    return True


async def test_pytelium_manager_native_serial_7e1(null_modem: PtyNullModem) -> None:
    if not pty_accepts_parity():
        pytest.skip("this kernel's ptys refuse parity, so 7E1 cannot run over a pty here")
    ask = TeliumAsk.new_payment(99.99, target_currency="EUR", collect_payment_source_info=False)
    exchange, response = await serve_against(
        SerialSettings.legacy_rs232(null_modem.path_b),
        approve,
        lambda: telium_payment(null_modem.path_a, ask, native_serial=True),
    )
    assert exchange is not None and exchange.request.amount_minor == 9999
    assert response is not None and response.has_succeeded and response.amount == 99.99


class RecordingPostelium(Driver):  # type: ignore[misc]
    """pypostelium parses the terminal's answer and then drops it (``transaction_start`` only
    reports that the request was accepted); this subclass keeps the parsed answer for the test,
    leaving every byte on the wire to the library."""

    answers: list[dict[str, str]]

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.answers = []

    def parse_terminal_answer(self, real_msg: str, data: dict[str, str]) -> dict[str, str]:
        answer: dict[str, str] = super().parse_terminal_answer(real_msg, data)
        self.answers.append(answer)
        return answer


def postelium_payment(path: str, amount: float) -> tuple[bool, list[dict[str, str]]]:
    driver = RecordingPostelium({"telium_terminal_device_name": path})
    accepted = driver.transaction_start(json.dumps({"amount": amount, "payment_mode": "card", "currency_iso": "EUR"}))
    return bool(accepted), driver.answers


async def test_pypostelium_gets_success_with_amount(null_modem: PtyNullModem) -> None:
    exchange, (accepted, answers) = await serve_against(
        SerialSettings.usb_cdc(null_modem.path_b), approve, lambda: postelium_payment(null_modem.path_a, 25.0)
    )
    assert exchange is not None
    assert exchange.request.delay is DelayFlag.A011  # pypostelium's value, answered at the end anyway
    assert accepted
    assert len(answers) == 1
    assert answers[0]["transaction_result"] == "0"
    assert answers[0]["amount_msg"] == "00002500"


async def test_pypostelium_gets_rejection(null_modem: PtyNullModem) -> None:
    exchange, (accepted, answers) = await serve_against(
        SerialSettings.usb_cdc(null_modem.path_b), reject, lambda: postelium_payment(null_modem.path_a, 4.1)
    )
    assert exchange is not None
    assert accepted  # pypostelium only reports that the request was taken
    assert [answer["transaction_result"] for answer in answers] == ["7"]
    assert answers[0]["amount_msg"] == "00000410"


async def test_serve_forever_answers_consecutive_registers(null_modem: PtyNullModem) -> None:
    amounts = [1.5, 2.25]
    seen: list[int] = []
    served = asyncio.Event()

    async def handler(request: ConcertRequest) -> ConcertResult:
        seen.append(request.amount_minor)
        if len(seen) == len(amounts):
            served.set()
        return ConcertResult(ResultStatus.SUCCESS)

    def registers() -> list[bool]:
        results = []
        for amount in amounts:
            ask = TeliumAsk.new_payment(amount, target_currency="EUR", collect_payment_source_info=False)
            response = telium_payment(null_modem.path_a, ask)
            results.append(response is not None and response.has_succeeded)
        return results

    link = await open_serial(SerialSettings.usb_cdc(null_modem.path_b))
    terminal = ConcertTerminal(link, handler)
    serving = asyncio.create_task(terminal.serve_forever())
    register_task = asyncio.create_task(asyncio.to_thread(registers))
    try:
        async with asyncio.timeout(REGISTER_THREAD_JOIN_S):
            assert await register_task == [True, True]
            await served.wait()
    finally:
        serving.cancel()
        await asyncio.wait({serving, register_task}, timeout=REGISTER_THREAD_JOIN_S)
        await link.close()
    assert seen == [150, 225]
