"""Risk rules: the check every authorisation makes, the decisions and alerts it leaves, the holder's
answer to a one-time code, and the operator's use cases.

Invariants:
- ``check`` runs in ``payments.authorize_locked`` (every way of paying: by id, QR, pay-code, tap),
  after the holder's spend row is locked; it reads the active rules from the database (a rule created
  or disabled applies at once on the general path);
- the one-statement path (``payments.decide_payment``) asks ``one_statement``, from memory
  (``services.risk_cache``) and the payment's head read, with no statement of its own: it pays there a
  payment every concerning rule allows, and sends to the general path one that a rule might not allow
  (which then decides, records and alerts as for any payment). Velocity per wallet, device and merchant
  is charged in Redis before its statement, for its whole batch in one script call
  (``context.pay_counted``; Redis down: the general path); amount_unusual and new_device are
  judged from the head read (``store.payments.payable``), the statement falling back if the holder's
  payments changed since (see ``one_statement``); a blocked wallet or device that concerns the payment
  matches it. Its 'allow' decision is written by the batch statement with the payment;
- velocity per wallet, per device and per merchant is counted in Redis (a sliding window per rule and
  scope: the holder, the device, the merchant; all of
  a payment's windows checked and charged in one script, all or none, so concurrent payments never pass
  a limit together, on either path; a payment is counted once in a window, however often it is charged:
  its one-statement attempt, then its general path, a retried transaction); while Redis gives no answer
  it is counted in PostgreSQL from the 'allow' decisions (the one-statement path's included), under an
  advisory lock per rule and scope. A payment counted stays counted until its window ends, whatever
  becomes of it later (cancelled, expired, refunded). A payment refused by the rules is given back; one that fails
  otherwise after it was charged (funds, or a one-statement attempt whose general path then refuses it
  before the rules: the day's cap, a locked wallet) stays counted until its window ends (stricter, never
  looser). Entries counted in PostgreSQL during an outage are not copied to Redis: after Redis comes
  back a window may count too few for at most ``window_s``;
- a payment's device is the holder's phone on every channel: the wallet token's when the holder pays
  itself (by id, QR: ``holder_present``), the one a pay-code or a tap token was issued to when the counter
  presents it (``issued_to``), never the counter's terminal; blocked_device, new_device, velocity_device
  and the recorded decision all see that one;
- outcomes (``domain.risk``): the most severe outcome of the rules matched, after the step-ups this
  attempt passed. A PIN counts as passed when the holder's use case verified one in this request
  (``holder_present``) or the channel verified the holder itself (a tap: the phone's CDCVM). A code
  counts as passed when a require_otp decision for the same holder, merchant, currency and amount had
  its challenge answered (``verify_code``) within ``sign_in.code_ttl_s`` and not used yet: the payment
  uses it in its own transaction (one code, one payment; a payment that fails leaves it usable);
- refusals: ``risk_declined`` (402), ``pin_required`` (402, param ``pin``) and ``otp_required`` (402,
  param ``otp``, with ``challenge``: the code's challenge id, sent to the holder's phone through the
  sign-in code sender). A pay-code charge, where nobody in the request can answer, is held instead
  (``check`` with ``hold``): authorised in ``requires_action`` with the amount reserved, its decision
  recorded as 'held' in the payment's transaction (with its code's challenge and its alerts), and the
  holder confirms it in the app with every step-up the matched rules asked for (``held_step_ups``,
  ``pass_held_code``, ``confirm_held``: an 'allow' decision with them passed, in the confirmation's
  transaction), or the expiry worker reverses it at ``confirm_by``. A tap asked for a code, and a code
  that cannot be sent (no sender, or the holder's codes exhausted), is a decline. Messages name no rule;
- every decision where a rule matched (and every payment checked by a velocity rule) is recorded with its reasons. An 'allow' is written in the payment's transaction; a
  refusal (``RiskRefusal``) is written by ``record_refusal`` in the transaction that stores the
  refusal's answer (the payment's own was rolled back), once per idempotency key, with its alerts: a
  ``risk.alert`` notification to the holder (pushed when a push hook is set) and a ``risk.alert``
  event (operator-level: no merchant, so no merchant webhook carries a holder's risk profile);
- money leaving the wallet without a payment (a withdrawal, a conversion: ``check_money_out``, in its use
  case's transaction, the active rules read from the database so a block or its lifting applies at once) is
  declined ``risk_declined`` (402) by a block of the holder's wallet or of the session's device
  (``domain.risk.money_out``); its refusal is recorded and alerted as a payment's (``record_refusal``): a
  decision with its channel, no payment and no merchant. Money coming in is never checked. The payment
  paths are untouched by it (no statement, no round trip);
- creating and disabling rules are idempotent (Idempotency-Key) and audited (``risk_rule.created``,
  ``risk_rule.disabled``) in their own transaction.
"""

from __future__ import annotations

import contextlib
import contextvars
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from functools import partial
from typing import Annotated, Any, Literal

import asyncpg
import msgspec

from gateway.auth.principals import Principal
from gateway.domain import ids
from gateway.domain import notifications as notification_kinds
from gateway.domain import risk, verification
from gateway.domain.ids import Kind, decode, encode
from gateway.domain.money import AMOUNT_MINOR_MAX
from gateway.domain.money import currency as check_currency
from gateway.domain.payments import Payment
from gateway.errors import Declined, Forbidden, GatewayError, InvalidRequest, NotFound
from gateway.services import audit, notifications, pages, sign_in, views
from gateway.services.context import Services
from gateway.services.idempotency import Reply, RequestIdentity
from gateway.services.pages import PageRequest
from gateway.store import payments as payment_store
from gateway.store import risk as store
from gateway.store import sign_in as sign_in_store
from gateway.store.db import Connection

