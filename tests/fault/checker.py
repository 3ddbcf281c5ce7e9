"""What a bank run must prove, as pure functions of what the client journaled, what it observed,
the nemesis's windows and a snapshot of the database taken after everything healed.

Each check returns anomalies as sentences naming the key, payment or wallet concerned:
- every confirmed payment exists exactly once, with the intended payer, merchant and amount;
- nothing exists that no client asked for (every payment row carries a journaled create key);
- every wallet's balance is its top-ups minus captures plus refunds, both as the client knows
  them (its confirmed answers) and as the database's own rows say;
- one event per change: payment.created once per payment, payment.succeeded once per captured
  payment, refund.succeeded once per refund, wallet.top_up once per top-up;
- every stored idempotent answer is the bytes the client got for that key (and all definite
  answers a key got are the same bytes);
- the ledger invariant checker reports nothing;
- no HTTP 500 outside an outage window (nor inside one, unless allowed: a lost connection is a
  retryable 503); no key answered "in use" for longer than a limit (a
  crashed owner must not block its key for the whole lock timeout); every operation got a
  definite answer once the faults were over.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.domain.ids import Kind, decode
from tests.fault.client import Observation
from tests.fault.journal import Op
from tests.fault.nemesis import Window
from tests.fault.schedule import FaultKind


@dataclass(frozen=True, slots=True)
class PaymentRow:
    id: uuid.UUID
    merchant_id: uuid.UUID
    payer_id: uuid.UUID | None
    amount_minor: int
    status: str
    captured_minor: int
    refunded_minor: int
    merchant_reference: str | None


@dataclass(frozen=True, slots=True)
class RefundRow:
    id: uuid.UUID
    payment_id: uuid.UUID
    amount_minor: int


@dataclass(frozen=True, slots=True)
class StoredKey:
    principal: str
    key: str
    status: int | None
    body: bytes | None


@dataclass
class Snapshot:
    """The database after the run (read in one repeatable-read transaction)."""

    payments: list[PaymentRow]
    refunds: list[RefundRow]
    events: Counter[tuple[str, uuid.UUID]]           # (type, object id) -> count
    keys: list[StoredKey]
    wallet_available: dict[uuid.UUID, int]           # holder -> posted - held, CNY
    top_ups: dict[uuid.UUID, list[tuple[uuid.UUID, int]]]  # holder -> (transfer id, amount)
    invariants: dict[str, list[dict[str, object]]]


@dataclass
class World:
    """Who is who: the shops' merchant ids and the holders' ids, by the client's indexes."""

    merchants: list[uuid.UUID]
    holders: list[uuid.UUID]
    top_up_minor: int


@dataclass
class Verdict:
    anomalies: list[str] = field(default_factory=list)

    def add(self, items: Iterable[str]) -> None:
        self.anomalies.extend(items)


def _payment_id(text: object) -> uuid.UUID | None:
    return decode(Kind.PAYMENT, text) if isinstance(text, str) else None


def check_payments(ops: list[Op], snap: Snapshot, world: World) -> list[str]:
    found: list[str] = []
    by_reference: dict[str, list[PaymentRow]] = defaultdict(list)
    for payment in snap.payments:
        by_reference[payment.merchant_reference or ""].append(payment)
    creates = {op.key: op for op in ops if op.kind == "create"}
    pays = {op.parent: op for op in ops if op.kind == "pay"}
    for reference, rows in by_reference.items():
        if reference not in creates:
            found.append(f"payments nobody asked for: {[str(r.id) for r in rows]} (reference {reference!r})")
        elif len(rows) > 1:
            found.append(f"create key {reference} made {len(rows)} payments: {[str(r.id) for r in rows]}")
    for key, op in creates.items():
        rows = by_reference.get(key, [])
        answer = op.answer
        if answer is None:
            continue  # reported by check_liveness
        if answer.status != 201:
            if rows:
                found.append(f"create {key} answered {answer.status} but payment {rows[0].id} exists")
            continue
        pid = _payment_id(answer.json().get("id"))
        row = next((r for r in rows if r.id == pid), None)
        if row is None:
            found.append(f"confirmed payment {pid} of create {key} does not exist (rows: {[str(r.id) for r in rows]})")
            continue
        if row.merchant_id != world.merchants[op.shop] or row.amount_minor != op.amount:
            found.append(f"payment {row.id} of {key}: merchant/amount {row.merchant_id}/{row.amount_minor}, "
                         f"intended {world.merchants[op.shop]}/{op.amount}")
        pay = pays.get(key)
        paid = pay is not None and pay.answer is not None and pay.answer.status == 200 \
            and pay.answer.json().get("status") == "succeeded"
        if paid:
            assert pay is not None
            if row.payer_id != world.holders[pay.holder] or row.captured_minor != op.amount:
                found.append(f"payment {row.id} confirmed paid by holder {pay.holder}: payer {row.payer_id}, "
                             f"captured {row.captured_minor} of {op.amount}")
        elif pay is not None and pay.answer is not None and row.captured_minor:
            found.append(f"payment {row.id}: pay {pay.key} answered {pay.answer.status} yet {row.captured_minor} "
                         f"was captured")
        elif pay is None and row.payer_id is not None:
            found.append(f"payment {row.id} was paid but no client sent a pay for it")
    return found


