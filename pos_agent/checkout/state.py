"""The checkout's pure part (no I/O, no clock): phases and events, and what a sale owes.

``CheckoutState`` + ``transition`` (phases and events), ``compensations`` (which payments a
finished sale must reverse), ``tap_body``, ``is_pay_code``, ``build_receipt``. Amounts are shown by
``pos_agent.currency.format_amount`` (the ISO 4217 exponent of each currency).

Invariants:
- A sale has one payment (``sale_payment_id``), created when it starts; its QR code, a tap and a
  pay-code all settle that payment. Only when it could not be created does a tap or a pay-code
  create its own (and an offline tap always does: it reaches the gateway after the sale).
- ``transition`` refuses (``InvalidTransition``) every event its phase does not allow: a bug in
  the driver, never a state the money cannot follow.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final

from hardware.nfc import TapResult
from hardware.nfc.emv import Tag
from hardware.serial.printer import Receipt, ReceiptItem
from pos_agent.journal import OpKind, OpState, Operation

__all__ = [
    "CHARGING_KINDS",
    "FINAL_PHASES",
    "Authorised",
    "CancelRequested",
    "CheckoutState",
    "CodeScanned",
    "Compensation",
    "ConfirmationRequired",
    "Event",
    "InvalidTransition",
    "Method",
    "OfflineApproved",
    "PaymentOpened",
    "PaymentUnavailable",
    "Phase",
    "QrPaid",
    "Refused",
    "TapRead",
    "Unknown",
    "build_receipt",
    "compensations",
    "is_pay_code",
    "tap_body",
    "transition",
]


class Phase(StrEnum):
    STARTING = "starting"  # creating the sale's payment and its QR code
    AWAITING = "awaiting"  # reader armed, scanner listening, the payment polled (paid by QR?)
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
class PaymentOpened:
    """The sale's payment exists: its QR code, a tap or a pay-code settles it."""

    payment_id: str


@dataclass(frozen=True, slots=True)
class PaymentUnavailable:
    """No payment for the sale: the gateway is unreachable (offline taps only), or it answered
    with a refusal or not at all (each tap or pay-code then creates its own)."""

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
    method: Method | None = None
    """How it was paid, when not by the attempt's method (a QR payment won the race for the payment)."""


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
    PaymentOpened | PaymentUnavailable | TapRead | CodeScanned | QrPaid | Authorised | OfflineApproved
    | ConfirmationRequired | Refused | Unknown | CancelRequested
)


class InvalidTransition(AssertionError):
    """An event that cannot happen in the current phase: a bug in the driver."""


@dataclass(frozen=True, slots=True)
class CheckoutState:
    phase: Phase = Phase.STARTING
    online: bool = True
    """False once the gateway proved unreachable for this sale (offline taps only)."""
    sale_payment_id: str | None = None
    """The sale's one payment, offered by QR and settled by a tap or a pay-code."""
    method: Method | None = None
    payment_id: str | None = None
    """The paid payment (None for an offline approval)."""
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
        if isinstance(event, PaymentOpened):
            return replace(state, phase=Phase.AWAITING, sale_payment_id=event.payment_id)
        if isinstance(event, PaymentUnavailable):
            return replace(state, phase=Phase.AWAITING, online=not event.unreachable)
    elif phase is Phase.AWAITING:
        if isinstance(event, TapRead):
            return replace(state, phase=Phase.AUTHORISING, method=Method.TAP)
        if isinstance(event, CodeScanned):
            if not state.online:
                return replace(state, phase=Phase.DECLINED, method=Method.PAY_CODE, reason="gateway_unreachable")
            return replace(state, phase=Phase.AUTHORISING, method=Method.PAY_CODE)
        if isinstance(event, QrPaid):
            assert event.payment_id == state.sale_payment_id
            return replace(state, phase=Phase.APPROVED, method=Method.QR, payment_id=event.payment_id)
    elif phase in (Phase.AUTHORISING, Phase.CONFIRMING, Phase.RESOLVING):
        if isinstance(event, Authorised):
            return replace(state, phase=Phase.APPROVED, payment_id=event.payment_id,
                           method=event.method or state.method)
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


CHARGING_KINDS: Final = frozenset({OpKind.CREATE_PAYMENT, OpKind.PAY_CODE, OpKind.TAP})


def compensations(operations: list[Operation], winner_payment_id: str | None) -> list[Compensation]:
    """What a finished sale owes the gateway: every payment that may hold money, but the winner.

    An attempt that names its payment (the sale's payment, or the one its answer gave) and did not
    fail is reversed: a reversal cancels an open payment and refunds a paid one, so it is right
    whatever the attempt did. A ``pending`` attempt without one (it would have created its own
    payment; sent, outcome unknown) is resolved by reference; a ``failed`` one changed nothing.
    """
    owed: list[Compensation] = []
    for op in operations:
        if op.kind not in CHARGING_KINDS:
            continue
        if op.payment_id is not None and op.payment_id == winner_payment_id:
            continue
        if op.payment_id is not None and op.state is not OpState.FAILED:
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
    reference: str | None,
    payment_id: str | None,
    offline_approved_at: str | None,
) -> dict[str, Any]:
    """The ``POST /v1/tap_payments`` body: exactly the bytes the card put under its cryptogram.

    With ``payment_id`` the tap settles that payment (the sale's, which has its own reference);
    without it the tap creates a payment under ``reference``."""
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
        "payment": payment_id,
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