PAYMENT_REASON = "payment"  # the sign-in challenge reason of a payment's code


# --- the holder in the request -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Presence:
    """Who pays, as the request shows it: the holder's device, whether the holder itself asks (so it can
    answer a PIN or a code now), and whether its PIN was verified in the request."""

    device_id: str | None
    holder_asks: bool
    pin_verified: bool


_PRESENT: contextvars.ContextVar[Presence | None] = contextvars.ContextVar("risk_presence", default=None)


@contextlib.contextmanager
def _presence(presence: Presence) -> Iterator[None]:
    token = _PRESENT.set(presence)
    try:
        yield
    finally:
        _PRESENT.reset(token)


def holder_present(device_id: str | None, *, pin_verified: bool) -> contextlib.AbstractContextManager[None]:
    """Around a use case where the holder pays itself (by id, QR): what it proved in the request."""
    return _presence(Presence(device_id, holder_asks=True, pin_verified=pin_verified))


def issued_to(device_id: str) -> contextlib.AbstractContextManager[None]:
    """Around a use case where the counter presents a credential of the holder (a pay-code, a tap token):
    the device it was issued to, the holder's phone (never the counter's terminal); the holder is not in
    the request, so nobody there can answer a PIN or a code."""
    return _presence(Presence(device_id, holder_asks=False, pin_verified=False))


# --- the check -----------------------------------------------------------------------------------


DAY_START_GRACE_S = 60.0  # a payment's transaction commits within this of its start (see ``one_statement``)


@dataclass(frozen=True, slots=True)
class AtOnceRisk:
    """What the one-statement path's statement keeps for the rules (``one_statement``)."""

    spend_max_minor: int | None  # the holder's day's spend with this payment may not exceed it (None: the cap)
    allowed: payment_store.RiskAllowed | None  # the 'allow' decision it records, and the windows charged first


def holder_reads(svc: Services, holder_id: uuid.UUID, device_id: str | None) -> payment_store.HolderReads | None:
    """What the head read of a payment (``store.payments.payable``) adds for the active rules the
    one-statement path judges itself; None when none is active (the read stays as it was). A device whose
    first sighting this process knows is not read again (``risk_cache.Sightings``)."""
    kinds = svc.risk_rules.kinds
    usual = risk.RuleKind.AMOUNT_UNUSUAL in kinds
    device = risk.RuleKind.NEW_DEVICE in kinds and (
        device_id is None or svc.risk_rules.sightings.get(holder_id, device_id) is None)
    if not usual and not device:
        return None
    return payment_store.HolderReads(svc.local_day(svc.now()) if usual else None, device, device_id)


def _unlocked(svc: Services, head: asyncpg.Record | Mapping[str, Any], holder_id: uuid.UUID, now: datetime,
              device_id: str | None) -> risk.Unlocked:
    usual = None
    if head.get("risk_spend_day") is not None:
        usual = tuple(map(int, head["risk_usual"] or ()))
    sightings = svc.risk_rules.sightings
    seen_at = None if device_id is None else sightings.get(holder_id, device_id)
    device_read = seen_at is not None
    if not device_read:
        device_read = bool(head.get("risk_device_read")) and head.get("risk_device_id") == device_id
        seen_at = head.get("risk_device_seen_at") if device_read else None
        if seen_at is not None and device_id is not None:
            sightings.saw(holder_id, device_id, seen_at)
    return risk.Unlocked(now=now, usual_minor=usual, holds_funds=usual is None or head["risk_held"] > 0,
                         device_read=device_read, device_seen_at=seen_at)


def _window(rule: risk.Rule, attempt: risk.Attempt) -> risk.Window:
    assert rule.window_s is not None
    return risk.Window(_window_key(rule, attempt), rule.window_s, rule.max_count,
                       rule.max_amount_minor if rule.currency is not None else None,
                       risk.counted_amount(rule, attempt.currency, attempt.amount_minor))


def one_statement(svc: Services, head: asyncpg.Record | Mapping[str, Any], holder_id: uuid.UUID, channel: str,
                  now: datetime) -> AtOnceRisk | None:
    """The one-statement path's question, answered from memory and the head read (no statement, no round
    trip): what its statement keeps for the rules of this payment; None when a rule might not allow it,
    the view is stale, or it needs Redis and Redis is down (the general path then checks and records).

    Relies on (``domain.risk.one_statement`` for the rules' side):
    - velocity per wallet / device / merchant: charged before the statement (``context.pay_counted``), in
      Redis only;
    - amount_unusual: ``head`` read the holder's usual amounts, held funds and day's spend in one
      snapshot (``store.payments.payable``). Every capture of a holder's payment either releases a hold on
      its wallet in that currency (none was held) or is of a payment authorised after the read, which
      first added its amount to the holder's spend of its day in that currency (``authorize_locked``,
      ``gateway_pay_batch``; a cancel or expiry gives back only a hold's spend). So the statement, given
      the spend read plus this payment as its day's maximum, falls back if any capture may have changed
      the usual amounts since the read, once it holds the holder's spend row. A payment authorised on the
      previous day commits within ``DAY_START_GRACE_S`` (statement and idle timeouts of seconds): in the
      first ``DAY_START_GRACE_S`` of a day the general path decides;
    - new_device: a device's first sighting (``wallet_devices.created_at``) is never moved later."""
    present = _PRESENT.get()
    device_id = None if present is None else present.device_id
    attempt = risk.Attempt(head["id"], holder_id, head["merchant_id"], head["currency"], head["amount_minor"],
                           device_id, channel)
    kept = svc.risk_rules.one_statement(attempt, _unlocked(svc, head, holder_id, now, device_id))
    if kept is None:
        return None
    spend_max = None
    if kept.usual_read:
        day = svc.local_day(now)
        day_start = datetime.combine(day, time(0), tzinfo=svc.limits_zone)
        if head["risk_spend_day"] != day or (now - day_start).total_seconds() < DAY_START_GRACE_S:
            return None
        spend_max = int(head["risk_spent"]) + int(head["amount_minor"])
    allowed = None
    if kept.counted:
        if not svc.accel.available:  # counted in PostgreSQL by the general path
            return None
        allowed = payment_store.RiskAllowed(ids.new(), device_id, tuple(_window(r, attempt) for r in kept.counted))
    return AtOnceRisk(spend_max, allowed)