def check_refunds(ops: list[Op], snap: Snapshot) -> list[str]:
    found: list[str] = []
    confirmed: dict[uuid.UUID, tuple[str, int]] = {}
    for op in ops:
        if op.kind == "refund" and op.answer is not None and op.answer.status == 201:
            rid = decode(Kind.REFUND, str(op.answer.json().get("id")))
            if rid is not None:
                confirmed[rid] = (op.key, op.amount)
    rows = {row.id: row for row in snap.refunds}
    for rid, (key, amount) in confirmed.items():
        row = rows.get(rid)
        if row is None:
            found.append(f"confirmed refund {rid} of {key} does not exist")
        elif row.amount_minor != amount:
            found.append(f"refund {rid} of {key}: {row.amount_minor}, intended {amount}")
    for rid, row in rows.items():
        if rid not in confirmed:
            found.append(f"refund {rid} ({row.amount_minor} of payment {row.payment_id}) was never confirmed")
    refunded: Counter[uuid.UUID] = Counter()
    for row in snap.refunds:
        refunded[row.payment_id] += row.amount_minor
    for payment in snap.payments:
        if payment.refunded_minor != refunded[payment.id]:
            found.append(f"payment {payment.id}: refunded_minor {payment.refunded_minor}, refund rows "
                         f"{refunded[payment.id]}")
    return found


def check_balances(ops: list[Op], snap: Snapshot, world: World) -> list[str]:
    found: list[str] = []
    expected = {holder: world.top_up_minor for holder in world.holders}
    for op in ops:
        answer = op.answer
        if answer is None:
            continue
        holder = world.holders[op.holder]
        if op.kind == "pay" and answer.status == 200 and answer.json().get("status") == "succeeded":
            expected[holder] -= op.amount
        elif op.kind == "refund" and answer.status == 201:
            expected[holder] += op.amount
    captured: Counter[uuid.UUID] = Counter()
    for payment in snap.payments:
        if payment.payer_id is not None:
            captured[payment.payer_id] += payment.captured_minor - payment.refunded_minor
    for holder, want in expected.items():
        have = snap.wallet_available.get(holder, 0)
        top_ups = sum(amount for _, amount in snap.top_ups.get(holder, []))
        if have != want:
            found.append(f"wallet {holder}: balance {have}, the client's confirmed answers say {want}")
        if have != top_ups - captured[holder]:
            found.append(f"wallet {holder}: balance {have}, its rows say {top_ups} - {captured[holder]} (captured "
                         f"net of refunds)")
    return found


def check_events(snap: Snapshot) -> list[str]:
    found: list[str] = []

    def exactly(kind: str, object_id: uuid.UUID, count: int) -> None:
        have = snap.events.get((kind, object_id), 0)
        if have != count:
            found.append(f"{kind} for {object_id}: {have} events, expected {count}")

    payments = {p.id for p in snap.payments}
    refunds = {r.id for r in snap.refunds}
    transfers = {tid for items in snap.top_ups.values() for tid, _ in items}
    for payment in snap.payments:
        exactly("payment.created", payment.id, 1)
        exactly("payment.succeeded", payment.id, 1 if payment.captured_minor else 0)
    for refund in snap.refunds:
        exactly("refund.succeeded", refund.id, 1)
    for transfer in transfers:
        exactly("wallet.top_up", transfer, 1)
    for (kind, object_id), count in snap.events.items():
        known = (object_id in payments if kind.startswith("payment.") else object_id in refunds
                 if kind.startswith("refund.") else object_id in transfers if kind == "wallet.top_up" else True)
        if not known:
            found.append(f"{count} {kind} event(s) for {object_id}, which does not exist")
    return found


def check_idempotency(ops: list[Op], snap: Snapshot) -> list[str]:
    found: list[str] = []
    stored: dict[str, list[StoredKey]] = defaultdict(list)
    for row in snap.keys:
        stored[row.key].append(row)
    for op in ops:
        if not op.answers:
            continue
        distinct = {(a.status, a.body) for a in op.answers}
        if len(distinct) > 1:
            found.append(f"key {op.key} ({op.kind}) got {len(distinct)} different definite answers: "
                         + "; ".join(f"{status} {body[:160]!r}" for status, body in sorted(distinct)))
        if any(a.status == 422 for a in op.answers):
            found.append(f"key {op.key} answered 422 (reused with different parameters?) though it never was")
        rows = stored.get(op.key, [])
        if len(rows) != 1:
            found.append(f"key {op.key}: {len(rows)} stored rows")
            continue
        row = rows[0]
        for answer in op.answers:
            if (row.status, row.body) != (answer.status, answer.body):
                found.append(f"key {op.key} ({op.kind}): stored {row.status} {(row.body or b'')[:160]!r}, the client "
                             f"got {answer.status} {answer.body[:160]!r}")
    return found


