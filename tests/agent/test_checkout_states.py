"""The checkout's pure parts: transitions, compensations, the tap body, pay-codes, answers."""

from __future__ import annotations

import datetime

import pytest

from hardware.nfc import TapResult, TerminalData
from hardware.nfc.emv import Tag
from hardware.serial.concert import ResultStatus
from pos_agent.checkout import (
    Authorised,
    CancelRequested,
    CheckoutState,
    CodeScanned,
    Compensation,
    ConfirmationRequired,
    InvalidTransition,
    Method,
    OfflineApproved,
    PaymentOpened,
    PaymentUnavailable,
    Phase,
    QrPaid,
    Refused,
    SaleOutcome,
    TapRead,
    Unknown,
    build_receipt,
    compensations,
    is_pay_code,
    tap_body,
    transition,
)
from pos_agent.journal import OpKind, OpState, Operation
from pos_agent.register import concert_result


def run(*events: object, state: CheckoutState | None = None) -> CheckoutState:
    current = state or CheckoutState()
    for event in events:
        current = transition(current, event)  # type: ignore[arg-type]
    return current


def test_a_tap_settles_the_sales_payment() -> None:
    state = run(PaymentOpened("pay_s"), TapRead(), Authorised("pay_s"))
    assert state.phase is Phase.APPROVED and state.method is Method.TAP
    assert state.payment_id == "pay_s" and state.sale_payment_id == "pay_s"


def test_the_qr_code_won_the_race_against_the_tap() -> None:
    state = run(PaymentOpened("pay_s"), TapRead(), Authorised("pay_s", Method.QR))
    assert (state.phase, state.method, state.payment_id) == (Phase.APPROVED, Method.QR, "pay_s")


def test_qr_paid_wins_with_the_sales_payment() -> None:
    state = run(PaymentOpened("pay_s"), QrPaid("pay_s"))
    assert (state.phase, state.method, state.payment_id) == (Phase.APPROVED, Method.QR, "pay_s")


def test_pay_code_needing_confirmation_then_confirmed() -> None:
    state = run(PaymentOpened("pay_s"), CodeScanned(), ConfirmationRequired("pay_p"))
    assert state.phase is Phase.CONFIRMING and state.payment_id == "pay_p"
    assert run(Authorised("pay_p"), state=state).phase is Phase.APPROVED


def test_declined_tap_declines_the_sale() -> None:
    state = run(PaymentOpened("pay_s"), TapRead(), Refused("insufficient_funds"))
    assert state.phase is Phase.DECLINED and state.reason == "insufficient_funds" and not state.approved


def test_offline_tap_only_when_unreachable_tap_was_authorising() -> None:
    state = run(PaymentUnavailable(unreachable=True), TapRead(), OfflineApproved("ttid"))
    assert state.phase is Phase.APPROVED and state.method is Method.TAP_OFFLINE and not state.online
    assert state.terminal_transaction_id == "ttid" and state.payment_id is None


def test_pay_code_offline_is_declined_at_once() -> None:
    state = run(PaymentUnavailable(unreachable=True), CodeScanned())
    assert state.phase is Phase.DECLINED and state.reason == "gateway_unreachable"


def test_offline_approval_of_a_pay_code_is_impossible() -> None:
    state = run(PaymentOpened("pay_s"), CodeScanned())
    with pytest.raises(InvalidTransition):
        transition(state, OfflineApproved("x"))


def test_unknown_then_resolved() -> None:
    state = run(PaymentOpened("pay_s"), TapRead(), Unknown())
    assert state.phase is Phase.RESOLVING
    assert run(Authorised("pay_t"), state=state).phase is Phase.APPROVED
    assert run(Refused("outcome_unknown"), state=state).phase is Phase.DECLINED
    with pytest.raises(InvalidTransition):
        transition(state, Unknown())


@pytest.mark.parametrize("prefix", [(), (PaymentOpened("pay_s"),), (PaymentOpened("pay_s"), TapRead())])
def test_cancel_from_any_open_phase(prefix: tuple[object, ...]) -> None:
    state = run(*prefix, CancelRequested("cancelled_by_cashier"))
    assert state.phase is Phase.CANCELLED and state.reason == "cancelled_by_cashier"


def test_nothing_after_the_end() -> None:
    state = run(PaymentOpened("pay_s"), QrPaid("pay_s"))
    with pytest.raises(InvalidTransition):
        transition(state, CancelRequested("late"))


def test_events_out_of_phase_are_bugs() -> None:
    with pytest.raises(InvalidTransition):
        transition(CheckoutState(), TapRead())
    with pytest.raises(InvalidTransition):
        run(PaymentOpened("pay_s"), Authorised("pay_x"))


def op(kind: OpKind, state: OpState, reference: str, payment_id: str | None) -> Operation:
    return Operation(f"k-{reference}", kind, "T1-000001", reference, payment_id, {}, state, None, 0.0)


