"""Discounts on manual captures and on payments paid after their payer's confirmation, over real HTTP with
real PostgreSQL and Redis (docs/promotions.md, "Manual capture"): the authorisation reserves the discount
(the wallet holds the discounted amount), a capture keeps its share and gives the rest back to the
campaign, a cancel or an expiry gives everything back (budget, place, the holder's use). The fixtures prove
the ledger invariants after each test; each test checks them itself after every step too."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any


from gateway.domain.ids import Kind, decode
from gateway.services.context import Services
from gateway.workers.expiry import tick
from tests.conftest import make_settings
from tests.integration.test_promotions import _campaign
from tests.integration.test_qr_paycode import _device_holder
from tests.integration.test_risk_pay_code import PIN, _broken, _charge, _confirm, _fetch, _pay_code, _rule
from tests.integration.world import Holder, Merchant, World


async def _sound(db_url: str) -> None:
    assert await _broken(db_url) == {}


def _pid(text_id: str) -> uuid.UUID:
    found = decode(Kind.PAYMENT, text_id)
    assert found is not None
    return found


def _cid(text_id: str) -> uuid.UUID:
    found = decode(Kind.CAMPAIGN, text_id)
    assert found is not None
    return found


async def _held(world: World, h: Holder) -> int:
    wallet = await world.call("GET", "/v1/wallet", headers=h.headers)
    return next((int(b["held"]) for b in wallet["balances"] if b["currency"] == "CNY"), 0)


async def _spent(world: World, c: Any) -> tuple[int, int]:
    got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
    return got["spent"], got["places_taken"]


async def _authorized(world: World, m: Merchant, h: Holder, amount: int, key: str | None = None) -> Any:
    p = await world.payment(m, amount, capture_method="manual")
    paid = await world.pay(h, p["id"], key=key)
    assert paid["status"] == "requires_capture"
    return paid


async def _capture(world: World, m: Merchant, pid: str, amount: int | None = None, expect: int = 200,
                   key: str | None = None) -> Any:
    body = {} if amount is None else {"amount_to_capture": amount}
    return await world.call("POST", f"/v1/payments/{pid}/capture", expect,
                            headers={**m.headers, "Idempotency-Key": key or uuid.uuid4().hex}, json=body)


async def _lapse(db_url: str, pid: str) -> None:
    await _fetch(db_url, "UPDATE payments SET authorization_expires_at = now() - interval '1 second' WHERE id = $1",
               _pid(pid))


async def test_the_invariants_catch_a_reservation_that_differs_from_its_capture(world: World, clean_db: str) -> None:
    """The invariants of migration 0031 on a real reservation: each way of breaking it is named (then
    restored, so the fixture's own check passes)."""
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    c = await _campaign(world, percent_bps=1_000, places=5)
    p = await _authorized(world, m, h, 1_000)
    pid, cid = _pid(p["id"]), _cid(c["id"])
    await _sound(clean_db)
    held = "UPDATE balances b SET held_minor = held_minor + $2 FROM payments p" \
           " WHERE p.id = $1 AND b.account_id = p.wallet_account_id AND b.shard = 0"
    # The wallet holding the full amount although a discount was reserved.
    await _fetch(clean_db, held, pid, 100)
    assert "hold_differs_from_authorizations" in await _broken(clean_db)
    await _fetch(clean_db, held, pid, -100)
    # A reservation the counter rows do not count.
    spent = "UPDATE campaign_shards SET spent_minor = spent_minor + $2 WHERE campaign_id = $1 AND spent_minor > 0"
    await _fetch(clean_db, spent, cid, -100)
    assert "campaign_over_budget_or_places" in await _broken(clean_db)
    await _fetch(clean_db, "UPDATE campaign_shards SET spent_minor = spent_minor + 100 WHERE campaign_id = $1"
                         " AND shard = (SELECT min(shard) FROM campaign_shards WHERE campaign_id = $1"
                         " AND places_taken > 0)", cid)
    await _sound(clean_db)
    # A reservation of another funder than its campaign's.
    await _fetch(clean_db, "UPDATE payments SET reserved_funded_by = 'merchant' WHERE id = $1", pid)
    assert "reserved_discount_differs_from_its_capture" in await _broken(clean_db)
    await _fetch(clean_db, "UPDATE payments SET reserved_funded_by = 'bank' WHERE id = $1", pid)
    # A cancelled authorisation that kept its discount.
    await _fetch(clean_db, "UPDATE payments SET status = 'canceled', campaign_id = reserved_campaign_id,"
                         " discount_minor = 100, discount_funded_by = 'bank' WHERE id = $1", pid)
    assert "reserved_discount_differs_from_its_capture" in await _broken(clean_db)
    # A capture of 333 of 1,000 keeping another share than floor(100 * 333 / 1,000) = 33.
    await _fetch(clean_db, "UPDATE payments SET status = 'succeeded', captured_minor = 333, discount_minor = 34"
                         " WHERE id = $1", pid)
    assert "reserved_discount_differs_from_its_capture" in await _broken(clean_db)
    await _fetch(clean_db, "UPDATE payments SET discount_minor = 33 WHERE id = $1", pid)
    assert "reserved_discount_differs_from_its_capture" not in await _broken(clean_db)
    await _fetch(clean_db, "UPDATE payments SET status = 'requires_capture', captured_minor = 0, campaign_id = NULL,"
                         " discount_minor = 0, discount_funded_by = NULL WHERE id = $1", pid)
    await _sound(clean_db)
    await world.call("POST", f"/v1/payments/{p['id']}/cancel", headers=m.headers, json={})
    await _sound(clean_db)


async def test_a_manual_authorisation_holds_the_discounted_amount_and_its_full_capture_moves_as_at_once(
        world: World, clean_db: str) -> None:
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=10_000)
    c = await _campaign(world, cap=150, merchants=[m.id])
    p = await world.payment(m, 2_000, capture_method="manual")
    preview = await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers)
    assert preview["discount_offer"] == {"campaign": c["id"], "amount": 150, "funded_by": "bank", "amount_to_pay": 1_850}
    authorized = await world.pay(h, p["id"])
    assert authorized["status"] == "requires_capture"
    assert authorized["discount"] == {"campaign": c["id"], "amount": 150, "funded_by": "bank",
                                      "amount_paid_by_holder": 1_850, "clawed_back": 0}
    assert (await _held(world, h), await world.available(h)) == (1_850, 10_000 - 1_850)
    assert await _spent(world, c) == (150, 1)
    await _sound(clean_db)
    captured = await _capture(world, m, p["id"])
    assert (captured["status"], captured["amount_received"], captured["fee"]) == ("succeeded", 2_000, 20)
    assert captured["discount"]["amount"] == 150
    assert (await _held(world, h), await world.available(h)) == (0, 10_000 - 1_850)
    assert await world.merchant_total(m) == 2_000 - 20  # the full amount: the promotions account paid 150
    assert await _spent(world, c) == (150, 1)
    await _sound(clean_db)


