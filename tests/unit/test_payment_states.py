"""The payment state machine: every (status, action) pair, expiry, capture and refund arithmetic."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.payments import (
    Action,
    CaptureMethod,
    Payment,
    Status,
    check_transition,
)
from gateway.errors import Conflict, InvalidRequest, InvalidState

NOW = datetime(2026, 11, 3, 9, 30, tzinfo=UTC)
EXPIRES_AT = NOW + timedelta(minutes=15)
PAYER = uuid.UUID("33333333-3333-4333-8333-333333333333")
AUTHORIZATION_TTL_S = 604_800
AMOUNT_MINOR = 10_000


def new_payment(capture_method: CaptureMethod = CaptureMethod.MANUAL, amount_minor: int = AMOUNT_MINOR) -> Payment:
    return Payment(
        id=uuid.UUID("44444444-4444-4444-8444-444444444444"),
        merchant_id=uuid.UUID("55555555-5555-4555-8555-555555555555"),
        amount_minor=amount_minor,
        currency="CNY",
        status=Status.REQUIRES_PAYMENT_METHOD,
        capture_method=capture_method,
        expires_at=EXPIRES_AT,
    )


def authorized(amount_minor: int = AMOUNT_MINOR) -> Payment:
    return new_payment(amount_minor=amount_minor).authorize(PAYER, NOW, AUTHORIZATION_TTL_S)


def captured(amount_minor: int = AMOUNT_MINOR) -> Payment:
    return authorized(amount_minor).capture(None)


# Each status reached through the public transitions, as the services reach it.
PAYMENT_IN: dict[Status, Callable[[], Payment]] = {
    Status.REQUIRES_PAYMENT_METHOD: new_payment,
    Status.REQUIRES_ACTION: lambda: new_payment().authorize(PAYER, NOW, AUTHORIZATION_TTL_S, confirm_within_s=60),
    Status.REQUIRES_CAPTURE: authorized,
    Status.SUCCEEDED: captured,
    Status.CANCELED: lambda: new_payment().cancel(),
    Status.EXPIRED: lambda: new_payment().expire(),
}

ACT: dict[Action, Callable[[Payment], Payment]] = {
    Action.AUTHORIZE: lambda p: p.authorize(PAYER, NOW, AUTHORIZATION_TTL_S),
    Action.CONFIRM: lambda p: p.confirm(NOW, AUTHORIZATION_TTL_S),
    Action.CAPTURE: lambda p: p.capture(None),
    Action.CANCEL: lambda p: p.cancel(),
    Action.EXPIRE: lambda p: p.expire(),
    Action.REFUND: lambda p: p.refund(None)[0],
}

REFUSAL_CODE = {
    Action.AUTHORIZE: "payment_not_payable",
    Action.CONFIRM: "payment_not_confirmable",
    Action.CAPTURE: "payment_not_capturable",
    Action.CANCEL: "payment_not_cancelable",
    Action.EXPIRE: "payment_not_expirable",
    Action.REFUND: "payment_not_refundable",
}

RPM, RA, RC, OK, CX, EX = (
    Status.REQUIRES_PAYMENT_METHOD, Status.REQUIRES_ACTION, Status.REQUIRES_CAPTURE, Status.SUCCEEDED,
    Status.CANCELED, Status.EXPIRED,
)  # fmt: skip
A, F, C, X, E, R = Action.AUTHORIZE, Action.CONFIRM, Action.CAPTURE, Action.CANCEL, Action.EXPIRE, Action.REFUND

# (status, action) -> the next status, or None where the transition is refused.
TRANSITIONS: dict[tuple[Status, Action], Status | None] = {
    (RPM, A): RC, (RPM, F): None, (RPM, C): None, (RPM, X): CX, (RPM, E): EX, (RPM, R): None,
    (RA, A): None, (RA, F): RC, (RA, C): None, (RA, X): CX, (RA, E): EX, (RA, R): None,
    (RC, A): None, (RC, F): None, (RC, C): OK, (RC, X): CX, (RC, E): EX, (RC, R): None,
    (OK, A): None, (OK, F): None, (OK, C): None, (OK, X): None, (OK, E): None, (OK, R): OK,
    (CX, A): None, (CX, F): None, (CX, C): None, (CX, X): None, (CX, E): None, (CX, R): None,
    (EX, A): None, (EX, F): None, (EX, C): None, (EX, X): None, (EX, E): None, (EX, R): None,
}  # fmt: skip


def test_the_table_covers_every_pair() -> None:
    assert set(TRANSITIONS) == set(itertools.product(Status, Action))


def test_each_starting_payment_is_in_its_status() -> None:
    for status, build in PAYMENT_IN.items():
        assert build().status is status


@pytest.mark.parametrize(("status", "action"), sorted(TRANSITIONS), ids=lambda v: str(v))
def test_transition(status: Status, action: Action) -> None:
    before = PAYMENT_IN[status]()
    expected = TRANSITIONS[(status, action)]
    if expected is not None:
        check_transition(status, action)
        assert ACT[action](before).status is expected
        return
    with pytest.raises(InvalidState) as caught:
        ACT[action](before)
    error = caught.value
    assert isinstance(error, Conflict)
    assert error.status == 409
    assert error.code == REFUSAL_CODE[action]
    assert error.extra == {"status_now": status.value}
    body = error.body("req_1")["error"]
    assert (body["code"], body["status_now"]) == (REFUSAL_CODE[action], status.value)
    with pytest.raises(InvalidState):
        check_transition(status, action)


def test_terminal_states_accept_nothing() -> None:
    for status in (Status.CANCELED, Status.EXPIRED):
        assert all(TRANSITIONS[(status, action)] is None for action in Action)


# -- authorize ----------------------------------------------------------------------------------


def test_manual_authorize_holds_the_full_amount() -> None:
    payment = authorized()
    assert payment.status is Status.REQUIRES_CAPTURE
    assert payment.holds_funds
    assert (payment.payer_id, payment.authorized_minor, payment.captured_minor) == (PAYER, AMOUNT_MINOR, 0)
    assert payment.authorization_expires_at == NOW + timedelta(seconds=AUTHORIZATION_TTL_S)


def test_automatic_authorize_succeeds_at_once() -> None:
    payment = new_payment(CaptureMethod.AUTOMATIC).authorize(PAYER, NOW, AUTHORIZATION_TTL_S)
    assert payment.status is Status.SUCCEEDED
    assert not payment.holds_funds
    assert (payment.payer_id, payment.authorized_minor, payment.captured_minor) == (PAYER, AMOUNT_MINOR, AMOUNT_MINOR)
    assert payment.authorization_expires_at is None


@pytest.mark.parametrize("capture_method", list(CaptureMethod))
@pytest.mark.parametrize("now", [EXPIRES_AT, EXPIRES_AT + timedelta(microseconds=1), EXPIRES_AT + timedelta(days=1)])
def test_authorize_at_or_after_expiry_refused(capture_method: CaptureMethod, now: datetime) -> None:
    with pytest.raises(InvalidState) as caught:
        new_payment(capture_method).authorize(PAYER, now, AUTHORIZATION_TTL_S)
    assert (caught.value.status, caught.value.code) == (409, "payment_expired")
    assert caught.value.extra == {"status_now": "expired"}


def test_authorize_just_before_expiry_accepted() -> None:
    payment = new_payment().authorize(PAYER, EXPIRES_AT - timedelta(microseconds=1), AUTHORIZATION_TTL_S)
    assert payment.status is Status.REQUIRES_CAPTURE


def test_only_requires_action_and_requires_capture_hold_funds() -> None:
    holding = [status for status, build in PAYMENT_IN.items() if build().holds_funds]
    assert holding == [Status.REQUIRES_ACTION, Status.REQUIRES_CAPTURE]


# -- capture ------------------------------------------------------------------------------------


def test_capture_more_than_authorized_refused() -> None:
    before = authorized()
    with pytest.raises(InvalidRequest) as caught:
        before.capture(AMOUNT_MINOR + 1)
    assert (caught.value.status, caught.value.code, caught.value.param) == (
        400,
        "amount_too_large",
        "amount_to_capture",
    )


def test_partial_capture() -> None:
    payment = authorized().capture(6_000)
    assert payment.status is Status.SUCCEEDED
    assert (payment.authorized_minor, payment.captured_minor, payment.refunded_minor) == (AMOUNT_MINOR, 6_000, 0)
    assert not payment.holds_funds


def test_full_capture_by_default_and_by_amount() -> None:
    assert authorized().capture(None).captured_minor == AMOUNT_MINOR
    assert authorized().capture(AMOUNT_MINOR).captured_minor == AMOUNT_MINOR


def test_capture_happens_once() -> None:
    with pytest.raises(InvalidState) as caught:
        authorized().capture(1_000).capture(1_000)
    assert caught.value.code == "payment_not_capturable"


# -- refund -------------------------------------------------------------------------------------


def test_refund_more_than_remaining_refused() -> None:
    payment, _ = captured().refund(4_000)
    with pytest.raises(InvalidRequest) as caught:
        payment.refund(6_001)
    error = caught.value
    assert (error.status, error.code, error.param) == (400, "amount_too_large", "amount")
    assert error.extra == {"refundable_minor": 6_000}


def test_refund_more_than_a_partial_capture_refused() -> None:
    with pytest.raises(InvalidRequest) as caught:
        authorized().capture(6_000).refund(6_001)
    assert caught.value.extra == {"refundable_minor": 6_000}


def test_refund_defaults_to_what_remains() -> None:
    payment, refunded_minor = captured().refund(2_500)
    payment, refunded_minor = payment.refund(None)
    assert refunded_minor == AMOUNT_MINOR - 2_500
    assert payment.refunded_minor == AMOUNT_MINOR


def test_fully_refunded_payment_refuses_more_refunds() -> None:
    payment, _ = captured().refund(None)
    assert payment.status is Status.SUCCEEDED
    for amount_minor in (None, 1):
        with pytest.raises(InvalidState) as caught:
            payment.refund(amount_minor)
        assert (caught.value.status, caught.value.code) == (409, "payment_fully_refunded")


@st.composite
def capture_and_refunds(draw: st.DrawFn) -> tuple[int, int, list[int]]:
    """An authorised amount, a captured part of it, and the captured part cut into partial refunds."""
    authorized_minor = draw(st.integers(min_value=1, max_value=10**12))
    captured_minor = draw(st.integers(min_value=1, max_value=authorized_minor))
    cuts = sorted(draw(st.sets(st.integers(min_value=1, max_value=max(captured_minor - 1, 1)), max_size=20)))
    bounds = [0, *(cut for cut in cuts if cut < captured_minor), captured_minor]
    return authorized_minor, captured_minor, [high - low for low, high in itertools.pairwise(bounds)]


@given(capture_and_refunds())
def test_partial_refunds_add_up_to_the_captured_amount(case: tuple[int, int, list[int]]) -> None:
    authorized_minor, captured_minor, parts_minor = case
    payment = authorized(authorized_minor).capture(captured_minor)
    for part_minor in parts_minor:
        remaining_minor = payment.captured_minor - payment.refunded_minor
        with pytest.raises(InvalidRequest):
            payment.refund(remaining_minor + 1)
        payment, refunded_minor = payment.refund(part_minor)
        assert refunded_minor == part_minor
        assert 0 <= payment.refunded_minor <= payment.captured_minor <= payment.authorized_minor <= payment.amount_minor
        assert payment.status is Status.SUCCEEDED
    assert payment.refunded_minor == captured_minor
    with pytest.raises(InvalidState) as caught:
        payment.refund(None)
    assert caught.value.code == "payment_fully_refunded"


def test_transitions_do_not_mutate() -> None:
    before = authorized()
    before.capture(1_000)
    before.cancel()
    assert before.status is Status.REQUIRES_CAPTURE
    assert before.captured_minor == 0


# -- confirm (a counter payment waiting for the payer's PIN) ------------------------------------


def test_waiting_for_confirmation_holds_and_confirming_in_time_captures_automatic_payments() -> None:
    waiting = new_payment(CaptureMethod.AUTOMATIC).authorize(PAYER, NOW, AUTHORIZATION_TTL_S, confirm_within_s=60)
    assert waiting.status is Status.REQUIRES_ACTION and waiting.holds_funds
    assert waiting.authorized_minor == AMOUNT_MINOR and waiting.captured_minor == 0
    assert waiting.confirm_by == NOW + timedelta(seconds=60)
    done = waiting.confirm(NOW + timedelta(seconds=59), AUTHORIZATION_TTL_S)
    assert done.status is Status.SUCCEEDED and done.captured_minor == AMOUNT_MINOR and done.confirm_by is None


def test_confirming_too_late_is_refused() -> None:
    waiting = new_payment().authorize(PAYER, NOW, AUTHORIZATION_TTL_S, confirm_within_s=60)
    with pytest.raises(InvalidState) as caught:
        waiting.confirm(NOW + timedelta(seconds=60), AUTHORIZATION_TTL_S)
    assert caught.value.code == "confirmation_expired"
