"""Risk rules over real HTTP: a blocked wallet and a velocity limit decline payments (by id, QR and pay-code)
with ``risk_declined``, moving no money; velocity holds under concurrency; the operator API is
idempotent, audited, validated and operator-only. The fixtures prove the ledger invariants after each test."""

from __future__ import annotations

import asyncio
from typing import Any


from tests.integration.test_qr_paycode import _charge, _device_holder
from tests.integration.world import Holder, Merchant, World, batched


async def _rule(world: World, expect: int = 201, key: str | None = None, **body: Any) -> Any:
    headers = {**world.ops, **({"Idempotency-Key": key} if key else {})}
    return await world.call("POST", "/v1/operator/risk_rules", expect, headers=headers, json=body)


async def _qr_pay(world: World, m: Merchant, h: Holder, amount: int, expect: int = 200) -> Any:
    p = await world.payment(m, amount)
    code = await world.call("POST", f"/v1/payments/{p['id']}/qr_codes", 201, headers=m.headers, json={})
    return await world.call("POST", "/v1/wallet/qr/pay", expect, headers=h.headers, json={"payload": code["payload"]})


async def test_blocked_wallet_declined_by_id_and_qr_then_disabled(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    other = await world.holder(top_up=10_000)
    rule = await _rule(world, kind="blocked_wallet", wallet=h.id)
    assert (rule["kind"], rule["status"], rule["wallet"]) == ("blocked_wallet", "active", h.id)
    p = await world.payment(m, 500)
    refused = await world.pay(h, p["id"], 402)
    assert refused["error"]["code"] == "risk_declined" and "rule" not in refused["error"]["message"]
    assert (await _qr_pay(world, m, h, 300, 402))["error"]["code"] == "risk_declined"
    assert await world.available(h) == 10_000 and await world.merchant_total(m) == 0
    assert (await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers))["status"] == (
        "requires_payment_method")
    assert (await world.pay(other, (await world.payment(m, 200))["id"]))["status"] == "succeeded"
    disabled = await world.call("POST", f"/v1/operator/risk_rules/{rule['id']}/disable", headers=world.ops, json={})
    assert disabled["status"] == "disabled"
    assert (await world.pay(h, p["id"]))["status"] == "succeeded"
    assert await world.available(h) == 9_500
    events = await world.call("GET", "/v1/operator/events?limit=100", headers=world.ops)
    types = [e["type"] for e in events["data"]]
    assert "risk_rule.created" in types and "risk_rule.disabled" in types


