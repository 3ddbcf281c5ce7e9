"""The async driver of one sale: the devices wired to the gateway client, run by the state machine.

One sale: the register asks for an amount; the agent creates the sale's payment and its dynamic
QR code, shows the amount, arms the NFC reader, listens to the scanner for a pay-code and polls
the payment. The first of those to complete wins; the others are disarmed. A tap or a pay-code
settles that same payment, so a sale leaves one payment in the merchant's list. The register gets
success with the amount, or a rejection; a receipt is printed (and the QR code, on a slip, only
when ``devices.printer.print_qr_slip`` is set).

Invariants:
- Money and the register agree. When the register is told "approved", exactly one payment of the
  sale holds money (the winner) and every other one is reversed or queued for reversal in the
  journal; when it is told "rejected" (declined, cancelled, timed out, unknown), every payment of
  the sale is reversed or queued, and its offline taps are voided.
- Every gateway POST's key is journalled before it is sent (``pos_agent.journal``). Writes with
  no request between them share one commit (one fsync): the sale and its payment's key; the
  payment's answer and its QR code's key.
- Journal calls bind their values (``functools.partial``), never a closure over locals: a call
  that timed out still runs later on the journal's thread, when an ``except`` block's exception
  name is gone and a loop variable may name the next item.
- A tap is approved offline only when the gateway was definitely unreachable for that very tap,
  the device was never refused by the gateway (revoked), its ATC is higher than every ATC the
  journal saw for that token (online or offline), and the offline limits allow it; QR and
  pay-codes always need the gateway.
- A tap's ATC is journalled before the tap is sent online (``Journal.record_tap``).
- A wallet's pending offline taps are forwarded before its new online tap (ATC order).
- The whole sale is bounded by ``sale_timeout_s``, and each gateway call by its share of what is
  left of it (``resolution.CALL_SHARE``), so the status queries after an unknown outcome fit
  before the deadline; the clean-up after it by ``cleanup_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from hardware.nfc import CardError, ReaderBusy, ReaderUnavailable, TapCancelled, TapResult, TapTimeout
from hardware.serial.printer import Receipt, ReceiptItem

from pos_agent.checkout.resolution import CALL_SHARE, compensate_sale, find_outcome
from pos_agent.checkout.state import (
    Authorised,
    CancelRequested,
    CheckoutState,
    CodeScanned,
    ConfirmationRequired,
    Event,
    Method,
    OfflineApproved,
    PaymentOpened,
    PaymentUnavailable,
    Phase,
    QrPaid,
    Refused,
    TapRead,
    Unknown,
    build_receipt,
    is_pay_code,
    tap_body,
    transition,
)
from pos_agent.currency import format_amount
from pos_agent.devices import CodeSource, Display, Printer, TapSource
from pos_agent.errors import GatewayError, GatewayRejected, GatewayUnreachable, JournalError, OutcomeUnknown
from pos_agent.gateway_client import GatewayClient, Payment
from pos_agent.journal import AsyncJournal, Journal, OpKind, OpState
from pos_agent.settings import Settings

__all__ = ["CheckoutDevices", "CheckoutRunner", "SaleOutcome"]

log = logging.getLogger(__name__)

TAP_READ_TIMEOUT_MAX_S: Final = 300.0
READER_RETRY_PAUSE_S: Final = 0.5
TASK_STOP_TIMEOUT_S: Final = 2.0
DRAIN_TIMEOUT_S: Final = 5.0
DEADLINE_MARGIN_S: Final = 0.25
"""Kept free before the sale deadline: the last status query ends before the deadline cancels it."""
PAYMENT_NOT_PAYABLE: Final = "payment_not_payable"


@dataclass(frozen=True, slots=True)
class SaleOutcome:
    reference: str
    amount_minor: int
    approved: bool
    method: Method | None
    payment_id: str | None
    terminal_transaction_id: str | None
    reason: str | None


@dataclass(slots=True)
class CheckoutDevices:
    reader: TapSource | None = None
    codes: CodeSource | None = None
    display: Display | None = None
    printer: Printer | None = None


Drain = Callable[[str], Awaitable[None]]


class _Sale:
    """One sale's mutable shell around the pure state."""

    def __init__(self, reference: str, amount_minor: int, timeout_s: float, payment_key: str) -> None:
        self.reference = reference
        self.amount_minor = amount_minor
        self.state = CheckoutState()
        self.cancelled = asyncio.Event()
        self.cancel_reason = "cancelled"
        self.qr_payload: str | None = None
        self.payment_key = payment_key
        """The idempotency key of the sale's payment, journalled with the sale (``_open_sale``)."""
        self.attempt_count = 0
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + timeout_s

    def apply(self, event: Event) -> None:
        before = self.state.phase
        self.state = transition(self.state, event)
        log.info("sale %s: %s -> %s on %s", self.reference, before, self.state.phase, type(event).__name__)

    def next_reference(self, kind: str) -> str:
        self.attempt_count += 1
        return f"{self.reference}-{kind}{self.attempt_count}"

    def remaining_s(self) -> float:
        """Time left before the sale deadline, less the margin its end needs."""
        return self._deadline - self._loop.time() - DEADLINE_MARGIN_S

    def call_budget_s(self) -> float:
        return max(self.remaining_s() * CALL_SHARE, 0.0)


