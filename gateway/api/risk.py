"""Risk: the operators' rules (create, list, retrieve, disable), decisions and alerts; the holder's answer
to a payment's one-time code."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from gateway.api import schema
from gateway.api.routing import Call, api
from gateway.auth.principals import PrincipalKind as P
from gateway.services import risk

ADMIN = {"admin"}
RULE_CODES = ("invalid_wallet", "invalid_window", "invalid_max_count", "invalid_max_amount", "invalid_currency",
              "invalid_outcome", "invalid_device", "invalid_merchant", "invalid_multiplier", "invalid_history_min",
              "invalid_device_age", "invalid_min_amount")
Kind = Literal["blocked_wallet", "velocity_wallet", "velocity_device", "velocity_merchant", "amount_unusual",
               "new_device", "blocked_device"]


class CreateRule(schema.Strict):
    kind: Kind
    outcome: Annotated[Literal["decline", "require_pin", "require_otp"],
                       msgspec.Meta(description="what a payment it matches gets")] = "decline"
    wallet: Annotated[str, msgspec.Meta(max_length=64, description="blocked_wallet: the holder")] | None = None
    device_id: Annotated[str, msgspec.Meta(max_length=128, description="blocked_device: the device")] | None = None
    merchant: Annotated[str, msgspec.Meta(max_length=64, description="velocity_merchant: one merchant "
                                          "(default: each merchant)")] | None = None
    window_s: Annotated[int, msgspec.Meta(description="velocity_*: the window in seconds")] | None = None
    max_count: Annotated[int, msgspec.Meta(description="velocity_*: payments allowed in it")] | None = None
    max_amount: Annotated[int, msgspec.Meta(description="velocity_*: minor units allowed in it")] | None = None
    multiplier_pct: Annotated[int, msgspec.Meta(description="amount_unusual: k x 100 (300: more than 3 times "
                                                "the usual)")] | None = None
    baseline: Annotated[Literal["median", "p90"], msgspec.Meta(description="amount_unusual: the usual amount of "
                                                                "the holder's last 50 captured payments")] | None = None
    history_min: Annotated[int, msgspec.Meta(description="amount_unusual: payments needed before it "
                                             "applies")] | None = None
    device_age_s: Annotated[int, msgspec.Meta(description="new_device: a device first seen less than this "
                                              "ago is new")] | None = None
    min_amount: Annotated[int, msgspec.Meta(description="new_device: from this amount (minor units)")] | None = None
    currency: schema.Currency | None = None


class RuleQuery(schema.PageQuery):
    limit: schema.Limit = 20


class DecisionQuery(schema.PageQuery):
    limit: schema.Limit = 20
    wallet: Annotated[str, msgspec.Meta(max_length=64, description="only this holder's")] | None = None
    outcome: Literal["allow", "require_pin", "require_otp", "decline"] | None = None


class AlertQuery(schema.PageQuery):
    limit: schema.Limit = 20
    wallet: Annotated[str, msgspec.Meta(max_length=64, description="only this holder's")] | None = None


class AnswerPaymentCode(schema.Strict):
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=20, description="The code sent to the phone")]


@api.route("POST", "/v1/operator/risk_rules", summary="Create a risk rule", auth={P.OPERATOR}, roles=ADMIN,
           body=CreateRule, response=risk.RiskRuleView, status=201, tag="risk", errors={400: RULE_CODES})
async def create_rule(call: Call[CreateRule, None]) -> Any:
    """A rule checked at every authorisation (by id, QR, pay-code, tap). Kinds: blocked_wallet (every payment of
    the wallet, and its withdrawals and conversions), blocked_device (every payment, withdrawal and conversion
    from the device; a block declines a withdrawal or a conversion whatever its outcome), velocity_wallet / velocity_device /
    velocity_merchant (a payment that would make the holder's / device's / merchant's authorised payments within
    window_s more than max_count, or in currency more than max_amount), amount_unusual (more than
    multiplier_pct/100 times the holder's median or p90 of its last 50 captured payments in currency, once it has
    history_min of them), new_device (from min_amount in currency, from a device the holder first used less than
    device_age_s ago). Outcome: decline (402 risk_declined), require_pin (402 pin_required: pay again with the
    PIN), require_otp (402 otp_required with a challenge: verify the code sent to the phone, then pay again)."""
    b = call.body
    req = risk.NewRule(kind=b.kind, outcome=b.outcome, wallet=b.wallet, currency=b.currency, window_s=b.window_s,
                       max_count=b.max_count, max_amount=b.max_amount, device_id=b.device_id, merchant=b.merchant,
                       multiplier_pct=b.multiplier_pct, baseline=b.baseline, history_min=b.history_min,
                       device_age_s=b.device_age_s, min_amount=b.min_amount)
    return await risk.create(call.svc, call.who, req, call.identity())


@api.route("GET", "/v1/operator/risk_rules", summary="List risk rules, newest first", auth={P.OPERATOR},
           query=RuleQuery, response=risk.RiskRuleList, tag="risk")
async def list_rules(call: Call[None, RuleQuery]) -> Any:
    """Every rule, newest first, cursor paginated."""
    return await risk.list_rules(call.svc, call.query.page())


@api.route("GET", "/v1/operator/risk_rules/{id}", summary="Retrieve a risk rule", auth={P.OPERATOR},
           response=risk.RiskRuleView, tag="risk")
async def get_rule(call: Call[None, None]) -> Any:
    """One rule and its status."""
    return await risk.get(call.svc, call.match("id"))


@api.route("POST", "/v1/operator/risk_rules/{id}/disable", summary="Disable a risk rule now", auth={P.OPERATOR},
           roles=ADMIN, body=schema.Empty, response=risk.RiskRuleView, tag="risk")
async def disable_rule(call: Call[schema.Empty, None]) -> Any:
    """From this answer no payment is declined by it; disabling it again answers it unchanged."""
    return await risk.disable(call.svc, call.who, call.match("id"), call.identity())


@api.route("GET", "/v1/operator/risk_decisions", summary="List risk decisions, newest first", auth={P.OPERATOR},
           query=DecisionQuery, response=risk.RiskDecisionList, tag="risk", errors={400: ("invalid_wallet",)})
async def list_decisions(call: Call[None, DecisionQuery]) -> Any:
    """Every decision taken on a payment a rule concerned, and every withdrawal or conversion a block declined
    (channel withdrawal / conversion; payment and merchant null): its outcome, the rules matched and what each
    measured, the step-ups passed. Cursor paginated; filter by wallet and outcome."""
    q = call.query
    return await risk.list_decisions(call.svc, q.page(), q.wallet, q.outcome, alerts_only=False)


@api.route("GET", "/v1/operator/risk_alerts", summary="List risk alerts, newest first", auth={P.OPERATOR},
           query=AlertQuery, response=risk.RiskDecisionList, tag="risk", errors={400: ("invalid_wallet",)})
async def list_alerts(call: Call[None, AlertQuery]) -> Any:
    """The decisions that refused a payment or asked for the PIN or a code (each also a risk.alert event and a
    notification to the holder). Cursor paginated; filter by wallet."""
    q = call.query
    return await risk.list_decisions(call.svc, q.page(), q.wallet, None, alerts_only=True)


@api.route("POST", "/v1/wallet/risk_challenges/{id}/verify", summary="Answer a payment's one-time code",
           auth={P.WALLET}, body=AnswerPaymentCode, response=risk.RiskChallengeView, tag="wallet",
           errors={400: ("invalid_code_format",), 403: ("incorrect_code", "challenge_dead")},
           idempotent=False)  # by nature: a verified challenge answers verified again
async def verify_code(call: Call[AnswerPaymentCode, None]) -> Any:
    """The code an otp_required answer sent to the phone: once verified, pay the same payment again (a new
    Idempotency-Key) within the code's lifetime; the code opens that one payment once. Each wrong code counts;
    after the last allowed one, or once expired, the challenge is dead (paying again sends a new one)."""
    return await risk.verify_code(call.svc, call.who, call.match("id"), call.body.code)
