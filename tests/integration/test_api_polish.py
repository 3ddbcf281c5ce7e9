"""API polish (issue 11): refusal codes, the unlock answer, metadata, list filters and pagination."""

from __future__ import annotations

from tests.integration.world import World


async def test_refunding_unpaid_or_uncaptured_is_the_same_409(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=5_000)
    unpaid = await world.payment(m, 1_000)
    refused = await world.call("POST", f"/v1/payments/{unpaid['id']}/refunds", 409, headers=m.headers, json={})
    assert (refused["error"]["code"], refused["error"]["status_now"]) == ("payment_not_refundable",
                                                                          "requires_payment_method")
    held = await world.payment(m, 1_000, capture_method="manual")
    await world.pay(h, held["id"])
    uncaptured = await world.call("POST", f"/v1/payments/{held['id']}/refunds", 409, headers=m.headers, json={})
    assert (uncaptured["error"]["code"], uncaptured["error"]["status_now"]) == ("payment_not_refundable",
                                                                                "requires_capture")


async def test_unlock_answers_the_holders_real_pin_and_lock_state(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=500_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": "135790"})
    p = await world.payment(m, 100_001)
    for _ in range(4):
        await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay", 402, headers=h.headers, json={"pin": "000001"})
    await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay", 403, headers=h.headers, json={"pin": "000001"})
    assert (await world.call("GET", "/v1/wallet", headers=h.headers))["holder"]["payments_locked"] is True
    unlocked = await world.call("POST", f"/v1/operator/wallet_holders/{h.id}/unlock", headers=world.ops, json={})
    assert (unlocked["pin_set"], unlocked["payments_locked"]) == (True, False)
    no_pin = await world.holder()
    answer = await world.call("POST", f"/v1/operator/wallet_holders/{no_pin.id}/unlock", headers=world.ops, json={})
    assert (answer["pin_set"], answer["payments_locked"]) == (False, False)
    tiered = await world.call("POST", f"/v1/operator/wallet_holders/{h.id}/tier", headers=world.ops, json={"tier": 2})
    assert (tiered["pin_set"], tiered["payments_locked"]) == (True, False)
