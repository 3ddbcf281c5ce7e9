"""The bank run's pure parts, in milliseconds: the schedule is a function of the seed, and the
checker flags each kind of anomaly it promises to (and nothing in a sound history)."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import Counter

from gateway.domain.ids import Kind, encode
from tests.fault import checker
from tests.fault.client import Observation
from tests.fault.journal import Answer, Op
from tests.fault.nemesis import Window
from tests.fault.schedule import Fault, FaultKind, make_schedule

MERCHANT, HOLDER, PAYMENT, REFUND, TOP_UP = (uuid.uuid4() for _ in range(5))
TOP_UP_MINOR = 1_000


def test_schedule_is_a_function_of_the_seed() -> None:
    first = make_schedule(42, 600, 3, 3.0)
    assert first == make_schedule(42, 600, 3, 3.0)
    assert first != make_schedule(43, 600, 3, 3.0)
    assert {f.kind for f in first[:len(FaultKind)]} == set(FaultKind)  # every kind in the first round
    for before, after in zip(first, first[1:], strict=False):
        assert before.at_s + before.duration_s < after.at_s  # never overlapping
    assert all(f.duration_s > 3.0 for f in first if f.kind is FaultKind.STALL_GATEWAY)
    assert all(f.at_s + f.duration_s <= 600 for f in first)


def _history() -> tuple[list[Op], checker.Snapshot, checker.World]:
    """One payment of 300 paid by the holder and refunded 100: sound in every respect."""
    pay_text = encode(Kind.PAYMENT, PAYMENT)
    create_body = json.dumps({"id": pay_text, "status": "requires_payment_method"}).encode()
    pay_body = json.dumps({"id": pay_text, "status": "succeeded"}).encode()
    refund_body = json.dumps({"id": encode(Kind.REFUND, REFUND), "amount": 100}).encode()
    ops = [
        Op("c1", "create", None, 0, 0, 300, "POST", "/v1/payments", "shop", {}, 0.0, [Answer(201, create_body, 0.1)]),
        Op("p1", "pay", "c1", 0, 0, 300, "POST", "/pay", "holder", {}, 0.2, [Answer(200, pay_body, 0.3)]),
        Op("r1", "refund", "c1", 0, 0, 100, "POST", "/refunds", "shop", {}, 0.4, [Answer(201, refund_body, 0.5)]),
    ]
    snap = checker.Snapshot(
        payments=[checker.PaymentRow(PAYMENT, MERCHANT, HOLDER, 300, "succeeded", 300, 100, "c1")],
        refunds=[checker.RefundRow(REFUND, PAYMENT, 100)],
        events=Counter({("payment.created", PAYMENT): 1, ("payment.succeeded", PAYMENT): 1,
                        ("refund.succeeded", REFUND): 1, ("wallet.top_up", TOP_UP): 1}),
        keys=[checker.StoredKey("m", "c1", 201, create_body), checker.StoredKey("h", "p1", 200, pay_body),
              checker.StoredKey("m", "r1", 201, refund_body)],
        wallet_available={HOLDER: TOP_UP_MINOR - 300 + 100},
        top_ups={HOLDER: [(TOP_UP, TOP_UP_MINOR)]},
        invariants={"balanced_entries": []},
    )
    return ops, snap, checker.World([MERCHANT], [HOLDER], TOP_UP_MINOR)


def _check(ops: list[Op], snap: checker.Snapshot, world: checker.World,
           observations: list[Observation] | None = None, windows: list[Window] | None = None) -> list[str]:
    return checker.check(ops, snap, world, observations or [], windows or [], in_use_limit_s=8.0, gateway_count=3)


def test_a_sound_history_has_no_anomalies() -> None:
    assert _check(*_history()) == []


def test_a_payment_made_twice_or_unasked_is_found() -> None:
    ops, snap, world = _history()
    twin = dataclasses.replace(snap.payments[0], id=uuid.uuid4(), payer_id=None, captured_minor=0, refunded_minor=0)
    stray = dataclasses.replace(twin, id=uuid.uuid4(), merchant_reference="nobody")
    snap.payments += [twin, stray]
    snap.events.update({("payment.created", twin.id): 1, ("payment.created", stray.id): 1})
    found = _check(ops, snap, world)
    assert any("made 2 payments" in a for a in found), found
    assert any("nobody asked for" in a for a in found), found


def test_a_wrong_balance_or_amount_is_found() -> None:
    ops, snap, world = _history()
    snap.wallet_available[HOLDER] -= 1
    snap.payments[0] = dataclasses.replace(snap.payments[0], amount_minor=301)
    found = _check(ops, snap, world)
    assert any("the client's confirmed answers say" in a for a in found), found
    assert any("merchant/amount" in a for a in found), found


def test_an_event_twice_is_found() -> None:
    ops, snap, world = _history()
    snap.events[("payment.succeeded", PAYMENT)] = 2
    assert any("payment.succeeded" in a for a in _check(ops, snap, world))


def test_an_answer_other_than_the_stored_one_is_found() -> None:
    ops, snap, world = _history()
    ops[1].answers.append(Answer(409, b'{"error":{"code":"payment_not_payable"}}', 5.0))
    found = _check(ops, snap, world)
    assert any("2 different definite answers" in a for a in found), found
    assert any("stored 200" in a for a in found), found


def test_500s_and_keys_stuck_in_use_are_found() -> None:
    ops, snap, world = _history()
    window = Window(Fault(0, FaultKind.PG_CRASH, 10.0, 2.0, None), 10.0, 12.0)
    observations = [
        Observation("c1", "create", 20.0, 20.1, 500, None, None),     # outside: always an anomaly
        Observation("p1", "pay", 11.0, 11.5, 500, None, None),        # inside: an anomaly unless allowed
        Observation("r1", "refund", 1.0, 1.1, 409, "idempotency_key_in_use", None),
        Observation("r1", "refund", 30.0, 30.1, 409, "idempotency_key_in_use", None),
    ]
    found = _check(ops, snap, world, observations, [window])
    assert sum("HTTP 500" in a for a in found) == 2, found
    assert any("in use" in a or "idempotency_key_in_use" in a for a in found), found
    relaxed = checker.check_observations(observations, [window], 8.0, allow_500_in_faults=True)
    assert sum("HTTP 500" in a for a in relaxed) == 1, relaxed
    stall = Window(Fault(1, FaultKind.STALL_GATEWAY, 0.5, 30.0, 0), 0.5, 30.5)  # a live owner, stalled
    assert not [a for a in checker.check_observations(observations, [window, stall], 8.0) if "in_use" in a]


def test_an_operation_without_a_definite_answer_is_found() -> None:
    ops, snap, world = _history()
    ops.append(Op("c2", "create", None, 0, 0, 50, "POST", "/v1/payments", "shop", {}, 1.0))
    assert any("never got a definite answer" in a for a in _check(ops, snap, world))
