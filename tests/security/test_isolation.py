"""Tenants are isolated and credentials are what they claim; secrets never rest or log in clear.

A merchant, publishable key or wallet holder sees only its own objects: anything else is 404,
exactly like an object that does not exist (principals.py). Operator endpoints do not exist for
other credentials; operator roles limit what an operator may change (403). Revoked keys and
expired, forged or misdirected tokens are 401.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import jwt
import pytest
import redis.asyncio as aioredis

from gateway.logs import SERVICE, JsonFormatter
from gateway.services import tenants
from gateway.services.context import Services
from gateway.services.views import PayerPaymentView
from gateway.settings import Settings
from tests.conftest import TEST_REDIS_URL, make_settings
from tests.integration.world import OPERATOR_PASSWORD, auth
from tests.security.scene import (
    ANY,
    Case,
    Scene,
    assert_error,
    case,
    database_text,
    refused_and_nothing_changed,
    send,
)

INVALID = "invalid_request_error"
ACCOUNT_NUMBER = "6222020200112233445"  # what World links for every holder
HOLDER_PASSWORD = "s3cret-pass"
PAYER_VIEW_FIELDS = set(PayerPaymentView.__struct_fields__)
NEW_MERCHANT = {"name": "Forged Ltd", "mcc": "5812", "country": "CN", "city": "Beijing"}


def missing(name: str, who: str, method: str, path: str, body: Any = None, param: Any = ANY) -> Any:
    return case(name, who, method, path, body, status=404, code="resource_missing", param=param)


def not_accepted(name: str, who: str, method: str, path: str, body: Any = None) -> Any:
    """A kind of credential the route never takes: 401, whatever object it names."""
    return case(name, who, method, path, body, status=401, code="credential_not_accepted",
                type_="authentication_error")


# Merchant A reaching for merchant B's objects.
CROSS_MERCHANT = [
    missing("read-payment", "a", "GET", "/v1/payments/{b_paid}", param="id"),
    missing("capture-payment", "a", "POST", "/v1/payments/{b_held}/capture", {}, param="id"),
    missing("capture-part", "a", "POST", "/v1/payments/{b_held}/capture", {"amount_to_capture": 1}, param="id"),
    missing("cancel-held", "a", "POST", "/v1/payments/{b_held}/cancel", {}, param="id"),
    missing("cancel-open", "a", "POST", "/v1/payments/{b_open}/cancel", {}, param="id"),
    missing("refund-payment", "a", "POST", "/v1/payments/{b_paid}/refunds", {"amount": 1}, param="id"),
    missing("list-refunds", "a", "GET", "/v1/payments/{b_paid}/refunds", param="id"),
    missing("list-refunds-of-b", "a", "GET", "/v1/refunds?payment={b_paid}", param="payment"),
    missing("update-metadata", "a", "POST", "/v1/payments/{b_paid}", {"metadata": {"k": "v"}}, param="id"),
    missing("read-merchant", "a", "GET", "/v1/merchants/{b_merchant}", param="id"),
    missing("list-api-keys", "a", "GET", "/v1/merchants/{b_merchant}/api_keys"),
    missing("revoke-secret-key", "a", "POST", "/v1/api_keys/{b_sk_key}/revoke", {}, param="id"),
    missing("revoke-publishable-key", "a", "POST", "/v1/api_keys/{b_pk_key}/revoke", {}, param="id"),
    case("cursor-into-b", "a", "GET", "/v1/payments?starting_after={b_paid}", code="invalid_cursor",
         param="starting_after"),
]

# A publishable key only reads the payer's view of its own merchant's payments.
PUBLISHABLE = [
    not_accepted("create-payment", "a_pk", "POST", "/v1/payments", {"amount": 100, "currency": "CNY"}),
    not_accepted("list-payments", "a_pk", "GET", "/v1/payments"),
    not_accepted("capture", "a_pk", "POST", "/v1/payments/{a_held}/capture", {}),
    not_accepted("cancel", "a_pk", "POST", "/v1/payments/{a_held}/cancel", {}),
    not_accepted("refund", "a_pk", "POST", "/v1/payments/{a_paid}/refunds", {}),
    not_accepted("list-refunds", "a_pk", "GET", "/v1/payments/{a_paid}/refunds"),
    not_accepted("list-all-refunds", "a_pk", "GET", "/v1/refunds"),
    not_accepted("update-metadata", "a_pk", "POST", "/v1/payments/{a_paid}", {"metadata": {"k": "v"}}),
    not_accepted("balance", "a_pk", "GET", "/v1/balance"),
    not_accepted("events", "a_pk", "GET", "/v1/events"),
    not_accepted("list-own-keys", "a_pk", "GET", "/v1/merchants/{a_merchant}/api_keys"),
    not_accepted("revoke-own-secret-key", "a_pk", "POST", "/v1/api_keys/{a_sk_key}/revoke", {}),
    missing("read-other-merchants-payment", "a_pk", "GET", "/v1/payments/{b_paid}", param="id"),
    not_accepted("pay", "a_pk", "POST", "/v1/wallet/payments/{b_open}/pay", {}),
]

# A wallet holder is not a merchant, and sees only its own bank accounts.
WALLET = [
    not_accepted("create-payment", "h", "POST", "/v1/payments", {"amount": 100, "currency": "CNY"}),
    not_accepted("list-payments", "h", "GET", "/v1/payments"),
    not_accepted("capture", "h", "POST", "/v1/payments/{a_held}/capture", {}),
    not_accepted("cancel", "h", "POST", "/v1/payments/{a_held}/cancel", {}),
    not_accepted("refund-own-payment", "h", "POST", "/v1/payments/{a_paid}/refunds", {}),
    not_accepted("list-refunds", "h", "GET", "/v1/payments/{a_paid}/refunds"),
    not_accepted("list-all-refunds", "h", "GET", "/v1/refunds"),
    not_accepted("balance", "h", "GET", "/v1/balance"),
    not_accepted("events", "h", "GET", "/v1/events"),
    not_accepted("merchant", "h", "GET", "/v1/merchants/{a_merchant}"),
    not_accepted("revoke-key", "h", "POST", "/v1/api_keys/{a_sk_key}/revoke", {}),
    missing("top-up-from-others-bank", "h", "POST", "/v1/wallet/top_ups",
            {"bank_account": "{g_bank}", "amount": 500, "currency": "CNY"}, param="bank_account"),
    missing("withdraw-to-others-bank", "h", "POST", "/v1/wallet/withdrawals",
            {"bank_account": "{g_bank}", "amount": 500, "currency": "CNY"}, param="bank_account"),
]

# Operator endpoints, as seen by every other kind of credential.
OPERATOR_ONLY = [
    ("GET", "/v1/merchants", None),
    ("POST", "/v1/merchants", NEW_MERCHANT),
    ("POST", "/v1/merchants/{a_merchant}/stores", {"name": "Back door", "city": "Beijing"}),
    ("POST", "/v1/merchants/{a_merchant}/terminals", {"store": "{a_store}", "label": "till 9"}),
    ("POST", "/v1/merchants/{a_merchant}/api_keys", {"kind": "secret"}),
    ("GET", "/v1/operator/ledger/invariants", None),
    ("GET", "/v1/operator/events", None),
    ("POST", "/v1/operator/bank_statements", {"format": "csv", "content_base64": ""}),
    ("GET", "/v1/operator/reconciliation/exceptions", None),
    ("POST", f"/v1/operator/reconciliation/exceptions/rex_{'0' * 32}/resolve", {"action": "write_off", "reason": "x"}),
]


@pytest.mark.parametrize("c", CROSS_MERCHANT)
async def test_merchant_cannot_reach_another_merchants_objects(scene: Scene, c: Case) -> None:
    await refused_and_nothing_changed(scene, c)
    # B's credentials and objects still work as before.
    await scene.world.call("GET", f"/v1/payments/{scene.b_paid['id']}", headers=scene.b.headers)
    await scene.world.call("GET", f"/v1/payments/{scene.b_open['id']}", headers=auth(scene.b.publishable))


@pytest.mark.parametrize("c", PUBLISHABLE)
async def test_publishable_key_cannot_act_for_its_merchant(scene: Scene, c: Case) -> None:
    await refused_and_nothing_changed(scene, c)


@pytest.mark.parametrize("c", WALLET)
async def test_wallet_holder_is_not_a_merchant_and_keeps_to_its_own_bank(scene: Scene, c: Case) -> None:
    await refused_and_nothing_changed(scene, c)


@pytest.mark.parametrize(("method", "path", "body"), OPERATOR_ONLY, ids=[f"{m} {p}" for m, p, _ in OPERATOR_ONLY])
async def test_operator_endpoints_refuse_other_credentials(scene: Scene, method: str, path: str, body: Any) -> None:
    for who in ("a", "a_pk", "h"):
        await refused_and_nothing_changed(scene, Case(who, method, path, body, status=401,
                                                      code="credential_not_accepted", type_="authentication_error"))


async def test_each_tenant_lists_only_its_own(scene: Scene) -> None:
    w = scene.world
    a_payments = await w.call("GET", "/v1/payments?limit=100", headers=scene.a.headers)
    assert {p["id"] for p in a_payments["data"]} == {scene.a_paid["id"], scene.a_held["id"]}
    assert {p["merchant"] for p in a_payments["data"]} == {scene.a.id}
    a_events = await w.call("GET", "/v1/events?limit=100", headers=scene.a.headers)
    b_objects = {scene.b_paid["id"], scene.b_held["id"], scene.b_open["id"], scene.b.id}
    assert a_events["data"] and not {e["data"]["object"]["id"] for e in a_events["data"]} & b_objects
    only_b = await w.call("GET", f"/v1/events?payment={scene.b_paid['id']}", headers=scene.a.headers)
    assert only_b["data"] == []
    b_event = (await w.call("GET", "/v1/events?limit=1", headers=scene.b.headers))["data"][0]["id"]
    resp, body = await send(w, "GET", f"/v1/events?starting_after={b_event}", scene.headers("a"))
    assert_error(resp, body, 400, INVALID, "invalid_cursor", "starting_after")
    a_keys = await w.call("GET", f"/v1/merchants/{scene.a.id}/api_keys", headers=scene.a.headers)
    assert {k["id"] for k in a_keys["data"]} == {scene.key_ids["a_sk"], scene.key_ids["a_pk"]}
    assert all(k["secret"] is None for k in a_keys["data"])
    h_banks = await w.call("GET", "/v1/wallet/bank_accounts", headers=scene.h.headers)
    assert [b["id"] for b in h_banks["data"]] == [scene.h.bank_account]
    h_history = await w.call("GET", "/v1/wallet/transactions?limit=100", headers=scene.h.headers)
    assert {t["payment"] for t in h_history["data"]} - {None} <= {scene.a_paid["id"], scene.a_held["id"]}


async def test_payer_views_show_no_merchant_internals(scene: Scene) -> None:
    w = scene.world
    for headers, payment in ((auth(scene.a.publishable), scene.a_paid), (scene.h.headers, scene.a_paid),
                             (scene.h.headers, scene.b_open)):
        view = await w.call("GET", f"/v1/payments/{payment['id']}", headers=headers)
        assert set(view) == PAYER_VIEW_FIELDS, view
        assert view["id"] == payment["id"]


async def test_same_idempotency_key_in_two_tenants_never_replays_across(scene: Scene) -> None:
    w, key = scene.world, f"order-{uuid.uuid4()}"
    body = {"amount": 700, "currency": "CNY"}
    for m in (scene.a, scene.b):
        resp, created = await send(w, "POST", "/v1/payments", {**m.headers, "Idempotency-Key": key}, body)
        assert resp.status == 201 and created["merchant"] == m.id, created
        assert "Idempotent-Replayed" not in resp.headers
    for holder in (scene.h, scene.g):
        resp, moved = await send(w, "POST", "/v1/wallet/top_ups", {**holder.headers, "Idempotency-Key": key},
                                 {"bank_account": holder.bank_account, "amount": 100, "currency": "CNY"})
        assert resp.status == 201 and moved["bank_account"] == holder.bank_account, moved
        assert "Idempotent-Replayed" not in resp.headers


async def test_revoked_api_keys_are_refused(scene: Scene) -> None:
    w = scene.world
    extra = await w.call("POST", f"/v1/merchants/{scene.a.id}/api_keys", 201, headers=w.ops, json={"kind": "secret"})
    await w.call("GET", "/v1/payments", headers=auth(extra["secret"]))
    await w.call("POST", f"/v1/api_keys/{extra['id']}/revoke", headers=scene.a.headers, json={})
    await w.call("POST", f"/v1/api_keys/{scene.key_ids['a_pk']}/revoke", headers=w.ops, json={})
    a_paid = f"/v1/payments/{scene.a_paid['id']}"
    for secret, path in ((extra["secret"], "/v1/payments"), (scene.a.publishable, a_paid)):
        c = Case("anon", "GET", path, status=401, code="invalid_api_key", type_="authentication_error",
                 headers=auth(secret))
        await refused_and_nothing_changed(scene, c)
    c = Case("anon", "POST", "/v1/payments", {"amount": 100, "currency": "CNY"}, status=401, code="invalid_api_key",
             type_="authentication_error", headers=auth(extra["secret"]))
    await refused_and_nothing_changed(scene, c)
    await w.call("GET", "/v1/payments", headers=scene.a.headers)  # the other keys still work


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def _signing_key(settings: Settings) -> tuple[str, str]:
    return settings.auth.jwt_active_kid, settings.auth.jwt_key_ring()[settings.auth.jwt_active_kid]


def _sign(settings: Settings, claims: dict[str, Any], **header: Any) -> str:
    kid, key = _signing_key(settings)
    return jwt.encode(claims, key, algorithm="HS256", headers={"kid": kid, **header})


def _tamper(token: str, **changes: Any) -> str:
    """Change the payload of a real token and keep its signature."""
    header, _, signature = token.split(".")
    payload = jwt.utils.base64url_encode(json.dumps({**_claims(token), **changes}).encode()).decode()
    return f"{header}.{payload}.{signature}"


def _forge(how: str, settings: Settings, operator_token: str, wallet_token: str) -> str:
    now_s = int(time.time())
    op = _claims(operator_token)
    kid, _ = _signing_key(settings)
    forged: dict[str, Any] = {
        "wrong-key": jwt.encode(op, "not-the-server-key-0123456789abcdef", algorithm="HS256", headers={"kid": kid}),
        "alg-none": jwt.encode(op, "", algorithm="none", headers={"kid": kid}),
        "expired": _sign(settings, {**op, "iat": now_s - 7200, "exp": now_s - 3600}),
        "wrong-audience": _sign(settings, {**op, "aud": "merchant"}),
        "audience-list": _sign(settings, {**op, "aud": ["operator", "wallet"]}),
        "wrong-issuer": _sign(settings, {**op, "iss": "someone-else"}),
        "no-exp": _sign(settings, {k: v for k, v in op.items() if k != "exp"}),
        "unknown-kid": jwt.encode(op, _signing_key(settings)[1], algorithm="HS256", headers={"kid": "retired-key"}),
        "tampered-role": _tamper(operator_token, role="admin", sub=str(uuid.uuid4())),
        "wallet-token-as-operator": _tamper(wallet_token, aud="operator", role="admin"),
        "truncated": operator_token.rsplit(".", 1)[0] + ".",
        "garbage": "eyJhbGciOiJIUzI1NiJ9.not-json.sig",
    }
    return str(forged[how])


FORGERIES = ["wrong-key", "alg-none", "expired", "wrong-audience", "audience-list", "wrong-issuer", "no-exp",
             "unknown-kid", "tampered-role", "wallet-token-as-operator", "truncated", "garbage"]


@pytest.mark.parametrize("how", FORGERIES)
async def test_forged_or_misdirected_operator_tokens_are_401(scene: Scene, settings: Settings, how: str) -> None:
    token = _forge(how, settings, scene.world.operator_token, scene.h.token)
    code = "token_expired" if how == "expired" else "invalid_token"
    c = Case("anon", "POST", "/v1/merchants", NEW_MERCHANT, status=401, code=code, type_="authentication_error",
             headers=auth(token))
    await refused_and_nothing_changed(scene, c)


@pytest.mark.parametrize("how", ["wrong-key", "alg-none", "expired", "other-holder"])
async def test_forged_wallet_tokens_are_401(scene: Scene, settings: Settings, how: str) -> None:
    now_s = int(time.time())
    mine = _claims(scene.h.token)
    kid, _ = _signing_key(settings)
    token = {
        "wrong-key": lambda: jwt.encode(mine, "not-the-server-key-0123456789abcdef", algorithm="HS256",
                                        headers={"kid": kid}),
        "alg-none": lambda: jwt.encode({**mine, "sub": _claims(scene.g.token)["sub"]}, "", algorithm="none",
                                       headers={"kid": kid}),
        "expired": lambda: _sign(settings, {**mine, "iat": now_s - 7200, "exp": now_s - 3600}),
        "other-holder": lambda: _tamper(scene.h.token, sub=_claims(scene.g.token)["sub"]),
    }[how]()
    code = "token_expired" if how == "expired" else "invalid_token"
    body = {"bank_account": scene.g.bank_account, "amount": 500, "currency": "CNY"}
    c = Case("anon", "POST", "/v1/wallet/withdrawals", body, status=401, code=code, type_="authentication_error",
             headers=auth(token))
    await refused_and_nothing_changed(scene, c)


async def _operator_with_role(scene: Scene, role: str) -> dict[str, str]:
    email, password = f"{role}-{uuid.uuid4().hex[:8]}@example.com", "correct horse staple"
    svc = await Services.start(make_settings())
    try:
        await tenants.create_operator(svc, email, password, role)
    finally:
        await svc.stop()
    token = await scene.world.call("POST", "/v1/operator/sessions", 201, json={"email": email, "password": password})
    return auth(token["token"])


def _forbidden(method: str, path: str, body: Any, headers: dict[str, str]) -> Case:
    return Case("anon", method, path, body, status=403, code="role_forbidden", type_="permission_error",
                headers=headers)


async def test_support_operator_cannot_create_merchants_stores_terminals_or_keys(scene: Scene) -> None:
    support = await _operator_with_role(scene, "support")
    await scene.world.call("GET", "/v1/merchants", headers=support)  # reading is allowed
    for method, path, body in OPERATOR_ONLY:
        if method == "POST":
            await refused_and_nothing_changed(scene, _forbidden(method, path, body, support))


async def test_support_operator_cannot_revoke_merchant_keys(scene: Scene) -> None:
    """Issuing keys is for admins only; cutting a merchant off by revoking its key must be as well."""
    support = await _operator_with_role(scene, "support")
    await refused_and_nothing_changed(scene, _forbidden("POST", "/v1/api_keys/{a_sk_key}/revoke", {}, support))
    await scene.world.call("GET", "/v1/payments", headers=scene.a.headers)


async def _full_flow(scene: Scene) -> dict[str, str]:
    """Every kind of secret the gateway handles, used in successes and failures; returns them by name."""
    w = scene.world
    extra = await w.call("POST", f"/v1/merchants/{scene.a.id}/api_keys", 201,
                         headers={**w.ops, "Idempotency-Key": f"key-{uuid.uuid4()}"}, json={"kind": "secret"})
    p = await w.call("POST", "/v1/payments", 201, headers={**auth(extra["secret"]), "Idempotency-Key": "p-1"},
                     json={"amount": 1_200, "currency": "CNY", "description": "noodles"})
    await w.pay(scene.h, p["id"], key="pay-1")
    await w.call("POST", f"/v1/payments/{p['id']}/refunds", 201, headers=scene.a.headers, json={"amount": 200})
    await w.call("POST", "/v1/wallet/withdrawals", 201, headers={**scene.h.headers, "Idempotency-Key": "w-1"},
                 json={"bank_account": scene.h.bank_account, "amount": 100, "currency": "CNY"})
    await w.call("GET", f"/v1/payments/{p['id']}", headers=auth(scene.a.publishable))
    await w.call("POST", f"/v1/api_keys/{extra['id']}/revoke", headers=scene.a.headers, json={})
    await w.call("GET", "/v1/payments", 401, headers=auth(extra["secret"]))
    await w.call("POST", "/v1/operator/sessions", 401, json={"email": "ops@example.com", "password": "wrong " * 3})
    await w.call("POST", "/v1/wallet/sessions", 401, json={"phone": scene.h.phone, "password": "nope-nope-nope"})
    await w.call("GET", "/v1/merchants", 401, headers=auth(scene.world.operator_token[:-4] + "AAAA"))
    await w.call("GET", "/v1/payments/garbage", 404, headers=scene.b.headers)
    # A refused body with the credential in the request: the refusal is logged without it.
    await send(w, "POST", "/v1/payments", scene.headers("b"), {"amount": 1, "currency": "CNY", "description": "\x00"})
    return {
        "extra secret key": extra["secret"], "A secret key": scene.a.secret, "A publishable key": scene.a.publishable,
        "B secret key": scene.b.secret, "operator JWT": scene.world.operator_token, "H wallet JWT": scene.h.token,
        "G wallet JWT": scene.g.token, "full account number": ACCOUNT_NUMBER, "operator password": OPERATOR_PASSWORD,
        "holder password": HOLDER_PASSWORD,
    }


def _exposed(secrets: dict[str, str], text: str) -> list[str]:
    return [name for name, secret in secrets.items() if secret in text or secret.encode().hex() in text]


async def test_secrets_are_stored_hashed_or_masked(scene: Scene) -> None:
    secrets = await _full_flow(scene)
    rows = await database_text()
    api_keys = "\n".join(rows["api_keys"])
    assert len(rows["api_keys"]) == 5
    assert not _exposed({k: v for k, v in secrets.items() if k.endswith("key")}, api_keys), api_keys
    banks = "\n".join(rows["bank_accounts"])
    assert ACCOUNT_NUMBER not in banks and ACCOUNT_NUMBER[-4:] in banks, banks
    leaks = {table: _exposed(secrets, "\n".join(text)) for table, text in rows.items()}
    assert not any(leaks.values()), {t: names for t, names in leaks.items() if names}
    cache = aioredis.Redis.from_url(TEST_REDIS_URL)
    try:
        cached = [await cache.dump(k) or b"" async for k in cache.scan_iter(count=1000)]
        names = [k async for k in cache.scan_iter(count=1000)]
    finally:
        await cache.aclose()
    in_redis = _exposed(secrets, "\n".join(x.decode("latin-1") + x.hex() for x in cached + names))
    assert not in_redis, in_redis


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_no_secret_reaches_a_log_line(scene: Scene) -> None:
    """Every record at INFO and above, as the JSON formatter writes it (extras and tracebacks included)."""
    root, captured = logging.getLogger(), _Captured()
    level = root.level
    root.addHandler(captured)
    root.setLevel(logging.INFO)
    try:
        secrets = await _full_flow(scene)
    finally:
        root.removeHandler(captured)
        root.setLevel(level)
    formatter = JsonFormatter(SERVICE)
    lines = [formatter.format(r) for r in captured.records] + [repr(r.__dict__) for r in captured.records]
    assert any('"msg": "request"' in line for line in lines), "the request log was not captured"
    leaks = [(name, line[:200]) for line in lines for name in _exposed(secrets, line)]
    assert not leaks, leaks
