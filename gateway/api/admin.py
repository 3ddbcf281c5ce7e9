"""Operator and merchant administration: sessions, merchants, stores, terminals, API keys, events."""

from __future__ import annotations

from typing import Any

from gateway.api import schema
from gateway.api.routing import Call, api
from gateway.auth.principals import PrincipalKind as P
from gateway.services import operations, tenants, throttle, views, wallets

ADMIN = {"admin"}


@api.route("POST", "/v1/operator/sessions", summary="Operator log in; returns a JWT", auth=None,
           body=schema.Login, response=views.TokenView, status=201, tag="operators")
async def operator_login(call: Call[schema.Login, None]) -> Any:
    return await tenants.operator_login(call.svc, call.body.email, call.body.password, call.client_address)


@api.route("POST", "/v1/merchants", summary="Create a merchant", auth={P.OPERATOR}, roles=ADMIN,
           body=schema.CreateMerchant, response=views.MerchantView, status=201, tag="operators")
async def create_merchant(call: Call[schema.CreateMerchant, None]) -> Any:
    b = call.body
    return await tenants.create_merchant(call.svc, b.name, b.mcc, b.country, b.city, b.fee_bps, call.identity(),
                                         b.name_local, b.city_local, b.language_local)


@api.route("GET", "/v1/merchants", summary="List merchants", auth={P.OPERATOR}, query=schema.MerchantQuery,
           response=views.MerchantList, tag="operators")
async def list_merchants(call: Call[None, schema.MerchantQuery]) -> Any:
    return await tenants.list_merchants(call.svc, call.query.page())


@api.route("GET", "/v1/merchants/{id}", summary="Retrieve a merchant", auth={P.OPERATOR, P.MERCHANT},
           response=views.MerchantView, tag="operators")
async def get_merchant(call: Call[None, None]) -> Any:
    return await tenants.get_merchant(call.svc, call.who, call.match("id"))


@api.route("POST", "/v1/merchants/{id}/suspend", summary="Suspend a merchant: no API access, no payments",
           auth={P.OPERATOR}, roles=ADMIN, body=schema.Empty, response=views.MerchantView, tag="operators")
async def suspend_merchant(call: Call[schema.Empty, None]) -> Any:
    return await tenants.set_merchant_status(call.svc, call.match("id"), "suspended", call.identity())


@api.route("POST", "/v1/merchants/{id}/reactivate", summary="Reactivate a suspended merchant",
           auth={P.OPERATOR}, roles=ADMIN, body=schema.Empty, response=views.MerchantView, tag="operators")
async def reactivate_merchant(call: Call[schema.Empty, None]) -> Any:
    return await tenants.set_merchant_status(call.svc, call.match("id"), "active", call.identity())


@api.route("POST", "/v1/merchants/{id}/stores", summary="Create a store", auth={P.OPERATOR}, roles=ADMIN,
           body=schema.CreateStore, response=views.StoreView, status=201, tag="operators")
async def create_store(call: Call[schema.CreateStore, None]) -> Any:
    return await tenants.create_store(call.svc, call.match("id"), call.body.name, call.body.city, call.identity())


@api.route("POST", "/v1/merchants/{id}/terminals", summary="Create a terminal in a store", auth={P.OPERATOR},
           roles=ADMIN, body=schema.CreateTerminal, response=views.TerminalView, status=201, tag="operators")
async def create_terminal(call: Call[schema.CreateTerminal, None]) -> Any:
    b = call.body
    return await tenants.create_terminal(call.svc, call.match("id"), b.store, b.label, call.identity())


@api.route("POST", "/v1/merchants/{id}/api_keys", summary="Create an API key; the secret is shown only here",
           auth={P.OPERATOR}, roles=ADMIN, body=schema.CreateApiKey, response=views.ApiKeyView, status=201,
           tag="operators")
async def create_key(call: Call[schema.CreateApiKey, None]) -> Any:
    return await tenants.create_api_key(call.svc, call.match("id"), call.body.kind, call.identity())


@api.route("GET", "/v1/merchants/{id}/api_keys", summary="List a merchant's API keys (prefixes only)",
           auth={P.OPERATOR, P.MERCHANT}, query=schema.PageQuery, response=views.ApiKeyList, tag="operators")
async def list_keys(call: Call[None, schema.PageQuery]) -> Any:
    return await tenants.list_api_keys(call.svc, call.who, call.match("id"), call.query.page())


@api.route("POST", "/v1/api_keys/{id}/revoke", summary="Revoke an API key", auth={P.OPERATOR, P.MERCHANT},
           roles=ADMIN, body=schema.Empty, response=views.ApiKeyView, tag="operators")
async def revoke_key(call: Call[schema.Empty, None]) -> Any:
    return await tenants.revoke_api_key(call.svc, call.who, call.match("id"), call.identity())


@api.route("POST", "/v1/operator/wallet_holders/{id}/unlock", summary="Unlock payments after too many wrong PINs",
           auth={P.OPERATOR}, roles={"admin", "support"}, body=schema.Empty, response=views.WalletHolderView,
           tag="operators")
async def unlock_wallet(call: Call[schema.Empty, None]) -> Any:
    return await wallets.unlock(call.svc, call.match("id"))


class ClearLockout(schema.Strict):
    kind: throttle.Kind
    subject: schema.Text  # phone number, operator email, enrolment code or device id


@api.route("POST", "/v1/operator/lockouts/clear", summary="Lift a sign-in lockout and forget the account's failures",
           auth={P.OPERATOR}, roles={"admin", "support"}, body=ClearLockout, response=throttle.LockoutClearedView,
           tag="operators")
async def clear_lockout(call: Call[ClearLockout, None]) -> Any:
    return await throttle.clear(call.svc, call.body.kind, call.body.subject)


@api.route("POST", "/v1/operator/wallet_holders/{id}/tier", summary="Set a wallet holder's verification tier",
           auth={P.OPERATOR}, roles={"admin", "support"}, body=schema.SetTier, response=views.WalletHolderView,
           tag="operators")
async def set_tier(call: Call[schema.SetTier, None]) -> Any:
    return await wallets.set_tier(call.svc, call.match("id"), call.body.tier)


@api.route("GET", "/v1/balance", summary="The merchant's receivable balance per currency", auth={P.MERCHANT},
           response=views.MerchantBalanceView, tag="payments")
async def balance(call: Call[None, None]) -> Any:
    return await tenants.merchant_balance(call.svc, call.who)


@api.route("GET", "/v1/operator/ledger/invariants", summary="Run the ledger invariant checker",
           auth={P.OPERATOR}, response=views.InvariantReport, tag="operators")
async def check_invariants(call: Call[None, None]) -> Any:
    return await operations.invariant_report(call.svc)
