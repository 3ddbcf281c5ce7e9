"""The checkout: a pure state machine and the async driver that runs it for one register request.

One sale: the register asks for an amount; the agent creates a payment and its dynamic QR code,
shows the amount, arms the NFC reader, listens to the scanner for a pay-code and polls the QR
payment. The first of those to complete wins; the others are disarmed and every payment the
sale created other than the winner is reversed. The register gets success with the amount, or a
rejection; a receipt is printed.

Pure part (no I/O, no clock): ``CheckoutState`` + ``transition`` (phases and events),
``compensations`` (which payments a finished sale must reverse), ``tap_body``, ``is_pay_code``,
``build_receipt``. Amounts are shown by ``pos_agent.currency.format_amount``.

Invariants:
- Money and the register agree. When the register is told "approved", exactly one payment of the
  sale holds money (the winner) and every other one is reversed or queued for reversal in the
  journal; when it is told "rejected" (declined, cancelled, timed out, unknown), every payment of
  the sale is reversed or queued, and its offline taps are voided.
- Every gateway POST's key is journalled before it is sent (``pos_agent.journal``).
- An unknown outcome is never followed by a second charge: the agent queries the attempt by its
  merchant reference, and if it still cannot tell, rejects the sale and queues a ``resolve``
  compensation (find by reference, reverse) for the forwarder.
- A tap is approved offline only when the gateway was definitely unreachable for that very tap,
  the device was never refused by the gateway (revoked), its ATC is higher than every ATC the
  journal saw for that token (online or offline), and the offline limits allow it; QR and
  pay-codes always need the gateway.
- A tap's ATC is journalled before the tap is sent online (``Journal.record_tap``).
- A wallet's pending offline taps are forwarded before its new online tap (ATC order).
- The whole sale is bounded by ``sale_timeout_s``; the clean-up after it by ``cleanup_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final

from hardware.nfc import CardError, ReaderBusy, ReaderUnavailable, TapCancelled, TapResult, TapTimeout
from hardware.nfc.emv import Tag
from hardware.serial.printer import Receipt, ReceiptItem
from pos_agent.currency import format_amount
from pos_agent.devices import CodeSource, Display, Printer, TapSource
from pos_agent.errors import (
    DeviceAuthError,
    GatewayError,
    GatewayRejected,
    GatewayUnreachable,
    JournalError,
    OutcomeUnknown,
)
from pos_agent.gateway_client import GatewayClient, Payment
from pos_agent.journal import AsyncJournal, Journal, OpKind, OpState, Operation
from pos_agent.settings import Settings

__all__ = [
    "CancelRequested",
    "CheckoutRunner",
    "CheckoutState",
    "Compensation",
    "Event",
    "InvalidTransition",
    "Method",
    "Phase",
    "SaleOutcome",
    "build_receipt",
    "compensations",
    "is_pay_code",
    "tap_body",
    "transition",
]

log = logging.getLogger(__name__)

TAP_READ_TIMEOUT_MAX_S: Final = 300.0
READER_RETRY_PAUSE_S: Final = 0.5
TASK_STOP_TIMEOUT_S: Final = 2.0
DRAIN_TIMEOUT_S: Final = 5.0

# ---------------------------------------------------------------------------------------------
# Pure state machine


class Phase(StrEnum):
    STARTING = "starting"  # creating the payment and its QR code
    AWAITING = "awaiting"  # reader armed, scanner listening, QR polled
    AUTHORISING = "authorising"  # a tap or a pay-code is with the gateway
    CONFIRMING = "confirming"  # the payer confirms a pay-code charge with a PIN; polling
    RESOLVING = "resolving"  # the outcome is unknown; querying by reference
    APPROVED = "approved"
    DECLINED = "declined"
    CANCELLED = "cancelled"


FINAL_PHASES: Final = frozenset({Phase.APPROVED, Phase.DECLINED, Phase.CANCELLED})


class Method(StrEnum):
    TAP = "tap"
    TAP_OFFLINE = "tap_offline"
    QR = "qr"
    PAY_CODE = "pay_code"


@dataclass(frozen=True, slots=True)
class QrReady:
    payment_id: str


@dataclass(frozen=True, slots=True)
class QrUnavailable:
    unreachable: bool


@dataclass(frozen=True, slots=True)
class TapRead:
    pass


@dataclass(frozen=True, slots=True)
class CodeScanned:
    pass


@dataclass(frozen=True, slots=True)
class QrPaid:
    payment_id: str


@dataclass(frozen=True, slots=True)
class Authorised:
    payment_id: str


@dataclass(frozen=True, slots=True)
class OfflineApproved:
    terminal_transaction_id: str


@dataclass(frozen=True, slots=True)
class ConfirmationRequired:
    payment_id: str


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


@dataclass(frozen=True, slots=True)
class Unknown:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequested:
    reason: str


Event = (
    QrReady | QrUnavailable | TapRead | CodeScanned | QrPaid | Authorised | OfflineApproved
    | ConfirmationRequired | Refused | Unknown | CancelRequested
)


class InvalidTransition(AssertionError):
    """An event that cannot happen in the current phase: a bug in the driver."""


@dataclass(frozen=True, slots=True)
class CheckoutState:
    phase: Phase = Phase.STARTING
    online: bool = True
    """False once the gateway proved unreachable for this sale (offline taps only)."""
    qr_payment_id: str | None = None
    method: Method | None = None
    payment_id: str | None = None
    """The winning payment (None for an offline approval)."""
    terminal_transaction_id: str | None = None
    reason: str | None = None

    @property
    def final(self) -> bool:
        return self.phase in FINAL_PHASES

    @property
    def approved(self) -> bool:
        return self.phase is Phase.APPROVED


def transition(state: CheckoutState, event: Event) -> CheckoutState:
    """The next state; ``InvalidTransition`` for an event the phase does not allow."""
    phase = state.phase
    if state.final:
        raise InvalidTransition(f"{type(event).__name__} after the sale ended ({phase})")
    if isinstance(event, CancelRequested):
        return replace(state, phase=Phase.CANCELLED, reason=event.reason)
    if phase is Phase.STARTING:
        if isinstance(event, QrReady):
            return replace(state, phase=Phase.AWAITING, qr_payment_id=event.payment_id)
        if isinstance(event, QrUnavailable):
            return replace(state, phase=Phase.AWAITING, online=not event.unreachable)
    elif phase is Phase.AWAITING:
        if isinstance(event, TapRead):
            return replace(state, phase=Phase.AUTHORISING, method=Method.TAP)
        if isinstance(event, CodeScanned):
            if not state.online:
                return replace(state, phase=Phase.DECLINED, method=Method.PAY_CODE, reason="gateway_unreachable")
            return replace(state, phase=Phase.AUTHORISING, method=Method.PAY_CODE)
        if isinstance(event, QrPaid):
            assert event.payment_id == state.qr_payment_id
            return replace(state, phase=Phase.APPROVED, method=Method.QR, payment_id=event.payment_id)
    elif phase in (Phase.AUTHORISING, Phase.CONFIRMING, Phase.RESOLVING):
        if isinstance(event, Authorised):
            return replace(state, phase=Phase.APPROVED, payment_id=event.payment_id)
        if isinstance(event, Refused):
            return replace(state, phase=Phase.DECLINED, reason=event.reason)
        if isinstance(event, OfflineApproved) and phase is Phase.AUTHORISING and state.method is Method.TAP:
            return replace(state, phase=Phase.APPROVED, method=Method.TAP_OFFLINE, online=False,
                           terminal_transaction_id=event.terminal_transaction_id)
        if isinstance(event, ConfirmationRequired) and phase is Phase.AUTHORISING:
            return replace(state, phase=Phase.CONFIRMING, payment_id=event.payment_id)
        if isinstance(event, Unknown) and phase is not Phase.RESOLVING:
            return replace(state, phase=Phase.RESOLVING)
    raise InvalidTransition(f"{type(event).__name__} in phase {phase}")


@dataclass(frozen=True, slots=True)
class Compensation:
    """``reverse`` a known payment, or ``resolve`` an attempt known only by its reference."""

    action: str  # "reverse" | "resolve"
    target: str  # payment id or merchant reference

    @staticmethod
    def reverse(payment_id: str) -> Compensation:
        return Compensation("reverse", payment_id)

    @staticmethod
    def resolve(reference: str) -> Compensation:
        return Compensation("resolve", reference)


_CHARGING_KINDS: Final = frozenset({OpKind.CREATE_PAYMENT, OpKind.PAY_CODE, OpKind.TAP})


def compensations(operations: list[Operation], winner_payment_id: str | None) -> list[Compensation]:
    """What a finished sale owes the gateway: every attempt that may hold money, but the winner.

    A ``done`` attempt with a payment is reversed; a ``pending`` one (sent, outcome unknown, or
    interrupted) is resolved by reference; a ``failed`` one created nothing.
    """
    owed: list[Compensation] = []
    for op in operations:
        if op.kind not in _CHARGING_KINDS:
            continue
        if op.payment_id is not None and op.payment_id == winner_payment_id:
            continue
        if op.state is OpState.DONE and op.payment_id is not None:
            owed.append(Compensation.reverse(op.payment_id))
        elif op.state is OpState.PENDING:
            owed.append(Compensation.resolve(op.reference))
    return list(dict.fromkeys(owed))


TAP_TERMINAL_TAGS: Final = (
    (Tag.AMOUNT_AUTHORISED, "9F02"),
    (Tag.AMOUNT_OTHER, "9F03"),
    (Tag.TERMINAL_COUNTRY, "9F1A"),
    (Tag.TVR, "95"),
    (Tag.TRANSACTION_CURRENCY, "5F2A"),
    (Tag.TRANSACTION_DATE, "9A"),
    (Tag.TRANSACTION_TYPE, "9C"),
    (Tag.UNPREDICTABLE_NUMBER, "9F37"),
)


def tap_body(
    tap: TapResult,
    *,
    terminal_transaction_id: str,
    amount_minor: int,
    currency: str,
    reference: str,
    offline_approved_at: str | None,
) -> dict[str, Any]:
    """The ``POST /v1/tap_payments`` body: exactly the bytes the card put under its cryptogram."""
    fallback = tap.terminal.tag_values()
    terminal: dict[str, str] = {}
    for tag, name in TAP_TERMINAL_TAGS:
        try:
            value = tap.terminal_value(tag)
        except KeyError:  # the card's PDOL left it out; the issuer takes the terminal's value
            value = fallback[tag]
        terminal[name] = value.hex().upper()
    return {
        "terminal_transaction_id": terminal_transaction_id,
        "amount": amount_minor,
        "currency": currency,
        "merchant_reference": reference,
        "offline_approved_at": offline_approved_at,
        "tap": {
            "token_pan": tap.token_pan,
            "psn": tap.psn if tap.psn is not None else 0,
            "atc": tap.atc,
            "arqc": tap.arqc.hex().upper(),
            "aip": tap.aip.hex().upper(),
            "iad": tap.iad.hex().upper(),
            "cid": f"{tap.cid:02X}",
            "terminal": terminal,
        },
    }


def is_pay_code(text: str, *, prefix: str, length: int) -> bool:
    return len(text) == length and text.isascii() and text.isdigit() and text.startswith(prefix)


METHOD_LABELS: Final = {
    Method.TAP: "NFC 碰一碰 Tap",
    Method.TAP_OFFLINE: "NFC 离线 Tap (offline)",
    Method.QR: "扫码 QR",
    Method.PAY_CODE: "付款码 Pay-code",
}


def build_receipt(
    *,
    merchant_name: str,
    reference: str,
    amount_text: str,
    method: Method,
    payment_id: str | None,
    terminal_transaction_id: str | None,
    at: datetime.datetime,
) -> Receipt:
    payment_text = payment_id or f"OFFLINE {(terminal_transaction_id or '')[:16]}"
    footer = ["离线批准, 稍后上传 Offline approved"] if method is Method.TAP_OFFLINE else []
    return Receipt(
        title=merchant_name,
        items=(
            ReceiptItem("金额 Amount", amount_text),
            ReceiptItem("方式 Method", METHOD_LABELS[method]),
            ReceiptItem("单号 ID", payment_text),  # 36-character ids: a short label keeps one line
            ReceiptItem("参考号 Ref", reference),
            ReceiptItem("时间 Time", at.strftime("%Y-%m-%d %H:%M:%S")),
        ),
        total=ReceiptItem("合计 TOTAL", amount_text),
        footer_lines=(*footer, "谢谢惠顾 Thank you"),
    )


# ---------------------------------------------------------------------------------------------
# Async driver


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

    def __init__(self, reference: str, amount_minor: int) -> None:
        self.reference = reference
        self.amount_minor = amount_minor
        self.state = CheckoutState()
        self.cancelled = asyncio.Event()
        self.cancel_reason = "cancelled"
        self.qr_payload: str | None = None
        self.attempt_count = 0

    def apply(self, event: Event) -> None:
        before = self.state.phase
        self.state = transition(self.state, event)
        log.info("sale %s: %s -> %s on %s", self.reference, before, self.state.phase, type(event).__name__)

    def next_reference(self, kind: str) -> str:
        self.attempt_count += 1
        return f"{self.reference}-{kind}{self.attempt_count}"


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
        reference = await self._journal.call(
            lambda j: j.open_sale(self._settings.agent.terminal_label, amount_minor, s.currency))
        sale = _Sale(reference, amount_minor)
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
        await self._start_qr(sale)
        if sale.state.qr_payment_id is not None:
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

    async def _start_qr(self, sale: _Sale) -> None:
        s = self._sale_settings
        reference = sale.next_reference("Q")
        key = self._new_key()
        body = {"amount": sale.amount_minor, "currency": s.currency, "merchant_reference": reference}
        await self._record(key, OpKind.CREATE_PAYMENT, sale, reference, body)
        try:
            payment = await self._client.create_payment(
                amount_minor=sale.amount_minor, currency=s.currency, reference=reference,
                description=f"{self._settings.agent.terminal_label} sale {sale.reference}", idempotency_key=key)
        except GatewayUnreachable:
            await self._finish(key, OpState.FAILED, "unreachable")
            sale.apply(QrUnavailable(unreachable=True))
            return
        except OutcomeUnknown:
            sale.apply(QrUnavailable(unreachable=False))  # the op stays pending: resolved at the end
            return
        except GatewayRejected as exc:
            await self._finish(key, OpState.FAILED, exc.error_code)
            sale.apply(QrUnavailable(unreachable=False))
            return
        await self._finish(key, OpState.DONE, payment.status, payment.id)
        qr_key = self._new_key()
        await self._record(qr_key, OpKind.ISSUE_QR, sale, reference, {"payment": payment.id}, payment.id)
        try:
            code = await self._client.issue_qr(
                payment.id, ttl_s=s.qr_ttl_s, terminal_label=self._settings.agent.terminal_label,
                idempotency_key=qr_key)
        except GatewayError as exc:
            log.warning("sale %s: no QR code (%s); tap and pay-code only", sale.reference, exc)
            sale.apply(QrUnavailable(unreachable=isinstance(exc, GatewayUnreachable)))
            return
        await self._finish(qr_key, OpState.DONE, "issued", payment.id)
        sale.qr_payload = code.payload
        sale.apply(QrReady(payment.id))

    async def _await_payment(self, sale: _Sale) -> None:
        """Race the armed sources; the first to produce something drives the next event."""
        tasks: dict[asyncio.Task[Any], str] = {}
        reader, codes = self._devices.reader, self._devices.codes
        if reader is not None:
            tasks[asyncio.create_task(self._read_tap(reader, sale))] = "tap"
        if codes is not None:
            tasks[asyncio.create_task(self._read_code(codes))] = "code"
        if sale.state.qr_payment_id is not None:
            tasks[asyncio.create_task(self._poll_qr(sale.state.qr_payment_id))] = "qr"
        tasks[asyncio.create_task(sale.cancelled.wait())] = "cancel"
        try:
            while True:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                finished = min(done, key=lambda t: ("cancel", "tap", "code", "qr").index(tasks[t]))
                kind = tasks.pop(finished)
                result = finished.result()
                if kind == "qr" and result is None:
                    continue  # the QR payment closed (expired): keep waiting for a tap or a code
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

    async def _poll_qr(self, payment_id: str) -> Payment | None:
        """The QR payment once it succeeded; None once it can no longer be paid."""
        while True:
            await asyncio.sleep(self._sale_settings.status_poll_interval_s)
            try:
                payment = await self._client.get_payment(payment_id)
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
        body = tap_body(tap, terminal_transaction_id=ttid, amount_minor=sale.amount_minor, currency=s.currency,
                        reference=reference, offline_approved_at=None)
        # Counter before wire (pos_agent.journal): the ATC is durable before the tap can reach
        # the gateway, so an offline replay of it is refused even after a crash right here.
        await self._journal.call(lambda j: j.record_tap(
            ttid, sale_reference=sale.reference, reference=reference, token_pan=tap.token_pan, atc=tap.atc,
            body=body))
        await self._drain_offline_taps_of(tap.token_pan)
        try:
            payment = await self._client.tap_payment(body, idempotency_key=ttid)
        except GatewayUnreachable:
            await self._finish(ttid, OpState.FAILED, "unreachable")
            await self._approve_offline(sale, tap, body)
            return
        except OutcomeUnknown:
            sale.apply(Unknown())
            await self._resolve(sale, reference, ttid)
            return
        except GatewayRejected as exc:
            await self._finish(ttid, OpState.FAILED, exc.error_code)
            sale.apply(Refused(exc.error_code))
            return
        await self._finish(ttid, OpState.DONE, payment.status, payment.id)
        await self._conclude(sale, payment)

    async def _approve_offline(self, sale: _Sale, tap: TapResult, online_body: dict[str, Any]) -> None:
        s = self._sale_settings
        if self._client.device_refused:
            log.warning("sale %s: the gateway revoked this device; no offline approval", sale.reference)
            sale.apply(Refused("device_refused"))
            return
        body = {**online_body, "offline_approved_at": self._now().isoformat()}
        ttid = str(body["terminal_transaction_id"])
        decision = await self._journal.call(lambda j: j.approve_offline_tap(
            self._settings.offline, terminal_transaction_id=ttid, sale_reference=sale.reference,
            token_pan=tap.token_pan, atc=tap.atc, amount_minor=sale.amount_minor, currency=s.currency,
            expected_currency=s.currency, body=body))
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
        body = {"pay_code": "*" * 14 + pay_code[-4:], "amount": sale.amount_minor, "currency": s.currency,
                "merchant_reference": reference}
        await self._record(key, OpKind.PAY_CODE, sale, reference, body)
        try:
            payment = await self._client.charge_pay_code(
                pay_code=pay_code, amount_minor=sale.amount_minor, currency=s.currency, reference=reference,
                idempotency_key=key)
        except GatewayUnreachable:
            await self._finish(key, OpState.FAILED, "unreachable")
            sale.apply(Refused("gateway_unreachable"))
            return
        except OutcomeUnknown:
            sale.apply(Unknown())
            await self._resolve(sale, reference, key)
            return
        except GatewayRejected as exc:
            await self._finish(key, OpState.FAILED, exc.error_code)
            sale.apply(Refused(exc.error_code))
            return
        await self._finish(key, OpState.DONE, payment.status, payment.id)
        await self._conclude(sale, payment)

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
                    payment = await self._client.get_payment(payment_id)
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
        """The attempt's outcome is unknown: ask the gateway by reference, a bounded number of times."""
        s = self._sale_settings
        for query_index in range(s.resolve_query_count_max):
            if query_index:
                await asyncio.sleep(s.resolve_query_interval_s)
            try:
                found = await self._client.find_payments(reference)
            except GatewayError as exc:
                log.info("sale %s: status query %d failed: %s", sale.reference, query_index + 1, exc)
                continue
            if not found:
                continue
            payment = found[0]
            await self._finish(key, OpState.DONE, payment.status, payment.id)
            if payment.succeeded:
                sale.apply(Authorised(payment.id))
            elif payment.status == "requires_action":
                # Still unknown in substance: the payer is confirming. Reject now; the payment
                # is reversed with the other losers, so a late PIN cannot take money.
                sale.apply(Refused("confirmation_pending"))
            else:
                sale.apply(Refused(f"status_{payment.status}"))
            return
        log.warning("sale %s: outcome of %s still unknown; rejecting and queueing a reversal", sale.reference,
                    reference)
        sale.apply(Refused("outcome_unknown"))  # the op stays pending: compensations() resolves it

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
        await self._journal.call(lambda j: j.decide_sale(
            sale.reference, approved=state.approved, method=state.method.value if state.method else None,
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
        await self._journal.call(lambda j: j.record_operation(
            key, kind, sale_reference=sale.reference, reference=reference, body=body, payment_id=payment_id))

    async def _finish(self, key: str, state: OpState, outcome: str, payment_id: str | None = None) -> None:
        await self._journal.call(lambda j: j.finish_operation(key, state, outcome=outcome, payment_id=payment_id))

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


async def compensate_sale(
    client: GatewayClient,
    journal: AsyncJournal,
    sale_reference: str,
    winner_payment_id: str | None,
    *,
    void_offline: bool,
) -> None:
    """Reverse (or queue) every payment of the sale but the winner; void its offline taps if it
    was not approved. Idempotent: keys are derived from the payment or reference."""
    if void_offline:
        await journal.call(lambda j: j.void_offline_taps_of_sale(sale_reference))
    operations = await journal.call(lambda j: j.operations_of_sale(sale_reference))
    for owed in compensations(operations, winner_payment_id):
        if owed.action == "resolve":
            await journal.call(functools.partial(_queue_resolve, sale_reference=sale_reference, reference=owed.target))
            continue
        await reverse_payment(client, journal, sale_reference, owed.target)


def _queue_resolve(journal: Journal, *, sale_reference: str, reference: str) -> None:
    journal.record_operation(f"resolve-{reference}", OpKind.RESOLVE, sale_reference=sale_reference,
                             reference=reference, body={"reference": reference})
    for op in journal.operations_of_sale(sale_reference):
        if op.reference == reference and op.state is OpState.PENDING and op.kind in _CHARGING_KINDS:
            journal.finish_operation(op.idempotency_key, OpState.FAILED, outcome="unknown_resolving")


async def reverse_payment(client: GatewayClient, journal: AsyncJournal, sale_reference: str, payment_id: str) -> bool:
    """Reverse one payment under a key derived from it (one reversal per payment, ever).

    True when the gateway confirmed; False when it stays queued for the forwarder.
    """
    key = f"reverse-{payment_id}"
    await journal.call(lambda j: j.record_operation(
        key, OpKind.REVERSE, sale_reference=sale_reference, reference=sale_reference,
        body={"payment": payment_id}, payment_id=payment_id))
    existing = await journal.call(lambda j: j.operation(key))
    if existing is not None and existing.state is not OpState.PENDING:
        return True
    try:
        payment = await client.reverse(payment_id, idempotency_key=key)
    except (GatewayUnreachable, OutcomeUnknown, DeviceAuthError) as exc:
        log.warning("reversal of %s queued: %s", payment_id, exc)
        return False
    except GatewayRejected as exc:
        # A definite refusal: the payment cannot be reversed (already closed, or not ours).
        log.warning("reversal of %s refused: %s", payment_id, exc)
        refusal = exc.error_code
        await journal.call(lambda j: j.finish_operation(key, OpState.FAILED, outcome=refusal))
        return True
    await journal.call(lambda j: j.finish_operation(key, OpState.DONE, outcome=payment.status))
    log.info("reversed %s: now %s (refunded %d)", payment_id, payment.status, payment.amount_refunded)
    return True