class RiskRefusal(Declined):
    """A payment refused by the rules; ``record`` writes its decision and alerts (``record_refusal``)."""

    def __init__(self, message: str, *, code: str, record: Callable[[Connection], Awaitable[None]],
                 param: str | None = None, **extra: Any) -> None:
        super().__init__(message, code=code, param=param, **extra)
        self.record = record


async def record_refusal(conn: Connection, exc: GatewayError) -> None:
    """The ``refused`` hook of a use case that pays (``idempotency.run``): a risk refusal's record."""
    if isinstance(exc, RiskRefusal):
        await exc.record(conn)


def _reasons(decision: risk.Decision) -> list[dict[str, Any]]:
    return [{"rule": encode(Kind.RISK_RULE, r.rule_id), "kind": r.kind.value, "outcome": r.outcome.value,
             "detail": r.detail} for r in decision.reasons]


def _scope(rule: risk.Rule, attempt: risk.Attempt) -> tuple[store.Scope, Any]:
    """What a velocity rule counts a payment's window by: the risk_decisions column and its value."""
    if rule.kind is risk.RuleKind.VELOCITY_WALLET:
        return "holder_id", attempt.holder_id
    if rule.kind is risk.RuleKind.VELOCITY_DEVICE:
        return "device_id", attempt.device_id
    return "merchant_id", attempt.merchant_id


def _window_prefix(rule_id: uuid.UUID) -> str:
    return f"risk:w:{rule_id.hex}:"


def _window_key(rule: risk.Rule, attempt: risk.Attempt) -> str:
    value = _scope(rule, attempt)[1]
    return f"{_window_prefix(rule.id)}{value.hex if isinstance(value, uuid.UUID) else value}"


async def _recent_allowed(conn: Connection, rule: risk.Rule, attempt: risk.Attempt, now: datetime) -> risk.Recent:
    assert rule.window_s is not None
    column, value = _scope(rule, attempt)
    return await store.recent_allowed(conn, column, value, rule.currency, now, rule.window_s,
                                      _window_key(rule, attempt))


async def _facts(conn: Connection, rules: list[risk.Rule], attempt: risk.Attempt, now: datetime) -> risk.Facts:
    """What the rules need but the counted windows, read only for the kinds present."""
    kinds = {r.kind for r in rules}
    usual: tuple[int, ...] = ()
    if risk.RuleKind.AMOUNT_UNUSUAL in kinds:
        usual = await store.usual_amounts(conn, attempt.holder_id, attempt.currency)
    seen = None
    if risk.RuleKind.NEW_DEVICE in kinds and attempt.device_id is not None:
        seen = await store.device_first_seen(conn, attempt.holder_id, attempt.device_id)
    return risk.Facts(now=now, usual_minor=usual, device_seen_at=seen)


async def check(svc: Services, conn: Connection, payment: Payment, holder_id: uuid.UUID, *, channel: str,
                now: datetime, hold: bool = False) -> bool:
    """Raise a ``RiskRefusal`` when the rules refuse this payment (call it with the holder's spend row
    locked); record the decision when a rule concerned it. With ``hold`` (the holder confirms the payment
    later, in the app) a step-up nobody in the request passed holds the payment instead: True, and the
    caller authorises it in requires_action."""
    rules = await svc.risk_rules.load(conn)
    if not rules:
        return False
    present = _PRESENT.get()
    holder_asks = present is not None and present.holder_asks
    attempt = risk.Attempt(payment.id, holder_id, payment.merchant_id, payment.currency, payment.amount_minor,
                           None if present is None else present.device_id, channel)
    concerned = tuple(r for r in rules if risk.applies(r, attempt))
    if not concerned:
        return False
    passed = {risk.StepUp.PIN} if (present is not None and present.pin_verified) or channel == "tap" else set()
    facts = await _facts(conn, list(concerned), attempt, now)
    decision = risk.decide(concerned, attempt, facts, frozenset(passed))
    counted = [r for r in concerned if r.kind in risk.COUNTED_KINDS]
    # A step-up rule's window does not refuse here: a payment allowed past it (the step-up passed, or held
    # for it) is counted in all its windows; one refused is given back below.
    windows = [replace(_window(r, attempt), refuses=r.outcome is risk.Outcome.DECLINE) for r in counted]
    charged = False
    # The windows last: a payment the other rules decline is charged in none.
    if counted and decision.outcome is not risk.Outcome.DECLINE:
        found = await svc.accel.windows_take(windows, now.timestamp(), payment.id.hex)
        if found is not None:
            charged = found.taken
            recent = {r.id: risk.Recent(n, total) for r, (n, total) in zip(counted, found.before, strict=True)}
        else:  # Redis gave no answer: counted in PostgreSQL, rule by rule in id order (the advisory locks)
            recent = {r.id: await _recent_allowed(conn, r, attempt, now) for r in counted}
        facts = replace(facts, recent={**facts.recent, **recent})
        decision = risk.decide(concerned, attempt, facts, frozenset(passed))
    if decision.outcome is risk.Outcome.REQUIRE_OTP and holder_asks and await store.use_code(
            conn, holder_id, payment.merchant_id, payment.currency, payment.amount_minor, now,
            svc.settings.sign_in.code_ttl_s) is not None:
        passed.add(risk.StepUp.OTP)
        decision = risk.decide(concerned, attempt, facts, frozenset(passed))
    if hold and not holder_asks and decision.outcome in risk.STEP_UP_OF and await _hold(svc, conn, attempt,
                                                                                        decision, now):
        return True  # counted in its windows: the amount is reserved
    if decision.outcome is risk.Outcome.ALLOW:
        if decision.recorded or counted:
            await _insert(conn, attempt, decision, now, ids.new(), challenge_id=None)
        return False
    if charged:  # not authorised: out of the windows again
        await svc.accel.windows_give_back(windows, payment.id.hex)
    raise await _refusal(svc, conn, attempt, decision, now, holder_asks=holder_asks)