async def test_a_partial_capture_keeps_its_share_rounded_down_and_a_refund_claws_back_in_proportion(
        world: World, clean_db: str) -> None:
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    c = await _campaign(world, percent_bps=3_333)
    p = await _authorized(world, m, h, 1_001)
    assert p["discount"]["amount"] == 333  # floor(1,001 * 33.33 %)
    assert await _held(world, h) == 1_001 - 333
    captured = await _capture(world, m, p["id"], 500)
    # floor(333 * 500 / 1,001) = 166 (166.33...): the campaign's budget gets the fraction; 167 goes back.
    assert captured["discount"]["amount"] == 166 and captured["amount_received"] == 500
    assert (await _held(world, h), await world.available(h)) == (0, 10_000 - (500 - 166))
    assert await _spent(world, c) == (166, 1)
    await _sound(clean_db)
    backs = []
    for amount in (250, None):
        body = {} if amount is None else {"amount": amount}
        r = await world.call("POST", f"/v1/payments/{p['id']}/refunds", 201, headers=m.headers, json=body)
        backs.append(r["discount_clawed_back"])
        await _sound(clean_db)
    assert backs == [83, 83]  # in proportion of the 500 captured, summing to the 166 kept
    assert await world.available(h) == 10_000
    got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
    assert (got["spent"], got["clawed_back"]) == (166, 166)


