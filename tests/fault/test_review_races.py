"""Races the review checked; these pass on the current code (kept as evidence that the paths are sound)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from gateway.services.context import Services
from gateway.workers.expiry import tick
from tests.conftest import make_settings
from tests.integration.test_qr_paycode import _charge, _device_holder
from tests.integration.world import World


async def _sql(db_url: str, sql: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_reverse_and_refunds_racing_never_refund_more_than_captured(world: World) -> None:
    m = await world.merchant(fee_bps=137)
    h = await world.holder(top_up=100_000)
    for _ in range(5):
        p = await world.payment(m, 9_999)
        await world.pay(h, p["id"])
        calls = [world.client.post(f"/v1/payments/{p['id']}/reverse", headers=m.headers, json={})]
        calls += [world.client.post(f"/v1/payments/{p['id']}/refunds", headers=m.headers, json={"amount": 3_333})
                  for _ in range(4)]
        statuses = [r.status for r in await asyncio.gather(*calls)]
        assert all(s < 500 for s in statuses), statuses
        got = await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers)
        assert got["amount_refunded"] == 9_999
    assert await world.available(h) == 100_000


async def test_cancel_and_pay_racing(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    for manual in (False, True) * 3:
        p = await world.payment(m, 1_000, capture_method="manual" if manual else "automatic")
        r1, r2 = await asyncio.gather(
            world.client.post(f"/v1/payments/{p['id']}/cancel", headers=m.headers, json={}),
            world.client.post(f"/v1/wallet/payments/{p['id']}/pay", headers=h.headers, json={}),
        )
        assert r1.status < 500 and r2.status < 500, (r1.status, r2.status)
    wallet = await world.call("GET", "/v1/wallet", headers=h.headers)
    assert wallet["balances"][0]["held"] == 0


async def test_confirm_and_worker_racing(world: World, clean_db: str) -> None:
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 900_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": "246810"})
    svc = await Services.start(make_settings())
    try:
        for _ in range(3):
            code = (await world.call("POST", "/v1/wallet/pay_codes", 201, headers=h.headers, json={}))["code"]
            charged = await _charge(world, m, code, 150_000)
            await _sql(clean_db, "UPDATE payments SET confirm_by = now() + interval '300 milliseconds'"
                                 " WHERE status = 'requires_action'")
            await asyncio.sleep(0.25)

            confirm = world.client.post(f"/v1/wallet/payments/{charged['id']}/confirm",
                                        headers=h.headers, json={"pin": "246810"})
            results: Any = await asyncio.gather(confirm, tick(svc), tick(svc), return_exceptions=True)
            assert not any(isinstance(r, BaseException) for r in results), results
            assert results[0].status < 500
        await tick(svc)
    finally:
        await svc.stop()


async def test_capture_and_authorisation_expiry_racing(world: World, clean_db: str) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    svc = await Services.start(make_settings())
    try:
        for _ in range(4):
            p = await world.payment(m, 1_000, capture_method="manual")
            await world.pay(h, p["id"])
            await _sql(clean_db, "UPDATE payments SET authorization_expires_at = now() WHERE status = 'requires_capture'")
            results: Any = await asyncio.gather(
                world.client.post(f"/v1/payments/{p['id']}/capture", headers=m.headers, json={"amount_to_capture": 400}),
                tick(svc), return_exceptions=True)
            assert not isinstance(results[1], BaseException) and results[0].status < 500
    finally:
        await svc.stop()