async def _money_out(svc: Services, conn: Connection, who: Principal, channel: str, currency: str,
                     amount_minor: int, now: datetime, *, locked: bool = False) -> tuple[risk.Attempt, risk.Decision]:
    attempt = risk.Attempt(None, who.id, None, currency, amount_minor, who.device_id, channel)
    if locked and who.device_id is not None:  # against a block of the device being created
        await store.lock_device_for_block(conn, who.device_id, shared=True)
    return attempt, risk.money_out(await svc.risk_rules.load(conn), attempt, now)


async def check_money_out(svc: Services, conn: Connection, who: Principal, *, channel: str, currency: str,
                          amount_minor: int) -> None:
    """Raise a ``RiskRefusal`` (``risk_declined``) when a block concerns money leaving the holder's wallet:
    ``channel`` withdrawal or conversion, of ``amount_minor`` in ``currency`` (what leaves), from the device
    of the holder's session. Call it in the use case's transaction, with ``record_refusal`` as its
    ``refused`` hook, after the holder's row is locked ``FOR SHARE`` (``store.wallets.holder_for_payment``):
    the rules are read there, after this takes the device's shared block lock. A block's creation takes
    the holder's row (the device's lock) exclusively, so a block committed before this money out commits
    was read by it: either the block waited for it (it was in flight first), or its rules read began after
    the block committed (READ COMMITTED: a new snapshot per statement)."""
    now = svc.now()
    attempt, decision = await _money_out(svc, conn, who, channel, currency, amount_minor, now, locked=True)
    if decision.recorded:
        raise await _refusal(svc, conn, attempt, decision, now, holder_asks=False)


async def money_out_blocked(svc: Services, conn: Connection, who: Principal, *, channel: str, currency: str,
                            amount_minor: int) -> bool:
    """Whether a block concerns this money out now: a hint read before the use case's transaction (so that
    it opens no account for an attempt refused anyway); ``check_money_out`` in the transaction decides."""
    return (await _money_out(svc, conn, who, channel, currency, amount_minor, svc.now()))[1].recorded


async def check_confirmation(svc: Services, conn: Connection, who: Principal, payment: Any,
                             held: HeldStepUps | None) -> None:
    """Raise a ``RiskRefusal`` (``risk_declined``) when a declining block concerns a counter payment its
    holder confirms (a pay-code charge waiting in requires_action: authorised, its amount held, but no money
    left the wallet yet): a block of the wallet, of the device its decision names (the code's) or of the
    session's, created since its authorisation. Call it in the confirmation's transaction (the rules read
    there) with ``record_refusal`` as its ``refused`` hook. A step-up rule created since adds nothing: the
    held decision fixed what the confirmation asks."""
    devices = list(dict.fromkeys(d for d in (None if held is None else held.decision["device_id"], who.device_id)
                                 if d is not None))  # the code's first, then the session's
    for device_id in sorted(devices):  # locked in order: no deadlock between two
        await store.lock_device_for_block(conn, device_id, shared=True)
    rules = tuple(r for r in await svc.risk_rules.load(conn)
                  if r.kind in risk.MONEY_OUT_KINDS and r.outcome is risk.Outcome.DECLINE)
    if not rules:
        return
    now = svc.now()
    for device_id in devices or [None]:
        attempt = risk.Attempt(payment["id"], who.id, payment["merchant_id"], payment["currency"],
                               payment["amount_minor"], device_id, "pay_code")
        decision = risk.decide(rules, attempt, risk.Facts(now=now), frozenset())
        if decision.outcome is risk.Outcome.DECLINE:
            raise await _refusal(svc, conn, attempt, decision, now, holder_asks=False)


async def _insert(conn: Connection, attempt: risk.Attempt, decision: risk.Decision, now: datetime,
                  decision_id: uuid.UUID, *, challenge_id: uuid.UUID | None,
                  outcome: risk.Outcome | None = None, held: bool = False) -> Any:
    return await store.insert_decision(
        conn, decision_id=decision_id, now=now, holder_id=attempt.holder_id, payment_id=attempt.payment_id,
        merchant_id=attempt.merchant_id, channel=attempt.channel, currency=attempt.currency,
        amount_minor=attempt.amount_minor, device_id=attempt.device_id, outcome=(outcome or decision.outcome).value,
        reasons=_reasons(decision), passed=[p.value for p in decision.passed], challenge_id=challenge_id, held=held)


async def _code_can_be_sent(svc: Services, conn: Connection, holder_id: uuid.UUID, now: datetime) -> bool:
    settings = svc.settings.sign_in
    if not settings.sms_hook_url:
        return False
    sent = await sign_in_store.challenges_since(conn, holder_id, now - timedelta(seconds=settings.challenge_window_s))
    return sent < settings.challenges_per_holder_max