class CheckoutRunner:
    """Runs one sale at a time for the register; ``cancel`` ends the current one."""

    def __init__(
        self,
        settings: Settings,
        client: GatewayClient,
        journal: AsyncJournal,
        devices: CheckoutDevices,
        *,
        drain_token: Drain | None = None,
        on_offline_approval: Callable[[], None] | None = None,
        now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self._settings = settings
        self._sale_settings = settings.sale
        self._client = client
        self._journal = journal
        self._devices = devices
        self._drain_token = drain_token
        self._on_offline_approval = on_offline_approval
        self._now = now
        self._current: _Sale | None = None
        self.last_reference: str | None = None
        """The reference of the sale running now or last run."""

    def cancel(self, reason: str = "cancelled_by_cashier") -> bool:
        """Cancel the sale in progress (the register is told "rejected"); False if none."""
        sale = self._current
        if sale is None or sale.state.final:
            return False
        sale.cancel_reason = reason
        sale.cancelled.set()
        return True

    async def sell(self, amount_minor: int) -> SaleOutcome:
        if self._current is not None:
            raise RuntimeError("one sale at a time")
        s = self._sale_settings
        payment_key = self._new_key()
        reference = await self._journal.call(functools.partial(
            _open_sale, label=self._settings.agent.terminal_label, amount_minor=amount_minor,
            currency=s.currency, payment_key=payment_key))
        sale = _Sale(reference, amount_minor, s.sale_timeout_s, payment_key)
        self._current = sale
        self.last_reference = reference
        log.info("sale %s: %s requested", reference, format_amount(amount_minor, s.currency))
        try:
            try:
                async with asyncio.timeout(s.sale_timeout_s):
                    await self._drive(sale)
            except TimeoutError:
                if not sale.state.final:
                    sale.apply(CancelRequested("sale_timeout"))
            except (GatewayError, JournalError) as exc:  # failures the drive did not map (auth, disk)
                log.error("sale %s: %s", reference, exc)
                if not sale.state.final:
                    sale.apply(CancelRequested(exc.code))
            except Exception:  # a bug must end in a rejected, compensated sale, not a dead counter
                log.exception("sale %s: unexpected failure", reference)
                if not sale.state.final:
                    sale.apply(CancelRequested("agent_error"))
        except asyncio.CancelledError:
            if not sale.state.final:
                sale.apply(CancelRequested("agent_stopping"))
            await self._settle(sale)
            raise
        finally:
            self._current = None
        await self._settle(sale)
        return self._outcome(sale)

    # -- the drive ---------------------------------------------------------------------------

    async def _drive(self, sale: _Sale) -> None:
        s = self._sale_settings
        amount_text = format_amount(sale.amount_minor, s.currency)
        await self._show("TOTAL", amount_text.rjust(20))
        await self._open_payment(sale)
        if sale.qr_payload is not None:
            await self._show(amount_text, "Tap / scan QR")
            await self._print_qr_slip(sale, amount_text)
        elif sale.state.online:
            await self._show(amount_text, "Tap or show code")
        else:
            await self._show(amount_text, "Offline: tap only")
        if self._devices.codes is not None:
            self._devices.codes.flush()
        while not sale.state.final:
            if sale.state.phase is Phase.AWAITING:
                await self._await_payment(sale)
            else:
                raise AssertionError(f"drive stuck in {sale.state.phase}")

    async def _open_payment(self, sale: _Sale) -> None:
        """The sale's one payment, and its QR code."""
        s = self._sale_settings
        key = sale.payment_key
        try:
            payment = await self._client.create_payment(
                amount_minor=sale.amount_minor, currency=s.currency, reference=sale.reference,
                description=f"{self._settings.agent.terminal_label} sale {sale.reference}", idempotency_key=key,
                timeout_s=sale.call_budget_s())
        except GatewayUnreachable:
            await self._finish(key, OpState.FAILED, "unreachable")
            sale.apply(PaymentUnavailable(unreachable=True))
            return
        except OutcomeUnknown:
            sale.apply(PaymentUnavailable(unreachable=False))  # the op stays pending: resolved at the end
            return
        except GatewayRejected as exc:
            await self._finish(key, OpState.FAILED, exc.error_code)
            sale.apply(PaymentUnavailable(unreachable=False))
            return
        qr_key = self._new_key()
        await self._journal.call(functools.partial(
            _payment_opened, key=key, status=payment.status, payment_id=payment.id, qr_key=qr_key,
            sale_reference=sale.reference))
        sale.apply(PaymentOpened(payment.id))
        try:
            code = await self._client.issue_qr(
                payment.id, ttl_s=s.qr_ttl_s, terminal_label=self._settings.agent.terminal_label,
                idempotency_key=qr_key, timeout_s=sale.call_budget_s())
        except GatewayError as exc:
            log.warning("sale %s: no QR code (%s); tap and pay-code only", sale.reference, exc)
            return
        await self._finish(qr_key, OpState.DONE, "issued", payment.id)
        sale.qr_payload = code.payload

    async def _await_payment(self, sale: _Sale) -> None:
        """Race the armed sources; the first to produce something drives the next event."""
        tasks: dict[asyncio.Task[Any], str] = {}
        reader, codes = self._devices.reader, self._devices.codes
        if reader is not None:
            tasks[asyncio.create_task(self._read_tap(reader, sale))] = "tap"
        if codes is not None:
            tasks[asyncio.create_task(self._read_code(codes))] = "code"
        if sale.qr_payload is not None and sale.state.sale_payment_id is not None:
            tasks[asyncio.create_task(self._poll_qr(sale, sale.state.sale_payment_id))] = "qr"
        tasks[asyncio.create_task(sale.cancelled.wait())] = "cancel"
        try:
            while True:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                finished = min(done, key=lambda t: ("cancel", "tap", "code", "qr").index(tasks[t]))
                kind = tasks.pop(finished)
                result = finished.result()
                if kind == "qr" and result is None:
                    continue  # the payment closed (expired): keep waiting for a tap or a code
                break
        finally:
            await self._stop(tasks)
        if kind == "cancel":
            sale.apply(CancelRequested(sale.cancel_reason))
        elif kind == "tap":
            sale.apply(TapRead())
            await self._show(format_amount(sale.amount_minor, self._sale_settings.currency), "Processing...")
            await self._authorise_tap(sale, result)
        elif kind == "code":
            sale.apply(CodeScanned())
            if not sale.state.final:
                await self._authorise_pay_code(sale, result)
        else:
            sale.apply(QrPaid(result.id))

    async def _read_tap(self, reader: TapSource, sale: _Sale) -> TapResult:
        s = self._sale_settings
        log.info("sale %s: reader armed", sale.reference)
        while True:
            try:
                return await reader.read_tap(sale.amount_minor, s.currency_numeric, s.country_numeric,
                                             TAP_READ_TIMEOUT_MAX_S)
            except TapTimeout:
                continue
            except CardError as exc:
                log.info("sale %s: card error (%s); tap again", sale.reference, exc.reason)
                await self._show(format_amount(sale.amount_minor, s.currency), "Tap again")
            except ReaderUnavailable:
                log.warning("sale %s: NFC reader unavailable; waiting for it", sale.reference)
                await asyncio.sleep(READER_RETRY_PAUSE_S)
            except ReaderBusy:
                # A read left armed by an earlier sale (its task missed its cancellation): ours wins.
                log.warning("sale %s: NFC reader was still armed; disarming it", sale.reference)
                reader.disarm()
                await asyncio.sleep(READER_RETRY_PAUSE_S / 10)
            except TapCancelled:
                # Disarmed: the race is over. Raising (not looping) matters: on Python 3.11
                # ``wait_for`` can turn our own cancellation into this error, and looping would
                # arm the reader again behind the sale's back.
                raise

    async def _read_code(self, codes: CodeSource) -> str:
        s = self._sale_settings
        while True:
            try:
                text = await codes.next_code(timeout_s=TAP_READ_TIMEOUT_MAX_S)
            except TimeoutError:
                continue
            if is_pay_code(text, prefix=s.pay_code_prefix, length=s.pay_code_length):
                return text
            log.info("ignoring a scan that is not one of our pay-codes (%d characters)", len(text))

    async def _poll_qr(self, sale: _Sale, payment_id: str) -> Payment | None:
        """The sale's payment once it succeeded (paid by QR); None once it can no longer be paid."""
        while True:
            await asyncio.sleep(self._sale_settings.status_poll_interval_s)
            try:
                payment = await self._client.get_payment(payment_id, timeout_s=sale.remaining_s())
            except GatewayError as exc:
                log.debug("QR status poll failed: %s", exc)
                continue
            if payment.succeeded:
                return payment
            if not payment.open:
                return None

    async def _stop(self, tasks: dict[asyncio.Task[Any], str]) -> None:
        if self._devices.reader is not None:
            self._devices.reader.disarm()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=TASK_STOP_TIMEOUT_S)
        for task in tasks:
            if not task.done():
                log.warning("payment source %s did not stop within %g s", tasks[task], TASK_STOP_TIMEOUT_S)
            elif not task.cancelled():
                with contextlib.suppress(Exception):
                    task.result()  # retrieved so asyncio does not log it as never retrieved

    # -- authorisations ------------------------------------------------------------------------

    async def _authorise_tap(self, sale: _Sale, tap: TapResult) -> None:
        s = self._sale_settings
        reference = sale.next_reference("T")
        ttid = uuid.uuid4().hex
        sale_payment_id = sale.state.sale_payment_id
        body = tap_body(tap, terminal_transaction_id=ttid, amount_minor=sale.amount_minor, currency=s.currency,
                        reference=None if sale_payment_id else reference, payment_id=sale_payment_id,
                        offline_approved_at=None)
        # Counter before wire (pos_agent.journal): the ATC is durable before the tap can reach
        # the gateway, so an offline replay of it is refused even after a crash right here.
        await self._journal.call(functools.partial(
            Journal.record_tap, key=ttid, sale_reference=sale.reference, reference=reference,
            token_pan=tap.token_pan, atc=tap.atc, body=body, payment_id=sale_payment_id))
        await self._drain_offline_taps_of(tap.token_pan)
        try:
            payment = await self._client.tap_payment(body, idempotency_key=ttid, timeout_s=sale.call_budget_s())
        except GatewayUnreachable:
            await self._finish(ttid, OpState.FAILED, "unreachable")
            await self._approve_offline(sale, tap, {**body, "payment": None, "merchant_reference": reference})
            return
        except OutcomeUnknown:
            sale.apply(Unknown())
            await self._resolve(sale, reference, ttid)
            return
        except GatewayRejected as exc:
            await self._refused(sale, ttid, exc)
            return
        await self._finish(ttid, OpState.DONE, payment.status, payment.id)
        await self._conclude(sale, payment)

    async def _approve_offline(self, sale: _Sale, tap: TapResult, online_body: dict[str, Any]) -> None:
        """Approve a tap the gateway could not be reached for; its body, forwarded later, creates its
        own payment (the sale's may have expired by then)."""
        s = self._sale_settings
        if self._client.device_refused:
            log.warning("sale %s: the gateway revoked this device; no offline approval", sale.reference)
            sale.apply(Refused("device_refused"))
            return
        body = {**online_body, "offline_approved_at": self._now().isoformat()}
        ttid = str(body["terminal_transaction_id"])
        decision = await self._journal.call(functools.partial(
            Journal.approve_offline_tap, limits=self._settings.offline, terminal_transaction_id=ttid,
            sale_reference=sale.reference, token_pan=tap.token_pan, atc=tap.atc, amount_minor=sale.amount_minor,
            currency=s.currency, expected_currency=s.currency, body=body))
        if decision.approved:
            log.info("sale %s: approved offline (%s), journalled for forwarding", sale.reference, ttid)
            sale.apply(OfflineApproved(ttid))
            if self._on_offline_approval is not None:
                self._on_offline_approval()
        else:
            assert decision.refusal is not None
            log.info("sale %s: offline approval refused: %s", sale.reference, decision.refusal.value)
            sale.apply(Refused(decision.refusal.value))

    async def _authorise_pay_code(self, sale: _Sale, pay_code: str) -> None:
        s = self._sale_settings
        reference = sale.next_reference("P")
        key = self._new_key()
        sale_payment_id = sale.state.sale_payment_id
        own_reference = None if sale_payment_id else reference
        body = {"pay_code": "*" * 14 + pay_code[-4:], "amount": sale.amount_minor, "currency": s.currency,
                "merchant_reference": own_reference, "payment": sale_payment_id}
        await self._record(key, OpKind.PAY_CODE, sale, reference, body, sale_payment_id)
        try:
            payment = await self._client.charge_pay_code(
                pay_code=pay_code, amount_minor=sale.amount_minor, currency=s.currency, reference=own_reference,
                payment_id=sale_payment_id, idempotency_key=key, timeout_s=sale.call_budget_s())
        except GatewayUnreachable:
            await self._finish(key, OpState.FAILED, "unreachable")
            sale.apply(Refused("gateway_unreachable"))
            return
        except OutcomeUnknown:
            sale.apply(Unknown())
            await self._resolve(sale, reference, key)
            return
        except GatewayRejected as exc:
            await self._refused(sale, key, exc)
            return
        await self._finish(key, OpState.DONE, payment.status, payment.id)
        await self._conclude(sale, payment)

    async def _refused(self, sale: _Sale, key: str, exc: GatewayRejected) -> None:
        """A definite refusal of a tap or a pay-code. ``payment_not_payable`` on the sale's payment
        means it was paid another way meanwhile (its QR code won the race): then the sale is paid."""
        await self._finish(key, OpState.FAILED, exc.error_code)
        payment_id = sale.state.sale_payment_id
        if exc.error_code == PAYMENT_NOT_PAYABLE and payment_id is not None:
            try:
                payment = await self._client.get_payment(payment_id, timeout_s=sale.call_budget_s())
            except GatewayError as query_error:
                log.warning("sale %s: the payment's state is unknown: %s", sale.reference, query_error)
            else:
                if payment.succeeded:
                    sale.apply(Authorised(payment.id, _method_of(payment)))
                    return
        sale.apply(Refused(exc.error_code))

    async def _conclude(self, sale: _Sale, payment: Payment) -> None:
        """A definite payment came back: approve, refuse, or wait for the payer's PIN."""
        if payment.succeeded:
            sale.apply(Authorised(payment.id))
        elif payment.status == "requires_action":
            sale.apply(ConfirmationRequired(payment.id))
            await self._show(format_amount(sale.amount_minor, self._sale_settings.currency), "Confirm on phone")
            await self._await_confirmation(sale, payment.id)
        else:
            sale.apply(Refused(f"status_{payment.status}"))

    async def _await_confirmation(self, sale: _Sale, payment_id: str) -> None:
        cancel = asyncio.create_task(sale.cancelled.wait())
        try:
            while not sale.state.final:
                await asyncio.wait({cancel}, timeout=self._sale_settings.status_poll_interval_s)
                if cancel.done():
                    sale.apply(CancelRequested(sale.cancel_reason))
                    return
                try:
                    payment = await self._client.get_payment(payment_id, timeout_s=sale.remaining_s())
                except GatewayError as exc:
                    log.debug("confirmation poll failed: %s", exc)
                    continue
                if payment.succeeded:
                    sale.apply(Authorised(payment.id))
                elif not payment.open:
                    sale.apply(Refused(f"status_{payment.status}"))
        finally:
            cancel.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cancel

    async def _resolve(self, sale: _Sale, reference: str, key: str) -> None:
        """The attempt's outcome is unknown: ask the gateway, within what is left of the sale."""
        s = self._sale_settings
        payment = await find_outcome(
            self._client, payment_id=sale.state.sale_payment_id, reference=reference,
            query_count_max=s.resolve_query_count_max, interval_s=s.resolve_query_interval_s,
            remaining_s=sale.remaining_s)
        if payment is None:
            log.warning("sale %s: outcome of %s still unknown; rejecting and queueing a reversal", sale.reference,
                        reference)
            sale.apply(Refused("outcome_unknown"))  # the op stays pending: compensations() reverses or resolves it
            return
        await self._finish(key, OpState.DONE, payment.status, payment.id)
        if payment.succeeded:
            sale.apply(Authorised(payment.id, _method_of(payment)))
        elif payment.status == "requires_action":
            # Still unknown in substance: the payer is confirming. Reject now; the payment
            # is reversed with the other losers, so a late PIN cannot take money.
            sale.apply(Refused("confirmation_pending"))
        else:
            sale.apply(Refused(f"status_{payment.status}"))

    async def _drain_offline_taps_of(self, token_pan: str) -> None:
        """A wallet's offline taps must reach the gateway before its newer (higher ATC) tap."""
        if self._drain_token is None:
            return
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await self._drain_token(token_pan)
        except (TimeoutError, GatewayError, JournalError) as exc:
            log.warning("could not forward this wallet's offline taps first: %s", exc)

    # -- the end of a sale -------------------------------------------------------------------

    async def _settle(self, sale: _Sale) -> None:
        """Reverse the losers, record the decision, show and print the result (bounded)."""
        state = sale.state
        assert state.final
        s = self._sale_settings
        try:
            async with asyncio.timeout(s.cleanup_timeout_s):
                await compensate_sale(self._client, self._journal, sale.reference,
                                      state.payment_id if state.approved else None,
                                      void_offline=not state.approved)
        except (TimeoutError, GatewayError, JournalError) as exc:
            log.warning("sale %s: compensation deferred to the forwarder: %s", sale.reference, exc)
        await self._journal.call(functools.partial(
            Journal.decide_sale, reference=sale.reference, approved=state.approved,
            method=state.method.value if state.method else None,
            payment_id=state.payment_id or state.terminal_transaction_id))
        amount_text = format_amount(sale.amount_minor, s.currency)
        if state.approved:
            assert state.method is not None
            await self._show("APPROVED", amount_text.rjust(20))
            if self._devices.printer is not None:
                receipt = build_receipt(
                    merchant_name=self._settings.agent.merchant_name, reference=sale.reference,
                    amount_text=amount_text, method=state.method, payment_id=state.payment_id,
                    terminal_transaction_id=state.terminal_transaction_id, at=self._now().astimezone())
                await self._best_effort(self._devices.printer.print_receipt(receipt))
        else:
            await self._show("DECLINED", (state.reason or "")[:20])
        log.info("sale %s: %s (%s) method=%s payment=%s", sale.reference, state.phase, state.reason,
                 state.method, state.payment_id or state.terminal_transaction_id)

    def _outcome(self, sale: _Sale) -> SaleOutcome:
        state = sale.state
        return SaleOutcome(sale.reference, sale.amount_minor, state.approved, state.method, state.payment_id,
                           state.terminal_transaction_id, state.reason)

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _new_key() -> str:
        return str(uuid.uuid4())

    async def _record(
        self, key: str, kind: OpKind, sale: _Sale, reference: str, body: dict[str, Any], payment_id: str | None = None
    ) -> None:
        await self._journal.call(functools.partial(
            Journal.record_operation, key=key, kind=kind, sale_reference=sale.reference, reference=reference,
            body=body, payment_id=payment_id))

    async def _finish(self, key: str, state: OpState, outcome: str, payment_id: str | None = None) -> None:
        await self._journal.call(functools.partial(
            Journal.finish_operation, key=key, state=state, outcome=outcome, payment_id=payment_id))

    async def _show(self, line1: str, line2: str) -> None:
        if self._devices.display is not None:
            await self._best_effort(self._devices.display.show(line1, line2))

    async def _print_qr_slip(self, sale: _Sale, amount_text: str) -> None:
        printer = self._devices.printer
        settings = self._settings.devices.printer
        if printer is None or settings is None or not settings.print_qr_slip or sale.qr_payload is None:
            return
        slip = Receipt(
            title=self._settings.agent.merchant_name,
            items=(ReceiptItem("参考号 Ref", sale.reference),),
            total=ReceiptItem("应付 To pay", amount_text),
            qr_payload=sale.qr_payload,
            footer_lines=("请扫码支付 Scan to pay",),
        )
        await self._best_effort(printer.print_receipt(slip))

    @staticmethod
    async def _best_effort(operation: Awaitable[None]) -> None:
        try:
            async with asyncio.timeout(TASK_STOP_TIMEOUT_S * 5):
                await operation
        except Exception as exc:  # noqa: BLE001 - a display or printer must never fail a payment
            log.warning("device output failed: %s", exc)