async def test_a_merchant_funded_partial_capture_sells_its_share_for_less(world: World, clean_db: str) -> None:
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=10_000)
    c = await _campaign(world, rule="fixed", percent_bps=0, fixed_amount=300, funded_by="merchant")
    p = await _authorized(world, m, h, 3_001)
    assert p["discount"]["funded_by"] == "merchant" and await _held(world, h) == 2_701
    captured = await _capture(world, m, p["id"], 1_000)
    # floor(300 * 1,000 / 3,001) = 99 (99.97): the holder pays 901, the merchant sells for 901, fee on it.
    assert (captured["discount"]["amount"], captured["amount_received"], captured["fee"]) == (99, 901, 9)
    assert await world.available(h) == 10_000 - 901 and await _held(world, h) == 0
    assert await world.merchant_total(m) == 901 - 9
    assert await _spent(world, c) == (99, 1)
    await _sound(clean_db)
    r = await world.call("POST", f"/v1/payments/{p['id']}/refunds", 201, headers=m.headers, json={})
    assert r["amount"] == 901 and r["discount_clawed_back"] == 0  # it lowered the sale: all paid comes back
    assert await world.available(h) == 10_000
    await _sound(clean_db)


async def test_a_tiny_partial_capture_keeping_nothing_gives_the_place_and_the_use_back(world: World,
                                                                                        clean_db: str) -> None:
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    c = await _campaign(world, percent_bps=1_000, places=1, per_holder_limit=1)
    p = await _authorized(world, m, h, 1_000)
    captured = await _capture(world, m, p["id"], 9)  # floor(100 * 9 / 1,000) = 0: no benefit
    assert captured["discount"] is None and captured["amount_received"] == 9
    assert await _spent(world, c) == (0, 0) and await world.available(h) == 10_000 - 9
    await _sound(clean_db)
    again = await _authorized(world, m, h, 1_000)  # its use and the place came back
    assert again["discount"]["amount"] == 100
    await _sound(clean_db)


async def test_a_cancel_and_an_expiry_give_back_the_budget_the_place_and_the_use(world: World, clean_db: str) -> None:
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    other = await world.holder(top_up=10_000)
    c = await _campaign(world, percent_bps=1_000, places=1, per_holder_limit=1)
    first = await _authorized(world, m, h, 1_000)
    assert first["discount"]["amount"] == 100 and await _spent(world, c) == (100, 1)
    assert (await _authorized(world, m, other, 1_000))["discount"] is None  # the one place is reserved
    canceled = await world.call("POST", f"/v1/payments/{first['id']}/cancel", headers=m.headers, json={})
    assert canceled["status"] == "canceled" and canceled["discount"] is None
    assert await _spent(world, c) == (0, 0) and await world.available(h) == 10_000
    await _sound(clean_db)
    second = await _authorized(world, m, h, 1_000)  # the holder's use came back with the place
    assert second["discount"]["amount"] == 100
    await _lapse(clean_db, second["id"])
    lapsed = await _capture(world, m, second["id"], expect=409)  # touching a lapsed authorisation expires it
    assert lapsed["error"]["code"] == "authorization_expired"
    assert await _spent(world, c) == (0, 0) and await world.available(h) == 10_000
    await _sound(clean_db)
    third = await _authorized(world, m, h, 1_000)
    await _lapse(clean_db, third["id"])
    svc = await Services.start(make_settings())  # the expiry worker's batch
    try:
        assert (await tick(svc))[0] >= 1
    finally:
        await svc.stop()
    seen = await world.call("GET", f"/v1/payments/{third['id']}", headers=m.headers)
    assert seen["status"] == "expired" and seen["discount"] is None
    assert await _spent(world, c) == (0, 0) and await world.available(h) == 10_000
    await _sound(clean_db)