async def _refusal(svc: Services, conn: Connection, attempt: risk.Attempt, decision: risk.Decision, now: datetime,
                   *, holder_asks: bool) -> RiskRefusal:
    """The refusal to raise, carrying what ``record_refusal`` writes once the payment's work rolled back."""
    outcome = decision.outcome
    if outcome is not risk.Outcome.DECLINE and not holder_asks:
        outcome = risk.Outcome.DECLINE  # nobody in this request can answer a PIN or a code
    phone = None
    if outcome is risk.Outcome.REQUIRE_OTP:
        holder = await sign_in_store.holder_password(conn, attempt.holder_id)
        if holder is None or not await _code_can_be_sent(svc, conn, attempt.holder_id, now):
            outcome = risk.Outcome.DECLINE
        else:
            phone = str(holder["phone"])
    decision_id = ids.new()
    challenge_id = uuid.uuid4() if outcome is risk.Outcome.REQUIRE_OTP else None

    async def record(c: Connection) -> None:
        if challenge_id is not None:
            assert phone is not None
            await sign_in.start_challenge(c, svc, attempt.holder_id, phone, PAYMENT_REASON, None, challenge_id)
        row = await _insert(c, attempt, decision, now, decision_id, challenge_id=challenge_id, outcome=outcome)
        await _alert(svc, c, row)
        if challenge_id is not None:
            sign_in.codes_sent(svc)

    ref = encode(Kind.RISK_DECISION, decision_id)
    if outcome is risk.Outcome.REQUIRE_PIN:
        return RiskRefusal("this payment needs the wallet's payment PIN", code="pin_required", param="pin",
                           record=record, decision=ref)
    if outcome is risk.Outcome.REQUIRE_OTP:
        assert challenge_id is not None and phone is not None
        return RiskRefusal("this payment needs the one-time code sent to the wallet's phone: verify it, then pay "
                           "again", code="otp_required", param="otp", record=record, decision=ref,
                           challenge=encode(Kind.SIGN_IN_CHALLENGE, challenge_id),
                           phone_masked=views.mask_phone(phone))
    what = "payment" if attempt.payment_id is not None else attempt.channel
    return RiskRefusal(f"the {what} was declined", code="risk_declined", record=record, decision=ref)


# --- a payment held for its step-ups -------------------------------------------------------------


async def _hold(svc: Services, conn: Connection, attempt: risk.Attempt, decision: risk.Decision,
                now: datetime) -> bool:
    """Record the decision that holds the payment until its holder passes the step-ups asked in the app,
    with its code's challenge when a code is asked and its alerts, in the payment's transaction (they
    exist exactly when the held payment does); False when a code is asked that cannot be sent (the
    caller declines)."""
    challenge_id = None
    if risk.StepUp.OTP in risk.asked(r.outcome for r in decision.reasons):
        holder = await sign_in_store.holder_password(conn, attempt.holder_id)
        if holder is None or not await _code_can_be_sent(svc, conn, attempt.holder_id, now):
            return False
        challenge_id = uuid.uuid4()
        await sign_in.start_challenge(conn, svc, attempt.holder_id, str(holder["phone"]), PAYMENT_REASON, None,
                                      challenge_id)
    row = await _insert(conn, attempt, decision, now, ids.new(), challenge_id=challenge_id, held=True)
    await _alert(svc, conn, row)
    if challenge_id is not None:
        sign_in.codes_sent(svc)
    return True


@dataclass(frozen=True, slots=True)
class HeldStepUps:
    """What confirming a held payment needs: its decision, and the step-ups it asked for."""

    decision: Any  # the risk_decisions row (held)
    step_ups: frozenset[risk.StepUp]

    @property
    def challenge_id(self) -> uuid.UUID | None:
        found: uuid.UUID | None = self.decision["challenge_id"]
        return found


def _stored_reasons(row: Any) -> list[dict[str, Any]]:
    reasons = row["reasons"]
    found: list[dict[str, Any]] = msgspec.json.decode(reasons) if isinstance(reasons, str) else reasons
    return found


async def held_step_ups(conn: Connection, payment_id: uuid.UUID, holder_id: uuid.UUID) -> HeldStepUps | None:
    """The step-ups the holder's payment was held for (None: the rules did not hold it)."""
    row = await store.held_decision(conn, payment_id, holder_id)
    if row is None:
        return None
    return HeldStepUps(row, risk.asked(risk.Outcome(r["outcome"]) for r in _stored_reasons(row)))


async def pass_held_code(svc: Services, conn: Connection, holder_id: uuid.UUID, held: HeldStepUps,
                         code: str | None) -> None:
    """The held payment's code is passed when its challenge was verified (``verify_code``) or ``code`` is
    right (the try is counted and committed first, on ``conn`` outside a transaction); otherwise raise
    ``otp_required`` (402, with the challenge and the masked phone), ``incorrect_code`` or
    ``challenge_dead`` (403)."""
    challenge_id = held.challenge_id
    assert challenge_id is not None
    found = await sign_in_store.challenge(conn, challenge_id)
    assert found is not None and found["holder_id"] == holder_id
    if found["consumed_at"] is not None:
        return
    text = encode(Kind.SIGN_IN_CHALLENGE, challenge_id)
    if code is None:
        holder = await sign_in_store.holder_password(conn, holder_id)
        assert holder is not None
        raise Declined("this payment needs the one-time code sent to the wallet's phone: give it as otp, or "
                       "verify it first", code="otp_required", param="otp", challenge=text,
                       decision=encode(Kind.RISK_DECISION, held.decision["id"]),
                       phone_masked=views.mask_phone(str(holder["phone"])))
    await _attempt_code(svc, conn, challenge_id, code, dead_param="otp", param="otp")


