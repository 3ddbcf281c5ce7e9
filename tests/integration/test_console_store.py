"""The console's store queries on a real Postgres: the daily series has one row per day with the
seeded amounts, the payment search matches every criterion given and stays bounded, the lists
filter, and the search's lookups use their indexes rather than scanning payments."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from gateway.store import console as store
from tests.integration.world import World, auth


def _id(text: str) -> uuid.UUID:
    return uuid.UUID(text.split("_", 1)[1])


async def test_series_search_and_lists(world: World, db: asyncpg.Connection) -> None:
    m = await world.merchant()
    other = await world.merchant("Tea House")
    h = await world.holder(top_up=20_000)
    paid = []
    for merchant, ref, amount in ((m, "A-1", 3_800), (m, "A-2", 1_250), (other, "A-1", 990)):
        p = await world.payment(merchant, amount, merchant_reference=ref)
        paid.append(await world.pay(h, p["id"]))
    await db.execute("UPDATE payments SET created_at = created_at - interval '1 day' WHERE id = $1",
                     _id(paid[1]["id"]))
    today = datetime.now(UTC).date()

    rows = await store.daily_series(db, today - timedelta(days=6), today, "CNY")
    assert [r["day"] for r in rows] == [today - timedelta(days=n) for n in range(6, -1, -1)]
    assert [r["volume_minor"] for r in rows][-2:] == [1_250, 3_800 + 990]
    assert sum(r["volume_minor"] for r in rows[:-2]) == 0
    assert rows[-1]["fee_minor"] == 38 + 10  # 1 % of each, rounded as the fee rule does
    assert await store.daily_series(db, today, today, "JPY") and \
        (await store.daily_series(db, today, today, "JPY"))[0]["volume_minor"] == 0

    async def search(**criteria: object) -> list[str]:
        found = await store.search_payments(db, **{"payment_id": None, "merchant_reference": None, "phone": None,
                                                   "amount_minor": None, "day": None, "limit": 10, **criteria})
        return [f"pay_{r['id'].hex}" for r in found]

    assert set(await search(merchant_reference="A-1")) == {paid[0]["id"], paid[2]["id"]}  # across merchants
    assert await search(merchant_reference="A-1", amount_minor=990) == [paid[2]["id"]]
    assert await search(payment_id=_id(paid[1]["id"])) == [paid[1]["id"]]
    assert len(await search(phone=h.phone)) == 3
    assert await search(phone="+860000000000") == []
    assert await search(day=today - timedelta(days=1)) == [paid[1]["id"]]
    assert len(await search(phone=h.phone, limit=2)) == 2  # bounded

    merchants = await store.merchants(db, 10)
    assert {r["name"] for r in merchants} == {"Best Noodles", "Tea House"}
    assert await store.batches(db, _id(m.id), None, None, 10) == []
    assert await store.payouts(db, None, today, today, 10) == []
    assert await store.audit(db, 10) == []


async def test_the_searches_use_their_indexes(db: asyncpg.Connection) -> None:
    await db.execute("SET enable_seqscan = off")  # an empty table: ask whether an index *can* serve it
    for where, index in (("merchant_reference = 'x'", "payments_reference_any"),
                         ("payer_id = gen_random_uuid()", "payments_payer"),
                         ("created_at >= now() - interval '1 day' AND created_at < now()", "payments_created")):
        plan = "\n".join(r[0] for r in await db.fetch(
            f"EXPLAIN SELECT id FROM payments WHERE {where} ORDER BY created_at DESC LIMIT 100"))
        assert index in plan, plan


async def test_terminals_show_what_their_agent_last_reported(world: World, db: asyncpg.Connection) -> None:
    m = await world.merchant()
    terminal = await world.call("POST", f"/v1/merchants/{m.id}/terminals", 201, headers=world.ops,
                                json={"store": m.store, "label": "Counter 1"})
    [row] = await store.terminals(db, [_id(m.id)], 10)
    assert (row["agent_version"], row["last_seen_at"]) == (None, None)
    code = await world.call("POST", f"/v1/terminals/{terminal['id']}/enrolment_codes", 201, headers=m.headers, json={})
    device = await world.call("POST", "/v1/devices/enrolments", 201, json={"code": code["code"], "name": "agent"})
    beat = await world.call("POST", "/v1/devices/heartbeat", headers=auth(device["access_token"]),
                            json={"agent_version": "7.1.0"})
    [row] = await store.terminals(db, [_id(m.id)], 10)
    assert (row["agent_version"], row["last_seen_at"].isoformat()) == ("7.1.0", beat["last_seen_at"])
