"""The payment state machine and the arithmetic of authorise, capture, cancel, expire, refund.

States follow Stripe's PaymentIntent names where they mean the same thing:

    requires_payment_method --authorize(auto)--> succeeded
    requires_payment_method --authorize(manual)--> requires_capture --capture--> succeeded
    requires_payment_method --authorize(needs the payer's PIN)--> requires_action
    requires_action --confirm--> succeeded | requires_capture (as authorize would)
    requires_payment_method | requires_action | requires_capture --cancel--> canceled
    requires_payment_method | requires_action | requires_capture --expire--> expired
    succeeded --refund (repeatable)--> succeeded

Invariants:
- ``0 <= captured_minor <= authorized_minor <= amount_minor``; ``0 <= refunded_minor <= captured_minor``;
- a hold of ``authorized_minor`` exists exactly while the status is ``requires_action`` or
  ``requires_capture`` (a counter payment waiting for the PIN already reserves the money);
- terminal states (canceled, expired) accept nothing; a refused transition is ``InvalidState``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from gateway.errors import InvalidRequest, InvalidState


class Status(StrEnum):
    REQUIRES_PAYMENT_METHOD = "requires_payment_method"
    REQUIRES_ACTION = "requires_action"
    REQUIRES_CAPTURE = "requires_capture"
    SUCCEEDED = "succeeded"
    CANCELED = "canceled"
    EXPIRED = "expired"


class CaptureMethod(StrEnum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"


class Action(StrEnum):
    AUTHORIZE = "authorize"
    CONFIRM = "confirm"
    CAPTURE = "capture"
    CANCEL = "cancel"
    EXPIRE = "expire"
    REFUND = "refund"


_OPEN = frozenset({Status.REQUIRES_PAYMENT_METHOD, Status.REQUIRES_ACTION, Status.REQUIRES_CAPTURE})
_ALLOWED: dict[Action, frozenset[Status]] = {
    Action.AUTHORIZE: frozenset({Status.REQUIRES_PAYMENT_METHOD}),
    Action.CONFIRM: frozenset({Status.REQUIRES_ACTION}),
    Action.CAPTURE: frozenset({Status.REQUIRES_CAPTURE}),
    Action.CANCEL: _OPEN,
    Action.EXPIRE: _OPEN,
    Action.REFUND: frozenset({Status.SUCCEEDED}),
}


_REFUSAL_CODE = {
    Action.AUTHORIZE: "payment_not_payable",
    Action.CONFIRM: "payment_not_confirmable",
    Action.CAPTURE: "payment_not_capturable",
    Action.CANCEL: "payment_not_cancelable",
    Action.EXPIRE: "payment_not_expirable",
    Action.REFUND: "payment_not_refundable",
}


def check_transition(status: Status, action: Action) -> None:
    if status not in _ALLOWED[action]:
        raise InvalidState(
            f"cannot {action.value} a payment that is {status.value}", code=_REFUSAL_CODE[action],
            status_now=status.value,
        )


def _positive(amount_minor: int, param: str) -> None:
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
        raise InvalidRequest("amount must be a positive integer of minor units", code="invalid_amount", param=param)


@dataclass(frozen=True, slots=True)
class Payment:
    id: uuid.UUID
    merchant_id: uuid.UUID
    amount_minor: int
    currency: str
    status: Status
    capture_method: CaptureMethod
    expires_at: datetime
    payer_id: uuid.UUID | None = None
    authorized_minor: int = 0
    captured_minor: int = 0
    refunded_minor: int = 0
    fee_minor: int = 0
    authorization_expires_at: datetime | None = None
    confirm_by: datetime | None = None

    @property
    def holds_funds(self) -> bool:
        return self.status in (Status.REQUIRES_CAPTURE, Status.REQUIRES_ACTION)

    def authorize(
        self, payer_id: uuid.UUID, now: datetime, authorization_ttl_s: int, *, confirm_within_s: int | None = None
    ) -> Payment:
        """The payer's wallet backs the full amount; auto-capture payments succeed at once.

        With ``confirm_within_s`` the payer must still confirm (PIN): the money is held meanwhile.
        """
        check_transition(self.status, Action.AUTHORIZE)
        if now >= self.expires_at:
            raise InvalidState("the payment has expired", code="payment_expired", status_now=Status.EXPIRED.value)
        if confirm_within_s is not None:
            return replace(
                self, status=Status.REQUIRES_ACTION, payer_id=payer_id, authorized_minor=self.amount_minor,
                confirm_by=now + timedelta(seconds=confirm_within_s),
            )
        return self._authorized(payer_id, now, authorization_ttl_s)

    def confirm(self, now: datetime, authorization_ttl_s: int) -> Payment:
        """The payer confirmed (its PIN was checked by the caller) in time."""
        check_transition(self.status, Action.CONFIRM)
        if self.confirm_by is not None and now >= self.confirm_by:
            raise InvalidState("the time to confirm has passed", code="confirmation_expired",
                               status_now=self.status.value)
        assert self.payer_id is not None
        return replace(self._authorized(self.payer_id, now, authorization_ttl_s), confirm_by=None)

    def _authorized(self, payer_id: uuid.UUID, now: datetime, authorization_ttl_s: int) -> Payment:
        if self.capture_method is CaptureMethod.AUTOMATIC:
            return replace(
                self, status=Status.SUCCEEDED, payer_id=payer_id,
                authorized_minor=self.amount_minor, captured_minor=self.amount_minor,
            )
        return replace(
            self, status=Status.REQUIRES_CAPTURE, payer_id=payer_id, authorized_minor=self.amount_minor,
            authorization_expires_at=now + timedelta(seconds=authorization_ttl_s),
        )

    def capture(self, amount_minor: int | None, now: datetime | None = None) -> Payment:
        """Capture all (``None``) or part of the authorisation; the rest of the hold is released.

        A lapsed authorisation (``now`` past ``authorization_expires_at``) is refused even before the
        expiry worker has released it.
        """
        check_transition(self.status, Action.CAPTURE)
        if now is not None and self.authorization_expires_at is not None and now >= self.authorization_expires_at:
            raise InvalidState("the authorisation has expired", code="authorization_expired",
                               status_now=self.status.value)
        amount = self.authorized_minor if amount_minor is None else amount_minor
        _positive(amount, "amount_to_capture")
        if amount > self.authorized_minor:
            raise InvalidRequest(
                "cannot capture more than was authorized", code="amount_too_large", param="amount_to_capture"
            )
        return replace(self, status=Status.SUCCEEDED, captured_minor=amount)

    def cancel(self) -> Payment:
        check_transition(self.status, Action.CANCEL)
        return replace(self, status=Status.CANCELED)

    def expire(self) -> Payment:
        check_transition(self.status, Action.EXPIRE)
        return replace(self, status=Status.EXPIRED)

    def refund(self, amount_minor: int | None) -> tuple[Payment, int]:
        """Refund part or all of what remains; returns the new payment and the refunded amount."""
        check_transition(self.status, Action.REFUND)
        remaining = self.captured_minor - self.refunded_minor
        amount = remaining if amount_minor is None else amount_minor
        if remaining == 0:
            raise InvalidState("the payment is fully refunded", code="payment_fully_refunded")
        _positive(amount, "amount")
        if amount > remaining:
            raise InvalidRequest(
                f"at most {remaining} minor units remain refundable", code="amount_too_large", param="amount",
                refundable_minor=remaining,
            )
        return replace(self, refunded_minor=self.refunded_minor + amount), amount