def check_invariants(snap: Snapshot) -> list[str]:
    return [f"ledger invariant {name}: {rows[:3]}" for name, rows in snap.invariants.items() if rows]


def _overlaps(obs: Observation, windows: list[Window]) -> bool:
    return any(obs.received_s >= w.start_s and obs.sent_s <= (w.end_s if w.end_s is not None else float("inf"))
               for w in windows)


def check_observations(observations: list[Observation], windows: list[Window], in_use_limit_s: float, *,
                       allow_500_in_faults: bool = False) -> list[str]:
    """A 5xx other than 503 is a bug: outside a fault window always; inside one too unless allowed
    (a lost database connection or a paused server is a retryable 503, never a 500)."""
    found: list[str] = []
    for obs in observations:
        if obs.status is None or obs.status < 500 or obs.status == 503:
            continue
        during = next((w for w in windows if _overlaps(obs, [w])), None)
        where = (f"during fault #{during.fault.index} ({during.fault.kind}; a retryable failure must be a 503)"
                 if during is not None else "outside any fault window")
        if during is None or not allow_500_in_faults:
            found.append(f"HTTP {obs.status} {where}: key {obs.key} ({obs.kind}) sent at {obs.sent_s:.2f} s, "
                         f"answered at {obs.received_s:.2f} s")
    in_use: dict[str, list[float]] = defaultdict(list)
    for obs in observations:
        if obs.status == 409 and obs.code == "idempotency_key_in_use":
            in_use[obs.key].append(obs.received_s)
    for key, times in in_use.items():
        first_s, last_s = min(times), max(times)
        # A stalled owner is alive: its key is taken over only after the lock timeout, so the time a
        # stall overlaps the streak is allowed on top of the limit (a crashed owner gets no such grace).
        stalled_s = sum(max(0.0, min(last_s, w.end_s) - max(first_s, w.start_s)) for w in windows
                        if w.fault.kind is FaultKind.STALL_GATEWAY and w.end_s is not None)
        if last_s - first_s > in_use_limit_s + stalled_s:
            found.append(f"key {key} answered idempotency_key_in_use for {last_s - first_s:.1f} s "
                         f"(limit {in_use_limit_s} s{f' + {stalled_s:.1f} s of stall' if stalled_s else ''})")
    return found


def errors_in_windows(observations: list[Observation], windows: list[Window]) -> Counter[str]:
    """HTTP 500s answered during a fault, by the kind of fault (a figure: a 503 is the better answer)."""
    found: Counter[str] = Counter()
    for obs in observations:
        if obs.status is not None and obs.status >= 500 and obs.status != 503:
            for window in windows:
                if _overlaps(obs, [window]):
                    found[str(window.fault.kind)] += 1
                    break
    return found


def check_liveness(ops: list[Op]) -> list[str]:
    return [f"{op.kind} {op.key} never got a definite answer, even after the faults ended"
            for op in ops if op.answer is None]


def check_progress(observations: list[Observation], windows: list[Window], gateway_count: int) -> list[str]:
    """A single stalled gateway must not stop the others: some call succeeds during its stall."""
    found: list[str] = []
    if gateway_count < 2:
        return found
    for window in windows:
        if window.fault.kind is not FaultKind.STALL_GATEWAY or window.end_s is None:
            continue
        successes = sum(1 for o in observations if o.status is not None and 200 <= o.status < 300
                        and window.start_s <= o.received_s <= window.end_s)
        if successes == 0:
            found.append(f"fault #{window.fault.index} (stall of gateway {window.fault.target} for "
                         f"{window.fault.duration_s} s): no call succeeded on the other gateways meanwhile")
    return found


def recovery_s(observations: list[Observation], window: Window) -> float | None:
    """From the end of a fault to the first success answered after it."""
    if window.end_s is None:
        return None
    end_s = window.end_s
    times = [o.received_s for o in observations
             if o.status is not None and 200 <= o.status < 300 and o.received_s >= end_s]
    return min(times) - end_s if times else None


def check(ops: list[Op], snap: Snapshot, world: World, observations: list[Observation], windows: list[Window],
          *, in_use_limit_s: float, gateway_count: int, allow_500_in_faults: bool = False) -> list[str]:
    verdict = Verdict()
    verdict.add(check_payments(ops, snap, world))
    verdict.add(check_refunds(ops, snap))
    verdict.add(check_balances(ops, snap, world))
    verdict.add(check_events(snap))
    verdict.add(check_idempotency(ops, snap))
    verdict.add(check_invariants(snap))
    verdict.add(check_observations(observations, windows, in_use_limit_s, allow_500_in_faults=allow_500_in_faults))
    verdict.add(check_liveness(ops))
    verdict.add(check_progress(observations, windows, gateway_count))
    return verdict.anomalies
