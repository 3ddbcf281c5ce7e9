"""Issue 8's security findings, each a test that failed before its fix: forged claims that are not
UUIDs, payer views of other holders' payments, altered QR codes in preview, credential kinds a route
never takes, duplicate JSON keys and non-JSON bodies."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from typing import Any

import jwt
import pytest

from gateway.domain import emv_qr
from gateway.settings import Settings
from tests.integration.test_qr_paycode import _qr
from tests.integration.world import World, auth
from tests.security.scene import Scene


def _forge(settings: Settings, audience: str, **claims: Any) -> str:
    """A token signed with the gateway's own key: only its claims are wrong."""
    now_s = int(time.time())
    payload = {"iss": settings.auth.jwt_issuer, "aud": audience, "iat": now_s, "exp": now_s + 300, **claims}
    kid = settings.auth.jwt_active_kid
    return jwt.encode(payload, settings.auth.jwt_key_ring()[kid], algorithm="HS256", headers={"kid": kid})


@pytest.mark.parametrize(("audience", "claims", "path"), [
    ("operator", {"sub": "not-a-uuid", "role": "admin"}, "/v1/merchants"),
    ("wallet", {"sub": "1; DROP TABLE payments"}, "/v1/wallet"),
    ("wallet", {"sub": 12345}, "/v1/wallet"),
    ("device", {"sub": "x", "mid": str(uuid.uuid4()), "sid": str(uuid.uuid4()), "tid": str(uuid.uuid4())},
     "/v1/payments"),
    ("device", {"sub": str(uuid.uuid4()), "mid": "m", "sid": str(uuid.uuid4()), "tid": str(uuid.uuid4())},
     "/v1/payments"),
])
async def test_a_signed_token_whose_ids_are_not_uuids_is_a_401(
    world: World, settings: Settings, audience: str, claims: dict[str, Any], path: str
) -> None:
    resp = await world.client.get(path, headers=auth(_forge(settings, audience, **claims)))
    assert resp.status == 401, await resp.text()
    assert (await resp.json())["error"]["code"] in ("invalid_token", "device_revoked")


async def test_once_paid_only_its_payer_sees_the_payers_view(world: World) -> None:
    m = await world.merchant()
    payer, other = await world.holder(top_up=5_000), await world.holder(top_up=5_000)
    p = await world.payment(m, 1_000)
    unpaid = await world.client.get(f"/v1/payments/{p['id']}", headers=other.headers)
    assert unpaid.status == 200  # an unpaid payment is shown to whoever was given its id, to pay it
    await world.pay(payer, p["id"])
    assert (await world.client.get(f"/v1/payments/{p['id']}", headers=payer.headers)).status == 200
    seen = await world.client.get(f"/v1/payments/{p['id']}", headers=other.headers)
    assert seen.status == 404, await seen.text()
    assert (await world.client.get(f"/v1/payments/{p['id']}", headers=m.headers)).status == 200


async def test_preview_refuses_an_altered_code_as_pay_does(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=5_000)
    _, code = await _qr(world, m, 1_000)
    payload = emv_qr.parse(code["payload"])
    altered = [
        emv_qr.encode(dataclasses.replace(payload, merchant_name="Someone Else")),
        emv_qr.encode(dataclasses.replace(payload, merchant_city="Elsewhere")),
    ]
    for text in altered:
        preview = await world.client.post("/v1/wallet/qr/preview", headers=h.headers, json={"payload": text})
        pay = await world.client.post("/v1/wallet/qr/pay", headers=h.headers, json={"payload": text})
        assert preview.status == pay.status == 400, (preview.status, pay.status)
        assert (await preview.json())["error"]["code"] == (await pay.json())["error"]["code"] == "qr_code_altered"
    assert await world.available(h) == 5_000


@pytest.mark.parametrize(("who", "method", "path"), [
    ("wallet", "GET", "/v1/merchants"),  # an operator route
    ("wallet", "POST", "/v1/merchants"),
    ("merchant", "GET", "/v1/operator/ledger/invariants"),
    ("publishable", "POST", "/v1/payments"),  # a secret-key route
    ("operator", "GET", "/v1/wallet"),  # a wallet route
    ("merchant", "GET", "/v1/wallet/transactions"),
])
async def test_a_credential_kind_the_route_never_takes_is_a_401(scene: Scene, who: str, method: str,
                                                                path: str) -> None:
    headers = {"wallet": scene.h.headers, "merchant": scene.a.headers, "publishable": auth(scene.a.publishable),
               "operator": scene.world.ops}[who]
    body = {"amount": 100, "currency": "CNY"} if method == "POST" else None
    resp = await scene.world.client.request(method, path, headers=headers, json=body)
    assert resp.status == 401, await resp.text()
    assert (await resp.json())["error"]["code"] == "credential_not_accepted"


async def test_an_operator_without_the_role_is_a_403(world: World) -> None:
    from gateway.services import tenants
    from gateway.services.context import Services
    from tests.conftest import make_settings

    svc = await Services.start(make_settings())
    try:
        await tenants.create_operator(svc, "support@example.com", "support-password-1", "support")
    finally:
        await svc.stop()
    token = (await world.call("POST", "/v1/operator/sessions", 201,
                              json={"email": "support@example.com", "password": "support-password-1"}))["token"]
    resp = await world.client.post("/v1/merchants", headers=auth(token),
                                   json={"name": "X", "mcc": "5812", "country": "CN", "city": "Beijing"})
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "role_forbidden"


async def test_duplicate_json_keys_are_refused_and_change_nothing(world: World) -> None:
    m = await world.merchant()
    for raw in ('{"amount": 1, "amount": 1000, "currency": "CNY"}',
                '{"amount": 1, "currency": "CNY", "metadata": {"a": 1, "a": 2}}'):
        resp = await world.client.post("/v1/payments", data=raw.encode(),
                                       headers={**m.headers, "Content-Type": "application/json"})
        body = await resp.json()
        assert resp.status == 400, body
        assert body["error"]["code"] == "duplicate_key" and body["error"]["param"] in ("amount", "a")
    assert (await world.call("GET", "/v1/payments", headers=m.headers))["data"] == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_body_that_is_not_declared_json_is_a_415(world: World, content_type: str | None) -> None:
    m = await world.merchant()
    headers = dict(m.headers)
    if content_type:
        headers["Content-Type"] = content_type
    resp = await world.client.post("/v1/payments", data=json.dumps({"amount": 1, "currency": "CNY"}).encode(),
                                   headers=headers)
    body = await resp.json()
    assert resp.status == 415, body
    assert body["error"]["code"] == "unsupported_media_type" and body["error"]["param"] == "Content-Type"
    assert (await world.call("GET", "/v1/payments", headers=m.headers))["data"] == []


async def test_json_with_a_charset_is_accepted(world: World) -> None:
    m = await world.merchant()
    resp = await world.client.post("/v1/payments", data=b'{"amount": 1, "currency": "CNY"}',
                                   headers={**m.headers, "Content-Type": "application/json; charset=utf-8"})
    assert resp.status == 201, await resp.text()