async def confirm_held(conn: Connection, held: HeldStepUps, now: datetime) -> None:
    """In the confirmation's transaction (its payment locked and confirmable): the held decision answered,
    and the 'allow' decision its confirmation is, with the step-ups passed."""
    d = held.decision
    answered = await store.answer_held(conn, d["id"], now)
    assert answered, "a held payment is confirmed once (its row lock and state machine)"
    await store.insert_decision(
        conn, decision_id=ids.new(), now=now, holder_id=d["holder_id"], payment_id=d["payment_id"],
        merchant_id=d["merchant_id"], channel=d["channel"], currency=d["currency"], amount_minor=d["amount_minor"],
        device_id=d["device_id"], outcome=risk.Outcome.ALLOW.value, reasons=_stored_reasons(d),
        passed=sorted(s.value for s in held.step_ups), challenge_id=None)


# --- decisions and alerts ------------------------------------------------------------------------


async def _alert(svc: Services, conn: Connection, row: Any) -> None:
    """A non-allow decision's alerts (``row``: as stored): the holder's notification and the operator-level
    event."""
    view = decision_view(row)
    await notifications.notify(svc, conn, row["holder_id"], notification_kinds.RISK_ALERT, _alert_data(view))
    await payment_store.insert_event(conn, "risk.alert", row["id"], view, merchant_id=None,
                                    holder_id=row["holder_id"], deliverable=False)


class RiskReasonView(msgspec.Struct, kw_only=True):
    rule: str
    kind: str
    outcome: str
    detail: dict[str, Any]


class RiskDecisionView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "risk_decision"
    created: int
    wallet: str
    payment: Annotated[str | None, msgspec.Meta(description="the payment decided on; null for money leaving the "
                                                "wallet without one (channel withdrawal or conversion)")]
    merchant: Annotated[str | None, msgspec.Meta(description="the payment's merchant; null when payment is")]
    channel: Annotated[str, msgspec.Meta(description="wallet, qr, pay_code, tap (a payment); withdrawal, "
                                         "conversion (money out: declined by a block of the wallet or device)")]
    amount: int
    currency: str
    device_id: str | None
    outcome: Literal["allow", "require_pin", "require_otp", "decline"]
    reasons: list[RiskReasonView]
    passed: list[str]  # the step-ups this attempt passed: pin, otp
    challenge: str | None  # require_otp: the code's challenge


class RiskDecisionList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[RiskDecisionView]
    has_more: bool


def decision_view(row: Any) -> RiskDecisionView:
    reasons = row["reasons"]
    return RiskDecisionView(
        id=encode(Kind.RISK_DECISION, row["id"]), created=int(row["created_at"].timestamp()),
        wallet=encode(Kind.WALLET_HOLDER, row["holder_id"]),
        payment=None if row["payment_id"] is None else encode(Kind.PAYMENT, row["payment_id"]),
        merchant=None if row["merchant_id"] is None else encode(Kind.MERCHANT, row["merchant_id"]),
        channel=row["channel"], amount=row["amount_minor"],
        currency=row["currency"], device_id=row["device_id"], outcome=row["outcome"],
        reasons=msgspec.convert(msgspec.json.decode(reasons) if isinstance(reasons, str) else reasons,
                                list[RiskReasonView]),
        passed=list(row["passed"]),
        challenge=None if row["challenge_id"] is None else encode(Kind.SIGN_IN_CHALLENGE, row["challenge_id"]))


def _alert_data(view: RiskDecisionView) -> dict[str, Any]:
    """What the holder reads: the payment (or the withdrawal or conversion: ``channel``) and what was asked,
    never which rule or what it measured."""
    return {"decision": view.id, "payment": view.payment, "merchant": view.merchant, "channel": view.channel,
            "amount": view.amount, "currency": view.currency, "outcome": view.outcome, "device_id": view.device_id,
            "challenge": view.challenge}


async def list_decisions(svc: Services, page: PageRequest, wallet: str | None, outcome: str | None, *,
                         alerts_only: bool) -> RiskDecisionList:
    holder_id = None
    if wallet is not None:
        holder_id = decode(Kind.WALLET_HOLDER, wallet)
        if holder_id is None:
            raise InvalidRequest("not a wallet holder id", code="invalid_wallet", param="wallet")
    async with svc.stale() as conn:
        rows, has_more = await pages.read(conn, store.decisions(holder_id, outcome, alerts_only=alerts_only), page,
                                          partial(decode, Kind.RISK_DECISION))
    return RiskDecisionList(data=[decision_view(r) for r in rows], has_more=has_more)


# --- the holder answers a code -------------------------------------------------------------------


class RiskChallengeView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "risk_challenge"
    status: Literal["verified"]


async def verify_code(svc: Services, who: Principal, text: str, code: str) -> RiskChallengeView:
    """Answer a payment's code: the payment it was sent for can then be paid again (once), within
    ``sign_in.code_ttl_s``. A wrong code counts against the challenge (committed before the answer);
    answering a verified challenge again answers it verified."""
    challenge_id = decode(Kind.SIGN_IN_CHALLENGE, text)
    if challenge_id is None:
        raise NotFound(f"no such challenge: {text}", param="id")
    check_code_format(svc, code, "code")
    async with svc.db.connection() as conn:
        found = await sign_in_store.challenge(conn, challenge_id)
        if found is None or found["holder_id"] != who.id or found["reason"] != PAYMENT_REASON:
            raise NotFound(f"no such challenge: {text}", param="id")
        if found["consumed_at"] is None:
            await _attempt_code(svc, conn, challenge_id, code, dead_param="id", param="code")
    return RiskChallengeView(id=text, status="verified")


