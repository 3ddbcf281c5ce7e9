"""Expiry workers, Redis outage, several processes, observability endpoints, wallet history."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from gateway.services.context import Services
from gateway.workers.expiry import tick
from tests.conftest import make_settings
from tests.integration.world import World


async def _age(db_url: str, sql: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_unpaid_payment_and_lapsed_authorisation_expire(world: World, clean_db: str) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=1_000)
    unpaid = await world.payment(m, 100)
    held = await world.payment(m, 600, capture_method="manual")
    await world.pay(h, held["id"])
    assert await world.available(h) == 400
    await _age(clean_db, "UPDATE payments SET expires_at = now() - interval '1 second' WHERE status = 'requires_payment_method'")
    await _age(clean_db, "UPDATE payments SET authorization_expires_at = now() - interval '1 second' WHERE status = 'requires_capture'")
    svc = await Services.start(make_settings())
    try:
        # Two "processes" ticking at once expire each payment exactly once.
        results = await asyncio.gather(tick(svc), tick(svc))
    finally:
        await svc.stop()
    assert sum(expired for expired, _ in results) == 2
    for p in (unpaid, held):
        got = await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers)
        assert got["status"] == "expired"
    assert await world.available(h) == 1_000
    late = await world.pay(h, unpaid["id"], expect=409)
    assert late["error"]["code"] == "payment_not_payable"


async def test_paying_after_expiry_before_the_worker_runs_is_refused(world: World, clean_db: str) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=1_000)
    p = await world.payment(m, 100)
    await _age(clean_db, "UPDATE payments SET expires_at = now() - interval '1 second'")
    err = await world.pay(h, p["id"], expect=409)
    assert err["error"]["code"] == "payment_expired"


async def test_gateway_keeps_taking_payments_with_redis_down(clean_db: str, app_factory: Callable[..., Any]) -> None:
    settings = make_settings(redis={"url": "redis://127.0.0.1:1/0", "timeout_s": 0.1})
    async with TestClient(TestServer(app_factory(settings), host="127.0.0.1")) as client:
        world = await World.create(client)
        m = await world.merchant()
        h = await world.holder(top_up=1_000)
        p = await world.payment(m, 300)
        first = await world.pay(h, p["id"], key="k1")
        again = await client.post(f"/v1/wallet/payments/{p['id']}/pay", json={}, headers={**h.headers, "Idempotency-Key": "k1"})
        assert again.headers["Idempotent-Replayed"] == "true" and await again.json() == first
        assert await world.available(h) == 700
        ready = await client.get("/readyz")
        assert ready.status == 200
        assert await ready.json() == {"status": "degraded", "database": "ok", "redis": "down"}


async def test_two_gateway_processes_share_one_database_without_overdraft(
    world: World, app_factory: Callable[..., Any]
) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=1_000)
    payments = [await world.payment(m, 250) for _ in range(10)]
    async with TestClient(TestServer(app_factory(make_settings()), host="127.0.0.1")) as other:
        clients = [world.client, other]

        async def pay(i: int) -> int:
            resp = await clients[i % 2].post(f"/v1/wallet/payments/{payments[i]['id']}/pay", json={}, headers=h.headers)
            return resp.status

        statuses = await asyncio.gather(*(pay(i) for i in range(10)))
    assert sorted(statuses) == [200] * 4 + [402] * 6
    assert await world.available(h) == 0


async def test_health_ready_metrics_openapi(client: TestClient) -> None:
    assert (await (await client.get("/healthz")).json()) == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["status"] == "ok"
    metrics = await (await client.get("/metrics")).text()
    assert "gateway_http_requests_total" in metrics
    doc = await (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    post = doc["paths"]["/v1/payments"]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/CreatePayment")
    assert "PaymentView" in doc["components"]["schemas"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (path, method)


async def test_wallet_history_is_cursor_paginated_newest_first(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    for amount in (100, 200, 300):
        await world.pay(h, (await world.payment(m, amount))["id"])
    page1 = await world.call("GET", "/v1/wallet/transactions?limit=2", headers=h.headers)
    assert [t["amount"] for t in page1["data"]] == [-300, -200] and page1["has_more"]
    page2 = await world.call("GET", f"/v1/wallet/transactions?limit=2&starting_after={page1['next_cursor']}",
                             headers=h.headers)
    assert [t["amount"] for t in page2["data"]] == [-100, 10_000] and not page2["has_more"]
    assert page1["data"][0]["merchant_name"] == "Best Noodles"


async def test_withdrawal_cannot_overdraw(world: World) -> None:
    h = await world.holder(top_up=1_000)
    body = {"bank_account": h.bank_account, "amount": 1_001, "currency": "CNY"}
    err = await world.call("POST", "/v1/wallet/withdrawals", 402, headers=h.headers, json=body)
    assert err["error"]["code"] == "insufficient_funds"
    ok = await world.call("POST", "/v1/wallet/withdrawals", 201, headers=h.headers, json={**body, "amount": 1_000})
    assert ok["balance_after"]["available"] == 0


async def test_multi_currency_wallets_are_separate(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=1_000)
    await world.top_up(h, 500, "HKD")
    p = await world.payment(m, 600, currency="HKD")
    assert (await world.pay(h, p["id"], expect=402))["error"]["code"] == "insufficient_funds"
    wallet = await world.call("GET", "/v1/wallet", headers=h.headers)
    assert {b["currency"]: b["available"] for b in wallet["balances"]} == {"CNY": 1_000, "HKD": 500}


async def test_api_key_revocation(world: World) -> None:
    m = await world.merchant()
    keys = await world.call("GET", f"/v1/merchants/{m.id}/api_keys", headers=m.headers)
    secret_key = next(k for k in keys["data"] if k["kind"] == "secret")
    assert "secret" not in secret_key or secret_key["secret"] is None
    assert m.secret.startswith(secret_key["prefix"])
    await world.call("POST", f"/v1/api_keys/{secret_key['id']}/revoke", headers=world.ops, json={})
    err = await world.call("GET", "/v1/payments", 401, headers=m.headers)
    assert err["error"]["code"] == "invalid_api_key"


async def test_suspended_merchant_takes_no_payments(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=1_000)
    p = await world.payment(m, 100)
    await world.call("POST", f"/v1/merchants/{m.id}/suspend", headers=world.ops, json={})
    assert (await world.call("GET", "/v1/payments", 403, headers=m.headers))["error"]["code"] == "merchant_suspended"
    assert (await world.pay(h, p["id"], expect=402))["error"]["code"] == "merchant_unavailable"
    await world.call("POST", f"/v1/merchants/{m.id}/reactivate", headers=world.ops, json={})
    assert (await world.pay(h, p["id"]))["status"] == "succeeded"


async def test_reaper_removes_old_keys_abandoned_or_done(world: World, clean_db: str) -> None:
    m = await world.merchant()
    await world.call("POST", "/v1/payments", 201, headers={**m.headers, "Idempotency-Key": "old-done"},
                     json={"amount": 100, "currency": "CNY"})
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute(
            "INSERT INTO idempotency_keys (principal, key, request_hash, method, path, locked_at)"
            " VALUES ('merchant:x', 'old-abandoned', '\\x00', 'POST', '/v1/payments', now())")
        await conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '2 days'")
        svc = await Services.start(make_settings())
        try:
            await tick(svc)
        finally:
            await svc.stop()
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    finally:
        await conn.close()
