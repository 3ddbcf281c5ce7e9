"""The cash-register link: the agent answers Concert requests as the payment terminal.

Each debit request runs one sale (``CheckoutRunner.sell``); the answer carries the status, the
amount, the sale number as private data and, in full answers, the method and payment id as report.
A credit (or refund) request names a sale by that number in its private data and refunds the
requested amount of that sale's payment (``pos_agent.refunds``); its answer carries the refund id.

How a sale ends without a delivered answer, and what the agent does (money follows the register):
- The register stops waiting (its own timeout, or it was switched off): the terminal's ENQs or
  the answer go unacknowledged -> ``ConcertAnswerUndeliveredError`` -> the sale is compensated
  (payments reversed, offline taps voided) and marked voided.
- The sale runs past ``result_s``: the terminal cancels the handler; the sale ends as cancelled
  (compensated) and no answer is sent.
- The cashier cancels at the agent (``CheckoutRunner.cancel``, SIGUSR1 in ``pos-agent run``): the
  sale is compensated and the register gets a rejection.
The Concert terminal does not read the line while a sale runs, so a register's new ENQ during a
sale is seen only after it; registers that cancel by timing out are covered above.

Invariants:
- A sale is marked ``answered`` in the journal only after the register acknowledged the answer.
- Only debit, credit and refund requests in the configured currency are served; others are
  rejected at once.
- A refund's operation is marked answered only after the register acknowledged its answer; until
  then the register's repeated request is the same refund (``pos_agent.refunds``).
- A lost serial port is re-opened with capped backoff, forever, until the agent stops.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Final

from hardware.serial.concert import (
    ConcertRequest,
    ConcertResult,
    ConcertTerminal,
    ConcertTimeouts,
    ResultStatus,
    TransactionType,
)
from hardware.serial.errors import (
    ConcertAnswerUndeliveredError,
    ConcertError,
    SerialDisconnectedError,
    SerialOpenError,
)
from hardware.serial.transport import open_serial
from pos_agent.checkout import CheckoutRunner, SaleOutcome, compensate_sale
from pos_agent.devices import serial_settings
from pos_agent.errors import GatewayError, JournalError
from pos_agent.gateway_client import GatewayClient
from pos_agent.journal import AsyncJournal, Journal
from pos_agent.refunds import CounterRefunds, RefundOutcome
from pos_agent.settings import RegisterSettings, SaleSettings

__all__ = ["RegisterService", "concert_result", "refund_result"]

log = logging.getLogger(__name__)

IDLE_S: Final = 30.0
REOPEN_BACKOFF_FIRST_S: Final = 0.2
REOPEN_BACKOFF_MAX_S: Final = 5.0
REPORT_LENGTH: Final = 55
PRIVATE_LENGTH: Final = 10


def concert_result(outcome: SaleOutcome) -> ConcertResult:
    """The Concert answer for a finished sale (pure)."""
    private = outcome.reference.rsplit("-", 1)[-1][-PRIVATE_LENGTH:]
    if outcome.approved:
        method = outcome.method.value if outcome.method else ""
        report = f"{method} {outcome.payment_id or outcome.terminal_transaction_id or ''}"
        return ConcertResult(ResultStatus.SUCCESS, private=private, report=_ascii(report)[:REPORT_LENGTH])
    return ConcertResult(ResultStatus.REJECTED, private=private, report=_ascii(outcome.reason or "")[:REPORT_LENGTH])


def refund_result(sale_number: str, outcome: RefundOutcome) -> ConcertResult:
    """The Concert answer to a refund request (pure)."""
    status = ResultStatus.SUCCESS if outcome.approved else ResultStatus.REJECTED
    report = f"refund {outcome.reason}" if outcome.approved else outcome.reason
    return ConcertResult(status, private=sale_number[-PRIVATE_LENGTH:], report=_ascii(report)[:REPORT_LENGTH])


def _ascii(text: str) -> str:
    return "".join(char if 0x20 <= ord(char) <= 0x7E else "?" for char in text)


class RegisterService:
    def __init__(
        self,
        settings: RegisterSettings,
        sale_settings: SaleSettings,
        runner: CheckoutRunner,
        client: GatewayClient,
        journal: AsyncJournal,
        refunds: CounterRefunds,
    ) -> None:
        self._settings = settings
        self._currency_numeric = f"{sale_settings.currency_numeric:03d}"
        self._runner = runner
        self._client = client
        self._journal = journal
        self._timeouts = ConcertTimeouts(handshake_step_s=settings.handshake_step_s, result_s=settings.result_s,
                                         idle_s=IDLE_S)
        self._refunds = refunds
        self._undelivered_reference: str | None = None  # decided, answer not yet acknowledged
        self._unacknowledged_refund_key: str | None = None  # refunded, answer not yet acknowledged

    async def run_forever(self) -> None:
        delay_s = REOPEN_BACKOFF_FIRST_S
        port = serial_settings(self._settings)
        while True:
            try:
                link = await open_serial(port)
            except SerialOpenError as exc:
                log.warning("register port unavailable (%s); retrying in %.1f s", exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, REOPEN_BACKOFF_MAX_S)
                continue
            delay_s = REOPEN_BACKOFF_FIRST_S
            log.info("register link open on %s", port.url)
            try:
                await self._serve(ConcertTerminal(link, self._handle, timeouts=self._timeouts))
            except SerialDisconnectedError as exc:
                log.warning("register link lost: %s", exc)
            finally:
                await link.close()

    async def _serve(self, terminal: ConcertTerminal) -> None:
        while True:
            try:
                exchange = await terminal.serve_one()
            except ConcertAnswerUndeliveredError as exc:
                log.warning("answer to the register undelivered (%s): voiding the sale", exc)
                self._unacknowledged_refund_key = None  # the register asks again: the same refund
                await self._void_undelivered()
                continue
            except (ConcertError, SerialDisconnectedError) as exc:
                self._unacknowledged_refund_key = None
                if self._undelivered_reference is not None:
                    await self._void_undelivered()
                if isinstance(exc, SerialDisconnectedError):
                    raise
                log.warning("register exchange abandoned (%s): %s", exc.code, exc)
                continue
            if exchange is not None:
                await self._acknowledged()

    async def _acknowledged(self) -> None:
        """The register acknowledged the answer: the sale (or refund) is the register's now."""
        reference, self._undelivered_reference = self._undelivered_reference, None
        refund_key, self._unacknowledged_refund_key = self._unacknowledged_refund_key, None
        try:
            if reference is not None:
                await self._journal.call(functools.partial(Journal.sale_answered, reference=reference))
            if refund_key is not None:
                await self._refunds.mark_answered(refund_key)
        except JournalError as exc:  # the register has its answer; a restart would void it
            log.error("answer to the register acknowledged but not journalled as such: %s", exc)

    async def _handle(self, request: ConcertRequest) -> ConcertResult:
        if request.transaction_type not in (TransactionType.DEBIT, TransactionType.CREDIT, TransactionType.REFUND):
            log.info("register asked for %s: only debits and refunds are served", request.transaction_type.name)
            return ConcertResult(ResultStatus.REJECTED, report="only debit and refund are supported")
        if request.currency_numeric != self._currency_numeric or request.amount_minor <= 0:
            log.info("register asked for %d in currency %s: refused", request.amount_minor, request.currency_numeric)
            return ConcertResult(ResultStatus.REJECTED, report="currency or amount refused")
        if request.transaction_type is not TransactionType.DEBIT:
            refund = await self._refunds.refund(request.private, request.amount_minor)
            log.info("register asked to refund %d of sale %r: %s", request.amount_minor, request.private.strip(),
                     refund.reason)
            self._unacknowledged_refund_key = refund.key
            return refund_result(request.private.strip(), refund)
        try:
            outcome = await self._runner.sell(request.amount_minor)
        except asyncio.CancelledError:  # past result_s: settled as cancelled, no answer will go out
            self._undelivered_reference = self._runner.last_reference
            raise
        self._undelivered_reference = outcome.reference
        return concert_result(outcome)

    async def _void_undelivered(self) -> None:
        reference, self._undelivered_reference = self._undelivered_reference, None
        if reference is None:
            return
        try:
            await compensate_sale(self._client, self._journal, reference, None, void_offline=True)
        except (GatewayError, JournalError) as exc:
            log.warning("sale %s: compensation deferred to the forwarder: %s", reference, exc)
        await self._journal.call(functools.partial(Journal.sale_voided, reference=reference))