def check_code_format(svc: Services, code: str, param: str) -> None:
    length = svc.settings.sign_in.code_length
    if not verification.valid_code_format(code, length):
        raise InvalidRequest(f"{param} is {length} digits", code="invalid_code_format", param=param)


async def _attempt_code(svc: Services, conn: Connection, challenge_id: uuid.UUID, code: str, *, dead_param: str,
                        param: str) -> None:
    """One try at a payment's code, counted and committed before the answer (on ``conn``, outside a
    transaction); raise unless it was right (``param``: where the code came from, ``dead_param``: what
    named the challenge)."""
    async with conn.transaction():
        row = await sign_in_store.attempt_code(conn, challenge_id, sign_in.code_hash(svc, challenge_id, code),
                                               svc.now(), (PAYMENT_REASON,))
        if row is not None and row["consumed_at"] is not None:
            await sign_in_store.drop_messages(conn, challenge_id)
            return
    if row is None:
        raise Forbidden("this code can no longer be used (expired or too many wrong tries); a new payment sends a "
                        "new one", code="challenge_dead", param=dead_param)
    raise Forbidden("the code is not right", code="incorrect_code", param=param,
                    attempts_remaining=row["attempts_max"] - row["attempts"])


# --- the operator's use cases --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewRule:
    kind: str
    outcome: str
    wallet: str | None
    currency: str | None
    window_s: int | None
    max_count: int | None
    max_amount: int | None
    device_id: str | None = None
    merchant: str | None = None
    multiplier_pct: int | None = None
    baseline: str | None = None
    history_min: int | None = None
    device_age_s: int | None = None
    min_amount: int | None = None


class RiskRuleView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "risk_rule"
    kind: str
    outcome: str
    wallet: str | None
    currency: str | None
    window_s: int | None
    max_count: int | None
    max_amount: int | None
    device_id: str | None
    merchant: str | None
    multiplier_pct: int | None
    baseline: str | None
    history_min: int | None
    device_age_s: int | None
    min_amount: int | None
    status: Literal["active", "disabled"]
    created: int


class RiskRuleList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[RiskRuleView]
    has_more: bool


def rule_id(value: uuid.UUID) -> str:
    return encode(Kind.RISK_RULE, value)


def rule_view(row: Any) -> RiskRuleView:
    return RiskRuleView(
        id=rule_id(row["id"]), kind=row["kind"], outcome=row["outcome"],
        wallet=None if row["holder_id"] is None else encode(Kind.WALLET_HOLDER, row["holder_id"]),
        currency=row["currency"], window_s=row["window_s"], max_count=row["max_count"],
        max_amount=row["max_amount_minor"], device_id=row["device_id"],
        merchant=None if row["merchant_id"] is None else encode(Kind.MERCHANT, row["merchant_id"]),
        multiplier_pct=row["multiplier_pct"], baseline=row["baseline"], history_min=row["history_min"],
        device_age_s=row["device_age_s"], min_amount=row["min_amount_minor"],
        status="disabled" if row["disabled_at"] is not None else "active",
        created=int(row["created_at"].timestamp()))


MAX_COUNT_MAX = 1_000_000_000  # a window's count limit (stored as an integer column)


def _velocity_terms(req: NewRule, code: str | None) -> dict[str, Any]:
    if req.window_s is None or not 1 <= req.window_s <= 2_592_000:
        raise InvalidRequest("window_s: 1 to 2592000 seconds", code="invalid_window", param="window_s")
    if req.max_count is not None and not 1 <= req.max_count <= MAX_COUNT_MAX:
        raise InvalidRequest(f"max_count: 1 to {MAX_COUNT_MAX}", code="invalid_max_count", param="max_count")
    if req.max_amount is not None and (not 1 <= req.max_amount <= AMOUNT_MINOR_MAX or code is None):
        raise InvalidRequest(f"max_amount: a positive amount in minor units (at most {AMOUNT_MINOR_MAX}), with its"
                             " currency", code="invalid_max_amount", param="max_amount")
    if req.max_count is None and req.max_amount is None:
        raise InvalidRequest("give max_count or max_amount", code="invalid_max_count", param="max_count")
    return {"currency": code, "window_s": req.window_s, "max_count": req.max_count,
            "max_amount_minor": req.max_amount}


def _needs_currency(code: str | None, kind: risk.RuleKind) -> str:
    if code is None:
        raise InvalidRequest(f"a {kind.value} rule names its currency", code="invalid_currency", param="currency")
    return code