async def test_manual_authorisations_racing_never_reserve_more_places_or_budget_than_left(
        world: World, clean_db: str) -> None:
    m = await world.merchant(fee_bps=0)
    holders = list(await asyncio.gather(*(world.holder(top_up=5_000) for _ in range(8))))
    c = await _campaign(world, percent_bps=1_000, places=5, budget=450)  # 4 full discounts of 100, then 50
    payers = [h for h in holders for _ in range(3)]
    payments = await asyncio.gather(*(world.payment(m, 1_000, capture_method="manual") for _ in payers))
    paid = await asyncio.gather(*(world.pay(h, p["id"]) for h, p in zip(payers, payments, strict=True)))
    assert all(x["status"] == "requires_capture" for x in paid)
    amounts = sorted(x["discount"]["amount"] for x in paid if x["discount"] is not None)
    assert amounts == [50, 100, 100, 100, 100]
    assert await _spent(world, c) == (450, 5)
    await _sound(clean_db)
    reserved = [x for x in paid if x["discount"] is not None]
    await asyncio.gather(*(world.call("POST", f"/v1/payments/{x['id']}/cancel", headers=m.headers, json={})
                           for x in reserved[:2]))
    freed = 450 - sum(x["discount"]["amount"] for x in reserved[2:])
    assert await _spent(world, c) == (450 - freed, 3)
    more = await asyncio.gather(*(world.payment(m, 1_000, capture_method="manual") for _ in holders))
    again = await asyncio.gather(*(world.pay(h, p["id"]) for h, p in zip(holders, more, strict=True)))
    assert sum(x["discount"]["amount"] for x in again if x["discount"] is not None) == freed
    assert await _spent(world, c) == (450, 5)
    await _sound(clean_db)


async def test_retried_authorisations_and_captures_take_and_give_back_once(world: World, clean_db: str) -> None:
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    c = await _campaign(world, percent_bps=1_000)
    p = await world.payment(m, 1_000, capture_method="manual")
    key = uuid.uuid4().hex
    first = await world.pay(h, p["id"], key=key)
    assert await world.pay(h, p["id"], key=key) == first  # replayed: nothing taken twice
    assert await _spent(world, c) == (100, 1) and await _held(world, h) == 900
    capture_key = uuid.uuid4().hex
    captured = await _capture(world, m, p["id"], 501, key=capture_key)
    assert await _capture(world, m, p["id"], 501, key=capture_key) == captured
    assert captured["discount"]["amount"] == 50  # floor(100 * 501 / 1,000)
    assert await _spent(world, c) == (50, 1) and await world.available(h) == 10_000 - 451
    await _sound(clean_db)


async def test_a_pay_code_charge_held_for_a_step_up_is_discounted_by_its_confirmation(world: World,
                                                                                      clean_db: str) -> None:
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 10_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": PIN})
    await _rule(world, kind="blocked_wallet", wallet=h.id, outcome="require_pin")
    c = await _campaign(world, percent_bps=1_000, funded_by="merchant")
    charged = await _charge(world, m, await _pay_code(world, h), 300)
    assert charged["status"] == "requires_action" and charged["discount"] is None
    assert await _held(world, h) == 300 and await _spent(world, c) == (0, 0)  # nothing taken before the payer says
    await _sound(clean_db)
    key = uuid.uuid4().hex
    ok = await _confirm(world, h, charged["id"], key=key, pin=PIN)
    assert await _confirm(world, h, charged["id"], key=key, pin=PIN) == ok
    assert ok["status"] == "succeeded" and ok["discount"]["amount"] == 30
    assert await world.available(h) == 10_000 - 270 and await _held(world, h) == 0
    assert await world.merchant_total(m) == 270 and await _spent(world, c) == (30, 1)
    await _sound(clean_db)


async def test_a_manual_pay_code_charge_reserves_its_discount_at_the_confirmation(world: World,
                                                                                  clean_db: str) -> None:
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 10_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": PIN})
    await _rule(world, kind="blocked_wallet", wallet=h.id, outcome="require_pin")
    c = await _campaign(world, percent_bps=1_000)
    charged = await world.call("POST", "/v1/pay_code_charges", 201,
                               headers={**m.headers, "Idempotency-Key": uuid.uuid4().hex},
                               json={"pay_code": await _pay_code(world, h), "amount": 700, "currency": "CNY",
                                     "store": m.store, "capture_method": "manual"})
    assert charged["status"] == "requires_action" and await _held(world, h) == 700
    ok = await _confirm(world, h, charged["id"], pin=PIN)
    assert ok["status"] == "requires_capture" and ok["discount"]["amount"] == 70
    assert await _held(world, h) == 630 and await _spent(world, c) == (70, 1)
    await _sound(clean_db)
    captured = await _capture(world, m, charged["id"])
    assert captured["amount_received"] == 700 and captured["discount"]["amount"] == 70
    assert await world.available(h) == 10_000 - 630 and await world.merchant_total(m) == 700
    await _sound(clean_db)
