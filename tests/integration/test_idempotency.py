"""Idempotency-Key semantics and money moving once, whatever the retries and races."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient


from tests.integration.world import Holder, World


async def test_replay_is_byte_for_byte_and_marked(world: World) -> None:
    m = await world.merchant()
    headers = {**m.headers, "Idempotency-Key": "order-1001"}
    body = {"amount": 1234, "currency": "CNY", "merchant_reference": "1001"}
    first = await world.client.post("/v1/payments", json=body, headers=headers)
    second = await world.client.post("/v1/payments", json=body, headers=headers)
    assert first.status == second.status == 201
    assert await first.read() == await second.read()
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    listed = await world.call("GET", "/v1/payments", headers=m.headers)
    assert len(listed["data"]) == 1


async def test_same_key_different_parameters_is_an_error(world: World) -> None:
    m = await world.merchant()
    headers = {**m.headers, "Idempotency-Key": "k-1"}
    await world.call("POST", "/v1/payments", 201, headers=headers, json={"amount": 100, "currency": "CNY"})
    err = await world.call("POST", "/v1/payments", 422, headers=headers, json={"amount": 101, "currency": "CNY"})
    assert err["error"]["type"] == "idempotency_error"
    assert err["error"]["code"] == "idempotency_key_reused"


async def test_keys_are_scoped_per_merchant(world: World) -> None:
    a, b = await world.merchant("A"), await world.merchant("B")
    body = {"amount": 100, "currency": "CNY"}
    pa = await world.call("POST", "/v1/payments", 201, headers={**a.headers, "Idempotency-Key": "same"}, json=body)
    pb = await world.call("POST", "/v1/payments", 201, headers={**b.headers, "Idempotency-Key": "same"}, json=body)
    assert pa["id"] != pb["id"]


async def test_declines_are_replayed_too(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=100)
    p = await world.payment(m, 500)
    first = await world.pay(h, p["id"], expect=402, key="pay-1")
    await world.top_up(h, 1_000)
    again = await world.pay(h, p["id"], expect=402, key="pay-1")
    assert first == again  # the stored answer, not a new attempt
    assert (await world.pay(h, p["id"], key="pay-2"))["status"] == "succeeded"


async def test_fifty_parallel_identical_requests_move_money_once(world: World) -> None:
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 700)
    headers = {**h.headers, "Idempotency-Key": f"pay-{uuid.uuid4()}"}

    async def attempt() -> tuple[int, bytes]:
        resp = await world.client.post(f"/v1/wallet/payments/{p['id']}/pay", json={}, headers=headers)
        return resp.status, await resp.read()

    results = await asyncio.gather(*(attempt() for _ in range(50)))
    statuses = sorted({status for status, _ in results})
    assert set(statuses) <= {200, 409}, statuses
    successes = {body for status, body in results if status == 200}
    assert len(successes) == 1  # every 200 is the same stored answer
    # Retrying until no 409 is left gives the stored answer; money moved exactly once.
    final = await world.client.post(f"/v1/wallet/payments/{p['id']}/pay", json={}, headers=headers)
    assert final.status == 200 and await final.read() in successes
    assert await world.available(h) == 9_300
    assert await world.merchant_total(m) == 700


async def test_concurrent_payments_never_overdraw_a_wallet(world: World) -> None:
    merchants = [await world.merchant(f"M{i}") for i in range(3)]
    h = await world.holder(top_up=1_000)
    payments = [await world.payment(merchants[i % 3], 300) for i in range(12)]
    results = await asyncio.gather(*(_try_pay(world, h, p["id"]) for p in payments))
    assert sorted(results) == [200] * 3 + [402] * 9, results
    assert await world.available(h) == 100


async def _try_pay(world: World, h: Holder, payment_id: str) -> int:
    resp = await world.client.post(f"/v1/wallet/payments/{payment_id}/pay", json={}, headers=h.headers)
    return resp.status


async def test_two_wallets_racing_for_one_payment_exactly_one_pays(world: World) -> None:
    m = await world.merchant()
    h1, h2 = await world.holder(top_up=1_000), await world.holder(top_up=1_000)
    p = await world.payment(m, 600)
    statuses = sorted(await asyncio.gather(_try_pay(world, h1, p["id"]), _try_pay(world, h2, p["id"])))
    assert statuses == [200, 409]
    assert await world.available(h1) + await world.available(h2) == 1_400


async def test_retry_after_connection_dropped_mid_request_moves_money_once(
    world: World, client: TestClient, clean_db: str
) -> None:
    """The client gives up while the server is inside the payment transaction; the retry is safe."""
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=5_000)
    p = await world.payment(m, 1_200)
    key = f"drop-{uuid.uuid4()}"
    # Hold the payment row so the server's transaction is mid-flight when the client disconnects.
    blocker = await asyncpg.connect(clean_db)
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute("SELECT 1 FROM payments WHERE id = (SELECT id FROM payments LIMIT 1) FOR UPDATE")
    url = client.make_url(f"/v1/wallet/payments/{p['id']}/pay")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.post(url, json={}, headers={**h.headers, "Idempotency-Key": key},
                               timeout=aiohttp.ClientTimeout(total=0.3))
    await tx.rollback()
    await blocker.close()
    # Retry with the same key until the first attempt's outcome is known (409 while it runs).
    for _ in range(100):
        resp = await client.post(f"/v1/wallet/payments/{p['id']}/pay", json={}, headers={**h.headers, "Idempotency-Key": key})
        if resp.status != 409:
            break
        await asyncio.sleep(0.05)
    assert resp.status == 200
    assert await world.available(h) == 3_800
    assert await world.merchant_total(m) == 1_200