def _terms(req: NewRule) -> risk.Rule:
    kind = risk.RuleKind(req.kind)
    outcome = risk.Outcome(req.outcome)
    if outcome is risk.Outcome.ALLOW:
        raise InvalidRequest("a rule declines or asks for the PIN or a code", code="invalid_outcome", param="outcome")
    code = None if req.currency is None else check_currency(req.currency).code
    base = risk.Rule(uuid.uuid4(), kind, outcome=outcome)
    if kind is risk.RuleKind.BLOCKED_WALLET:
        holder_id = None if req.wallet is None else decode(Kind.WALLET_HOLDER, req.wallet)
        if holder_id is None:
            raise InvalidRequest("a blocked_wallet rule names its wallet (a wallet holder id)", code="invalid_wallet",
                                 param="wallet")
        return replace(base, holder_id=holder_id)
    if kind is risk.RuleKind.BLOCKED_DEVICE:
        if req.device_id is None or not 1 <= len(req.device_id) <= 128:
            raise InvalidRequest("a blocked_device rule names its device_id (1-128 characters)",
                                 code="invalid_device", param="device_id")
        return replace(base, device_id=req.device_id)
    if kind in risk.VELOCITY_KINDS:
        merchant_id = None
        if req.merchant is not None:
            merchant_id = decode(Kind.MERCHANT, req.merchant)
            if merchant_id is None or kind is not risk.RuleKind.VELOCITY_MERCHANT:
                raise InvalidRequest("merchant: a merchant id, for a velocity_merchant rule", code="invalid_merchant",
                                     param="merchant")
        return replace(base, merchant_id=merchant_id, **_velocity_terms(req, code))
    if kind is risk.RuleKind.AMOUNT_UNUSUAL:
        if req.multiplier_pct is None or not 101 <= req.multiplier_pct <= 100_000:
            raise InvalidRequest("multiplier_pct: 101 to 100000 (k x 100: 300 flags more than 3 times the usual)",
                                 code="invalid_multiplier", param="multiplier_pct")
        if req.history_min is None or not 1 <= req.history_min <= risk.HISTORY_MAX:
            raise InvalidRequest(f"history_min: 1 to {risk.HISTORY_MAX} payments", code="invalid_history_min",
                                 param="history_min")
        return replace(base, currency=_needs_currency(code, kind), multiplier_pct=req.multiplier_pct,
                       baseline=risk.Baseline(req.baseline or "median"), history_min=req.history_min)
    assert kind is risk.RuleKind.NEW_DEVICE
    if req.device_age_s is None or not 1 <= req.device_age_s <= 2_592_000:
        raise InvalidRequest("device_age_s: 1 to 2592000 seconds", code="invalid_device_age", param="device_age_s")
    if req.min_amount is None or not 0 <= req.min_amount <= AMOUNT_MINOR_MAX:
        raise InvalidRequest(f"min_amount: an amount in minor units, 0 (any) to {AMOUNT_MINOR_MAX}",
                             code="invalid_min_amount", param="min_amount")
    return replace(base, currency=_needs_currency(code, kind), device_age_s=req.device_age_s,
                   min_amount_minor=req.min_amount)


async def create(svc: Services, who: Principal, req: NewRule, identity: RequestIdentity) -> Reply:
    terms = _terms(req)

    async def work(conn: Connection) -> tuple[int, Any]:
        # A block waits for the holder's (the device's) money out in flight, which then read the rules
        # before it; any that commits after it has read the rules after it (``check_money_out``).
        if terms.kind is risk.RuleKind.BLOCKED_WALLET:
            assert terms.holder_id is not None
            if not await store.lock_holder_for_block(conn, terms.holder_id):
                raise InvalidRequest("no such wallet holder", code="invalid_wallet", param="wallet")
        elif terms.holder_id is not None and not await store.holder_exists(conn, terms.holder_id):
            raise InvalidRequest("no such wallet holder", code="invalid_wallet", param="wallet")
        if terms.kind is risk.RuleKind.BLOCKED_DEVICE:
            assert terms.device_id is not None
            await store.lock_device_for_block(conn, terms.device_id, shared=False)
        if terms.merchant_id is not None and not await store.merchant_exists(conn, terms.merchant_id):
            raise InvalidRequest("no such merchant", code="invalid_merchant", param="merchant")
        view = rule_view(await store.insert(conn, terms, svc.now()))
        await audit.record(conn, who, "risk_rule.created", terms.id, view, merchant_id=None)
        return 201, view

    reply = await svc.idempotency.run(identity, work)
    async with svc.db.connection() as conn:  # this process's fast path sees the change at once
        await svc.risk_rules.load(conn)
    return reply


def _uuid(text: str) -> uuid.UUID:
    value = decode(Kind.RISK_RULE, text)
    if value is None:
        raise NotFound(f"no such risk rule: {text}", param="id")
    return value


async def disable(svc: Services, who: Principal, text_id: str, identity: RequestIdentity) -> Reply:
    """Disable a rule now; disabling it again answers it unchanged."""
    rid = _uuid(text_id)
    counted = False

    async def work(conn: Connection) -> tuple[int, Any]:
        nonlocal counted
        row = await store.get(conn, rid, for_update=True)
        if row is None:
            raise NotFound(f"no such risk rule: {text_id}", param="id")
        was_disabled = row["disabled_at"] is not None
        view = rule_view(await store.disable(conn, rid, svc.now()))
        if not was_disabled:
            await audit.record(conn, who, "risk_rule.disabled", rid, view, merchant_id=None)
        counted = risk.RuleKind(row["kind"]) in risk.COUNTED_KINDS
        return 200, view

    reply = await svc.idempotency.run(identity, work)
    async with svc.db.connection() as conn:  # this process's fast path sees the change at once
        await svc.risk_rules.load(conn)
    if counted:  # its windows in Redis go once no process charges them any more (a rule is never enabled again)
        svc.risk_rules.forget_later(lambda: svc.accel.forget(f"{_window_prefix(rid)}*"))
    return reply


async def get(svc: Services, text_id: str) -> RiskRuleView:
    rid = _uuid(text_id)
    async with svc.db.connection() as conn:
        row = await store.get(conn, rid)
    if row is None:
        raise NotFound(f"no such risk rule: {text_id}", param="id")
    return rule_view(row)


async def list_rules(svc: Services, page: PageRequest) -> RiskRuleList:
    async with svc.db.connection() as conn:
        rows, has_more = await pages.read(conn, store.all_rules(), page, partial(decode, Kind.RISK_RULE))
    return RiskRuleList(data=[rule_view(r) for r in rows], has_more=has_more)
