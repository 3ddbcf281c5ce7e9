"""Discounts on manual captures and on payments paid after their payer's confirmation, over real HTTP with
real PostgreSQL and Redis (docs/promotions.md, "Manual capture"): the authorisation reserves the discount
(the wallet holds the discounted amount), a capture keeps its share and gives the rest back to the
campaign, a cancel or an expiry gives everything back (budget, place, the holder's use). The fixtures prove
the ledger invariants after each test; each test checks them itself after every step too."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from gateway.domain.ids import Kind, decode
from gateway.store import invariants
from tests.integration.test_promotions import _campaign
from tests.integration.world import Holder, Merchant, World


async def _sql(db_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _broken(db_url: str) -> dict[str, list[dict[str, object]]]:
    conn = await asyncpg.connect(db_url)
    try:
        found = await invariants.check(conn)
    finally:
        await conn.close()
    return {name: rows for name, rows in found.items() if rows}


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


async def test_the_invariants_catch_a_reservation_that_differs_from_its_capture(world: World, clean_db: str) -> None:
    """The invariants of migration 0031, on rows written by hand: a sound reservation passes, and each
    way of breaking one is named (then restored, so the fixture's own check passes)."""
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    c = await _campaign(world, percent_bps=1_000, places=5)
    p = await world.payment(m, 1_000, capture_method="manual")
    await world.pay(h, p["id"])
    pid, cid = _pid(p["id"]), _cid(c["id"])
    reservation = await _sql(clean_db, "SELECT reserved_campaign_id, discount_reserved_minor FROM payments WHERE id = $1",
                             pid)
    if reservation[0]["reserved_campaign_id"] is None:  # written by hand when the authorisation reserved nothing
        await _sql(clean_db, "UPDATE payments SET reserved_campaign_id = $2, discount_reserved_minor = 100,"
                             " reserved_funded_by = 'bank' WHERE id = $1", pid, cid)
        await _sql(clean_db, "UPDATE balances b SET held_minor = held_minor - 100 FROM payments p"
                             " WHERE p.id = $1 AND b.account_id = p.wallet_account_id AND b.shard = 0", pid)
        await _sql(clean_db, "UPDATE campaign_shards SET spent_minor = spent_minor + 100, places_taken = places_taken + 1"
                             " WHERE campaign_id = $1 AND shard = 0", cid)
    await _sound(clean_db)

    # The wallet holding the full amount although a discount was reserved.
    await _sql(clean_db, "UPDATE balances b SET held_minor = held_minor + 1 FROM payments p"
                         " WHERE p.id = $1 AND b.account_id = p.wallet_account_id AND b.shard = 0", pid)
    assert "hold_differs_from_authorizations" in await _broken(clean_db)
    await _sql(clean_db, "UPDATE balances b SET held_minor = held_minor - 1 FROM payments p"
                         " WHERE p.id = $1 AND b.account_id = p.wallet_account_id AND b.shard = 0", pid)
    # A reservation the counter rows do not count.
    await _sql(clean_db, "UPDATE campaign_shards SET spent_minor = spent_minor - 100 WHERE campaign_id = $1"
                         " AND shard = 0", cid)
    assert "campaign_over_budget_or_places" in await _broken(clean_db)
    await _sql(clean_db, "UPDATE campaign_shards SET spent_minor = spent_minor + 100 WHERE campaign_id = $1"
                         " AND shard = 0", cid)
    # A reservation of another funder than its campaign's.
    await _sql(clean_db, "UPDATE payments SET reserved_funded_by = 'merchant' WHERE id = $1", pid)
    assert "reserved_discount_differs_from_its_capture" in await _broken(clean_db)
    await _sql(clean_db, "UPDATE payments SET reserved_funded_by = 'bank' WHERE id = $1", pid)
    # A cancelled authorisation that kept its discount.
    await _sql(clean_db, "UPDATE payments SET status = 'canceled', campaign_id = reserved_campaign_id,"
                         " discount_minor = 100, discount_funded_by = 'bank' WHERE id = $1", pid)
    assert "reserved_discount_differs_from_its_capture" in await _broken(clean_db)
    await _sql(clean_db, "UPDATE payments SET status = 'requires_capture', campaign_id = NULL, discount_minor = 0,"
                         " discount_funded_by = NULL WHERE id = $1", pid)
    await _sound(clean_db)
    # A capture of 333 of 1,000 keeping another share than floor(100 * 333 / 1,000) = 33.
    await _sql(clean_db, "UPDATE payments SET status = 'succeeded', captured_minor = 333, campaign_id = reserved_campaign_id,"
                         " discount_minor = 34, discount_funded_by = 'bank' WHERE id = $1", pid)
    assert "reserved_discount_differs_from_its_capture" in await _broken(clean_db)
    await _sql(clean_db, "UPDATE payments SET status = 'succeeded', discount_minor = 33 WHERE id = $1", pid)
    assert "reserved_discount_differs_from_its_capture" not in await _broken(clean_db)
    await _sql(clean_db, "UPDATE payments SET status = 'requires_capture', captured_minor = 0, campaign_id = NULL,"
                         " discount_minor = 0, discount_funded_by = NULL WHERE id = $1", pid)
    await _sound(clean_db)
    if reservation[0]["reserved_campaign_id"] is None:  # the hand-written reservation, undone by hand
        await _sql(clean_db, "UPDATE balances b SET held_minor = held_minor + 100 FROM payments p"
                             " WHERE p.id = $1 AND b.account_id = p.wallet_account_id AND b.shard = 0", pid)
        await _sql(clean_db, "UPDATE campaign_shards SET spent_minor = spent_minor - 100, places_taken = places_taken - 1"
                             " WHERE campaign_id = $1 AND shard = 0", cid)
        await _sql(clean_db, "UPDATE payments SET reserved_campaign_id = NULL, discount_reserved_minor = 0,"
                             " reserved_funded_by = NULL WHERE id = $1", pid)
    await world.call("POST", f"/v1/payments/{p['id']}/cancel", headers=m.headers, json={})
    await _sound(clean_db)
