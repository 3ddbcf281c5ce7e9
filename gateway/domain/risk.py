"""Risk rules: which rules match a payment and what the holder must do about it (pure; the caller
reads the counts, the holder's usual amounts and the device's age, and passes them in).

Invariants:
- a rule matches a payment or not from the payment (``Attempt``) and what was read (``Facts``) alone:
  - ``blocked_wallet``: every payment of its holder; ``blocked_device``: every payment from its device;
  - ``velocity_wallet`` / ``velocity_device`` / ``velocity_merchant``: with this payment, the payments
    authorised within ``window_s`` by the holder / from the device / at the merchant (one named
    merchant, or each merchant) would be more than ``max_count``, or total (in the rule's currency)
    more than ``max_amount_minor``; a payment without a device matches no device rule;
  - ``amount_unusual``: in the rule's currency, the holder has at least ``history_min`` captured
    payments among its last ``HISTORY_MAX`` and the amount is more than ``multiplier_pct``/100 times
    their median (or 90th percentile, nearest rank);
  - ``new_device``: in the rule's currency, the amount is at least ``min_amount_minor`` and the
    device was first seen for this holder less than ``device_age_s`` ago (never seen: new);
- each rule carries its outcome; the decision is the most severe outcome among the rules matched,
  after the step-ups the attempt passed: a ``require_pin`` is met by a PIN verified in this attempt,
  a ``require_otp`` by a one-time code verified for this payment; ``decline`` is met by nothing;
- the reasons name every rule matched (id, kind, outcome, what it measured), met or not;
- a payment held for its step-ups (nobody in the request can answer them) is confirmed only with every
  step-up its matched rules ask for (``asked``);
- money leaving the wallet otherwise (a withdrawal, a conversion: ``money_out``) is concerned by the blocks
  alone (``MONEY_OUT_KINDS``: the holder's wallet, the session's device), and a block declines it whatever
  its outcome (no PIN or code is asked there); money coming in (a top-up, a refund) is never checked.
"""

from __future__ import annotations

from collections.abc import Iterable

import math
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Any

HISTORY_MAX = 50  # amounts kept per holder and currency (migration 0024's holder_amounts)


class RuleKind(StrEnum):
    BLOCKED_WALLET = "blocked_wallet"
    VELOCITY_WALLET = "velocity_wallet"
    VELOCITY_DEVICE = "velocity_device"
    VELOCITY_MERCHANT = "velocity_merchant"
    AMOUNT_UNUSUAL = "amount_unusual"
    NEW_DEVICE = "new_device"
    BLOCKED_DEVICE = "blocked_device"


VELOCITY_KINDS = frozenset({RuleKind.VELOCITY_WALLET, RuleKind.VELOCITY_DEVICE, RuleKind.VELOCITY_MERCHANT})
COUNTED_KINDS = VELOCITY_KINDS  # counted in windows: Redis, else PostgreSQL (``services.risk``)
# What concerns money leaving the wallet without a payment (``money_out``): velocity and amount rules count
# and judge payments, and a withdrawal or a conversion is none.
MONEY_OUT_KINDS = frozenset({RuleKind.BLOCKED_WALLET, RuleKind.BLOCKED_DEVICE})
MONEY_OUT_CHANNELS = frozenset({"withdrawal", "conversion"})  # migration 0036's risk_decisions_money_out


class Outcome(StrEnum):
    ALLOW = "allow"
    REQUIRE_PIN = "require_pin"
    REQUIRE_OTP = "require_otp"
    DECLINE = "decline"


class _Severity(IntEnum):
    allow = 0
    require_pin = 1
    require_otp = 2
    decline = 3


def severity(outcome: Outcome) -> int:
    return int(_Severity[outcome.value])


class Baseline(StrEnum):
    MEDIAN = "median"
    P90 = "p90"


class StepUp(StrEnum):
    PIN = "pin"
    OTP = "otp"


STEP_UP_OF = {Outcome.REQUIRE_PIN: StepUp.PIN, Outcome.REQUIRE_OTP: StepUp.OTP}


@dataclass(frozen=True, slots=True)
class Rule:
    id: uuid.UUID
    kind: RuleKind
    holder_id: uuid.UUID | None = None
    currency: str | None = None
    window_s: int | None = None
    max_count: int | None = None
    max_amount_minor: int | None = None
    outcome: Outcome = Outcome.DECLINE
    device_id: str | None = None
    merchant_id: uuid.UUID | None = None
    multiplier_pct: int | None = None
    baseline: Baseline | None = None
    history_min: int | None = None
    device_age_s: int | None = None
    min_amount_minor: int | None = None


@dataclass(frozen=True, slots=True)
class Recent:
    """The payments authorised within a window, before this one."""

    count: int
    amount_minor: int


@dataclass(frozen=True, slots=True)
class Attempt:
    """The payment being authorised; or money leaving the wallet without one (``money_out``: a channel of
    ``MONEY_OUT_CHANNELS``, no payment and no merchant)."""

    payment_id: uuid.UUID | None
    holder_id: uuid.UUID
    merchant_id: uuid.UUID | None
    currency: str
    amount_minor: int
    device_id: str | None
    channel: str


