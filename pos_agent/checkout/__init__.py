"""The checkout, in three parts:

- ``state``: the pure state machine (phases, events, what a finished sale owes, tap bodies,
  receipts);
- ``runner``: the async driver of one sale, the devices wired to the gateway client;
- ``resolution``: unknown outcomes (status queries inside the sale's deadline) and compensation
  (reversing every payment of a sale but the winner).
"""

from pos_agent.checkout.resolution import compensate_sale, find_outcome, reverse_payment
from pos_agent.checkout.runner import CheckoutDevices, CheckoutRunner, SaleOutcome
from pos_agent.checkout.state import (
    Authorised,
    CancelRequested,
    CheckoutState,
    CodeScanned,
    Compensation,
    ConfirmationRequired,
    Event,
    InvalidTransition,
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
    compensations,
    is_pay_code,
    tap_body,
    transition,
)

__all__ = [
    "Authorised",
    "CancelRequested",
    "CheckoutDevices",
    "CheckoutRunner",
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
    "SaleOutcome",
    "TapRead",
    "Unknown",
    "build_receipt",
    "compensate_sale",
    "compensations",
    "find_outcome",
    "is_pay_code",
    "reverse_payment",
    "tap_body",
    "transition",
]
