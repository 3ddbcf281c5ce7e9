"""The money core end to end over HTTP: top-up, auto and manual capture, refunds, declines."""

from __future__ import annotations

from tests.integration.world import World


async def test_auto_capture_moves_money_with_fee(world: World) -> None:
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 2_500, description="2 bowls of noodles")
    assert p["status"] == "requires_payment_method"
    paid = await world.pay(h, p["id"])
    assert paid["status"] == "succeeded"
    assert await world.available(h) == 7_500
    assert await world.merchant_total(m) == 2_500 - 25
    full = await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers)
    assert (full["amount_received"], full["fee"], full["status"]) == (2_500, 25, "succeeded")


async def test_manual_capture_partial_releases_rest(world: World) -> None:
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 4_000, capture_method="manual")
    await world.pay(h, p["id"])
    wallet = await world.call("GET", "/v1/wallet", headers=h.headers)
    assert wallet["balances"][0] == {"currency": "CNY", "available": 6_000, "held": 4_000, "total": 10_000}
    captured = await world.call("POST", f"/v1/payments/{p['id']}/capture", headers=m.headers,
                                json={"amount_to_capture": 3_000})
    assert captured["status"] == "succeeded" and captured["amount_received"] == 3_000
    assert await world.available(h) == 7_000
    again = await world.call("POST", f"/v1/payments/{p['id']}/capture", 409, headers=m.headers, json={})
    assert again["error"]["code"] == "payment_not_capturable"


async def test_refunds_partial_then_rest_never_more(world: World) -> None:
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 1_000)
    await world.pay(h, p["id"])
    r1 = await world.call("POST", f"/v1/payments/{p['id']}/refunds", 201, headers=m.headers, json={"amount": 300})
    assert r1["amount"] == 300 and r1["fee_returned"] == 3
    too_much = await world.call("POST", f"/v1/payments/{p['id']}/refunds", 400, headers=m.headers, json={"amount": 701})
    assert too_much["error"]["code"] == "amount_too_large"
    await world.call("POST", f"/v1/payments/{p['id']}/refunds", 201, headers=m.headers, json={})
    assert await world.available(h) == 10_000
    assert await world.merchant_total(m) == 0
    done = await world.call("POST", f"/v1/payments/{p['id']}/refunds", 409, headers=m.headers, json={"amount": 1})
    assert done["error"]["code"] == "payment_fully_refunded"


async def test_insufficient_funds_declines_and_changes_nothing(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=500)
    p = await world.payment(m, 501)
    declined = await world.pay(h, p["id"], expect=402)
    assert declined["error"]["code"] == "insufficient_funds"
    assert await world.available(h) == 500
    still = await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers)
    assert still["status"] == "requires_payment_method"


async def test_cancel_releases_hold(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=1_000)
    p = await world.payment(m, 800, capture_method="manual")
    await world.pay(h, p["id"])
    assert await world.available(h) == 200
    canceled = await world.call("POST", f"/v1/payments/{p['id']}/cancel", headers=m.headers, json={})
    assert canceled["status"] == "canceled"
    assert await world.available(h) == 1_000
    events = await world.call("GET", f"/v1/events?payment={p['id']}", headers=m.headers)
    assert [e["type"] for e in events["data"]] == ["payment.canceled", "payment.authorized", "payment.created"]