def _open_sale(journal: Journal, *, label: str, amount_minor: int, currency: str, payment_key: str) -> str:
    """Open the sale and journal its payment's creation (key and body) in one commit."""
    with journal.transaction():
        reference = journal.open_sale(label, amount_minor, currency)
        body = {"amount": amount_minor, "currency": currency, "merchant_reference": reference}
        journal.record_operation(payment_key, OpKind.CREATE_PAYMENT, sale_reference=reference, reference=reference,
                                 body=body)
    return reference


def _payment_opened(
    journal: Journal, *, key: str, status: str, payment_id: str, qr_key: str, sale_reference: str
) -> None:
    """The payment's creation answered, and its QR code's issue journalled, in one commit."""
    with journal.transaction():
        journal.finish_operation(key, OpState.DONE, outcome=status, payment_id=payment_id)
        journal.record_operation(qr_key, OpKind.ISSUE_QR, sale_reference=sale_reference, reference=sale_reference,
                                 body={"payment": payment_id}, payment_id=payment_id)


_METHOD_OF_CHANNEL: Final = {"tap": Method.TAP, "pay_code": Method.PAY_CODE, "qr": Method.QR}


def _method_of(payment: Payment) -> Method | None:
    """How the gateway says the payment was paid (None for a channel the counter does not offer)."""
    return _METHOD_OF_CHANNEL.get(payment.channel or "")