async def test_velocity_count_and_amount(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    await _rule(world, kind="velocity_wallet", window_s=3600, max_count=2)
    for _ in range(2):
        assert (await world.pay(h, (await world.payment(m, 100))["id"]))["status"] == "succeeded"
    assert (await _qr_pay(world, m, h, 100, 402))["error"]["code"] == "risk_declined"
    assert await world.available(h) == 9_800
    h2 = await world.holder(top_up=10_000)
    await _rule(world, kind="velocity_wallet", window_s=3600, max_amount=1_000, currency="CNY")
    assert (await world.pay(h2, (await world.payment(m, 900))["id"]))["status"] == "succeeded"
    assert (await world.pay(h2, (await world.payment(m, 101))["id"], 402))["error"]["code"] == "risk_declined"
    assert await world.available(h2) == 9_100


async def test_the_one_statement_path_keeps_velocity_limits_per_wallet(world: World) -> None:
    """A velocity limit per wallet is counted in the holder's Redis window, charged for the batch before
    its statement: payments within it are paid there (with their allow decisions); the one that would
    cross it is refused in Redis, and its general path declines it."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    await _rule(world, kind="velocity_wallet", window_s=3600, max_count=2)
    await _rule(world, kind="velocity_wallet", window_s=3600, max_amount=250, currency="CNY")
    await _rule(world, kind="velocity_wallet", window_s=3600, max_amount=1, currency="USD")  # another currency
    written, refused = batched()
    for _ in range(2):
        assert (await world.pay(h, (await world.payment(m, 100))["id"]))["status"] == "succeeded"
    assert batched() == (written + 2, refused)
    over_count = await world.pay(h, (await world.payment(m, 10))["id"], 402)
    assert over_count["error"]["code"] == "risk_declined"
    assert batched() == (written + 3, refused + 1)  # tried in a batch, refused there, declined by the general path
    h2 = await world.holder(top_up=10_000)
    assert (await world.pay(h2, (await world.payment(m, 200))["id"]))["status"] == "succeeded"
    over_amount = await world.pay(h2, (await world.payment(m, 51))["id"], 402)
    assert over_amount["error"]["code"] == "risk_declined"
    assert batched() == (written + 5, refused + 2)
    assert await world.available(h) == 9_800 and await world.available(h2) == 9_800
    for holder, allowed in ((h, 2), (h2, 1)):
        decisions = await world.call("GET", f"/v1/operator/risk_decisions?limit=100&wallet={holder.id}",
                                     headers=world.ops)
        outcomes = sorted(d["outcome"] for d in decisions["data"])
        assert outcomes == ["allow"] * allowed + ["decline"]


async def test_a_wallet_payment_stays_counted_until_its_window_passes(world: World) -> None:
    """Counted when authorised, as per device and merchant: cancelling it does not give its place back."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    await _rule(world, kind="velocity_wallet", window_s=3600, max_count=1)
    held = await world.payment(m, 100, capture_method="manual")
    assert (await world.pay(h, held["id"]))["status"] == "requires_capture"
    await world.call("POST", f"/v1/payments/{held['id']}/cancel", headers=m.headers, json={})
    assert (await world.pay(h, (await world.payment(m, 100))["id"], 402))["error"]["code"] == "risk_declined"
    assert await world.available(h) == 10_000


async def test_velocity_under_concurrency(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    await _rule(world, kind="velocity_wallet", window_s=3600, max_count=3)
    ids = [(await world.payment(m, 100))["id"] for _ in range(8)]

    async def attempt(pid: str) -> int:
        resp = await world.client.post(f"/v1/wallet/payments/{pid}/pay", headers=h.headers, json={})
        return resp.status

    statuses = await asyncio.gather(*(attempt(pid) for pid in ids))
    assert sorted(statuses) == [200] * 3 + [402] * 5
    assert await world.available(h) == 9_700


async def test_rule_api_idempotent_validated_and_operator_only(world: World) -> None:
    m = await world.merchant()
    h = await world.holder()
    first = await _rule(world, key="rule-1", kind="blocked_wallet", wallet=h.id)
    assert await _rule(world, key="rule-1", kind="blocked_wallet", wallet=h.id) == first
    listed = await world.call("GET", "/v1/operator/risk_rules", headers=world.ops)
    assert [r["id"] for r in listed["data"]] == [first["id"]]
    assert await world.call("GET", f"/v1/operator/risk_rules/{first['id']}", headers=world.ops) == first
    for body, param in (({"kind": "blocked_wallet"}, "wallet"),
                        ({"kind": "blocked_wallet", "wallet": "wh_nope"}, "wallet"),
                        ({"kind": "velocity_wallet", "max_count": 2}, "window_s"),
                        ({"kind": "velocity_wallet", "window_s": 60}, "max_count"),
                        ({"kind": "velocity_wallet", "window_s": 60, "max_amount": 5}, "max_amount"),
                        ({"kind": "velocity_wallet", "window_s": 60, "max_count": 0}, "max_count")):
        refused = await _rule(world, 400, **body)
        assert refused["error"]["param"] == param, (body, refused)
    assert len((await world.call("GET", "/v1/operator/risk_rules", headers=world.ops))["data"]) == 1
    for headers in (h.headers, m.headers):
        resp = await world.client.get("/v1/operator/risk_rules", headers=headers)
        assert resp.status in (401, 403, 404)
        resp = await world.client.post("/v1/operator/risk_rules", headers=headers,
                                       json={"kind": "blocked_wallet", "wallet": h.id})
        assert resp.status in (401, 403, 404)
    assert (await world.call("GET", "/v1/operator/risk_rules/rsk_nope", 404, headers=world.ops))["error"][
        "param"] == "id"


async def test_blocked_wallet_declined_by_pay_code(world: World) -> None:
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 10_000)
    await _rule(world, kind="blocked_wallet", wallet=h.id)
    code = (await world.call("POST", "/v1/wallet/pay_codes", 201, headers=h.headers, json={}))["code"]
    refused = await _charge(world, m, code, 400, expect=402)
    assert refused["error"]["code"] == "risk_declined"
    assert await world.available(h) == 10_000 and await world.merchant_total(m) == 0
