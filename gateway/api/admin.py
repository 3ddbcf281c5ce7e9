"""Operator and merchant administration: sessions, merchants, stores, terminals, API keys, events."""

from __future__ import annotations

from typing import Any

from gateway.api import schema
from gateway.api.routing import Call, api
from gateway.auth.principals import PrincipalKind as P
from gateway.services import invariant_checks, operations, tenants, throttle, views, wallets

ADMIN = {"admin"}


@api.route("POST", "/v1/operator/sessions", summary="Operator log in; returns a JWT", auth=None,
           body=schema.Login, response=views.TokenView, status=201, tag="operators",
           errors={401: ("invalid_credentials",), 429: schema.SIGN_IN_CODES})
async def operator_login(call: Call[schema.Login, None]) -> Any:
    """Exchange an operator's email and password for a JWT (the operator API's bearer token). Failed attempts
    are counted per account and per client address; too many lock signing in for a while."""
    return await tenants.operator_login(call.svc, call.body.email, call.body.password, call.client_address)


@api.route("POST", "/v1/merchants", summary="Create a merchant", auth={P.OPERATOR}, roles=ADMIN,
           body=schema.CreateMerchant, response=views.MerchantView, status=201, tag="operators",
           errors={400: ("invalid_mcc", "invalid_country", "invalid_fee", "invalid_language")})
async def create_merchant(call: Call[schema.CreateMerchant, None]) -> Any:
    """Create a merchant with its category code, country, city and fee in basis points; the local name and city
    go into its QR codes."""
    b = call.body
    return await tenants.create_merchant(call.svc, b.name, b.mcc, b.country, b.city, b.fee_bps, call.identity(),
                                         b.name_local, b.city_local, b.language_local)


@api.route("GET", "/v1/merchants", summary="List merchants", auth={P.OPERATOR}, query=schema.MerchantQuery,
           response=views.MerchantList, tag="operators")
async def list_merchants(call: Call[None, schema.MerchantQuery]) -> Any:
    """Merchants, newest first, cursor paginated."""
    return await tenants.list_merchants(call.svc, call.query.page())


@api.route("GET", "/v1/merchants/{id}", summary="Retrieve a merchant", auth={P.OPERATOR, P.MERCHANT},
           response=views.MerchantView, tag="operators")
async def get_merchant(call: Call[None, None]) -> Any:
    """One merchant. A merchant's secret key sees only its own merchant."""
    return await tenants.get_merchant(call.svc, call.who, call.match("id"))


@api.route("POST", "/v1/merchants/{id}/suspend", summary="Suspend a merchant: no API access, no payments",
           auth={P.OPERATOR}, roles=ADMIN, body=schema.Empty, response=views.MerchantView, tag="operators")
async def suspend_merchant(call: Call[schema.Empty, None]) -> Any:
    """Suspend a merchant: its API keys and its devices are refused (403 merchant_suspended) and it takes no
    payments until reactivated."""
    return await tenants.set_merchant_status(call.svc, call.match("id"), "suspended", call.identity())


@api.route("POST", "/v1/merchants/{id}/reactivate", summary="Reactivate a suspended merchant",
           auth={P.OPERATOR}, roles=ADMIN, body=schema.Empty, response=views.MerchantView, tag="operators")
async def reactivate_merchant(call: Call[schema.Empty, None]) -> Any:
    """Reactivate a suspended merchant: its API keys work again."""
    return await tenants.set_merchant_status(call.svc, call.match("id"), "active", call.identity())


@api.route("POST", "/v1/merchants/{id}/stores", summary="Create a store", auth={P.OPERATOR}, roles=ADMIN,
           body=schema.CreateStore, response=views.StoreView, status=201, tag="operators")
async def create_store(call: Call[schema.CreateStore, None]) -> Any:
    """Create a store of the merchant; payments, terminals and static QR codes belong to a store."""
    return await tenants.create_store(call.svc, call.match("id"), call.body.name, call.body.city, call.identity())


@api.route("POST", "/v1/merchants/{id}/terminals", summary="Create a terminal in a store", auth={P.OPERATOR},
           roles=ADMIN, body=schema.CreateTerminal, response=views.TerminalView, status=201, tag="operators")
async def create_terminal(call: Call[schema.CreateTerminal, None]) -> Any:
    """Create a terminal (a counter) in one of the merchant's stores; its POS agent enrols with a code from POST
    /v1/terminals/{id}/enrolment_codes."""
    b = call.body
    return await tenants.create_terminal(call.svc, call.match("id"), b.store, b.label, call.identity())


@api.route("POST", "/v1/merchants/{id}/api_keys", summary="Create an API key; the secret is shown only here",
           auth={P.OPERATOR}, roles=ADMIN, body=schema.CreateApiKey, response=views.ApiKeyView, status=201,
           tag="operators", errors={400: ("invalid_key_kind",)})
async def create_key(call: Call[schema.CreateApiKey, None]) -> Any:
    """Create a secret or publishable API key for the merchant. The key itself is in this answer only; the
    gateway keeps a keyed hash."""
    return await tenants.create_api_key(call.svc, call.match("id"), call.body.kind, call.identity())


@api.route("GET", "/v1/merchants/{id}/api_keys", summary="List a merchant's API keys (prefixes only)",
           auth={P.OPERATOR, P.MERCHANT}, query=schema.PageQuery, response=views.ApiKeyList, tag="operators")
