"""A campaign's budget and places spread over counter rows (migration 0026), over real HTTP: payments of
both paths racing take them exactly, the budget's last units spread over several rows are given once,
ending closes every row, and the invariant checker catches rows that do not add up. The fixtures prove
the ledger invariants (campaign_shards_add_up included) after each test."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from gateway.domain.ids import Kind, decode
from gateway.store import invariants
from tests.integration.world import Holder, Merchant, World, batched, campaign_window


async def _campaign(world: World, **terms: Any) -> Any:
    body = {"name": "Spread", "currency": "CNY", "rule": "fixed", "fixed_amount": 100, "funded_by": "bank",
            "budget": 1_000_000, **campaign_window(), **terms}
    return await world.call("POST", "/v1/operator/campaigns", 201, headers=world.ops, json=body)


async def _rows(db_url: str, campaign: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(await conn.fetch(
            "SELECT shard, budget_minor, spent_minor, places_max, places_taken, closed FROM campaign_shards"
            " WHERE campaign_id = $1 ORDER BY shard", decode(Kind.CAMPAIGN, campaign["id"])))
    finally:
        await conn.close()


async def _race(world: World, m: Merchant, holders: list[Holder], per_holder: int) -> list[Any]:
    payers = [h for h in holders for _ in range(per_holder)]
    payments = await asyncio.gather(*(world.payment(m, 1_000) for _ in payers))
    return list(await asyncio.gather(*(world.pay(h, p["id"]) for h, p in zip(payers, payments, strict=True))))


async def test_the_last_units_spread_over_rows_are_given_once_and_every_row_is_spent(
        world: World, clean_db: str) -> None:
    """16 rows of 803-804 (8 discounts of 100 each and 3-4 units over): 128 whole discounts, then the 50
    units left over in all the rows go to one payment, then nothing; the rows end spent exactly."""
    m = await world.merchant()
    holders = list(await asyncio.gather(*(world.holder(top_up=10_000) for _ in range(40))))
    c = await _campaign(world, budget=12_850)
    rows = await _rows(clean_db, c)
    assert len(rows) == 16 and sum(r["budget_minor"] for r in rows) == 12_850
    written, _ = batched()
    paid = await _race(world, m, holders, 4)
    amounts = sorted(x["discount"]["amount"] for x in paid if x["discount"] is not None)
    assert amounts == [50] + [100] * 128
    assert batched()[0] > written  # the one-statement path took from the rows too
    rows = await _rows(clean_db, c)
    assert all(r["spent_minor"] == r["budget_minor"] for r in rows), rows
    got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
    assert (got["spent"], got["places_taken"]) == (12_850, 129)
    assert sum(await asyncio.gather(*(world.available(h) for h in holders))) == 40 * 10_000 - 160 * 1_000 + 12_850


async def test_places_spread_over_rows_are_taken_exactly(world: World, clean_db: str) -> None:
    """100 places in 12 rows (8 or 9 each), 200 payments racing: exactly 100 discounted."""
    m = await world.merchant()
    holders = list(await asyncio.gather(*(world.holder(top_up=10_000) for _ in range(40))))
    c = await _campaign(world, places=100)
    rows = await _rows(clean_db, c)
    assert len(rows) == 12 and sum(r["places_max"] for r in rows) == 100
    paid = await _race(world, m, holders, 5)
    assert sum(1 for x in paid if x["discount"] is not None) == 100
    rows = await _rows(clean_db, c)
    assert all(r["places_taken"] == r["places_max"] for r in rows), rows
    got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
    assert (got["spent"], got["places_taken"]) == (10_000, 100)


async def test_ending_closes_every_row_while_payments_run(world: World, clean_db: str) -> None:
    """A campaign ended in the middle of a race: every row closed in the end's commit; no payment
    created after the end is discounted, and what was granted adds up."""
    m = await world.merchant()
    holders = list(await asyncio.gather(*(world.holder(top_up=10_000) for _ in range(20))))
    c = await _campaign(world)
    assert len(await _rows(clean_db, c)) == 16
    racing = asyncio.ensure_future(_race(world, m, holders, 3))
    await asyncio.sleep(0.05)
    await world.call("POST", f"/v1/operator/campaigns/{c['id']}/end", headers=world.ops, json={})
    during = await racing
    assert all(r["closed"] for r in await _rows(clean_db, c))
    after = await _race(world, m, holders, 1)
    assert all(x["discount"] is None for x in after)
    got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
    assert got["spent"] == 100 * sum(1 for x in during if x["discount"] is not None)


async def test_the_invariants_catch_rows_that_do_not_add_up(world: World, clean_db: str) -> None:
    c = await _campaign(world, places=50)
    cid = decode(Kind.CAMPAIGN, c["id"])
    conn = await asyncpg.connect(clean_db)
    try:
        for broken, mended in (
                ("UPDATE campaign_shards SET budget_minor = budget_minor + 1 WHERE campaign_id = $1 AND shard = 0",
                 "UPDATE campaign_shards SET budget_minor = budget_minor - 1 WHERE campaign_id = $1 AND shard = 0"),
                ("UPDATE campaign_shards SET places_max = places_max + 1 WHERE campaign_id = $1 AND shard = 0",
                 "UPDATE campaign_shards SET places_max = places_max - 1 WHERE campaign_id = $1 AND shard = 0"),
                ("UPDATE campaign_shards SET closed = true WHERE campaign_id = $1 AND shard = 0",
                 "UPDATE campaign_shards SET closed = false WHERE campaign_id = $1 AND shard = 0")):
            await conn.execute(broken, cid)
            assert {name for name, rows in (await invariants.check(conn)).items() if rows} == {"campaign_shards_add_up"}
            await conn.execute(mended, cid)
        assert not any(rows for rows in (await invariants.check(conn)).values())
    finally:
        await conn.close()
