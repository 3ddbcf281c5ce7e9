"""Currencies and cross-border: the operators' rate table, holders' FX quotes and conversions.

A rate is exact decimal TEXT (``"7.1234"``): a JSON number is refused, it may already have lost
digits. A rates file travels as JSON too (``{"content": "<CSV text>"}``), so the one strict JSON
body rule holds for every route; that route alone takes a larger body (``fx.api_body_max_bytes``).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from gateway.api import schema
from gateway.api.routing import Call, api
from gateway.auth.principals import PrincipalKind as P
from gateway.services import fx
from gateway.services.context import Services

RATE_SETTERS = {"admin", "settlement"}
RateText = Annotated[str, msgspec.Meta(min_length=1, max_length=40, description="Exact decimal text, e.g. \"7.1234\"")]
TimestampText = Annotated[str, msgspec.Meta(max_length=40, description="RFC 3339 with its offset, e.g."
                                                                      " 2026-12-02T08:00:00Z")]
RATE_CODES = ("invalid_currency", "same_currency", "invalid_rate", "invalid_bps", "invalid_timestamp",
              "invalid_validity")


class CreateFxRate(schema.Strict):
    base: schema.Currency
    quote: schema.Currency
    rate: RateText
    spread_bps: Annotated[int, msgspec.Meta(description="The house's margin taken from the rate, basis points")] = 0
    valid_from: TimestampText | None = None
    valid_until: TimestampText | None = None


class ImportFxRates(schema.Strict):
    content: Annotated[str, msgspec.Meta(description="CSV text: base,quote,rate,spread_bps,valid_from,valid_until")]


class FxRateQuery(schema.PageQuery):
    limit: schema.Limit = 20
    base: schema.Currency | None = None
    quote: schema.Currency | None = None


class CreateFxQuote(schema.Strict):
    from_currency: schema.Currency
    to_currency: schema.Currency
    sell_amount: schema.Amount | None = None
    receive_amount: schema.Amount | None = None


class Convert(schema.Strict):
    quote: Annotated[str, msgspec.Meta(max_length=64, description="An fxq_... quote of this holder")]


def _import_body_max(svc: Services) -> int:
    return svc.settings.fx.api_body_max_bytes


@api.route("POST", "/v1/operator/fx_rates", summary="Enter an FX rate (exact decimal) with its spread and window",
           auth={P.OPERATOR}, roles=RATE_SETTERS, body=CreateFxRate, response=fx.FxRateView, status=201,
           tag="fx", errors={400: RATE_CODES})
async def create_rate(call: Call[CreateFxRate, None]) -> Any:
    """Enter a rate: 1 base = rate quote, as exact decimal text, with the spread (basis points) the holder's
    rate gives up and the window it is valid in (from now and open-ended by default). The newest valid rate
    of a pair, in either direction, prices quotes. Audited."""
    b = call.body
    return await fx.create_rate(call.svc, call.who, b.base, b.quote, b.rate, b.spread_bps, b.valid_from,
                                b.valid_until, call.identity())


@api.route("POST", "/v1/operator/fx_rates/import", summary="Import FX rates from CSV text: every line or none",
           auth={P.OPERATOR}, roles=RATE_SETTERS, body=ImportFxRates, response=fx.FxRateImportView, status=201,
           tag="fx", body_max=_import_body_max, errors={400: ("invalid_rate_file",)})
async def import_rates(call: Call[ImportFxRates, None]) -> Any:
    """Import rates from CSV text (header base,quote,rate,spread_bps,valid_from,valid_until). Every line is
    checked first; one bad line refuses the file, naming it (param "line N"). Audited."""
    return await fx.import_rates(call.svc, call.who, call.body.content, call.identity())


@api.route("GET", "/v1/operator/fx_rates", summary="The FX rate table, newest first", auth={P.OPERATOR},
           query=FxRateQuery, response=fx.FxRateList, tag="fx", errors={400: ("invalid_currency", "invalid_cursor")})
async def list_rates(call: Call[None, FxRateQuery]) -> Any:
    """Every rate entered, newest first, optionally of one base or quote currency; cursor paginated."""
    q = call.query
    return await fx.list_rates(call.svc, q.base, q.quote, q.page())


@api.route("POST", "/v1/wallet/fx_quotes", summary="Quote a conversion: rate, fee, amount received, expiry",
           auth={P.WALLET}, body=CreateFxQuote, response=fx.FxQuoteView, status=201, tag="wallet",
           errors={400: schema.AMOUNT_CODES + ("same_currency", "amount_too_small", "amount_choice_required"),
                   402: ("currency_not_supported",), 404: ("fx_rate_unavailable",)})
async def create_quote(call: Call[CreateFxQuote, None]) -> Any:
    """Quote converting between two of the holder's currencies, for an amount to sell or to receive: the
    holder's rate (spread taken), the fee (in the currency bought, rounded up) and the amount received
    (rounded down). The quote can be converted once, until expires_at."""
    b = call.body
    return await fx.create_quote(call.svc, call.who, b.from_currency, b.to_currency, b.sell_amount, b.receive_amount,
                                 call.identity())


@api.route("POST", "/v1/wallet/conversions", summary="Convert at a quote (once): one ledger movement",
           auth={P.WALLET}, body=Convert, response=fx.ConversionView, status=201, tag="wallet",
           errors={402: ("insufficient_funds", "limit_exceeded", "currency_not_supported", "risk_declined"),
                   403: ("wallet_locked",), 404: ("resource_missing",), 409: ("quote_used", "quote_expired")})
async def convert(call: Call[Convert, None]) -> Any:
    """Carry out a quote: sell its amount from the wallet and receive its amount in the other currency, in one
    ledger movement through the gateway's FX positions. A quote converts once; an expired one is refused. A
    blocked wallet, or a blocked device (the session's), is declined (402 risk_declined), the quote unused."""
    return await fx.convert(call.svc, call.who, call.body.quote, call.identity())
