"""Review R37a: trying to break money in the refund paths, over real HTTP and PostgreSQL.

Discounted (bank- and merchant-funded) and cashback payments refunded in odd partial amounts, cross-currency
refunds in JPY and KWD, concurrent refunds and idempotency, refund vs capture/void races, bad input. The
``client`` fixture proves every ledger invariant after each test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import asyncpg
import pytest

from gateway.domain.fx_payments import share
from gateway.domain.ids import Kind, decode
from tests.conftest import make_settings
from tests.integration.conftest import serving
from tests.integration.world import Holder, Merchant, World, campaign_window


async def _campaign(world: World, currency: str = "CNY", **terms: Any) -> Any:
    body = {"name": "R37", "currency": currency, "budget": 1_000_000, **campaign_window(), **terms}
    return await world.call("POST", "/v1/operator/campaigns", 201, headers=world.ops, json=body)


async def _refund(world: World, m: Merchant, pid: str, amount: int | None = None, expect: int = 201,
                  key: str | None = None) -> Any:
    headers = {**m.headers, **({"Idempotency-Key": key} if key else {})}
    return await world.call("POST", f"/v1/payments/{pid}/refunds", expect, headers=headers,
                            json={} if amount is None else {"amount": amount})


async def _promotions_total(db: asyncpg.Connection, currency: str = "CNY") -> int:
    total: int = await db.fetchval("SELECT COALESCE(sum(p.amount_minor), 0) FROM postings p JOIN accounts a"
                                   " ON a.id = p.account_id WHERE a.kind = 'promotions' AND a.currency = $1", currency)
    return total


async def _payment_row(db: asyncpg.Connection, pid: str) -> asyncpg.Record:
    return await db.fetchrow("SELECT * FROM payments WHERE id = $1", decode(Kind.PAYMENT, pid))


async def _totals(world: World, h: Holder) -> dict[str, tuple[int, int]]:
    wallet = await world.call("GET", "/v1/wallet", headers=h.headers)
    return {b["currency"]: (b["total"], b["held"]) for b in wallet["balances"]}


def _splits(total: int) -> list[int]:
    """Odd parts summing to ``total``: 1s, then 7s, 13s, then the rest."""
    parts, left = [], total
    for size in [1, 1, 1, 7, 13, 7, 1, 3, 11, 17, 1]:
        if left <= size:
            break
        parts.append(size)
        left -= size
    return [*parts, left]


# --- 1. discounts and cashback ----------------------------------------------------------------------------


@pytest.mark.parametrize("funded_by", ["bank", "merchant"])
@pytest.mark.parametrize("rule", [{"rule": "fixed", "fixed_amount": 10}, {"rule": "percent", "percent_bps": 3_333}])
async def test_discount_one_unit_refunds_take_back_exactly_the_discount(
        world: World, db: asyncpg.Connection, funded_by: str, rule: dict[str, Any]) -> None:
    m = await world.merchant(fee_bps=250)
    h = await world.holder(top_up=10_000)
    await _campaign(world, funded_by=funded_by, merchants=[m.id], **rule)
    p = await world.payment(m, 37)
    paid = await world.pay(h, p["id"])
    row = await _payment_row(db, p["id"])
    discount = row["discount_minor"]
    assert discount == (10 if rule["rule"] == "fixed" else 37 * 3_333 // 10_000) and discount > 0, dict(row)
    holder_paid = 10_000 - await world.available(h)
    assert holder_paid == 37 - discount, paid
    promo_before = await _promotions_total(db)
    merchant_before = await world.merchant_total(m)
    captured = row["captured_minor"]
    received = 0
    for i in range(captured):
        before = await world.available(h)
        await _refund(world, m, p["id"], 1)
        got = await world.available(h) - before
        assert got in (0, 1), (i, got)
        received += got
        # the holder never has more back than it paid, and never less than its pro-rata share
        assert received <= holder_paid
    assert received == holder_paid
    assert await world.available(h) == 10_000
    row = await _payment_row(db, p["id"])
    assert row["refunded_minor"] == captured
    if funded_by == "bank":
        assert row["discount_clawed_back_minor"] == discount
        assert await _promotions_total(db) - promo_before == discount
        assert await _promotions_total(db) == 0  # the promotions account ends with nothing it did not give
    else:
        assert row["discount_clawed_back_minor"] == 0
        assert await _promotions_total(db) == promo_before == 0
    # the merchant gave everything back (fee included)
    assert await world.merchant_total(m) == 0
    assert merchant_before >= 0
    await _refund(world, m, p["id"], 1, expect=409)


@pytest.mark.parametrize("funded_by", ["bank", "merchant"])
async def test_discount_odd_partial_refunds_then_the_rest(world: World, db: asyncpg.Connection, funded_by: str) -> None:
    m = await world.merchant(fee_bps=137)
    h = await world.holder(top_up=100_000)
    await _campaign(world, funded_by=funded_by, rule="percent", percent_bps=777, merchants=[m.id])
    p = await world.payment(m, 9_973)
    await world.pay(h, p["id"])
    row = await _payment_row(db, p["id"])
    discount, captured = row["discount_minor"], row["captured_minor"]
    assert discount == 9_973 * 777 // 10_000
    paid = 100_000 - await world.available(h)
    assert paid == 9_973 - discount
    for part in _splits(captured):
        await _refund(world, m, p["id"], part)
        assert 100_000 - await world.available(h) >= 0
    assert await world.available(h) == 100_000
    row = await _payment_row(db, p["id"])
    assert row["discount_clawed_back_minor"] == (discount if funded_by == "bank" else 0)
    assert await _promotions_total(db) == 0
    assert await world.merchant_total(m) == 0


@pytest.mark.parametrize("funded_by", ["bank", "merchant"])
@pytest.mark.parametrize("terms", [{"percent_bps": 10_000}, {"percent_bps": 333}, {"fixed_amount": 7}])
async def test_cashback_one_unit_refunds_take_back_exactly_the_cashback(
        world: World, db: asyncpg.Connection, funded_by: str, terms: dict[str, Any]) -> None:
    m = await world.merchant(fee_bps=0 if terms.get("percent_bps") == 10_000 else 300)
    h = await world.holder(top_up=1_000)
    await _campaign(world, funded_by=funded_by, rule="cashback", merchants=[m.id], **terms)
    p = await world.payment(m, 97)
    await world.pay(h, p["id"])
    row = await _payment_row(db, p["id"])
    cashback = row["cashback_minor"]
    assert cashback > 0, dict(row)
    assert await world.available(h) == 1_000 - 97 + cashback
    for _ in range(97):
        await _refund(world, m, p["id"], 1)
        assert await world.available(h) <= 1_000  # never more than it had before paying
    row = await _payment_row(db, p["id"])
    assert row["cashback_clawed_back_minor"] == cashback
    assert await world.available(h) == 1_000
    assert await _promotions_total(db) == 0
    assert await world.merchant_total(m) == 0


async def test_cashback_spent_then_refunded_in_parts(world: World, db: asyncpg.Connection) -> None:
    """The holder spends its cashback elsewhere; the refunds net the claw-back, never overdraw."""
    m = await world.merchant(fee_bps=100)
    other = await world.merchant(name="Other")
    h = await world.holder(top_up=1_000)
    await _campaign(world, funded_by="bank", rule="cashback", percent_bps=5_000, merchants=[m.id])
    p = await world.payment(m, 1_000)
    await world.pay(h, p["id"])
    assert await world.available(h) == 500
    q = await world.payment(other, 500)
    await world.pay(h, q["id"])
    assert await world.available(h) == 0
    for part in _splits(1_000):
        await _refund(world, m, p["id"], part)
    assert await world.available(h) == 500
    assert await _promotions_total(db) == 0


async def test_manual_capture_discount_partial_capture_then_partial_refunds(world: World, db: asyncpg.Connection) -> None:
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=10_000)
    await _campaign(world, funded_by="bank", rule="percent", percent_bps=1_500, merchants=[m.id])
    p = await world.payment(m, 997, capture_method="manual")
    await world.pay(h, p["id"])
    await world.call("POST", f"/v1/payments/{p['id']}/capture", headers=m.headers, json={"amount_to_capture": 613})
    row = await _payment_row(db, p["id"])
    kept = row["discount_minor"]
    assert kept == (997 * 1_500 // 10_000) * 613 // 997
    assert await world.available(h) == 10_000 - (613 - kept)
    for part in _splits(613):
        await _refund(world, m, p["id"], part)
    assert await world.available(h) == 10_000
    assert (await _payment_row(db, p["id"]))["discount_clawed_back_minor"] == kept
    assert await _promotions_total(db) == 0


# --- 2. cross-currency -------------------------------------------------------------------------------------


async def _rate(world: World, base: str, quote: str, rate: str, spread_bps: int = 0) -> Any:
    return await world.call("POST", "/v1/operator/fx_rates", 201, headers=world.ops,
                            json={"base": base, "quote": quote, "rate": rate, "spread_bps": spread_bps})


async def _fx_pay(world: World, h: Holder, pid: str) -> Any:
    offer = (await world.call("GET", f"/v1/payments/{pid}", headers=h.headers))["fx_offer"]
    assert offer is not None
    return await world.call("POST", f"/v1/wallet/payments/{pid}/pay", headers={**h.headers,
                            "Idempotency-Key": str(uuid.uuid4())}, json={"fx_quote": offer["quote"]})


async def test_jpy_payment_from_cny_one_yen_refunds(world: World) -> None:
    await _rate(world, "CNY", "JPY", "21.05", 37)
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    p = await world.payment(m, 97, "JPY")
    paid = await _fx_pay(world, h, p["id"])
    sell, receive = paid["fx"]["from_amount"], paid["fx"]["to_amount"]
    for i in range(1, 98):
        await _refund(world, m, p["id"], 1)
        cny = (await _totals(world, h))["CNY"][0]
        assert cny == 100_000 - sell + share(sell, i, receive), i
        assert cny <= 100_000
    assert await _totals(world, h) == {"CNY": (100_000 - sell + share(sell, 97, receive), 0),
                                       "JPY": (receive - 97, 0)}


async def test_kwd_wallet_pays_cny_odd_refunds(clean_db: str) -> None:
    kwd = {"balance_max_minor": 1_000_000, "payment_max_minor": 1_000_000, "daily_max_minor": 1_000_000}
    cny = {"balance_max_minor": 10_000_000, "payment_max_minor": 200_000, "daily_max_minor": 500_000}
    async with serving(clean_db, make_settings(tiers={"tier4": {"CNY": cny, "KWD": kwd}})) as client:
        world = await World.create(client)
        await _rate(world, "KWD", "CNY", "23.5", 50)
        m = await world.merchant()
        h = await world.holder(top_up=10_000, currency="KWD")
        p = await world.payment(m, 9_973)  # 99.73 CNY
        paid = await _fx_pay(world, h, p["id"])
        sell, receive = paid["fx"]["from_amount"], paid["fx"]["to_amount"]
        done = 0
        for part in _splits(9_973):
            await _refund(world, m, p["id"], part)
            done += part
            assert (await _totals(world, h))["KWD"][0] == 10_000 - sell + share(sell, done, receive), done
        assert (await _totals(world, h))["KWD"][0] <= 10_000
        assert (await _totals(world, h))["CNY"][0] == receive - 9_973
        await _refund(world, m, p["id"], 1, expect=409)


@pytest.mark.parametrize("funded_by", ["bank", "merchant"])
async def test_cashback_jpy_payment_from_cny_refunded_in_parts(world: World, db: asyncpg.Connection,
                                                                funded_by: str) -> None:
    await _rate(world, "CNY", "JPY", "21.05")
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=100_000)
    await _campaign(world, "JPY", funded_by=funded_by, rule="cashback", percent_bps=4_321, merchants=[m.id])
    p = await world.payment(m, 1_003, "JPY")
    paid = await _fx_pay(world, h, p["id"])
    sell, receive = paid["fx"]["from_amount"], paid["fx"]["to_amount"]
    row = await _payment_row(db, p["id"])
    cashback = row["cashback_minor"]
    assert cashback > 0
    assert (await _totals(world, h))["JPY"][0] == receive - 1_003 + cashback
    for part in _splits(1_003):
        await _refund(world, m, p["id"], part)
    totals = await _totals(world, h)
    # the claw-back is netted from what the refunds credit (and so convert back): the cashback's yen stay
    assert totals["JPY"][0] == receive - 1_003 + cashback, totals
    assert totals["CNY"][0] == 100_000 - sell + share(sell, 1_003 - cashback, receive)
    assert totals["CNY"][0] + share(sell, totals["JPY"][0], receive) <= 100_000
    assert (await _payment_row(db, p["id"]))["cashback_clawed_back_minor"] == cashback
    assert await _promotions_total(db, "JPY") == 0


@pytest.mark.parametrize("funded_by", ["bank", "merchant"])
async def test_discounted_jpy_payment_from_cny_refunded_in_parts(world: World, db: asyncpg.Connection,
                                                                  funded_by: str) -> None:
    await _rate(world, "CNY", "JPY", "21.05")
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=100_000)
    await _campaign(world, "JPY", funded_by=funded_by, rule="percent", percent_bps=1_111, merchants=[m.id])
    p = await world.payment(m, 1_003, "JPY")
    paid = await _fx_pay(world, h, p["id"])
    sell, receive = paid["fx"]["from_amount"], paid["fx"]["to_amount"]
    row = await _payment_row(db, p["id"])
    for part in _splits(row["captured_minor"]):
        await _refund(world, m, p["id"], part)
    totals = await _totals(world, h)
    assert totals["CNY"][0] <= 100_000
    assert totals["CNY"][0] == 100_000 - sell + share(sell, 1_003 - row["discount_minor"], receive)
    assert await _promotions_total(db, "JPY") == 0


# --- 3. concurrency and idempotency -------------------------------------------------------------------------


async def test_concurrent_refunds_never_over_refund(world: World, db: asyncpg.Connection) -> None:
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 1_000)
    await world.pay(h, p["id"])
    resps = await asyncio.gather(*(
        world.client.post(f"/v1/payments/{p['id']}/refunds", headers={**m.headers, "Idempotency-Key": f"k{i}"},
                          json={"amount": 300}) for i in range(12)))
    outcomes = Counter()
    for r in resps:
        body = await r.json()
        outcomes[(r.status, body.get("error", {}).get("code") if r.status >= 400 else None)] += 1
    assert outcomes[(201, None)] == 3, outcomes
    assert all(s in (201, 400, 409) for s, _ in outcomes), outcomes
    assert sum(n for (s, _), n in outcomes.items() if s >= 500) == 0
    assert (await _payment_row(db, p["id"]))["refunded_minor"] == 900
    assert await world.available(h) == 10_000 - 100


async def test_concurrent_refunds_of_a_discounted_payment(world: World, db: asyncpg.Connection) -> None:
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=10_000)
    await _campaign(world, funded_by="bank", rule="percent", percent_bps=1_234, merchants=[m.id])
    p = await world.payment(m, 1_001)
    await world.pay(h, p["id"])
    resps = await asyncio.gather(*(
        world.client.post(f"/v1/payments/{p['id']}/refunds", headers={**m.headers, "Idempotency-Key": f"d{i}"},
                          json={"amount": 7 + i}) for i in range(60)))
    statuses = Counter(r.status for r in resps)
    assert set(statuses) <= {201, 400, 409}, statuses
    row = await _payment_row(db, p["id"])
    assert row["refunded_minor"] <= 1_001
    await _refund(world, m, p["id"])  # the rest, if any
    assert await world.available(h) == 10_000
    assert await _promotions_total(db) == 0


async def test_same_key_concurrently_one_answer(world: World, db: asyncpg.Connection) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 1_000)
    await world.pay(h, p["id"])
    resps = await asyncio.gather(*(
        world.client.post(f"/v1/payments/{p['id']}/refunds", headers={**m.headers, "Idempotency-Key": "same"},
                          json={"amount": 100}) for _ in range(10)))
    bodies = [(r.status, await r.json()) for r in resps]
    ok = [b for s, b in bodies if s == 201]
    assert {s for s, _ in bodies} <= {201, 409}, bodies
    assert len({b["id"] for b in ok}) == 1
    assert all(b["error"]["code"] == "idempotency_key_in_use" for s, b in bodies if s == 409)
    assert (await _payment_row(db, p["id"]))["refunded_minor"] == 100
    # the same key, another body: a clear 4xx, nothing moves
    resp = await world.client.post(f"/v1/payments/{p['id']}/refunds",
                                   headers={**m.headers, "Idempotency-Key": "same"}, json={"amount": 200})
    body = await resp.json()
    assert 400 <= resp.status < 500 and body["error"]["type"] == "idempotency_error", (resp.status, body)
    replay = await _refund(world, m, p["id"], 100, key="same")
    assert replay["id"] == ok[0]["id"]
    assert (await _payment_row(db, p["id"]))["refunded_minor"] == 100


async def test_same_key_concurrently_with_different_bodies(world: World, db: asyncpg.Connection) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 1_000)
    await world.pay(h, p["id"])
    resps = await asyncio.gather(*(
        world.client.post(f"/v1/payments/{p['id']}/refunds", headers={**m.headers, "Idempotency-Key": "mixed"},
                          json={"amount": 100 + i}) for i in range(8)))
    statuses = [r.status for r in resps]
    assert statuses.count(201) == 1, statuses
    assert all(400 <= s < 500 for s in statuses if s != 201), statuses
    assert (await _payment_row(db, p["id"]))["refunded_minor"] in range(100, 108)


# --- 4. state races and tenants -----------------------------------------------------------------------------


async def test_refund_vs_capture_and_cancel_races(world: World, db: asyncpg.Connection) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    for action in ("capture", "cancel"):
        p = await world.payment(m, 1_000, capture_method="manual")
        await world.pay(h, p["id"])
        before = await world.available(h)
        ops = [world.client.post(f"/v1/payments/{p['id']}/{action}", headers=m.headers, json={})]
        ops += [world.client.post(f"/v1/payments/{p['id']}/refunds", headers={**m.headers,
                                  "Idempotency-Key": f"{action}{i}"}, json={"amount": 400}) for i in range(5)]
        resps = await asyncio.gather(*ops)
        assert resps[0].status == 200, await resps[0].json()
        codes = [r.status for r in resps[1:]]
        assert set(codes) <= {201, 400, 409}, codes
        for r in resps[1:]:
            if r.status == 400:
                assert (await r.json())["error"]["code"] == "amount_too_large"
        row = await _payment_row(db, p["id"])
        if action == "cancel":
            assert codes.count(201) == 0 and row["refunded_minor"] == 0
            assert await world.available(h) == before + 1_000
        else:
            assert row["refunded_minor"] == 400 * codes.count(201) <= 1_000
            assert await world.available(h) == before + row["refunded_minor"]


async def test_refund_of_uncaptured_and_of_another_merchants_payment(world: World, db: asyncpg.Connection) -> None:
    m = await world.merchant()
    other = await world.merchant(name="Thief")
    h = await world.holder(top_up=10_000)
    unpaid = await world.payment(m, 500)
    body = await _refund(world, m, unpaid["id"], 100, expect=409)
    assert body["error"]["code"] == "payment_not_refundable"
    held = await world.payment(m, 500, capture_method="manual")
    await world.pay(h, held["id"])
    body = await _refund(world, m, held["id"], 100, expect=409)
    assert body["error"]["code"] == "payment_not_refundable"
    paid = await world.payment(m, 500)
    await world.pay(h, paid["id"])
    avail = await world.available(h)
    for amount in (100, None):
        body = await _refund(world, other, paid["id"], amount, expect=404)
        assert body["error"]["code"] == "resource_missing"
    await world.call("GET", f"/v1/payments/{paid['id']}/refunds", 404, headers=other.headers)
    assert await world.available(h) == avail
    assert (await _payment_row(db, paid["id"]))["refunded_minor"] == 0
    assert await world.merchant_total(other) == 0


# --- 5. bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body,param", [
    ({"amount": -1}, "amount"), ({"amount": 0}, "amount"), ({"amount": 1.5}, "amount"), ({"amount": 10.0}, "amount"),
    ({"amount": 10**30}, "amount"), ({"amount": 2**63}, "amount"), ({"amount": 10**12}, "amount"),
    ({"amount": "100"}, "amount"), ({"amount": True}, "amount"), ({"amount": None, "currency": "USD"}, "currency"),
    ({"amount": 100, "currency": "USD"}, "currency"), ({"amount": [1]}, "amount"), ({"reason": 5}, "reason"),
    ({"amount": 1e400}, "amount"), ({"amount": 1001}, "amount"),
])
async def test_bad_refund_input_is_a_stable_4xx_and_moves_nothing(world: World, db: asyncpg.Connection,
                                                                   body: dict[str, Any], param: str) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 1_000)
    await world.pay(h, p["id"])
    avail = await world.available(h)
    import json as _json
    raw = _json.dumps(body).replace("Infinity", "1e400") if body.get("amount") == float("inf") else _json.dumps(body)
    resp = await world.client.post(f"/v1/payments/{p['id']}/refunds", headers={**m.headers,
                                   "Content-Type": "application/json"}, data=raw)
    answer = await resp.json()
    assert resp.status == 400, (resp.status, answer)
    assert answer["error"]["code"] and answer["error"]["param"] == param, answer
    assert await world.available(h) == avail
    assert (await _payment_row(db, p["id"]))["refunded_minor"] == 0


@pytest.mark.parametrize("raw", ["not json", "[]", "null", "{\"amount\": 1", "{\"amount\": 1e2}"])
async def test_malformed_refund_bodies_are_4xx(world: World, db: asyncpg.Connection, raw: str) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 1_000)
    await world.pay(h, p["id"])
    resp = await world.client.post(f"/v1/payments/{p['id']}/refunds", headers={**m.headers,
                                   "Content-Type": "application/json"}, data=raw)
    assert 400 <= resp.status < 500, (resp.status, await resp.text())
    if raw == "{\"amount\": 1e2}":
        pass
    assert (await _payment_row(db, p["id"]))["refunded_minor"] in (0, 100)


# --- 6. combinations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("funded_by", ["bank", "merchant"])
async def test_fx_manual_capture_with_reserved_discount_partial_capture_then_refunds(
        world: World, db: asyncpg.Connection, funded_by: str) -> None:
    await _rate(world, "CNY", "JPY", "21.05")
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=100_000)
    await _campaign(world, "JPY", funded_by=funded_by, rule="percent", percent_bps=1_500, merchants=[m.id])
    p = await world.payment(m, 10_007, "JPY", capture_method="manual")
    paid = await _fx_pay(world, h, p["id"])
    assert paid["status"] == "requires_capture", paid
    sell, receive = paid["fx"]["from_amount"], paid["fx"]["to_amount"]
    row = await _payment_row(db, p["id"])
    reserved = row["discount_reserved_minor"]  # none through a quote (its conversion is for the full amount)
    await world.call("POST", f"/v1/payments/{p['id']}/capture", headers=m.headers, json={"amount_to_capture": 6_001})
    row = await _payment_row(db, p["id"])
    kept = row["discount_minor"]
    totals = await _totals(world, h)
    assert totals["JPY"][0] >= 0 and totals["JPY"][1] == 0, totals
    for part in _splits(row["captured_minor"]):
        await _refund(world, m, p["id"], part)
    totals = await _totals(world, h)
    # everything converted back never exceeds what was sold
    assert totals["CNY"][0] <= 100_000, (totals, sell, receive, reserved, kept)
    conv = await db.fetchrow("SELECT * FROM conversions WHERE payment_id = $1", decode(Kind.PAYMENT, p["id"]))
    assert conv["returned_minor"] <= conv["receive_minor"]
    # the holder's yen and yuan together are what it had: nothing made (yen valued at the conversion's rate)
    assert totals["CNY"][0] + share(sell, totals["JPY"][0], receive) <= 100_000, totals
    assert await _promotions_total(db, "JPY") == 0


async def test_reverse_races_refunds(world: World, db: asyncpg.Connection) -> None:
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=10_000)
    await _campaign(world, funded_by="bank", rule="percent", percent_bps=1_234, merchants=[m.id])
    p = await world.payment(m, 1_001)
    await world.pay(h, p["id"])
    ops = [world.client.post(f"/v1/payments/{p['id']}/reverse", headers={**m.headers, "Idempotency-Key": f"rv{i}"},
                             json={}) for i in range(3)]
    ops += [world.client.post(f"/v1/payments/{p['id']}/refunds", headers={**m.headers, "Idempotency-Key": f"rf{i}"},
                              json={"amount": 101}) for i in range(6)]
    resps = await asyncio.gather(*ops)
    statuses = [r.status for r in resps]
    assert all(s < 500 for s in statuses), statuses
    row = await _payment_row(db, p["id"])
    assert row["refunded_minor"] == 1_001
    assert row["discount_clawed_back_minor"] == row["discount_minor"]
    assert await world.available(h) == 10_000
    assert await _promotions_total(db) == 0
    assert await world.merchant_total(m) == 0
