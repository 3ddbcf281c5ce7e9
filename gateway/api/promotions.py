"""Promotion campaigns: the operators' (create, list, retrieve, end) and the holder's benefits."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from gateway.api import schema
from gateway.api.routing import Call, api
from gateway.auth.principals import PrincipalKind as P
from gateway.services import promotions, views

ADMIN = {"admin"}
LocalTime = Annotated[str, msgspec.Meta(max_length=32, description="Local wall time in time_zone, no offset: "
                                        "2026-12-01T00:00:00")]
Ids = Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(max_length=1000)]
Minor = Annotated[int, msgspec.Meta(ge=0, description="Integer minor units of the campaign's currency")]
CAMPAIGN_CODES = ("invalid_time_zone", "invalid_starts_at", "invalid_ends_at", "invalid_percent_bps",
                  "invalid_fixed_amount", "invalid_cap", "invalid_budget", "invalid_min_amount",
                  "invalid_per_holder_limit", "invalid_places", "invalid_mcc", "invalid_funded_by",
                  "invalid_eligibility", *schema.AMOUNT_CODES)


class CreateCampaign(schema.Strict):
    name: schema.ShortText
    currency: schema.Currency
    rule: Literal["percent", "fixed", "cashback", "gift_registration", "gift_first_payment"]
    funded_by: Literal["merchant", "bank"]
    time_zone: Annotated[str, msgspec.Meta(min_length=1, max_length=64, description="IANA, e.g. Asia/Shanghai")]
    starts_at: LocalTime
    ends_at: LocalTime
    budget: Annotated[int, msgspec.Meta(description="Total of the benefits it may give, in minor units")]
    percent_bps: Annotated[int, msgspec.Meta(description="percent rule (or a percentage cashback): basis points")] = 0
    fixed_amount: Annotated[int, msgspec.Meta(description="fixed rule, a fixed cashback or a gift: minor units")] = 0
    cap: Annotated[int, msgspec.Meta(description="At most this discount or cashback per payment")] | None = None
    min_amount: Minor = 0
    per_holder_limit: Annotated[int, msgspec.Meta(description="Discounted payments per holder")] | None = None
    places: Annotated[int, msgspec.Meta(description="Discounted payments in all, first come first served")] | None = None
    merchants: Ids = msgspec.field(default_factory=list)
    stores: Ids = msgspec.field(default_factory=list)
    mccs: Annotated[list[Annotated[str, msgspec.Meta(max_length=4)]], msgspec.Meta(max_length=100)] = \
        msgspec.field(default_factory=list)


class CampaignQuery(schema.PageQuery):
    limit: schema.Limit = 20


@api.route("POST", "/v1/operator/campaigns", summary="Create a promotion campaign", auth={P.OPERATOR},
           roles=ADMIN, body=CreateCampaign, response=views.CampaignView, status=201, tag="promotions",
           errors={400: CAMPAIGN_CODES, 409: ("too_many_campaigns",)})
async def create_campaign(call: Call[CreateCampaign, None]) -> Any:
    """A discount at payment (a percentage with an optional cap, or a fixed amount) for wallet payments captured at
    once, in one currency, within a window of local time in time_zone, for the merchants / stores / MCCs listed
    (none: any), from min_amount up. Funded by the bank (the promotions account pays it; the merchant receives the
    full amount) or by the merchant (it receives amount - discount). budget bounds the discounts given in all (the
    last units go as a smaller discount), places the discounted payments, per_holder_limit those of one holder.
    The holder always pays at least one minor unit. Among several campaigns the largest discount wins (then the one
    ending first).

    rule cashback credits the payer's wallet when the payment is captured (at once, or by a later manual capture),
    percent_bps of the amount captured (at most cap) or fixed_amount (its share for a partial capture); a refund
    takes it back in proportion, from what the refund gives the holder, and returns it to whoever funded it.
    Cashback is funded by the bank (the promotions account pays it; the merchant nets captured - fee) or by the
    merchant (its receivable pays it in the capture's own ledger entry, at most captured - fee; the merchant nets
    captured - fee - cashback, and settlement deducts it from the batch's net). rule gift_registration credits
    fixed_amount to each holder registering during the window; gift_first_payment with a holder's first captured
    payment ever (once per holder whatever the campaign). Gifts are funded by the bank only (invalid_funded_by);
    places, budget and per_holder_limit hold for cashback and gifts as for discounts (a gift: once per holder)."""
    b = call.body
    req = promotions.NewCampaign(
        name=b.name, currency=b.currency, rule=b.rule, funded_by=b.funded_by, time_zone=b.time_zone,
        starts_at=b.starts_at, ends_at=b.ends_at, budget=b.budget, percent_bps=b.percent_bps,
        fixed_amount=b.fixed_amount, cap=b.cap, min_amount=b.min_amount, per_holder_limit=b.per_holder_limit,
        places=b.places, merchants=tuple(b.merchants), stores=tuple(b.stores), mccs=tuple(b.mccs),
    )
    return await promotions.create(call.svc, call.who, req, call.identity())


@api.route("GET", "/v1/operator/campaigns", summary="List campaigns, newest first", auth={P.OPERATOR},
           query=CampaignQuery, response=views.CampaignList, tag="promotions")
async def list_campaigns(call: Call[None, CampaignQuery]) -> Any:
    """Every campaign, newest first, cursor paginated, with what it has spent and the places taken."""
    return await promotions.list_campaigns(call.svc, call.query.page())


@api.route("GET", "/v1/operator/campaigns/{id}", summary="Retrieve a campaign", auth={P.OPERATOR},
           response=views.CampaignView, tag="promotions")
async def get_campaign(call: Call[None, None]) -> Any:
    """One campaign: its terms, status, budget spent, clawed back and places taken."""
    return await promotions.get(call.svc, call.match("id"))


@api.route("POST", "/v1/operator/campaigns/{id}/end", summary="End a campaign now", auth={P.OPERATOR},
           roles=ADMIN, body=schema.Empty, response=views.CampaignView, tag="promotions")
async def end_campaign(call: Call[schema.Empty, None]) -> Any:
    """End the campaign at once: no payment whose transaction starts after this answer is discounted by it.
    Ending it again answers it unchanged."""
    return await promotions.end(call.svc, call.who, call.match("id"), call.identity())


@api.route("GET", "/v1/operator/campaigns/{id}/gifts", summary="The gifts a campaign gave", auth={P.OPERATOR},
           query=CampaignQuery, response=views.GiftList, tag="promotions")
async def campaign_gifts(call: Call[None, CampaignQuery]) -> Any:
    """The gifts of a gift campaign, newest first, cursor paginated: to which holder, on registration or with
    which first payment, how much."""
    return await promotions.campaign_gifts(call.svc, call.match("id"), call.query.page())


@api.route("GET", "/v1/wallet/benefits", summary="The holder's discounts, cashback and gifts, and the campaigns it can use",
           auth={P.WALLET}, query=schema.PageQuery, response=views.BenefitsView, tag="wallet")
async def wallet_benefits(call: Call[None, schema.PageQuery]) -> Any:
    """The discounts, cashback and gifts the holder received (newest first, cursor paginated by payment id, or
    gift id for a gift: which payment, which campaign, how much, who funded it, how much refunds took back) and
    the live campaigns it can still get something from, with the uses it has left."""
    return await promotions.benefits(call.svc, call.who, call.query.page())
