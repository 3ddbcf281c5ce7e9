"""Risk rules: the operators' (create, list, retrieve, disable)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from gateway.api import schema
from gateway.api.routing import Call, api
from gateway.auth.principals import PrincipalKind as P
from gateway.services import risk

ADMIN = {"admin"}
RULE_CODES = ("invalid_wallet", "invalid_window", "invalid_max_count", "invalid_max_amount", "invalid_currency")


class CreateRule(schema.Strict):
    kind: Literal["blocked_wallet", "velocity_wallet"]
    wallet: Annotated[str, msgspec.Meta(max_length=64, description="blocked_wallet: the holder")] | None = None
    window_s: Annotated[int, msgspec.Meta(description="velocity_wallet: the window in seconds")] | None = None
    max_count: Annotated[int, msgspec.Meta(description="velocity_wallet: payments allowed in it")] | None = None
    max_amount: Annotated[int, msgspec.Meta(description="velocity_wallet: minor units allowed in it")] | None = None
    currency: schema.Currency | None = None


class RuleQuery(schema.PageQuery):
    limit: schema.Limit = 20


@api.route("POST", "/v1/operator/risk_rules", summary="Create a risk rule", auth={P.OPERATOR}, roles=ADMIN,
           body=CreateRule, response=risk.RiskRuleView, status=201, tag="risk", errors={400: RULE_CODES})
async def create_rule(call: Call[CreateRule, None]) -> Any:
    """A rule checked at every authorisation (by id, QR, pay-code, tap): blocked_wallet declines every payment
    of the wallet; velocity_wallet declines a payment that would make the holder's authorised payments within
    window_s more than max_count, or (in currency) more than max_amount. A declined payment answers 402
    risk_declined and moves no money."""
    b = call.body
    req = risk.NewRule(kind=b.kind, wallet=b.wallet, currency=b.currency, window_s=b.window_s,
                       max_count=b.max_count, max_amount=b.max_amount)
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