async def list_keys(call: Call[None, schema.PageQuery]) -> Any:
    """The merchant's API keys with their visible prefixes and revocation times; never the keys."""
    return await tenants.list_api_keys(call.svc, call.who, call.match("id"), call.query.page())


@api.route("POST", "/v1/api_keys/{id}/revoke", summary="Revoke an API key", auth={P.OPERATOR, P.MERCHANT},
           roles=ADMIN, body=schema.Empty, response=views.ApiKeyView, tag="operators")
async def revoke_key(call: Call[schema.Empty, None]) -> Any:
    """Revoke an API key at once; requests with it are refused from now on."""
    return await tenants.revoke_api_key(call.svc, call.who, call.match("id"), call.identity())


@api.route("POST", "/v1/operator/wallet_holders/{id}/unlock", summary="Unlock payments after too many wrong PINs",
           auth={P.OPERATOR}, roles={"admin", "support"}, body=schema.Empty, response=views.WalletHolderView,
           tag="operators", idempotent=False)
async def unlock_wallet(call: Call[schema.Empty, None]) -> Any:
    """Lift the payment lock a wallet gets after too many wrong PINs and reset its PIN failure count."""
    return await wallets.unlock(call.svc, call.who, call.match("id"))


class ClearLockout(schema.Strict):
    kind: throttle.Kind
    subject: schema.Text  # phone number, operator email, enrolment code or device id


@api.route("POST", "/v1/operator/lockouts/clear", summary="Lift a sign-in lockout and forget the account's failures",
           auth={P.OPERATOR}, roles={"admin", "support"}, body=ClearLockout, response=throttle.LockoutClearedView,
           tag="operators", idempotent=False)
async def clear_lockout(call: Call[ClearLockout, None]) -> Any:
    """Lift a sign-in lockout (wallet phone, operator email, enrolment code or device) and forget that account's
    failed attempts."""
    return await throttle.clear(call.svc, call.who, call.body.kind, call.body.subject)


@api.route("POST", "/v1/operator/wallet_holders/{id}/tier", summary="Set a wallet holder's verification tier",
           auth={P.OPERATOR}, roles={"admin", "support"}, body=schema.SetTier, response=views.WalletHolderView,
           tag="operators", errors={400: ("invalid_tier",)}, idempotent=False)
async def set_tier(call: Call[schema.SetTier, None]) -> Any:
    """Set a wallet holder's verification tier, which sets its balance, per-payment and daily caps."""
    return await wallets.set_tier(call.svc, call.who, call.match("id"), call.body.tier)


@api.route("GET", "/v1/balance", summary="The merchant's receivable balance per currency", auth={P.MERCHANT},
           response=views.MerchantBalanceView, tag="payments")
async def balance(call: Call[None, None]) -> Any:
    """The merchant's receivable balance per currency: captured payments less fees and refunds, not yet settled."""
    return await tenants.merchant_balance(call.svc, call.who)


@api.route("GET", "/v1/operator/ledger/invariants", summary="Run the ledger invariant checker",
           auth={P.OPERATOR}, response=views.InvariantReport, tag="operators",
           errors={503: ("ledger_too_large_for_a_request",)})
async def check_invariants(call: Call[None, None]) -> Any:
    """Run the ledger invariant checker now: balanced entries, balances equal to their postings, no overdraft.
    ok is true when nothing is violated. Bound by the serving statement timeout (503
    ledger_too_large_for_a_request past it): for a large ledger, ask for a background check (POST
    /v1/operator/ledger/invariant_checks)."""
    return await operations.invariant_report(call.svc)


class CheckQuery(schema.PageQuery):
    limit: schema.Limit = 20


@api.route("POST", "/v1/operator/ledger/invariant_checks", summary="Ask for a ledger invariant check in the background",
           auth={P.OPERATOR}, body=schema.Empty, response=invariant_checks.InvariantCheckView, status=202,
           tag="operators")
async def request_invariant_check(call: Call[schema.Empty, None]) -> Any:
    """Queue a check of every ledger invariant, run by a worker in one read-only snapshot within
    ledger.check_timeout_s; read its outcome with GET .../invariant_checks/{id} (status queued, running, then
    passed, failed with the violated invariants and their first rows, or error saying why it could not
    finish). While a check is queued or running, asking again answers that one."""
    return await invariant_checks.request(call.svc, call.who, call.identity())


@api.route("GET", "/v1/operator/ledger/invariant_checks", summary="List ledger invariant checks, newest first",
           auth={P.OPERATOR}, query=CheckQuery, response=invariant_checks.InvariantCheckList, tag="operators")
async def list_invariant_checks(call: Call[None, CheckQuery]) -> Any:
    """Every background check, newest first, cursor paginated."""
    return await invariant_checks.list_checks(call.svc, call.query.page())


@api.route("GET", "/v1/operator/ledger/invariant_checks/{id}", summary="Retrieve a ledger invariant check",
           auth={P.OPERATOR}, response=invariant_checks.InvariantCheckView, tag="operators")
async def get_invariant_check(call: Call[None, None]) -> Any:
    """One check: its status, progress (invariants_done of invariants_total) and outcome."""
    return await invariant_checks.get(call.svc, call.match("id"))