@dataclass(frozen=True, slots=True)
class Facts:
    """What the caller read for the rules that need it."""

    now: datetime
    recent: dict[uuid.UUID, Recent] = field(default_factory=dict)  # per velocity rule
    usual_minor: tuple[int, ...] = ()  # the holder's last captured amounts in the payment's currency
    device_seen_at: datetime | None = None  # first seen for this holder (None: never)


@dataclass(frozen=True, slots=True)
class Reason:
    rule_id: uuid.UUID
    kind: RuleKind
    outcome: Outcome
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome  # after the step-ups passed: what the attempt gets now
    reasons: tuple[Reason, ...]
    passed: tuple[StepUp, ...]  # the step-ups asked for and passed

    @property
    def recorded(self) -> bool:
        """Worth a record: a rule matched, whatever came of it."""
        return bool(self.reasons)


def over_velocity(rule: Rule, recent: Recent, currency: str, amount_minor: int) -> bool:
    if rule.max_count is not None and recent.count + 1 > rule.max_count:
        return True
    return (rule.max_amount_minor is not None and rule.currency == currency
            and recent.amount_minor + amount_minor > rule.max_amount_minor)


def counted_amount(rule: Rule, currency: str, amount_minor: int) -> int:
    """What this payment adds to a velocity rule's amount (0 in another currency)."""
    return amount_minor if rule.currency == currency else 0


def applies(rule: Rule, attempt: Attempt) -> bool:
    """Whether the rule concerns this payment at all (before any count is read)."""
    if rule.kind is RuleKind.BLOCKED_WALLET:
        return rule.holder_id == attempt.holder_id
    if rule.kind is RuleKind.BLOCKED_DEVICE:
        return attempt.device_id is not None and rule.device_id == attempt.device_id
    if rule.kind is RuleKind.VELOCITY_DEVICE:
        return attempt.device_id is not None
    if rule.kind is RuleKind.VELOCITY_MERCHANT:
        return rule.merchant_id is None or rule.merchant_id == attempt.merchant_id
    if rule.kind is RuleKind.AMOUNT_UNUSUAL:
        return rule.currency == attempt.currency
    if rule.kind is RuleKind.NEW_DEVICE:
        assert rule.min_amount_minor is not None
        return rule.currency == attempt.currency and attempt.amount_minor >= rule.min_amount_minor
    return True


@dataclass(frozen=True, slots=True)
class Window:
    """A velocity rule's sliding window a payment is counted in (in Redis: ``accel.Accelerator.windows_take``):
    it fits when, with it, the window holds at most ``count_max`` payments and ``amount_max_minor`` of
    amounts (None: no such limit); ``amount_minor`` is what it adds (0 for a rule of another currency).
    ``refuses``: False for the window of a rule whose outcome is a step-up the caller judges itself (the
    general path): it answers its counts and is charged with the payment's other windows whatever its
    limits say, so a payment allowed past it (its step-up passed, or held for it) is counted there and in
    every other window, as the PostgreSQL fallback counts its allow decision."""

    key: str
    window_s: int
    count_max: int | None
    amount_max_minor: int | None
    amount_minor: int
    refuses: bool = True


@dataclass(frozen=True, slots=True)
class Unlocked:
    """What the one-statement path read of the holder with the payment, without locks (None: not read):
    its usual amounts in the payment's currency (``holder_amounts``) and whether its wallet there holds
    funds (an authorisation that a capture may still add to them); when its device was first seen."""

    now: datetime
    usual_minor: tuple[int, ...] | None = None
    holds_funds: bool = True
    device_read: bool = False
    device_seen_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class OneStatement:
    """The rules the one-statement path keeps for a payment they allow."""

    counted: tuple[Rule, ...]  # velocity per wallet / device / merchant: charged in their windows before it
    usual_read: bool  # an amount_unusual rule was found not to match on the unlocked read: the statement
    # must fall back if the holder's payments in the currency changed since (see ``one_statement``)