def test_compensations_of_one_payment_sales() -> None:
    operations = [
        op(OpKind.CREATE_PAYMENT, OpState.DONE, "T1-000001", "pay_s"),
        op(OpKind.ISSUE_QR, OpState.DONE, "T1-000001", "pay_s"),
        op(OpKind.TAP, OpState.FAILED, "T1-000001-T1", "pay_s"),
        op(OpKind.TAP, OpState.PENDING, "T1-000001-T2", "pay_s"),
    ]
    assert compensations(operations, "pay_s") == []
    # An unknown tap on the sale's payment needs no search: reversing the payment covers it.
    assert compensations(operations, None) == [Compensation.reverse("pay_s")]
    offline = [operations[0], op(OpKind.TAP, OpState.FAILED, "T1-000001-T1", "pay_s")]
    assert compensations(offline, None) == [Compensation.reverse("pay_s")]


def test_compensations_reverse_all_but_the_winner_and_resolve_unknowns() -> None:
    operations = [
        op(OpKind.CREATE_PAYMENT, OpState.DONE, "T1-000001-Q1", "pay_q"),
        op(OpKind.ISSUE_QR, OpState.DONE, "T1-000001-Q1", "pay_q"),
        op(OpKind.TAP, OpState.DONE, "T1-000001-T2", "pay_t"),
        op(OpKind.PAY_CODE, OpState.PENDING, "T1-000001-P3", None),
        op(OpKind.TAP, OpState.FAILED, "T1-000001-T4", None),
        op(OpKind.REVERSE, OpState.PENDING, "T1-000001", "pay_q"),
    ]
    assert compensations(operations, "pay_t") == [
        Compensation.reverse("pay_q"), Compensation.resolve("T1-000001-P3")]
    assert compensations(operations, None) == [
        Compensation.reverse("pay_q"), Compensation.reverse("pay_t"), Compensation.resolve("T1-000001-P3")]


def make_tap() -> TapResult:
    terminal = TerminalData(3_800, 156, 156, datetime.date(2026, 11, 23), bytes.fromhex("0A0B0C0D"))
    values = terminal.tag_values()
    pdol = tuple((tag, values[tag]) for tag in (Tag.TTQ, Tag.AMOUNT_AUTHORISED, Tag.TERMINAL_COUNTRY,
                                                Tag.TRANSACTION_CURRENCY, Tag.UNPREDICTABLE_NUMBER))
    return TapResult(aid=bytes.fromhex("F057414C4C455401"), token_pan="99012345678901234", expiry_yymm="3012",
                     service_code="201", psn=1, aip=bytes.fromhex("0080"), iad=bytes.fromhex("06011203A00000"),
                     arqc=bytes.fromhex("0123456789ABCDEF"), cid=0x80, atc=17, terminal=terminal, pdol_values=pdol)


def test_tap_body_follows_the_contract() -> None:
    body = tap_body(make_tap(), terminal_transaction_id="tt1", amount_minor=3_800, currency="CNY",
                    reference=None, payment_id="pay_s", offline_approved_at=None)
    assert body["terminal_transaction_id"] == "tt1" and body["offline_approved_at"] is None
    assert (body["payment"], body["merchant_reference"]) == ("pay_s", None)
    tap = body["tap"]
    assert (tap["token_pan"], tap["psn"], tap["atc"], tap["arqc"], tap["aip"], tap["cid"]) == (
        "99012345678901234", 1, 17, "0123456789ABCDEF", "0080", "80")
    terminal = tap["terminal"]
    assert set(terminal) == {"9F02", "9F03", "9F1A", "95", "5F2A", "9A", "9C", "9F37"}
    assert terminal["9F02"] == "000000003800" and terminal["5F2A"] == "0156" and terminal["9F37"] == "0A0B0C0D"
    assert terminal["9A"] == "261123" and terminal["9C"] == "00"  # not in this PDOL: the terminal's own values


def test_pay_code_recognition() -> None:
    assert is_pay_code("190000000000000001", prefix="19", length=18)
    assert not is_pay_code("130000000000000001", prefix="19", length=18)  # another wallet's
    assert not is_pay_code("19000000000000001", prefix="19", length=18)
    assert not is_pay_code("19000000000000000A", prefix="19", length=18)
    assert not is_pay_code("１９0000000000000001", prefix="19", length=18)  # full-width digits


def test_concert_answers() -> None:
    ok = concert_result(SaleOutcome("T1-000042", 3_800, True, Method.TAP, "pay_abc", None, None))
    assert ok.status is ResultStatus.SUCCESS and ok.private == "000042" and ok.report == "tap pay_abc"
    no = concert_result(SaleOutcome("T1-000043", 100, False, None, None, None, "insufficient_funds"))
    assert no.status is ResultStatus.REJECTED and no.report == "insufficient_funds"


def test_receipt_content() -> None:
    receipt = build_receipt(merchant_name="好面馆", reference="T1-000001", amount_text="CNY 38.00",
                            method=Method.TAP_OFFLINE, payment_id=None, terminal_transaction_id="abcdef0123456789xyz",
                            at=datetime.datetime(2026, 11, 23, 12, 0, 0))
    texts = [item.amount_text for item in receipt.items]
    assert "CNY 38.00" in texts and "OFFLINE abcdef0123456789" in texts and "2026-11-23 12:00:00" in texts
    assert any("Offline" in line for line in receipt.footer_lines)