def one_statement(rules: Iterable[Rule], attempt: Attempt, read: Unlocked | None) -> OneStatement | None:
    """What the one-statement path keeps itself for this payment, or None when a rule concerning it might
    not allow it (the general path then decides, records and alerts):
    - velocity per wallet, device or merchant: charged in their windows before the statement, all or none
      (one over its limit falls back), as the general path charges them;
    - amount_unusual and new_device: judged here from ``read`` (matching one falls back). A device's
      first sighting never moves later and its age only grows, so a stale read only says "new" more
      often. The usual amounts change when a payment of the holder in the currency is captured: the
      read is taken only when the holder's wallet held no funds there (no authorisation waiting for its
      capture), and the caller makes the statement fall back if the holder's spend of the day grew since
      the read (every other capture adds to it first);
    - blocked wallet or device: concerning the payment means matching it: None."""
    # One pass over the rules: this runs for every payment of the one-statement path.
    counted: list[Rule] = []
    judged: list[Rule] = []
    usual = device = False
    for r in rules:
        if not applies(r, attempt):
            continue
        kind = r.kind
        if kind in COUNTED_KINDS:
            counted.append(r)
        elif kind is RuleKind.AMOUNT_UNUSUAL:
            judged.append(r)
            usual = True
        elif kind is RuleKind.NEW_DEVICE:
            judged.append(r)
            device = True
        else:  # a blocked wallet or device that concerns the payment matches it
            return None
    if judged:
        if read is None or (usual and (read.usual_minor is None or read.holds_funds)):
            return None
        if device and not read.device_read:
            return None
        facts = Facts(now=read.now, usual_minor=read.usual_minor or (), device_seen_at=read.device_seen_at)
        for r in judged:
            if _match(r, attempt, facts) is not None:
                return None
    return OneStatement(tuple(counted), usual)


def usual_minor(amounts_minor: tuple[int, ...], baseline: Baseline) -> int:
    """The median (the lower middle of an even count) or the 90th percentile (nearest rank)."""
    ordered = sorted(amounts_minor)
    if baseline is Baseline.MEDIAN:
        return ordered[(len(ordered) - 1) // 2]
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def _match(rule: Rule, attempt: Attempt, facts: Facts) -> dict[str, Any] | None:
    """What the rule measured when it matches; None when it does not."""
    if not applies(rule, attempt):
        return None
    kind = rule.kind
    if kind in (RuleKind.BLOCKED_WALLET, RuleKind.BLOCKED_DEVICE):
        return {"device_id": attempt.device_id} if kind is RuleKind.BLOCKED_DEVICE else {}
    if kind in VELOCITY_KINDS:
        recent = facts.recent.get(rule.id)
        if recent is None or not over_velocity(rule, recent, attempt.currency, attempt.amount_minor):
            return None
        measured: dict[str, Any] = {"window_s": rule.window_s, "count": recent.count + 1, "max_count": rule.max_count}
        if rule.max_amount_minor is not None:  # a count-only window keeps no running amount (``accel``)
            measured.update(amount=recent.amount_minor + counted_amount(rule, attempt.currency, attempt.amount_minor),
                            max_amount=rule.max_amount_minor)
        return measured
    if kind is RuleKind.AMOUNT_UNUSUAL:
        assert rule.history_min is not None and rule.multiplier_pct is not None and rule.baseline is not None
        history = facts.usual_minor[-HISTORY_MAX:]
        if len(history) < rule.history_min:
            return None
        usual = usual_minor(history, rule.baseline)
        if attempt.amount_minor * 100 <= usual * rule.multiplier_pct:
            return None
        return {"usual": usual, "baseline": rule.baseline.value, "history": len(history),
                "multiplier_pct": rule.multiplier_pct}
    assert kind is RuleKind.NEW_DEVICE and rule.device_age_s is not None
    if facts.device_seen_at is not None and (facts.now - facts.device_seen_at).total_seconds() >= rule.device_age_s:
        return None
    age_s = None if facts.device_seen_at is None else int((facts.now - facts.device_seen_at).total_seconds())
    return {"device_id": attempt.device_id, "device_age_s": age_s, "min_amount": rule.min_amount_minor}


def decide(rules: tuple[Rule, ...], attempt: Attempt, facts: Facts, passed: frozenset[StepUp]) -> Decision:
    reasons = []
    for rule in rules:
        detail = _match(rule, attempt, facts)
        if detail is not None:
            reasons.append(Reason(rule.id, rule.kind, rule.outcome, detail))
    outcome = Outcome.ALLOW
    met: set[StepUp] = set()
    for reason in reasons:
        step = STEP_UP_OF.get(reason.outcome)
        if step is not None and step in passed:
            met.add(step)
            continue
        if severity(reason.outcome) > severity(outcome):
            outcome = reason.outcome
    return Decision(outcome, tuple(reasons), tuple(sorted(met)))


def money_out(rules: Iterable[Rule], attempt: Attempt, now: datetime) -> Decision:
    """The decision on a withdrawal or a conversion: the blocks that concern it (``MONEY_OUT_KINDS``) are its
    reasons, each with its own outcome; any of them declines it, a step-up one too (it asks for no PIN or
    code, so none can be passed)."""
    assert attempt.payment_id is None and attempt.merchant_id is None and attempt.channel in MONEY_OUT_CHANNELS
    decision = decide(tuple(r for r in rules if r.kind in MONEY_OUT_KINDS), attempt, Facts(now=now), frozenset())
    return replace(decision, outcome=Outcome.DECLINE) if decision.recorded else decision


def asked(outcomes: Iterable[Outcome]) -> frozenset[StepUp]:
    """The step-ups the matched rules' outcomes ask for: what the holder of a payment held for them (a
    pay-code charge) must pass to confirm it."""
    return frozenset(STEP_UP_OF[o] for o in outcomes if o in STEP_UP_OF)
